"""h5py 3.x indexing rules for ``Dataset.__getitem__`` (docs/api.md §2).

:func:`parse_h5py_index` turns what a user writes between ``d[`` and ``]`` into what
to read: a :class:`~hsds_backends.selection.Hyperslab` (integers drop their axis,
slices with a step ≥ 1, ``...``, at most one increasing index list or boolean array
per selection), or a full-shape boolean mask (a 1-D result in C order), plus the
field names mixed in. Every refusal raises the builtin class h5py raises for the same
index (through :class:`SelectionError` and its subclasses), with a message naming the
bad value. The one knowing difference: a list index equal to the extent is an
``IndexError`` here, where h5py lets it reach the HDF5 library and gets an ``OSError``.

The project's own :func:`~hsds_backends.selection.from_index` (used by ``read()``)
stays more permissive: several index lists select their outer product, in any order.
"""

from __future__ import annotations

import itertools
import operator
from dataclasses import dataclass
from collections.abc import Iterator
from typing import Any

import numpy as np

from .errors import FieldError, SelectionError, SelectionTypeError, SelectionValueError
from .selection import Coords, Dim, Hyperslab, Slice, slice_dim
from .tasks import field_dtype

__all__ = ["H5Index", "parse_h5py_index", "check_fields", "iter_chunk_slices"]


@dataclass(frozen=True)
class H5Index:
    """What an h5py-style index asks for.

    Exactly one of ``selection`` (a hyperslab; ``None`` with ``mask`` ``None`` means
    everything) and ``mask`` (a full-shape boolean array) is used. ``fields`` is one
    name (a plain result), a list of names (a structured one), or ``None``.
    ``ellipsis_only`` marks ``d[...]`` on a scalar dataset, which h5py answers with a
    0-d array rather than a numpy scalar.
    """

    selection: Hyperslab | None = None
    mask: np.ndarray[Any, np.dtype[np.bool_]] | None = None
    fields: str | list[str] | None = None
    ellipsis_only: bool = False


