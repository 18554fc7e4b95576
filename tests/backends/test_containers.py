"""The conformance suite against the ``containers`` backend: local DN processes, posix and S3 (moto server).

Every read goes client → real DN processes (``hsds-backends dn serve`` on unix
sockets, started by the backend) → kernel, and is checked against the numpy
oracles of :mod:`hsds_backends.testing`. A second class runs the same suite
through the DNs' HSDS-style routes (``GET``/``POST /chunks/{id}``, the DN
loading the dataset JSON itself, docs/hsds-format.md §4) instead of the batch route.
"""

from __future__ import annotations

from typing import Any

import pytest

pytest.importorskip("hsds_backends_containers")

from hsds_backends.model import Backend  # noqa: E402
from hsds_backends.testing import BackendTests  # noqa: E402
from hsds_backends_containers.backend import ContainersBackend  # noqa: E402


class TestContainersBackend(BackendTests[ContainersBackend]):
    backend_cls = ContainersBackend

    @pytest.fixture(scope="class")
    @classmethod
    def backend_config(cls) -> dict[str, Any]:
        return {"dn_count": 2, "dn_workers": 2, "timeout": 20}

    def test_repr(self, backend: Backend) -> None:
        assert repr(backend) == "<ContainersBackend 'containers' 2 local DN(s) over unix>"

    def test_capabilities(self, backend: Backend) -> None:
        caps = backend.capabilities
        assert (caps.hyperslab, caps.points, caps.query, caps.fields, caps.linked_chunks, caps.vlen) == (True,) * 6
        assert caps.remote and not caps.costs_money
        assert caps.max_concurrency == 8  # 2 DNs x 2 workers x 2 tasks in flight each
        assert caps.configured  # dn_count given
        assert caps.max_response_bytes is None
        assert caps.direct_placement  # results are placed from a thread pool as frames arrive

    def test_dns_are_separate_processes_on_unix_sockets(self, backend: Backend) -> None:
        import os

        assert isinstance(backend, ContainersBackend)
        nodes = backend.nodes
        assert [n["number"] for n in nodes] == [0, 1] and all(n["up"] for n in nodes)
        assert all(n["url"].startswith("http+unix://") for n in nodes)
        assert all(n["pid"] != os.getpid() for n in nodes)
        assert backend.totals.tasks > 0 and backend.totals.retries == 0


class TestContainersBackendHsdsRoutes(BackendTests[ContainersBackend]):
    """The same suite through the DNs' HSDS routes: per-chunk GET/POST, dataset JSON loaded by the DN."""

    backend_cls = ContainersBackend

    @pytest.fixture(scope="class")
    @classmethod
    def backend_config(cls) -> dict[str, Any]:
        return {"dn_count": 2, "dn_protocol": "hsds", "timeout": 20}

    def test_repr(self, backend: Backend) -> None:
        assert repr(backend) == "<ContainersBackend 'containers' 2 local DN(s) over unix>"

    def test_capabilities(self, backend: Backend) -> None:
        caps = backend.capabilities
        assert (caps.hyperslab, caps.points, caps.fields, caps.linked_chunks, caps.vlen) == (True,) * 5
        assert not caps.query  # HSDS 1.0.2 DNs answer queries without the row index (docs/hsds-format.md §5.3)
