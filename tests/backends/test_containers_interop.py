"""The ``containers`` client against the data nodes of a REAL HSDS 1.0.2 (tests/hsds_harness.py).

The interop domain is written by h5pyd through HSDS; our client then talks to
HSDS's own DNs (unix sockets, ``server.dn_urls`` in node order): it detects
them through ``GET /info`` (``dn_protocol: auto``), sends each chunk to
``md5(chunk id)[:5] mod N`` (docs/hsds-format.md §4.5; HSDS answers 500 to a chunk
of another DN, so a wrong partition cannot pass), hyperslabs as ``GET
/chunks/{id}?select=…`` (docs/hsds-format.md §4.2) and points as binary ``POST`` (docs/hsds-format.md §4.3); the DNs
load the dataset JSON themselves from ``bucket``. Every result must be byte
identical to the numpy oracle the domain was written from.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

pytest.importorskip("hsds_backends_containers")

import hsds_backends as hb  # noqa: E402
from hsds_backends.errors import BackendError  # noqa: E402
from hsds_backends_containers.backend import ContainersBackend  # noqa: E402

try:
    import hsds_harness as H
except ImportError:  # tests/ turned into a package
    from tests import hsds_harness as H

pytestmark = pytest.mark.hsds

s_ = np.s_
HYPERSLABS: list[tuple[str, Any]] = [
    ("be_ints", None),
    ("be_ints", s_[10:95:3, 7:55:5]),
    ("be_ints", s_[[5, 1, 3], 2:40:4]),
    ("floats_fill", None),  # unwritten chunks: the DNs answer 404, we fill (docs/hsds-format.md §3.4)
    ("floats_fill", s_[30:70:3, 25:75:2]),
    ("cube_u8", s_[3:19:4, ::7, 12:40:9]),
    ("gzip_shuffle", None),
    ("lz4", s_[5:60:6, :]),
    ("nocomp", s_[3:47:2]),
    ("table", s_[100:900:7]),
    ("vlen_str", None),
    ("scalar", None),
]
POINTS = ["be_ints", "floats_fill", "cube_u8", "gzip_shuffle", "table", "vlen_str"]


@pytest.fixture(scope="module")
def hsds(hsds_server: H.HsdsServer, interop_manifest: dict[str, Any]) -> dict[str, Any]:
    cfg = {"root_dir": str(hsds_server.root_dir), "bucket_name": hsds_server.bucket}
    expected = {n: H.load_expected(interop_manifest, n) for n in interop_manifest["datasets"]}
    return {"server": hsds_server, "manifest": interop_manifest, "cfg": cfg, "expected": expected}


@pytest.fixture(scope="module")
def client(hsds: dict[str, Any], runner: asyncio.Runner) -> Iterator[tuple[hb.Reader, ContainersBackend]]:
    server = hsds["server"]
    assert len(server.dn_urls) == 2
    be = ContainersBackend({**hsds["cfg"], "dn_urls": server.dn_urls, "timeout": 20})

    async def make() -> hb.Reader:
        return hb.Reader(hsds["cfg"])

    reader = runner.run(make())
    yield reader, be
    runner.run(be.aclose())
    runner.run(reader.aclose())


def _dset(client: tuple[hb.Reader, ContainersBackend], runner: asyncio.Runner, manifest: dict[str, Any], name: str) -> Any:
    async def go() -> Any:
        return await (await client[0].open(manifest["domain"])).get(manifest["datasets"][name]["h5path"])

    return runner.run(go())


def _identical(got: np.ndarray[Any, Any], want: np.ndarray[Any, Any]) -> None:
    assert got.shape == want.shape and got.dtype == want.dtype, (got.shape, got.dtype, want.shape, want.dtype)
    if want.dtype.hasobject:
        assert list(got.ravel()) == list(want.ravel())
    else:
        assert got.tobytes() == want.tobytes()


def test_detects_real_hsds_dns(client: tuple[hb.Reader, ContainersBackend], runner: asyncio.Runner) -> None:
    be = client[1]
    runner.run(be.start())
    assert [n["protocol"] for n in be.nodes] == ["hsds", "hsds"] and all(n["up"] for n in be.nodes)
    assert not be.capabilities.query or be.protocol == "auto"


@pytest.mark.parametrize(("name", "sel"), HYPERSLABS, ids=[f"{n}-{i}" for i, (n, _) in enumerate(HYPERSLABS)])
def test_hyperslab_from_hsds_dns(
    hsds: dict[str, Any], client: tuple[hb.Reader, ContainersBackend], runner: asyncio.Runner, name: str, sel: Any
) -> None:
    dset = _dset(client, runner, hsds["manifest"], name)
    got = runner.run(dset.read(sel, backend=client[1]))
    want = hsds["expected"][name]
    want = np.asarray(want if sel is None else want[sel])
    if want.dtype.hasobject:
        want = want.astype(object)
    _identical(got, want)
    st = client[1].last_stats
    assert st is not None and st.requests == st.tasks and st.retries == 0  # one HSDS request per chunk
    assert set(st.per_node) <= set(hsds["server"].dn_urls) and sum(st.per_node.values()) == st.tasks


@pytest.mark.parametrize("name", POINTS)
def test_points_from_hsds_dns(hsds: dict[str, Any], client: tuple[hb.Reader, ContainersBackend], runner: asyncio.Runner, name: str) -> None:
    want_all = hsds["expected"][name]
    rng = np.random.default_rng(len(name))
    pts = np.stack([rng.integers(0, s, 150) for s in want_all.shape], axis=1)
    pts = np.concatenate([pts, pts[:4]])
    dset = _dset(client, runner, hsds["manifest"], name)
    got = runner.run(dset.read_points(pts, backend=client[1]))
    _identical(got, np.asarray(want_all[tuple(pts.T)]))


def test_fields_from_hsds_dns(hsds: dict[str, Any], client: tuple[hb.Reader, ContainersBackend], runner: asyncio.Runner) -> None:
    table = hsds["expected"]["table"]
    dset = _dset(client, runner, hsds["manifest"], "table")
    got = runner.run(dset.read(s_[5:990:4], fields=["station", "id"], backend=client[1]))
    assert got.dtype.names == ("station", "id") and got.dtype.itemsize == 16
    assert got["station"].tobytes() == table["station"][5:990:4].tobytes() and got["id"].tobytes() == table["id"][5:990:4].tobytes()
    # all fields reordered: HSDS would return the stored order (docs/hsds-format.md §5.4); the client reorders
    got = runner.run(dset.read(s_[:300], fields=["temp", "station", "id"], backend=client[1]))
    assert got.dtype.names == ("temp", "station", "id")
    for f in ("temp", "station", "id"):
        assert got[f].tobytes() == table[f][:300].tobytes()


def test_same_bytes_as_hsds_itself(hsds: dict[str, Any], client: tuple[hb.Reader, ContainersBackend], runner: asyncio.Runner) -> None:
    """What the SN returns for a select string (GET /datasets/{id}/value, octet-stream) = what we assemble from its DNs."""
    server, manifest = hsds["server"], hsds["manifest"]
    dset_id = manifest["datasets"]["gzip_shuffle"]["id"]
    status, _, body = server.request(
        "GET", f"/datasets/{dset_id}/value", params={"domain": manifest["domain"], "select": "[7:93:4,11:190:3]"},
        headers={"Accept": "application/octet-stream"},
    )
    assert status == 200
    got = runner.run(_dset(client, runner, manifest, "gzip_shuffle").read("[7:93:4,11:190:3]", backend=client[1]))
    assert got.tobytes() == body


def test_queries_are_refused_with_a_reason(hsds: dict[str, Any], client: tuple[hb.Reader, ContainersBackend], runner: asyncio.Runner) -> None:
    dset = _dset(client, runner, hsds["manifest"], "table")
    with pytest.raises(BackendError, match="real HSDS DN; HSDS 1.0.2 DNs return query rows without their index"):
        runner.run(dset.query("temp > 20", backend=client[1]))


def test_wrong_dn_order_is_explained(hsds: dict[str, Any], runner: asyncio.Runner, client: tuple[hb.Reader, ContainersBackend]) -> None:
    """HSDS DNs refuse chunks of other DNs with a 500 (docs/hsds-format.md §4.2); the error says what to fix."""
    server = hsds["server"]
    swapped = ContainersBackend({**hsds["cfg"], "dn_urls": list(reversed(server.dn_urls)), "dn_max_retries": 0, "timeout": 20})
    dset = _dset(client, runner, hsds["manifest"], "be_ints")
    with pytest.raises(BackendError, match="list dn_urls in node order"):
        runner.run(dset.read(None, backend=swapped))
    runner.run(swapped.aclose())
    # the right order still reads
    _identical(runner.run(dset.read(s_[::9, ::5], backend=client[1])), hsds["expected"]["be_ints"][::9, ::5])
