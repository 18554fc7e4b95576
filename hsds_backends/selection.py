"""Selections: HSDS select strings, numpy-style indexing, points, and per-chunk cuts.

A hyperslab is one entry per dimension, each either a :class:`Slice`
(``start:stop:step``, step ≥ 1) or a :class:`Coords` list. Several coordinate
lists select their outer product (orthogonal indexing, like zarr's ``oindex``).
HSDS select-string rules (docs/hsds-format.md §5.1): ``start:stop[:step]``, ``n``
(= ``n:n+1``), ``[a,b,c]``; a missing start is 0 and a missing stop the extent.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Union

import numpy as np

from .errors import SelectionError, SelectionTypeError, SelectionValueError

__all__ = [
    "Slice",
    "Coords",
    "Hyperslab",
    "DimCut",
    "parse_select",
    "from_index",
    "slice_dim",
    "format_select",
    "dim_cuts",
    "check_points",
]


@dataclass(frozen=True, slots=True)
class Slice:
    """``start:stop:step`` with 0 ≤ start, start ≤ stop, step ≥ 1 (an empty slice has start == stop)."""

    start: int
    stop: int
    step: int = 1

    @property
    def count(self) -> int:
        return max(0, -(-(self.stop - self.start) // self.step))

    def to_text(self) -> str:
        if self.step == 1:
            return f"{self.start}:{self.stop}"
        return f"{self.start}:{self.stop}:{self.step}"


@dataclass(frozen=True, slots=True, eq=False)
class Coords:
    """A list of coordinates on one dimension, in the order given (duplicates allowed)."""

    values: np.ndarray[Any, np.dtype[np.int64]]

    @property
    def count(self) -> int:
        return int(self.values.size)

    def to_text(self) -> str:
        return "[" + ",".join(str(int(v)) for v in self.values) + "]"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Coords) and np.array_equal(self.values, other.values)

    def __hash__(self) -> int:
        return hash(self.values.tobytes())


Dim = Union[Slice, Coords]


@dataclass(frozen=True, slots=True)
class Hyperslab:
    """A selection of a dataset: one :data:`Dim` per dimension.

    ``drop`` marks dimensions selected by a single numpy integer, which the
    result drops (numpy semantics); HSDS's ``n`` keeps its dimension.
    """

    dims: tuple[Dim, ...]
    drop: tuple[bool, ...] = ()

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape of the selected block before dropped dims are removed."""
        return tuple(d.count for d in self.dims)

    @property
    def result_shape(self) -> tuple[int, ...]:
        drop = self.drop or (False,) * len(self.dims)
        return tuple(d.count for d, x in zip(self.dims, drop, strict=True) if not x)

    def to_text(self) -> str:
        return "[" + ",".join(d.to_text() for d in self.dims) + "]"

    @classmethod
    def all(cls, shape: Sequence[int]) -> Hyperslab:
        return cls(tuple(Slice(0, int(s), 1) for s in shape), (False,) * len(shape))


# ----------------------------------------------------------------- parsing

_INT = re.compile(r"^-?[0-9]+$")  # ASCII digits only: int() would also read other scripts' digits


#: Digits an index may have: every extent is below 2**64 (20 digits), so more is always out of range.
_MAX_DIGITS = 20


def _int(text: str, what: str, sel: str) -> int:
    t = text.strip()
    if not _INT.match(t):
        raise SelectionError(f"bad select {_short(sel)}: {what} {_short(t)} is not an integer")
    digits = len(t.lstrip("+-"))
    if digits > _MAX_DIGITS:  # refused before int() turns thousands of digits into a number
        raise SelectionError(f"bad select {_short(sel)}: {what} {_short(t)} has {digits} digits; an index has at most {_MAX_DIGITS}")
    return int(t)


def _short(text: str, keep: int = 40) -> str:
    """``repr`` of ``text``, shortened for messages when it is long."""
    return repr(text) if len(text) <= keep else f"{text[:keep]!r}… ({len(text):,} characters)"


