"""The HSDS front: HSDS's DN protocol in front of a real HSDS DN, serving clean chunk reads through the backends.

docs/architecture.md §12. A front listens at the URL an HSDS service node (SN) was given for
DN *i* and forwards to DN *i* everything it does not serve itself::

    h5pyd ─► HSDS SN ─► front i ─► Reader: select ─► backend ─► bytes as DN i answers them
                           └── writes, metadata, dirty chunks, fallback ──► HSDS DN i

**Served** (docs/hsds-format.md §4.2–§4.4): ``GET /chunks/{id}`` hyperslab reads (a
``select``, ``fields``, linked chunks through ``s3path``/``s3offset``/``s3size``, hyper-chunks
of ``H5D_CHUNKED_REF_INDIRECT`` through their ``:``-separated lists and ``hyper_dims``, §3.5), ``POST
/chunks/{id}`` point reads (binary body) and long selects (JSON body), and ``GET
/chunks/{id}?query=`` on 1-d compound datasets, answered with the matching values or, with
``query_indices``, their (n, 1) int64 coordinates. The answer is what the DN would send: the
selected bytes as ``application/octet-stream``, or a bare 404 for a chunk never written.

**Forwarded unchanged** (:mod:`._proxy`): every other route and method; a read the front cannot
answer exactly as the DN would (chunk initializers, several coordinate lists,
queries on other datasets or over variable-length types, parameters it does not know, a
bucket outside ``allowed_buckets``); a read of a *dirty* chunk; and tasks whose backend
failed after its retries and failover (a *fallback*).

**Never stale.** HSDS DNs write to storage lazily (``s3_sync_interval``, ``s3_age_time``;
a write task may take up to ``s3_sync_task_timeout``). A chunk written or deleted through
the front is dirty while the write is in flight and for ``front_dirty_window`` seconds
after it (default: the sum of those three HSDS keys); a dataset whose JSON changed through
the front (a resize, a delete) is dirty the same way. Dirty reads go to the DN, which holds
the current bytes. ``front_readonly`` (a read-only deployment) skips the bookkeeping.

**One decision per client request.** The SN sends every chunk request of one client request
with the same ``traceparent`` trace id. Requests of one trace, dataset and kind that arrive
within ``front_batch_window_ms`` form one group, run as one plan through
:meth:`hsds_backends.Reader.execute` (one selector decision, batched Lambda invokes,
failover, hedging); later groups of the same trace reuse the decision. With
``backend_policy: hsds2021`` a group smaller than ``aws_lambda_threshold`` × the DN count
goes to the DNs, as HSDS did in 2021.

Fails closed (docs/architecture.md §11): a TCP listener must be loopback and answers only
``Host`` headers naming loopback; bodies are bounded by ``front_body_limit`` before they are
read; tasks read storage only in the allowed buckets.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import math
import os
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

import numpy as np
from aiohttp import web

from hsds_backends.config import ConfigKey, as_bool, as_float, as_size, at_least, option, optional
from hsds_backends.dataset import DatasetMeta
from hsds_backends.errors import ChunkDecodeError, HsdsBackendsError
from hsds_backends.ids import chunk_index, dataset_id_of, dn_index, object_key
from hsds_backends.kernel import process_chunk, query_matches, whole_select
from hsds_backends.plan import ReadPlan
from hsds_backends.security import Containment, host_allowed, is_loopback
from hsds_backends.selection import Slice, parse_select
from hsds_backends.storage import PosixStorage, check_bucket
from hsds_backends.tasks import ChunkResult, ChunkTask, error_to_wire, field_dtype, query_dtype

from ._cache import ChunkCache
from ._hsds import JSON, OCTETS, task_from_request
from ._proxy import Upstream, UpstreamError, read_body

if TYPE_CHECKING:
    from hsds_backends.api import Reader
    from hsds_backends.model import Choice

__all__ = ["FRONT_KEYS", "STATS_PATH", "Front", "Listener", "collect_stats", "serve_front"]

log = logging.getLogger(__name__)

#: The front's own route (not part of HSDS's DN API; everything else is forwarded).
STATS_PATH: Final = "/hsds-backends/front/stats"

#: The front's config keys (read with :func:`hsds_backends.config.option`; also
#: ``HSDS_BACKENDS_FRONT_…`` in the environment).
FRONT_KEYS: Final[dict[str, ConfigKey]] = {
    "front_dirty_window": ConfigKey(
        None, optional(at_least(as_float, 0)),
        "seconds a chunk written through the front is read from the DN (default: s3_sync_interval + s3_age_time + s3_sync_task_timeout)",
    ),
    "front_batch_window_ms": ConfigKey(
        0.0, at_least(as_float, 0),
        "a group of one trace's chunk requests closes after this many ms without a new one (0: with the requests that arrived together)",
    ),
    "front_batch_max_wait_ms": ConfigKey(25.0, at_least(as_float, 0), "... or this many ms after its first request"),
    "front_decision_window_ms": ConfigKey(
        10.0, at_least(as_float, 0), "hsds2021: the idle gap that closes a trace's first group, whose size the rule decides on",
    ),
    "front_batch_max": ConfigKey(1024, at_least(as_float, 1), "most chunk requests in one group"),
    "front_readonly": ConfigKey(False, as_bool, "no writes reach storage behind the front's back: skip dirty tracking"),
    "front_start_dirty": ConfigKey(
        True, as_bool, "for one dirty window after start every read goes to the DN (it may hold writes this front never saw)",
    ),
    "front_meta_ttl": ConfigKey(30.0, at_least(as_float, 0), "seconds a dataset's JSON is kept (a write through another front changes it)"),
    "front_body_limit": ConfigKey(100 * 1024 * 1024, as_size, "largest request body the front reads (HSDS max_request_size)"),
    "front_trace_ttl": ConfigKey(60.0, at_least(as_float, 0), "seconds a trace's backend decision is reused"),
    "front_whole_chunk_fraction": ConfigKey(
        0.25, at_least(as_float, 0), "a remote backend reads a chunk whole (the front keeps it) for reads of this share of it or more",
    ),
    "front_cache_size": ConfigKey(
        None, optional(as_size),
        "decoded chunks each listener keeps, as its DN does (default: HSDS's chunk_mem_cache_size, 128m; 0: none)",
    ),
    "s3_sync_interval": ConfigKey(1.0, as_float, "HSDS: seconds between a DN's storage flushes"),
    "s3_age_time": ConfigKey(1.0, as_float, "HSDS: seconds an object stays unchanged before a DN flushes it"),
    "s3_sync_task_timeout": ConfigKey(10.0, as_float, "HSDS: seconds a DN's flush of one object may take"),
}

#: Query parameters of the DN reads the front serves (docs/hsds-format.md §4.2, §4.3); a
#: read with any other parameter is forwarded.
_READ_PARAMS: Final = frozenset({
    "bucket", "select", "fields", "query", "Limit", "query_indices", "s3path", "s3offset", "s3size", "hyper_dims", "count", "action",
})
#: Most recent decisions kept per listener for ``stats``.
_LAST_REASONS: Final = 20
#: Most traces whose decision is remembered.
_TRACES: Final = 4096
#: Most dataset JSONs cached.
_METAS: Final = 1024


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 3)


# ------------------------------------------------------------------ dirty tracking


class DirtyTracker:
    """Chunks and datasets whose stored bytes may lag the DN (docs/architecture.md §12 "never stale").

    A key is dirty while a write to it is in flight and until ``window`` seconds after the
    last one finished.
    """

    def __init__(self, window: float) -> None:
        self.window = float(window)
        self._until: dict[str, float] = {}
        self._inflight: collections.Counter[str] = collections.Counter()

    def begin(self, key: str) -> None:
        self._inflight[key] += 1

    def end(self, key: str) -> None:
        self._inflight[key] -= 1
        if self._inflight[key] <= 0:
            del self._inflight[key]
        now = time.monotonic()
        self._until[key] = now + self.window
        if len(self._until) > 4096:  # forget what is clean again
            self._until = {k: t for k, t in self._until.items() if t > now}

    all_until: float = 0.0
    """Until then every key is dirty (a front started beside a DN that may hold unflushed writes)."""

    def dirty(self, key: str) -> bool:
        if key in self._inflight:
            return True
        if self.all_until and time.monotonic() < self.all_until:
            return True
        t = self._until.get(key)
        return t is not None and t > time.monotonic()

    def __len__(self) -> int:
        now = time.monotonic()
        return len(self._inflight) + sum(1 for k, t in self._until.items() if t > now and k not in self._inflight)


# ------------------------------------------------------------------ statistics


@dataclass
class ListenerStats:
    """What ``hsds-backends hsds stats`` reports for one front."""

    chunk_reads_by_backend: collections.Counter[str] = field(default_factory=collections.Counter)
    passed_through: int = 0
    """Requests forwarded to the DN that were not chunk reads (writes, metadata, other routes)."""
    forwarded_reads: collections.Counter[str] = field(default_factory=collections.Counter)
    """Chunk reads forwarded to the DN, by why."""
    fallbacks: int = 0
    """Chunk reads forwarded to the DN after the backend failed."""
    dirty_hits: int = 0
    """Chunk reads of a dirty chunk or dataset (forwarded to the DN)."""
    failovers: int = 0
    """Chunk tasks a backend failed that another backend served."""
    data_errors: int = 0
    """Chunk reads answered 500 because the stored chunk is corrupt."""
    upstream_errors: int = 0
    """Requests the DN could not be reached for (answered 503)."""
    groups: int = 0
    last_reasons: collections.deque[dict[str, Any]] = field(default_factory=lambda: collections.deque(maxlen=_LAST_REASONS))

    def to_json(self) -> dict[str, Any]:
        return {
            "chunk_reads_by_backend": dict(self.chunk_reads_by_backend),
            "passed_through": self.passed_through,
            "forwarded_reads": dict(self.forwarded_reads),
            "fallbacks": self.fallbacks,
            "dirty_hits": self.dirty_hits,
            "failovers": self.failovers,
            "data_errors": self.data_errors,
            "upstream_errors": self.upstream_errors,
            "groups": self.groups,
            "last_reasons": [{**r, "reason": r["reason"] if isinstance(r["reason"], str) else r["reason"].reason} for r in self.last_reasons],
        }


# ------------------------------------------------------------------ one chunk read


class _Forward(Exception):
    """This read goes to the DN (the message says why, for ``stats``)."""

    def __init__(self, why: str) -> None:
        super().__init__(why)
        self.why = why


@dataclass(eq=False)
class _Read:
    """One chunk read being served: its task, how to answer, and where the answer goes."""

    task: ChunkTask
    listener: Listener
    query_indices: bool
    answer_fields: tuple[str, ...] | None
    """For a query: the fields of the values the DN answers (``None``: the whole type)."""
    future: asyncio.Future[tuple[str, Any]]
    """``("ok", bytes)``, ``("missing", None)``, ``("error", exc)`` or ``("forward", why)``."""
    backend: str = ""
    elements: int = 0
    """Elements the task's select covers (its whole chunk without one)."""
    cache_key: tuple[Any, ...] | None = None
    """Where the decoded chunk is kept (``None``: not cacheable)."""
    validator: Any = None
    """The stored object's version when the read began (a cache entry made from it carries it)."""
    generation: int = 0
    """Writes seen to the chunk when the read began (a result from before a write is not cached)."""
    dset_generation: int = 0
    tag: str = ""
    """The client request (trace) it belongs to: one big read does not push out its own chunks."""


