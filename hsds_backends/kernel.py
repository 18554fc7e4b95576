"""The chunk-read kernel: fetch → decode → select → bytes, for one chunk task.

Every backend runs this same code: ``inline`` in a thread pool, a DN in its
request handler, Lambda in its handler, Dask on its workers (docs/architecture.md §1
"kernel"). Backends differ only in transport and scheduling.

The entry point:

- :func:`run_task` (async): fetch the task's bytes, then decode and cut the
  selection, in ``executor`` or right here. A storage with a sync reader
  (posix, :meth:`~hsds_backends.storage.Storage.sync_reader`) is read in the
  executor thread together with the decode, one hop; other storages are
  awaited, and a missing chunk then comes back without any hop. Options:
  ``copy=False`` for callers that copy the bytes once anyway (a whole chunk is
  then its decoded bytes as they are), ``cache`` for a decoded-chunk cache
  (:class:`DecodedChunkCache`, a DN's LRU).
- :func:`run_task_sync`: the same in the calling thread, for code that already
  runs in a worker thread (reading through a sync reader, or given bytes
  fetched already).

Its parts stay public for tests and special executors: :func:`fetch` reads the
task's bytes (``None`` = missing); :func:`process` is pure CPU, decode
(docs/hsds-format.md §3.3), cut the selection, serialise, and equals
:func:`decode_task` then :func:`process_chunk`. Safe to call from threads; the
codecs release the GIL.
"""

from __future__ import annotations

import asyncio
import math
import threading
from contextlib import contextmanager
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from .chunk_table import hyper_problem, merged_ranges, pending_error
from .codecs import decode_chunk, decode_chunk_part
from .errors import ChunkDecodeError, HsdsBackendsError, NotFoundError, SelectionError, TaskError
from .ids import chunk_index
from .model import default_workers
from .selection import Coords, Hyperslab, Slice, parse_select
from .storage.base import reusable_read_buffer
from .tasks import ChunkResult, ChunkTask, field_dtype, query_dtype
from .vlen import decode_vlen, encode_vlen

if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping, Sequence
    from concurrent.futures import Executor

    from .dataset import ChunkLocation, DatasetMeta
    from .query import Query
    from .storage import Storage, SyncRead

__all__ = [
    "DecodedChunkCache",
    "chunk_index_tuple",
    "decode_task",
    "decode_to_array",
    "fetch",
    "fetch_location",
    "process",
    "process_chunk",
    "read_location",
    "run_task",
    "run_task_sync",
]


class DecodedChunkCache(Protocol):
    """A cache of whole decoded chunks that :func:`run_task` consults (a DN's LRU, docs/hsds-format.md §4.6).

    A chunk is cached whole, so one entry serves every selection of it; the
    kernel never writes into a cached array. :func:`run_task` asks :meth:`get`
    first; when that gives ``None`` it reads and decodes the chunk itself and
    then reports exactly once: :meth:`put` with what it decoded, or
    :meth:`failed`. An implementation may therefore make concurrent readers of
    one chunk wait in :meth:`get` for the first one's :meth:`put`.
    """

    async def get(self, task: ChunkTask) -> np.ndarray[Any, Any] | None:
        """Return the task's decoded chunk, or ``None``: the kernel decodes it and reports back."""

    def put(self, task: ChunkTask, chunk: np.ndarray[Any, Any] | None) -> None:
        """Take the chunk decoded after :meth:`get` gave ``None``; ``None`` = the chunk does not exist."""

    def failed(self, task: ChunkTask, exc: BaseException) -> None:
        """Hear that reading or decoding raised ``exc`` (:class:`asyncio.CancelledError` if cancelled)."""


async def fetch(task: ChunkTask, storage: Storage) -> bytes | None:
    """Return the stored bytes of the task's chunk, or ``None`` if it does not exist."""
    loc = task.location
    if loc is None:
        return None
    return await fetch_location(storage, loc, task.chunk_id)


#: Byte-range GETs of one hyper-chunk in flight at once.
_RANGE_GETS = 8


