"""The ``containers`` backend: fan chunk tasks out to HSDS-style data nodes (DNs).

Placement is HSDS's (hsds-format.md §4.5): chunk ``c`` goes to DN number
``int(md5(c)[:5], 16) mod N`` of the ordered DN list, so a chunk is always read
by the same DN and its decoded-chunk cache pays off. Per node at most
``max_tasks_per_node_per_request`` requests are in flight (HSDS §4.6); each of
our DNs takes a *batch* of tasks per request and streams the results back as
they complete (:mod:`._wire`).

Failures:

- a 503 or other 5xx answer is retried on the same DN with jittered
  exponential backoff (``dn_retry_backoff_exp`` · 2^k + U(0, 0.1) s, at most
  ``dn_max_retries`` times, as HSDS's crawler does), then the DN is considered
  down;
- a refused, reset or cut connection marks the DN down at once;
- a DN that sends nothing for ``timeout`` seconds is down too.

The unanswered tasks of a down DN go to the next DN in ring order that is up
(any of our DNs can serve any chunk; HSDS's DNs cannot, so their chunks are
only retried). A down DN is probed (``GET /info``) before it gets work again;
an embedded DN process that died is restarted in the background. When no DN is
left the read fails with :class:`~hsds_backends.errors.BackendTimeoutError`
(timeouts) or :class:`~hsds_backends.errors.BackendError` naming the DN.

Per-task errors (a corrupt chunk, a bad selection) are re-raised with the class
the ``inline`` backend raises (:func:`hsds_backends.tasks.error_from_wire`).

Modes: embedded (default) starts ``dn_count`` (default: cores) local DN
processes; with ``dn_urls`` it uses running DNs, ours (``hsds-backends dn
serve``, e.g. in containers) or the DNs of a real HSDS, which it detects
through ``GET /info`` (``dn_protocol: auto``) and reads with HSDS's per-chunk
``GET``/``POST /chunks/{id}`` requests.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import secrets
import time
import urllib.parse
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Final

from hsds_backends.config import ConfigKey, as_float, as_int, as_list, as_number, as_size, at_least, optional, parse_size
from hsds_backends.errors import BackendError, BackendTimeoutError, ConfigError, TaskError
from hsds_backends.ids import dn_index
from hsds_backends.model import Backend, Capabilities, add_stats, default_workers
from hsds_backends.tasks import ChunkResult, ChunkTask, error_from_wire

if TYPE_CHECKING:
    from ._client import NodeURL
    from ._local import LocalNodes

__all__ = ["ContainersBackend", "RunStats", "CONFIG_KEYS"]

TOKEN_ENV: Final = "HSDS_BACKENDS_DN_TOKEN"
PROTOCOLS: Final = ("auto", "batch", "hsds")

#: Config keys this backend reads, with their defaults (README "Configuration").
CONFIG_KEYS: Final[dict[str, Any]] = {
    "dn_urls": [],
    "dn_count": None,
    "dn_transport": "unix",
    "dn_protocol": "auto",
    "dn_token": None,
    "dn_workers": 2,
    "dn_batch_size": 64,
    "dn_start_timeout": 30,
    "dn_probe_interval": 1.0,
    "max_tasks_per_node_per_request": 16,
    "timeout": 30,
    "dn_max_retries": 3,
    "dn_retry_backoff_exp": 0.1,
    "chunk_mem_cache_size": "128m",
}

#: HSDS's SN sends selects longer than half of ``http_max_url_length`` (512) in a JSON POST (§4.4).
_MAX_SELECT_IN_URL: Final = 256
#: Result bytes a read may hold that the caller has not taken yet (then DN streams wait).
_BACKLOG: Final = 32 * 1024 * 1024
#: Results at least this big are placed into the output from a thread pool (direct placement).
_POOL_PLACE_MIN: Final = 256 * 1024


@dataclass
class RunStats:
    """Figures of one :meth:`ContainersBackend.read_chunks` call (``backend.last_stats``)."""

    tasks: int = 0
    requests: int = 0
    """HTTP requests sent (a batch is one)."""
    retries: int = 0
    """Requests repeated on the same DN after a 5xx/503 or a lost connection."""
    reroutes: int = 0
    """Tasks moved from a down DN to another one."""
    timeouts: int = 0
    """Requests that got no answer within ``timeout``."""
    node_failures: int = 0
    """Times a DN was marked down."""
    probes: int = 0
    """``GET /info`` probes of down (or new) DNs."""
    per_node: dict[str, int] = field(default_factory=dict)
    """Tasks answered, by DN URL."""
    seconds: float = 0.0


@dataclass
class _Node:
    number: int
    url: NodeURL
    protocol: str | None  # "batch" (ours), "hsds" (real HSDS DN) or None (not probed yet)
    up: bool = True
    reason: str = ""
    retry_at: float = 0.0
    failures: int = 0
    info: dict[str, Any] = field(default_factory=dict)

    def down(self, reason: str, interval: float) -> None:
        self.up = False
        self.reason = reason
        self.failures += 1
        # a DN that keeps failing is probed less and less often (at most every 30 s)
        self.retry_at = time.monotonic() + min(30.0, interval * 2 ** min(self.failures - 1, 8))


def _num(cfg: Mapping[str, Any], key: str, cast: Any) -> Any:
    v = cfg.get(key)
    if v is None or v == "":
        v = CONFIG_KEYS[key]
    try:
        return cast(v)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"config key {key!r}: {v!r} is not a valid {cast.__name__}; default is {CONFIG_KEYS[key]!r}") from exc


class ContainersBackend(Backend):
    """Run chunk tasks on HSDS-compatible DN services over HTTP.

    Parameters
    ----------
    config
        Resolved config. Storage keys (``root_dir``, ``aws_s3_gateway``, ...)
        configure the embedded DNs; the ``dn_*`` keys in :data:`CONFIG_KEYS`
        configure the client (see the README).

    Attributes
    ----------
    last_stats : RunStats | None
        Figures of the most recent ``read_chunks`` call (retries, reroutes, ...).
    totals : RunStats
        The same figures summed over the backend's life.

    See Also
    --------
    hsds_backends._inline.InlineBackend : the reference implementation.
    hsds_backends_containers.service.DataNode : the DN service.
    """

    name: ClassVar[str] = "containers"
    config_keys: ClassVar[Mapping[str, ConfigKey]] = {
        "dn_urls": ConfigKey([], as_list, "running DNs to use, in node order (empty: start local DNs)"),
        "dn_count": ConfigKey(None, optional(at_least(as_int, 1)), "local DNs to start (default: one per core)"),
        "max_tasks_per_node_per_request": ConfigKey(16, at_least(as_int, 1), "requests in flight per DN per read"),
        "chunk_mem_cache_size": ConfigKey("128m", as_size, "each local DN's decoded-chunk cache"),
        "timeout": ConfigKey(30, at_least(as_number, 0, strict=True), "seconds a DN may stay silent before it is down"),
        "dn_max_retries": ConfigKey(3, at_least(as_int, 0), "retries of a 5xx/503 on the same DN"),
        "dn_retry_backoff_exp": ConfigKey(0.1, at_least(as_float, 0), "first retry delay (seconds, doubling)"),
    }
    description: ClassVar[str] = "HSDS-style data-node (DN) services over HTTP: local DN processes, or dn_urls"
    url: ClassVar[str] = "https://github.com/hsds-backends/hsds-backends/tree/main/backends/containers"
    static_capabilities: ClassVar[Capabilities] = Capabilities(remote=True, max_concurrency=default_workers() * 2, configured=False)
    overhead_s: ClassVar[float] = 0.002
    per_chunk_s: ClassVar[float] = 0.004
    cold_start_s: ClassVar[float] = 1.0

    def __init__(self, config: Mapping[str, Any] | None = None) -> None:
        super().__init__(config)
        cfg = self.config
        urls = cfg.get("dn_urls") or []
        if isinstance(urls, str):
            urls = [u.strip() for u in urls.split(",") if u.strip()]
        self.dn_urls: list[str] = [str(u) for u in urls]
        self.embedded = not self.dn_urls
        self.protocol = str(cfg.get("dn_protocol") or "auto").lower()
        if self.protocol not in PROTOCOLS:
            raise ConfigError(f"dn_protocol {self.protocol!r} is not valid; use one of {list(PROTOCOLS)}")
        self.transport = str(cfg.get("dn_transport") or "unix").lower()
        if self.transport not in ("unix", "tcp"):
            raise ConfigError(f"dn_transport {self.transport!r} is not valid; use 'unix' or 'tcp'")
        count = cfg.get("dn_count")
        self._count = int(count) if self.embedded and count else (default_workers() if self.embedded else len(self.dn_urls))
        if self._count < 1:
            raise ConfigError(f"dn_count {count!r} must be >= 1")
        self.max_tasks_per_node = max(1, _num(cfg, "max_tasks_per_node_per_request", int))
        self.batch_size = max(1, _num(cfg, "dn_batch_size", int))
        self.timeout = float(_num(cfg, "timeout", float))
        self.max_retries = max(0, _num(cfg, "dn_max_retries", int))
        self.backoff = max(0.0, _num(cfg, "dn_retry_backoff_exp", float))
        self.probe_interval = max(0.0, _num(cfg, "dn_probe_interval", float))
        self.start_timeout = float(_num(cfg, "dn_start_timeout", float))
        self.dn_workers = max(1, _num(cfg, "dn_workers", int))
        size = cfg.get("chunk_mem_cache_size")
        self.cache_bytes = parse_size(CONFIG_KEYS["chunk_mem_cache_size"] if size is None or size == "" else size, key="chunk_mem_cache_size")
        self.token: str | None = cfg.get("dn_token") or os.environ.get(TOKEN_ENV) or None
        if self.timeout <= 0:
            raise ConfigError(f"timeout {self.timeout!r} must be > 0 seconds")
        self.last_stats: RunStats | None = None
        self.totals = RunStats()
        self._nodes: list[_Node] | None = None
        self._local: LocalNodes | None = None
        self._lock: asyncio.Lock | None = None
        self._lock_loop: asyncio.AbstractEventLoop | None = None
        self._capabilities: Capabilities | None = None

    def __repr__(self) -> str:
        if self.embedded:
            return f"<ContainersBackend 'containers' {self._count} local DN(s) over {self.transport}>"
        return f"<ContainersBackend 'containers' {len(self.dn_urls)} DN(s): {', '.join(self.dn_urls[:3])}{' ...' if len(self.dn_urls) > 3 else ''}>"

    # ------------------------------------------------------------ description
    @property
    def node_count(self) -> int:
        """Number of DNs (the N of the md5 partitioning)."""
        return self._count

    @property
    def capabilities(self) -> Capabilities:
        # built once: it depends on the config only, and the selector asks several times per request
        caps = self._capabilities
        if caps is None:
            per_node = self.dn_workers * 2 if self.embedded else self.max_tasks_per_node
            caps = self._capabilities = Capabilities(
                query=self.protocol != "hsds",  # HSDS 1.0.2 DNs return query rows without their index (§5.3)
                remote=True,
                max_concurrency=self._count * per_node,
                configured=bool(self.dn_urls) or self.config.get("dn_count") is not None,
                direct_placement=True,
            )
        return caps

    @property
    def started(self) -> bool:
        return not self.embedded or self._nodes is not None

    @property
    def nodes(self) -> list[dict[str, Any]]:
        """State of each DN (URL, protocol, up/down and why, pid of embedded DNs)."""
        out = []
        for n in self._nodes or []:
            d = {"number": n.number, "url": str(n.url), "protocol": n.protocol, "up": n.up, "reason": n.reason}
            if self._local is not None:
                d["pid"] = self._local.nodes[n.number].pid
            out.append(d)
        return out

    def node_for(self, chunk_id: str) -> int:
        """Return the DN number that owns ``chunk_id`` (§4.5)."""
        return dn_index(chunk_id, self._count)

    # ---------------------------------------------------------------- startup
    def _start_lock(self) -> asyncio.Lock:
        loop = asyncio.get_running_loop()
        if self._lock is None or self._lock_loop is not loop:
            self._lock, self._lock_loop = asyncio.Lock(), loop
        return self._lock

    async def start(self) -> None:
        """Start the embedded DNs (or learn the protocol of configured ones). Called by the first read."""
        async with self._start_lock():
            if self._nodes is not None:
                return
            from ._client import NodeURL

            if self.embedded:
                from ._local import LocalNodes

                self._local = LocalNodes(
                    self._count, self.config, transport=self.transport, workers=self.dn_workers,
                    cache_bytes=self.cache_bytes, token=self.token, start_timeout=self.start_timeout,
                )
                urls = await self._local.start()
                self._nodes = [_Node(i, NodeURL.parse(u), "batch") for i, u in enumerate(urls)]
                return
            nodes = []
            for i, u in enumerate(self.dn_urls):
                try:
                    nodes.append(_Node(i, NodeURL.parse(u), None if self.protocol == "auto" else self.protocol))
                except ValueError as exc:
                    raise ConfigError(f"dn_urls[{i}]: {exc}") from exc
            stats = RunStats()
            await asyncio.gather(*(self._probe(n, stats) for n in nodes))
            self._fold(stats)
            self._nodes = nodes

    async def _probe(self, node: _Node, stats: RunStats) -> bool:
        """``GET /info`` a DN: learn its protocol; mark it up or down."""
        from ._client import NodeTimeout, NodeUnreachable, NodeURL, json_body, request

        stats.probes += 1
        if self._local is not None:
            local = self._local.nodes[node.number]
            t = local.restarting
            restarting = t is not None and not t.done() and t.get_loop() is asyncio.get_running_loop()
            if restarting or not local.alive:
                self._local.restart_in_background(node.number)
                node.down(f"local DN process {node.number} exited; restarting it", self.probe_interval)
                return False
            node.url = NodeURL.parse(local.url)
        try:
            status, _, body = await request(node.url, "GET", "/info", token=self.token, timeout=min(self.timeout, 5.0))
        except (NodeUnreachable, NodeTimeout) as exc:
            node.down(f"probe failed: {exc}", self.probe_interval)
            return False
        if status >= 500:
            node.down(f"probe answered HTTP {status}", self.probe_interval)
            return False
        doc = json_body(body) if status == 200 else None
        ours = doc is not None and doc.get("service") == "hsds-backends-dn"
        if node.protocol is None and status != 401:
            node.protocol = "batch" if ours else "hsds"
        node.info = doc or {}
        node.up, node.reason, node.failures = True, "", 0
        return True

    async def _refresh(self, stats: RunStats) -> list[_Node]:
        """Probe down DNs that are due; if none is up, probe them all; fail when none answers."""
        await self.start()
        nodes = self._nodes
        assert nodes is not None
        now = time.monotonic()
        due = [n for n in nodes if not n.up and n.retry_at <= now]
        if due:
            await asyncio.gather(*(self._probe(n, stats) for n in due))
        if not any(n.up for n in nodes):
            if self._local is not None:  # give restarting DNs a moment
                loop = asyncio.get_running_loop()
                tasks = [t for t in (ln.restarting for ln in self._local.nodes) if t is not None and not t.done() and t.get_loop() is loop]
                if tasks:
                    await asyncio.wait(tasks, timeout=self.start_timeout)
            await asyncio.gather(*(self._probe(n, stats) for n in nodes))
        if not any(n.up for n in nodes):
            why = "; ".join(f"{n.url}: {n.reason}" for n in nodes)
            raise BackendError(f"no DN is reachable ({why}); check dn_urls and that the DNs run")
        return nodes

    # -------------------------------------------------------------- execution
    async def read_chunk(self, task: ChunkTask) -> ChunkResult:
        async for _, res in self.read_chunks([task]):
            return res
        raise BackendError(f"chunk {task.chunk_id}: no result")  # pragma: no cover - read_chunks yields one

    async def read_chunks(
        self, tasks: Sequence[ChunkTask], sink: Callable[[int, ChunkResult], object] | None = None
    ) -> AsyncIterator[tuple[int, ChunkResult]]:
        """Yield ``(i, result)`` as DNs answer; tasks go to their HSDS DN, batched per node.

        With ``sink`` (direct placement), each result is handed to ``sink(i, result)``
        in a small thread pool as soon as it has arrived, so copying into the
        output runs beside the event loop that keeps receiving; it is yielded
        once placed.
        """
        if not tasks:
            return
        t0 = time.perf_counter()
        stats = RunStats(tasks=len(tasks))
        run = _Run(self, tasks, stats, sink, self.placement_pool() if sink is not None else None)
        try:
            run.nodes = await self._refresh(stats)
            run.start()
            for _ in range(len(tasks)):
                item = await run.out.get()
                if isinstance(item, BaseException):
                    raise item
                run.taken(item[1])
                yield item
        finally:
            await run.stop()
            stats.seconds = time.perf_counter() - t0
            self.last_stats = stats
            self._fold(stats)

    def _fold(self, stats: RunStats) -> None:
        t = self.totals
        for k in ("tasks", "requests", "retries", "reroutes", "timeouts", "node_failures", "probes"):
            setattr(t, k, getattr(t, k) + getattr(stats, k))
        for url, n in stats.per_node.items():
            t.per_node[url] = t.per_node.get(url, 0) + n
        t.seconds += stats.seconds
        if stats.tasks:
            add_stats(
                self.name,
                retries=stats.retries,
                requests=stats.requests,
                reroutes=stats.reroutes,
                timeouts=stats.timeouts,
                node_failures=stats.node_failures,
            )

    async def aclose(self) -> None:
        local, self._local, self._nodes = self._local, None, None
        if local is not None:
            await local.stop()
        await super().aclose()

    async def info(self) -> list[dict[str, Any]]:
        """Return each DN's ``GET /info`` answer (or the error), in node order."""
        from ._client import NodeTimeout, NodeUnreachable, json_body, request

        await self.start()
        out: list[dict[str, Any]] = []
        for n in self._nodes or []:
            try:
                status, _, body = await request(n.url, "GET", "/info", token=self.token, timeout=min(self.timeout, 5.0))
                out.append(json_body(body) or {"status": status})
            except (NodeUnreachable, NodeTimeout) as exc:
                out.append({"url": str(n.url), "error": str(exc)})
        return out