@dataclass(eq=False)
class _Group:
    front: Front
    key: tuple[Any, ...]
    trace: str | None
    deadline: float
    reads: list[_Read] = field(default_factory=list)
    closed: bool = False
    timer: asyncio.Handle | None = None


class _Sink:
    """Hands each task's result to the request waiting for it (a :class:`~hsds_backends.execute.ResultSink`)."""

    def __init__(self, group: _Group, loop: asyncio.AbstractEventLoop) -> None:
        self.group = group
        self.loop = loop
        self.thread = threading.get_ident()
        self.delivered = [False] * len(group.reads)
        self.filled = 0
        self.bytes_returned = 0

    def add(self, i: int, res: ChunkResult) -> None:
        # copied here: the backend may reuse the buffer once this returns
        value: tuple[str, Any] = ("missing", None) if res.status == "missing" else ("ok", bytes(res.data))
        self.delivered[i] = True
        self.bytes_returned += len(res.data)
        if res.status == "missing":
            self.filled += 1
        read = self.group.reads[i]
        chunk = None
        if value[0] == "ok" and read.cache_key is not None and _whole_task(read.task):
            chunk = _as_chunk(value[1], read.task.dset)  # a whole chunk: worth keeping, as a DN would
        self._deliver(read.future, value, read, chunk)

    def _deliver(self, fut: asyncio.Future[tuple[str, Any]], value: tuple[str, Any], read: _Read, chunk: np.ndarray[Any, Any] | None) -> None:
        front = self.group.front
        if threading.get_ident() == self.thread:
            _settle(fut, value)
            if chunk is not None:
                front.keep(read, chunk)
        else:
            self.loop.call_soon_threadsafe(_settle, fut, value)
            if chunk is not None:
                self.loop.call_soon_threadsafe(front.keep, read, chunk)


