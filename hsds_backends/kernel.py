"""The chunk-read kernel: one function that executes one chunk task.

fetch → decode → select → bytes. Every backend runs this same code: ``inline``
in a thread pool, a DN in its request handler, Lambda in its handler, Dask on
its workers (DESIGN.md §1 "kernel"). Backends differ only in transport and
scheduling.

- :func:`fetch` reads the task's bytes from storage (``None`` = missing).
- :func:`process` is pure CPU: decode (hsds-format.md §3.3), cut the selection,
  serialise. Safe to call from threads; the codecs release the GIL.
- :func:`run_task` = ``process(task, await fetch(task, storage))``.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import numpy as np

from .codecs import decode_chunk
from .errors import ChunkDecodeError, HsdsBackendsError, NotFoundError, SelectionError, TaskError
from .selection import Coords, Hyperslab, Slice, parse_select
from .tasks import ChunkResult, ChunkTask, field_dtype, query_dtype
from .vlen import decode_vlen, encode_vlen

if TYPE_CHECKING:
    from .dataset import DatasetMeta
    from .query import Query
    from .storage import Storage

__all__ = ["fetch", "process", "decode_task", "process_chunk", "run_task", "decode_to_array", "chunk_index_tuple"]


async def fetch(task: ChunkTask, storage: Storage) -> bytes | None:
    """Return the stored bytes of the task's chunk, or ``None`` if it does not exist."""
    loc = task.location
    if loc is None:
        return None
    return await storage.get(loc.bucket, loc.key, loc.offset, loc.size)


async def run_task(task: ChunkTask, storage: Storage) -> ChunkResult:
    """Execute one chunk task against ``storage`` (fetch, then :func:`process`)."""
    return process(task, await fetch(task, storage))


def chunk_index_tuple(task: ChunkTask) -> tuple[int, ...]:
    from .ids import chunk_index

    return chunk_index(task.chunk_id)


def decode_to_array(meta: DatasetMeta, data: bytes | bytearray | memoryview, chunk_id: str, key: str, *, linked: bool = False) -> np.ndarray[Any, Any]:
    """Decode stored chunk bytes into an array of the chunk shape.

    Fixed-size types come back as a ``V<itemsize>`` view (byte-exact, any
    type); variable-length types as an object/structured array.

    Raises
    ------
    ChunkDecodeError
        Corrupt, truncated or wrong-length bytes; the message names the chunk
        id and the key.
    """
    chunks = meta.chunks
    count = math.prod(chunks)
    if meta.is_vlen:
        raw = decode_chunk(data, meta.ops, itemsize=1, nbytes=None, chunk_id=chunk_id, key=key, linked=linked)
        try:
            return decode_vlen(raw, meta.dtype, count).reshape(chunks)
        except ValueError as exc:
            raise ChunkDecodeError(f"chunk {chunk_id} (key {key}) holds malformed variable-length data: {exc}") from exc
    nbytes = count * meta.dtype.itemsize
    if linked and meta.layout_class == "H5D_CONTIGUOUS_REF" and len(data) < nbytes:
        # the last contiguous chunk may end at EOF; its tail lies outside the extent (§3.5, as 1.0.2 pads)
        data = bytes(data) + bytes(nbytes - len(data))
    raw = decode_chunk(data, meta.ops, itemsize=meta.dtype.itemsize, nbytes=nbytes, chunk_id=chunk_id, key=key, linked=linked)
    return np.frombuffer(raw, dtype=f"V{meta.dtype.itemsize}").reshape(chunks)


def _index(hs: Hyperslab) -> tuple[Any, ...]:
    coords = [i for i, d in enumerate(hs.dims) if isinstance(d, Coords)]
    if not coords:
        return tuple(slice(d.start, d.stop, d.step) for d in hs.dims)  # type: ignore[union-attr]
    arrays = [d.values if isinstance(d, Coords) else np.arange(d.start, d.stop, d.step) for d in hs.dims]
    return np.ix_(*arrays)


