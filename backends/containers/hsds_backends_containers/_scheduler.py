"""One read's fan-out over the DNs: per-node queues, requests in flight, retries, rerouting, placement.

Placement is HSDS's (docs/hsds-format.md §4.5): chunk ``c`` goes to DN number
``int(md5(c)[:5], 16) mod N`` of the ordered DN list, so a chunk is always read by the same
DN and its decoded-chunk cache pays off. Per node at most
``max_tasks_per_node_per_request`` requests are in flight (docs/hsds-format.md §4.6); our
DNs take a *batch* of tasks per request and stream the results back as they complete
(:mod:`._batch`), HSDS's DNs one chunk per request (:mod:`._hsds`).

Failures:

- a 503 or other 5xx answer is retried on the same DN with jittered exponential backoff
  (``dn_retry_backoff_exp`` · 2^k + U(0, 0.1) s, at most ``dn_max_retries`` times, as HSDS's
  crawler does), then the DN is considered down;
- a refused, reset or cut connection marks the DN down at once;
- a DN that sends nothing for ``timeout`` seconds is down too.

The unanswered tasks of a down DN go to the next DN in ring order that is up (any of our DNs
can serve any chunk; HSDS's DNs cannot, so their chunks are only retried). When no DN is left
the read fails with :class:`~hsds_backends.errors.BackendTimeoutError` (timeouts) or
:class:`~hsds_backends.errors.BackendError` naming the DN.

Results go to the caller through a :class:`~hsds_backends._aio.ResultQueue`; when the caller
falls more than :data:`_BACKLOG` bytes behind, the streams stop taking frames and the DNs
wait. With a sink (direct placement), big results are placed in a thread pool before they
are queued.
"""

from __future__ import annotations

import asyncio
import random
import secrets
import time
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

from hsds_backends._aio import ResultQueue, cancel_and_wait
from hsds_backends.errors import BackendError, BackendTimeoutError
from hsds_backends.ids import dn_index
from hsds_backends.tasks import ChunkResult

from ._batch import read_batch
from ._client import Fatal, NodeTimeout, NodeUnreachable, Retryable
from ._hsds import read_chunk

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from concurrent.futures import ThreadPoolExecutor

    from hsds_backends.model import Sink
    from hsds_backends.tasks import ChunkTask

    from ._client import NodeURL

__all__ = ["Fanout", "Node", "RunStats", "Settings"]

#: Result bytes a read may hold that the caller has not taken yet (then DN streams wait).
_BACKLOG: Final = 32 * 1024 * 1024
#: Results at least this big are placed into the output from a thread pool (direct placement).
_POOL_PLACE_MIN: Final = 256 * 1024
#: Seconds a finished or abandoned read waits for its cancelled requests (each only closes a connection).
_STOP_TIMEOUT_S: Final = 5.0


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

    def add(self, other: RunStats) -> None:
        """Add ``other``'s figures to these."""
        for k in ("tasks", "requests", "retries", "reroutes", "timeouts", "node_failures", "probes"):
            setattr(self, k, getattr(self, k) + getattr(other, k))
        for url, n in other.per_node.items():
            self.per_node[url] = self.per_node.get(url, 0) + n
        self.seconds += other.seconds


@dataclass
class Node:
    """What the client knows of one DN."""

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


@dataclass(frozen=True, slots=True)
class Settings:
    """The client settings a read runs with (from the backend's config keys)."""

    max_tasks_per_node: int
    batch_size: int
    timeout: float
    max_retries: int
    backoff: float
    probe_interval: float
    token: str | None


