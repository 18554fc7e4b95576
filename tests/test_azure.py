"""Azure Blob storage (HSDS's ``azure_connection_string``; the bucket is the container) against Azurite.

Azurite, the Azure Storage emulator, is installed from the npm registry on first use
(``scripts/azurite.sh``) and listens on 127.0.0.1 with an account whose key is made up at
start. Covered here: the storage contract (reads, ranges, missing blobs and containers, errors
that name the fix, no secret in ``repr``/``to_config``/pickles), the config's driver choice,
a domain written to Azure read back byte for byte. The conformance suite runs on Azure for
every backend that reads it (``BackendTests.storage_kinds``).
"""

from __future__ import annotations

import asyncio
import os
import pickle
import subprocess
import sys
from typing import Any

import numpy as np
import pytest

import hsds_backends as hb
from hsds_backends.errors import ConfigError, StorageError, StoragePathError
from hsds_backends.storage import storage_from_config
from hsds_backends.storage.azure import AzureStorage
from hsds_backends.testing.azurite import AzuriteServer
from hsds_backends.writer import Writer

pytestmark = pytest.mark.azure


@pytest.fixture(scope="session")
def azurite(azurite_server: AzuriteServer) -> AzuriteServer:
    return azurite_server


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


def test_lambda_declines_azure_naming_the_backends_that_read_it(azure_config: dict[str, Any]) -> None:
    """The chunk_read function reads S3 (and posix on its local runtime) only: asked for Azure it says so, and auto never picks it."""
    pytest.importorskip("hsds_backends_lambda")
    from hsds_backends_lambda.backend import AZURE_REFUSAL, LambdaBackend, worker_env

    from hsds_backends.errors import NoBackendError
    from hsds_backends.plan import plan_hyperslab
    from hsds_backends.selection import parse_select
    from hsds_backends.selector import candidates_for

    grid = np.arange(64 * 64, dtype="<i4").reshape(64, 64)

    async def go() -> None:
        st = AzureStorage.from_config(azure_config)
        try:
            await Writer(st, "hsdstest").create_dataset("/home/u/lam.h5", "/g", grid, chunks=(16, 16))
        finally:
            await st.aclose()
        async with hb.Reader({**azure_config, "backend": "lambda"}) as reader:
            dset = await (await reader.open("/home/u/lam.h5")).get("/g")
            with pytest.raises(NoBackendError) as err:
                await dset.read(None)
            assert str(err.value) == (
                f"backend 'lambda' (config backend=lambda) cannot serve {dset.meta.id} (16 chunks): it reads posix and s3 "
                "storage only, and this reader's storage is azure: choose a backend that reads it"
            )
            plan = plan_hyperslab(dset.meta, parse_select("[0:64, 0:64]", dset.meta.shape))
            _, declined = candidates_for(reader.request(plan), ["lambda", "inline"], reader.backend)
            assert declined == [
                "'lambda' declined (it reads posix and s3 storage only, and this reader's storage is azure: "
                "choose a backend that reads it)"
            ]
        async with hb.Reader({**azure_config, "backend": "auto"}) as reader:  # auto reads it with another backend
            dset = await (await reader.open("/home/u/lam.h5")).get("/g")
            assert (await dset.read(None)).tobytes() == grid.tobytes()
            assert reader.choose(plan)[0].name != "lambda"

    asyncio.run(go())
    # the runtime's environment is never made for Azure (no ROOT_DIR of the current folder instead)
    with pytest.raises(ConfigError) as err:
        worker_env({**azure_config})
    assert str(err.value) == AZURE_REFUSAL == (
        "the chunk_read function reads S3 (and, on the local runtime, a posix folder) only, not Azure Blob storage"
        " (azure_connection_string): read Azure with the inline, containers or dask backend"
    )
    assert LambdaBackend.static_capabilities.storage_kinds == frozenset({"posix", "s3"})


