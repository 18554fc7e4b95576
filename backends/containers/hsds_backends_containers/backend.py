"""The ``containers`` backend: fan chunk tasks out to HSDS-style data nodes (DNs).

The backend owns the DNs: it starts the embedded ones (:mod:`._local`) or takes
``dn_urls``, learns each DN's protocol (``GET /info``: ours speak the batch route,
:mod:`._batch`; a real HSDS's DNs only HSDS's per-chunk routes, :mod:`._hsds`), keeps them
up or down (a down DN is probed before it gets work again; an embedded DN process that
died is restarted in the background), and drives each read. A read's fan-out over the
DNs (HSDS's placement, bounded requests per DN, retries, rerouting, backpressure) is
:class:`._scheduler.Fanout`.

Per-task errors (a corrupt chunk, a bad selection) are re-raised with the class the
``inline`` backend raises (:func:`hsds_backends.tasks.error_from_wire`).

Modes: embedded (default) starts ``dn_count`` (default: cores) local DN processes; with
``dn_urls`` it uses running DNs, ours (``hsds-backends dn serve``, e.g. in containers) or
the DNs of a real HSDS, which it detects through ``GET /info`` (``dn_protocol: auto``).
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Final

from hsds_backends.config import (
    CORE_KEYS,
    Caster,
    ConfigKey,
    as_float,
    as_int,
    as_list,
    as_lower,
    as_number,
    as_size,
    as_str,
    at_least,
    option,
    optional,
)
from hsds_backends.errors import BackendError, ConfigError
from hsds_backends.ids import dn_index
from hsds_backends.model import Backend, Capabilities, Sink, add_stats, default_workers
from hsds_backends.tasks import ChunkResult, ChunkTask

from ._batch import BATCH_BYTES_LIMIT, BATCH_TASKS_LIMIT, SERVICE
from ._client import NodeTimeout, NodeUnreachable, NodeURL, json_body, request
from ._scheduler import Fanout, Node, RunStats, Settings

if TYPE_CHECKING:
    from ._local import LocalNodes

__all__ = ["ContainersBackend", "RunStats"]

PROTOCOLS: Final = ("auto", "batch", "hsds")
TRANSPORTS: Final = ("unix", "tcp")
#: Seconds a ``GET /info`` (a probe) may take at most.
_PROBE_TIMEOUT_S: Final = 5.0


def _one_of(*choices: str) -> Caster:
    """Caster of a key that takes one of ``choices`` (any case)."""

    def cast(key: str, value: Any, source: str) -> str:
        text = as_lower(key, value, source)
        if text not in choices:
            raise ConfigError(f"config key {key!r}: {value!r} from {source} is not valid; use one of {list(choices)}")
        return text

    return cast


class ContainersBackend(Backend):
    """Run chunk tasks on HSDS-compatible DN services over HTTP.

    Parameters
    ----------
    config
        Resolved config. Storage keys (``root_dir``, ``aws_s3_gateway``, ...)
        configure the embedded DNs; the keys in :attr:`config_keys` configure
        the client and the DNs it starts (see the README).

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
        "dn_transport": ConfigKey(
            "unix", _one_of(*TRANSPORTS), "local DNs on unix sockets in a private folder, or tcp on 127.0.0.1"
        ),
        "dn_protocol": ConfigKey(
            "auto", _one_of(*PROTOCOLS), "batch (our DNs), hsds (HSDS's per-chunk routes) or auto (ask GET /info)"
        ),
        "dn_token": ConfigKey(
            None, optional(as_str), "bearer token of the DNs (local DNs get it in their environment)"
        ),
        "dn_workers": ConfigKey(2, at_least(as_int, 1), "decode threads per local DN"),
        "dn_batch_size": ConfigKey(64, at_least(as_int, 1), "most tasks in one batch request"),
        "dn_start_timeout": ConfigKey(30, at_least(as_number, 0, strict=True), "seconds a local DN may take to start"),
        "dn_probe_interval": ConfigKey(
            1.0, at_least(as_float, 0), "seconds before a down DN is probed again (doubling, at most 30)"
        ),
        "max_tasks_per_node_per_request": ConfigKey(16, at_least(as_int, 1), "requests in flight per DN per read"),
        "chunk_mem_cache_size": ConfigKey("128m", as_size, "each local DN's decoded-chunk cache"),
        "timeout": ConfigKey(30, at_least(as_number, 0, strict=True), "seconds a DN may stay silent before it is down"),
        "dn_max_retries": ConfigKey(3, at_least(as_int, 0), "retries of a 5xx/503 on the same DN"),
        "dn_retry_backoff_exp": ConfigKey(0.1, at_least(as_float, 0), "first retry delay (seconds, doubling)"),
        # a DN's bounds (names unlike HSDS's max_request_size, a body size of the SN)
        "dn_batch_tasks_limit": ConfigKey(BATCH_TASKS_LIMIT, at_least(as_int, 1), "DN: most tasks in one /batch request"),
        "dn_batch_bytes_limit": ConfigKey(
            BATCH_BYTES_LIMIT, at_least(as_size, 1), "DN: largest request body it reads (/batch, POST /chunks)"
        ),
    }
    description: ClassVar[str] = "HSDS-style data-node (DN) services over HTTP: local DN processes, or dn_urls"
    url: ClassVar[str] = "https://github.com/hsds-backends/hsds-backends/tree/main/backends/containers"
    static_capabilities: ClassVar[Capabilities] = Capabilities(
        remote=True, max_concurrency=default_workers() * 2, configured=False, data_nodes=default_workers()
    )
    overhead_s: ClassVar[float] = 0.002
    per_chunk_s: ClassVar[float] = 0.004
    cold_start_s: ClassVar[float] = 1.0

    def __init__(self, config: Mapping[str, Any] | None = None) -> None:
        super().__init__(config)
        get = self.option
        self.dn_urls: list[str] = get("dn_urls")
        self.embedded = not self.dn_urls
        self.protocol: str = get("dn_protocol")
        self.transport: str = get("dn_transport")
        count: int | None = get("dn_count")
        self._count_given = count is not None
        # dn_count sizes the embedded DNs only; with dn_urls the list is the node count
        self._count = (count or default_workers()) if self.embedded else len(self.dn_urls)
        self.max_tasks_per_node: int = get("max_tasks_per_node_per_request")
        self.batch_size: int = get("dn_batch_size")
        self.timeout = float(get("timeout"))
        self.max_retries: int = get("dn_max_retries")
        self.backoff: float = get("dn_retry_backoff_exp")
        self.probe_interval: float = get("dn_probe_interval")
        self.start_timeout = float(get("dn_start_timeout"))
        self.dn_workers: int = get("dn_workers")
        self.cache_bytes: int = get("chunk_mem_cache_size")
        self.token: str | None = get("dn_token") or None
        if self.token is None and self.embedded:
            # embedded DNs always require a token: another user of this machine can reach a loopback
            # port, and a DN's /info tells its details only to a caller with the token
            self.token = secrets.token_urlsafe(32)
        self.last_stats: RunStats | None = None
        self.totals = RunStats()
        self._settings = Settings(
            max_tasks_per_node=self.max_tasks_per_node, batch_size=self.batch_size, timeout=self.timeout,
            max_retries=self.max_retries, backoff=self.backoff, probe_interval=self.probe_interval, token=self.token,
        )
        self._nodes: list[Node] | None = None
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
        """Number of DNs (the N of the md5 partitioning; also ``capabilities.data_nodes``)."""
        return self._count

    @property
    def capabilities(self) -> Capabilities:
        # built once: it depends on the config only, and the selector asks several times per request
        caps = self._capabilities
        if caps is None:
            per_node = self.dn_workers * 2 if self.embedded else self.max_tasks_per_node
            caps = self._capabilities = Capabilities(
                # HSDS 1.0.2 DNs return query rows without their index (docs/hsds-format.md §5.3)
                query=self.protocol != "hsds",
                remote=True,
                max_concurrency=self._count * per_node,
                configured=bool(self.dn_urls) or self._count_given,
                direct_placement=True,
                data_nodes=self._count,
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
        """Return the DN number that owns ``chunk_id`` (docs/hsds-format.md §4.5)."""
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
            if self.embedded:
                from ._local import LocalNodes

                self._local = LocalNodes(
                    self._count, self.config, transport=self.transport, workers=self.dn_workers,
                    cache_bytes=self.cache_bytes, token=self.token, start_timeout=self.start_timeout,
                    limits=self._dn_limits(),
                )
                urls = await self._local.start()
                self._nodes = [Node(i, NodeURL.parse(u), "batch") for i, u in enumerate(urls)]
                return
            nodes = []
            for i, u in enumerate(self.dn_urls):
                try:
                    nodes.append(Node(i, NodeURL.parse(u), None if self.protocol == "auto" else self.protocol))
                except ValueError as exc:
                    raise ConfigError(f"dn_urls[{i}]: {exc}") from exc
            stats = RunStats()
            await asyncio.gather(*(self._probe(n, stats) for n in nodes))
            self._fold(stats)
            self._nodes = nodes

    def _dn_limits(self) -> dict[str, int]:
        """The bounds the embedded DNs enforce, from this backend's config."""
        return {
            "chunk_bytes_limit": int(option(self.config, "chunk_bytes_limit", CORE_KEYS["chunk_bytes_limit"])),
            "dn_batch_tasks_limit": int(self.option("dn_batch_tasks_limit")),
            "dn_batch_bytes_limit": int(self.option("dn_batch_bytes_limit")),
        }

    async def _probe(self, node: Node, stats: RunStats) -> bool:
        """``GET /info`` a DN: learn its protocol; mark it up or down."""
        stats.probes += 1
        if self._local is not None:
            local = self._local.nodes[node.number]
            if local.restart_pending or not local.alive:
                self._local.restart_in_background(node.number)
                node.down(f"local DN process {node.number} exited; restarting it", self.probe_interval)
                return False
            node.url = NodeURL.parse(local.url)
        try:
            status, _, body = await request(
                node.url, "GET", "/info", token=self.token, timeout=min(self.timeout, _PROBE_TIMEOUT_S)
            )
        except (NodeUnreachable, NodeTimeout) as exc:
            node.down(f"probe failed: {exc}", self.probe_interval)
            return False
        if status >= 500:
            node.down(f"probe answered HTTP {status}", self.probe_interval)
            return False
        doc = json_body(body) if status == 200 else None
        ours = doc is not None and doc.get("service") == SERVICE
        if node.protocol is None and status != 401:
            node.protocol = "batch" if ours else "hsds"
        node.info = doc or {}
        node.up, node.reason, node.failures = True, "", 0
        return True

    async def _refresh(self, stats: RunStats) -> list[Node]:
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
                tasks = self._local.pending_restarts()
                if tasks:
                    await asyncio.wait(tasks, timeout=self.start_timeout)
            await asyncio.gather(*(self._probe(n, stats) for n in nodes))
        if not any(n.up for n in nodes):
            why = "; ".join(f"{n.url}: {n.reason}" for n in nodes)
            raise BackendError(f"no DN is reachable ({why}); check dn_urls and that the DNs run")
        return nodes

    # -------------------------------------------------------------- execution
    async def read_chunks(
        self, tasks: Sequence[ChunkTask], *, sink: Sink | None = None
    ) -> AsyncIterator[tuple[int, ChunkResult]]:
        """Yield ``(i, result)`` as DNs answer; tasks go to their HSDS DN, batched per node.

        With ``sink`` (direct placement), each big result is handed to ``sink(i, result)``
        in a small thread pool as soon as it has arrived, so copying into the
        output runs beside the event loop that keeps receiving; it is yielded
        once placed.
        """
        if not tasks:
            return
        t0 = time.perf_counter()
        stats = RunStats(tasks=len(tasks))
        run = Fanout(
            self._settings, tasks, stats, sink, self.placement_pool() if sink is not None else None,
            on_unreachable=self._unreachable,
        )
        try:
            run.start(await self._refresh(stats))
            async for item in run.out.drain(len(tasks)):
                run.taken(item[1])
                yield item
        finally:
            await run.stop()
            stats.seconds = time.perf_counter() - t0
            self.last_stats = stats
            self._fold(stats)

    def _unreachable(self, number: int) -> None:
        """A read found DN ``number`` unreachable: replace it if it is an embedded DN that died."""
        if self._local is not None:
            self._local.restart_in_background(number, grace=1.0)

    def _fold(self, stats: RunStats) -> None:
        self.totals.add(stats)
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
        await self.start()
        out: list[dict[str, Any]] = []
        for n in self._nodes or []:
            try:
                status, _, body = await request(n.url, "GET", "/info", token=self.token, timeout=min(self.timeout, _PROBE_TIMEOUT_S))
                out.append(json_body(body) or {"status": status})
            except (NodeUnreachable, NodeTimeout) as exc:
                out.append({"url": str(n.url), "error": str(exc)})
        return out


