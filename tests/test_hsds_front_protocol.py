"""The front answers HSDS's DN protocol exactly as the DN behind it (docs/architecture.md §12, docs/hsds-format.md §4).

Hypothesis builds chunk requests of every form the SN sends — hyperslab ``GET`` (strided,
one coordinate list, fields), the ``POST`` JSON select, binary point ``POST``, queries with
and without ``Limit``, ``query_indices`` and fields, chunks never written — and each is sent
to front *i* and to DN *i* of a real HSDS 1.0.2. Status, content type and body must be the
same, and the fronts must have served every one on the backend (none forwarded).
"""

from __future__ import annotations

import json
import urllib.parse
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytest.importorskip("hsds_backends_containers")

from hsds_backends.ids import chunk_id, dn_index  # noqa: E402

try:
    import front_harness as F
    import hsds_harness as H
except ImportError:  # tests/ turned into a package
    from tests import front_harness as F
    from tests import hsds_harness as H

pytestmark = pytest.mark.hsds

DATASETS = ["be_ints", "floats_fill", "table", "vlen_str", "cube_u8", "gzip_shuffle", "lz4", "nocomp"]
QUERIES = ["temp > 20", "(temp > 20) & (id < 1000000500)", "station == b'ST00003'", "(temp < -10) | (temp > 30)", "id >= 1000000002000"]


@pytest.fixture(scope="module", params=["inline", "containers"])
def front(request: pytest.FixtureRequest, hsds_server: H.HsdsServer, interop_manifest: dict[str, Any]) -> Iterator[tuple[F.Deployment, dict[str, Any]]]:
    """Fronts on an in-process backend (each chunk read whole and cut in the front) and on a remote one
    (reads of most of a chunk read it whole, the rest go as they are)."""
    with F.Deployment(hsds_server.root_dir, backend=request.param, bucket=hsds_server.bucket) as dep:
        yield dep, interop_manifest


def _dim_select(draw: Any, n: int, allow_list: bool) -> tuple[str, bool]:
    kind = draw(st.sampled_from(["all", "slice", "index", "list"] if allow_list else ["all", "slice", "index"]))
    if kind == "all":
        return f"0:{n}", False
    if kind == "index":
        i = draw(st.integers(0, n - 1))
        return f"{i}:{i + 1}", False
    if kind == "slice":
        a = draw(st.integers(0, n - 1))
        b = draw(st.integers(a + 1, n))
        s = draw(st.integers(1, max(1, n)))
        return f"{a}:{b}:{s}", False
    picks = sorted(draw(st.sets(st.integers(0, n - 1), min_size=1, max_size=min(n, 12))))
    return "[" + ",".join(map(str, picks)) + "]", True


