"""Faults around the HSDS front (docs/architecture.md §12): a backend killed mid-read, a front killed, a DN down.

- The backend's processes (the local Lambda runtime under the front) are killed while
  h5pyd reads: the front forwards the chunks the backend did not answer to the DN
  (``fallbacks``), and every byte is still right.
- The fronts are killed: with restarts off, h5pyd gets a clear error (HSDS's SN retries,
  then answers 5xx) and does not hang; with restarts on (the default), the launcher starts
  them again on the same sockets and reads are right again.
- A DN is killed behind its front: HSDS's own behaviour (a client error, no hang), and the
  launcher reports the dead node.
"""

from __future__ import annotations

import json
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("hsds_backends_containers")

try:
    import front_harness as F
    import hsds_harness as H
except ImportError:  # tests/ turned into a package
    from tests import front_harness as F
    from tests import hsds_harness as H

pytestmark = pytest.mark.hsds

_READ = r"""
import time as _t
f = h5pyd.File(args["domain"], "r", retries=args["retries"], **kw)
a = np.load(args["expected"])
ok = []
t0 = _t.time()
for i in range(args["n"]):
    ok.append(bool(np.array_equal(f["big"][...], a)))
emit({"ok": ok, "seconds": _t.time() - t0})
"""


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    r = tmp_path_factory.mktemp("front-faults")
    (r / "hsdstest").mkdir()
    return r