def _fill_chunk(meta: DatasetMeta) -> np.ndarray[Any, Any]:
    if meta.is_vlen:
        arr = np.empty(meta.chunks, dtype=meta.dtype)
        if meta.dtype.names is None:
            arr.fill(meta.fill_element[()])  # an element may itself be an array: no broadcasting
        else:
            arr[...] = meta.fill_element
        return arr
    return np.broadcast_to(np.frombuffer(meta.fill_raw, dtype=f"V{meta.dtype.itemsize}"), meta.chunks)


def _typed(meta: DatasetMeta, arr: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """View a ``V`` chunk array with the dataset's (compound) dtype."""
    if arr.dtype.kind == "V" and arr.dtype.names is None and meta.dtype.names is not None:
        return arr.view(meta.dtype)
    return arr


def _serialise(values: np.ndarray[Any, Any], dt: np.dtype[Any]) -> bytes:
    if dt.hasobject:
        return encode_vlen(values, dt)
    return np.ascontiguousarray(values).tobytes()


def _serialise_view(values: np.ndarray[Any, Any], dt: np.dtype[Any]) -> bytes | memoryview:
    """:func:`_serialise`, but a contiguous fixed-size result is a view, not a copy (``copy=False``)."""
    if not dt.hasobject and values.flags.c_contiguous:
        return values.reshape(-1).view(np.uint8).data  # the caller copies it once, where it goes
    return _serialise(values, dt)


def _project(meta: DatasetMeta, values: np.ndarray[Any, Any], fields: tuple[str, ...] | None) -> tuple[np.ndarray[Any, Any], np.dtype[Any]]:
    if not fields:
        return values, meta.dtype
    sub = field_dtype(meta.dtype, fields)
    typed = _typed(meta, values)
    out = np.empty(typed.shape, dtype=sub)
    for f in fields:
        out[f] = typed[f]
    return out, sub


@lru_cache(maxsize=256)
def _parsed_query(text: str, dtype: np.dtype[Any]) -> Query:
    from .query import parse_query

    return parse_query(text, dtype)


def process(task: ChunkTask, data: bytes | bytearray | memoryview | None, *, copy: bool = True) -> ChunkResult:
    """Decode ``data`` (the task's stored bytes, ``None`` if missing) and cut out the selection.

    Equals ``process_chunk(task, decode_task(task, data), copy=copy)``; an executor
    that caches decoded chunks (a DN) calls the two steps itself. With
    ``copy=False`` a hyperslab result that is already contiguous in the decoded
    chunk (a whole chunk, or whole rows of it) comes back as a read-only
    ``memoryview`` of it instead of a copy: for callers that copy the bytes
    once anyway (into the output, or into an answer).

    Returns
    -------
    ChunkResult
        ``missing`` for an absent chunk (hyperslab and points: the caller fills);
        a query over an absent chunk runs on a chunk of fill values, so query
        results agree with reads.

    Raises
    ------
    HsdsBackendsError
        A subclass naming the chunk id: :class:`ChunkDecodeError` for bad
        bytes, :class:`SelectionError`/:class:`QueryError`/:class:`FieldError`
        for a bad task.
    """
    chunk = decode_task(task, data)
    fetched = 0 if data is None else len(data)
    return process_chunk(task, chunk, fetched=fetched, copy=copy)


def decode_task(task: ChunkTask, data: bytes | bytearray | memoryview | None) -> np.ndarray[Any, Any] | None:
    """Decode the task's stored bytes into the chunk array (the first half of :func:`process`).

    Returns ``None`` for an absent chunk of a hyperslab or point task (the
    caller fills); a query over an absent chunk gets a chunk of fill values.
    Nothing here or in :func:`process_chunk` writes into the array, so one
    decoded chunk may serve many tasks (a DN's decoded-chunk cache).

    Raises
    ------
    NotFoundError
        A linked chunk whose file is missing.
    ChunkDecodeError
        Corrupt bytes, naming the chunk id and key.
    """
    meta = task.dset
    cid = task.chunk_id
    loc = task.location
    key = loc.key if loc is not None else "(none)"
    try:
        if data is None:
            if loc is not None and loc.linked:
                # a chunk table entry that points nowhere is not an unwritten chunk (§3.4: the 404 propagates)
                raise NotFoundError(
                    f"chunk {cid}: linked file {loc.bucket}/{loc.key} is missing (offset {loc.offset}, size {loc.size});"
                    " check the dataset's file_uri"
                )
            if task.kind != "query":
                return None
            return _fill_chunk(meta)
        return decode_to_array(meta, data, cid, key, linked=bool(loc and loc.linked))
    except HsdsBackendsError as exc:
        _name_chunk(exc, cid)
        raise


def process_chunk(task: ChunkTask, chunk: np.ndarray[Any, Any] | None, *, fetched: int = 0, copy: bool = True) -> ChunkResult:
    """Cut the task's selection out of a decoded chunk (the second half of :func:`process`).

    ``chunk`` comes from :func:`decode_task` (``None``: the chunk is missing);
    ``fetched`` is reported as the stored bytes read for it; ``copy`` as in :func:`process`.
    """
    meta = task.dset
    cid = task.chunk_id
    if chunk is None:
        return ChunkResult(cid, "missing")
    try:
        decoded = 0 if fetched == 0 or meta.is_vlen else chunk.nbytes  # vlen: not tracked
        if task.kind == "points":
            return ChunkResult(cid, "ok", _points(task, meta, chunk), fetched, decoded)
        sel = parse_select(task.select, meta.chunks) if task.select is not None else Hyperslab.all(meta.chunks)
        if task.kind == "query":
            return ChunkResult(cid, "ok", _query(task, meta, chunk, sel), fetched, decoded)
        values, dt = _project(meta, chunk[_index(sel)], task.fields)
        return ChunkResult(cid, "ok", _serialise(values, dt) if copy else _serialise_view(values, dt), fetched, decoded)
    except HsdsBackendsError as exc:
        _name_chunk(exc, cid)
        raise


def _name_chunk(exc: HsdsBackendsError, cid: str) -> None:
    if cid not in str(exc):
        exc.args = (f"chunk {cid}: {exc}", *exc.args[1:])


def _points(task: ChunkTask, meta: DatasetMeta, chunk: np.ndarray[Any, Any]) -> bytes:
    from .ids import chunk_index

    assert task.points is not None
    origin = np.asarray(chunk_index(task.chunk_id), dtype=np.int64) * np.asarray(meta.chunks, dtype=np.int64)
    rel = task.points.astype(np.int64) - origin
    bad = np.nonzero(((rel < 0) | (rel >= np.asarray(meta.chunks))).any(axis=1))[0]
    if bad.size:
        p = task.points[int(bad[0])].tolist()
        raise SelectionError(f"point {p} does not lie in chunk {task.chunk_id} (chunk origin {origin.tolist()}, chunk dims {list(meta.chunks)})")
    values = chunk[tuple(rel.T)]
    values, dt = _project(meta, values, task.fields)
    return _serialise(values, dt)


def _query(task: ChunkTask, meta: DatasetMeta, chunk: np.ndarray[Any, Any], sel: Hyperslab) -> bytes:
    from .ids import chunk_index

    if meta.rank != 1 or meta.dtype.names is None:
        raise TaskError(f"query needs a 1-d compound (table) dataset; this dataset has shape {list(meta.shape)} and type {meta.dtype}")
    dim = sel.dims[0]
    if not isinstance(dim, Slice):
        raise SelectionError(f"a query's select must be a range like '[0:100:2]', got {task.select!r}")
    q = _parsed_query(task.query or "", meta.dtype)
    rows = _typed(meta, chunk)[dim.start : dim.stop : dim.step]
    hits = np.nonzero(q.evaluate(rows))[0]
    if task.limit:
        hits = hits[: task.limit]
    qdt = query_dtype(meta.dtype, task.fields)
    out = np.empty(hits.size, dtype=qdt)
    origin = chunk_index(task.chunk_id)[0] * meta.chunks[0]
    # absolute row = chunk origin + start + k·step (HSDS master mis-reports this, §5.3; we do not)
    out[qdt.names[0]] = origin + dim.start + hits.astype(np.uint64) * dim.step  # type: ignore[index]
    picked = rows[hits]
    for f in qdt.names[1:]:  # type: ignore[index]
        out[f] = picked[f]
    return _serialise(out, qdt)
