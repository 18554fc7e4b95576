"""Finding 6: the dask backend's cluster runs code only for the backend that started it.

The embedded ``LocalCluster`` listened on plain ``tcp://127.0.0.1``: any local user could
connect a ``distributed.Client`` and ``client.run()`` code in the workers as the reading
user. Now every listener of the embedded cluster (scheduler, workers, nannies) speaks TLS
only, with a certificate made in memory for that cluster and required of every peer. A
remote scheduler is secured with ``tls://`` and the ``dask_tls_*`` keys; S3 credentials are
never sent to an unencrypted scheduler off loopback.

Each attacker below tries to create a marker file from a worker; the file must not exist.
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import textwrap
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("hsds_backends_dask")
distributed = pytest.importorskip("distributed")

from distributed.comm import connect
from distributed.comm.core import CommClosedError, FatalCommClosedError
from distributed.security import Security
from hsds_backends_dask import DaskBackend

from hsds_backends._inline import InlineBackend
from hsds_backends.api import Reader
from hsds_backends.errors import BackendError, ConfigError
from conftest import write_grid

DOMAIN = "/home/test/dask-tls.h5"
GRID = np.arange(40 * 40, dtype="<i4").reshape(40, 40) - 700  # 25 chunks of 8x8


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory, runner: asyncio.Runner) -> Path:
    path = write_grid(runner, tmp_path_factory.mktemp("dask-tls"), DOMAIN, GRID, (8, 8))
    return path


@pytest.fixture(scope="module")
def backend(root: Path, runner: asyncio.Runner) -> Iterator[DaskBackend]:
    """The embedded cluster (one process worker), started by a read through the backend."""
    b = DaskBackend({"root_dir": str(root), "bucket_name": "hsdstest", "dask_n_workers": 1})
    try:
        out = runner.run(_read({"root_dir": str(root)}, b))
        assert out.tobytes() == GRID.tobytes()
        yield b
    finally:
        runner.run(b.aclose())


async def _read(config: dict[str, Any], backend: Any, sel: Any = None) -> np.ndarray[Any, Any]:
    async with Reader(config) as reader:
        dset = await (await reader.open(DOMAIN)).get("/grid")
        return await dset.read(sel, backend=backend)


def _marker_writer(path: str) -> Any:
    """A function for ``client.run`` that creates ``path`` (a closure: cloudpickle sends it by value)."""

    def pwn() -> int:
        with open(path, "w") as f:
            f.write("code ran in a worker\n")
        return os.getpid()

    return pwn


async def _run_as_attacker(address: str, marker: Path, **kwargs: Any) -> Any:
    client = distributed.Client(address, asynchronous=True, timeout=5, set_as_default=False, **kwargs)
    try:
        await client
        return await client.run(_marker_writer(str(marker)))
    finally:
        await client.close()  # a refused client too: else its __del__ closes it without a loop


def _listeners(backend: DaskBackend, runner: asyncio.Runner) -> dict[str, str]:
    """Every address of the embedded cluster: the scheduler's, each worker's and each nanny's."""
    client = backend.client
    assert client is not None
    info = runner.run(client.scheduler.identity(n_workers=-1))
    out = {"scheduler": client.scheduler.address}
    for i, (worker, winfo) in enumerate(sorted(info["workers"].items())):
        out[f"worker {i}"] = worker
        out[f"nanny {i}"] = winfo["nanny"]
    return out


def test_finding_6_the_embedded_cluster_listens_only_over_tls_on_loopback(
    backend: DaskBackend, runner: asyncio.Runner
) -> None:
    """Finding 6: the embedded cluster listened on plain tcp:// (any local connection accepted)."""
    addresses = _listeners(backend, runner)
    assert len(addresses) == 3, addresses
    for what, address in addresses.items():
        assert address.startswith("tls://127.0.0.1:"), (what, address)
    security = backend._cluster.security
    assert security.require_encryption
    # made for this cluster, held in memory (PEM text, not the path of a file someone could read)
    assert "BEGIN CERTIFICATE" in security.tls_ca_file and "BEGIN PRIVATE KEY" in security.tls_client_key


def test_finding_6_a_client_without_the_credentials_cannot_run_code(
    backend: DaskBackend, runner: asyncio.Runner, tmp_path: Path
) -> None:
    """Finding 6: a plain ``distributed.Client(address)`` ran ``client.run()`` code in the workers as the reading user."""
    address = backend.client.scheduler.address
    marker = tmp_path / "pwned"
    # a plain client (no security settings), as the attacker of the finding connected
    with pytest.raises(TypeError, match=r"TLS expects a `ssl_context` argument"):
        runner.run(_run_as_attacker(address, marker))
    # the same port in clear text: the scheduler drops it at the TLS handshake
    plain = "tcp://" + address.split("://", 1)[1]
    with pytest.raises(CommClosedError, match=r"Connection reset by peer|Stream is closed"):
        runner.run(_run_as_attacker(plain, marker))
    # TLS with a certificate of the attacker's own: not signed by the cluster's key, refused
    with pytest.raises(FatalCommClosedError, match=r"TLS certificate does not match"):
        runner.run(_run_as_attacker(address, marker, security=Security.temporary()))
    assert not marker.exists()