def test_the_lambda_function_refuses_azure_settings(monkeypatch: pytest.MonkeyPatch, azurite: AzuriteServer) -> None:
    pytest.importorskip("hsds_backends_lambda")
    import json

    from hsds_backends_lambda import handler

    for k in ("ROOT_DIR", "AWS_S3_GATEWAY", "STORAGE"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("AZURE_CONNECTION_STRING", azurite.connection_string)
    monkeypatch.setenv("BUCKET_NAME", "hsdstest")
    for env in ({}, {"STORAGE": "azure"}):
        for k, v in env.items():
            monkeypatch.setenv(k, v)
        handler.reset_state()
        try:
            answer = json.loads(handler.lambda_handler({"ping": True}))
        finally:
            handler.reset_state()
        assert answer["statusCode"] == 500 and answer["error_type"] == "ConfigError", answer
        assert answer["message"] == (
            "this function reads S3 (and, on the local runtime, a posix ROOT_DIR) only, not Azure Blob storage"
            " (STORAGE=azure / AZURE_CONNECTION_STRING): read Azure with the inline, containers or dask backend"
        )
        assert azurite.key not in json.dumps(answer)


def test_a_description_for_another_account_is_refused(azurite: AzuriteServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker reopening ``to_config()`` with a connection string for another account must not read that account's blobs."""
    desc = AzureStorage(azurite.connection_string).to_config()
    assert set(desc) == {"storage", "azure_account", "azure_blob_endpoint"}
    monkeypatch.setenv("AZURE_CONNECTION_STRING", azurite.connection_string)
    assert storage_from_config(desc).to_config() == desc  # the same account: reopened
    other = azurite.connection_string.replace(f"AccountName={azurite.account};", "AccountName=someoneelse;")
    monkeypatch.setenv("AZURE_CONNECTION_STRING", other)
    with pytest.raises(ConfigError) as err:
        storage_from_config(desc)
    assert str(err.value) == (
        f"azure_account {azurite.account!r} was asked for, but the connection string here (azure_connection_string /"
        " AZURE_CONNECTION_STRING) is for 'someoneelse'; give this process the connection string of "
        f"{azurite.account!r}"
    )
    monkeypatch.delenv("AZURE_CONNECTION_STRING")
    with pytest.raises(ConfigError, match="azure_connection_string is not set"):
        storage_from_config(desc)


def _dn_serve(*args: str, env: Mapping[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "hsds_backends.cli", "dn", "serve", "--port", "0", *args], capture_output=True,
                          text=True, timeout=60, env=dict(env), stdin=subprocess.DEVNULL)


def _env_without_storage(**extra: str) -> dict[str, str]:
    drop = ("ROOT_DIR", "AWS_S3_GATEWAY", "AZURE_CONNECTION_STRING", "STORAGE", "BUCKET_NAME")
    env = {k: v for k, v in os.environ.items() if not k.startswith("HSDS_BACKENDS_") and k not in drop}
    return {**env, **extra}


def test_dn_serve_azure_takes_the_connection_string_from_the_environment_only(tmp_path: Any) -> None:
    r = _dn_serve("--azure", "--bucket", "hsdstest", env=_env_without_storage())
    assert r.returncode == 1 and r.stdout == "", r
    assert r.stderr.strip() == (
        "Error: azure_connection_string is not set (or is not a connection string); set it, or the environment"
        " variable AZURE_CONNECTION_STRING, to the storage account's connection string"
    ), r.stderr
    r = _dn_serve("--azure", "--root-dir", str(tmp_path), env=_env_without_storage())
    assert r.returncode == 2 and "Error: give one storage: --root-dir, --s3-gateway or --azure" in r.stderr, r


def test_containers_dns_get_the_connection_string_in_their_environment_not_their_command_line(
    azure_config: dict[str, Any], azurite: AzuriteServer
) -> None:
    pytest.importorskip("hsds_backends_containers")
    from hsds_backends_containers.backend import ContainersBackend

    grid = np.arange(40 * 40, dtype="<u2").reshape(40, 40)

    async def go() -> None:
        st = AzureStorage.from_config(azure_config)
        try:
            await Writer(st, "hsdstest").create_dataset("/home/u/dn.h5", "/g", grid, chunks=(10, 10), filters=[("gzip", 1)])
        finally:
            await st.aclose()
        async with hb.Reader({**azure_config, "dn_count": 1}) as reader:
            dset = await (await reader.open("/home/u/dn.h5")).get("/g")
            assert (await dset.read("[3:37:2, :]", backend="containers")).tobytes() == grid[3:37:2, :].tobytes()
            backend = reader.backend("containers")
            assert isinstance(backend, ContainersBackend)
            (pid,) = [n["pid"] for n in backend.nodes]
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
            with open(f"/proc/{pid}/environ", "rb") as f:
                environ = f.read().split(b"\0")
            assert b"--azure" in argv and not any(azurite.key.encode() in a for a in argv)
            assert b"AZURE_CONNECTION_STRING=" + azurite.connection_string.encode() in environ

    asyncio.run(go())
