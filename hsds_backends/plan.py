"""Planning and assembly: a selection becomes chunk tasks, chunk results become the answer.

:func:`plan_hyperslab`, :func:`plan_points` and :func:`plan_query` turn a
selection into a :class:`ReadPlan`: chunk tasks (docs/hsds-format.md §1.3
``getChunkIds`` / ``getChunkSelection``) plus where each result lands.
:class:`Assembler` places results into the output, filling missing chunks with
the fill value (§3.4), merging query rows in index order and applying a global
``Limit``.
"""

from __future__ import annotations

import itertools
import math
import os
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, Literal

import numpy as np

from .config import CORE_KEYS, option
from .errors import LimitError, QueryError, SelectionError, TaskError
from .selection import Hyperslab, Slice, check_points, dim_chunk_count, dim_cuts, format_select
from .tasks import ChunkResult, ChunkTask, field_dtype, query_dtype
from .vlen import _VlenFormatError, decode_vlen

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from .dataset import DatasetMeta

__all__ = ["ReadPlan", "plan_hyperslab", "plan_points", "plan_query", "Assembler"]

PlanKind = Literal["hyperslab", "points", "query"]


@dataclass
class ReadPlan:
    """Chunk tasks for one read plus where each result lands.

    ``placements[i]`` belongs to ``tasks[i]``: a tuple of per-dim output
    indexers (hyperslab), an int array of output positions (points), or
    ``None`` (query: rows are merged in task order, which is index order).
    """

    meta: DatasetMeta
    kind: PlanKind
    tasks: list[ChunkTask]
    placements: list[Any]
    block_shape: tuple[int, ...]
    result_shape: tuple[int, ...]
    out_dtype: np.dtype[Any]
    fields: tuple[str, ...] | None = None
    limit: int | None = None
    num_points: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def num_chunks(self) -> int:
        return len(self.tasks)

    @property
    def nbytes(self) -> int:
        """Bytes of the result (0 for queries, whose size is unknown until run)."""
        if self.kind == "query" or self.out_dtype.hasobject:
            return 0
        return math.prod(self.block_shape) * self.out_dtype.itemsize

    @property
    def max_task_bytes(self) -> int:
        """Upper bound on one task's result bytes (vlen and query: a whole chunk's worth)."""
        return self.meta.chunk_nbytes if self.meta.itemsize else math.prod(self.meta.chunks) * 128


@dataclass(frozen=True)
class ReadLimits:
    """Bounds on one read, checked before its tasks are built or its output allocated.

    Parameters
    ----------
    chunks
        Most chunks one read may touch (config ``read_chunks_limit``).
    nbytes
        Largest output of one read (config ``read_bytes_limit``); ``None``: half of the
        memory available when the read is planned.
    """

    chunks: int = 250_000
    nbytes: int | None = None

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> ReadLimits:
        """Build from config ``read_chunks_limit`` and ``read_bytes_limit``."""
        chunks = option(config, "read_chunks_limit", CORE_KEYS["read_chunks_limit"])
        return cls(chunks, option(config, "read_bytes_limit", CORE_KEYS["read_bytes_limit"]))

    def check(self, meta: DatasetMeta, chunks: int, nbytes: int) -> None:
        """Raise :class:`LimitError` if a read of ``chunks`` chunks and ``nbytes`` output bytes is over a bound."""
        if chunks > self.chunks:
            raise LimitError(
                f"dataset {meta.id}: the selection touches {chunks} chunks, over read_chunks_limit ({self.chunks}); "
                "read a smaller selection or raise config read_chunks_limit"
            )
        if not nbytes:  # nothing to bound (query and point-grouping checks count chunks only)
            return
        limit = self.nbytes if self.nbytes is not None else _recent_available_memory() // 2
        if nbytes > limit:
            source = "read_bytes_limit" if self.nbytes is not None else "half the available memory (default of read_bytes_limit)"
            raise LimitError(
                f"dataset {meta.id}: the result would be {nbytes} bytes, over {source} ({limit} bytes); "
                "read a smaller selection or set config read_bytes_limit"
            )


