"""The conformance suite against the built-in ``inline`` backend."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from hsds_backends._inline import InlineBackend
from hsds_backends.model import Backend
from hsds_backends.testing import BackendTests


class TestInlineBackend(BackendTests[InlineBackend]):
    backend_cls = InlineBackend

    @pytest.fixture(scope="class")
    @classmethod
    def backend_config(cls) -> dict[str, Any]:
        return {"max_workers": 2}

    def test_repr(self, backend: Backend) -> None:
        assert repr(backend) == "<InlineBackend 'inline'>"

    def test_capabilities(self, backend: Backend) -> None:
        caps = backend.capabilities
        assert (caps.hyperslab, caps.points, caps.query, caps.fields, caps.linked_chunks, caps.vlen) == (True,) * 6
        assert caps.max_concurrency == 4  # 2 workers, 2 tasks in flight each
        assert not caps.remote and not caps.costs_money
        assert caps.max_response_bytes is None


def test_failed_read_leaves_no_unretrieved_errors(tmp_path: Any, caplog: pytest.LogCaptureFixture) -> None:
    # every chunk fails at once: the error of each finished task must be retrieved, not only the
    # first one raised (asyncio logs "Future exception was never retrieved" for the others)
    import gc
    import logging

    import numpy as np

    from hsds_backends.api import Reader
    from hsds_backends.errors import NotFoundError
    from hsds_backends.storage import PosixStorage
    from hsds_backends.writer import Writer

    async def go() -> None:
        w = Writer(PosixStorage(tmp_path), "b")
        await w.create_linked_dataset("/home/x/d.h5", "/ref", np.arange(1024, dtype="<i4").reshape(32, 32), file_key="gone.h5", chunks=(4, 4))
        (tmp_path / "b" / "gone.h5").unlink()
        async with Reader({"root_dir": str(tmp_path), "bucket_name": "b"}) as reader:
            dset = await (await reader.open("/home/x/d.h5")).get("/ref")
            for _ in range(5):
                with pytest.raises(NotFoundError, match="gone.h5"):
                    await dset.read(None, backend="inline")
            await asyncio.sleep(0.2)  # let the leftover worker threads finish
            gc.collect()

    with caplog.at_level(logging.ERROR, logger="asyncio"):
        asyncio.run(go())
        gc.collect()
    assert "never retrieved" not in caplog.text