async def fetch_location(storage: Storage, loc: ChunkLocation, cid: str = "") -> bytes | None:
    """Return the bytes ``loc`` names (``None``: the object does not exist).

    A hyper-chunk's HDF5 chunks (docs/hsds-format.md §3.5) are fetched as merged byte ranges,
    concurrently, and returned back to back in part order (parts of size 0 contribute
    nothing), which :func:`decode_task` splits again by the parts' sizes.

    Raises
    ------
    TaskError
        ``loc`` is pending: its chunk-table entry was never looked up.
    ChunkDecodeError
        An HDF5 chunk runs past the end of its file.
    """
    if loc.pending:
        raise pending_error(cid)
    if loc.parts is None:
        return await storage.get(loc.bucket, loc.key, loc.offset, loc.size)
    ranges = merged_ranges(loc.parts)
    gate = asyncio.Semaphore(_RANGE_GETS)

    async def get(start: int, length: int) -> bytes | None:
        async with gate:
            return await storage.get(loc.bucket, loc.key, start, length)

    blobs = await asyncio.gather(*(get(start, length) for start, length, _ in ranges))
    return _join_parts(loc, ranges, blobs, cid)


def read_location(read: SyncRead, loc: ChunkLocation, cid: str = "") -> bytes | memoryview | None:
    """:func:`fetch_location` through a blocking reader (a storage's :meth:`~hsds_backends.storage.Storage.sync_reader`)."""
    if loc.pending:
        raise pending_error(cid)
    if loc.parts is None:
        return read(loc.bucket, loc.key, loc.offset, loc.size)
    ranges = merged_ranges(loc.parts)
    return _join_parts(loc, ranges, [read(loc.bucket, loc.key, start, length) for start, length, _ in ranges], cid)


def _join_parts(
    loc: ChunkLocation, ranges: list[tuple[int, int, list[int]]], blobs: Sequence[bytes | bytearray | memoryview | None], cid: str
) -> bytes | None:
    assert loc.parts is not None
    if any(b is None for b in blobs):
        return None  # the file is missing: decode_task names it
    pieces: list[bytes | bytearray | memoryview] = [b""] * len(loc.parts)
    for (start, _, members), blob in zip(ranges, blobs, strict=True):
        assert blob is not None
        view = memoryview(blob)
        for j in members:
            off, size = loc.parts[j]
            piece = view[off - start : off - start + size]
            if len(piece) < size:
                raise ChunkDecodeError(
                    f"chunk {cid}: HDF5 chunk {j} of it (offset {off}, size {size}) runs past the end of {loc.bucket}/{loc.key} "
                    f"({len(piece)} of its bytes are there); its chunk-table entry is wrong"
                )
            pieces[j] = piece
    return b"".join(pieces)


_CORES = default_workers()
_busy = 0  # chunk tasks running in this process's threads right now
_busy_lock = threading.Lock()
_in_task = threading.local()


@contextmanager
def _occupying() -> Iterator[None]:
    """Count this thread as busy with a chunk task while inside (nested uses count once)."""
    global _busy
    depth = getattr(_in_task, "depth", 0)
    if depth == 0:
        with _busy_lock:
            _busy += 1
    _in_task.depth = depth + 1
    try:
        yield
    finally:
        _in_task.depth = depth
        if depth == 0:
            with _busy_lock:
                _busy -= 1


def _decode_threads() -> int:
    """Threads one chunk's Blosc blocks may be decoded on: this one plus the cores no chunk task is using.

    A read of many chunks keeps every core busy with a chunk each and gets 1; a read of
    one chunk gets every core for its blocks (docs/architecture.md §4 "Kernel").
    """
    return max(1, _CORES - _busy + (1 if getattr(_in_task, "depth", 0) else 0))


