"""The data-node (DN) service: HSDS's DN read API (docs/hsds-format.md §4) running our kernel.

Routes (aiohttp):

``GET /chunks/{chunk_id}``
    HSDS's hyperslab and query read (docs/hsds-format.md §4.2): ``bucket``, ``select``,
    ``fields`` (``a:b``), ``query``, ``Limit``, ``s3path``/``s3offset``/``s3size`` (with
    ``hyper_dims``, ``:``-separated lists: a hyper-chunk, docs/hsds-format.md §3.5). The
    DN loads the dataset JSON itself from ``bucket`` (dataset id from the chunk
    id, key from :func:`hsds_backends.ids.object_key`), as HSDS's DN does.
``POST /chunks/{chunk_id}``
    HSDS's point read (docs/hsds-format.md §4.3): ``count`` and a body of ``count`` ×
    rank uint64 absolute coordinates (``application/octet-stream``), or a JSON body
    ``{"select": ..., "fields": ...}`` for long selections. Both routes' parameters are
    parsed by :func:`hsds_backends_containers._hsds.task_from_request`.
``POST /batch``
    Our extension: many chunk tasks (full wire form, dataset JSON included, so no
    metadata lookup) in one request; results stream back as length-prefixed
    frames in completion order (:mod:`hsds_backends_containers._batch`).
``GET /info``
    Node number and count, load, chunk-cache figures, version; without a valid token
    only ``{"service", "state"}`` (that it is a DN, and ready).

Every route runs its tasks through the kernel's one entry point
(:func:`hsds_backends.kernel.run_task`) in a thread pool, with the DN's decoded-chunk
cache plugged in (:class:`_CacheSlot`).

Answers are ``application/octet-stream`` (the selected bytes, docs/hsds-format.md §4.2)
or 404 for a chunk that does not exist. Unlike HSDS, every bad input is a 4xx with a JSON
body ``{"statusCode", "error_type", "message", "chunk_id"}`` naming what is
wrong (HSDS answers a bad ``select`` with a bare 500); a 404 that is an error
(dataset JSON missing) carries that body too, while "chunk not written" has a
plain-text body. Any DN serves any chunk: node number and count are
informational (HSDS answers 500 for a chunk of another node, docs/hsds-format.md §4.2),
which is what lets a client move a dead node's chunks elsewhere.

The DN stops cleanly on SIGTERM or SIGINT; an embedded DN gets SIGTERM from the kernel
when the process that started it dies (:class:`hsds_backends._proc.ChildProcess`).

It fails closed (docs/architecture.md §11), in this order:

- a TCP listener on loopback answers only requests whose ``Host`` names loopback (403:
  a web page that rebinds its name to 127.0.0.1 still sends its own name);
- a bearer token, when configured, is required on every route but ``GET /info``, which
  then says only that this is a DN (401);
- GETs carry no body, ``POST /chunks/{id}`` only ``application/octet-stream`` or
  ``application/json`` (HSDS's SN sends nothing else), ``POST /batch`` only
  ``application/json`` (415);
- a body is bounded by ``dn_batch_bytes_limit`` (413 from ``Content-Length`` before
  reading it, or as soon as a streamed body passes it), a batch by
  ``dn_batch_tasks_limit``, a dataset's chunks by ``chunk_bytes_limit`` (413);
- every task is checked against the DN's allowed buckets before anything is read
  (:class:`hsds_backends.security.Containment`, 403): its bucket is allowed and an
  ``H5D_CHUNKED`` task reads its own chunk key.

A batch runs on at most ``2 × workers`` coroutines, however many tasks it holds. With the
environment variable ``HSDS_BACKENDS_DN_FAULTS=1`` (tests only) the DN also serves
``POST /faults`` to inject delays, error statuses and hangs.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import os
import signal
import socket
import stat
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

import numpy as np
from aiohttp import web

from hsds_backends import __version__ as core_version
from hsds_backends._aio import ResultQueue, cancel_and_wait
from hsds_backends._proc import loopback_socket
from hsds_backends.config import DEFAULT_CHUNK_BYTES_LIMIT
from hsds_backends.dataset import DatasetMeta
from hsds_backends.errors import DatasetJsonError, HsdsBackendsError, LimitError, NotFoundError, TaskError
from hsds_backends.ids import chunk_index, dataset_id_of, object_key
from hsds_backends.kernel import run_task
from hsds_backends.security import Containment, host_allowed, is_loopback
from hsds_backends.storage import Storage, check_bucket
from hsds_backends.tasks import ChunkResult, ChunkTask, error_to_wire

from ._batch import (
    BATCH_BYTES_LIMIT,
    BATCH_CONTENT_TYPE,
    BATCH_PATH,
    BATCH_TASKS_LIMIT,
    FRAMES_CONTENT_TYPE,
    SERVICE,
    decode_batch,
    frame,
)
from ._cache import ChunkCache
from ._proxy import read_body
from ._hsds import OCTETS, post_content_type, task_from_request
from ._version import __version__

if TYPE_CHECKING:
    from collections.abc import Hashable

__all__ = ["FAULTS_ENV", "TOKEN_ENV", "DataNode", "serve"]

#: Environment variable that enables the fault-injection route (tests only).
FAULTS_ENV: Final = "HSDS_BACKENDS_DN_FAULTS"
#: Environment variable holding the bearer token (never passed on a command line).
TOKEN_ENV: Final = "HSDS_BACKENDS_DN_TOKEN"

#: What ``GET /info`` answers without a valid token: that this is a DN, nothing else.
PUBLIC_INFO: Final = {"service": SERVICE, "state": "READY"}
#: Seconds a batch whose client went away waits for its cancelled tasks.
_CANCEL_TIMEOUT_S: Final = 5.0
#: Connections a DN's listening socket queues (a read opens up to max_tasks_per_node_per_request at once).
_BACKLOG: Final = 512


@dataclass
class Faults:
    """Injected faults (``POST /faults``, only with ``HSDS_BACKENDS_DN_FAULTS=1``)."""

    status: int = 0
    """Answer chunk and batch requests with this status ..."""
    count: int = 0
    """... this many times (then serve normally)."""
    delay_ms: float = 0.0
    """Sleep this long before running each chunk task."""
    hang: bool = False
    """Never answer chunk and batch requests."""


class DataNode:
    """One DN: an aiohttp application around the kernel, a storage and a chunk cache.

    Parameters
    ----------
    storage
        Where chunks and dataset JSON are read from.
    node_number, node_count
        This DN's place among ``node_count`` DNs (reported by ``/info``; any DN serves any chunk).
    workers
        Threads that decode and cut chunks (the codecs release the GIL).
    cache_bytes
        Size of the decoded-chunk cache (HSDS ``chunk_mem_cache_size``; 0 disables it).
    token
        Bearer token required on every route (``GET /info`` without it says only that this
        is a DN), or ``None``.
    default_bucket
        Bucket for HSDS-style requests that name none (HSDS requires ``bucket``; we are lenient).
    containment
        The buckets tasks may read (config ``allowed_buckets``); default: ``default_bucket``
        only, or none at all without one.
    chunk_bytes_limit
        Largest chunk a dataset JSON may declare (config ``chunk_bytes_limit``).
    batch_tasks_limit, batch_bytes_limit
        Most tasks per batch and most bytes per request body (config
        ``dn_batch_tasks_limit``, ``dn_batch_bytes_limit``).
    check_host
        Refuse requests whose ``Host`` header is not loopback (a TCP listener on loopback;
        :func:`serve` sets it).
    faults
        Serve ``POST /faults`` (tests only).
    """

    def __init__(
        self,
        storage: Storage,
        *,
        node_number: int = 0,
        node_count: int = 1,
        workers: int = 2,
        cache_bytes: int = 128 * 1024 * 1024,
        token: str | None = None,
        default_bucket: str | None = None,
        containment: Containment | None = None,
        chunk_bytes_limit: int = DEFAULT_CHUNK_BYTES_LIMIT,
        batch_tasks_limit: int = BATCH_TASKS_LIMIT,
        batch_bytes_limit: int = BATCH_BYTES_LIMIT,
        check_host: bool = False,
        faults: bool = False,
    ) -> None:
        if not 0 <= node_number < node_count:
            raise ValueError(f"node number {node_number} must be in 0..{node_count - 1} (node count {node_count})")
        self.storage = storage
        self.node_number = node_number
        self.node_count = node_count
        self.workers = max(1, int(workers))
        self.cache = ChunkCache(int(cache_bytes))
        self.token = token or None
        self.default_bucket = default_bucket
        self.containment = containment if containment is not None else Containment.of((), default=default_bucket or "")
        self.chunk_bytes_limit = int(chunk_bytes_limit)
        self.batch_tasks_limit = int(batch_tasks_limit)
        self.batch_bytes_limit = int(batch_bytes_limit)
        self.check_host = check_host
        self.faults_enabled = faults
        self.faults = Faults()
        self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="hsds-dn")
        # more tasks than threads in flight, so storage reads overlap decoding; a batch runs on
        # this many coroutines, not one per task
        self.width = self.workers * 2
        self._sem = asyncio.Semaphore(self.width)
        self._pending: dict[Hashable, _Flight] = {}  # chunks being decoded, by cache key
        self._meta: OrderedDict[tuple[str, str], DatasetMeta] = OrderedDict()
        self.started = time.time()
        self.counters: dict[str, int] = {"requests": 0, "tasks": 0, "errors": 0, "inflight_requests": 0, "inflight_tasks": 0}

    # ------------------------------------------------------------------ app
    def app(self) -> web.Application:
        """Return the aiohttp application of this DN."""
        # the bodies are read by _read_body, which refuses a large one first; aiohttp's own cap is a backstop
        app = web.Application(client_max_size=self.batch_bytes_limit + 1, middlewares=[self._middleware])
        app.router.add_get("/info", self._info)
        app.router.add_get("/chunks/{id}", self._get_chunk)
        app.router.add_post("/chunks/{id}", self._post_chunk)
        app.router.add_post(BATCH_PATH, self._batch)
        if self.faults_enabled:
            app.router.add_post("/faults", self._set_faults)
        app.on_cleanup.append(self._cleanup)
        return app

    async def _cleanup(self, app: web.Application) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        await self.storage.aclose()

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
        if self.check_host and not host_allowed(request.headers.get("Host")):
            return _refusal(
                403,
                "AuthError",
                f"Host {request.headers.get('Host')!r} is not a loopback name; this DN listens on loopback and answers "
                "only requests addressed to 127.0.0.1, ::1 or localhost",
            )
        if self.token is not None and not self._authorized(request):
            if request.path == "/info" and request.method == "GET":
                return web.json_response(PUBLIC_INFO)  # a health check needs no token, and learns nothing more
            auth = request.headers.get("Authorization", "")
            why = "no bearer token" if not auth else "wrong bearer token"
            return _refusal(
                401, "AuthError", f"{why}; send 'Authorization: Bearer <token>' (dn_token)",
                headers={"WWW-Authenticate": 'Bearer realm="hsds-backends-dn"'},
            )
        if request.method == "GET" and request.body_exists:
            return _refusal(415, "TaskError", f"GET {request.path} takes no body; send a selection as query parameters or POST it")
        route = request.path
        faulty = self.faults_enabled and (route.startswith("/chunks/") or route == BATCH_PATH)
        if faulty and self.faults.hang:
            await asyncio.sleep(3600)
        if faulty and self.faults.status and self.faults.count > 0:
            self.faults.count -= 1
            return web.json_response({"statusCode": self.faults.status, "message": "injected fault"}, status=self.faults.status)
        self.counters["requests"] += 1
        self.counters["inflight_requests"] += 1
        _big_send_buffer(request)
        try:
            return await handler(request)
        except HsdsBackendsError as exc:
            return self._failed(exc, request)
        except web.HTTPException:
            raise  # aiohttp's own answers (404 for no such route, 405)
        except Exception as exc:  # noqa: BLE001 - an answer, never a traceback: a bug of ours, reported on one line
            return self._failed(_internal(exc), request)
        finally:
            self.counters["inflight_requests"] -= 1

    def _authorized(self, request: web.Request) -> bool:
        """Whether ``request`` carries this DN's bearer token (compared in constant time)."""
        assert self.token is not None
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), self.token.encode())

    async def _read_body(self, request: web.Request) -> bytes:
        """Read a request body of at most ``dn_batch_bytes_limit`` bytes, refusing a larger one before reading it."""
        body = await read_body(request, self.batch_bytes_limit, lambda size, limit, more: _too_big(size, limit, request.path, more=more))
        return body or b""

    # --------------------------------------------------------------- routes
    async def _info(self, request: web.Request) -> web.Response:
        if self.token is None:
            return web.json_response(PUBLIC_INFO)  # no token, no way to tell who asks: paths and pid stay private
        return web.json_response(self.info())

    def info(self) -> dict[str, Any]:
        """Return what ``GET /info`` reports to a request with the DN's token."""
        load: dict[str, float] = dict(self.counters)
        if hasattr(os, "getloadavg"):
            load["loadavg_1min"] = round(os.getloadavg()[0], 2)
        return {
            "service": SERVICE,
            "version": __version__,
            "core_version": core_version,
            "state": "READY",
            "node_number": self.node_number,
            "node_count": self.node_count,
            "pid": os.getpid(),
            "workers": self.workers,
            "uptime_s": round(time.time() - self.started, 3),
            "load": load,
            "cache": self.cache.stats(),
            "storage": self.storage.to_config(),
            "allowed_buckets": None if self.containment.buckets is None else sorted(self.containment.buckets),
            "limits": {
                "chunk_bytes_limit": self.chunk_bytes_limit,
                "dn_batch_tasks_limit": self.batch_tasks_limit,
                "dn_batch_bytes_limit": self.batch_bytes_limit,
            },
        }

    async def _set_faults(self, request: web.Request) -> web.Response:
        try:
            doc = json.loads(await self._read_body(request))
            self.faults = Faults(
                status=int(doc.get("status") or 0),
                count=int(doc.get("count", 1 if doc.get("status") else 0)),
                delay_ms=float(doc.get("delay_ms") or 0),
                hang=bool(doc.get("hang")),
            )
        except (ValueError, TypeError, AttributeError) as exc:
            return _error_response(TaskError(f"bad faults body: {exc}; send {{'status', 'count', 'delay_ms', 'hang'}}", status=400), None)
        return web.json_response(self.faults.__dict__)

    async def _get_chunk(self, request: web.Request) -> web.StreamResponse:
        task = await self._hsds_task(request, request.match_info["id"], None)
        return _octets(await self.run(task))

    async def _post_chunk(self, request: web.Request) -> web.StreamResponse:
        post_content_type(request.headers.get("Content-Type"))  # before reading the body
        body = await self._read_body(request)
        task = await self._hsds_task(request, request.match_info["id"], bytes(body))
        return _octets(await self.run(task))

    async def _batch(self, request: web.Request) -> web.StreamResponse:
        ctype = request.headers.get("Content-Type", "").split(";")[0].strip().lower()
        if ctype != BATCH_CONTENT_TYPE:
            raise TaskError(f"Content-Type {ctype or '(none)'!r} is not supported on {BATCH_PATH}; send {BATCH_CONTENT_TYPE!r}", status=415)
        # every task is checked against the allowed buckets as it is parsed: a batch that asks for
        # one foreign object gets nothing
        tasks, tag = decode_batch(
            await self._read_body(request), tasks_limit=self.batch_tasks_limit,
            chunk_bytes_limit=self.chunk_bytes_limit, containment=self.containment,
        )
        resp = web.StreamResponse(status=200, headers={"Content-Type": FRAMES_CONTENT_TYPE})
        await resp.prepare(request)
        # a task's error is an answer (its frame), not a failure of the batch
        done: ResultQueue[tuple[int, ChunkResult | BaseException]] = ResultQueue()
        todo = iter(enumerate(tasks))

        async def runner() -> None:
            # a bounded number of these share the batch's tasks: no coroutine per task
            for j, task in todo:
                try:
                    res: ChunkResult | BaseException = await self.run(task, tag)
                except Exception as exc:  # noqa: BLE001 - reported to the client in its frame
                    res = exc
                done.put((j, res))

        runners = [asyncio.create_task(runner()) for _ in range(min(self.width, len(tasks)))]
        try:
            async for j, res in done.drain(len(tasks)):
                if isinstance(res, BaseException):
                    self.counters["errors"] += 1
                header, payload = frame(j, res, tasks[j].chunk_id)
                # two writes, no concatenation: the payload goes to the socket as it is
                await resp.write(header)
                if len(payload):
                    await resp.write(payload)
            await resp.write_eof()
        except ConnectionError:
            pass  # the client went away (a cancelled read): stop working for it
        finally:
            left = [r for r in runners if not r.done()]
            await cancel_and_wait(left, timeout=_CANCEL_TIMEOUT_S, what="batch tasks")
        return resp

    # ---------------------------------------------------------- HSDS requests
    async def _hsds_task(self, request: web.Request, cid: str, body: bytes | None) -> ChunkTask:
        """Build the chunk task of an HSDS-style request; the DN loads the dataset JSON (docs/hsds-format.md §4.2, §4.3)."""
        params = request.query
        index = chunk_index(cid)  # validates the chunk id (StoragePathError → 400)
        bucket = check_bucket(params.get("bucket") or self.default_bucket or "")
        self.containment.check_bucket(bucket)  # before the dataset JSON is read from it
        meta = await self._dataset(bucket, dataset_id_of(cid))
        ctype = request.headers.get("Content-Type")
        task = task_from_request(cid, index, meta, bucket, params, content_type=ctype, body=body, chunk_bytes_limit=self.chunk_bytes_limit)
        self.containment.check_task(task)  # a linked chunk's s3path names a bucket of its own
        return task

    async def _dataset(self, bucket: str, dset_id: str) -> DatasetMeta:
        key = (bucket, dset_id)
        meta = self._meta.get(key)
        if meta is not None:
            self._meta.move_to_end(key)
            return meta
        raw = await self.storage.get(bucket, object_key(dset_id))
        if raw is None:
            raise NotFoundError(f"dataset {dset_id} not found in bucket {bucket!r} (no object {object_key(dset_id)!r}); check 'bucket'")
        try:
            doc = json.loads(raw)
        except ValueError as exc:
            raise DatasetJsonError(f"dataset JSON of {dset_id} in bucket {bucket!r} is not valid JSON: {exc}") from exc
        if isinstance(doc, dict):
            doc.setdefault("id", dset_id)
        meta = DatasetMeta.from_json(doc, bucket, chunk_bytes_limit=self.chunk_bytes_limit)
        self._meta[key] = meta
        if len(self._meta) > 512:
            self._meta.popitem(last=False)
        return meta

    def _failed(self, exc: HsdsBackendsError, request: web.Request) -> web.Response:
        self.counters["errors"] += 1
        resp = _error_response(exc, request.match_info.get("id"))
        if request.body_exists and not request.content.is_eof():
            resp.force_close()  # a body left unread (too big, wrong type): say the connection ends here
        return resp

    # ------------------------------------------------------------- execution
    async def run(self, task: ChunkTask, tag: str = "") -> ChunkResult:
        """Execute one chunk task: cache, else fetch and decode (in the pool), then cut."""
        self.counters["tasks"] += 1
        self.counters["inflight_tasks"] += 1
        try:
            async with self._sem:
                if self.faults.delay_ms:
                    await asyncio.sleep(self.faults.delay_ms / 1000)
                return await self._run(task, tag)
        finally:
            self.counters["inflight_tasks"] -= 1

    async def _run(self, task: ChunkTask, tag: str) -> ChunkResult:
        # copy=False: a whole fixed-size chunk (what a full read asks for) is sent as the decoded
        # chunk's bytes, without a copy; nothing writes into a decoded or cached chunk
        cache = _CacheSlot(self, tag) if self.cache.max_bytes > 0 else None
        return await run_task(task, self.storage, executor=self._pool, copy=False, cache=cache)