class _WholeSink(_Sink):
    """Results of a plan where some tasks read a whole chunk for several reads: such a chunk is
    kept and every read of it is cut from it here (in the backend's worker thread when it places
    results there); the other tasks answer their one read as :class:`_Sink` does."""

    def __init__(self, group: _Group, loop: asyncio.AbstractEventLoop, by_task: list[tuple[bool, list[int]]]) -> None:
        super().__init__(group, loop)
        self.by_task = by_task

    def add(self, j: int, res: ChunkResult) -> None:
        whole, idxs = self.by_task[j]
        if not whole:
            super().add(idxs[0], res)
            return
        reads = [self.group.reads[i] for i in idxs]
        if res.status == "missing":
            self.filled += 1
            for i, r in zip(idxs, reads, strict=True):
                self.delivered[i] = True
                self._deliver(r.future, ("missing", None), r, None)
            return
        self.bytes_returned += len(res.data)
        chunk = _as_chunk(bytes(res.data), reads[0].task.dset)
        for n, (i, r) in enumerate(zip(idxs, reads, strict=True)):
            self.delivered[i] = True
            try:
                value: tuple[str, Any] = ("ok", bytes(process_chunk(r.task, chunk, 0, True).data))
            except HsdsBackendsError as exc:
                value = ("forward", f"{type(exc).__name__}: {exc}")
            self._deliver(r.future, value, r, chunk if n == 0 else None)


def _whole_task(task: ChunkTask) -> bool:
    """Whether ``task`` reads its whole chunk as it is stored (its result is the decoded chunk)."""
    return task.kind == "hyperslab" and not task.fields and whole_select(task.select, task.dset.chunks)


def _as_chunk(data: bytes, meta: DatasetMeta) -> np.ndarray[Any, Any]:
    """A whole chunk's bytes as the kernel's decoded array (``V<itemsize>``, chunk shape)."""
    return np.frombuffer(data, dtype=f"V{meta.dtype.itemsize}").reshape(meta.chunks)


def _settle(fut: asyncio.Future[tuple[str, Any]], value: tuple[str, Any]) -> None:
    if not fut.done():
        fut.set_result(value)


# ------------------------------------------------------------------ the front