def _split_top(text: str, sel: str) -> list[str]:
    parts: list[str] = []
    depth = 0
    cur: list[str] = []
    for ch in text:
        if ch == "[":
            depth += 1
            if depth > 1:
                raise SelectionError(f"bad select {sel!r}: nested '[' inside a coordinate list")
        elif ch == "]":
            depth -= 1
            if depth < 0:
                raise SelectionError(f"bad select {sel!r}: unbalanced ']'")
        if ch == "," and depth == 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    if depth != 0:
        raise SelectionError(f"bad select {sel!r}: unbalanced '['")
    parts.append("".join(cur))
    return parts


def parse_select(text: str, shape: Sequence[int]) -> Hyperslab:
    """Parse an HSDS select string against ``shape`` (docs/hsds-format.md §5.1).

    Accepts ``[0:10:2, 5, [1,3,7]]`` with or without the outer brackets, and
    whitespace anywhere. ``n`` keeps its dimension (HSDS semantics). A scalar
    dataset (``shape == ()``) accepts ``""``, ``"[]"`` or ``"[0]"``.

    Raises
    ------
    SelectionError
        Malformed text, wrong rank, or a bound out of range; the message quotes
        the select string and the dataset shape.
    """
    if not isinstance(text, str):
        raise SelectionError(f"select must be a string like '[0:10, 5]', got {type(text).__name__}")
    sel = text
    body = "".join(text.split())
    if body.startswith("[") and body.endswith("]") and _outer_brackets(body):
        body = body[1:-1]
    shape = tuple(int(s) for s in shape)
    if not shape:
        if body in ("", "0", ":", "0:1"):
            return Hyperslab((), ())
        raise SelectionError(f"bad select {sel!r}: the dataset is scalar; use '' or '[]'")
    if body == "":
        raise SelectionError(f"bad select {sel!r}: empty; the dataset has rank {len(shape)} (shape {list(shape)})")
    parts = _split_top(body, sel)
    if len(parts) != len(shape):
        raise SelectionError(
            f"bad select {sel!r}: {len(parts)} dimension(s) given, the dataset has rank {len(shape)} (shape {list(shape)})"
        )
    dims: list[Dim] = []
    for d, (part, extent) in enumerate(zip(parts, shape, strict=True)):
        dims.append(_parse_dim(part, extent, d, sel, shape))
    return Hyperslab(tuple(dims), (False,) * len(dims))


def _outer_brackets(body: str) -> bool:
    depth = 0
    for i, ch in enumerate(body):
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
            if depth == 0 and i != len(body) - 1:
                return False
    return True


def _parse_dim(part: str, extent: int, d: int, sel: str, shape: tuple[int, ...]) -> Dim:
    where = f"dimension {d} (extent {extent})"
    if part.startswith("["):
        if not part.endswith("]"):
            raise SelectionError(f"bad select {sel!r}: coordinate list {part!r} on {where} is not closed with ']'")
        inner = part[1:-1]
        if inner == "":
            raise SelectionError(f"bad select {sel!r}: empty coordinate list on {where}")
        vals = [_int(v, "coordinate", sel) for v in inner.split(",")]
        for v in vals:
            if not 0 <= v < extent:
                raise SelectionError(f"bad select {sel!r}: coordinate {v} is out of range for {where}")
        return Coords(np.asarray(vals, dtype=np.int64))
    if ":" not in part:
        n = _int(part, "index", sel)
        if not 0 <= n < extent:
            raise SelectionError(f"bad select {sel!r}: index {n} is out of range for {where}")
        return Slice(n, n + 1, 1)
    pieces = part.split(":")
    if len(pieces) > 3:
        raise SelectionError(f"bad select {sel!r}: {part!r} on {where} has too many ':'")
    start = _int(pieces[0], "start", sel) if pieces[0] != "" else 0
    stop = _int(pieces[1], "stop", sel) if pieces[1] != "" else extent
    step = _int(pieces[2], "step", sel) if len(pieces) == 3 and pieces[2] != "" else 1
    if step < 1:
        raise SelectionError(f"bad select {sel!r}: step {step} on {where} must be ≥ 1")
    if not 0 <= start < extent or not start < stop <= extent:
        raise SelectionError(
            f"bad select {sel!r}: {start}:{stop} is out of range for {where}; need 0 ≤ start < stop ≤ {extent}"
        )
    return Slice(start, stop, step)