@dataclass(slots=True)
class _Flight:
    """A chunk being read and decoded by one task; other tasks of the chunk wait for it."""

    key: Hashable
    validator: Hashable
    future: asyncio.Future[np.ndarray[Any, Any] | None]


class _CacheSlot:
    """The DN's decoded-chunk cache as one task run sees it (a :class:`~hsds_backends.kernel.DecodedChunkCache`).

    Made per run, so it knows the decode it registered: concurrent tasks of one
    chunk share one read and decode, and the validator taken before the read is
    the one stored with the entry (a rewrite during the read then reads as stale).
    """

    __slots__ = ("flight", "node", "tag")

    def __init__(self, node: DataNode, tag: str) -> None:
        self.node = node
        self.tag = tag
        self.flight: _Flight | None = None

    async def get(self, task: ChunkTask) -> np.ndarray[Any, Any] | None:
        node = self.node
        loc = task.location
        assert loc is not None  # the kernel consults the cache for located tasks only
        key = (task.dset.bucket, task.dset.id, loc)  # the whole location: a hyper-chunk's HDF5 chunks are its parts (docs/hsds-format.md §3.5)
        while True:
            validator = node.storage.version_sync(loc.bucket, loc.key)
            chunk = node.cache.get(key, self.tag, validator)
            if chunk is not None:
                return chunk
            pending = node._pending.get(key)
            if pending is None:
                break
            # another task is decoding this chunk right now: share its work. Its None (the chunk
            # is missing) makes the kernel read the chunk again, without a flight of its own (a
            # query still runs over its fill values).
            try:
                return await asyncio.shield(pending.future)
            except _Abandoned:
                continue  # that task was cancelled: look again, maybe decode it here
        self.flight = node._pending[key] = _Flight(key, validator, asyncio.get_running_loop().create_future())
        return None

    def put(self, task: ChunkTask, chunk: np.ndarray[Any, Any] | None) -> None:
        flight = self.flight
        if flight is None:
            return
        flight.future.set_result(chunk)
        if chunk is not None:
            self.node.cache.put(flight.key, chunk, self.tag, flight.validator)
        del self.node._pending[flight.key]

    def failed(self, task: ChunkTask, exc: BaseException) -> None:
        flight = self.flight
        if flight is None:
            return
        # waiters get the error, or redo the work if this task was only cancelled
        flight.future.set_exception(_Abandoned() if isinstance(exc, asyncio.CancelledError) else exc)
        flight.future.exception()  # mark retrieved: there may be no waiter
        del self.node._pending[flight.key]