@st.composite
def requests(draw: Any, manifest: dict[str, Any], mode: str) -> dict[str, Any]:
    name = "table" if mode == "query" else draw(st.sampled_from(DATASETS))
    info = manifest["datasets"][name]
    chunks = info["chunk_dims"]
    shape = info["shape"]
    grid = [-(-s // c) for s, c in zip(shape, chunks, strict=True)]
    index = [draw(st.integers(0, g - 1)) for g in grid]
    cid = chunk_id(info["id"], index)
    params: dict[str, str] = {"bucket": manifest["bucket"]}
    names = [f[0] for f in info["dtype"]] if isinstance(info["dtype"], list) else []
    if names and mode != "points" and draw(st.booleans()):
        fields = draw(st.permutations(names))[: draw(st.integers(1, len(names)))]
        params["fields"] = ":".join(fields)
    req: dict[str, Any] = {"cid": cid, "name": name, "mode": mode, "method": "GET", "body": None, "ctype": None}
    if mode == "points":
        origin = [i * c for i, c in zip(index, chunks, strict=True)]
        n = draw(st.integers(1, 20))
        pts = [[o + draw(st.integers(0, min(c, s - o) - 1)) for o, c, s in zip(origin, chunks, shape, strict=True)] for _ in range(n)]
        params.update(action="get", count=str(n))
        req.update(method="POST", body=np.asarray(pts, dtype="<u8").tobytes(), ctype="application/octet-stream")
    else:
        used_list = False
        dims = []
        for c in chunks:
            text, is_list = _dim_select(draw, c, allow_list=not used_list and mode != "query")
            used_list |= is_list
            dims.append(text)
        select = "[" + ",".join(dims) + "]"
        if mode == "post-json":
            req.update(method="POST", body=json.dumps({"select": select}).encode(), ctype="application/json")
        else:
            params["select"] = select
        if mode == "query":
            params["query"] = draw(st.sampled_from(QUERIES))
            if draw(st.booleans()):
                params["Limit"] = str(draw(st.integers(1, 30)))
            if draw(st.booleans()):
                params["query_indices"] = "1"
    req["target"] = f"/chunks/{cid}?{urllib.parse.urlencode(params)}"
    return req


def _send(sock: str, req: dict[str, Any]) -> tuple[int, str, bytes]:
    headers = {"Content-Type": req["ctype"]} if req["ctype"] else None
    status, hdrs, body = H.unix_http_request(sock, req["method"], req["target"], body=req["body"], headers=headers)
    ctype = {k.lower(): v for k, v in hdrs.items()}.get("content-type", "").split(";")[0]
    return status, ctype, body


@pytest.mark.parametrize("mode", ["get", "post-json", "points", "query"])
def test_front_answers_exactly_as_the_dn(front: tuple[F.Deployment, dict[str, Any]], mode: str) -> None:
    dep, manifest = front
    before = dep.totals()
    seen: list[dict[str, Any]] = []

    @settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
    @given(req=requests(manifest, mode))
    def check(req: dict[str, Any]) -> None:
        i = dn_index(req["cid"], 2)
        got = _send(dep.front_socket(i), req)
        want = _send(dep.dn_socket(i), req)
        assert got == want, f"{req['mode']} {req['target']}: front {got[:2]} {got[2][:80]!r} vs DN {want[:2]} {want[2][:80]!r}"
        seen.append({"mode": req["mode"], "status": want[0]})

    check()
    after = dep.totals()
    # served by the backend, or cut from a chunk the front keeps (as the DN keeps it): none forwarded
    served = sum(after["by_backend"].get(k, 0) - before["by_backend"].get(k, 0) for k in (dep.backend, "cache"))
    assert served == len(seen), (served, len(seen), [f["forwarded_reads"] for f in dep.stats()["fronts"]])
    assert after["forwarded"] == before["forwarded"]
    assert 200 in {s["status"] for s in seen}


def test_an_unwritten_chunk_is_a_bare_404_as_from_the_dn(front: tuple[F.Deployment, dict[str, Any]]) -> None:
    dep, manifest = front
    cid = chunk_id(manifest["datasets"]["floats_fill"]["id"], [1, 1])  # never written (fill value)
    i = dn_index(cid, 2)
    before = sum(dep.stats()["fronts"][i]["chunk_reads_by_backend"].get(k, 0) for k in (dep.backend, "cache"))
    for req in (
        {"method": "GET", "target": f"/chunks/{cid}?bucket={manifest['bucket']}&select=[0:4,0:32]", "body": None, "ctype": None},
        {"method": "POST", "target": f"/chunks/{cid}?bucket={manifest['bucket']}&action=get&count=1",
         "body": np.asarray([[40, 40]], "<u8").tobytes(), "ctype": "application/octet-stream"},
    ):
        got = _send(dep.front_socket(i), req)
        assert got == _send(dep.dn_socket(i), req)
        assert got[0] == 404 and got[2] == b"404: Not Found", got
    assert sum(dep.stats()["fronts"][i]["chunk_reads_by_backend"].get(k, 0) for k in (dep.backend, "cache")) == before + 2


def test_reads_the_front_cannot_answer_exactly_go_to_the_dn(front: tuple[F.Deployment, dict[str, Any]]) -> None:
    """Several coordinate lists (HSDS zips them), unknown parameters, a foreign bucket, malformed requests: the DN answers."""
    dep, manifest = front
    info = manifest["datasets"]["be_ints"]
    cid = chunk_id(info["id"], [1, 1])
    i = dn_index(cid, 2)
    b = manifest["bucket"]
    cases = [
        f"/chunks/{cid}?bucket={b}&select=[[1,2,3],[4,5,6]]",
        f"/chunks/{cid}?bucket={b}&select=[0:2,0:3]&nonstrict=1",
        f"/chunks/{cid}?bucket=otherbucket&select=[0:2,0:3]",
        f"/chunks/{cid}?bucket={b}&select=[0:2,0:3]&s3offset=1:2&s3size=3:4&s3path={b}/x",  # offset lists without hyper_dims: the DN's 400
        f"/chunks/{cid}?bucket={b}&select=[0:99,0:3]",
        f"/chunks/not-a-chunk-id?bucket={b}",
    ]
    before = dep.stats()["fronts"][i]["forwarded_reads"]
    for target in cases:
        req = {"method": "GET", "target": target, "body": None, "ctype": None}
        assert _send(dep.front_socket(i), req) == _send(dep.dn_socket(i), req), target
    after = dep.stats()["fronts"][i]["forwarded_reads"]
    assert sum(after.values()) - sum(before.values()) == len(cases), after


def test_a_corrupt_chunk_answers_500_with_its_message(front: tuple[F.Deployment, dict[str, Any]], hsds_server: H.HsdsServer) -> None:
    """A stored chunk that does not decode: the DN answers 500, so does the front, naming the chunk."""
    import asyncio

    from hsds_backends.ids import chunk_key
    from hsds_backends.storage import PosixStorage
    from hsds_backends.writer import Writer

    dep, manifest = front

    async def write() -> Any:
        w = Writer(PosixStorage(hsds_server.root_dir), hsds_server.bucket, owner=hsds_server.username)
        return await w.create_dataset(f"/home/test_user1/corrupt-{dep.backend}.h5", "/d", np.arange(400, dtype="<f8").reshape(20, 20),
                                      chunks=(10, 10), filters=["shuffle", ("gzip", 4)])

    meta = asyncio.run(write())
    cid = chunk_id(meta.id, [1, 0])
    path = hsds_server.bucket_dir / chunk_key(cid)
    path.write_bytes(path.read_bytes()[:30])  # truncated
    i = dn_index(cid, 2)
    req = {"method": "GET", "target": f"/chunks/{cid}?bucket={manifest['bucket']}&select=[0:10,0:10]", "body": None, "ctype": None}
    status, ctype, body = _send(dep.front_socket(i), req)
    assert (status, _send(dep.dn_socket(i), req)[0]) == (500, 500)
    doc = json.loads(body)
    assert doc["chunk_id"] == cid and cid in doc["message"] and doc["error_type"] == "ChunkDecodeError", doc
    assert dep.stats()["fronts"][i]["data_errors"] == 1