class Fanout:
    """State of one ``read_chunks`` call: per-node queues, in-flight requests, results.

    Parameters
    ----------
    settings
        Client settings.
    tasks
        The read's chunk tasks.
    stats
        Where the read's figures are counted.
    sink, placer
        Direct placement: ``sink(i, result)`` runs in ``placer`` for big results.
    on_unreachable
        Called with a DN's number when its connection was refused or cut (an embedded
        DN process that died is then replaced).
    """

    def __init__(
        self,
        settings: Settings,
        tasks: Sequence[ChunkTask],
        stats: RunStats,
        sink: Sink | None = None,
        placer: ThreadPoolExecutor | None = None,
        on_unreachable: Callable[[int], object] | None = None,
    ) -> None:
        self.settings, self.tasks, self.stats = settings, tasks, stats
        self.sink, self.placer, self.on_unreachable = sink, placer, on_unreachable  # placement, and who restarts DNs
        self.nodes: list[Node] = []
        self.out: ResultQueue[tuple[int, ChunkResult]] = ResultQueue()
        self.delivered = bytearray(len(tasks))
        self.tries = [0] * len(tasks)
        self.pending: list[deque[int]] = []
        self.active: list[int] = []
        self.workers: set[asyncio.Task[None]] = set()
        self.stopped = False
        self.tag = secrets.token_hex(8)
        # results received but not yet taken by the caller; above _BACKLOG the streams stop reading
        self.backlog = 0
        self.room = asyncio.Event()
        self.room.set()

    # -- scheduling
    def start(self, nodes: list[Node]) -> None:
        """Queue every task on its DN and send the first requests."""
        self.nodes = nodes
        n = len(nodes)
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
        """Send node ``k`` more requests while it has queued tasks and free slots."""
        if self.stopped or self.out.failed:
            return
        q = self.pending[k]
        limit = self.settings.max_tasks_per_node
        node = self.nodes[k]
        while q and self.active[k] < limit:
            # our DNs: full batches (a DN streams a batch back in completion order, so more parallel
            # requests only add connections and buffering); HSDS DNs: one chunk per request (docs/hsds-format.md §4.6)
            size = 1 if node.protocol == "hsds" else self.settings.batch_size
            idxs = [q.popleft() for _ in range(min(size, len(q)))]
            self.active[k] += 1
            w = asyncio.get_running_loop().create_task(self._send(k, idxs))
            self.workers.add(w)
            w.add_done_callback(self.workers.discard)

    def _deliver(self, i: int, res: ChunkResult, node: Node | None) -> None:
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
            self.out.put((i, res))  # small: the caller places it on the loop, cheaper than a thread hop
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
            self.out.put((i, res))

    def taken(self, res: ChunkResult) -> None:
        """The caller took ``res``: make room for more."""
        self.backlog -= len(res.data)
        if self.backlog <= _BACKLOG // 2:
            self.room.set()

    def fail(self, exc: BaseException) -> None:
        """End the read with ``exc`` (only the first error counts)."""
        self.out.fail(exc)

    async def stop(self) -> None:
        """Cancel the requests still running and wait (bounded) until they are gone."""
        self.stopped = True
        await cancel_and_wait(self.workers, timeout=_STOP_TIMEOUT_S, what="DN requests")

    # -- one request
    async def _send(self, k: int, idxs: list[int]) -> None:
        node = self.nodes[k]
        s = self.settings
        self.stats.requests += 1
        try:
            if node.protocol == "hsds":
                i = idxs[0]
                self._deliver(i, await read_chunk(node.url, self.tasks[i], token=s.token, timeout=s.timeout), node)
            else:
                await read_batch(
                    node.url, self.tasks, idxs, tag=self.tag, token=s.token, timeout=s.timeout,
                    deliver=lambda i, res: self._deliver(i, res, node), room=self.room,
                )
        except Fatal as exc:
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
        s, node = self.settings, self.nodes[k]
        for i in left:
            self.tries[i] += 1
        tries = max(self.tries[i] for i in left)
        cid = self.tasks[left[0]].chunk_id
        if isinstance(exc, NodeTimeout):
            self.stats.timeouts += 1
        answered = isinstance(exc, Retryable)
        if not isinstance(exc, (Retryable, NodeTimeout, NodeUnreachable)):
            self.fail(BackendError(f"chunk {cid}: DN {node.url} failed: {type(exc).__name__}: {exc}"))
            return
        # a DN that answered 5xx gets its retries first; a dead or silent one is given up at once
        if answered and tries <= s.max_retries:
            await self._retry_later(k, left, tries)
            return
        if node.up:
            node.down(f"{exc}", s.probe_interval)
            self.stats.node_failures += 1
            if self.on_unreachable is not None and isinstance(exc, NodeUnreachable):
                self.on_unreachable(k)  # a dead embedded DN is replaced now, used once probed
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
        if len(moved) == len(left) and max(self.tries[i] for i in left) <= s.max_retries + len(self.nodes):
            self.stats.reroutes += len(left)
            for i, q in moved:
                self.pending[q].append(i)
            for q in {q for _, q in moved}:
                self.pump(q)
            return
        # nowhere else to go
        if isinstance(exc, NodeTimeout):
            self.fail(BackendTimeoutError(
                f"chunk {cid}: DN {node.url} did not answer within {s.timeout:g} s (config timeout) and no other DN is up"
            ))
            return
        if isinstance(exc, NodeUnreachable) and tries <= s.max_retries:
            await self._retry_later(k, left, tries)  # the only DN: it may be restarting
            return
        hint = ""
        if node.protocol == "hsds" and "500" in str(exc):
            hint = " (an HSDS DN answers 500 for a chunk of another DN: list dn_urls in node order)"
        self.fail(BackendError(f"chunk {cid}: DN {node.url} failed after {tries} attempt(s): {exc}{hint}"))

    async def _retry_later(self, k: int, left: list[int], tries: int) -> None:
        self.stats.retries += 1
        backoff = self.settings.backoff
        await asyncio.sleep(backoff * 2 ** (tries - 1) + random.uniform(0, 0.1 if backoff else 0))
        self.pending[k].extendleft(reversed(left))
        # the caller's finally releases this request's slot and pumps node k again
