"""Run a plan's chunk tasks on a backend, with failover and hedging.

- **Failover.** When the backend fails (after its own retries) with an
  infrastructure error, the tasks it has not delivered are re-run on the
  next-best backend that can serve them. Data errors (a corrupt chunk, a bad
  selection) are not retried elsewhere: every backend would fail the same way.
- **Hedging.** With ``hedge_multiple = k > 0``, once half of the tasks are in,
  a task still pending after ``k`` × the request's median task time (and at
  least ``hedge_min_seconds``) is duplicated on the hedge backend; the first
  result wins and the other attempt is cancelled or ignored.

Bytes from a failed or cancelled attempt never reach the output: a task's
result is placed exactly once, when its first successful answer arrives.
"""

from __future__ import annotations

import asyncio
import logging
import statistics
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from .errors import (
    BackendError,
    ChunkDecodeError,
    DatasetJsonError,
    FieldError,
    NotFoundError,
    QueryError,
    SelectionError,
    StorageError,
    StoragePathError,
    TaskError,
    TypeJsonError,
)
from ._aio import wait_bounded
from ._ledger import Ledger
from .model import Backend, RequestStats

if TYPE_CHECKING:
    from .plan import ReadPlan
    from .tasks import ChunkResult

__all__ = ["Execution", "ResultSink", "can_fail_over"]

log = logging.getLogger(__name__)

_DATA_ERRORS = (ChunkDecodeError, SelectionError, QueryError, FieldError, DatasetJsonError, TypeJsonError, NotFoundError, StoragePathError)


class ResultSink(Protocol):
    """Where an execution's results go: :class:`~hsds_backends.plan.Assembler`, or a service answering each task.

    ``add(i, res)`` is called once per task, with its first successful result, from any
    thread. Nothing may refer to ``res.data`` after it returns: a backend may reuse the buffer.
    """

    def add(self, i: int, res: ChunkResult) -> None: ...


def can_fail_over(exc: BaseException) -> bool:
    """Return whether ``exc`` is a failure of the executor (worth re-running elsewhere), not of the data."""
    if isinstance(exc, _DATA_ERRORS):
        return False
    if isinstance(exc, TaskError):
        return (exc.status or 500) >= 500
    return isinstance(exc, (BackendError, StorageError, OSError, asyncio.TimeoutError, ConnectionError))