async def run_task(
    task: ChunkTask,
    storage: Storage,
    *,
    executor: Executor | None = None,
    copy: bool = True,
    cache: DecodedChunkCache | None = None,
) -> ChunkResult:
    """Execute one chunk task against ``storage``: fetch, decode, cut out the selection.

    Parameters
    ----------
    task
        The chunk task.
    storage
        Where its bytes are.
    executor
        Where decoding and cutting run (a thread pool: the codecs release the
        GIL), or ``None`` to run them right here, on the event loop. With an
        executor, a storage that has a sync reader is read in the executor
        thread, in the same hop as the decode; other storages are awaited
        first, and a missing chunk (of a hyperslab or point task) is answered
        without entering the executor.
    copy
        As in :func:`process`: ``False`` lets contiguous results be views of
        the decoded chunk (a whole chunk: its bytes as they are), for callers
        that copy the bytes once anyway (into an answer, into the output).
    cache
        A decoded-chunk cache to consult and fill (:class:`DecodedChunkCache`);
        a hit is only cut, in ``executor``. Tasks without a location skip it.

    Returns
    -------
    ChunkResult
        As :func:`process` returns it; ``fetched`` is 0 for a cache hit.

    Raises
    ------
    HsdsBackendsError
        As :func:`fetch` and :func:`process` raise.
    """
    loc = task.location
    if cache is not None and loc is not None:
        return await _run_cached(task, storage, executor, copy, cache)
    if executor is not None:
        read = storage.sync_reader()
        if read is not None:
            # one hop for read and decode; the event loop never waits on the disk
            return await asyncio.get_running_loop().run_in_executor(executor, run_task_sync, task, read, None, copy)
    data = None if loc is None else await fetch_location(storage, loc, task.chunk_id)
    if executor is None or (data is None and task.kind != "query"):
        # no executor, or a missing chunk (the caller fills): nothing worth a thread hop
        return run_task_sync(task, None, data, copy)
    return await asyncio.get_running_loop().run_in_executor(executor, run_task_sync, task, None, data, copy)


def run_task_sync(
    task: ChunkTask,
    read: SyncRead | None = None,
    data: bytes | bytearray | memoryview | None = None,
    copy: bool = True,
) -> ChunkResult:
    """Execute one chunk task in the calling thread (code that already runs in a worker thread).

    Reads the task's bytes with ``read`` (a storage's
    :meth:`~hsds_backends.storage.Storage.sync_reader`) when given, else takes
    ``data``, the bytes fetched already (``None`` = missing); then decodes and
    cuts as :func:`process` does. The arguments may be given by position
    (``loop.run_in_executor`` passes no keywords).

    Parameters
    ----------
    task
        The chunk task.
    read
        Blocking reader of the task's storage, or ``None`` to use ``data``.
    data
        The task's stored bytes when ``read`` is ``None``; ``None`` = missing.
    copy
        As in :func:`process`.
    """
    with _occupying():
        chunk, fetched = _read_and_decode(task, read, data, True)  # no cache here: only the blocks the selection needs
        return process_chunk(task, chunk, fetched or 0, copy)


def _read_and_decode(
    task: ChunkTask, read: SyncRead | None, data: bytes | bytearray | memoryview | None, partial: bool
) -> tuple[np.ndarray[Any, Any] | None, int | None]:
    """Read the task's bytes with ``read`` (if given, else take ``data``) and decode them; also say how many were read (``None``: missing).

    A compressed chunk of one byte range decodes into new memory, so its stored bytes are
    needed only until it is decoded: they are read into the thread's reusable buffer
    (docs/architecture.md §4 "Kernel"; :func:`~hsds_backends.storage.base.reusable_read_buffer`).
    """
    loc = task.location
    if read is None or loc is None:
        return decode_task(task, data, partial), None if data is None else len(data)
    if loc.parts is not None or task.dset.ops.compressor is None:
        data = read_location(read, loc, task.chunk_id)
        return decode_task(task, data, partial), None if data is None else len(data)
    with reusable_read_buffer():
        data = read_location(read, loc, task.chunk_id)
        chunk = decode_task(task, data, partial)
        if chunk is not None and data is not None and np.may_share_memory(chunk, np.frombuffer(data, dtype=np.uint8)):
            chunk = chunk.copy()  # never the case for a compressed chunk; if it were, the next read must not change it
    return chunk, None if data is None else len(data)


