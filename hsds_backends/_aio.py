"""Async machinery every backend shares (docs/architecture.md §4 "shared machinery").

- :class:`ResultQueue`: producers (workers, stream readers, callbacks from threads) put
  results or the first error; the consumer drains exactly as many results as it expects and
  gets the error raised where it waits.
- :func:`cancel_and_wait`: cancel leftover work, wait for it at most a bound, and retrieve
  every outcome, so an error of a task that finished beside the one that failed is never
  reported as "exception was never retrieved", and a slow remote cancel cannot hang a read.
- :func:`map_unordered`: run an async function over items with bounded concurrency and yield
  ``(index, result)`` as they complete (the ABC derives ``read_chunks`` from ``read_chunk``
  with it).

One copy of each mechanism, as cubed keeps ``runtime/asyncio.py`` for every executor.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from typing import Any, Generic, TypeVar

__all__ = ["ResultQueue", "cancel_and_wait", "map_unordered", "retrieve", "wait_bounded"]

T = TypeVar("T")
R = TypeVar("R")

log = logging.getLogger(__name__)


def retrieve(fut: asyncio.Future[Any]) -> None:
    """Mark ``fut``'s outcome as seen (a done callback: its error, if any, is not news)."""
    if not fut.cancelled():
        fut.exception()


class ResultQueue(Generic[T]):
    """Results from producers, or the first error, for one consumer.

    Producers call :meth:`put` (results) and :meth:`fail` (only the first error is kept:
    it ends the consumer's wait); both are for the event loop's thread — a worker thread
    uses :meth:`put_threadsafe`. The consumer iterates :meth:`drain`.
    """

    __slots__ = ("_q", "_failed", "_loop")

    def __init__(self) -> None:
        self._q: asyncio.Queue[T | _Failure] = asyncio.Queue()
        self._failed = False
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def failed(self) -> bool:
        """Whether an error was put (later results are still queued but never drained)."""
        return self._failed

    def put(self, item: T) -> None:
        """Queue one result."""
        self._q.put_nowait(item)

    def put_threadsafe(self, item: T) -> None:
        """Queue one result from a thread other than the event loop's."""
        loop = self._loop
        if loop is None:
            raise RuntimeError("ResultQueue.put_threadsafe before drain() started")
        loop.call_soon_threadsafe(self._q.put_nowait, item)

    def fail(self, exc: BaseException) -> None:
        """Queue ``exc`` for the consumer, unless an error is already queued."""
        if not self._failed:
            self._failed = True
            self._q.put_nowait(_Failure(exc))

    def bind(self) -> None:
        """Remember the running loop (for :meth:`put_threadsafe` before draining starts)."""
        self._loop = asyncio.get_running_loop()

    async def get(self) -> T:
        """Return the next result; raise the queued error if that comes first."""
        item = await self._q.get()
        if isinstance(item, _Failure):
            raise item.exc
        return item

    async def drain(self, count: int) -> AsyncIterator[T]:
        """Yield ``count`` results in arrival order; raise the first error put."""
        self._loop = asyncio.get_running_loop()
        for _ in range(count):
            yield await self.get()


class _Failure:
    __slots__ = ("exc",)

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


async def cancel_and_wait(
    futures: Iterable[asyncio.Future[Any]], *, timeout: float | None = None, what: str = "work"
) -> bool:
    """Cancel ``futures``, wait for them at most ``timeout`` seconds, and retrieve every outcome.

    Returns whether all of them finished within the bound. Those that did not are left to
    finish in the background (their outcomes are still retrieved when they do) and a
    warning names ``what``.
    """
    futs = [f for f in futures if f is not None]
    for f in futs:
        f.cancel()
    if not futs:
        return True
    done, pending = await asyncio.wait(futs, timeout=timeout)
    for f in done:
        retrieve(f)
    for f in pending:
        f.add_done_callback(retrieve)
    if pending:
        log.warning("%d %s did not stop within %.1f s of being cancelled; left to finish in the background", len(pending), what, timeout or 0.0)
        return False
    return True


async def wait_bounded(fut: asyncio.Future[Any], timeout: float | None) -> bool:
    """Wait for ``fut`` at most ``timeout`` seconds without cancelling it; return whether it finished.

    Unlike ``asyncio.wait_for``, a future still running at the bound is left running (a
    clean-up that must not be cut short, a remote cancel whose answer may never come), and
    its outcome is retrieved whenever it ends.
    """
    done, _ = await asyncio.wait({fut}, timeout=timeout)
    if fut in done:
        return True
    fut.add_done_callback(retrieve)
    return False


async def map_unordered(
    fn: Callable[[T], Awaitable[R]], items: Sequence[T], limit: int
) -> AsyncIterator[tuple[int, R]]:
    """Yield ``(i, await fn(items[i]))`` as calls complete, at most ``limit`` at once.

    The first error cancels the calls still running (their outcomes are retrieved) and is
    raised. Closing the iterator early cancels the rest the same way.
    """
    results: ResultQueue[tuple[int, R]] = ResultQueue()
    it = iter(enumerate(items))

    async def worker() -> None:
        for i, item in it:
            try:
                r = await fn(item)
            except asyncio.CancelledError:
                raise
            except BaseException as exc:  # noqa: BLE001 - forwarded to the consumer
                results.fail(exc)
                return
            results.put((i, r))

    workers = [asyncio.ensure_future(worker()) for _ in range(min(max(1, limit), len(items)))]
    try:
        async for item in results.drain(len(items)):
            yield item
    finally:
        await cancel_and_wait(workers)
