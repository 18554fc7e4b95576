"""The conformance suite through the ``lambda`` backend and its embedded local Lambda runtime.

No ``aws_lambda_gateway`` is configured, so the backend starts the local runtime itself: the
Invoke API on a free loopback port, ``python -m awslambdaric`` workers running the installed
handler, storage passed to the workers through their environment (posix ``ROOT_DIR``, or the
moto server as ``AWS_S3_GATEWAY`` with its credentials).
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

import pytest

pytest.importorskip("hsds_backends_lambda")
pytest.importorskip("awslambdaric")

from hsds_backends_lambda.backend import LambdaBackend  # noqa: E402
from hsds_backends_lambda.local import RuntimeProcess  # noqa: E402

from hsds_backends.model import Backend  # noqa: E402
from hsds_backends.testing import BackendTests  # noqa: E402


class TestLambdaBackend(BackendTests[LambdaBackend]):
    backend_cls = LambdaBackend
    #: the chunk_read function reads S3 (and posix, on the local runtime) only; it declines
    #: Azure storage (tests/test_azure.py::test_lambda_declines_azure_naming_the_backends_that_read_it)
    storage_kinds = ("posix", "s3")

    @pytest.fixture(scope="class")
    @classmethod
    def backend_config(cls) -> dict[str, Any]:
        # two warm environments: workers are processes and this machine has two cores
        return {"aws_lambda_local_workers": 2, "aws_lambda_timeout": 30}

    def test_repr(self, backend: Backend) -> None:
        assert repr(backend) == "<LambdaBackend 'lambda'>"

    def test_capabilities(self, backend: Backend) -> None:
        caps = backend.capabilities
        assert (caps.hyperslab, caps.points, caps.query, caps.fields, caps.linked_chunks, caps.vlen) == (True,) * 6
        assert caps.max_request_bytes == 6_291_456 and caps.max_response_bytes == 6_291_556
        assert caps.max_concurrency == 2  # the embedded runtime's environments
        assert caps.remote and not caps.costs_money  # the embedded runtime bills nothing
        assert LambdaBackend.static_capabilities.costs_money

    def test_reads_went_through_the_runtime(self, reader_and_backend: Any, runner: asyncio.Runner) -> None:
        backend = reader_and_backend[1]
        assert isinstance(backend, LambdaBackend)
        self._read(reader_and_backend, runner, "be_i4")  # at least one read, whatever ran before
        rt = backend.runtime
        assert isinstance(rt, RuntimeProcess)  # the embedded runtime runs in a child process
        assert rt.url.startswith("http://127.0.0.1:") and rt.pid != os.getpid()
        meter = runner.run(rt.meter(backend.function))
        assert meter.invocations > 0 and meter.gb_s > 0
        assert backend.stats.invokes >= meter.invocations - meter.throttles
        assert backend.stats.dollars > 0  # what AWS would have charged

    def test_started_once_its_client_is_up(self, reader_and_backend: Any, runner: asyncio.Runner) -> None:
        """Remote, yet started once running: a read then starts nothing, and the reader measures it."""
        reader, backend = reader_and_backend
        assert isinstance(backend, LambdaBackend)
        self._read(reader_and_backend, runner, "be_i4")  # starts it, whatever ran before
        assert backend.started and backend.runtime is not None
        self._read(reader_and_backend, runner, "be_i4")  # from a started state: recorded
        dset = self._dset(reader_and_backend, runner, "be_i4")
        shape = reader.request(dset.plan(None)).shape
        assert reader.ledger.latency(backend).lookup(shape) is not None

        gateway = LambdaBackend({"aws_lambda_gateway": "http://127.0.0.1:9"})  # nothing to start but the client

        async def go() -> tuple[bool, bool, bool]:
            before = gateway.started
            client = await gateway.client()
            up = gateway.started and client is await gateway.client()
            await gateway.aclose()
            return before, up, gateway.started

        assert runner.run(go()) == (False, True, False)

