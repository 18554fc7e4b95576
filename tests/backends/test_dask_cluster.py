"""The dask backend against a cluster it did not start: lost workers, retries, credentials.

One LocalCluster (2 process workers on 127.0.0.1) is started by this module and
reached through ``dask_scheduler``, as a remote cluster would be. Its workers sleep
``0.02 s`` before each chunk (``HSDS_BACKENDS_DASK_TEST_DELAY``) so a multi-chunk read
lasts long enough to lose a worker in the middle, and they have no AWS variables in
their environment, so an S3 read proves the credentials arrived through the plugin.
"""

from __future__ import annotations

import asyncio
import os
import pickle
import signal
import socket
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

pytest.importorskip("hsds_backends_dask")
distributed = pytest.importorskip("distributed")

from hsds_backends_dask import DaskBackend
from hsds_backends_dask._worker import DELAY_ENV

from hsds_backends.api import Reader
from hsds_backends.errors import BackendError, BackendTimeoutError
from hsds_backends.storage import PosixStorage, storage_from_config
from hsds_backends.testing.fixtures import create_bucket
from hsds_backends.writer import Writer

DOMAIN = "/home/test/dask.h5"
GRID = np.arange(96 * 96, dtype="<f8").reshape(96, 96) * 0.5 - 7  # 144 chunks of 8x8


@pytest.fixture(scope="module")
def cluster(runner: asyncio.Runner) -> Iterator[Any]:
    """A 2-worker LocalCluster whose workers are slow per chunk and have no AWS credentials."""
    with pytest.MonkeyPatch.context() as mp:
        for name in list(os.environ):
            if name.startswith("AWS_") and name != "AWS_CA_BUNDLE":
                mp.delenv(name)
        mp.setenv("AWS_EC2_METADATA_DISABLED", "true")  # never ask an instance-metadata address

        async def start() -> Any:
            return await distributed.LocalCluster(
                n_workers=2,
                threads_per_worker=1,
                processes=True,
                host="127.0.0.1",
                dashboard_address="127.0.0.1:0",
                scheduler_kwargs={"dashboard": False},
                asynchronous=True,
                env={DELAY_ENV: "0.02"},
            )

        async def stop(cl: Any) -> None:
            await cl.close()  # called outside a running loop, close() would block on the loop it needs

        cl = runner.run(start())
        yield cl
        runner.run(stop(cl))


async def _write(storage: Any, bucket: str) -> None:
    w = Writer(storage, bucket)
    await w.create_domain(DOMAIN)
    await w.create_dataset(DOMAIN, "/grid", GRID, chunks=(8, 8), filters=["shuffle", ("gzip", 4)])


@pytest.fixture(scope="module")
def posix_config(tmp_path_factory: pytest.TempPathFactory, runner: asyncio.Runner, cluster: Any) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("dask-cluster")
    runner.run(_write(PosixStorage(root), "hsdstest"))
    return {
        "root_dir": str(root),
        "bucket_name": "hsdstest",
        "dask_scheduler": cluster.scheduler_address,
        "dask_connect_timeout": 10,
    }


async def _read(config: dict[str, Any], backend: DaskBackend, sel: Any = None) -> np.ndarray[Any, Any]:
    async with Reader(config) as reader:
        dset = await (await reader.open(DOMAIN)).get("/grid")
        return await dset.read(sel, backend=backend)


def test_remote_scheduler_posix(runner: asyncio.Runner, posix_config: dict[str, Any], cluster: Any) -> None:
    backend = DaskBackend(posix_config)
    try:
        out = runner.run(_read(posix_config, backend, np.s_[3:90:7, ::5]))
        assert out.tobytes() == GRID[3:90:7, ::5].tobytes()
        assert repr(backend) == f"<DaskBackend 'dask' scheduler={cluster.scheduler_address!r}>"
        assert backend.capabilities.max_concurrency == 2
    finally:
        runner.run(backend.aclose())
    assert backend.client is None
    # the backend's worker plugin went with it; the cluster stays up
    plugins = runner.run(_worker_plugins(cluster.scheduler_address))
    assert not any(p.startswith("hsds-backends-") for names in plugins.values() for p in names)


async def _worker_plugins(address: str) -> dict[str, list[str]]:
    async with distributed.Client(address, asynchronous=True, set_as_default=False) as c:
        return await c.run(lambda dask_worker: sorted(dask_worker.plugins))  # type: ignore[no-any-return]


def _flaky(fail: int) -> Any:
    """Return a function for ``client.run`` that makes the worker's next ``fail`` batches raise."""

    def install(dask_worker: Any) -> None:
        import hsds_backends_dask._worker as w

        original = getattr(w, "_original_run_batch", w.run_batch)
        w._original_run_batch = original  # type: ignore[attr-defined]
        calls = {"calls": 0, "fail": fail}

        def run_batch(*args: Any) -> Any:
            calls["calls"] += 1
            if calls["fail"] > 0:
                calls["fail"] -= 1
                raise OSError("injected batch failure")
            return original(*args)

        w.run_batch = run_batch  # batches unpickle their function by name: they now get this one
        w._flaky_calls = calls  # type: ignore[attr-defined]

    return install


