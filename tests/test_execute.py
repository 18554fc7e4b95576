"""Execution clean-up: a backend that hangs while cleaning up must not hang the request."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest

import hsds_backends as hb
from hsds_backends.execute import Execution
from hsds_backends.kernel import run_task
from hsds_backends.model import Backend, Capabilities, RequestStats, Sink
from hsds_backends.plan import Assembler, ReadPlan
from hsds_backends.storage import PosixStorage
from hsds_backends.tasks import ChunkResult, ChunkTask
from hsds_backends.writer import Writer

DOMAIN = "/home/exec/d.h5"
CLEANUP_S = 3.0
GRID = np.arange(32 * 32, dtype="<i4").reshape(32, 32)


class _Kernel(Backend):
    name: ClassVar[str] = "kernel"
    static_capabilities: ClassVar[Capabilities] = Capabilities(max_concurrency=4)

    def __init__(self, root: Path) -> None:
        super().__init__({})
        self.storage = PosixStorage(root)

    async def read_chunk(self, task: ChunkTask) -> ChunkResult:
        return await run_task(task, self.storage)


class _HangsOnCleanup(_Kernel):
    """Answers every task, then waits; cancelling it starts a clean-up that takes ``CLEANUP_S``."""

    name: ClassVar[str] = "hangs"

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.cleanup_started = False

    async def read_chunks(self, tasks: Sequence[ChunkTask], *, sink: Sink | None = None) -> AsyncIterator[tuple[int, ChunkResult]]:
        try:
            for i, t in enumerate(tasks):
                yield i, await self.read_chunk(t)
            await asyncio.sleep(3600)  # a result stream that is never closed by the backend
        finally:
            self.cleanup_started = True
            # ignores cancellation: a remote cancel that takes far longer than the bound
            await asyncio.shield(asyncio.sleep(CLEANUP_S))


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("exec")
    asyncio.run(Writer(PosixStorage(root)).create_dataset(DOMAIN, "/grid", GRID, chunks=(8, 8)))
    return root


async def _plan(root: Path) -> ReadPlan:
    async with hb.Reader({"root_dir": str(root)}) as reader:
        d = await (await reader.open(DOMAIN)).get("/grid")
        return d.plan(np.s_[2:30, 3:29])


def test_hanging_cleanup_is_bounded(root: Path, caplog: pytest.LogCaptureFixture) -> None:
    async def go() -> tuple[np.ndarray, Execution, float, _HangsOnCleanup]:
        plan = await _plan(root)
        asm = Assembler(plan)
        hanging = _HangsOnCleanup(root)
        ex = Execution(plan, asm, RequestStats(), fallbacks=lambda b: [], hedge_backend=lambda b: None, close_timeout_s=0.3)
        t = time.perf_counter()
        await ex.run(hanging)
        return asm.result(), ex, time.perf_counter() - t, hanging

    with caplog.at_level(logging.WARNING, logger="hsds_backends.execute"):
        out, ex, seconds, hanging = asyncio.run(go())
    assert out.tobytes() == GRID[2:30, 3:29].tobytes()
    assert hanging.cleanup_started
    assert seconds < CLEANUP_S - 1  # bounded by close_timeout_s, not by the backend's clean-up
    assert "backend hangs did not finish cleaning up within 0.3 s (close_timeout_s)" in caplog.text
    assert ex.stats.failovers == 0