def slice_dim(k: slice, extent: int, d: int) -> Slice:
    """A Python slice on dimension ``d`` as a :class:`Slice`: Python's rules, a step of at least 1,
    ``stop < start`` an empty selection (numpy's and h5py's rules alike)."""
    try:
        start, stop, step = k.indices(extent)
    except ValueError as exc:
        raise SelectionValueError(f"slice {k!r} on dimension {d} has step 0; use a step of 1 or more") from exc
    except TypeError as exc:
        raise SelectionTypeError(f"slice {k!r} on dimension {d} needs integer bounds") from exc
    if step < 1:
        raise SelectionValueError(
            f"slice {k!r} on dimension {d} has step {step}; read with a step of 1 or more and reverse the result with [::-1]"
        )
    return Slice(start, max(start, stop), step)


def from_index(key: Any, shape: Sequence[int]) -> Hyperslab:
    """Turn a numpy-style index (ints, slices, ``...``, integer lists/arrays) into a :class:`Hyperslab`.

    Integers drop their dimension; negative indices count from the end; slices
    follow Python rules (an empty result is allowed); negative steps and boolean
    masks are refused with a message saying what to do instead.
    """
    shape = tuple(int(s) for s in shape)
    if not isinstance(key, tuple):
        key = (key,)
    n_ell = sum(1 for k in key if k is Ellipsis)
    if n_ell > 1:
        raise SelectionValueError("an index can only have a single ellipsis ('...')")
    if n_ell:
        i = next(i for i, k in enumerate(key) if k is Ellipsis)
        fill = len(shape) - (len(key) - 1)
        if fill < 0:
            raise SelectionValueError(f"too many indices for a dataset of rank {len(shape)}: {key!r}")
        key = key[:i] + (slice(None),) * fill + key[i + 1 :]
    if len(key) > len(shape):
        if not shape and len(key) == 1 and isinstance(key[0], slice) and key[0] == slice(None):
            return Hyperslab((), ())
        raise SelectionValueError(f"too many indices for a dataset of rank {len(shape)} (shape {list(shape)}): {key!r}")
    key = key + (slice(None),) * (len(shape) - len(key))
    dims: list[Dim] = []
    drop: list[bool] = []
    for d, (k, extent) in enumerate(zip(key, shape, strict=True)):
        if isinstance(k, (bool, np.bool_)):
            raise SelectionTypeError(f"boolean index {k!r} on dimension {d} is not supported; use integer positions")
        if isinstance(k, (int, np.integer)):
            n = int(k)
            if n < 0:
                n += extent
            if not 0 <= n < extent:
                raise SelectionError(f"index {int(k)} is out of range for dimension {d} (extent {extent})")
            dims.append(Slice(n, n + 1, 1))
            drop.append(True)
        elif isinstance(k, slice):
            dims.append(slice_dim(k, extent, d))
            drop.append(False)
        else:
            try:
                arr = np.asarray(k)
            except (ValueError, TypeError, OverflowError) as exc:
                raise SelectionTypeError(f"index {k!r} on dimension {d} must be an int, a slice or a 1-d list of ints") from exc
            if arr.ndim == 1 and arr.size == 0:
                arr = arr.astype(np.int64)  # np.asarray([]) is float64; an empty list selects nothing
            if arr.dtype == bool:
                raise SelectionTypeError(
                    f"boolean mask on dimension {d} is not supported; pass np.nonzero(mask)[0] as a coordinate list"
                )
            if arr.ndim != 1 or arr.dtype.kind not in "iu":
                raise SelectionTypeError(f"index {k!r} on dimension {d} must be an int, a slice or a 1-d list of ints")
            if arr.dtype.kind == "u" and arr.size and int(arr.max()) >= extent:
                raise SelectionError(f"coordinate {int(arr.max())} is out of range for dimension {d} (extent {extent})")
            vals = arr.astype(np.int64)
            vals = np.where(vals < 0, vals + extent, vals)
            bad = vals[(vals < 0) | (vals >= extent)]
            if bad.size:
                raise SelectionError(f"coordinate {int(bad[0])} is out of range for dimension {d} (extent {extent})")
            dims.append(Coords(vals))
            drop.append(False)
    return Hyperslab(tuple(dims), tuple(drop))