class Front:
    """The state every listener of one front process shares: the reader, groups, caches, dirty tracking.

    Parameters
    ----------
    reader
        Runs the chunk reads (its config holds ``backend``, ``backend_policy`` and the
        front's keys, :data:`FRONT_KEYS`).
    dn_count
        DNs of the HSDS deployment (the 2021 rule's DN count; default: the listeners).
    dn_urls
        Every DN of the deployment in node order, when the listeners are not all of them:
        dataset JSON is asked of the DN that owns it.
    """

    def __init__(self, reader: Reader, *, dn_count: int | None = None, dn_urls: Sequence[str] = ()) -> None:
        cfg = reader.config
        self.reader = reader
        self.config = cfg
        window = option(cfg, "front_dirty_window", FRONT_KEYS["front_dirty_window"])
        if window is None:
            window = sum(option(cfg, k, FRONT_KEYS[k]) for k in ("s3_sync_interval", "s3_age_time", "s3_sync_task_timeout"))
        self.readonly: bool = option(cfg, "front_readonly", FRONT_KEYS["front_readonly"])
        self.dirty = DirtyTracker(window)
        if option(cfg, "front_start_dirty", FRONT_KEYS["front_start_dirty"]) and not self.readonly:
            # the DN behind may hold writes it has not flushed and this front never saw: read
            # nothing from storage until they must have been
            self.dirty.all_until = time.monotonic() + window
        self.batch_window = option(cfg, "front_batch_window_ms", FRONT_KEYS["front_batch_window_ms"]) / 1000.0
        self.batch_max_wait = option(cfg, "front_batch_max_wait_ms", FRONT_KEYS["front_batch_max_wait_ms"]) / 1000.0
        self.decision_window = option(cfg, "front_decision_window_ms", FRONT_KEYS["front_decision_window_ms"]) / 1000.0
        self.size_rule = str(cfg.get("backend_policy") or "auto").lower() == "hsds2021"
        self.batch_max = int(option(cfg, "front_batch_max", FRONT_KEYS["front_batch_max"]))
        self.body_limit: int = option(cfg, "front_body_limit", FRONT_KEYS["front_body_limit"])
        self.trace_ttl: float = option(cfg, "front_trace_ttl", FRONT_KEYS["front_trace_ttl"])
        self.containment = Containment.from_config(cfg)
        per = option(cfg, "front_cache_size", FRONT_KEYS["front_cache_size"])
        if per is None:
            per = as_size("chunk_mem_cache_size", cfg.get("chunk_mem_cache_size") or "128m", "config")
        self.cache_per_listener = int(per)
        self.whole_fraction: float = option(cfg, "front_whole_chunk_fraction", FRONT_KEYS["front_whole_chunk_fraction"])
        self.cache = ChunkCache(0)
        """Decoded chunks, as the DNs keep them (one DN's worth per listener): hits are cut here, whatever the backend."""
        self._generation: dict[str, int] = {}
        self._posix = isinstance(reader.storage, PosixStorage)
        self.listeners: list[Listener] = []
        self.dn_upstreams = [Upstream(u) for u in dn_urls]
        self._dn_count = dn_count or (len(self.dn_upstreams) or None)
        self._open: dict[tuple[Any, ...], _Group] = {}
        self._running: set[asyncio.Task[None]] = set()
        self._traces: collections.OrderedDict[str, tuple[float, Choice | None, str | Choice]] = collections.OrderedDict()
        self._metas: collections.OrderedDict[tuple[str, str], tuple[float, DatasetMeta | None]] = collections.OrderedDict()
        self.meta_ttl: float = option(cfg, "front_meta_ttl", FRONT_KEYS["front_meta_ttl"])
        self._meta_flights: dict[tuple[str, str], asyncio.Future[DatasetMeta | None]] = {}
        self.started = time.time()

    @property
    def dn_count(self) -> int:
        return self._dn_count or max(1, len(self.listeners))

    def listener(self, upstream: str, *, check_host: bool = False, name: str | None = None) -> Listener:
        """Add a listener forwarding to ``upstream`` (an HSDS DN's URL)."""
        lst = Listener(self, Upstream(upstream), check_host=check_host, name=name or f"front-{len(self.listeners)}")
        self.listeners.append(lst)
        self.cache.max_bytes = self.cache_per_listener * len(self.listeners)
        return lst

    async def aclose(self) -> None:
        for t in list(self._running):
            t.cancel()
        await asyncio.gather(*self._running, return_exceptions=True)
        for up in [*(lst.upstream for lst in self.listeners), *self.dn_upstreams]:
            await up.aclose()
        await self.reader.aclose()

    def stats(self) -> dict[str, Any]:
        """Every listener's figures, the decisions in memory and the dirty keys."""
        return {
            "pid": os.getpid(),
            "uptime_s": round(time.time() - self.started, 3),
            "backend": str(self.config.get("backend") or "auto"),
            "backend_policy": str(self.config.get("backend_policy") or "auto"),
            "dirty_window_s": self.dirty.window,
            "readonly": self.readonly,
            "dirty_keys": 0 if self.readonly else len(self.dirty),
            "cache": self.cache.stats(),
            "fronts": [lst.stats_json() for lst in self.listeners],
        }

    # -------------------------------------------------------------- decoded chunks
    def generation(self, cid: str) -> int:
        return self._generation.get(cid, 0)

    def wrote(self, key: str) -> None:
        """A write to chunk or dataset ``key`` passed through: what is kept of it is stale."""
        self._generation[key] = self._generation.get(key, 0) + 1
        if len(self._generation) > 65536:  # forget old writes, and with them everything kept
            self._generation.clear()
            self.cache.clear()
        self.cache.drop_if(lambda k: isinstance(k, tuple) and key in (k[0], k[1]))

    def keep(self, read: _Read, chunk: np.ndarray[Any, Any]) -> None:
        """Keep a decoded chunk a read got (on the event loop), unless its chunk was written since the read began."""
        cid = read.task.chunk_id
        did = read.task.dset.id
        if read.cache_key is None or self.generation(cid) != read.generation or self.generation(did) != read.dset_generation:
            return
        if not self.readonly and (self.dirty.dirty(cid) or self.dirty.dirty(did)):
            return
        self.cache.put(read.cache_key, chunk, read.tag, read.validator)

    def cache_key(self, task: ChunkTask) -> tuple[Any, ...] | None:
        loc = task.location
        if self.cache.max_bytes <= 0 or loc is None or task.dset.is_vlen:
            return None
        return (task.chunk_id, task.dset.id, task.dset.bucket, loc)  # the whole location (a hyper-chunk's parts too)

    def version(self, task: ChunkTask) -> Any:
        """The stored object's version (posix: mtime and size; ``None`` where there is no cheap one)."""
        loc = task.location
        return None if loc is None else self.reader.storage.version_sync(loc.bucket, loc.key)

    async def exists(self, task: ChunkTask, version: Any) -> bool:
        loc = task.location
        if loc is None:
            return False
        if self._posix:
            return version is not None
        return await self.reader.storage.exists(loc.bucket, loc.key)

    # -------------------------------------------------------------- dataset JSON
    async def meta(self, lst: Listener, bucket: str, dset_id: str) -> DatasetMeta | None:
        """The dataset as the DN behind ``lst`` sees it (``GET /datasets/{id}``), cached; ``None``: not servable."""
        key = (bucket, dset_id)
        hit = self._metas.get(key)
        if hit is not None and hit[0] > time.monotonic():
            self._metas.move_to_end(key)
            return hit[1]
        flight = self._meta_flights.get(key)
        if flight is not None:
            return await asyncio.shield(flight)
        fut: asyncio.Future[DatasetMeta | None] = asyncio.get_running_loop().create_future()
        self._meta_flights[key] = fut
        try:
            meta = await self._fetch_meta(lst, bucket, dset_id)
            fut.set_result(meta)
        except BaseException as exc:
            fut.set_exception(exc)
            fut.exception()  # retrieved: the waiters get it
            raise
        finally:
            del self._meta_flights[key]
        return meta

    def _owner(self, lst: Listener, dset_id: str) -> Upstream:
        """The DN that holds ``dset_id``'s JSON (HSDS partitions objects as chunks, docs/hsds-format.md §4.5)."""
        dns = self.dn_upstreams or ([x.upstream for x in self.listeners] if len(self.listeners) == self.dn_count else [])
        return dns[dn_index(dset_id, len(dns))] if dns else lst.upstream

    async def _fetch_meta(self, lst: Listener, bucket: str, dset_id: str) -> DatasetMeta | None:
        import urllib.parse

        owner = self._owner(lst, dset_id)
        lone = owner is lst.upstream and not self.dn_upstreams and len(self.listeners) != self.dn_count
        try:
            status, body = await owner.get(f"/datasets/{dset_id}?{urllib.parse.urlencode({'bucket': bucket})}")
        except UpstreamError:
            if not lone:
                raise
            status, body = 0, b""
        if status == 200:
            text = body
        elif lone:
            # a lone front does not know which DN owns the dataset (its own answers 500 for
            # another's): the JSON in storage says the same about type, chunks and filters
            try:
                stored = await self.reader.storage.get(bucket, object_key(dset_id))
            except (HsdsBackendsError, OSError):
                return None  # the DN answers the read
            if stored is None:
                return None  # not flushed yet: the DN answers, and we ask again next time
            text = bytes(stored)
        else:
            return None  # not cached: the DN answers the read itself (a 404, a 410, ...)
        meta: DatasetMeta | None
        try:
            doc = json.loads(text)
            doc.setdefault("id", dset_id)
            cp = doc.get("creationProperties") or {}
            if cp.get("initializer"):
                meta = None  # the DN runs the initializer and writes the chunk: its job
            else:
                meta = DatasetMeta.from_json(doc, bucket, chunk_bytes_limit=self.reader.chunk_bytes_limit)
        except (ValueError, AttributeError, HsdsBackendsError) as exc:
            log.info("dataset %s in %s is served by the DN (%s)", dset_id, bucket, exc)
            meta = None
        self._metas[(bucket, dset_id)] = (time.monotonic() + self.meta_ttl, meta)
        if len(self._metas) > _METAS:
            self._metas.popitem(last=False)
        return meta

    def forget(self, dset_id: str) -> None:
        """Drop the cached JSON of ``dset_id`` (in every bucket): it changed."""
        for key in [k for k in self._metas if k[1] == dset_id]:
            del self._metas[key]

    # -------------------------------------------------------------- groups
    def submit(self, key: tuple[Any, ...], trace: str | None, read: _Read) -> None:
        """Add ``read`` to its group: one closes ``front_batch_window_ms`` after its last request came,
        ``front_batch_max_wait_ms`` after its first, or when it holds ``front_batch_max``."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        group = self._open.get(key)
        if group is None:
            group = self._open[key] = _Group(self, key, trace, now + self.batch_max_wait)
        group.reads.append(read)
        if len(group.reads) >= self.batch_max or group.deadline <= now:
            self._close(group)
            return
        window = self.batch_window
        if self.size_rule and (trace is None or trace not in self._traces):
            # the rule decides on this group's size, for the whole trace: let the SN's burst arrive
            window = self.decision_window
        if window <= 0:
            # the requests that arrived with this one (handled in this turn of the event loop) join it
            if group.timer is None:
                group.timer = loop.call_soon(self._close, group)
            return
        if group.timer is not None:
            group.timer.cancel()
        group.timer = loop.call_later(min(window, group.deadline - now), self._close, group)

    def _close(self, group: _Group) -> None:
        if group.closed:
            return
        group.closed = True
        if group.timer is not None:
            group.timer.cancel()
        if self._open.get(group.key) is group:
            del self._open[group.key]
        t = asyncio.ensure_future(self._run(group))
        self._running.add(t)
        t.add_done_callback(self._running.discard)

    def _decision(self, trace: str | None, plan: ReadPlan) -> tuple[Choice | None, str | Choice]:
        """The backend for ``plan`` (``None``: the DNs) and why (a :class:`Choice` builds its reason when
        ``stats`` asks: most decisions are never read); a trace's first decision is reused."""
        now = time.monotonic()
        if trace is not None:
            hit = self._traces.get(trace)
            if hit is not None and hit[0] > now:
                return hit[1], hit[2]
        choice: Choice | None
        reason: str | Choice
        if self.size_rule:
            choice, reason = self._hsds2021(plan)
        else:
            # the front reads only clean chunks: what HSDS's nonstrict allowed, always true here
            choice = reason = self.reader.decide(plan, nonstrict=True)
        if trace is not None:
            self._traces[trace] = (now + self.trace_ttl, choice, reason)
            self._traces.move_to_end(trace)
            while len(self._traces) > _TRACES:
                self._traces.popitem(last=False)
        return choice, reason

    def _hsds2021(self, plan: ReadPlan) -> tuple[Choice | None, str]:
        """HSDS's 2021 rule on a group (docs/hsds-format.md §6.2): the serverless backend from
        ``aws_lambda_threshold`` × DNs chunks (points) on, with a function configured; else HSDS's DNs.

        A front process serves some of the DNs and sees their share of a request: the rule
        compares that share with the threshold times the DNs it serves."""
        threshold = int(self.config.get("aws_lambda_threshold") or 4)
        count = plan.num_points if plan.kind == "points" else plan.num_chunks
        what = "points" if plan.kind == "points" else "chunks"
        # this process sees the requests of its own DNs only: the rule's share for them
        n = len(self.listeners) or 1
        dns = f"{n} DN{'s' if n > 1 else ''}" if n == self.dn_count else f"{n} of {self.dn_count} DNs"
        if count < threshold * n:
            return None, f"hsds2021: HSDS DNs ({count} {what} < {threshold}×{dns})"
        if not self.config.get("aws_lambda_chunkread_function"):
            return None, f"hsds2021: HSDS DNs ({count} {what} ≥ {threshold}×{dns}, but no aws_lambda_chunkread_function)"
        for name in self.reader.backend_names():
            try:
                backend = self.reader.backend(name)
            except HsdsBackendsError:
                continue
            if backend.capabilities.serverless:
                choice = self.reader.decide(plan, backend=backend, nonstrict=True)
                return choice, f"hsds2021: {name} ({count} {what} ≥ {threshold}×{dns})"
        return None, f"hsds2021: HSDS DNs ({count} {what} ≥ {threshold}×{dns}, but no serverless backend is installed)"

    async def _run(self, group: _Group) -> None:
        try:
            await self._run_group(group)
        finally:
            # a read nothing answered (a bug, a cancelled run) goes to the DN; queued behind the
            # answers worker threads may still have on their way, so it never overtakes one
            loop = asyncio.get_running_loop()
            for r in group.reads:
                loop.call_soon(_settle, r.future, ("fallback", "no answer from the group"))

    async def _run_group(self, group: _Group) -> None:
        reads = group.reads
        try:
            plan = _plan(reads)
            choice, reason = self._decision(group.trace, plan)
        except Exception as exc:  # noqa: BLE001 - no backend can serve it: the DN can
            for r in reads:
                _settle(r.future, ("forward", f"no backend: {exc}"))
            return
        name = choice.backend.name if choice is not None else "dn"
        for lst in {id(r.listener): r.listener for r in reads}.values():
            n = sum(1 for r in reads if r.listener is lst)
            lst.stats.groups += 1
            lst.stats.last_reasons.append({"trace": group.trace, "kind": plan.kind, "chunks": n, "group_chunks": len(reads), "backend": name, "reason": reason})
        if choice is None:
            for r in reads:
                r.backend = "dn"
                _settle(r.future, ("forward", "hsds2021"))
            return
        loop = asyncio.get_running_loop()
        caps = choice.backend.capabilities
        limit = caps.max_response_bytes or 0
        # a backend in this process reads each chunk whole once, and every read is cut from it here;
        # a remote one does so for reads of most of a chunk (the chunk is then kept for the next reads)
        whole = [
            r.cache_key is not None
            and (not caps.remote or _coverage(r) >= self.whole_fraction)
            and not (limit and r.task.dset.chunk_nbytes > limit)
            for r in reads
        ]
        sink: _Sink
        if any(whole):
            plan, by_task = _whole_plan(plan, reads, whole)
            sink = _WholeSink(group, loop, by_task)
        else:
            sink = _Sink(group, loop)
        for r in reads:
            r.backend = name
        try:
            stats = await self.reader.execute(plan, sink, choice=choice, nonstrict=True)
            if stats.failovers:
                reads[0].listener.stats.failovers += stats.failovers
        except asyncio.CancelledError:
            for r in reads:
                _settle(r.future, ("forward", "front stopping"))
            raise
        except Exception as exc:  # noqa: BLE001 - each undelivered read is answered below
            for i, r in enumerate(reads):
                if sink.delivered[i]:
                    continue
                if isinstance(exc, ChunkDecodeError) and r.task.chunk_id in str(exc):
                    _settle(r.future, ("error", exc))
                else:
                    _settle(r.future, ("fallback", f"{type(exc).__name__}: {exc}"))
            return
        for i, r in enumerate(reads):
            if not sink.delivered[i]:  # a backend that ended without answering every task
                _settle(r.future, ("fallback", "no result"))


