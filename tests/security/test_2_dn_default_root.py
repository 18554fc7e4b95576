"""Finding 2 (DN part): ``dn serve`` never serves the folder it was started in by default.

Started with no ``--root-dir`` (and no S3 endpoint, config or ``ROOT_DIR``) in a folder that
holds a fake ``~/.aws/credentials`` laid out as a bucket, the DN refuses to start with one
line naming what to pass. Embedded DNs always get their root on the command line.
"""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("hsds_backends_containers")

from _dn_harness import clean_env, run_dn, start_dn  # noqa: E402

from hsds_backends_containers._local import LocalNode, LocalNodes  # noqa: E402


def test_dn_without_a_root_refuses_to_start(tmp_path: Path) -> None:
    """Finding 2: no --root-dir → exit 1 with one line, in a folder holding credentials, instead of serving it."""
    home = tmp_path / "home"
    (home / "hsdstest" / ".aws").mkdir(parents=True)
    (home / "hsdstest" / ".aws" / "credentials").write_text("[default]\naws_secret_access_key = FAKEsecret\n")
    (home / "hsdstest" / "credentials").write_text("aws_secret_access_key = FAKEsecret\n")
    r = run_dn("--port", "0", cwd=str(home), env=clean_env())
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert r.stdout == ""  # never READY
    lines = r.stderr.strip().splitlines()
    assert lines == [
        "Error: no storage given; pass --root-dir DIR (the folder holding the buckets), --s3-gateway URL or --azure "
        "(with AZURE_CONNECTION_STRING in the environment), or root_dir / aws_s3_gateway / azure_connection_string in --config"
    ], r.stderr
    assert "Traceback" not in r.stderr and "FAKEsecret" not in r.stderr
    # a root named on purpose (HSDS's ROOT_DIR variable) is one
    dn = start_dn(cwd=str(home), env=clean_env(ROOT_DIR=str(tmp_path / "data")))
    dn.stop()


def test_embedded_dns_always_pass_their_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Finding 2: a local DN gets --root-dir even when the backend config names none (the reader's own default: the cwd), and the allowed buckets."""
    monkeypatch.chdir(tmp_path)
    nodes = LocalNodes(1, {"bucket_name": "hsdstest"})
    nodes.run_dir = str(tmp_path)
    args = nodes._args(LocalNode(0))
    assert args[args.index("--root-dir") + 1] == str(tmp_path)
    args = LocalNodes(1, {"root_dir": "data", "allowed_buckets": ["a", "b"]})._args(LocalNode(0))
    assert args[args.index("--root-dir") + 1] == str(tmp_path / "data")
    assert args[args.index("--allowed-buckets") + 1] == "a,b"