async def _run_cached(
    task: ChunkTask, storage: Storage, executor: Executor | None, copy: bool, cache: DecodedChunkCache
) -> ChunkResult:
    """:func:`run_task` through a decoded-chunk cache (the task has a location)."""
    loop = asyncio.get_running_loop()
    chunk = await cache.get(task)
    if chunk is not None:
        if executor is None:
            return process_chunk(task, chunk, 0, copy)
        return await loop.run_in_executor(executor, process_chunk, task, chunk, 0, copy)
    try:
        read = storage.sync_reader() if executor is not None else None
        data = None
        if read is None:
            loc = task.location
            assert loc is not None  # run_task sends only located tasks here
            data = await fetch_location(storage, loc, task.chunk_id)
        if executor is None:
            chunk, res = _load(task, None, data, copy)
        else:
            chunk, res = await loop.run_in_executor(executor, _load, task, read, data, copy)
    except BaseException as exc:
        cache.failed(task, exc)
        raise
    cache.put(task, chunk)
    return res


def _load(
    task: ChunkTask, read: SyncRead | None, data: bytes | bytearray | memoryview | None, copy: bool
) -> tuple[np.ndarray[Any, Any] | None, ChunkResult]:
    """:func:`run_task_sync` that also returns the decoded chunk, for a cache (``None`` if missing)."""
    with _occupying():
        chunk, fetched = _read_and_decode(task, read, data, False)
        res = process_chunk(task, chunk, fetched or 0, copy)
    # a query over a missing chunk decoded a chunk of fill values: not worth caching
    return (chunk if fetched is not None else None), res


def chunk_index_tuple(task: ChunkTask) -> tuple[int, ...]:
    """Return the chunk's index in the dataset's chunk grid (from its chunk id)."""
    return chunk_index(task.chunk_id)


def decode_to_array(
    meta: DatasetMeta, data: bytes | bytearray | memoryview, chunk_id: str, key: str, *, linked: bool = False, threads: int = 1
) -> np.ndarray[Any, Any]:
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
        # the last contiguous chunk may end at EOF; its tail lies outside the extent (docs/hsds-format.md §3.5, as 1.0.2 pads)
        data = bytes(data) + bytes(nbytes - len(data))
    raw = decode_chunk(data, meta.ops, itemsize=meta.dtype.itemsize, nbytes=nbytes, chunk_id=chunk_id, key=key, linked=linked, threads=threads)
    return np.frombuffer(raw, dtype=f"V{meta.dtype.itemsize}").reshape(chunks)


def _needed_bytes(task: ChunkTask, meta: DatasetMeta) -> np.ndarray[Any, Any] | None:
    """The ``[lo, hi)`` raw-byte ranges of the chunk that the task's selection reads, or ``None`` for all of it.

    Points: one range per point. A hyperslab: from its first element to its last in C order
    (the bytes between may be read too; a block holding none of them is not). Malformed
    selections give ``None``: the whole decode runs and :func:`process_chunk` reports them.
    """
    itemsize = meta.dtype.itemsize
    try:
        if task.kind == "points":
            if task.points is None or not len(task.points):
                return None
            rel = _chunk_points(task, meta)  # a point outside the chunk: SelectionError, the whole decode reports it
            flat = np.ravel_multi_index(tuple(rel.T), meta.chunks).astype(np.int64) * itemsize
            return np.stack([flat, flat + itemsize], axis=1)
        if task.select is None or whole_select(task.select, meta.chunks):
            return None
        sel = parse_select(task.select, meta.chunks)
    except (HsdsBackendsError, ValueError):
        return None
    first: list[int] = []
    last: list[int] = []
    for d in sel.dims:
        if isinstance(d, Coords):
            if not len(d.values):
                return None
            first.append(int(d.values.min()))
            last.append(int(d.values.max()))
        else:
            n = len(range(d.start, d.stop, d.step))
            if n == 0:
                return None
            first.append(d.start)
            last.append(d.start + (n - 1) * d.step)
    lo = int(np.ravel_multi_index(tuple(first), meta.chunks)) * itemsize
    hi = (int(np.ravel_multi_index(tuple(last), meta.chunks)) + 1) * itemsize
    return np.array([[lo, hi]], dtype=np.int64)