def format_select(dims: Sequence[Dim]) -> str:
    """Render dims as an HSDS select string (§5.1, the SN's ``getSliceQueryParam`` form)."""
    return "[" + ",".join(d.to_text() for d in dims) + "]"


def check_points(points: Any, shape: Sequence[int]) -> np.ndarray[Any, np.dtype[np.uint64]]:
    """Validate an (N, rank) array of absolute coordinates (rank 1 may be a flat list).

    Returns a C-contiguous uint64 (N, rank) array.
    """
    shape = tuple(int(s) for s in shape)
    if not shape:
        raise SelectionError("a scalar dataset cannot be point-selected; read it with select '[]'")
    arr = np.asarray(points)
    if arr.dtype.kind not in "iu" and arr.size:
        raise SelectionError(f"points must be integers, got dtype {arr.dtype}")
    if arr.ndim == 1 and len(shape) == 1:
        arr = arr.reshape(-1, 1)
    if arr.size == 0:
        arr = arr.reshape(0, len(shape))
    if arr.ndim != 2 or arr.shape[1] != len(shape):
        raise SelectionError(
            f"points must have shape (N, {len(shape)}) for a dataset of shape {list(shape)}, got {list(arr.shape)}"
        )
    a64 = arr.astype(np.int64, copy=False)
    bad = np.nonzero(((a64 < 0) | (a64 >= np.asarray(shape, dtype=np.int64))).any(axis=1))[0]
    if bad.size:
        i = int(bad[0])
        raise SelectionError(f"point {a64[i].tolist()} (row {i}) is out of range for shape {list(shape)}")
    return np.ascontiguousarray(a64, dtype=np.uint64)


# ------------------------------------------------------------- per-chunk cuts


@dataclass(frozen=True, slots=True)
class DimCut:
    """How one dimension of a selection meets one chunk.

    ``index``: chunk index on this dim; ``chunk``: the chunk-relative dim
    (Slice or Coords); ``out``: where the values land on the output dim
    (a ``slice`` or an int array of positions).
    """

    index: int
    chunk: Dim
    out: slice | np.ndarray[Any, np.dtype[np.intp]]


def dim_chunk_count(dim: Dim, c: int) -> int:
    """Return how many chunks of size ``c`` ``dim`` touches, without listing them (for bounds)."""
    if isinstance(dim, Slice):
        if dim.count == 0:
            return 0
        if dim.step > c:  # consecutive points lie in different chunks
            return dim.count
        return (dim.start + (dim.count - 1) * dim.step) // c - dim.start // c + 1
    return int(np.unique(dim.values // c).size) if dim.values.size else 0


def dim_cuts(dim: Dim, c: int) -> list[DimCut]:
    """Return the cuts of ``dim`` against chunk size ``c``, in chunk order (§1.3)."""
    cuts: list[DimCut] = []
    if isinstance(dim, Slice):
        if dim.count == 0:
            return cuts
        last = dim.start + (dim.count - 1) * dim.step
        if dim.step > c:
            # visit only the chunks that hold a selected point
            ns: Iterator[int] = iter(sorted({(dim.start + k * dim.step) // c for k in range(dim.count)}))
        else:
            ns = iter(range(dim.start // c, last // c + 1))
        for n in ns:
            lo, hi = n * c, min((n + 1) * c, last + 1)
            first = dim.start + max(0, -(-(lo - dim.start) // dim.step)) * dim.step
            if first >= hi:
                continue
            count = -(-(hi - first) // dim.step)
            o0 = (first - dim.start) // dim.step
            cuts.append(
                DimCut(n, Slice(first - lo, first - lo + (count - 1) * dim.step + 1, dim.step), slice(o0, o0 + count))
            )
        return cuts
    vals = dim.values
    if vals.size == 0:
        return cuts
    ns_arr = vals // c
    order = np.argsort(ns_arr, kind="stable")
    uniq, starts = np.unique(ns_arr[order], return_index=True)
    bounds = list(starts[1:]) + [len(order)]
    for n, s, e in zip(uniq.tolist(), starts.tolist(), bounds, strict=True):
        pos = order[s:e]
        cuts.append(DimCut(int(n), Coords(vals[pos] - n * c), pos.astype(np.intp)))
    return cuts