def _whole_plan(plan: ReadPlan, reads: Sequence[_Read], whole: Sequence[bool]) -> tuple[ReadPlan, list[tuple[bool, list[int]]]]:
    """``plan`` with the reads marked ``whole`` served by one whole-chunk task per chunk; which reads each task serves."""
    order: dict[str, int] = {}
    by_task: list[tuple[bool, list[int]]] = []
    tasks: list[ChunkTask] = []
    for i, (r, w) in enumerate(zip(reads, whole, strict=True)):
        t = r.task
        if not w:
            tasks.append(t)
            by_task.append((False, [i]))
            continue
        j = order.get(t.chunk_id)
        if j is None:
            j = order[t.chunk_id] = len(tasks)
            tasks.append(ChunkTask(t.chunk_id, t.dset, t.location, "hyperslab"))
            by_task.append((True, []))
        by_task[j][1].append(i)
    meta = plan.meta
    n = sum(math.prod(meta.chunks) for w, _ in by_task if w)
    kind = "hyperslab" if all(w for w, _ in by_task) else plan.kind
    return ReadPlan(meta, kind, tasks, [None] * len(tasks), (plan.block_shape[0] + n,), (plan.block_shape[0] + n,), plan.out_dtype,
                    plan.fields, plan.limit, plan.num_points), by_task


