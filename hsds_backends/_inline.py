"""The built-in ``inline`` backend: the kernel in this process, on all cores.

Decoding and cutting run in a thread pool (zlib, ISA-L, Blosc and numpy copies
release the GIL), at most ``max_workers`` (default: all cores) at once, through
the kernel's entry point (:func:`~hsds_backends.kernel.run_task`, or
:func:`~hsds_backends.kernel.run_task_sync` in the pool's threads). Storages
with a sync reader (posix) are read in those threads too; others (S3) are
awaited on the event loop. It is registered as a plugin like any other backend
(plugin name ``inline``).
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, ClassVar

from ._aio import cancel_and_wait
from .kernel import fetch, run_task, run_task_sync
from .model import Backend, Capabilities, Sink, default_workers
from .plugins import backend_hooks
from .storage import Storage, storage_from_config
from .tasks import ChunkResult

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Mapping, Sequence

    from .tasks import ChunkTask

__all__ = ["InlineBackend"]


class InlineBackend(Backend):
    """Run chunk tasks in-process with bounded parallelism over all cores.

    Parameters
    ----------
    config
        Resolved config; reads ``max_workers`` (default: all cores) and the
        storage keys (``root_dir``, ``aws_s3_gateway``, ...).
    storage
        An open storage to read from; default: opened from ``config``.
    """

    name: ClassVar[str] = "inline"
    description: ClassVar[str] = "in-process kernel, bounded parallelism over all cores"
    url: ClassVar[str] = "https://github.com/hsds-backends/hsds-backends"
    static_capabilities: ClassVar[Capabilities] = Capabilities(max_concurrency=default_workers())
    overhead_s: ClassVar[float] = 0.0002
    per_chunk_s: ClassVar[float] = 0.0035

    def __init__(self, config: Mapping[str, Any] | None = None, *, storage: Storage | None = None) -> None:
        super().__init__(config)
        self.max_workers = int(self.config.get("max_workers") or default_workers())
        # a little over-subscription keeps storage reads overlapping decodes; built once, as
        # the selector asks for it several times per request
        self._capabilities = Capabilities(max_concurrency=self.max_workers * 2, direct_placement=True)
        self._storage = storage
        self._own_storage = storage is None
        self._pool: ThreadPoolExecutor | None = None

    @property
    def capabilities(self) -> Capabilities:
        return self._capabilities

    @property
    def storage(self) -> Storage:
        if self._storage is None:
            self._storage = storage_from_config(self.config)
        return self._storage

    def _executor(self) -> ThreadPoolExecutor:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.max_workers, thread_name_prefix="hsds-inline")
        return self._pool

    async def read_chunk(self, task: ChunkTask) -> ChunkResult:
        return await run_task(task, self.storage, executor=self._executor())

    async def read_chunks(self, tasks: Sequence[ChunkTask], *, sink: Sink | None = None) -> AsyncIterator[tuple[int, ChunkResult]]:
        """Yield ``(j, result)`` per task; with ``sink``, results are placed from the worker threads.

        Storages with a sync reader (posix) are read in the worker threads too,
        so reading, decoding and copying into the output all run on every core;
        only the others (S3) are awaited on the event loop.
        """
        if len(tasks) == 1:  # one chunk: skip the worker machinery, keep latency low
            yield 0, await self.read_chunk(tasks[0])
            return
        loop = asyncio.get_running_loop()
        pool = self._executor()
        read = self.storage.sync_reader()

        def work(j: int, task: ChunkTask, data: bytes | None) -> tuple[int, ChunkResult]:
            if sink is not None:  # placed here, so the result need not be a copy of the decoded chunk
                res = run_task_sync(task, read, data, copy=False)
                sink(j, res)
                return j, ChunkResult(res.chunk_id, res.status, b"", res.fetched, res.decoded)
            return j, run_task_sync(task, read, data)

        limit = max(1, self.capabilities.max_concurrency)
        pending: set[asyncio.Future[tuple[int, ChunkResult]]] = set()
        ready: set[asyncio.Future[tuple[int, ChunkResult]]] = set()  # finished, not yet yielded
        it = iter(enumerate(tasks))
        try:
            while True:
                while len(pending) < limit:
                    nxt = next(it, None)
                    if nxt is None:
                        break
                    j, task = nxt
                    data = None if read is not None else await fetch(task, self.storage)
                    pending.add(loop.run_in_executor(pool, work, j, task, data))
                if not pending:
                    return
                ready, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                while ready:
                    yield ready.pop().result()
        finally:
            # one error is raised; the others, and the tasks still queued, are not news
            await cancel_and_wait(ready | pending)

    async def aclose(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
        if self._own_storage and self._storage is not None:
            await self._storage.aclose()
            self._storage = None
        await super().aclose()


hsds_backends_backend_classes, hsds_backends_make_backend = backend_hooks(
    InlineBackend.name, InlineBackend, with_storage=True  # the reader's storage: no second connection pool
)
