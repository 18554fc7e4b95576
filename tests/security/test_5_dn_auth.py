"""Finding 5: DN authentication fails closed.

An empty ``--token-file`` (alone, or with ``HSDS_BACKENDS_DN_TOKEN`` set) or an empty
``HSDS_BACKENDS_DN_TOKEN`` is an error, not "no authentication"; a TCP interface other
than loopback without a token is refused; a loopback listener refuses foreign ``Host``
headers (DNS rebinding); only the content types HSDS's SN sends are accepted; embedded
DNs always run with a token.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("hsds_backends_containers")

from _dn_harness import CHUNK0, DN, batch, clean_env, contiguous_ref, json_message, run_dn, start_dn  # noqa: E402

from hsds_backends_containers.backend import ContainersBackend  # noqa: E402

TOKEN = "t0ken-for-the-auth-tests"


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> str:
    root = tmp_path_factory.mktemp("root")
    (root / "hsdstest").mkdir()
    (root / "hsdstest" / "small.bin").write_bytes(bytes(range(64)))
    return str(root)


@pytest.fixture(scope="module")
def dn(root: str) -> Iterator[DN]:
    node = start_dn("--root-dir", root, env=clean_env(HSDS_BACKENDS_DN_TOKEN=TOKEN))
    yield node
    node.stop()


def _one_line_error(r: subprocess.CompletedProcess[str], text: str) -> None:
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert r.stderr.strip().splitlines() == [f"Error: {text}"], r.stderr
    assert r.stdout == ""


def test_empty_tokens_are_errors(root: str, tmp_path: Path) -> None:
    """Finding 5: an empty token file (with or without the env token) or an empty env token stops the DN with one line."""
    empty = tmp_path / "dn.token"
    empty.write_text("\n  \n")
    msg = f"token file {str(empty)!r} is empty; write a token into it (for example: openssl rand -hex 32 > {empty})"
    _one_line_error(run_dn("--root-dir", root, "--port", "0", "--token-file", str(empty)), msg)
    _one_line_error(run_dn("--root-dir", root, "--port", "0", "--token-file", str(empty), env=clean_env(HSDS_BACKENDS_DN_TOKEN=TOKEN)), msg)
    _one_line_error(
        run_dn("--root-dir", root, "--port", "0", env=clean_env(HSDS_BACKENDS_DN_TOKEN=" ")),
        "HSDS_BACKENDS_DN_TOKEN is set but empty; put the token in it, or unset it to serve without a token on loopback",
    )


def test_non_loopback_without_a_token_is_refused(root: str) -> None:
    """Finding 5: --host 0.0.0.0 without a token refuses to start (it used to warn and serve)."""
    _one_line_error(
        run_dn("--root-dir", root, "--host", "0.0.0.0", "--port", "0"),
        "refusing to serve on 0.0.0.0 without a token: anyone who can reach it could read the data; set "
        "HSDS_BACKENDS_DN_TOKEN or --token-file (for example: openssl rand -hex 32 > dn.token), or bind 127.0.0.1",
    )
    # with a token it serves, and then a Host header need not be loopback (a container's or pod's name)
    node = start_dn("--root-dir", root, "--host", "0.0.0.0", env=clean_env(HSDS_BACKENDS_DN_TOKEN=TOKEN))
    try:
        node.host = "127.0.0.1"
        status, _, raw = node.request("GET", "/info", token=TOKEN, host=f"dn-0.dn.svc:{node.port}")
        assert status == 200 and json.loads(raw)["node_count"] == 1
        status, _, raw = node.request("GET", "/info", host=f"dn-0.dn.svc:{node.port}")
        assert status == 200 and json.loads(raw) == {"service": "hsds-backends-dn", "state": "READY"}
        status, _, raw = node.request("GET", f"/chunks/{CHUNK0}?bucket=hsdstest", host=f"dn-0.dn.svc:{node.port}")
        assert status == 401 and "no bearer token" in json_message(raw)
    finally:
        node.stop()


@pytest.mark.parametrize("host", ["attacker.example", "attacker.example:6101", "10.0.0.7:6101", "127.0.0.1.nip.io", "[fe80::1]:80"])
def test_loopback_listener_refuses_foreign_host(dn: DN, host: str) -> None:
    """Finding 5: a page rebinding its name to 127.0.0.1 sends that name as Host: 403 on every route, before the token is looked at."""
    for method, path in [("GET", "/info"), ("GET", f"/chunks/{CHUNK0}?bucket=hsdstest"), ("POST", "/batch")]:
        status, _, raw = dn.request(method, path, host=host, token=TOKEN, headers={"Content-Type": "application/json"} if method == "POST" else None)
        assert status == 403, (method, path, raw[:200])
        assert json_message(raw) == (
            f"Host {host!r} is not a loopback name; this DN listens on loopback and answers only requests "
            "addressed to 127.0.0.1, ::1 or localhost"
        )
    # every spelling of loopback passes
    for good in (f"127.0.0.1:{dn.port}", f"localhost:{dn.port}", "LOCALHOST", f"[::1]:{dn.port}", "127.0.0.2"):
        status, _, raw = dn.request("GET", "/info", host=good, token=TOKEN)
        assert status == 200 and json.loads(raw)["service"] == "hsds-backends-dn", good


CONTENT_TYPES = [
    # id, method, path, content type, body, message
    ("batch-text-plain", "POST", "/batch", "text/plain", b"{}", "Content-Type 'text/plain' is not supported on /batch; send 'application/json'"),
    ("batch-form", "POST", "/batch", "application/x-www-form-urlencoded", b"a=b", "Content-Type 'application/x-www-form-urlencoded' is not supported on /batch; send 'application/json'"),
    ("batch-none", "POST", "/batch", None, b"{}", "Content-Type '(none)' is not supported on /batch; send 'application/json'"),
    ("chunks-text-plain", "POST", f"/chunks/{CHUNK0}?bucket=hsdstest&count=1", "text/plain", b"\x00" * 8,
     "Content-Type 'text/plain' is not supported; use 'application/octet-stream' (points) or 'application/json' ({'select': ...})"),
    ("chunks-multipart", "POST", f"/chunks/{CHUNK0}?bucket=hsdstest", "multipart/form-data; boundary=x", b"--x--",
     "Content-Type 'multipart/form-data' is not supported; use 'application/octet-stream' (points) or 'application/json' ({'select': ...})"),
    ("chunks-none", "POST", f"/chunks/{CHUNK0}?bucket=hsdstest", None, b'{"select": "[0:1]"}',
     "Content-Type '(none)' is not supported; use 'application/octet-stream' (points) or 'application/json' ({'select': ...})"),
    ("get-with-body", "GET", f"/chunks/{CHUNK0}?bucket=hsdstest", "text/plain", b"x",
     f"GET /chunks/{CHUNK0} takes no body; send a selection as query parameters or POST it"),
]


@pytest.mark.parametrize(("method", "path", "ctype", "body", "message"), [c[1:] for c in CONTENT_TYPES], ids=[c[0] for c in CONTENT_TYPES])
def test_only_the_sns_content_types_are_accepted(dn: DN, method: str, path: str, ctype: str | None, body: bytes, message: str) -> None:
    """Finding 5: a body HSDS's SN would not send (text/plain, a form, none) is a 415, before it is read or parsed."""
    headers = {"Content-Type": ctype} if ctype else {}
    status, _, raw = dn.request(method, path, body=body, headers=headers, token=TOKEN)
    assert status == 415, raw[:300]
    assert json_message(raw) == message
    # the accepted type works
    good = batch(contiguous_ref(64), {"chunk_id": CHUNK0, "bucket": "hsdstest", "s3path": "hsdstest/small.bin", "s3offset": 0, "s3size": 64})
    status, _, raw = dn.request("POST", "/batch", body=good, headers={"Content-Type": "application/json; charset=utf-8"}, token=TOKEN)
    assert status == 200 and raw.endswith(bytes(range(64)))


def test_embedded_dns_always_have_a_token(root: str) -> None:
    """Finding 5: local DNs on loopback TCP get a generated token, so another local user cannot read through them."""
    be = ContainersBackend({"root_dir": root, "dn_count": 1, "dn_transport": "tcp"})
    assert be.token is not None and len(be.token) >= 32

    async def go() -> None:
        from hsds_backends_containers._client import NodeURL, request

        try:
            await be.start()
            url = NodeURL.parse(be.nodes[0]["url"])
            status, _, body = await request(url, "POST", "/batch", body=b"{}", headers={"Content-Type": "application/json"}, token=None, timeout=5)
            assert status == 401 and "no bearer token" in json.loads(bytes(body))["message"]
            status, _, body = await request(url, "GET", "/info", token=None, timeout=5)
            assert json.loads(bytes(body)) == {"service": "hsds-backends-dn", "state": "READY"}
            info = await be.info()
            assert info[0]["node_count"] == 1  # the backend has the token
        finally:
            await be.aclose()

    asyncio.run(go())
    assert ContainersBackend({"dn_urls": ["http://127.0.0.1:6101"]}).token is None  # DNs it did not start: dn_token as given