def _short(value: Any, keep: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= keep else text[: keep - 3] + "..."


def _fast_path_errors(args: tuple[Any, ...], shape: tuple[int, ...], dtype: np.dtype[Any], key: Any) -> None:
    """Raise what h5py raises before it looks at field names, for a key naming fields of a plain type.

    For integer and float datasets with a shape, h5py first walks the index with its fast
    reader, which stops with a ``TypeError`` at the first field name (then the name is
    refused with a ``ValueError``) but raises an out-of-range index or a rank mismatch met
    before it as such.
    """
    if not shape or dtype.kind not in "iuf":
        return
    try:  # the whole key, names counted as arguments: the walk stops at the first name
        _walk(args, shape, key, partial=True)
    except SelectionTypeError:
        pass


def check_fields(names: str | list[str], dtype: np.dtype[Any]) -> np.dtype[Any]:
    """The dtype a read of ``names`` gives (a field's own for one name), checked first as h5py does.

    Field names on a type without fields, unknown names and names given twice are a
    :class:`FieldError` (h5py: ``ValueError``); :func:`~hsds_backends.tasks.field_dtype`
    makes the checks, this adds the hint for a select string passed as an index.
    """
    wanted = [names] if isinstance(names, str) else list(names)
    if dtype.names is None:
        hint = ""
        if len(wanted) == 1 and wanted[0].lstrip().startswith("["):
            hint = f"; for an HSDS select string use .read({wanted[0]!r})"
        raise FieldError(
            f"field name(s) {wanted!r} given, but the dataset's type {dtype} is not compound; "
            f"field names are only allowed for compound types{hint}"
        )
    picked = field_dtype(dtype, tuple(wanted))
    return picked.fields[names][0] if isinstance(names, str) else picked  # type: ignore[index]


def _is_name_list(a: Any) -> bool:
    return isinstance(a, list) and len(a) > 0 and all(isinstance(x, str) for x in a)


def _is_bool_index(a: Any) -> bool:
    if isinstance(a, np.ndarray):
        return bool(a.dtype == np.bool_)
    return isinstance(a, (list, tuple)) and len(a) > 0 and all(isinstance(x, (bool, np.bool_)) for x in a)


def _index_array(a: Any, extent: int, dim: int, earlier: int | None) -> np.ndarray[Any, np.dtype[np.int64]]:
    """One index list or boolean array on dimension ``dim``, checked in h5py's order.

    ``earlier`` is the dimension of an index list already seen (h5py allows one).
    """
    if _is_bool_index(a) and not isinstance(a, np.ndarray):
        arr: np.ndarray[Any, Any] = np.asarray(a, dtype=bool)
    elif isinstance(a, (list, tuple)) and len(a) == 0:
        arr = np.zeros(0, dtype=np.int64)
    else:
        try:
            arr = np.asarray(a)
        except (ValueError, TypeError, OverflowError) as exc:
            raise SelectionTypeError(f"index {_short(a)} on dimension {dim} cannot be read as a list of integers") from exc
    if arr.dtype == bool:
        if arr.ndim != 1 or arr.shape[0] != extent:
            raise SelectionTypeError(
                f"boolean index of shape {list(arr.shape)} on dimension {dim} does not match its extent {extent}"
            )
        arr = np.flatnonzero(arr)
    if arr.ndim != 1:
        raise SelectionTypeError(f"index {_short(a)} on dimension {dim} must be one-dimensional (got {arr.ndim} dimensions)")
    if arr.dtype.kind not in "iu":
        raise SelectionTypeError(f"index list {_short(a)} on dimension {dim} must hold integers, not {arr.dtype}")
    if earlier is not None:
        raise SelectionTypeError(
            f"index lists on dimensions {earlier} and {dim}: h5py-style reads take one index list or "
            "boolean array per selection; use .read() for the outer product of several"
        )
    if arr.dtype.kind == "u" and arr.size and int(arr.max()) > extent:
        raise SelectionError(f"index {int(arr.max())} in the list on dimension {dim} is out of range (extent {extent})")
    vals = arr.astype(np.int64)
    vals = np.where(vals < 0, vals + extent, vals)
    # h5py lets an element equal to the extent through here (the HDF5 library refuses it when
    # reading, with an OSError); it is refused after the whole key is walked (end of _walk).
    bad = vals[(vals < 0) | (vals > extent)]
    if bad.size:
        raise SelectionError(
            f"index {int(bad[0]) if bad[0] >= 0 else int(bad[0]) - extent} in the list on dimension {dim} "
            f"is out of range (extent {extent})"
        )
    if vals.size > 1 and bool(np.any(np.diff(vals) <= 0)):
        raise SelectionTypeError(
            f"index list {_short(a)} on dimension {dim} must be strictly increasing (as in h5py); "
            "sort it (np.unique) and reorder the result, or use .read() for lists in any order"
        )
    return vals


def parse_h5py_index(key: Any, shape: tuple[int, ...], dtype: np.dtype[Any]) -> H5Index:
    """Interpret ``key`` as h5py 3.x's ``Dataset.__getitem__`` does; see the module docstring.

    Raises
    ------
    FieldError
        Field names on a non-compound type, or an unknown field (a ``ValueError``, as in h5py).
    SelectionTypeError, SelectionValueError, SelectionError
        The index is of the wrong kind, does not fit the rank, or is out of range
        (``TypeError``, ``ValueError``, ``IndexError`` as in h5py).
    """
    args = key if isinstance(key, tuple) else (key,)
    if any(a is None for a in args):
        raise SelectionTypeError("indexing with None (np.newaxis) is not supported; add the axis to the result afterwards")
    names: list[str] = []
    as_list = False
    rest: list[Any] = []
    for a in args:
        if isinstance(a, str):
            names.append(a)
        elif _is_name_list(a):  # d[['id', 'temp']]: numpy's structured pick (h5py refuses it)
            names.extend(a)
            as_list = True
        else:
            rest.append(a)
    fields: str | list[str] | None = None
    if names:
        fields = names[0] if len(names) == 1 and not as_list else names
        if dtype.names is None:
            _fast_path_errors(args, shape, dtype, key)
        check_fields(fields, dtype)
        args = tuple(rest)
    rank = len(shape)
    if rank == 0:
        if args == ():
            return H5Index(fields=fields)
        if len(args) == 1 and args[0] is Ellipsis:
            return H5Index(fields=fields, ellipsis_only=True)
        raise SelectionValueError(f"index {_short(key)} slices a scalar dataset; read its value with d[()] or d[...]")
    if args == ():
        return H5Index(fields=fields)
    if len(args) == 1 and isinstance(args[0], np.ndarray) and args[0].dtype == bool:
        m = args[0]
        if m.shape == shape:
            return H5Index(mask=m, fields=fields)
        if m.shape != shape[:1]:
            raise SelectionTypeError(
                f"boolean mask of shape {list(m.shape)} matches neither the dataset's shape {list(shape)} "
                f"nor its first dimension ({shape[0]})"
            )
    return H5Index(selection=_walk(args, shape, key), fields=fields)


def _walk(args: tuple[Any, ...], shape: tuple[int, ...], key: Any, *, partial: bool = False) -> Hyperslab:
    """One pass over ``args`` in order, as h5py's selector makes it: the first bad argument names the error.

    ``partial``: walk a key that still holds its field names, as h5py's fast path does (see
    :func:`_fast_path_errors`): a name stops the walk with a ``SelectionTypeError``.
    """
    rank = len(shape)
    slots: dict[int, tuple[Dim, bool]] = {}
    nargs = ellipsis_at = len(args)
    seen_ellipsis = False
    array_dim: int | None = None
    d = -1
    for a in args:
        d += 1
        if a is Ellipsis:
            if seen_ellipsis:
                raise SelectionValueError(f"index {_short(key)} has more than one ellipsis; use at most one '...'")
            seen_ellipsis = True
            ellipsis_at = d
            nargs -= 1
            if nargs > rank:
                raise SelectionValueError(f"{nargs} indices for a dataset of rank {rank} (shape {list(shape)}): {_short(key)}")
            d += rank - nargs - 1
            continue
        if d >= rank:
            raise SelectionValueError(f"{nargs} indices for a dataset of rank {rank} (shape {list(shape)}): {_short(key)}")
        if partial and (isinstance(a, str) or _is_name_list(a)):
            raise SelectionTypeError(f"field name {a!r}")  # where h5py's fast path stops
        slots[d] = _one_dim(a, d, shape[d], rank, array_dim)
        if isinstance(slots[d][0], Coords):
            array_dim = d
    if partial:
        return Hyperslab(())
    for d in range(ellipsis_at, ellipsis_at + rank - nargs):
        slots[d] = (Slice(0, shape[d], 1), False)
    dims = tuple(slots[d][0] for d in range(rank))
    empty = any(dim.count == 0 for dim in dims)  # h5py reads nothing then, so nothing is refused
    for d, dim in enumerate(dims):
        if not empty and isinstance(dim, Coords) and int(dim.values.max()) >= shape[d]:
            raise SelectionError(
                f"index {int(dim.values.max())} in the list on dimension {d} is out of range (extent {shape[d]})"
            )
    return Hyperslab(dims, tuple(slots[d][1] for d in range(rank)))


def _one_dim(a: Any, d: int, extent: int, rank: int, array_dim: int | None) -> tuple[Dim, bool]:
    """What argument ``a`` selects on dimension ``d``, and whether the result drops the dimension."""
    if isinstance(a, slice):
        return slice_dim(a, extent, d), False
    if not isinstance(a, (list, tuple)):
        try:  # Python's True/False are the integers 1/0 (as in h5py); numpy bools and 1-d arrays refuse
            n = operator.index(a)
        except TypeError:
            pass
        else:
            if not -extent <= n < extent:
                where = f"(extent {extent})" if extent else "(an empty dimension)"
                raise SelectionError(f"index {n} is out of range for dimension {d} {where}")
            n = n + extent if n < 0 else n
            return Slice(n, n + 1, 1), True
    if isinstance(a, (list, tuple, np.ndarray)):
        if rank == 1 and _is_bool_index(a):
            raise SelectionTypeError(
                "a boolean index on a 1-D dataset must be a numpy boolean array given alone (d[mask]); "
                "or pass its positions (np.flatnonzero(mask))"
            )
        return Coords(_index_array(a, extent, d, array_dim)), False
    raise SelectionTypeError(
        f"index {_short(a)} on dimension {d} is not an integer, a slice, '...', a list of increasing "
        "integers or a boolean array"
    )


def iter_chunk_slices(shape: tuple[int, ...], chunks: tuple[int, ...], sel: Any = None) -> Iterator[tuple[slice, ...]]:
    """Return an iterator over the part of ``sel`` in each chunk, in C order, as h5py's ``iter_chunks``.

    ``sel``: ``None`` (everything), or one int or slice per dimension. An int ``n``
    stands for ``n:n+1``; a slice's missing (or zero) start is 0 and its missing (or
    zero) stop the extent, its step is ignored; the region must lie inside the dataset
    and not be empty (so an empty dataset has nothing to iterate: ``ValueError``, as in
    h5py). The selection is checked here, before the first chunk is asked for.
    """
    rank = len(shape)
    if rank == 0:
        raise SelectionTypeError("a scalar dataset has no chunks to iterate over")
    if sel is None:
        sel = tuple(slice(0, e) for e in shape)
    parts = [sel] if isinstance(sel, (slice, int)) else list(sel) if isinstance(sel, tuple) else None
    if parts is None or len(parts) != rank:
        raise SelectionValueError(f"iter_chunks selection {_short(sel)} must give one int or slice per dimension ({rank})")
    ranges = []
    for d, (p, c) in enumerate(zip(parts, chunks, strict=True)):
        if isinstance(p, slice):
            start, stop = p.start or 0, p.stop or shape[d]
        elif isinstance(p, int) and not isinstance(p, bool):
            start, stop = p, p + 1
        else:
            raise SelectionTypeError(f"iter_chunks selection {_short(p)} on dimension {d} must be an int or a slice")
        if not isinstance(start, int) or not isinstance(stop, int) or start < 0 or stop > shape[d] or stop <= start:
            raise SelectionValueError(
                f"iter_chunks selection {_short(p)} on dimension {d} must lie within the dataset and not be empty "
                f"(0 <= start < stop <= {shape[d]})"
            )
        ranges.append([(max(start, k * c), min(stop, (k + 1) * c)) for k in range(start // c, -(-stop // c))])
    return (tuple(slice(a, b, 1) for a, b in combo) for combo in itertools.product(*ranges))