# ---------------------------------------------------------------- helpers


class _Abandoned(Exception):
    """The task decoding a chunk was cancelled; whoever waited for it decodes the chunk itself."""


#: Send buffer per connection: a whole 1-4 MiB chunk goes into the kernel in one send instead of
#: being copied into asyncio's write buffer and sent in 200 KiB pieces (capped by net.core.wmem_max).
SEND_BUFFER: Final = 4 * 1024 * 1024


def _big_send_buffer(request: web.Request) -> None:
    transport = request.transport
    sock = transport.get_extra_info("socket") if transport is not None else None
    if sock is not None:
        try:
            if sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) < SEND_BUFFER:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER)
        except OSError:  # pragma: no cover - not a socket option this transport supports
            pass


def _octets(res: ChunkResult) -> web.Response:
    if res.status == "missing":
        # a bare 404 (no JSON error body): "chunk not written", the caller fills (docs/hsds-format.md §3.4)
        return web.Response(status=404, text=f"chunk {res.chunk_id} not found")
    return web.Response(body=res.data, content_type=OCTETS)


def _error_response(exc: HsdsBackendsError, cid: str | None) -> web.Response:
    doc = error_to_wire(exc, cid)
    return web.json_response(doc, status=int(doc["statusCode"]))


def _refusal(status: int, error_type: str, message: str, headers: dict[str, str] | None = None) -> web.Response:
    """A refusal made before a route runs, with the body every error answer has."""
    return web.json_response({"statusCode": status, "error_type": error_type, "message": message, "chunk_id": None}, status=status, headers=headers)