def _calls(dask_worker: Any) -> int:
    import hsds_backends_dask._worker as w

    return int(w._flaky_calls["calls"])  # type: ignore[attr-defined]


def _restore(dask_worker: Any) -> None:
    import hsds_backends_dask._worker as w

    w.run_batch = getattr(w, "_original_run_batch", w.run_batch)


@pytest.mark.parametrize("retries", [0, 2])
def test_retries_rerun_a_failed_batch(runner: asyncio.Runner, posix_config: dict[str, Any], retries: int) -> None:
    backend = DaskBackend({**posix_config, "dask_retries": retries, "dask_batch_size": 6})

    async def go() -> Any:
        client = await backend.get_client()
        await client.run(_flaky(1))  # every worker fails its first batch
        try:
            out = await _read(posix_config, backend, np.s_[0:48, :])  # 72 chunks = 12 batches
            calls = sum((await client.run(_calls)).values())
            return out, calls
        finally:
            await client.run(_restore)

    try:
        if retries == 0:
            with pytest.raises(
                BackendError,
                match=r"dask task for chunks c-\S+ .*failed on the cluster: OSError: injected batch failure",
            ):
                runner.run(go())
        else:
            out, calls = runner.run(go())
            assert out.tobytes() == GRID[0:48, :].tobytes()
            assert calls == 12 + 2  # each worker's first batch ran twice
    finally:
        runner.run(backend.aclose())


def test_lost_worker_mid_read_gives_the_same_bytes(runner: asyncio.Runner, posix_config: dict[str, Any]) -> None:
    backend = DaskBackend({**posix_config, "dask_batch_size": 4})  # 36 batches of 4 chunks, ~0.1 s each

    async def go() -> tuple[np.ndarray[Any, Any], int, dict[str, int]]:
        client = await backend.get_client()
        pids = await client.run(os.getpid)
        assert len(pids) == 2
        victim = pids[min(pids)]
        read = asyncio.ensure_future(_read(posix_config, backend))  # 144 chunks, ~1.5 s on 2 workers
        await asyncio.sleep(0.5)
        assert not read.done(), "the read finished before a worker could be lost; raise the delay"
        os.kill(victim, signal.SIGKILL)
        out = await read
        await client.wait_for_workers(2, timeout=30)  # the nanny restarts it; later tests want 2 workers
        return out, victim, await client.run(os.getpid)

    try:
        out, victim, after = runner.run(go())
    finally:
        runner.run(backend.aclose())
    assert out.tobytes() == GRID.tobytes()
    assert victim not in after.values()
    with pytest.raises(ProcessLookupError):
        os.kill(victim, 0)


def test_s3_credentials_reach_remote_workers_once_not_in_tasks(
    runner: asyncio.Runner, cluster: Any, moto_server: Any
) -> None:
    secret = "s3cr3t-dask-" + os.urandom(6).hex()
    key_id = "AKID" + os.urandom(6).hex().upper()
    cfg: dict[str, Any] = {**moto_server.config(), "aws_access_key_id": key_id, "aws_secret_access_key": secret}
    bucket = "dask-remote-" + os.urandom(3).hex()
    create_bucket(cfg, bucket)
    cfg.update(bucket_name=bucket, dask_scheduler=cluster.scheduler_address, dask_connect_timeout=10)

    async def write() -> None:
        st = storage_from_config(cfg)
        try:
            await _write(st, bucket)
        finally:
            await st.aclose()

    runner.run(write())
    backend = DaskBackend(cfg)
    sent: list[bytes] = []

    async def go() -> tuple[np.ndarray[Any, Any], dict[str, Any]]:
        client = await backend.get_client()
        real_map = client.map

        def recording_map(*args: Any, **kwargs: Any) -> Any:
            sent.append(pickle.dumps((args, kwargs)))
            return real_map(*args, **kwargs)

        client.map = recording_map
        env = await client.run(lambda: os.environ.get("AWS_ACCESS_KEY_ID"))
        return await _read(cfg, backend, np.s_[10:70, 20:90]), env

    try:
        out, env = runner.run(go())
    finally:
        runner.run(backend.aclose())
    assert out.tobytes() == GRID[10:70, 20:90].tobytes()
    assert set(env.values()) == {None}  # the workers' own environment has no credentials
    assert sent and all(secret.encode() not in blob and key_id.encode() not in blob for blob in sent)


def _closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_unreachable_scheduler_is_a_clear_timeout(runner: asyncio.Runner, tmp_path: Any) -> None:
    address = f"tcp://127.0.0.1:{_closed_port()}"
    cfg = {"root_dir": str(tmp_path), "dask_scheduler": address, "dask_connect_timeout": 1.5}
    runner.run(_write(PosixStorage(tmp_path), "hsdstest"))
    backend = DaskBackend(cfg)
    t0 = time.monotonic()
    with pytest.raises(
        BackendTimeoutError, match=rf"dask scheduler '{address}' did not answer within 1.5 s \(dask_connect_timeout\)"
    ) as info:
        runner.run(_read(cfg, backend))
    elapsed = time.monotonic() - t0
    assert elapsed < 1.5 + 2.0, elapsed
    assert isinstance(info.value, TimeoutError)
    assert "unset dask_scheduler" in str(info.value)
    assert backend.client is None
    runner.run(backend.aclose())
