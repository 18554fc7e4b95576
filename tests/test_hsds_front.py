"""h5pyd reads a real HSDS 1.0.2 whose DNs sit behind HSDS fronts, for every backend (docs/architecture.md §12).

Each backend gets its own deployment (``HsdsDeployment``: SN, two DNs, two fronts) on the
storage the session's plain HSDS (tests/hsds_harness.py) wrote the interop domain into; a
linked domain (``H5D_CHUNKED_REF`` with shuffle + gzip + fletcher32, ``H5D_CONTIGUOUS_REF``)
is written beside it by our writer. Every read must equal numpy and the same read through
the plain HSDS (no fronts) byte for byte, and the fronts' statistics must show the chunk
reads served by the configured backend.
"""

from __future__ import annotations

import asyncio
import base64
import http.client
import json
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("hsds_backends_containers")

from hsds_backends.storage import PosixStorage  # noqa: E402
from hsds_backends.writer import Writer  # noqa: E402

try:
    import front_harness as F
    import hsds_harness as H
except ImportError:  # tests/ turned into a package
    from tests import front_harness as F
    from tests import hsds_harness as H

pytestmark = pytest.mark.hsds

BACKENDS = ["inline", "lambda", "dask", "containers"]
LINKED_DOMAIN = "/home/test_user1/front_linked.h5"


def _mask(shape: tuple[int, ...], every: int) -> np.ndarray:
    return (np.arange(int(np.prod(shape))).reshape(shape) % every) == 0


def _fields(e: np.ndarray, names: list[str]) -> np.ndarray:
    out = np.empty(e.shape, dtype=[(n, e.dtype.fields[n][0]) for n in names])
    for n in names:
        out[n] = e[n]
    return out


# (key, domain, h5path, h5pyd expression, oracle on the expected array)
READS: list[tuple[str, str, str, str, Callable[[np.ndarray], Any]]] = [
    ("be-full", "interop", "be_ints", "d[...]", lambda e: e),
    ("be-strided", "interop", "be_ints", "d[10:95:3, 7:55:5]", lambda e: e[10:95:3, 7:55:5]),
    ("be-coords", "interop", "be_ints", "d[[1, 5, 30, 77], 2:40:4]", lambda e: e[[1, 5, 30, 77], 2:40:4]),
    ("gz-mask", "interop", "gzip_shuffle", "d[(np.arange(100*200).reshape(100, 200) % 7) == 0]", lambda e: e[_mask(e.shape, 7)]),
    ("fill-full", "interop", "floats_fill", "d[...]", lambda e: e),
    ("fill-strided", "interop", "floats_fill", "d[30:70:3, 25:75:2]", lambda e: e[30:70:3, 25:75:2]),
    ("cube", "interop", "cube_u8", "d[3:19:4, ::7, 12:40:9]", lambda e: e[3:19:4, ::7, 12:40:9]),
    ("lz4", "interop", "lz4", "d[5:60:6, :]", lambda e: e[5:60:6, :]),
    ("nocomp", "interop", "nocomp", "d[3:47:2]", lambda e: e[3:47:2]),
    ("table-strided", "interop", "table", "d[100:900:7]", lambda e: e[100:900:7]),
    # a coordinate list whose per-chunk select is over 256 characters: the SN POSTs it as JSON
    ("table-long-select", "interop", "table", "d[[i for i in range(1000) if i % 3]]", lambda e: e[[i for i in range(1000) if i % 3]]),
    # h5pyd returns the fields in the type's order, and read_where's field= returns whole rows
    ("table-fields", "interop", "table", "d.fields(['temp', 'id'])[10:500]", lambda e: _fields(e[10:500], ["id", "temp"])),
    ("table-where", "interop", "table", "d.read_where('temp > 20')", lambda e: e[e["temp"] > 20]),
    ("table-where-limit", "interop", "table", "d.read_where('temp > 20', limit=7)", lambda e: e[e["temp"] > 20][:7]),
    ("table-where-field", "interop", "table", "d.read_where('temp > 20', field='id')", lambda e: e[e["temp"] > 20]),
    ("vlen-full", "interop", "vlen_str", "d[...]", lambda e: e),
    ("vlen-strided", "interop", "vlen_str", "d[3:40:3]", lambda e: e[3:40:3]),
    ("scalar", "interop", "scalar", "d[()]", lambda e: e),
    ("linked-full", "linked", "ref", "d[...]", lambda e: e),
    ("linked-strided", "linked", "ref", "d[5:50:7, 3:70:9]", lambda e: e[5:50:7, 3:70:9]),
    ("linked-mask", "linked", "ref", "d[(np.arange(48*96).reshape(48, 96) % 11) == 0]", lambda e: e[_mask(e.shape, 11)]),
    ("contig-ref", "linked", "contig", "d[2:40:3]", lambda e: e[2:40:3]),
]


