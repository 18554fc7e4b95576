"""Azure Blob storage (HSDS's ``azure_connection_string``; the bucket is the container) against Azurite.

Azurite, the Azure Storage emulator, is installed from the npm registry on first use
(``scripts/azurite.sh``) and listens on 127.0.0.1 with an account whose key is made up at
start. Covered here: the storage contract (reads, ranges, missing blobs and containers, errors
that name the fix, no secret in ``repr``/``to_config``/pickles), the config's driver choice,
a domain written to Azure read back byte for byte, and the conformance suite on ``inline``.
"""

from __future__ import annotations

import asyncio
import pickle
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import pytest

import hsds_backends as hb
from hsds_backends._inline import InlineBackend
from hsds_backends.errors import ConfigError, StorageError, StoragePathError
from hsds_backends.storage import storage_from_config
from hsds_backends.storage.azure import AzureStorage
from hsds_backends.testing import BackendTests
from hsds_backends.testing.azurite import AzuriteServer, AzuriteUnavailable
from hsds_backends.writer import Writer

pytestmark = pytest.mark.azure


@pytest.fixture(scope="session")
def azurite() -> Iterator[AzuriteServer]:
    try:
        server = AzuriteServer().start()
    except AzuriteUnavailable as exc:  # no npm registry on this machine: say so, as for HSDS's virtualenv
        pytest.skip(f"Azurite cannot be installed here: {exc}")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def azure_config(azurite: AzuriteServer) -> dict[str, Any]:
    azurite.create_container("hsdstest")
    return {**azurite.config(), "bucket_name": "hsdstest"}


def test_storage_contract(azure_config: dict[str, Any]) -> None:
    async def go() -> None:
        st = AzureStorage.from_config(azure_config)
        try:
            await st.put("hsdstest", "dir/obj", bytes(range(100)))
            assert await st.get("hsdstest", "dir/obj") == bytes(range(100))
            assert await st.get("hsdstest", "/dir/obj", 10, 5) == bytes(range(10, 15))  # HSDS strips a leading /
            assert await st.get("hsdstest", "dir/obj", 95) == bytes(range(95, 100))
            assert await st.get("hsdstest", "dir/obj", 200, 4) == b""  # past the end, as a posix read
            assert await st.get("hsdstest", "dir/obj", 0, 0) == b""
            assert await st.get("hsdstest", "dir/nothing") is None  # a chunk never written: fill
            assert await st.get("nosuchcontainer", "x") is None
            assert await st.exists("hsdstest", "dir/obj") and not await st.exists("hsdstest", "dir/nothing")
            assert not await st.exists("nosuchcontainer", "x")
            with pytest.raises(StoragePathError, match="contains '..'"):
                await st.get("hsdstest", "dir/../../etc/passwd")
            with pytest.raises(StorageError, match=r"invalid byte range offset=-1"):
                await st.get("hsdstest", "dir/obj", -1, 3)
        finally:
            await st.aclose()

    asyncio.run(go())


def test_no_secret_leaves_the_object(azure_config: dict[str, Any], azurite: AzuriteServer) -> None:
    st = AzureStorage.from_config(azure_config)
    assert azurite.key not in repr(st) and azurite.key not in str(st.to_config())
    with pytest.raises(TypeError, match=r"AzureStorage cannot be pickled \(it holds credentials\).*AZURE_CONNECTION_STRING"):
        pickle.dumps(st)
    cfg = hb.config.Config(azure_config)
    assert azurite.key not in repr(cfg)


def test_a_wrong_key_is_access_denied_naming_the_setting(azure_config: dict[str, Any], azurite: AzuriteServer) -> None:
    import base64

    bad = azurite.connection_string.replace(azurite.key, base64.b64encode(b"x" * 32).decode())

    async def go() -> None:
        st = AzureStorage(bad)
        try:
            await st.get("hsdstest", "dir/obj")
        finally:
            await st.aclose()

    with pytest.raises(StorageError, match=r"access denied to .*/hsdstest/dir/obj \(read\); check azure_connection_string"):
        asyncio.run(go())


def test_config_chooses_azure_as_hsds_does(azure_config: dict[str, Any], tmp_path: Any) -> None:
    assert isinstance(storage_from_config(azure_config), AzureStorage)
    # root_dir, then aws_s3_gateway, then azure_connection_string (docs/hsds-format.md §1.5)
    assert not isinstance(storage_from_config({**azure_config, "root_dir": str(tmp_path)}), AzureStorage)
    with pytest.raises(ConfigError, match="azure_connection_string is not set"):
        AzureStorage("")


def test_a_domain_on_azure_reads_byte_for_byte(azure_config: dict[str, Any]) -> None:
    grid = (np.arange(120 * 90, dtype="<i8").reshape(120, 90) % 977).astype(">f4")
    table = np.zeros(300, dtype=[("id", "<i8"), ("v", "<f4")])
    table["id"] = np.arange(300)
    table["v"] = np.sin(np.arange(300))
    ref = np.arange(48 * 64, dtype="<i2").reshape(48, 64)

    async def write() -> None:
        st = AzureStorage.from_config(azure_config)
        try:
            w = Writer(st, "hsdstest")
            await w.create_dataset("/home/u/az.h5", "/grid", grid, chunks=(32, 40), filters=["shuffle", ("gzip", 4)])
            await w.create_dataset("/home/u/az.h5", "/table", table, chunks=(64,))
            await w.create_linked_dataset("/home/u/az.h5", "/ref", ref, file_key="files/linked.h5", chunks=(16, 32),
                                          filters=["shuffle", ("gzip", 5), "fletcher32"])
        finally:
            await st.aclose()

    asyncio.run(write())
    with hb.open_domain("/home/u/az.h5", config={**azure_config, "backend": "inline"}) as dom:
        assert dom["/grid"][...].tobytes() == grid.tobytes()
        assert dom["/grid"][7:110:9, 3:88:5].tobytes() == grid[7:110:9, 3:88:5].tobytes()
        assert dom["/table"][...].tobytes() == table.tobytes()
        assert dom["/ref"][...].tobytes() == ref.tobytes()  # byte ranges of a linked file


class TestInlineBackendOnAzure(BackendTests[InlineBackend]):
    """The conformance suite on Azure Blob storage (Azurite); inline with its default workers."""

    backend_cls = InlineBackend

    @pytest.fixture(scope="class")
    @classmethod
    def storage_config(cls, azurite: AzuriteServer) -> Mapping[str, Any]:  # type: ignore[override]
        azurite.create_container("conformance")
        return {**azurite.config(), "bucket_name": "conformance"}

    def test_repr(self, backend: Any) -> None:
        assert (repr(backend), backend.capabilities.linked_chunks) == ("<InlineBackend 'inline'>", True)

    def test_capabilities(self, backend: Any) -> None:
        assert not backend.capabilities.remote  # reads Azure from this process
