"""The DN service on its own: ``hsds-backends dn serve`` spoken to with a standard HTTP client.

One DN process is started through the core CLI (``python -m hsds_backends.cli dn
serve --socket ...``, i.e. through the ``hsds_backends.cli`` entry point) and
spoken to with ``http.client`` (HTTP/1.1, as HSDS's SN would), independent of
our client. Good requests return the oracle's bytes; bad ones get a 4xx with a
JSON message, and the service keeps serving. Also: the CLI's options, lazy
imports of the plugin, the chunk cache, URL parsing and HSDS's partitioning.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import struct
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("hsds_backends_containers")

from hsds_backends.ids import chunk_id, chunk_key, dn_index  # noqa: E402
from hsds_backends.storage import PosixStorage  # noqa: E402
from hsds_backends.writer import Writer  # noqa: E402
from hsds_backends_containers._cache import ChunkCache  # noqa: E402
from hsds_backends_containers._client import NodeURL  # noqa: E402
from hsds_backends_containers._batch import FRAME, MISSING, OK  # noqa: E402
from hsds_backends_containers.backend import ContainersBackend  # noqa: E402

try:
    from hsds_harness import unix_http_request
except ImportError:  # tests/ turned into a package
    from tests.hsds_harness import unix_http_request

DOMAIN = "/home/dn/data.h5"
GRID = np.arange(100 * 120, dtype=">i4").reshape(100, 120)
TABLE = np.zeros(50, dtype=[("id", "<i8"), ("temp", "<f4"), ("station", "S4")])
TABLE["id"], TABLE["temp"], TABLE["station"] = np.arange(50), np.arange(50) / 2, b"ST01"


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("dn")

    async def write() -> dict[str, Any]:
        w = Writer(PosixStorage(root), "hsdstest")
        g = await w.create_dataset(DOMAIN, "/grid", GRID, chunks=(40, 50), filters=["gzip"], skip_chunk=lambda i: i == (2, 2))
        t = await w.create_dataset(DOMAIN, "/table", TABLE, chunks=(16,))
        return {"root": str(root), "grid": g, "table": t}

    return asyncio.run(write())


#: The bearer token of the module's DN (``/info`` tells its figures only to a caller with it).
TOKEN = "dn-service-test-token"


@pytest.fixture(scope="module")
def dn(data: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A DN started through the core CLI on a unix socket; yields the socket path."""
    sock = str(tmp_path_factory.mktemp("sock") / "dn.sock")
    proc = subprocess.Popen(
        [sys.executable, "-m", "hsds_backends.cli", "dn", "serve", "--socket", sock, "--root-dir", data["root"], "--workers", "2"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
        env={**os.environ, "HSDS_BACKENDS_DN_TOKEN": TOKEN},
    )
    assert proc.stdout is not None
    line = proc.stdout.readline().decode()
    assert line.startswith("READY http+unix://"), (line, proc.stderr.read() if proc.poll() is not None else "")
    assert urllib.parse.unquote(line.split()[1][len("http+unix://") :]) == sock
    assert os.stat(sock).st_mode & 0o777 == 0o600  # only this user may connect
    yield sock
    proc.terminate()
    assert proc.wait(10) == 0  # a clean stop on SIGTERM
    assert not os.path.exists(sock)


def _req(sock: str, method: str, path: str, *, headers: dict[str, str] | None = None, **kw: Any) -> tuple[int, dict[str, str], bytes]:
    return unix_http_request(sock, method, path, timeout=10, headers={"Authorization": f"Bearer {TOKEN}", **(headers or {})}, **kw)


def _cid(meta: Any, *index: int) -> str:
    return chunk_id(meta.id, index)


def _still_serving(sock: str, data: dict[str, Any]) -> None:
    status, _, body = _req(sock, "GET", "/info")
    assert status == 200 and json.loads(body)["state"] == "READY"
    status, _, body = _req(sock, "GET", f"/chunks/{_cid(data['grid'], 1, 1)}", params={"bucket": "hsdstest", "select": "[0:2,0:3]"})
    assert status == 200 and body == GRID[40:42, 50:53].tobytes()


# ----------------------------------------------------------------------------- good requests


def test_get_hyperslab_like_hsds(dn: str, data: dict[str, Any]) -> None:
    """docs/hsds-format.md §4.2: chunk-relative select, the DN loads the dataset JSON from the bucket."""
    status, headers, body = _req(dn, "GET", f"/chunks/{_cid(data['grid'], 1, 2)}", params={"bucket": "hsdstest", "select": "[0:2,0:3]"})
    assert status == 200 and headers["Content-Type"] == "application/octet-stream"
    assert body == GRID[40:42, 100:103].tobytes()  # big-endian bytes as stored (docs/hsds-format.md §2.2)
    status, _, body = _req(dn, "GET", f"/chunks/{_cid(data['grid'], 0, 0)}", params={"bucket": "hsdstest"})
    assert status == 200 and body == GRID[0:40, 0:50].tobytes()  # no select: the whole chunk
    status, _, body = _req(dn, "GET", f"/chunks/{_cid(data['grid'], 0, 0)}")
    assert status == 200 and body == GRID[0:40, 0:50].tobytes()  # no bucket: the DN's bucket_name (HSDS: 400)
    status, _, body = _req(dn, "GET", f"/chunks/{_cid(data['grid'], 2, 1)}", params={"bucket": "hsdstest", "select": "[[3,1],0:50:7]"})
    assert status == 200 and body == GRID[[83, 81]][:, 50:100:7].tobytes()


def test_post_points_and_json_select(dn: str, data: dict[str, Any]) -> None:
    """docs/hsds-format.md §4.3: uint64 absolute coordinates (octet-stream) or a JSON select."""
    pts = np.array([[40, 100], [79, 119], [41, 101]], dtype="<u8")
    status, _, body = _req(
        dn, "POST", f"/chunks/{_cid(data['grid'], 1, 2)}", params={"bucket": "hsdstest", "count": 3},
        body=pts.tobytes(), headers={"Content-Type": "application/octet-stream"},
    )
    assert status == 200 and body == GRID[pts[:, 0], pts[:, 1]].tobytes()
    status, _, body = _req(dn, "POST", f"/chunks/{_cid(data['grid'], 1, 2)}", params={"bucket": "hsdstest"}, body={"select": "[0:1,0:4]"})
    assert status == 200 and body == GRID[40:41, 100:104].tobytes()


def test_fields_query_and_missing_chunk(dn: str, data: dict[str, Any]) -> None:
    t = data["table"]
    status, _, body = _req(dn, "GET", f"/chunks/{_cid(t, 1)}", params={"bucket": "hsdstest", "fields": "temp:id", "select": "[2:5]"})
    want = np.empty(3, dtype=[("temp", "<f4"), ("id", "<i8")])
    want["temp"], want["id"] = TABLE["temp"][18:21], TABLE["id"][18:21]
    assert status == 200 and body == want.tobytes()
    status, _, body = _req(dn, "GET", f"/chunks/{_cid(t, 2)}", params={"bucket": "hsdstest", "query": "(temp > 17) & (id < 40)", "Limit": "2"})
    rows = np.frombuffer(body, dtype=[("index", "<u8"), ("id", "<i8"), ("temp", "<f4"), ("station", "S4")])
    assert status == 200 and rows["index"].tolist() == [35, 36] and rows["id"].tolist() == [35, 36]
    # an unwritten chunk is a bare 404 (the caller fills, docs/hsds-format.md §3.4): no JSON error body
    status, _, body = _req(dn, "GET", f"/chunks/{_cid(data['grid'], 2, 2)}", params={"bucket": "hsdstest"})
    assert status == 404 and b"not found" in body and not body.startswith(b"{")


def test_batch_route_with_http11_client(dn: str, data: dict[str, Any]) -> None:
    """Our extension, spoken by a plain HTTP/1.1 client (the answer is then chunked; frames are the same)."""
    from hsds_backends.plan import plan_hyperslab
    from hsds_backends.selection import parse_select
    from hsds_backends_containers._batch import encode_batch

    plan = plan_hyperslab(data["grid"], parse_select("[30:90:3, 45:110]", GRID.shape))
    status, headers, body = _req(dn, "POST", "/batch", body=encode_batch(plan.tasks, "t1"), headers={"Content-Type": "application/json"})
    assert status == 200 and headers["Content-Type"] == "application/x-hsds-backends-frames"
    got: dict[int, tuple[int, bytes]] = {}
    pos = 0
    while pos < len(body):
        j, st, n, _, _ = FRAME.unpack_from(body, pos)
        pos += FRAME.size
        got[j] = (st, body[pos : pos + n])
        pos += n
    assert sorted(got) == list(range(len(plan.tasks)))
    out = np.zeros((20, 65), dtype=">i4")
    for j, (st, payload) in got.items():
        place = plan.placements[j]
        shape = tuple(p.stop - p.start for p in place)
        if st == MISSING:
            continue
        assert st == OK
        out[place] = np.frombuffer(payload, dtype=">i4").reshape(shape)
    want = GRID[30:90:3, 45:110].copy()
    want[(80 - 30 + 2) // 3 :, 100 - 45 :] = 0  # chunk (2, 2) is not written: the caller fills
    assert out.tobytes() == want.tobytes()


# ----------------------------------------------------------------------------- bad requests

BAD: list[tuple[str, str, str, dict[str, Any], Any, dict[str, str], int, str]] = [
    # id, method, chunk (or route), params, body, headers, status, message fragment
    ("bad-chunk-id", "GET", "/chunks/c-nothex_0_0", {"bucket": "hsdstest"}, None, {}, 400, "is not an HSDS chunk id"),
    ("select-past-chunk", "GET", "grid:1,1", {"bucket": "hsdstest", "select": "[0:50,0:5]"}, None, {}, 400, "0:50"),
    ("select-garbage", "GET", "grid:1,1", {"bucket": "hsdstest", "select": "[a:b,0]"}, None, {}, 400, "a:b"),
    ("select-wrong-rank", "GET", "grid:1,1", {"bucket": "hsdstest", "select": "[0:5]"}, None, {}, 400, "rank"),
    ("unknown-field", "GET", "table:0", {"bucket": "hsdstest", "fields": "temp:nope"}, None, {}, 400, "unknown field 'nope'"),
    ("bad-query", "GET", "table:0", {"bucket": "hsdstest", "query": "temp >> 3"}, None, {}, 400, "temp >> 3"),
    ("bad-limit", "GET", "table:0", {"bucket": "hsdstest", "query": "temp > 3", "Limit": "many"}, None, {}, 400, "Limit 'many'"),
    ("dotdot-bucket", "GET", "grid:0,0", {"bucket": ".."}, None, {}, 400, "not a valid bucket name"),
    ("slash-bucket", "GET", "grid:0,0", {"bucket": "../etc"}, None, {}, 400, "not a valid bucket name"),
    ("dotdot-s3path", "GET", "grid:0,0", {"bucket": "hsdstest", "s3path": "hsdstest/../../etc/passwd", "s3size": "10"}, None, {}, 400, "'..'"),
    ("point-out-of-chunk", "POST", "grid:0,0", {"bucket": "hsdstest", "count": 1}, np.array([[45, 3]], "<u8").tobytes(),
     {"Content-Type": "application/octet-stream"}, 400, "does not lie in chunk"),
    ("points-bad-length", "POST", "grid:0,0", {"bucket": "hsdstest", "count": 2}, b"\x00" * 24,
     {"Content-Type": "application/octet-stream"}, 400, "need 32"),
    ("points-no-count", "POST", "grid:0,0", {"bucket": "hsdstest"}, b"\x00" * 16, {"Content-Type": "application/octet-stream"}, 400, "'count'"),
    ("json-malformed", "POST", "grid:0,0", {"bucket": "hsdstest"}, b"{not json", {"Content-Type": "application/json"}, 400, "not valid JSON"),
    ("json-no-select", "POST", "grid:0,0", {"bucket": "hsdstest"}, b'{"sel": 1}', {"Content-Type": "application/json"}, 400, '"select"'),
    ("bad-content-type", "POST", "grid:0,0", {"bucket": "hsdstest"}, b"x", {"Content-Type": "text/plain"}, 415, "'text/plain' is not supported"),
    ("no-dataset", "GET", "/chunks/c-00000000-00000000-0000-000000-000000_0_0", {"bucket": "hsdstest"}, None, {}, 404, "not found in bucket"),
    ("batch-not-json", "POST", "/batch", {}, b"\x00\x01", {"Content-Type": "application/json"}, 400, "not valid JSON"),
    ("batch-shape", "POST", "/batch", {}, b'{"tasks": 3}', {"Content-Type": "application/json"}, 400, '"dsets"'),
    ("batch-bad-ref", "POST", "/batch", {}, b'{"dsets": [], "tasks": [{"chunk_id": "c-x_0", "dset": 4}]}',
     {"Content-Type": "application/json"}, 400, "must index 'dsets'"),
    ("batch-dotdot", "POST", "/batch", {}, json.dumps({"dsets": [{}], "tasks": [{"chunk_id": "c-x_0", "dset": 0, "bucket": ".."}]}).encode(),
     {"Content-Type": "application/json"}, 400, "not a valid bucket name"),
]


@pytest.mark.parametrize(("method", "where", "params", "body", "headers", "status", "fragment"), [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_input_is_a_4xx_with_a_message(
    dn: str, data: dict[str, Any], method: str, where: str, params: dict[str, Any], body: Any, headers: dict[str, str], status: int, fragment: str
) -> None:
    if not where.startswith("/"):
        name, _, index = where.partition(":")
        where = f"/chunks/{_cid(data[name], *(int(x) for x in index.split(',')))}"
    got, hdrs, raw = _req(dn, method, where, params=params, body=body, headers=headers)
    assert got == status, raw[:300]
    assert hdrs["Content-Type"].startswith("application/json")
    doc = json.loads(raw)
    assert doc["statusCode"] == status and fragment in doc["message"], doc
    _still_serving(dn, data)


def test_corrupt_chunk_is_a_500_naming_chunk_and_key(dn: str, data: dict[str, Any]) -> None:
    meta = data["grid"]
    cid = _cid(meta, 0, 1)
    path = Path(data["root"]) / "hsdstest" / chunk_key(cid)
    good = path.read_bytes()
    try:
        path.write_bytes(good[: len(good) // 2])
        status, _, raw = _req(dn, "GET", f"/chunks/{cid}", params={"bucket": "hsdstest"})
        doc = json.loads(raw)
        assert status == 500 and doc["error_type"] == "ChunkDecodeError"
        assert cid in doc["message"] and chunk_key(cid) in doc["message"]
    finally:
        path.write_bytes(good)
    # the cache validator sees the file changed again: the good bytes are served, not a stale chunk
    status, _, raw = _req(dn, "GET", f"/chunks/{cid}", params={"bucket": "hsdstest"})
    assert status == 200 and raw == GRID[0:40, 50:100].tobytes()


def test_info_reports_node_load_and_cache(dn: str, data: dict[str, Any]) -> None:
    for _ in range(2):
        _req(dn, "GET", f"/chunks/{_cid(data['grid'], 0, 2)}", params={"bucket": "hsdstest"})
    doc = json.loads(_req(dn, "GET", "/info")[2])
    assert doc["service"] == "hsds-backends-dn" and (doc["node_number"], doc["node_count"]) == (0, 1)
    assert doc["cache"]["hits"] >= 1 and doc["cache"]["entries"] >= 1 and doc["cache"]["max_bytes"] == 128 * 1024**2
    assert doc["load"]["requests"] > 0 and doc["load"]["errors"] > 0
    assert doc["storage"] == {"root_dir": data["root"]}
    # the fault route exists only with HSDS_BACKENDS_DN_FAULTS=1
    assert _req(dn, "POST", "/faults", body={"hang": True})[0] == 404


# ----------------------------------------------------------------------------- CLI


def test_cli_tcp_binds_loopback_and_checks_options(data: dict[str, Any]) -> None:
    cmd = [sys.executable, "-m", "hsds_backends.cli", "dn", "serve", "--root-dir", data["root"]]
    bad = subprocess.run([*cmd, "--port", "0", "--socket", "/tmp/x.sock"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "either --port or --socket" in bad.stderr
    bad = subprocess.run([*cmd, "--node-number", "2", "--node-count", "2"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "--node-number 2 must be less than --node-count 2" in bad.stderr
    proc = subprocess.Popen(
        [*cmd, "--port", "0", "--node-number", "1", "--node-count", "3"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env={**os.environ, "HSDS_BACKENDS_DN_TOKEN": TOKEN},
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().decode().split()
        assert line[0] == "READY" and line[1].startswith("http://127.0.0.1:")
        be = ContainersBackend({"root_dir": data["root"], "dn_urls": [line[1]], "dn_token": TOKEN})

        async def go() -> list[dict[str, Any]]:
            try:
                return await be.info()
            finally:
                await be.aclose()

        info = asyncio.run(go())
        assert (info[0]["node_number"], info[0]["node_count"]) == (1, 3)
    finally:
        proc.terminate()
        proc.wait(10)


def test_plugin_import_is_cheap() -> None:
    code = (
        "import sys, hsds_backends_containers.plugin as p, hsds_backends;"
        "names = [b.name for b in hsds_backends.list_backends()];"
        "print('containers' in names, 'aiohttp' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.split() == ["True", "False"]


# ----------------------------------------------------------------------------- units


def test_partitioning_is_hsds_md5() -> None:
    """docs/hsds-format.md §4.5: DN number = int(md5(chunk id)[0:5], 16) mod N, over the exact (partitioned) id."""
    be = ContainersBackend({"dn_urls": [f"http://127.0.0.1:{6101 + i}" for i in range(3)]})
    for cid in ["c-147ada2c-2ffb2839-39b5-e935ed-e55bf0_0_3_1", "c12-147ada2c-2ffb2839-39b5-e935ed-e55bf0_3_4"]:
        want = int(hashlib.md5(cid.encode()).hexdigest()[:5], 16) % 3
        assert be.node_for(cid) == dn_index(cid, 3) == want
    assert be.node_count == 3 and be.capabilities.configured and be.started


def test_node_urls() -> None:
    u = NodeURL.parse("http+unix://%2Ftmp%2Fdn_1.sock")
    assert (u.unix, u.path, u.prefix) == (True, "/tmp/dn_1.sock", "")
    assert NodeURL.parse("unix:///run/dn.sock").path == "/run/dn.sock"
    t = NodeURL.parse("https://dn-3.dn.svc:6101/base/")
    assert (t.scheme, t.host, t.port, t.prefix) == ("https", "dn-3.dn.svc", 6101, "/base")
    for bad in ("ftp://x", "http://", "dn:6101", "http://h:99999", "http+unix://"):
        with pytest.raises(ValueError, match="is not valid; use http://host:port"):
            NodeURL.parse(bad)


def test_config_errors() -> None:
    from hsds_backends.errors import ConfigError

    with pytest.raises(ConfigError, match=r"config key 'dn_protocol': 'grpc' from config is not valid; use one of \['auto', 'batch', 'hsds'\]"):
        ContainersBackend({"dn_protocol": "grpc"})
    with pytest.raises(ConfigError, match=r"config key 'dn_transport': 'pipe' from config is not valid; use one of \['unix', 'tcp'\]"):
        ContainersBackend({"dn_transport": "pipe"})
    with pytest.raises(ConfigError, match="config key 'dn_batch_size': 'lots' from config is not an integer; use a whole number"):
        ContainersBackend({"dn_batch_size": "lots"})
    embedded = ContainersBackend({})
    assert not embedded.capabilities.configured  # auto selection never starts processes by surprise
    assert not embedded.started
    assert embedded.cache_bytes == 128 * 1024**2  # HSDS's chunk_mem_cache_size default
    assert ContainersBackend({"chunk_mem_cache_size": 0}).cache_bytes == 0  # 0 switches the cache off
    assert ContainersBackend({"chunk_mem_cache_size": "1g"}).cache_bytes == 1024**3
    assert ContainersBackend({"dn_max_retries": 0, "dn_retry_backoff_exp": 0}).max_retries == 0


def test_cache_lru_scan_resistance_and_validators() -> None:
    mib = np.zeros(1 << 20, dtype=np.uint8)
    c = ChunkCache(3 << 20)
    for k in range(5):  # one request reads 5 chunks through a 3-chunk cache
        assert c.get(k, "r1") is None
        c.put(k, mib.copy(), "r1")
    assert len(c) == 3 and c.rejected == 2 and c.evictions == 0  # kept the first three, not the last
    hits = sum(c.get(k, "r2") is not None for k in range(5))  # the same read again: 3 hits, not 0
    assert hits == 3
    for k in (3, 4):
        assert not c.put(k, mib.copy(), "r2")  # would evict chunks r2 used
    assert c.put(9, mib.copy(), "r3") and c.evictions == 1  # another request evicts the LRU entry
    arr = c.get(1, "r3")
    assert arr is not None and not arr.flags.writeable
    c.put(7, np.zeros(10, np.uint8), "r4", validator=(1, 10))
    assert c.get(7, "r4", validator=(1, 10)) is not None
    assert c.get(7, "r4", validator=(2, 10)) is None and 7 not in c._entries  # changed underneath: dropped
    assert c.stats()["bytes"] == c.nbytes == sum(e.nbytes for e in c._entries.values())
    assert not ChunkCache(0).put(1, mib)


def test_frame_header_layout() -> None:
    assert FRAME.size == 29 and FRAME.pack(1, 2, 3, 4, 5) == struct.pack("<IBQQQ", 1, 2, 3, 4, 5)


def test_dn_startup_time_is_reported(data: dict[str, Any]) -> None:
    """Embedded DNs start quickly and stop on close, leaving nothing behind."""
    be = ContainersBackend({"root_dir": data["root"], "dn_count": 1})

    async def go() -> tuple[float, list[int], str]:
        t0 = time.perf_counter()
        await be.start()
        took = time.perf_counter() - t0
        assert be._local is not None
        pids = [n.pid for n in be._local.nodes if n.pid]
        run_dir = be._local.run_dir
        await be.aclose()
        await be.aclose()  # idempotent
        return took, pids, run_dir

    took, pids, run_dir = asyncio.run(go())
    assert took < 15 and pids
    for pid in pids:
        assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split(")")[1][:3]
    assert not os.path.exists(run_dir)


def test_embedded_dns_on_loopback_tcp(data: dict[str, Any]) -> None:
    be = ContainersBackend({"root_dir": data["root"], "bucket_name": "hsdstest", "dn_count": 2, "dn_transport": "tcp"})

    async def go() -> np.ndarray[Any, Any]:
        import hsds_backends as hb

        async with hb.Reader({"root_dir": data["root"], "bucket_name": "hsdstest"}) as reader:
            dset = await (await reader.open(DOMAIN)).get("/grid")
            try:
                out = await dset.read("[3:97:2, 1:119:3]", backend=be)
                assert [n["url"].startswith("http://127.0.0.1:") for n in be.nodes] == [True, True]
                assert be.last_stats is not None and len(be.last_stats.per_node) == 2
                return out
            finally:
                await be.aclose()

    want = GRID[3:97:2, 1:119:3].copy()
    want[(80 - 3 + 1) // 2 :, (100 - 1 + 2) // 3 :] = 0  # chunk (2, 2) is not written: fill value 0
    assert asyncio.run(go()).tobytes() == want.tobytes()


def test_s3_credentials_reach_dns_only_through_their_environment(moto_server: Any) -> None:
    """Secrets never appear on a DN's command line, in /info or in a task payload."""
    import hsds_backends as hb
    from hsds_backends.testing.fixtures import create_bucket
    from hsds_backends_containers._batch import encode_batch

    secret = "s3cr3t-Zq8xv"
    cfg = {**moto_server.config(), "aws_access_key_id": "AKIDCONTAINERS", "aws_secret_access_key": secret, "bucket_name": "dn-secrets"}
    create_bucket(cfg, "dn-secrets")
    be = ContainersBackend({**cfg, "dn_count": 1})

    async def go() -> None:
        w = Writer(_s3(cfg), "dn-secrets")
        await w.create_dataset(DOMAIN, "/grid", GRID, chunks=(40, 50))
        async with hb.Reader(cfg) as reader:
            dset = await (await reader.open(DOMAIN)).get("/grid")
            try:
                out = await dset.read("[::3, 7:100]", backend=be)
                assert out.tobytes() == GRID[::3, 7:100].tobytes()
                assert be._local is not None
                pid = be._local.nodes[0].pid
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
                environ = Path(f"/proc/{pid}/environ").read_bytes()
                assert secret.encode() not in cmdline and b"--s3-gateway" in cmdline
                assert b"AWS_SECRET_ACCESS_KEY=" + secret.encode() in environ
                info = await be.info()
                assert secret not in json.dumps(info) and info[0]["storage"]["storage"] == "s3"
                assert secret.encode() not in encode_batch(dset.plan(None).tasks)
            finally:
                await be.aclose()

    asyncio.run(go())


def _s3(cfg: dict[str, Any]) -> Any:
    from hsds_backends.storage import storage_from_config

    return storage_from_config(cfg)


def _start_dn(root: str, sock: str, cache_size: str) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "hsds_backends.cli", "dn", "serve", "--socket", sock, "--root-dir", root, "--cache-size", cache_size],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, env={**os.environ, "HSDS_BACKENDS_DN_TOKEN": TOKEN},
    )
    assert proc.stdout is not None
    line = proc.stdout.readline().decode()
    assert line.startswith("READY"), (line, proc.stderr.read() if proc.poll() is not None else "")
    return proc


def test_a_dn_without_a_cache_decodes_only_the_blocks_a_request_needs(tmp_path: Path) -> None:
    """docs/architecture.md §4 "Kernel": with ``--cache-size 0`` nothing keeps the chunk, so the DN decodes only the
    Blosc blocks holding the requested points; with a cache it decodes (and keeps) the whole chunk."""
    from hsds_backends.codecs import blosc as blosc_codec

    big = (np.arange(512 * 512, dtype="<f4") % 1013).reshape(512, 512)

    async def write() -> Any:
        return await Writer(PosixStorage(tmp_path), "hsdstest").create_dataset(DOMAIN, "/big", big, chunks=(512, 512), filters=["gzip"])

    meta = asyncio.run(write())
    cid = _cid(meta, 0, 0)
    path = tmp_path / "hsdstest" / chunk_key(cid)
    stored = bytearray(path.read_bytes())
    header = blosc_codec.parse_header(memoryview(stored))
    assert header is not None
    nblocks = -(-header.nbytes // header.blocksize)
    assert nblocks >= 2, header
    rows_per_block = header.blocksize // (512 * 4)
    offsets = np.frombuffer(stored, dtype="<i4", count=nblocks, offset=16)
    offsets[1:] = 0  # every block but the first now points into the header: decoding one of them fails
    path.write_bytes(bytes(stored))
    pts = np.array([[0, 3], [rows_per_block - 1, 511]], dtype="<u8")  # both in block 0
    answers = {}
    for cache_size in ("0", "16m"):
        sock = str(tmp_path / f"dn-{cache_size}.sock")
        proc = _start_dn(str(tmp_path), sock, cache_size)
        try:
            answers[cache_size] = _req(
                sock, "POST", f"/chunks/{cid}", params={"bucket": "hsdstest", "count": 2},
                body=pts.tobytes(), headers={"Content-Type": "application/octet-stream"},
            )
        finally:
            proc.terminate()
            proc.wait(10)
    status, _, body = answers["0"]
    assert status == 200 and body == big[pts[:, 0].astype(int), pts[:, 1].astype(int)].tobytes()
    status, _, body = answers["16m"]
    assert status == 500 and json.loads(body)["error_type"] == "ChunkDecodeError" and cid in json.loads(body)["message"]
