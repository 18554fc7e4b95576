"""A fake backend plugin: records every task, runs the shared kernel in-process."""

from __future__ import annotations

from typing import Any, ClassVar

from hsds_backends import Backend, Capabilities, hookimpl
from hsds_backends.kernel import run_task
from hsds_backends.storage import storage_from_config


class FakeBackend(Backend):
    name: ClassVar[str] = "fake"
    description: ClassVar[str] = "records tasks; for plugin tests"
    static_capabilities: ClassVar[Capabilities] = Capabilities(query=False, max_concurrency=3)

    def __init__(self, config: Any = None) -> None:
        super().__init__(config)
        self.seen: list[str] = []
        self.storage = storage_from_config(self.config)

    async def read_chunk(self, task):  # type: ignore[no-untyped-def]
        self.seen.append(task.chunk_id)
        return await run_task(task, self.storage)


@hookimpl
def hsds_backends_backend_classes():  # type: ignore[no-untyped-def]
    return [FakeBackend]


@hookimpl
def hsds_backends_make_backend(name, config):  # type: ignore[no-untyped-def]
    if name == "fake" and config.get("fake_enabled", True):
        return FakeBackend(config)
    return None
