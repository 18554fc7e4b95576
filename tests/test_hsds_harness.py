"""Smoke test of the real-HSDS harness (tests/hsds_harness.py).

Starts HSDS 1.0.2 on unix sockets with posix storage in a tmp dir, writes
the interop domain through h5pyd, checks HSDS's key layout on disk and
that h5pyd (warm and, after a restart, cold caches) returns the expected
values.
"""

from __future__ import annotations

import json
import os
import re
import time

import numpy as np
import pytest

try:
    import hsds_harness as H
except ImportError:  # tests/ turned into a package
    from tests import hsds_harness as H

pytestmark = pytest.mark.hsds

HEX8 = "[0-9a-f]{8}"
DSET_KEY_RE = re.compile(rf"db/({HEX8}-{HEX8})/d/[0-9a-f]{{4}}-[0-9a-f]{{6}}-[0-9a-f]{{6}}/\.dataset\.json")

EXPECTED_TYPES = {
    "be_ints": {"class": "H5T_INTEGER", "base": "H5T_STD_I32BE"},
    "floats_fill": {"class": "H5T_FLOAT", "base": "H5T_IEEE_F32LE"},
    "cube_u8": {"class": "H5T_INTEGER", "base": "H5T_STD_U8LE"},
    "gzip_shuffle": {"class": "H5T_INTEGER", "base": "H5T_STD_I32LE"},
    "lz4": {"class": "H5T_FLOAT", "base": "H5T_IEEE_F64LE"},
    "nocomp": {"class": "H5T_INTEGER", "base": "H5T_STD_I16LE"},
    "scalar": {"class": "H5T_FLOAT", "base": "H5T_IEEE_F64LE"},
}


def _tcp_listen_inodes() -> set[str]:
    inodes = set()
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(name) as f:
                next(f)
                for line in f:
                    cols = line.split()
                    if cols[3] == "0A":  # LISTEN
                        inodes.add(cols[9])
        except FileNotFoundError:
            pass
    return inodes


def _socket_inodes(pid: int) -> set[str]:
    out = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        m = re.fullmatch(r"socket:\[(\d+)\]", target)
        if m:
            out.add(m.group(1))
    return out


def _norm_vlen(a: np.ndarray) -> list:
    return [x.decode("utf-8") if isinstance(x, bytes) else x for x in a.ravel()]


def _check_values(server, manifest, label):
    dom = manifest["domain"]
    names = list(manifest["datasets"])
    reads = [(manifest["datasets"][n]["h5path"], "d[()]") for n in names]
    reads += [
        ("/be_ints", "d[10:95:3, 7:55:5]"),
        ("/cube_u8", "d[3:19:4, ::7, 12:40:9]"),
        ("/floats_fill", "d[30:70:3, 25:75:2]"),
        ("/table", "d.fields(['id','temp'])[:]"),
        ("/table", "d.read_where('temp > 20')"),
        ("/gzip_shuffle", "d[5:97:7, 3:199:11]"),
    ]
    got = H.h5pyd_read_many(server, dom, reads)
    exp = {n: H.load_expected(manifest, n) for n in names}
    for n, g in zip(names, got[: len(names)]):
        e = exp[n]
        if e.dtype == object:
            assert g.shape == e.shape, (label, n)
            assert _norm_vlen(g) == list(e.ravel()), (label, n)
        else:
            assert g.dtype == e.dtype, (label, n, g.dtype, e.dtype)
            assert g.shape == e.shape, (label, n)
            assert g.tobytes() == e.tobytes(), (label, n)
    be, cube, ff, fields, where, gz = got[len(names):]
    assert be.tobytes() == exp["be_ints"][10:95:3, 7:55:5].tobytes()
    assert np.array_equal(cube, exp["cube_u8"][3:19:4, ::7, 12:40:9])
    assert np.array_equal(ff, exp["floats_fill"][30:70:3, 25:75:2])
    assert (ff == -1.5).any() and (ff != -1.5).any()
    t = exp["table"]
    assert fields.dtype.names == ("id", "temp")
    assert np.array_equal(fields["id"], t["id"]) and np.array_equal(fields["temp"], t["temp"])
    sel = t[t["temp"] > 20]
    assert len(sel) > 0
    assert where.dtype == t.dtype and where.tobytes() == sel.tobytes()
    assert np.array_equal(gz, exp["gzip_shuffle"][5:97:7, 3:199:11])


