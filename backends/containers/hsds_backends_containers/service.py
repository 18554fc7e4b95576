"""The data-node (DN) service: HSDS's DN read API (docs/hsds-format.md §4) running our kernel.

Routes (aiohttp):

``GET /chunks/{chunk_id}``
    HSDS's hyperslab and query read (docs/hsds-format.md §4.2): ``bucket``, ``select``,
    ``fields`` (``a:b``), ``query``, ``Limit``, ``s3path``/``s3offset``/``s3size``. The
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
    Node number and count, load, chunk-cache figures, version.

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

A bearer token, when configured, is required on every route. With the
environment variable ``HSDS_BACKENDS_DN_FAULTS=1`` (tests only) the DN also
serves ``POST /faults`` to inject delays, error statuses and hangs.
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
from hsds_backends.dataset import DatasetMeta
from hsds_backends.errors import DatasetJsonError, HsdsBackendsError, NotFoundError, TaskError
from hsds_backends.ids import chunk_index, dataset_id_of, object_key
from hsds_backends.kernel import run_task
from hsds_backends.storage import Storage, check_bucket
from hsds_backends.tasks import ChunkResult, ChunkTask, error_to_wire

from ._batch import BATCH_PATH, FRAMES_CONTENT_TYPE, SERVICE, decode_batch, frame
from ._cache import ChunkCache
from ._hsds import OCTETS, task_from_request
from ._version import __version__

if TYPE_CHECKING:
    from collections.abc import Hashable

__all__ = ["FAULTS_ENV", "TOKEN_ENV", "DataNode", "serve"]

#: Environment variable that enables the fault-injection route (tests only).
FAULTS_ENV: Final = "HSDS_BACKENDS_DN_FAULTS"
#: Environment variable holding the bearer token (never passed on a command line).
TOKEN_ENV: Final = "HSDS_BACKENDS_DN_TOKEN"

#: HSDS's SN switches to POST for selects longer than half of http_max_url_length
#: (docs/hsds-format.md §4.4); a batch of point tasks can be large, so the body limit is generous.
MAX_BODY: Final = 512 * 1024 * 1024
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
        Bearer token required on every route, or ``None``.
    default_bucket
        Bucket for HSDS-style requests that name none (HSDS requires ``bucket``; we are lenient).
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
        self.faults_enabled = faults
        self.faults = Faults()
        self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="hsds-dn")
        # more tasks than threads in flight, so storage reads overlap decoding
        self._sem = asyncio.Semaphore(self.workers * 2)
        self._pending: dict[Hashable, _Flight] = {}  # chunks being decoded, by cache key
        self._meta: OrderedDict[tuple[str, str], DatasetMeta] = OrderedDict()
        self.started = time.time()
        self.counters: dict[str, int] = {"requests": 0, "tasks": 0, "errors": 0, "inflight_requests": 0, "inflight_tasks": 0}

    # ------------------------------------------------------------------ app
    def app(self) -> web.Application:
        """Return the aiohttp application of this DN."""
        app = web.Application(client_max_size=MAX_BODY, middlewares=[self._middleware])
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
        if self.token is not None:
            auth = request.headers.get("Authorization", "")
            scheme, _, given = auth.partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), self.token.encode()):
                why = "no bearer token" if not auth else "wrong bearer token"
                return web.json_response(
                    {"statusCode": 401, "error_type": "AuthError", "message": f"{why}; send 'Authorization: Bearer <token>' (dn_token)"},
                    status=401,
                    headers={"WWW-Authenticate": 'Bearer realm="hsds-backends-dn"'},
                )
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
        finally:
            self.counters["inflight_requests"] -= 1

    # --------------------------------------------------------------- routes
    async def _info(self, request: web.Request) -> web.Response:
        return web.json_response(self.info())

    def info(self) -> dict[str, Any]:
        """Return what ``GET /info`` reports."""
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
        }

    async def _set_faults(self, request: web.Request) -> web.Response:
        try:
            doc = await request.json()
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
        cid = request.match_info["id"]
        try:
            task = await self._hsds_task(request, cid, None)
            return _octets(await self.run(task))
        except HsdsBackendsError as exc:
            return self._failed(exc, cid)

    async def _post_chunk(self, request: web.Request) -> web.StreamResponse:
        cid = request.match_info["id"]
        try:
            body = await request.read()
            task = await self._hsds_task(request, cid, body)
            return _octets(await self.run(task))
        except HsdsBackendsError as exc:
            return self._failed(exc, cid)

    async def _batch(self, request: web.Request) -> web.StreamResponse:
        try:
            tasks, tag = decode_batch(await request.read())
        except HsdsBackendsError as exc:
            return self._failed(exc, None)
        resp = web.StreamResponse(status=200, headers={"Content-Type": FRAMES_CONTENT_TYPE})
        await resp.prepare(request)
        # a task's error is an answer (its frame), not a failure of the batch
        done: ResultQueue[tuple[int, ChunkResult | BaseException]] = ResultQueue()

        async def one(j: int, task: ChunkTask) -> None:
            try:
                res: ChunkResult | BaseException = await self.run(task, tag)
            except Exception as exc:  # noqa: BLE001 - reported to the client in its frame
                res = exc
            done.put((j, res))

        runners = [asyncio.create_task(one(j, t)) for j, t in enumerate(tasks)]
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
        meta = await self._dataset(bucket, dataset_id_of(cid))
        ctype = request.headers.get("Content-Type")
        return task_from_request(cid, index, meta, bucket, params, content_type=ctype, body=body)

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
        meta = DatasetMeta.from_json(doc, bucket)
        self._meta[key] = meta
        if len(self._meta) > 512:
            self._meta.popitem(last=False)
        return meta

    def _failed(self, exc: HsdsBackendsError, cid: str | None) -> web.Response:
        self.counters["errors"] += 1
        return _error_response(exc, cid)

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
        key = (task.dset.id, loc.bucket, loc.key, loc.offset, loc.size)
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


def socket_url(sock: socket.socket) -> str:
    """Return the URL a client uses for ``sock`` (``http+unix://%2F…`` or ``http://host:port``)."""
    if sock.family == socket.AF_UNIX:
        return "http+unix://" + str(sock.getsockname()).replace("/", "%2F")
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


async def serve(node: DataNode, sock: socket.socket, *, ready: Callable[[str], None] | None = None) -> None:
    """Serve ``node`` on ``sock`` until SIGTERM or SIGINT, then shut down cleanly.

    ``ready(url)`` is called once requests are accepted (the CLI prints ``READY <url>``).
    """
    runner = web.AppRunner(node.app(), access_log=None, shutdown_timeout=1.0, handle_signals=False)
    await runner.setup()
    site = web.SockSite(runner, sock)
    await site.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError):  # pragma: no cover - not on the main thread
            pass
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