@dataclass
class Execution:
    """One request's execution state.

    Parameters
    ----------
    plan, assembler
        What to run and where results go (an :class:`~hsds_backends.plan.Assembler`, or
        any :class:`ResultSink`).
    stats
        Filled as results arrive.
    fallbacks
        Returns the backends to fail over to, best first (called only on failure).
    hedge_backend
        Returns the backend for hedged duplicates, or ``None`` (called only when hedging).
    hedge_multiple, hedge_min_seconds
        Hedging thresholds (``hedge_multiple <= 0`` disables hedging).
    progress
        Called with 1 for each placed result.
    """

    plan: ReadPlan
    assembler: ResultSink
    stats: RequestStats
    fallbacks: Callable[[Backend], Sequence[Backend]]
    hedge_backend: Callable[[Backend], Backend | None]
    hedge_multiple: float = 0.0
    hedge_min_seconds: float = 0.05
    progress: Callable[[int], None] | None = None
    close_timeout_s: float = 10.0
    """Longest wait for a backend to clean up after a request (cancelling its leftover work)."""
    ledger: Ledger = field(default_factory=Ledger)
    """Where the backends' running counters are kept (the reader's)."""

    def __post_init__(self) -> None:
        self.done: set[int] = set()
        """Tasks whose result is completely in the output (read and written on the event loop only)."""
        self._claimed: set[int] = set()
        self._placed: set[int] = set()
        self._lock = threading.Lock()
        self._t0 = 0.0
        self._times: list[float] = []

    def _place(self, i: int, res: ChunkResult) -> bool:
        """Place the first answer for task ``i``; later ones are dropped. Safe from any thread.

        A task counts as done only once its copy into the output has finished
        (:meth:`_sync_done`), so a duplicate that loses the race can never end
        the request while the winner is still writing.
        """
        with self._lock:
            if i in self._claimed:
                return False  # a duplicate (hedge or original) that lost the race
            self._claimed.add(i)
        self.assembler.add(i, res)  # outside the lock: tasks write disjoint regions
        with self._lock:
            self._placed.add(i)
            self.stats.bytes_fetched += res.fetched
            self.stats.bytes_decoded += res.decoded
            self._times.append(time.perf_counter() - self._t0)
        if self.progress is not None:
            self.progress(1)
        return True

    def _sync_done(self) -> None:
        with self._lock:
            self.done = set(self._placed)

    async def run(self, backend: Backend) -> None:
        """Run every task, failing over as needed; raise the last error if no backend is left."""
        self._t0 = time.perf_counter()
        n = len(self.plan.tasks)
        self.stats.s3_gets += sum(1 for t in self.plan.tasks if t.location is not None)
        current = backend
        tried: list[Backend] = []
        queue: list[Backend] | None = None
        while True:
            self._sync_done()
            todo = [i for i in range(n) if i not in self.done]
            if not todo:
                return
            b = current
            tried.append(b)
            counters = self.ledger.counters(b)
            counters.requests += 1
            counters.tasks += len(todo)
            counters.in_flight += len(todo)
            retries_before = self.stats.retries
            try:
                await self._stream(b, todo)
                return
            except BaseException as exc:
                self._sync_done()
                left = [i for i in todo if i not in self.done]
                counters.failed += len(left)
                if not can_fail_over(exc) or not left:
                    raise
                if queue is None:
                    queue = [b for b in self.fallbacks(backend) if b not in tried]
                queue = [b for b in queue if b not in tried]
                if not queue:
                    raise
                nxt = queue.pop(0)
                log.warning("backend %s failed (%s: %s); %d task(s) fail over to %s", b.name, type(exc).__name__, exc, len(left), nxt.name)
                self.stats.failovers += len(left)
                self.stats.failover_to.append(nxt.name)
                self.stats.s3_gets += sum(1 for i in left if self.plan.tasks[i].location is not None)
                current = nxt
            finally:
                counters.in_flight = max(0, counters.in_flight - len(todo))
                counters.retried += self.stats.retries - retries_before

    async def _stream(self, backend: Backend, todo: list[int]) -> None:
        tasks = [self.plan.tasks[i] for i in todo]
        sink = (lambda j, res: self._place(todo[j], res)) if backend.capabilities.direct_placement else None
        gen = backend.read_chunks(tasks, sink=sink)
        it = gen.__aiter__()
        nxt: asyncio.Future[Any] | None = asyncio.ensure_future(it.__anext__())
        hedges: dict[asyncio.Future[Any], int] = {}
        hedger: Backend | None = None
        hedging = self.hedge_multiple > 0 and len(todo) > 1
        target = set(todo)
        try:
            while not target <= self.done:
                waits: set[asyncio.Future[Any]] = set(hedges)
                if nxt is not None:
                    waits.add(nxt)
                if not waits:
                    missing = sorted(target - self.done)
                    raise BackendError(
                        f"backend {backend.name!r} ended its results with {len(missing)} of {len(target)} task(s) unanswered"
                        f" (first: {self.plan.tasks[missing[0]].chunk_id})"
                    )
                timeout = self._check_interval() if hedging else None
                finished, _ = await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
                for f in finished:
                    if f is nxt:
                        try:
                            j, res = f.result()
                        except StopAsyncIteration:
                            nxt = None
                            continue
                        self._place(todo[j], res)  # a no-op if the backend's sink placed it already
                        nxt = asyncio.ensure_future(it.__anext__())
                    else:
                        i = hedges.pop(f)
                        try:
                            res = f.result()
                        except Exception as exc:  # noqa: BLE001 - the original attempt still runs
                            log.info("hedged attempt of %s failed: %s", self.plan.tasks[i].chunk_id, exc)
                            continue
                        if self._place(i, res):
                            self.stats.hedges_won += 1
                self._sync_done()
                # a finished original makes its hedge pointless: cancel it
                for f, i in list(hedges.items()):
                    if i in self.done:
                        f.cancel()
                        del hedges[f]
                if hedging:
                    if hedger is None:
                        hedger = self.hedge_backend(backend)
                        if hedger is None:
                            hedging = False
                            continue
                    now = time.perf_counter() - self._t0
                    for i in self._stragglers(target, set(hedges.values()), now):
                        self.stats.hedges += 1
                        if self.plan.tasks[i].location is not None:
                            self.stats.s3_gets += 1
                        hedges[asyncio.ensure_future(hedger.read_chunk(self.plan.tasks[i]))] = i
        finally:
            if nxt is not None:
                nxt.cancel()
            for f in hedges:
                f.cancel()
            await self._clean_up(backend, gen, [f for f in [nxt, *hedges] if f is not None])

    async def _clean_up(self, backend: Backend, gen: Any, pending: list[asyncio.Future[Any]]) -> None:
        """Wait for cancelled attempts and close the backend's result generator, at most ``close_timeout_s``.

        A backend's clean-up (cancelling its remote work) must not hang the request: past
        the bound it is left to finish in the background, and a warning names the backend.
        """

        async def clean() -> None:
            await asyncio.gather(*pending, return_exceptions=True)
            aclose = getattr(gen, "aclose", None)  # async generators: stop whatever is still running
            if aclose is not None:
                await aclose()

        task = asyncio.ensure_future(clean())
        if not await wait_bounded(task, self.close_timeout_s):
            log.warning(
                "backend %s did not finish cleaning up within %.1f s (close_timeout_s); the request goes on without waiting",
                backend.name,
                self.close_timeout_s,
            )
        elif not task.cancelled():
            task.result()

    def _median(self) -> float | None:
        if len(self._times) < 2:
            return None
        return statistics.median(self._times)

    def _check_interval(self) -> float:
        m = self._median()
        return max(0.01, (m or self.hedge_min_seconds) / 4)

    def _stragglers(self, target: set[int], hedged: set[int], now: float) -> list[int]:
        """Pending tasks older than k × the median task time, once half of the tasks are in."""
        if len(self.done & target) * 2 < len(target):
            return []
        m = self._median()
        if m is None or now < max(self.hedge_multiple * m, self.hedge_min_seconds):
            return []
        return sorted(target - self.done - hedged)
