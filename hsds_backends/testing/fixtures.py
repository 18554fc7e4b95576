"""Pytest plugin with fixtures for services the tests need (``pytest_plugins = [...]``).

- ``moto_server`` (session): a real moto S3 server on 127.0.0.1 in a subprocess.
- ``s3_config``: config keys pointing at it, with a fresh bucket per test.
- ``azurite_server`` (session): Azurite, the Azure Blob emulator, on 127.0.0.1 in a subprocess
  (installed from the npm registry on first use; the test is skipped, saying why, where it
  cannot be).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

import pytest

from ..model import Backend
from .moto import MotoServer

if TYPE_CHECKING:
    from ..api import Reader
    from .azurite import AzuriteServer

B = TypeVar("B", bound=Backend)

__all__ = ["azurite_server", "create_bucket", "moto_server", "reader_and_backend", "s3_config"]


def reader_and_backend(
    runner: asyncio.Runner, make_backend: Callable[[Mapping[str, Any]], B], config: Mapping[str, Any]
) -> Iterator[tuple[Reader, B]]:
    """Yield a :class:`Reader` and a backend built from ``config`` on ``runner``'s loop; close both after.

    For module-scoped fixtures: ``yield from reader_and_backend(runner, LambdaBackend, cfg)``.
    """
    from ..api import Reader

    backend = make_backend(config)

    async def make() -> Reader:
        return Reader(config)

    reader = runner.run(make())
    try:
        yield reader, backend
    finally:
        runner.run(backend.aclose())
        runner.run(reader.aclose())


def create_bucket(config: Mapping[str, Any], bucket: str) -> None:
    """Create ``bucket`` on the S3 endpoint in ``config`` (test set-up only; reads never do this)."""
    import botocore.session

    session = botocore.session.get_session()
    client = session.create_client(
        "s3",
        endpoint_url=config["aws_s3_gateway"],
        region_name=config.get("aws_region") or "us-east-1",
        aws_access_key_id=config.get("aws_access_key_id"),
        aws_secret_access_key=config.get("aws_secret_access_key"),
    )
    try:
        client.create_bucket(Bucket=bucket)
    finally:
        client.close()


@pytest.fixture(scope="session")
def moto_server() -> Iterator[MotoServer]:
    """A moto S3 server on 127.0.0.1 for the whole session."""
    with MotoServer() as server:
        yield server


@pytest.fixture(scope="session")
def azurite_server() -> Iterator[AzuriteServer]:
    """Azurite's blob service on 127.0.0.1 for the whole session, with an account key made up at start."""
    from .azurite import AzuriteServer, AzuriteUnavailable

    try:
        server = AzuriteServer().start()
    except AzuriteUnavailable as exc:  # no npm registry here: say so, as for HSDS's virtualenv
        pytest.skip(f"Azurite cannot be installed here: {exc}")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def s3_config(moto_server: MotoServer) -> dict[str, Any]:
    """Config for the moto server with a fresh, empty bucket as ``bucket_name``."""
    bucket = f"test-{uuid.uuid4().hex[:12]}"
    cfg = dict(moto_server.config())
    create_bucket(cfg, bucket)
    cfg["bucket_name"] = bucket
    return cfg