def _same(got: np.ndarray, want: np.ndarray) -> bool:
    got, want = np.asarray(got), np.asarray(want)
    if want.dtype == object or got.dtype == object:
        def norm(a: np.ndarray) -> list[Any]:
            return [g.decode() if isinstance(g, bytes) else g for g in a.ravel()]

        return got.shape == want.shape and norm(got) == norm(want)
    return got.shape == want.shape and got.dtype == want.dtype and got.tobytes() == want.tobytes()


@pytest.fixture(scope="module")
def data(hsds_server: H.HsdsServer, interop_manifest: dict[str, Any]) -> dict[str, Any]:
    """Expected arrays of the interop domain and of a linked domain our writer adds beside it."""
    rng = np.random.default_rng(13)
    ref = rng.integers(-1000, 1000, size=(48, 96)).astype(">f4")
    contig = np.arange(60, dtype="<i8") * 3 - 7

    async def write() -> None:
        w = Writer(PosixStorage(hsds_server.root_dir), hsds_server.bucket, owner=hsds_server.username)
        await w.create_linked_dataset(LINKED_DOMAIN, "/ref", ref, file_key="front/linked.h5", chunks=(16, 32),
                                      filters=["shuffle", ("gzip", 5), "fletcher32"])
        await w.create_linked_dataset(LINKED_DOMAIN, "/contig", contig, file_key="front/contig.h5", layout="H5D_CONTIGUOUS_REF")

    asyncio.run(write())
    expected = {("interop", n): H.load_expected(interop_manifest, n) for n in interop_manifest["datasets"]}
    expected[("linked", "ref")] = ref
    expected[("linked", "contig")] = contig
    domains = {"interop": H.INTEROP_DOMAIN, "linked": LINKED_DOMAIN}
    pw = Path(hsds_server.socket_dir) / "front-passwd.txt"
    pw.write_text(f"{hsds_server.username}:{hsds_server.password}\n")
    pw.chmod(0o600)
    # the plain HSDS's answers (no fronts), for the byte-for-byte comparison
    plain = _read_all(hsds_server, domains)
    return {"expected": expected, "domains": domains, "plain": plain, "password_file": str(pw), "manifest": interop_manifest}


def _read_all(client: Any, domains: dict[str, str]) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    for dom_key, domain in domains.items():
        reads = [(key, "/" + path, expr) for key, dk, path, expr, _ in READS if dk == dom_key]
        got = H.h5pyd_read_many(client, domain, [(p, e) for _, p, e in reads])
        out.update({key: g for (key, _, _), g in zip(reads, got, strict=True)})
    return out


@pytest.fixture(scope="module", params=BACKENDS)
def deployment(request: pytest.FixtureRequest, hsds_server: H.HsdsServer, data: dict[str, Any]) -> Iterator[F.Deployment]:
    dep = F.Deployment(hsds_server.root_dir, backend=request.param, bucket=hsds_server.bucket, password_file=data["password_file"])
    with dep:
        yield dep


def test_h5pyd_reads_match_numpy_and_plain_hsds(deployment: F.Deployment, data: dict[str, Any]) -> None:
    before = deployment.totals()
    got = _read_all(deployment.client(), data["domains"])
    wrong = []
    for key, dk, path, _, oracle in READS:
        want = oracle(data["expected"][(dk, path)])
        if not _same(got[key], want):
            wrong.append(f"{key}: not numpy's answer ({got[key]!r:.200} vs {want!r:.200})")
        if not _same(got[key], data["plain"][key]):
            wrong.append(f"{key}: not plain HSDS's answer")
    assert not wrong, "\n".join(wrong)
    after = deployment.totals()
    served = after["by_backend"].get(deployment.backend, 0) - before["by_backend"].get(deployment.backend, 0)
    kept = after["by_backend"].get("cache", 0) - before["by_backend"].get("cache", 0)
    # routing, as `hsds stats` shows it: every chunk read on the backend (or cut from a chunk the front
    # kept, as a DN keeps it), none on the DNs
    assert served >= 30 and served + kept >= 60, after
    assert after["by_backend"].get("dn", 0) == 0 and after["forwarded"] == before["forwarded"], deployment.stats()
    assert after["fallbacks"] == before["fallbacks"] and after["data_errors"] == 0, after
    stats = deployment.stats()
    # s3_sync_interval + s3_age_time + s3_sync_task_timeout, HSDS's defaults; one front process per DN
    assert [p["dirty_window_s"] for p in stats["processes"]] == [12.0, 12.0]
    reasons = [r for f in stats["fronts"] for r in f["last_reasons"]]
    assert reasons and all(r["backend"] == deployment.backend for r in reasons), reasons