def _coverage(read: _Read) -> float:
    """The share of its chunk a read's answer is (a query scans, and often returns, much of it)."""
    task = read.task
    if task.kind == "query":
        return 1.0
    total = math.prod(task.dset.chunks)
    return (task.num_points if task.kind == "points" else read.elements) / total


def _plan(reads: Sequence[_Read]) -> ReadPlan:
    """One plan of a group's tasks, for the selector and :meth:`Reader.execute` (nothing is assembled)."""
    first = reads[0].task
    meta, kind = first.dset, first.kind
    tasks = [r.task for r in reads]
    n = len(tasks)
    if kind == "query":
        qdt = query_dtype(meta.dtype, first.fields)
        return ReadPlan(meta, "query", tasks, [None] * n, (0,), (0,), qdt, first.fields, first.limit)
    out_dt = field_dtype(meta.dtype, first.fields) if first.fields else meta.dtype
    if kind == "points":
        points = sum(t.num_points for t in tasks)
        return ReadPlan(meta, "points", tasks, [None] * n, (points,), (points,), out_dt, first.fields, num_points=points)
    elements = sum(r.elements for r in reads)
    return ReadPlan(meta, "hyperslab", tasks, [None] * n, (elements,), (elements,), out_dt, first.fields)


# ------------------------------------------------------------------ one listener


def _trace_id(request: web.BaseRequest) -> str | None:
    tp = request.headers.get("traceparent")
    if not tp:
        return None
    parts = tp.strip().split("-")
    return parts[1] if len(parts) >= 4 and len(parts[1]) == 32 else None


