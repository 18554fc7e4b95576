"""``hsds-backends hsds serve`` and ``hsds stats`` as a user runs them (docs/architecture.md §12, README "Use with HSDS").

The command starts a real HSDS (SN on 127.0.0.1, DNs and fronts on private unix sockets)
with ``--backend lambda``; h5pyd writes and reads through it; ``hsds stats`` shows the chunk
reads served by lambda; SIGTERM stops every process and removes the run folder.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import signal
import stat
import subprocess
import sys
import time
import urllib.parse
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

CLI = [sys.executable, "-m", "hsds_backends.cli"]

_READ = r"""
f = h5pyd.File(args["domain"], "r", **kw)
a = np.load(args["expected"])
d = f["grid"]
emit({
    "full": bool(np.array_equal(d[...], a)) and d[...].dtype == a.dtype,
    "strided": bool(np.array_equal(d[7:290:9, 3:399:11], a[7:290:9, 3:399:11])),
    "points": bool(np.array_equal(d[(np.arange(300 * 400).reshape(300, 400) % 97) == 0], a[(np.arange(300 * 400).reshape(300, 400) % 97) == 0])),
})
"""


def _pids_alive(pids: list[int]) -> list[int]:
    alive = []
    for p in pids:
        try:
            with open(f"/proc/{p}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X"):
                    alive.append(p)
        except OSError:
            pass
    return alive


def test_serve_lambda_then_stats_then_sigterm(tmp_path: Path) -> None:
    H.ensure_hsds_venv()
    root = tmp_path / "root"
    (root / "mybucket").mkdir(parents=True)
    cfg = tmp_path / "config.yml"
    cfg.write_text("aws_lambda_local_workers: 2\nfront_dirty_window: 4\ndn_token: not-written-anywhere-4c1d\n")
    status_file = tmp_path / "status.json"
    venv = H.ensure_hsds_venv()
    proc = subprocess.Popen(
        [*CLI, "hsds", "serve", "--root-dir", str(root), "--bucket", "mybucket", "--backend", "lambda", "--port", "0",
         "--status-file", str(status_file), "--config", str(cfg), "--hsds-node", str(venv / "bin" / "hsds-node")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )
    try:
        F.wait_until(lambda: status_file.exists() or proc.poll() is not None, 90)
        assert proc.poll() is None, proc.communicate()
        status: dict[str, Any] = json.loads(status_file.read_text())
        run_dir = Path(status["run_dir"])
        # private: the status and password files are the user's alone, the run folder too
        assert stat.S_IMODE(status_file.stat().st_mode) == 0o600
        assert stat.S_IMODE(Path(status["password_file"]).stat().st_mode) == 0o600
        assert stat.S_IMODE(run_dir.stat().st_mode) == 0o700
        assert status["endpoint"].startswith("http://127.0.0.1:") and status["backend"] == "lambda"
        assert len(status["fronts"]) == 2 and all("fr_0" in u for u in status["fronts"])
        # secrets reach the fronts in their environment, never in the run folder
        assert all(b"not-written-anywhere-4c1d" not in p.read_bytes() for p in run_dir.rglob("*") if p.is_file())
        line = proc.stdout.readline() if proc.stdout else ""
        assert line.startswith(f"HSDS ready at {status['endpoint']} (user admin, password in {status['password_file']})"), line

        password = Path(status["password_file"]).read_text().split(":", 1)[1].strip()
        client = H.H5pydClient(status["endpoint"], "admin", password, "mybucket", tmp_path / "client")
        F.ensure_home(client)
        client.run_h5pyd(F.WRITE_GRID, domain="/home/admin/grid.h5", name="grid", shape=[300, 400], mod=1013, dtype=">f8",
                         chunks=[50, 80], out=str(tmp_path / "grid.npy"), timeout=300)
        time.sleep(4.5)  # the dirty window: reads of what was just written go to the DNs until it passes
        res = client.run_h5pyd(_READ, domain="/home/admin/grid.h5", expected=str(tmp_path / "grid.npy"), timeout=300)
        assert res == {"full": True, "strided": True, "points": True}

        out = subprocess.run([*CLI, "hsds", "stats", "--status-file", str(status_file)], capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        stats = json.loads(out.stdout)
        served = sum(f["chunk_reads_by_backend"].get("lambda", 0) for f in stats["fronts"])
        assert served >= 30, stats
        for f in stats["fronts"]:
            assert {"url", "chunk_reads_by_backend", "passed_through", "fallbacks", "dirty_hits", "last_reasons"} <= set(f)
            assert f["fallbacks"] == 0 and f["passed_through"] > 0
        assert any(r["backend"] == "lambda" for f in stats["fronts"] for r in f["last_reasons"])

        # the SN's loopback listener refuses a request addressed to another name (DNS rebinding)
        u = urllib.parse.urlsplit(status["endpoint"])
        conn = http.client.HTTPConnection(u.hostname, u.port, timeout=10)
        token = base64.b64encode(f"admin:{password}".encode()).decode()
        conn.request("GET", "/about", headers={"Host": "evil.example:5101", "Authorization": f"Basic {token}"})
        resp = conn.getresponse()
        assert resp.status == 403 and b"not a loopback name" in resp.read()
        conn.close()
        # a body over HSDS's max_request_size (100 MiB) is refused from its declared length, before it is read
        conn = http.client.HTTPConnection(u.hostname, u.port, timeout=10)
        conn.putrequest("PUT", "/domains")
        conn.putheader("Content-Length", str(200 * 1024 * 1024))
        conn.putheader("Authorization", f"Basic {token}")
        conn.endheaders()
        resp = conn.getresponse()
        assert resp.status == 413
        conn.close()

        pids = [p for p in status["pids"].values() if p]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
        F.wait_until(lambda: not _pids_alive(pids), 30)
        assert not run_dir.exists() and not status_file.exists()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def test_serve_refuses_a_missing_bucket_folder(tmp_path: Path) -> None:
    venv = H.ensure_hsds_venv()
    out = subprocess.run(
        [*CLI, "hsds", "serve", "--root-dir", str(tmp_path), "--bucket", "nosuch", "--port", "0", "--hsds-node", str(venv / "bin" / "hsds-node")],
        capture_output=True, text=True, timeout=120,
    )
    assert out.returncode == 1
    assert f"bucket folder {tmp_path / 'nosuch'} does not exist; create it" in out.stderr


def test_stats_without_a_running_hsds(tmp_path: Path) -> None:
    sf = tmp_path / "status.json"
    sf.write_text(json.dumps({"fronts": [f"http+unix://{urllib.parse.quote(str(tmp_path / 'gone.sock'), safe='')}"]}))
    out = subprocess.run([*CLI, "hsds", "stats", "--status-file", str(sf)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 1
    assert "the fronts do not answer" in out.stderr and "is 'hsds serve' still running?" in out.stderr


def test_serve_refuses_a_port_in_use(tmp_path: Path) -> None:
    import socket

    venv = H.ensure_hsds_venv()
    (tmp_path / "hsdstest").mkdir()
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        out = subprocess.run(
            [*CLI, "hsds", "serve", "--root-dir", str(tmp_path), "--port", str(port), "--hsds-node", str(venv / "bin" / "hsds-node")],
            capture_output=True, text=True, timeout=120,
        )
    assert out.returncode == 1
    assert out.stderr.strip() == f"Error: cannot listen on 127.0.0.1:{port}: Address already in use; choose another --port (0: any free port)"