def available_memory() -> int:
    """Return the bytes of memory available to new allocations (Linux ``MemAvailable``, else physical memory)."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (OSError, ValueError, AttributeError):  # pragma: no cover - not a POSIX system
        return 2**63


#: Seconds a reading of the available memory is reused: planning runs on every read, and
#: /proc/meminfo costs a file read each time.
_MEMORY_TTL_S: Final = 1.0
_memory_seen: tuple[float, int] = (-_MEMORY_TTL_S, 0)


def _recent_available_memory() -> int:
    """:func:`available_memory`, read at most once per :data:`_MEMORY_TTL_S`."""
    global _memory_seen
    now = time.monotonic()
    at, value = _memory_seen
    if now - at >= _MEMORY_TTL_S:
        value = available_memory()
        _memory_seen = (now, value)
    return value


_DEFAULT_LIMITS: Final = ReadLimits()


def _norm_fields(fields: Sequence[str] | str | None) -> tuple[str, ...] | None:
    if fields is None:
        return None
    if isinstance(fields, str):
        fields = [f for f in fields.replace(":", ",").split(",") if f.strip()]
    t = tuple(f.strip() for f in fields)
    return t or None


def plan_hyperslab(
    meta: DatasetMeta, sel: Hyperslab, fields: Sequence[str] | str | None = None, *, limits: ReadLimits = _DEFAULT_LIMITS
) -> ReadPlan:
    """Plan a hyperslab read of ``sel`` (optionally projected onto ``fields``), within ``limits``."""
    flds = _norm_fields(fields)
    out_dtype = field_dtype(meta.dtype, flds)
    if meta.is_scalar:
        sel = Hyperslab((Slice(0, 1, 1),), (True,))
    if len(sel.dims) != len(meta.data_shape):
        raise SelectionError(f"selection has rank {len(sel.dims)}, the dataset has rank {meta.rank}")
    limits.check(
        meta,
        math.prod(dim_chunk_count(d, c) for d, c in zip(sel.dims, meta.chunks, strict=True)),
        math.prod(sel.shape) * max(out_dtype.itemsize, 8 if out_dtype.hasobject else 0),
    )
    per_dim = [dim_cuts(d, c) for d, c in zip(sel.dims, meta.chunks, strict=True)]
    tasks: list[ChunkTask] = []
    placements: list[Any] = []
    for combo in itertools.product(*per_dim):
        index = tuple(c.index for c in combo)
        cid = meta.chunk_id(index)
        tasks.append(
            ChunkTask(cid, meta, meta.location(index, cid), "hyperslab", format_select([c.chunk for c in combo]), fields=flds)
        )
        placements.append(tuple(c.out for c in combo))
    return ReadPlan(meta, "hyperslab", tasks, placements, sel.shape, sel.result_shape, out_dtype, flds)


def plan_points(
    meta: DatasetMeta, points: Any, fields: Sequence[str] | str | None = None, *, limits: ReadLimits = _DEFAULT_LIMITS
) -> ReadPlan:
    """Plan a point read: group (N, rank) absolute coordinates by chunk (§5.2), within ``limits``."""
    flds = _norm_fields(fields)
    out_dtype = field_dtype(meta.dtype, flds)
    pts = check_points(points, meta.shape)
    n = pts.shape[0]
    limits.check(meta, 0, n * out_dtype.itemsize)  # one task per touched chunk: at most n, checked below
    tasks: list[ChunkTask] = []
    placements: list[Any] = []
    if n:
        cidx = pts.astype(np.int64) // np.asarray(meta.chunks, dtype=np.int64)
        lin = np.ravel_multi_index(tuple(cidx.T), meta.chunk_grid)
        order = np.argsort(lin, kind="stable")
        uniq, starts = np.unique(lin[order], return_index=True)
        limits.check(meta, int(uniq.size), 0)
        ends = [*starts[1:].tolist(), n]
        for u, s, e in zip(uniq.tolist(), starts.tolist(), ends, strict=True):
            pos = order[s:e]
            index = tuple(int(i) for i in np.unravel_index(u, meta.chunk_grid))
            cid = meta.chunk_id(index)
            tasks.append(ChunkTask(cid, meta, meta.location(index, cid), "points", points=pts[pos], fields=flds))
            placements.append(pos)
    return ReadPlan(meta, "points", tasks, placements, (n,), (n,), out_dtype, flds, num_points=n)


def plan_query(
    meta: DatasetMeta,
    query: str,
    sel: Hyperslab | None = None,
    limit: int | None = None,
    fields: Sequence[str] | str | None = None,
    *,
    limits: ReadLimits = _DEFAULT_LIMITS,
) -> ReadPlan:
    """Plan a query over a 1-d compound dataset, optionally within a stepped range (§5.3), within ``limits``.

    The query text is parsed here, so a bad query fails before any chunk is read.
    """
    from .query import parse_query

    if meta.rank != 1 or meta.dtype.names is None:
        raise QueryError(
            f"query {query!r} needs a 1-d compound (table) dataset; this dataset has shape {list(meta.shape)} and type {meta.dtype}"
        )
    parsed = parse_query(query, meta.dtype)
    flds = _norm_fields(fields)
    qdt = query_dtype(meta.dtype, flds)
    if limit is not None and (not isinstance(limit, (int, np.integer)) or limit < 0):
        raise QueryError(f"Limit {limit!r} must be a non-negative integer (0 = no limit)")
    sel = sel or Hyperslab.all(meta.shape)
    dim = sel.dims[0]
    if not isinstance(dim, Slice):
        raise SelectionError("a query's selection must be a range like [0:1000:2], not a coordinate list")
    limits.check(meta, dim_chunk_count(dim, meta.chunks[0]), 0)  # its rows are counted as they arrive
    tasks: list[ChunkTask] = []
    for cut in dim_cuts(dim, meta.chunks[0]):
        cid = meta.chunk_id((cut.index,))
        tasks.append(
            ChunkTask(
                cid, meta, meta.location((cut.index,), cid), "query", format_select([cut.chunk]),
                fields=flds, query=parsed.to_wire(), limit=int(limit) if limit else None,
            )
        )
    return ReadPlan(meta, "query", tasks, [None] * len(tasks), (0,), (0,), qdt, flds, int(limit) if limit else None, extra={"query": parsed})


class Assembler:
    """Place chunk results into the output of a :class:`ReadPlan`.

    Call :meth:`add` once per task, in any order and from any thread (tasks
    write disjoint regions; the counters are locked), then :meth:`result`.
    Missing chunks are filled with the (projected) fill value.
    """

    def __init__(self, plan: ReadPlan) -> None:
        self.plan = plan
        dt = plan.out_dtype
        self._vlen = dt.hasobject
        self._rows: list[np.ndarray[Any, Any] | None] = [None] * len(plan.tasks) if plan.kind == "query" else []
        if plan.kind == "query":
            self._out = None
        elif self._vlen:
            self._out = np.empty(plan.block_shape, dtype=dt)
        else:
            self._out = np.empty(plan.block_shape, dtype=_raw_dtype(dt.itemsize))
        self._fill_value: np.ndarray[Any, Any] | None = None
        self._lock = threading.Lock()
        self.filled = 0
        self.bytes_returned = 0

    def _count(self, returned: int, filled: int) -> None:
        with self._lock:
            self.bytes_returned += returned
            self.filled += filled

    # -------------------------------------------------------------- helpers
    def _fill(self) -> np.ndarray[Any, Any]:
        if self._fill_value is None:
            meta = self.plan.meta
            if self._vlen:
                fe = meta.fill_element
                if self.plan.fields:
                    proj = np.empty((), dtype=self.plan.out_dtype)
                    for f in self.plan.fields:
                        proj[f] = fe[f]
                    fe = proj
                self._fill_value = fe
            else:
                if self.plan.fields:
                    # the dataset may hold vlen members even when the projected fields are fixed-size
                    whole = meta.fill_element.reshape(1) if meta.is_vlen else np.frombuffer(meta.fill_raw, dtype=meta.dtype)
                    proj = np.empty(1, dtype=self.plan.out_dtype)
                    for f in self.plan.fields:
                        proj[f] = whole[f]
                    raw = proj.tobytes()
                else:
                    raw = meta.fill_raw
                self._fill_value = np.frombuffer(raw, dtype=_raw_dtype(len(raw))).reshape(())
        return self._fill_value

    def _values(self, data: bytes | bytearray | memoryview, shape: tuple[int, ...], cid: str) -> np.ndarray[Any, Any]:
        dt = self.plan.out_dtype
        n = math.prod(shape)
        if self._vlen:
            try:
                return decode_vlen(data, dt, n).reshape(shape)
            except ValueError as exc:
                raise TaskError(f"chunk {cid}: result holds malformed variable-length data: {exc}") from exc
        if len(data) != n * dt.itemsize:
            raise TaskError(f"chunk {cid}: result has {len(data)} bytes, expected {n * dt.itemsize} ({n} × {dt.itemsize})")
        return np.frombuffer(data, dtype=_raw_dtype(dt.itemsize)).reshape(shape)

    # ----------------------------------------------------------------- API
    def add(self, i: int, res: ChunkResult) -> None:
        """Place the result of ``plan.tasks[i]``.

        Nothing refers to ``res.data`` after this returns (its bytes are copied), so a
        backend may reuse the buffer behind it.
        """
        plan = self.plan
        place = plan.placements[i]
        self._count(len(res.data), 1 if res.status == "missing" and plan.kind != "query" else 0)
        if plan.kind == "query":
            if res.status == "missing":  # a remote executor may still say 404 for "no rows"
                self._rows[i] = np.empty(0, dtype=plan.out_dtype)
            else:
                qdt = plan.out_dtype
                if self._vlen:
                    try:
                        self._rows[i] = decode_vlen(res.data, qdt, _count_rows(res.data, qdt))
                    except (ValueError, UnicodeDecodeError, _VlenFormatError) as exc:
                        raise TaskError(f"chunk {res.chunk_id}: query result holds malformed variable-length rows: {exc}") from exc
                else:
                    if len(res.data) % qdt.itemsize:
                        raise TaskError(f"chunk {res.chunk_id}: query result of {len(res.data)} bytes is not whole rows of {qdt.itemsize}")
                    # kept past this call: copy unless the bytes are immutable (a backend may reuse its buffer)
                    data = res.data if isinstance(res.data, bytes) else bytes(res.data)
                    self._rows[i] = np.frombuffer(data, dtype=qdt)
            return
        out = self._out
        assert out is not None
        if plan.kind == "points":
            if res.status == "missing":
                out[place] = self._fill()
            else:
                out[place] = self._values(res.data, (len(place),), res.chunk_id)
            return
        idx = _outer(place)
        if res.status == "missing":
            out[idx] = self._fill()
        else:
            shape = tuple(len(p) if isinstance(p, np.ndarray) else (p.stop - p.start) for p in place)
            out[idx] = self._values(res.data, shape, res.chunk_id)

    def result(self) -> np.ndarray[Any, Any]:
        """Return the assembled array (or query rows)."""
        plan = self.plan
        if plan.kind == "query":
            parts = [r for r in self._rows if r is not None and r.size]
            total = sum(len(p) for p in parts)
            if plan.limit:
                total = min(total, plan.limit)
            # not np.concatenate: numpy 2 promotion would make big-endian fields native
            rows = np.empty(total, dtype=plan.out_dtype)
            pos = 0
            for p in parts:
                take = min(len(p), total - pos)
                rows[pos : pos + take] = p[:take]
                pos += take
                if pos == total:
                    break
            return rows
        out = self._out
        assert out is not None
        if not self._vlen:
            out = out.view(plan.out_dtype) if plan.out_dtype.subdtype is None else _view_subarray(out, plan.out_dtype)
        return out.reshape(plan.result_shape + out.shape[len(plan.block_shape) :])


def _raw_dtype(itemsize: int) -> np.dtype[Any]:
    """The dtype results are placed as: raw bytes per element (unsigned ints copy faster than ``V``)."""
    return np.dtype(_UINT.get(itemsize, f"V{itemsize}"))


_UINT = {1: "u1", 2: "<u2", 4: "<u4", 8: "<u8"}


def _view_subarray(out: np.ndarray[Any, Any], dt: np.dtype[Any]) -> np.ndarray[Any, Any]:
    base, dims = dt.subdtype  # type: ignore[misc]
    return out.view(base).reshape(out.shape + tuple(dims))


def _outer(place: tuple[Any, ...]) -> tuple[Any, ...]:
    if not any(isinstance(p, np.ndarray) for p in place):
        return place
    arrays = [p if isinstance(p, np.ndarray) else np.arange(p.start, p.stop) for p in place]
    return np.ix_(*arrays)


def _count_rows(data: bytes | bytearray | memoryview, dt: np.dtype[Any]) -> int:
    """Count vlen-encoded rows by walking the byte stream once."""
    from .vlen import _decoder

    buf = memoryview(data).cast("B")
    dec = _decoder(dt)
    pos = n = 0
    while pos < len(buf):
        _, pos = dec(buf, pos)
        n += 1
    return n