def _too_big(size: int, limit: int, route: str, *, more: bool = False) -> LimitError:
    what = f"more than {limit}" if more else str(size)
    return LimitError(
        f"request body of {what} bytes on {route} exceeds dn_batch_bytes_limit ({limit} bytes); "
        "send fewer tasks or points per request, or raise config dn_batch_bytes_limit"
    )


def _internal(exc: Exception) -> TaskError:
    """An unexpected failure as a one-line 500 answer (the class and message, no traceback)."""
    text = str(exc).splitlines()[0][:300] if str(exc) else ""
    return TaskError(f"internal error: {type(exc).__name__}: {text}", status=500)


# ---------------------------------------------------------------- running


def bind_socket(*, host: str = "127.0.0.1", port: int | None = None, path: str | None = None) -> socket.socket:
    """Return a listening socket: a unix socket at ``path`` (mode 0600) or TCP ``host:port`` (0 = any free port).

    Bound and listening before the DN announces its URL, so nothing else can take the
    address in between.
    """
    if path is None:
        return loopback_socket(port or 0, host=host, backlog=_BACKLOG)
    if os.path.exists(path):
        if not stat.S_ISSOCK(os.stat(path).st_mode):
            raise OSError(f"{path} exists and is not a socket")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(path)
        except OSError:
            os.unlink(path)  # a stale socket file of a dead DN
        else:
            raise OSError(f"another process listens on {path}")
        finally:
            probe.close()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        old = os.umask(0o177)
        try:
            sock.bind(path)
        finally:
            os.umask(old)
        sock.listen(_BACKLOG)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def stop_on_signals(stop: asyncio.Event | None = None) -> asyncio.Event:
    """Return ``stop`` (or a new event) set by SIGTERM or SIGINT: a service's clean shutdown."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError):  # pragma: no cover - not on the main thread
            pass
    return stop


def socket_url(sock: socket.socket) -> str:
    """Return the URL a client uses for ``sock`` (``http+unix://%2F…`` or ``http://host:port``)."""
    if sock.family == socket.AF_UNIX:
        return "http+unix://" + str(sock.getsockname()).replace("/", "%2F")
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


async def serve(node: DataNode, sock: socket.socket, *, ready: Callable[[str], None] | None = None) -> None:
    """Serve ``node`` on ``sock`` until SIGTERM or SIGINT, then shut down cleanly.

    ``ready(url)`` is called once requests are accepted (the CLI prints ``READY <url>``).
    A TCP socket on loopback makes the node refuse foreign ``Host`` headers.
    """
    if sock.family != socket.AF_UNIX and is_loopback(str(sock.getsockname()[0])):
        node.check_host = True
    runner = web.AppRunner(node.app(), access_log=None, shutdown_timeout=1.0, handle_signals=False)
    await runner.setup()
    site = web.SockSite(runner, sock)
    await site.start()
    stop = stop_on_signals()
    if ready is not None:
        ready(socket_url(sock))
    try:
        await stop.wait()
    finally:
        path = sock.getsockname() if sock.family == socket.AF_UNIX else None
        await runner.cleanup()
        if path:
            try:
                os.unlink(path)
            except OSError:
                pass