class Listener:
    """One front: HSDS's DN protocol on one address, forwarding to one DN."""

    def __init__(self, front: Front, upstream: Upstream, *, check_host: bool, name: str) -> None:
        self.front = front
        self.upstream = upstream
        self.check_host = check_host
        self.name = name
        self.url = ""
        self.stats = ListenerStats()

    def stats_json(self) -> dict[str, Any]:
        return {"url": self.url, "name": self.name, "upstream": str(self.upstream.url), **self.stats.to_json()}

    def app(self) -> web.Application:
        app = web.Application(client_max_size=self.front.body_limit + 1, middlewares=[self._middleware])
        app.router.add_get(STATS_PATH, self._stats)
        app.router.add_route("*", "/{tail:.*}", self._any)
        return app

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
        if self.check_host and not host_allowed(request.headers.get("Host")):
            return web.json_response(
                {"statusCode": 403, "error_type": "AuthError", "chunk_id": None,
                 "message": f"Host {request.headers.get('Host')!r} is not a loopback name; this front answers only requests addressed to 127.0.0.1, ::1 or localhost"},
                status=403,
            )
        return await handler(request)

    async def _stats(self, request: web.Request) -> web.Response:
        return web.json_response(self.front.stats())

    async def _any(self, request: web.Request) -> web.StreamResponse:
        front = self.front
        path = request.path
        method = request.method
        params = request.query
        body = await read_body(request, front.body_limit)
        is_chunk = path.startswith("/chunks/") and path.count("/") == 2
        if is_chunk and (method == "GET" or (method == "POST" and params.get("action", "get") == "get")):
            try:
                return await self._read(request, path[len("/chunks/"):], body)
            except _Forward as fw:
                self.stats.forwarded_reads[fw.why] += 1
                if fw.why == "dirty":
                    self.stats.dirty_hits += 1
                return await self._forward(request, body)
        self.stats.passed_through += 1
        if front.readonly or method in ("GET", "HEAD", "OPTIONS"):
            return await self._forward(request, body)
        return await self._write(request, body, is_chunk)

    async def _forward(self, request: web.Request, body: bytes | None) -> web.StreamResponse:
        try:
            return await self.upstream.forward(request, body)
        except UpstreamError as exc:
            self.stats.upstream_errors += 1
            return web.json_response({"statusCode": 503, "error_type": "UpstreamError", "message": str(exc), "chunk_id": None}, status=503)

    async def _write(self, request: web.Request, body: bytes | None, is_chunk: bool) -> web.StreamResponse:
        """Forward a write, keeping what it touches dirty while it runs and for the dirty window after."""
        front = self.front
        # keyed by id alone: ids are unique, and the SN leaves ``bucket`` out of some writes
        keys: list[str] = []
        parts = request.path.split("/")
        if is_chunk:
            keys.append(parts[2])
        elif len(parts) >= 3 and parts[1] == "datasets" and parts[2]:
            keys.append(parts[2])
            front.forget(parts[2])
        for k in keys:
            front.dirty.begin(k)
            front.wrote(k)
        try:
            return await self._forward(request, body)
        finally:
            for k in keys:
                front.dirty.end(k)
                front.wrote(k)
            if keys and not is_chunk:
                front.forget(keys[0])

    async def _read(self, request: web.Request, cid: str, body: bytes | None) -> web.StreamResponse:
        front = self.front
        params = request.query
        unknown = set(params) - _READ_PARAMS
        if unknown:
            raise _Forward(f"parameter {sorted(unknown)[0]}")
        try:
            index = chunk_index(cid)
            dset_id = dataset_id_of(cid)
            bucket = check_bucket(params.get("bucket") or "")
        except HsdsBackendsError:
            raise _Forward("bad request") from None  # the DN answers it as it does
        if not front.readonly and (front.dirty.dirty(cid) or front.dirty.dirty(dset_id)):
            raise _Forward("dirty")
        # what a write between here and the answer must invalidate: taken before anything is awaited
        generation, dset_generation = front.generation(cid), front.generation(dset_id)
        try:
            front.containment.check_bucket(bucket)
        except HsdsBackendsError:
            raise _Forward("bucket not allowed") from None
        try:
            meta = await front.meta(self, bucket, dset_id)
        except UpstreamError:
            raise _Forward("dataset JSON unavailable") from None
        if meta is None:
            raise _Forward("dataset not servable")
        read = self._task(cid, index, meta, bucket, request, body)
        try:
            front.containment.check_task(read.task)
        except HsdsBackendsError:
            raise _Forward("bucket not allowed") from None
        t = read.task
        read.cache_key = front.cache_key(t)
        try:
            version = front.version(t)
            if t.kind == "query" and not await front.exists(t, version):
                raise _Forward("query of an unwritten chunk")  # the DN answers 404 (no rows); the kernel would search fill values
        except (HsdsBackendsError, OSError) as exc:
            raise _Forward(f"storage: {type(exc).__name__}") from None
        if read.cache_key is not None:
            read.tag = _trace_id(request) or ""
            chunk = front.cache.get(read.cache_key, read.tag, version)
            if chunk is not None:
                data: bytes | bytearray | memoryview
                try:
                    if t.kind == "query":  # a scan of the whole chunk: off the event loop
                        data = await asyncio.get_running_loop().run_in_executor(None, _query_answer_from_chunk, read, chunk)
                    else:  # a copy of the selection: quicker here than a thread hop
                        data = process_chunk(t, chunk, 0, False).data
                except HsdsBackendsError:
                    raise _Forward("bad request") from None
                self.stats.chunk_reads_by_backend["cache"] += 1
                return web.Response(body=data, content_type=OCTETS)
            read.validator = version
            read.generation = generation
            read.dset_generation = dset_generation
        key = (_trace_id(request), bucket, dset_id, t.kind, t.fields, t.query, t.limit, read.query_indices)
        front.submit(key, key[0], read)
        outcome, value = await read.future
        if outcome == "ok":
            self.stats.chunk_reads_by_backend[read.backend] += 1
            data = _query_answer(value, read) if t.kind == "query" else value
            return web.Response(body=data, content_type=OCTETS)
        if outcome == "missing":
            self.stats.chunk_reads_by_backend[read.backend] += 1
            raise web.HTTPNotFound()  # what the DN answers for a chunk never written
        if outcome == "error":
            self.stats.data_errors += 1
            doc = error_to_wire(value, cid)
            return web.json_response({**doc, "statusCode": 500}, status=500)
        if outcome == "fallback":
            self.stats.fallbacks += 1
            log.warning("chunk %s: backend %s failed (%s); the DN serves it", cid, read.backend, value)
            return await self._forward(request, body)
        if read.backend == "dn":
            self.stats.chunk_reads_by_backend["dn"] += 1
            return await self._forward(request, body)
        raise _Forward(str(value))

    def _task(self, cid: str, index: Sequence[int], meta: DatasetMeta, bucket: str, request: web.Request, body: bytes | None) -> _Read:
        """The chunk task of a DN read, or :class:`_Forward` when the front cannot answer it exactly as the DN would."""
        params = dict(request.query)
        names = meta.dtype.names or ()
        # HSDS projects fields only when fewer than the type's are named (docs/hsds-format.md §5.4)
        fields = [f for f in params.get("fields", "").split(":") if f] if params.get("fields") else []
        if fields:
            if not names or len(set(fields)) != len(fields) or not set(fields) <= set(names):
                raise _Forward("fields")
            if len(fields) == len(names):
                params.pop("fields")
        ctype = request.headers.get("Content-Type")
        if body is not None:
            ct = (ctype or "").split(";")[0].strip().lower()
            if ct == JSON:
                try:
                    doc = json.loads(body)
                except ValueError:
                    raise _Forward("bad request") from None
                if not isinstance(doc, dict) or set(doc) - {"select"}:
                    raise _Forward("JSON body")
            elif ct != OCTETS:
                raise _Forward("content type")
        elif request.method == "POST":
            raise _Forward("bad request")
        try:
            task = task_from_request(cid, index, meta, bucket, params, content_type=ctype, body=body,
                                     chunk_bytes_limit=self.front.reader.chunk_bytes_limit)
        except HsdsBackendsError:
            raise _Forward("bad request") from None
        elements = math.prod(meta.chunks)
        if task.select is not None:
            try:
                sel = parse_select(task.select, meta.chunks)
            except HsdsBackendsError:
                raise _Forward("select") from None
            if sum(1 for d in sel.dims if not isinstance(d, Slice)) > 1:
                raise _Forward("coordinate lists")  # HSDS zips several lists; the kernel takes their outer product
            elements = math.prod(sel.shape)
        query_indices = bool(params.get("query_indices"))
        answer_fields: tuple[str, ...] | None = None
        if task.kind == "query":
            if meta.rank != 1 or not names or meta.is_vlen:
                raise _Forward("query on this dataset")
            try:
                from hsds_backends.query import parse_query

                parse_query(task.query or "", meta.dtype)
            except HsdsBackendsError:
                raise _Forward("query text") from None
            answer_fields = task.fields
        loop = asyncio.get_running_loop()
        return _Read(task, self, query_indices, answer_fields, loop.create_future(), elements=elements)