def test_hsds_harness_smoke(tmp_path):
    t0 = time.monotonic()
    venv = H.ensure_hsds_venv()
    assert (venv / "bin" / "hsds").exists()

    root = tmp_path / "hsroot"
    root.mkdir()
    with pytest.raises(ValueError):
        H.HsdsServer("relative/dir")
    with pytest.raises(ValueError):
        H.HsdsServer(tmp_path / "missing")

    server = H.HsdsServer(root, dn_count=2)
    with server:
        # --- unix sockets only ---
        assert server.endpoint.startswith("http+unix://%2F") and server.endpoint.endswith("sn_1.sock")
        assert H.socket_path_from_url(server.endpoint) == str(server.sn_socket)
        assert [H.socket_path_from_url(u) for u in server.dn_urls] == [str(p) for p in server.dn_sockets]
        about = server.about()
        assert about["state"] == "READY" and about["hsds_version"] == "1.0.2"
        assert about["node_count"] == 2
        assert sorted(about["dn_urls"]) == sorted(server.dn_urls)
        status, _, body = server.request("GET", "/info", node=0)  # DN directly, no auth
        assert status == 200 and json.loads(body)["node"]["type"] == "dn"
        pids = [server.pids["hsds"], *server.pids["nodes"]]
        assert len(pids) == 1 + 1 + 2
        listening = _tcp_listen_inodes()
        for pid in pids:
            assert not (_socket_inodes(pid) & listening), f"pid {pid} listens on TCP"

        # --- write the interop domain ---
        manifest = H.write_interop_domain(server, out_dir=tmp_path / "expected")
        assert (tmp_path / "expected" / "manifest.json").exists()
        bucket_dir = root / "hsdstest"
        assert manifest["bucket"] == "hsdstest"
        for folder in ("home", "home/test_user1"):
            fj = json.loads((bucket_dir / folder / ".domain.json").read_text())
            assert "root" not in fj and fj["owner"] == "test_user1"
        dom_json = bucket_dir / "home/test_user1/interop.h5/.domain.json"
        assert str(dom_json) == manifest["domain_json_path"]
        root_id = json.loads(dom_json.read_text())["root"]
        assert root_id == manifest["root_id"]
        h = root_id[2:].replace("-", "")
        root16 = f"{h[:8]}-{h[8:16]}"
        assert (bucket_dir / "db" / root16 / ".group.json").exists()
        group = json.loads((bucket_dir / "db" / root16 / ".group.json").read_text())
        assert set(group["links"]) == set(manifest["datasets"])

        for name, info in manifest["datasets"].items():
            rel = os.path.relpath(info["dataset_json_path"], bucket_dir)
            m = DSET_KEY_RE.fullmatch(rel)
            assert m and m.group(1) == root16, rel
            dj = json.loads(open(info["dataset_json_path"]).read())
            assert dj["id"] == info["id"] and dj["root"] == root_id
            if name in EXPECTED_TYPES:
                assert dj["type"] == EXPECTED_TYPES[name], name
            # what HSDS 1.0.2 stores: no top-level layout, requested chunk dims kept
            if info["requested_chunks"] is not None:
                assert info["chunk_dims"] == info["requested_chunks"], name
            # every expected chunk object exists, and nothing else
            assert info["chunk_keys"] == info["expected_chunk_keys"], name
            for k in info["chunk_keys"]:
                assert re.fullmatch(r"\d+(_\d+)*", k)
                assert k.count("_") == max(len(info["shape"]), 1) - 1

        ds = manifest["datasets"]
        assert ds["table"]["type"]["class"] == "H5T_COMPOUND"
        assert [f["name"] for f in ds["table"]["type"]["fields"]] == ["id", "temp", "station"]
        assert ds["vlen_str"]["type"]["length"] == "H5T_VARIABLE"
        assert ds["floats_fill"]["dataset_json"]["creationProperties"]["fillValue"] == -1.5
        assert ds["floats_fill"]["chunk_keys"] == ["0_0", "0_1", "2_1", "3_3"]
        assert len(ds["cube_u8"]["chunk_keys"]) == 3 * 3 * 4
        assert {f["name"] for f in ds["gzip_shuffle"]["filters"]} == {"shuffle", "gzip"}
        assert [f["name"] for f in ds["lz4"]["filters"]] == ["lz4"]
        assert ds["scalar"]["shape"] == [] and ds["scalar"]["chunk_keys"] == ["0"]
        # blosc container headers (docs/hsds-format.md §3.3)
        d_gz = os.path.dirname(ds["gzip_shuffle"]["dataset_json_path"])
        assert open(os.path.join(d_gz, "0_0"), "rb").read(4) == bytes([2, 1, 0x61, 1])
        d_lz = os.path.dirname(ds["lz4"]["dataset_json_path"])
        assert open(os.path.join(d_lz, "0_0"), "rb").read(4)[:1] == b"\x02"
        # uncompressed chunks are full-size tobytes() of the declared dtype
        d_be = os.path.dirname(ds["be_ints"]["dataset_json_path"])
        be = H.load_expected(manifest, "be_ints")
        assert open(os.path.join(d_be, "0_0"), "rb").read() == be[:20, :16].tobytes()

        # --- h5pyd reads: warm DN caches, then cold after a restart ---
        _check_values(server, manifest, "warm")
        old_pids = pids
        server.restart()
        assert all(not os.path.exists(f"/proc/{p}") or open(f"/proc/{p}/stat").read().split()[2] in "ZX"
                   for p in old_pids)
        _check_values(server, manifest, "cold")
        sock_dir = server.socket_dir
        new_pids = [server.pids["hsds"], *server.pids["nodes"]]

    # --- clean stop ---
    assert not server.running
    for pid in new_pids:
        assert not os.path.exists(f"/proc/{pid}") or open(f"/proc/{pid}/stat").read().split()[2] in "ZX"
    assert not sock_dir.exists()  # our temp socket dir is removed
    assert time.monotonic() - t0 < 60