# ---------------------------------------------------------------------- one read


class _Fatal(Exception):
    """Wraps an error that ends the read (no retry, no reroute)."""

    def __init__(self, exc: BaseException) -> None:
        super().__init__(str(exc))
        self.exc = exc


class _Retryable(Exception):
    """The DN answered with a 5xx/503: worth retrying there."""


class _Run:
    """State of one ``read_chunks`` call: per-node queues, in-flight requests, results."""

    def __init__(
        self,
        backend: ContainersBackend,
        tasks: Sequence[ChunkTask],
        stats: RunStats,
        sink: Callable[[int, ChunkResult], object] | None = None,
        placer: ThreadPoolExecutor | None = None,
    ) -> None:
        self.b = backend
        self.sink = sink
        self.placer = placer
        self.tasks = tasks
        self.stats = stats
        self.nodes: list[_Node] = []
        self.out: asyncio.Queue[tuple[int, ChunkResult] | BaseException] = asyncio.Queue()
        self.delivered = bytearray(len(tasks))
        self.tries = [0] * len(tasks)
        self.pending: list[deque[int]] = []
        self.active: list[int] = []
        self.workers: set[asyncio.Task[None]] = set()
        self.failed = False
        self.tag = secrets.token_hex(8)
        # results received but not yet taken by the caller; above _BACKLOG the streams stop reading
        self.backlog = 0
        self.room = asyncio.Event()
        self.room.set()

    # -- scheduling
    def start(self) -> None:
        n = len(self.nodes)
        self.pending = [deque() for _ in range(n)]
        self.active = [0] * n
        for i, t in enumerate(self.tasks):
            if t.location is None and t.kind != "query":
                self._deliver(i, ChunkResult(t.chunk_id, "missing"), None)  # nothing stored: no DN needed
                continue
            k = self.route(i)
            if k is None:
                self.fail(BackendError(f"chunk {t.chunk_id}: no DN is up to read it"))
                return
            self.pending[k].append(i)
        for k in range(n):
            self.pump(k)

    def route(self, i: int) -> int | None:
        """The task's own DN if it is up, else the next of our DNs in ring order that is up."""
        nodes = self.nodes
        p = dn_index(self.tasks[i].chunk_id, len(nodes))
        if nodes[p].up:
            return p
        for step in range(1, len(nodes)):
            k = (p + step) % len(nodes)
            if nodes[k].up and nodes[k].protocol == "batch":
                return k
        return None

    def pump(self, k: int) -> None:
        if self.failed:
            return
        q = self.pending[k]
        limit = self.b.max_tasks_per_node
        node = self.nodes[k]
        while q and self.active[k] < limit:
            # our DNs: full batches (a DN streams a batch back in completion order, so more parallel
            # requests only add connections and buffering); HSDS DNs: one chunk per request (§4.6)
            size = 1 if node.protocol == "hsds" else self.b.batch_size
            idxs = [q.popleft() for _ in range(min(size, len(q)))]
            self.active[k] += 1
            w = asyncio.get_running_loop().create_task(self._send(k, idxs))
            self.workers.add(w)
            w.add_done_callback(self.workers.discard)

    def _deliver(self, i: int, res: ChunkResult, node: _Node | None) -> None:
        if self.delivered[i]:
            return  # an answer from an earlier attempt that was thought lost
        self.delivered[i] = 1
        if node is not None:
            url = str(node.url)
            self.stats.per_node[url] = self.stats.per_node.get(url, 0) + 1
        self.backlog += len(res.data)
        if self.backlog > _BACKLOG:
            self.room.clear()
        if self.sink is None or self.placer is None or len(self.tasks) == 1 or len(res.data) < _POOL_PLACE_MIN:
            self.out.put_nowait((i, res))  # small: the caller places it on the loop, cheaper than a thread hop
            return
        # direct placement: copy into the output in the pool, then hand the result on
        fut = asyncio.get_running_loop().run_in_executor(self.placer, self.sink, i, res)
        fut.add_done_callback(lambda f: self._placed(f, i, res))

    def _placed(self, fut: asyncio.Future[object], i: int, res: ChunkResult) -> None:
        if fut.cancelled():
            return
        exc = fut.exception()
        if exc is not None:
            self.fail(exc)
        else:
            self.out.put_nowait((i, res))

    def taken(self, res: ChunkResult) -> None:
        """The caller took ``res``: make room for more."""
        self.backlog -= len(res.data)
        if self.backlog <= _BACKLOG // 2:
            self.room.set()

    def fail(self, exc: BaseException) -> None:
        if not self.failed:
            self.failed = True
            self.out.put_nowait(exc)

    async def stop(self) -> None:
        self.failed = True
        workers = list(self.workers)
        for w in workers:
            w.cancel()
        if workers:
            await asyncio.gather(*workers, return_exceptions=True)

    # -- one request
    async def _send(self, k: int, idxs: list[int]) -> None:
        node = self.nodes[k]
        self.stats.requests += 1
        try:
            if node.protocol == "hsds":
                await self._send_hsds(node, idxs[0])
            else:
                await self._send_batch(node, idxs)
        except _Fatal as exc:
            self.fail(exc.exc)
        except Exception as exc:  # noqa: BLE001 - sorted into retry / reroute / fail
            left = [i for i in idxs if not self.delivered[i]]
            if left:
                await self._recover(k, left, exc)
        finally:
            self.active[k] -= 1
            self.pump(k)

    async def _recover(self, k: int, left: list[int], exc: Exception) -> None:
        """Retry ``left`` on node ``k``, move them to another DN, or end the read."""
        from ._client import HttpStatusError, NodeTimeout, NodeUnreachable

        b, node = self.b, self.nodes[k]
        for i in left:
            self.tries[i] += 1
        tries = max(self.tries[i] for i in left)
        cid = self.tasks[left[0]].chunk_id
        if isinstance(exc, NodeTimeout):
            self.stats.timeouts += 1
        answered = isinstance(exc, _Retryable)
        if not isinstance(exc, (_Retryable, NodeTimeout, NodeUnreachable, HttpStatusError)):
            self.fail(BackendError(f"chunk {cid}: DN {node.url} failed: {type(exc).__name__}: {exc}"))
            return
        # a DN that answered 5xx gets its retries first; a dead or silent one is given up at once
        if answered and tries <= b.max_retries:
            await self._retry_later(k, left, tries)
            return
        if node.up:
            node.down(f"{exc}", b.probe_interval)
            self.stats.node_failures += 1
            if b._local is not None and isinstance(exc, NodeUnreachable):
                b._local.restart_in_background(k, grace=1.0)  # a dead embedded DN is replaced now, used once probed
        # tasks still queued for this DN go elsewhere too (they were not tried there: no try counted)
        queued = [i for i in self.pending[k] if not self.delivered[i]]
        self.pending[k].clear()
        for i in queued:
            q = self.route(i)
            if q is None:
                self.pending[k].append(i)
            else:
                self.stats.reroutes += 1
                self.pending[q].append(i)
                self.pump(q)
        moved: list[tuple[int, int]] = []
        for i in left:
            q = self.route(i)
            if q is None:
                break
            moved.append((i, q))
        if len(moved) == len(left) and max(self.tries[i] for i in left) <= b.max_retries + len(self.nodes):
            self.stats.reroutes += len(left)
            for i, q in moved:
                self.pending[q].append(i)
            for q in {q for _, q in moved}:
                self.pump(q)
            return
        # nowhere else to go
        if isinstance(exc, NodeTimeout):
            self.fail(BackendTimeoutError(
                f"chunk {cid}: DN {node.url} did not answer within {b.timeout:g} s (config timeout) and no other DN is up"
            ))
            return
        if isinstance(exc, NodeUnreachable) and tries <= b.max_retries:
            await self._retry_later(k, left, tries)  # the only DN: it may be restarting
            return
        hint = ""
        if node.protocol == "hsds" and "500" in str(exc):
            hint = " (an HSDS DN answers 500 for a chunk of another DN: list dn_urls in node order)"
        self.fail(BackendError(f"chunk {cid}: DN {node.url} failed after {tries} attempt(s): {exc}{hint}"))

    async def _retry_later(self, k: int, left: list[int], tries: int) -> None:
        self.stats.retries += 1
        await asyncio.sleep(self.b.backoff * 2 ** (tries - 1) + random.uniform(0, 0.1 if self.b.backoff else 0))
        self.pending[k].extendleft(reversed(left))
        # the caller's finally releases this request's slot and pumps node k again

    # -- our DNs: one batch, frames streamed back
    async def _send_batch(self, node: _Node, idxs: list[int]) -> None:
        from ._client import HttpStatusError, stream_batch
        from ._wire import ERROR, MISSING, encode_batch

        tasks = self.tasks
        body = encode_batch([tasks[i] for i in idxs], self.tag)
        frames: AsyncGenerator[tuple[int, int, memoryview, int, int], None] = stream_batch(
            node.url, body, expected=len(idxs), token=self.b.token, timeout=self.b.timeout
        )
        try:
            async for j, status, payload, fetched, decoded in frames:
                if j >= len(idxs):
                    raise _Fatal(BackendError(f"DN {node.url} answered task {j} of a batch of {len(idxs)}"))
                i = idxs[j]
                cid = tasks[i].chunk_id
                if status == ERROR:
                    from ._client import json_body

                    doc = json_body(payload) or {"message": bytes(payload[:300]).decode("utf-8", "replace")}
                    raise _Fatal(error_from_wire(doc, cid))
                if status == MISSING:
                    self._deliver(i, ChunkResult(cid, "missing"), node)
                else:
                    self._deliver(i, ChunkResult(cid, "ok", payload, fetched, decoded), node)
                if not self.room.is_set():
                    await self.room.wait()  # stop pulling frames: the connection pauses, the DN waits
        except HttpStatusError as exc:
            raise self._status_error(node, exc.status, exc.body, tasks[idxs[0]].chunk_id, "/batch") from exc
        finally:
            await frames.aclose()  # close the connection now, not when the generator is collected

    def _status_error(self, node: _Node, status: int, body: bytes | bytearray | memoryview, cid: str, route: str) -> Exception:
        """Sort a non-success answer: retryable (5xx), or a fatal error with the DN's message."""
        from ._client import json_body

        doc = json_body(body)
        if status >= 500 and not (doc and doc.get("error_type")):
            return _Retryable(f"HTTP {status} from {route}")
        if status == 401:
            return _Fatal(BackendError(
                f"DN {node.url} answered 401 (unauthorized): {(doc or {}).get('message', '')}; set dn_token to the DNs' token"
            ))
        if status == 404 and route == "/batch" and not (doc and doc.get("error_type")):
            return _Fatal(BackendError(f"DN {node.url} has no /batch route (a real HSDS DN?); set dn_protocol: hsds"))
        if doc and doc.get("error_type"):
            return _Fatal(error_from_wire(doc, cid))
        text = bytes(body[:300]).decode("utf-8", "replace").strip()
        err = TaskError(f"chunk {cid}: DN {node.url} answered {status} to {route}: {text}")
        err.status = status  # type: ignore[attr-defined]
        return _Fatal(err)

    # -- HSDS DNs: one request per chunk (§4.2, §4.3)
    async def _send_hsds(self, node: _Node, i: int) -> None:
        import numpy as np

        from ._client import json_body, request

        task = self.tasks[i]
        cid = task.chunk_id
        meta = task.dset
        if task.kind == "query":
            raise _Fatal(BackendError(
                f"chunk {cid}: DN {node.url} is a real HSDS DN; HSDS 1.0.2 DNs return query rows without their index. "
                "Run queries on hsds-backends DNs or another backend"
            ))
        if task.select and task.select.count("[") > 2:
            raise _Fatal(BackendError(
                f"chunk {cid}: select {task.select!r} has coordinate lists on several dimensions; HSDS DNs zip them "
                "instead of taking their outer product. Use hsds-backends DNs or another backend"
            ))
        params: dict[str, Any] = {"bucket": meta.bucket}
        loc = task.location
        if loc is not None and loc.linked:
            params.update(s3path=f"{loc.bucket}/{loc.key}", s3offset=loc.offset or 0, s3size=loc.size or 0)
        names = meta.dtype.names or ()
        reorder = None
        if task.fields:
            if len(task.fields) == len(names) and tuple(task.fields) != tuple(names):
                # HSDS projects only when fewer fields than the type's are named (§5.4): reorder here
                if meta.dtype.hasobject:
                    raise _Fatal(BackendError(f"chunk {cid}: reordering all fields of a variable-length compound needs hsds-backends DNs"))
                reorder = task.fields
            elif tuple(task.fields) != tuple(names):
                params["fields"] = ":".join(task.fields)
        headers: dict[str, str] = {}
        body = b""
        method = "GET"
        if task.kind == "points":
            assert task.points is not None
            method = "POST"
            params["count"] = task.num_points
            body = np.ascontiguousarray(task.points, dtype="<u8").tobytes()
            headers["Content-Type"] = "application/octet-stream"
        elif task.select is not None and len(task.select) > _MAX_SELECT_IN_URL:
            method = "POST"
            body = json.dumps({"select": task.select}).encode()
            headers["Content-Type"] = "application/json"
        elif task.select is not None:
            params["select"] = task.select
        target = f"/chunks/{cid}?{urllib.parse.urlencode(params)}"
        status, _, data = await request(node.url, method, target, body=body, headers=headers, token=self.b.token, timeout=self.b.timeout)
        if status == 200:
            if reorder is not None:
                data = memoryview(_reorder(bytes(data), meta.dtype, reorder))
            self._deliver(i, ChunkResult(cid, "ok", data), node)
            return
        doc = json_body(data)
        if status == 404 and not (doc and doc.get("error_type")):
            self._deliver(i, ChunkResult(cid, "missing"), node)  # chunk not written: fill (§3.4)
            return
        raise self._status_error(node, status, data, cid, f"{method} /chunks")


def _reorder(data: bytes, dtype: Any, fields: Sequence[str]) -> bytes:
    import numpy as np

    from hsds_backends.tasks import field_dtype

    rows = np.frombuffer(data, dtype=dtype)
    out = np.empty(rows.shape, dtype=field_dtype(dtype, tuple(fields)))
    for f in fields:
        out[f] = rows[f]
    return out.tobytes()