def _query_answer_from_chunk(read: _Read, chunk: np.ndarray[Any, Any]) -> bytes:
    """The DN's answer to a query, straight from a decoded chunk (docs/hsds-format.md §4.2)."""
    rows, hits, index = query_matches(read.task, chunk)
    return _dn_query_answer(read, index, rows[hits])


def _query_answer(data: bytes, read: _Read) -> bytes:
    """The DN's answer to a query from the kernel's rows (``index`` + fields, docs/hsds-format.md §5.3)."""
    qdt = query_dtype(read.task.dset.dtype, read.task.fields)
    rows = np.frombuffer(data, dtype=qdt)
    return _dn_query_answer(read, rows[qdt.names[0]], rows)  # type: ignore[index]


def _dn_query_answer(read: _Read, index: np.ndarray[Any, Any], picked: np.ndarray[Any, Any]) -> bytes:
    """What HSDS 1.0.2's DN answers for the matching rows ``picked`` (holding at least the answer's fields) at
    absolute rows ``index``: (n, 1) int64 coordinates with ``query_indices``, else the values, projected
    only when fewer fields than the type's were named (docs/hsds-format.md §4.2, §5.4)."""
    if read.query_indices:
        return np.ascontiguousarray(index.astype("<i8").reshape(-1, 1)).tobytes()
    meta = read.task.dset
    out_dt = field_dtype(meta.dtype, read.answer_fields) if read.answer_fields else meta.dtype
    if picked.dtype == out_dt:
        return bytes(picked.tobytes())
    out = np.empty(len(picked), dtype=out_dt)
    for name in out_dt.names or ():
        out[name] = picked[name]
    return bytes(out.tobytes())


# ------------------------------------------------------------------ running


async def collect_stats(urls: Sequence[str], timeout: float = 10.0) -> dict[str, Any]:
    """Ask every front (``STATS_PATH``) and merge: ``{"fronts": [one entry per URL], "processes": [...]}``.

    Raises
    ------
    UpstreamError
        A front does not answer.
    """
    fronts: dict[str, dict[str, Any]] = {}
    processes: dict[int, dict[str, Any]] = {}
    for url in urls:
        if url in fronts:
            continue
        up = Upstream(url, timeout=timeout)
        try:
            status, body = await up.get(STATS_PATH)
        finally:
            await up.aclose()
        if status != 200:
            raise UpstreamError(f"front {url} answered {status} to GET {STATS_PATH}: {body[:200]!r}")
        doc = json.loads(body)
        for f in doc.pop("fronts", []):
            fronts.setdefault(f["url"], f)
        processes.setdefault(int(doc.get("pid", 0)), doc)
    return {"fronts": [fronts[u] for u in urls if u in fronts], "processes": list(processes.values())}


async def serve_front(
    front: Front,
    sockets: Sequence[tuple[Listener, socket.socket]],
    *,
    ready: Callable[[list[str]], None] | None = None,
    stop: asyncio.Event | None = None,
) -> None:
    """Serve each listener on its socket until SIGTERM/SIGINT (or ``stop``), then shut down cleanly.

    A TCP socket must be on loopback (the SN sends no credentials, so nothing else could be
    told apart from a stranger); such a listener refuses foreign ``Host`` headers.
    """
    from .service import socket_url, stop_on_signals

    runners: list[web.AppRunner] = []
    paths: list[str] = []
    stop = stop or asyncio.Event()
    try:
        for lst, sock in sockets:
            if sock.family != socket.AF_UNIX:
                host = str(sock.getsockname()[0])
                if not is_loopback(host):
                    raise OSError(f"a front listens on loopback or a unix socket only, not {host}: HSDS's SN sends no credentials")
                lst.check_host = True
            else:
                paths.append(str(sock.getsockname()))
            runner = web.AppRunner(lst.app(), access_log=None, shutdown_timeout=1.0, handle_signals=False)
            await runner.setup()
            await web.SockSite(runner, sock, backlog=512).start()
            runners.append(runner)
            lst.url = socket_url(sock)
        stop_on_signals(stop)
        if ready is not None:
            ready([lst.url for lst, _ in sockets])
        await stop.wait()
    finally:
        for runner in runners:
            await runner.cleanup()
        await front.aclose()
        for p in paths:
            try:
                os.unlink(p)
            except OSError:
                pass


def front_keys() -> Mapping[str, ConfigKey]:
    """The front's config keys (for docs and ``--help``)."""
    return FRONT_KEYS