def _sn_get(dep_or_server: Any, path: str, params: dict[str, str]) -> tuple[int, bytes]:
    """GET on an SN with basic auth: the deployment's loopback TCP endpoint, or the plain server's socket."""
    target = path + "?" + urllib.parse.urlencode(params)
    if isinstance(dep_or_server, H.HsdsServer):
        status, _, body = dep_or_server.request("GET", target)
        return status, body
    u = urllib.parse.urlsplit(dep_or_server.dep.endpoint)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
    try:
        token = base64.b64encode(f"{dep_or_server.dep.username}:{dep_or_server.password}".encode()).decode()
        conn.request("GET", target, headers={"Authorization": f"Basic {token}"})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def test_raw_query_route_answers_as_plain_hsds(deployment: F.Deployment, hsds_server: H.HsdsServer, data: dict[str, Any]) -> None:
    """``GET /datasets/{id}/query`` (the DNs answer with coordinates: ``query_indices``), with and without Limit."""
    table = data["manifest"]["datasets"]["table"]
    e = data["expected"][("interop", "table")]
    for params in ({"query": "temp > 20"}, {"query": "(temp > 20) & (id < 1000001500)", "Limit": "5"}):
        params = {**params, "domain": H.INTEROP_DOMAIN}
        status, body = _sn_get(deployment, f"/datasets/{table['id']}/query", params)
        p_status, p_body = _sn_get(hsds_server, f"/datasets/{table['id']}/query", params)
        assert status == p_status == 200, (body[:300], p_body[:300])
        doc, plain = json.loads(body), json.loads(p_body)
        assert doc["indices"] == plain["indices"]  # (hrefs name each SN's own endpoint)
        hits = np.nonzero(e["temp"] > 20)[0] if "Limit" not in params else np.nonzero((e["temp"] > 20) & (e["id"] < 1000001500))[0]
        assert sorted(i[0] for i in doc["indices"]) == hits.tolist()[: len(doc["indices"])]


def test_hsds2021_rule_on_the_group_size(hsds_server: H.HsdsServer, data: dict[str, Any]) -> None:
    """``backend_policy: hsds2021``: a front's share of a client request below ``aws_lambda_threshold`` × its DNs
    goes to the DNs, a bigger one to Lambda; one decision per client request (its trace) at each front."""
    from hsds_backends.ids import chunk_id, dn_index

    info = data["manifest"]["datasets"]["be_ints"]
    share = [0, 0]
    for i in range(5):
        for j in range(4):
            share[dn_index(chunk_id(info["id"], [i, j]), 2)] += 1
    assert min(share) >= 2, share  # each front gets enough of the full read for the rule at threshold 2
    # a generous decision window: the SN's burst of one request arrives as one group even on a loaded machine
    cfg = {"backend_policy": "hsds2021", "aws_lambda_chunkread_function": "chunk_read", "aws_lambda_threshold": 2,
           "front_decision_window_ms": 300}
    with F.Deployment(hsds_server.root_dir, backend="auto", bucket=hsds_server.bucket, password_file=data["password_file"],
                      config={**F.BACKEND_CONFIG["lambda"], **cfg}) as dep:
        got = H.h5pyd_read_many(dep.client(), H.INTEROP_DOMAIN, [("/be_ints", "d[0:5, 0:5]"), ("/be_ints", "d[...]")])
        e = data["expected"][("interop", "be_ints")]
        assert _same(got[0], e[0:5, 0:5]) and _same(got[1], e)
        t = dep.totals()
        assert t["by_backend"] == {"dn": 1, "lambda": 20}, t  # be_ints has 5 × 4 chunks
        reasons = [r for f in dep.stats()["fronts"] for r in f["last_reasons"]]
        small = [r["reason"] for r in reasons if r["backend"] == "dn"]
        big = sorted(r["reason"] for r in reasons if r["backend"] == "lambda")
        assert small == ["hsds2021: HSDS DNs (1 chunks < 2×1 of 2 DNs)"], small
        assert big == sorted(f"hsds2021: lambda ({k} chunks ≥ 2×1 of 2 DNs)" for k in share), big
        assert len({r["trace"] for r in reasons if r["backend"] == "lambda"}) == 1  # the full read: one trace