def test_finding_6_workers_and_nannies_refuse_peers_without_the_credentials(
    backend: DaskBackend, runner: asyncio.Runner
) -> None:
    """Finding 6: a worker or nanny accepts ``run`` from whoever connects to it, not only through the scheduler."""

    async def attempt(address: str, **kwargs: Any) -> None:
        comm = await connect(address, timeout=5, **kwargs)
        await comm.close()

    own = Security.temporary().get_connection_args("client")
    for what, address in _listeners(backend, runner).items():
        if what == "scheduler":
            continue
        with pytest.raises(CommClosedError):
            runner.run(attempt("tcp://" + address.split("://", 1)[1]))
        with pytest.raises(FatalCommClosedError, match=r"TLS certificate does not match"):
            runner.run(attempt(address, **own))


def test_finding_6_the_backends_own_reads_still_work_and_are_byte_identical(
    backend: DaskBackend, runner: asyncio.Runner, root: Path
) -> None:
    """Finding 6: securing the cluster leaves honest reads as they were (after the refused attempts above)."""
    cfg = {"root_dir": str(root)}
    sel = np.s_[3:37:3, 1:40:7]
    got = runner.run(_read(cfg, backend, sel))
    want = runner.run(_read(cfg, InlineBackend(cfg), sel))
    assert got.tobytes() == want.tobytes() == GRID[sel].tobytes()
    assert runner.run(_read(cfg, backend)).tobytes() == GRID.tobytes()