@pytest.fixture(scope="module")
def written(root: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A 1200×1000 float32 grid of 120 gzip chunks, written through HSDS and flushed."""
    out = tmp_path_factory.mktemp("expected") / "big.npy"
    with F.Deployment(root, backend="inline", fronts=False) as dep:
        client = dep.client()
        F.ensure_home(client)
        client.run_h5pyd(F.WRITE_GRID, domain="/home/admin/big.h5", name="big", shape=[1200, 1000], mod=9973, dtype="<f4",
                         chunks=[100, 100], out=str(out), timeout=300)
        pw = Path(dep.dep.password_file or "").read_text()
        _wait_flushed(root / "hsdstest", "home/admin/big.h5", "big", 120)
    # the same user in every deployment below
    pwfile = root / "passwd.txt"
    pwfile.write_text(pw)
    pwfile.chmod(0o600)
    return {"domain": "/home/admin/big.h5", "expected": str(out), "password_file": str(pwfile)}


def _wait_flushed(bucket_dir: Path, domain_key: str, link: str, chunks: int) -> None:
    """Wait until the DNs have written the domain, the link and every chunk to storage."""
    import json

    def done() -> bool:
        try:
            root_id = json.loads((bucket_dir / domain_key / ".domain.json").read_text())["root"]
            links = json.loads((bucket_dir / H.obj_key(root_id)).read_text())["links"]
            dset_dir = (bucket_dir / H.obj_key(links[link]["id"])).parent
            return sum(1 for p in dset_dir.iterdir() if not p.name.startswith(".")) >= chunks
        except (OSError, KeyError, ValueError):
            return False

    F.wait_until(done, 60)


def _read(dep: F.Deployment, written: dict[str, Any], n: int = 1, timeout: float = 240, retries: int = 3) -> dict[str, Any]:
    res: dict[str, Any] = dep.client().run_h5pyd(
        _READ, domain=written["domain"], expected=written["expected"], n=n, retries=retries, timeout=timeout
    )
    return res


@pytest.fixture
def lambda_fronts(root: Path, written: dict[str, Any]) -> Iterator[F.Deployment]:
    with F.Deployment(root, backend="lambda", password_file=written["password_file"],
                      # no kept chunks: every read goes to the backend
                      config={"aws_lambda_max_attempts": 2, "aws_lambda_retry_base": 0.01, "front_cache_size": 0}) as dep:
        yield dep


def test_backend_killed_mid_read_falls_back_to_the_dn(lambda_fronts: F.Deployment, written: dict[str, Any]) -> None:
    dep = lambda_fronts
    assert _read(dep, written)["ok"] == [True]  # warm: the runtime is up and serving
    assert dep.totals()["by_backend"].get("lambda", 0) >= 120
    runtime = [p for name in dep.front_names for p in dep.child_pids(name)]
    assert runtime, "the local Lambda runtimes run under the fronts"
    result: dict[str, Any] = {}
    reader = threading.Thread(target=lambda: result.update(_read(dep, written, n=4)))
    reader.start()
    time.sleep(0.3)
    for pid in runtime:
        try:
            import os

            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    reader.join(240)
    assert result.get("ok") == [True] * 4, result
    t = dep.totals()
    assert t["fallbacks"] > 0, t  # chunks the dead backend did not answer went to the DN
    assert t["data_errors"] == 0, t


def test_fronts_that_stay_dead_stop_hsds_with_a_clear_error(root: Path, written: dict[str, Any]) -> None:
    """Without its fronts, HSDS's SN retries each DN request for ~13 s, then answers 500 (and h5pyd retries that
    for minutes). The launcher stops HSDS instead (restarts off here; on by default): the endpoint refuses at once."""
    import socket
    import urllib.parse

    with F.Deployment(root, backend="inline", password_file=written["password_file"], restart_fronts=False) as dep:
        assert _read(dep, written)["ok"] == [True]
        for name in dep.front_names:
            dep.kill(name)
        F.wait_until(lambda: dep.supervise_error is not None, 30)
        assert "front1 exited (code -9); stopping HSDS" in str(dep.supervise_error)
        F.wait_until(lambda: not dep.dep.children, 60)
        assert not list(Path(dep.dep.run_dir or "/nonexistent").glob("*.sock"))
        u = urllib.parse.urlsplit(dep.dep.endpoint or "")
        t0 = time.monotonic()
        with pytest.raises(ConnectionRefusedError), socket.create_connection((u.hostname, u.port), timeout=5):
            pass
        assert time.monotonic() - t0 < 5


def test_killed_fronts_are_restarted(root: Path, written: dict[str, Any]) -> None:
    with F.Deployment(root, backend="inline", password_file=written["password_file"]) as dep:
        assert _read(dep, written)["ok"] == [True]
        old = dep.kill("front2")
        F.wait_until(lambda: dep.dep.front_restarts == 1 and dep.dep.children["front2"].alive and dep.dep.children["front2"].pid != old, 30)
        assert _read(dep, written)["ok"] == [True]
        assert dep.dep.status()["front_restarts"] == 1
        assert dep.supervise_error is None
        # the restarted front never saw what its DN may not have flushed: for one dirty window it reads nothing from storage
        restarted = dep.stats()["fronts"][1]
        assert restarted["dirty_hits"] > 0 and set(restarted["chunk_reads_by_backend"]) <= {"dn"}, restarted


def test_a_dn_down_behind_its_front(root: Path, written: dict[str, Any]) -> None:
    """What reaches the dead DN through its front gets a prompt 503 naming it (HSDS's SN retries that as it
    retries a DN it cannot reach, then answers 500: HSDS's own behaviour); the launcher reports the node."""
    with F.Deployment(root, backend="inline", password_file=written["password_file"], stop_on_error=False) as dep:
        assert _read(dep, written)["ok"] == [True]
        dep.kill("dn2")
        F.wait_until(lambda: dep.supervise_error is not None, 30)
        assert "dn2 exited" in str(dep.supervise_error)
        t0 = time.monotonic()
        status, _, body = H.unix_http_request(dep.front_socket(1), "GET", "/info")
        assert time.monotonic() - t0 < 5
        assert status == 503, body
        doc = json.loads(body)
        assert doc["error_type"] == "UpstreamError" and "dn_02.sock" in doc["message"], doc
        before = dep.totals()["by_backend"].get("inline", 0)
        # clean chunk reads of front 2 still come from storage (its dataset JSON is cached)
        assert dep.stats()["fronts"][1]["upstream_errors"] == 1
        assert before > 0
