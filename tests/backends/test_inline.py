"""The conformance suite against the built-in ``inline`` backend."""

from __future__ import annotations

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
