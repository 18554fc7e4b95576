"""The HSDS front fails closed (docs/architecture.md §11, §12).

HSDS's SN sends no credentials, so a front has none to check: it listens on loopback or a
unix socket only (anything else is refused at start), a loopback TCP front answers only
``Host`` headers naming loopback (DNS rebinding), a body over ``front_body_limit`` is
refused before it is read, a unix socket is the owner's alone, and the backends read only
the allowed buckets — a read naming another bucket's file goes to the DN, never to storage.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("hsds_backends_containers")

from _dn_harness import DN, clean_env, write_one_dataset  # noqa: E402

from hsds_backends.ids import chunk_id  # noqa: E402

#: Nothing listens here: what the front forwards fails with 503, so "forwarded" is visible.
DEAD_UPSTREAM = "http://127.0.0.1:9"


def _front(*args: str) -> list[str]:
    return [sys.executable, "-m", "hsds_backends.cli", "dn", "front", *args]


def _start(*args: str) -> tuple[subprocess.Popen[bytes], str]:
    proc = subprocess.Popen(_front(*args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, env=clean_env())
    assert proc.stdout is not None and proc.stderr is not None
    line = proc.stdout.readline().decode()
    if not line.startswith("READY "):
        proc.kill()
        raise AssertionError(f"front did not start: {line!r} {proc.stderr.read().decode()[-2000:]}")
    return proc, line.split()[1]


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    r = tmp_path_factory.mktemp("front-sec")
    (r / "hsdstest").mkdir()
    (r / "secret").mkdir()
    (r / "secret" / "file.bin").write_bytes(b"\x00" * 4096)
    out = write_one_dataset(r, "/home/u/f.h5", "/d", np.arange(100, dtype="<i4"), (10,))
    cfg = r / "front.yml"
    # a front started with its DN: nothing unflushed behind it (else it forwards every read for a window)
    cfg.write_text("front_body_limit: 1k\nbackend: inline\nfront_start_dirty: false\n")
    return {"root": str(r), "meta": out["meta"], "config": str(cfg)}


@pytest.fixture(scope="module")
def front(root: dict[str, Any]) -> Iterator[DN]:
    # one front of a four-DN deployment (a sidecar): it asks storage for dataset JSON its DN cannot give
    proc, url = _start("--listen", "http://127.0.0.1:0", "--upstream", DEAD_UPSTREAM, "--root-dir", root["root"], "--config", root["config"],
                       "--dn-count", "4")
    port = int(url.rsplit(":", 1)[1])
    node = DN(proc, "127.0.0.1", port)  # type: ignore[arg-type]
    yield node
    node.stop()


def test_a_front_listens_on_loopback_or_a_unix_socket_only(root: dict[str, Any]) -> None:
    for where in ("http://0.0.0.0:7777", "10.1.2.3:7777", "http://example.com:7777"):
        r = subprocess.run(_front("--listen", where, "--upstream", DEAD_UPSTREAM, "--root-dir", root["root"]),
                           capture_output=True, text=True, timeout=60, env=clean_env())
        assert r.returncode == 1, r
        assert r.stderr.strip() == (
            f"Error: --listen {where!r}: a front listens on 127.0.0.1, ::1 or a unix socket only; HSDS's SN sends no "
            "credentials, so a front reachable from other hosts would serve anyone"
        ), r.stderr


def test_a_front_needs_storage(tmp_path: Path) -> None:
    r = subprocess.run(_front("--listen", str(tmp_path / "f.sock"), "--upstream", DEAD_UPSTREAM), capture_output=True, text=True,
                       timeout=60, env=clean_env(), cwd=tmp_path)
    assert r.returncode == 1
    assert r.stderr.strip() == (
        "Error: no storage given; pass --root-dir DIR (the storage the HSDS DNs write to), --s3-gateway URL or --azure "
        "(with AZURE_CONNECTION_STRING in the environment), or root_dir / aws_s3_gateway / azure_connection_string in --config"
    ), r.stderr


def test_foreign_host_header_is_refused(front: DN) -> None:
    status, _, body = front.request("GET", "/info", host="evil.example")
    assert status == 403
    assert "Host 'evil.example' is not a loopback name" in json.loads(body)["message"]
    status, _, body = front.request("GET", "/info")  # loopback: forwarded (and the DN is not there)
    assert status == 503 and json.loads(body)["error_type"] == "UpstreamError"


def test_a_body_over_the_limit_is_refused_before_it_is_read(front: DN) -> None:
    status, _, body = front.request("PUT", "/chunks/c-11111111-22222222-3333-444444-555555_0?bucket=hsdstest", body=b"x" * 2048,
                                    headers={"Content-Type": "application/octet-stream"})
    assert status == 413, body


def test_a_read_of_another_buckets_file_is_never_served_from_storage(front: DN, root: dict[str, Any]) -> None:
    """``s3path`` naming a file outside the allowed buckets: forwarded (here: 503), not read by the backend."""
    meta = root["meta"]
    cid = chunk_id(meta.id, [0])
    q = f"/chunks/{cid}?bucket=hsdstest&select=[0:10]&s3path=secret/file.bin&s3offset=0&s3size=40"
    status, _, body = front.request("GET", q)
    assert status == 503, body
    # the same chunk without s3path is served from the allowed bucket (the dataset JSON comes from storage)
    status, headers, body = front.request("GET", f"/chunks/{cid}?bucket=hsdstest&select=[0:10]")
    assert status == 200 and headers["content-type"] == "application/octet-stream"
    assert np.frombuffer(body, "<i4").tolist() == list(range(10))
    status, _, body = front.request("GET", "/hsds-backends/front/stats")
    stats = json.loads(body)["fronts"][0]
    assert stats["forwarded_reads"].get("bucket not allowed") == 1, stats
    assert stats["chunk_reads_by_backend"] == {"inline": 1}, stats


def test_unix_socket_front_is_private(root: dict[str, Any], tmp_path: Path) -> None:
    sock = tmp_path / "fr.sock"
    proc, url = _start("--listen", str(sock), "--upstream", DEAD_UPSTREAM, "--root-dir", root["root"])
    try:
        assert url.startswith("http+unix://")
        assert stat.S_IMODE(os.stat(sock).st_mode) == 0o600
    finally:
        proc.terminate()
        proc.wait(10)
    assert not sock.exists()
