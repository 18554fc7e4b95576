"""The Backend contract: one of read_chunk/read_chunks derived from the other, checked at class creation."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest

import hsds_backends as hb
from hsds_backends.kernel import run_task
from hsds_backends.model import Backend, Capabilities, RequestStats, Sink, add_stats, current_stats
from hsds_backends.storage import PosixStorage, storage_from_config
from hsds_backends.tasks import ChunkResult, ChunkTask
from hsds_backends.writer import Writer

DOMAIN = "/home/contract/d.h5"
GRID = np.arange(24 * 24, dtype="<i4").reshape(24, 24)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    async def write() -> None:
        await Writer(PosixStorage(tmp_path)).create_dataset(DOMAIN, "/grid", GRID, chunks=(8, 8))

    asyncio.run(write())
    return tmp_path


def test_a_backend_must_override_read_chunk_or_read_chunks() -> None:
    with pytest.raises(TypeError, match=r"backend class [\w.]+\.Nothing must override read_chunk\(task\) or read_chunks\(tasks, \*, sink=None\)"):

        class Nothing(Backend):
            name: ClassVar[str] = "nothing"

    class Base(Backend, abstract=True):  # a base for other backends may override neither
        description: ClassVar[str] = "base"

    class Concrete(Base):
        name: ClassVar[str] = "concrete"

        async def read_chunk(self, task: ChunkTask) -> ChunkResult:  # pragma: no cover - never called
            raise NotImplementedError

    assert Concrete({}).description == "base"


class OneByOne(Backend):
    """Implements only read_chunk: read_chunks is derived (bounded by max_concurrency)."""

    name: ClassVar[str] = "onebyone"
    static_capabilities: ClassVar[Capabilities] = Capabilities(max_concurrency=3)

    def __init__(self, config: Any = None) -> None:
        super().__init__(config)
        self.storage = storage_from_config(self.config)
        self.running = 0
        self.most = 0

    async def read_chunk(self, task: ChunkTask) -> ChunkResult:
        self.running += 1
        self.most = max(self.most, self.running)
        try:
            await asyncio.sleep(0.001)
            return await run_task(task, self.storage)
        finally:
            self.running -= 1


class Batched(Backend):
    """Implements only read_chunks: read_chunk (used by hedging) is derived."""

    name: ClassVar[str] = "batched"

    def __init__(self, config: Any = None) -> None:
        super().__init__(config)
        self.storage = storage_from_config(self.config)
        self.calls: list[int] = []

    async def read_chunks(self, tasks: Sequence[ChunkTask], *, sink: Sink | None = None) -> AsyncIterator[tuple[int, ChunkResult]]:
        self.calls.append(len(tasks))
        for i in reversed(range(len(tasks))):  # any order: results carry their index
            yield i, await run_task(tasks[i], self.storage)


def _pm(*classes: type[Backend]) -> Any:
    import types

    import pluggy

    from hsds_backends import hookspecs

    pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
    pm.add_hookspecs(hookspecs)
    mod = types.SimpleNamespace()

    @hb.hookimpl
    def hsds_backends_backend_classes() -> list[type[Backend]]:
        return list(classes)

    @hb.hookimpl
    def hsds_backends_make_backend(name: str, config: Any) -> Backend | None:
        return next((c(config) for c in classes if c.name == name), None)

    mod.hsds_backends_backend_classes = hsds_backends_backend_classes
    mod.hsds_backends_make_backend = hsds_backends_make_backend
    pm.register(mod, name="contract-test")
    return pm


@pytest.mark.parametrize("cls", [OneByOne, Batched])
def test_derived_methods_read_the_same_bytes(root: Path, cls: type[Backend]) -> None:
    async def go() -> tuple[Any, Any, Backend]:
        async with hb.Reader({"root_dir": str(root)}, pm=_pm(cls)) as reader:
            d = await (await reader.open(DOMAIN)).get("/grid")
            whole = await d.read(np.s_[1:23:2, 3:20], backend=cls.name)
            b = reader.backend(cls.name)
            task = d.plan(np.s_[0:8, 0:8]).tasks[0]
            one = await b.read_chunk(task)  # derived for Batched, direct for OneByOne
            return whole, one, b

    whole, one, b = asyncio.run(go())
    assert whole.tobytes() == GRID[1:23:2, 3:20].tobytes()
    assert one.status == "ok" and one.data == GRID[0:8, 0:8].tobytes()
    if isinstance(b, OneByOne):
        assert b.most == 3  # the derived read_chunks keeps max_concurrency
    else:
        assert isinstance(b, Batched) and b.calls[-1] == 1  # read_chunk went through read_chunks([task])


def test_stats_add_is_the_one_way_backends_report() -> None:
    stats = RequestStats()
    add_stats("x", retries=3)  # outside a request: nowhere to go, no error
    token = current_stats.set(stats)
    try:
        add_stats("lambda", retries=1, gb_seconds=0.5, dollars=0.01, invokes=2)
        add_stats("lambda", invokes=3, billed_ms=7)
        add_stats("containers", retries=2, reroutes=1)
    finally:
        current_stats.reset(token)
    assert (stats.retries, stats.gb_seconds, stats.dollars) == (3, 0.5, 0.01)
    assert stats.extra == {"lambda": {"retries": 1, "invokes": 5, "billed_ms": 7}, "containers": {"retries": 2, "reroutes": 1}}


def test_status_is_a_declared_attribute_of_our_errors() -> None:
    import pickle

    from hsds_backends.errors import BackendError, HsdsBackendsError, NotFoundError, TaskError

    assert HsdsBackendsError("x").status is None
    err = TaskError("chunk c-1: bad select", status=400)
    assert err.status == 400 and str(err) == "chunk c-1: bad select"
    again = pickle.loads(pickle.dumps(err))  # dask ships errors pickled
    assert type(again) is TaskError and again.status == 400 and str(again) == str(err)
    nf = NotFoundError("no such domain", status=404)  # mixes in FileNotFoundError
    assert isinstance(nf, FileNotFoundError) and nf.status == 404
    assert BackendError("down", status=503).status == 503