def _decode_hyper(meta: DatasetMeta, loc: ChunkLocation, data: bytes | bytearray | memoryview, cid: str) -> np.ndarray[Any, Any]:
    """Decode a hyper-chunk: each stored HDF5 chunk with the file's filters, placed into a chunk of fill values (§3.5)."""
    assert loc.parts is not None and loc.hyper_dims is not None
    hyper = loc.hyper_dims
    problem = hyper_problem(meta.chunks, hyper)
    if problem:
        raise ChunkDecodeError(f"chunk {cid}: {problem}")
    factors = tuple(c // h for c, h in zip(meta.chunks, hyper, strict=True))
    if len(loc.parts) != math.prod(factors):
        raise ChunkDecodeError(f"chunk {cid}: {len(loc.parts)} HDF5 chunks given; hyper_dims {list(hyper)} make {math.prod(factors)}")
    itemsize = meta.dtype.itemsize
    chunk = np.array(_fill_chunk(meta))  # writable: the HDF5 chunks are placed into it
    view = memoryview(data)
    pos = 0
    for j, (_, size) in enumerate(loc.parts):
        if not size:
            continue
        raw = decode_chunk(
            view[pos : pos + size], meta.ops, itemsize=itemsize, nbytes=math.prod(hyper) * itemsize,
            chunk_id=cid, key=f"{loc.bucket}/{loc.key} HDF5 chunk {j}", linked=True,
        )
        pos += size
        at = np.unravel_index(j, factors)
        region = tuple(slice(int(a) * h, (int(a) + 1) * h) for a, h in zip(at, hyper, strict=True))
        chunk[region] = np.frombuffer(raw, dtype=f"V{itemsize}").reshape(hyper)
    return chunk


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

    Answers as ``process_chunk(task, decode_task(task, data), copy=copy)`` does (it decodes
    only the Blosc blocks the selection needs, ``decode_task(..., partial=True)``);
    :func:`run_task` with a decoded-chunk cache runs the two steps apart. With
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
    with _occupying():
        chunk = decode_task(task, data, True)
        fetched = 0 if data is None else len(data)
        return process_chunk(task, chunk, fetched=fetched, copy=copy)


def decode_task(task: ChunkTask, data: bytes | bytearray | memoryview | None, partial: bool = False) -> np.ndarray[Any, Any] | None:
    """Decode the task's stored bytes into the chunk array (the first half of :func:`process`).

    Returns ``None`` for an absent chunk of a hyperslab or point task (the
    caller fills); a query over an absent chunk gets a chunk of fill values.
    Nothing here or in :func:`process_chunk` writes into the array, so one
    decoded chunk may serve many tasks (a DN's decoded-chunk cache).

    ``partial``: decode only the Blosc blocks the task's selection touches, where the format
    allows it (:func:`~hsds_backends.codecs.decode_chunk_part`); the rest of the array is then
    meaningless, so a partial chunk serves this task only and is never cached.

    Raises
    ------
    NotFoundError
        A linked chunk whose file is missing.
    ChunkDecodeError
        Corrupt bytes, naming the chunk id and key.
    """
    with _occupying():
        return _decode_task(task, data, partial)


def _decode_task(task: ChunkTask, data: bytes | bytearray | memoryview | None, partial: bool) -> np.ndarray[Any, Any] | None:
    meta = task.dset
    cid = task.chunk_id
    loc = task.location
    key = loc.key if loc is not None else "(none)"
    try:
        if data is None:
            if loc is not None and loc.linked:
                # a chunk table entry that points nowhere is not an unwritten chunk (docs/hsds-format.md §3.4: the 404 propagates)
                if loc.parts is not None:
                    raise NotFoundError(
                        f"chunk {cid}: linked file {loc.bucket}/{loc.key} is missing ({len(loc.parts)} HDF5 chunks of "
                        f"{list(loc.hyper_dims or ())}); check the dataset's file_uri or its chunk table's file names"
                    )
                raise NotFoundError(
                    f"chunk {cid}: linked file {loc.bucket}/{loc.key} is missing (offset {loc.offset}, size {loc.size});"
                    " check the dataset's file_uri"
                )
            if task.kind != "query":
                return None
            return _fill_chunk(meta)
        if loc is not None and loc.parts is not None:
            return _decode_hyper(meta, loc, data, cid)
        if partial and task.kind != "query" and not meta.is_vlen:
            intervals = _needed_bytes(task, meta)
            if intervals is not None:
                raw = decode_chunk_part(
                    data, meta.ops, nbytes=meta.chunk_nbytes, intervals=intervals, linked=bool(loc and loc.linked), threads=_decode_threads()
                )
                if raw is not None:
                    return np.frombuffer(raw, dtype=f"V{meta.dtype.itemsize}").reshape(meta.chunks)
        if loc is not None and loc.linked and loc.size and len(data) < loc.size and meta.layout_class != "H5D_CONTIGUOUS_REF":
            # an HDF5 chunk is stored whole; only a contiguous layout's last chunk may end at EOF (§3.5)
            raise ChunkDecodeError(
                f"chunk {cid}: its bytes (offset {loc.offset}, size {loc.size}) run past the end of {loc.bucket}/{loc.key} "
                f"({len(data)} of them are there); the dataset's chunk locations are wrong"
            )
        return decode_to_array(meta, data, cid, key, linked=bool(loc and loc.linked), threads=_decode_threads())
    except HsdsBackendsError as exc:
        _name_chunk(exc, cid)
        raise


def process_chunk(task: ChunkTask, chunk: np.ndarray[Any, Any] | None, fetched: int = 0, copy: bool = True) -> ChunkResult:
    """Cut the task's selection out of a decoded chunk (the second half of :func:`process`).

    ``chunk`` comes from :func:`decode_task` (``None``: the chunk is missing);
    ``fetched`` is reported as the stored bytes read for it; ``copy`` as in :func:`process`.
    The arguments may be given by position (``loop.run_in_executor`` passes no keywords).
    """
    meta = task.dset
    cid = task.chunk_id
    if chunk is None:
        return ChunkResult(cid, "missing")
    if (
        not copy
        and task.kind == "hyperslab"
        and not task.fields
        and not meta.is_vlen
        and chunk.flags.c_contiguous
        and whole_select(task.select, meta.chunks)
    ):
        # the bytes of a whole-chunk selection are the decoded chunk's bytes in C order: hand
        # them over as they are, without parsing the selection (a full read asks for whole chunks)
        return ChunkResult(cid, "ok", chunk.reshape(-1).view(np.uint8).data, fetched, chunk.nbytes if fetched else 0)
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


@lru_cache(maxsize=4096)
def whole_select(select: str | None, chunks: tuple[int, ...]) -> bool:
    """Whether ``select`` (chunk-relative) covers the whole chunk with step 1."""
    if select is None:
        return True
    try:
        sel = parse_select(select, chunks)
    except HsdsBackendsError:
        return False  # process_chunk parses it again and reports the error
    return all(isinstance(d, Slice) and (d.start, d.stop, d.step) == (0, c, 1) for d, c in zip(sel.dims, chunks, strict=True))


def _name_chunk(exc: HsdsBackendsError, cid: str) -> None:
    if cid not in str(exc):
        exc.args = (f"chunk {cid}: {exc}", *exc.args[1:])


def _chunk_points(task: ChunkTask, meta: DatasetMeta) -> np.ndarray[Any, Any]:
    """The task's points relative to its chunk's origin.

    Raises
    ------
    SelectionError
        A point outside the chunk, naming it.
    """
    assert task.points is not None
    origin = np.asarray(chunk_index(task.chunk_id), dtype=np.int64) * np.asarray(meta.chunks, dtype=np.int64)
    rel = task.points.astype(np.int64) - origin
    bad = np.nonzero(((rel < 0) | (rel >= np.asarray(meta.chunks))).any(axis=1))[0]
    if bad.size:
        p = task.points[int(bad[0])].tolist()
        raise SelectionError(f"point {p} does not lie in chunk {task.chunk_id} (chunk origin {origin.tolist()}, chunk dims {list(meta.chunks)})")
    return rel


def _points(task: ChunkTask, meta: DatasetMeta, chunk: np.ndarray[Any, Any]) -> bytes:
    rel = _chunk_points(task, meta)
    values = chunk[tuple(rel.T)]
    values, dt = _project(meta, values, task.fields)
    return _serialise(values, dt)


def query_matches(task: ChunkTask, chunk: np.ndarray[Any, Any], sel: Hyperslab | None = None) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    """The rows of a query task's select, the positions among them that match (at most ``limit``), and their absolute rows.

    ``chunk`` is the decoded chunk (:func:`decode_task`); the rows are a view of it with the
    dataset's dtype. HSDS's DN answers the matching values or their coordinates from these
    (docs/hsds-format.md §4.2); :func:`process_chunk` answers ``index`` plus fields (§5.3).

    Raises
    ------
    TaskError, SelectionError, QueryError, FieldError
        Not a 1-d compound dataset, a select that is not a range, a bad query.
    """
    meta = task.dset
    if meta.rank != 1 or meta.dtype.names is None:
        raise TaskError(f"query needs a 1-d compound (table) dataset; this dataset has shape {list(meta.shape)} and type {meta.dtype}")
    if sel is None:
        sel = parse_select(task.select, meta.chunks) if task.select is not None else Hyperslab.all(meta.chunks)
    dim = sel.dims[0]
    if not isinstance(dim, Slice):
        raise SelectionError(f"a query's select must be a range like '[0:100:2]', got {task.select!r}")
    q = _parsed_query(task.query or "", meta.dtype)
    rows = _typed(meta, chunk)[dim.start : dim.stop : dim.step]
    hits = np.nonzero(q.evaluate(rows))[0]
    if task.limit:
        hits = hits[: task.limit]
    origin = chunk_index(task.chunk_id)[0] * meta.chunks[0]
    # absolute row = chunk origin + start + k·step (HSDS master mis-reports this, docs/hsds-format.md §5.3; we do not)
    index = origin + dim.start + hits.astype(np.uint64) * dim.step
    return rows, hits, index


def _query(task: ChunkTask, meta: DatasetMeta, chunk: np.ndarray[Any, Any], sel: Hyperslab) -> bytes | memoryview:
    rows, hits, index = query_matches(task, chunk, sel)
    qdt = query_dtype(meta.dtype, task.fields)
    n, isz = hits.size, meta.dtype.itemsize
    qf: Mapping[str, Any] = qdt.fields or {}
    if not meta.dtype.hasobject and qdt.itemsize == 8 + isz and all(
        f in qf and qf[f][1] == 8 + off for f, (_, off, *_) in (meta.dtype.fields or {}).items()
    ):
        # every field, in the row's own layout: an answer row is the index's 8 bytes, then the
        # stored row's bytes (two block copies, no per-field copy, no tobytes)
        dim = sel.dims[0]
        assert isinstance(dim, Slice)  # query_matches refused anything else
        plain = chunk if chunk.dtype.names is None else chunk.view(f"V{isz}")  # picking V rows is ~5x faster than structured ones
        out = np.empty(n, dtype=[("i", "<u8"), ("r", f"V{isz}")])  # packed: the answer's layout
        out["i"] = index
        out["r"] = np.take(plain[dim.start : dim.stop : dim.step], hits)
        return out.view(np.uint8).data
    out = np.empty(hits.size, dtype=qdt)
    out[qdt.names[0]] = index  # type: ignore[index]
    picked = rows[hits]
    for f in qdt.names[1:]:  # type: ignore[index]
        out[f] = picked[f]
    return _serialise(out, qdt)