def test_finding_6_without_cryptography_the_cluster_does_not_start_open(tmp_path: Path) -> None:
    """Finding 6: the embedded cluster must never fall back to plain tcp:// when it cannot make TLS credentials."""
    code = textwrap.dedent(
        f"""
        import asyncio, sys
        sys.modules['cryptography'] = None  # as if it were not installed: importing it raises ImportError
        from hsds_backends_dask import DaskBackend
        b = DaskBackend({{'root_dir': {str(tmp_path)!r}, 'dask_n_workers': 1}})
        try:
            asyncio.run(b.get_client())
        except Exception as exc:
            print(type(exc).__name__, exc)
            print('cluster', b._cluster, 'client', b.client)
        """
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    first, second = proc.stdout.splitlines()[:2]
    assert re.match(
        r"BackendError the local dask cluster needs TLS credentials and cannot make them: .*cryptography.*; "
        r"install cryptography \(pip install hsds-backends-dask brings it\), or set dask_scheduler to a secured cluster$",
        first,
    ), first
    assert second == "cluster None client None"


# ------------------------------------------------------------------ remote schedulers


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A CA certificate and a certificate/key pair it signed (self-signed: one pair), as 0600 PEM files."""
    sec = Security.temporary()
    folder = tmp_path_factory.mktemp("dask-tls-files")
    files = {}
    for key, text in (("dask_tls_ca_file", sec.tls_ca_file), ("dask_tls_cert", sec.tls_client_cert), ("dask_tls_key", sec.tls_client_key)):
        path = folder / f"{key}.pem"
        path.write_text(text)
        path.chmod(0o600)
        files[key] = str(path)
    return files


@pytest.fixture(scope="module")
def tls_cluster(runner: asyncio.Runner, tls_files: dict[str, str]) -> Iterator[Any]:
    """A separately started TLS-only cluster (as an operator runs one), from the certificate files."""
    security = Security(
        tls_ca_file=tls_files["dask_tls_ca_file"],
        tls_scheduler_cert=tls_files["dask_tls_cert"],
        tls_scheduler_key=tls_files["dask_tls_key"],
        tls_worker_cert=tls_files["dask_tls_cert"],
        tls_worker_key=tls_files["dask_tls_key"],
        tls_client_cert=tls_files["dask_tls_cert"],
        tls_client_key=tls_files["dask_tls_key"],
        require_encryption=True,
    )

    async def start() -> Any:
        # a second, separately secured cluster on loopback (one single-threaded process worker)
        return await distributed.LocalCluster(
            n_workers=1, threads_per_worker=1, processes=True, host="127.0.0.1", protocol="tls://",
            security=security, dashboard_address="127.0.0.1:0", scheduler_kwargs={"dashboard": False},
            asynchronous=True,
        )

    async def stop(cl: Any) -> None:
        await cl.close()

    cl = runner.run(start())
    yield cl
    runner.run(stop(cl))


def test_finding_6_a_tls_scheduler_is_reached_with_the_dask_tls_keys(
    runner: asyncio.Runner, root: Path, tls_cluster: Any, tls_files: dict[str, str], tmp_path: Path
) -> None:
    """Finding 6: a remote scheduler can be secured: dask_scheduler tls://... with the client's certificate files."""
    address = tls_cluster.scheduler_address
    assert address.startswith("tls://")
    cfg: dict[str, Any] = {"root_dir": str(root), "dask_scheduler": address, "dask_connect_timeout": 10}
    backend = DaskBackend({**cfg, **tls_files})
    try:
        out = runner.run(_read(cfg, backend, np.s_[5:30, ::3]))
    finally:
        runner.run(backend.aclose())
    assert out.tobytes() == GRID[5:30, ::3].tobytes()
    # without the certificate files the backend cannot connect, and says which keys to set
    bare = DaskBackend(cfg)
    with pytest.raises(BackendError, match=r"a tls:// scheduler needs this client's certificate: set dask_tls_ca_file and dask_tls_cert"):
        runner.run(_read(cfg, bare))
    runner.run(bare.aclose())
    # nor can an attacker without them run code there
    marker = tmp_path / "pwned"
    with pytest.raises(FatalCommClosedError, match=r"TLS certificate does not match"):
        runner.run(_run_as_attacker(address, marker, security=Security.temporary()))
    assert not marker.exists()


def test_finding_6_unreadable_tls_files_are_a_config_error_naming_them(
    runner: asyncio.Runner, root: Path, tls_files: dict[str, str], tmp_path: Path
) -> None:
    """Finding 6: the client's TLS files are checked before connecting; a bad one is named."""
    missing = str(tmp_path / "nope.pem")
    cfg = {"root_dir": str(root), "dask_scheduler": "tls://127.0.0.1:9", **tls_files, "dask_tls_cert": missing}
    backend = DaskBackend(cfg)
    with pytest.raises(ConfigError, match=rf"cannot load the dask TLS files \(.*dask_tls_cert='{missing}'.*\): .*No such file"):
        runner.run(backend.get_client())
    only_ca = DaskBackend({"root_dir": str(root), "dask_scheduler": "tls://127.0.0.1:9", "dask_tls_ca_file": tls_files["dask_tls_ca_file"]})
    with pytest.raises(ConfigError, match=r"^dask_tls_cert not set; a TLS client needs the cluster's CA certificate"):
        runner.run(only_ca.get_client())


def test_finding_6_tls_keys_without_a_scheduler_are_refused(tmp_path: Path, tls_files: dict[str, str]) -> None:
    """Finding 6: the embedded cluster makes its own credentials; client files set for it would be silently ignored."""
    with pytest.raises(ConfigError, match=r"dask_tls_ca_file, dask_tls_cert, dask_tls_key set without dask_scheduler"):
        DaskBackend({"root_dir": str(tmp_path), **tls_files})


@pytest.mark.parametrize("address", ["tcp://10.1.2.3:8786", "10.1.2.3:8786", "tcp://scheduler.example.org:8786", "ws://[2001:db8::1]:8786"])
def test_finding_6_s3_credentials_are_never_sent_to_an_unencrypted_scheduler_off_loopback(
    tmp_path: Path, address: str
) -> None:
    """Finding 6: explicit S3 keys went to the workers through any scheduler, in clear text over tcp://."""
    creds = {"aws_s3_gateway": "http://127.0.0.1:9", "aws_access_key_id": "AKIDEXAMPLE", "aws_secret_access_key": "s3cr3t-value"}
    with pytest.raises(
        ConfigError,
        match=rf"^dask_scheduler '{re.escape(address)}' is not encrypted: dask_send_credentials would send the storage credentials .* in clear text; "
        r"use a tls:// scheduler .*or set dask_send_credentials: false",
    ) as info:
        DaskBackend({**creds, "dask_scheduler": address})
    assert "s3cr3t-value" not in str(info.value) and "AKIDEXAMPLE" not in str(info.value)
    # accepted: TLS, loopback, or the workers' own credentials
    for ok in (
        {"dask_scheduler": "tls://" + address.split("://")[-1]},
        {"dask_scheduler": "tcp://127.0.0.1:8786"},
        {"dask_scheduler": address, "dask_send_credentials": False},
        {"dask_scheduler": address, "aws_access_key_id": None, "aws_secret_access_key": None},
    ):
        DaskBackend({**creds, **ok})
