"""The Python API (sync and async) and the ``hsds-backends`` command."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

import hsds_backends as hb
from hsds_backends.cli import cli
from hsds_backends.storage import PosixStorage
from hsds_backends.writer import Writer

DOMAIN = "/home/test/api.h5"
TABLE = np.dtype([("id", "<i8"), ("temp", "<f4"), ("station", "S8")])


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("api")

    async def write() -> None:
        w = Writer(PosixStorage(root), "hsdstest")
        await w.create_dataset(DOMAIN, "/grid", np.arange(64 * 48, dtype="<f4").reshape(64, 48), chunks=(16, 16), filters=["shuffle", "gzip"], fillvalue=-9, skip_chunk=lambda i: i == (0, 1))
        t = np.zeros(500, dtype=TABLE)
        t["id"] = np.arange(500)
        t["temp"] = (np.arange(500) % 40).astype("<f4")
        t["station"] = [b"S%d" % (i % 3) for i in range(500)]
        await w.create_dataset(DOMAIN, "/group/table", t, chunks=(64,))
        v = np.empty(5, dtype=hb.vlen_dtype(str))
        v[:] = ["x", "", "yy", "zzz", "é"]
        await w.create_dataset(DOMAIN, "/vlen", v, chunks=(2,))

    asyncio.run(write())
    return root


def _grid() -> np.ndarray[Any, Any]:
    g = np.arange(64 * 48, dtype="<f4").reshape(64, 48)
    g[0:16, 16:32] = -9
    return g


def _table() -> np.ndarray[Any, Any]:
    t = np.zeros(500, dtype=TABLE)
    t["id"] = np.arange(500)
    t["temp"] = (np.arange(500) % 40).astype("<f4")
    t["station"] = [b"S%d" % (i % 3) for i in range(500)]
    return t


# ------------------------------------------------------------------- sync API


def test_sync_api_reads(root: Path) -> None:
    with hb.open_domain(DOMAIN, root_dir=str(root)) as dom:
        g = dom["/grid"]
        assert (g.shape, g.dtype, g.chunks, g.fillvalue) == ((64, 48), np.dtype("<f4"), (16, 16), np.float32(-9))
        assert repr(g) == "<Dataset '/grid' shape=(64, 48) dtype=float32 chunks=(16, 16)>"
        np.testing.assert_array_equal(g[...], _grid())
        np.testing.assert_array_equal(g[3:60:7, -5], _grid()[3:60:7, -5])
        np.testing.assert_array_equal(g.read("[3:60:7, 43]"), _grid()[3:60:7, 43:44])
        np.testing.assert_array_equal(g.read_points([[0, 17], [63, 47]]), np.array([-9, 63 * 48 + 47], dtype="<f4"))
        t = dom.get("group/table")
        rows = t.query("temp > 37", limit=4)
        assert rows["index"].tolist() == [38, 39, 78, 79]
        assert rows.dtype.names == ("index", "id", "temp", "station")
        assert dom["/vlen"][1:4].tolist() == [b"", b"yy", b"zzz"]  # bytes from d[key], as h5py and h5pyd
        assert dom["/vlen"].asstr()[1:4].tolist() == ["", "yy", "zzz"] == dom["/vlen"].read(np.s_[1:4]).tolist()


def test_sync_api_string_index_is_refused(root: Path) -> None:
    with hb.open_domain(DOMAIN, root_dir=str(root)) as dom:
        # h5py reads a string as a field name (ValueError on a type without fields); so do we, with a hint
        with pytest.raises(hb.FieldError, match=r"for an HSDS select string use \.read\('\[0:3\]'\)") as e:
            dom["/grid"]["[0:3]"]
        assert isinstance(e.value, ValueError)
        with pytest.raises(ValueError, match=r"field name\(s\) \['temp'\] given, but the dataset's type float32 is not compound"):
            dom["/grid"]["temp"]


def test_fields_follow_h5pys_single_name_rule(root: Path, tmp_path: Path) -> None:
    t = _table()
    with hb.open_domain(DOMAIN, root_dir=str(root)) as dom:
        d = dom["/group/table"]
        plain = d["temp"]
        assert plain.dtype == np.dtype("<f4") and plain.dtype.names is None and plain.tobytes() == t["temp"].tobytes()
        assert d[10:20, "temp"].tobytes() == t["temp"][10:20].tobytes()
        assert d.fields("temp")[5:9].tobytes() == t["temp"][5:9].tobytes()
        assert d.read(np.s_[0:4], fields="id").tolist() == [0, 1, 2, 3]
        two = d[["id", "temp"]]
        assert two.dtype.names == ("id", "temp") and two["temp"].tobytes() == t["temp"].tobytes()
        assert d[0:3, "id", "temp"].dtype.names == ("id", "temp")
        assert d.fields(["temp"])[0:2].dtype.names == ("temp",)  # a list keeps the structure
        assert d.read_points(np.array([[3], [7]]), fields="temp").tolist() == [3.0, 7.0]
        with pytest.raises(hb.FieldError, match="nope"):
            d["nope"]
    out = tmp_path / "f.npy"
    r = _invoke("read", DOMAIN, "/group/table", "--root-dir", str(root), "--select", "[0:5]", "--fields", "temp", "-o", str(out))
    assert r.exit_code == 0, r.output
    assert np.load(out).dtype == np.dtype("<f4") and np.load(out).tolist() == t["temp"][:5].tolist()
    r = _invoke("read", DOMAIN, "/group/table", "--root-dir", str(root), "--select", "[0:5]", "--fields", "temp,id", "-o", str(out))
    assert r.exit_code == 0, r.output
    assert np.load(out).dtype.names == ("temp", "id")


def test_unknown_domain_and_dataset(root: Path) -> None:
    with pytest.raises(hb.DomainNotFoundError, match=r"domain '/home/test/nope.h5' not found in bucket 'hsdstest'"):
        hb.open_domain("/home/test/nope.h5", root_dir=str(root))
    with pytest.raises(hb.DomainNotFoundError, match="is a folder, not a domain"):
        hb.open_domain("/home/test", root_dir=str(root))
    with hb.open_domain(DOMAIN, root_dir=str(root)) as dom:
        # dom[path] is h5py's File[path]: a KeyError naming the missing link; groups are found too
        with pytest.raises(hb.LinkNotFoundError, match=r"no link 'tabel' in group '/group' .* links there: \['table'\]") as e:
            dom["/group/tabel"]
        assert isinstance(e.value, KeyError)
        assert isinstance(dom["/group"], hb.Group) and dom.get("/group/tabel") is None
        with pytest.raises(hb.DatasetNotFoundError, match=r"'/group' in domain .* is not a dataset"):
            dom.dataset("/group")


def test_an_object_that_is_not_a_json_object_is_a_clear_error(tmp_path: Path) -> None:
    from hsds_backends.ids import object_key

    async def write() -> str:
        meta = await Writer(PosixStorage(tmp_path), "hsdstest").create_dataset(DOMAIN, "/d", np.arange(4), chunks=(2,))
        return meta.id

    did = asyncio.run(write())
    (tmp_path / "hsdstest" / object_key(did)).write_text("[1, 2]")  # a dataset JSON that is a list
    with hb.open_domain(DOMAIN, root_dir=str(tmp_path)) as dom:
        with pytest.raises(hb.HsdsBackendsError, match=rf"object {did} of domain '{DOMAIN}' is not a JSON object \(got list\)"):
            dom["/d"]


def test_bad_paths_are_rejected(root: Path) -> None:
    with pytest.raises(hb.StoragePathError, match=r"domain '/home/\.\./etc' contains"):
        hb.open_domain("/home/../etc", root_dir=str(root))
    with pytest.raises(hb.StoragePathError, match="bucket '../x' is not a valid bucket name"):
        hb.open_domain(DOMAIN, root_dir=str(root), bucket="../x")
    with pytest.raises(hb.StoragePathError, match="escapes|contains"):
        PosixStorage(root).path("hsdstest", "a/../../b")


def test_errors_are_rooted_and_valueerror_only_where_h5py_raises_it() -> None:
    import hsds_backends.errors as e

    for name in e.__all__:
        cls = getattr(e, name)
        assert issubclass(cls, e.HsdsBackendsError)
        # h5py raises ValueError for a bad step, a rank mismatch, slicing a scalar and a bad field name
        assert issubclass(cls, ValueError) == (name in ("SelectionValueError", "FieldError")), name
    assert issubclass(e.SelectionTypeError, TypeError) and issubclass(e.SelectionError, IndexError)


async def test_async_api_and_stats(root: Path) -> None:
    async with hb.Reader({"root_dir": str(root), "bucket_name": "hsdstest"}) as reader:
        dom = await reader.open(DOMAIN)
        g = await dom.get("/grid")
        res = await g.read_result(np.s_[0:32, 0:32])
        np.testing.assert_array_equal(res.data, _grid()[0:32, 0:32])
        s = res.stats
        assert (s.backend, s.kind, s.chunks, s.missing) == ("inline", "hyperslab", 4, 1)
        assert s.bytes_returned == 3 * 16 * 16 * 4
        assert s.reason.startswith("auto: inline fastest at ")
        t = await dom.get("/group/table")
        rows = await t.query("station == b'S1'", select="[100:200:5]", fields="temp")
        exp = np.arange(100, 200, 5)
        exp = exp[exp % 3 == 1]
        assert rows["index"].tolist() == exp.tolist()
        assert rows.dtype.names == ("index", "temp")


# ------------------------------------------------------------------------ CLI


def _invoke(*args: str) -> Any:
    r = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    return r


def test_cli_read_select(root: Path, tmp_path: Path) -> None:
    out = tmp_path / "o.npy"
    r = _invoke("read", DOMAIN, "/grid", "--root-dir", str(root), "--select", "[0:64:3, 5:40]", "-o", str(out), "--explain", "--stats")
    assert r.exit_code == 0, r.output
    np.testing.assert_array_equal(np.load(out), _grid()[0:64:3, 5:40])
    assert "backend: inline (auto: inline fastest at" in r.stderr
    stats = json.loads(r.stderr.strip().splitlines()[-1])
    assert stats["backend"] == "inline" and stats["chunks"] == 12 and stats["missing"] == 1


def test_backend_auto_by_name_is_the_same_as_none(root: Path, tmp_path: Path) -> None:
    """``auto`` is the documented default of config ``backend``: accepted wherever a backend name is."""
    out = tmp_path / "o.npy"
    r = _invoke("read", DOMAIN, "/grid", "--root-dir", str(root), "--select", "[0:16, 0:16]", "--backend", "auto", "-o", str(out), "--explain")
    assert r.exit_code == 0, r.output
    np.testing.assert_array_equal(np.load(out), _grid()[0:16, 0:16])
    assert "backend: inline (auto: inline fastest at" in r.stderr
    with hb.open_domain(DOMAIN, root_dir=str(root)) as dom:
        res = dom["/grid"].read_result(np.s_[0:16, 0:16], backend="AUTO")
        assert res.stats.reason.startswith("auto: ") and res.data.tobytes() == _grid()[0:16, 0:16].tobytes()


def test_cli_read_points_query_fields(root: Path, tmp_path: Path) -> None:
    pts = tmp_path / "p.npy"
    np.save(pts, np.array([[5, 5], [0, 20], [63, 0]]))
    out = tmp_path / "v.npy"
    assert _invoke("read", DOMAIN, "/grid", "--root-dir", str(root), "--points", str(pts), "-o", str(out)).exit_code == 0
    np.testing.assert_array_equal(np.load(out), _grid()[[5, 0, 63], [5, 20, 0]])
    r = _invoke("read", DOMAIN, "/group/table", "--root-dir", str(root), "--query", "temp > 38 AND id < 200", "--limit", "3", "--fields", "station,id", "-o", str(out))
    assert r.exit_code == 0, r.output
    rows = np.load(out)
    assert rows.dtype.names == ("index", "station", "id")
    assert rows["index"].tolist() == [39, 79, 119]
    assert rows["station"].tolist() == [b"S0", b"S1", b"S2"]


def test_cli_errors_are_messages_not_tracebacks(root: Path, tmp_path: Path) -> None:
    out = str(tmp_path / "x.npy")
    cases = [
        (["--select", "[0:65, :]"], "bad select '[0:65, :]': 0:65 is out of range for dimension 0 (extent 64)"),
        (["--query", "temp > 3"], "query 'temp > 3' needs a 1-d compound (table) dataset"),
        (["--fields", "a"], "fields ['a'] given, but the dataset type float32 is not a compound"),
        (["--backend", "lamda"], "unknown backend 'lamda'; installed backends: ["),
    ]
    for extra, msg in cases:
        r = CliRunner().invoke(cli, ["read", DOMAIN, "/grid", "--root-dir", str(root), "-o", out, *extra])
        assert r.exit_code == 1, (extra, r.output)
        assert msg in r.output, (extra, r.output)
        assert "Traceback" not in r.output
    r = CliRunner().invoke(cli, ["read", DOMAIN, "/nope", "--root-dir", str(root), "-o", out])
    assert r.exit_code == 1 and "no link 'nope' in group '/'" in r.output


def test_cli_backends_json() -> None:
    r = _invoke("backends", "--json")
    data = json.loads(r.output)
    inline = [d for d in data if d["name"] == "inline"][0]
    assert inline["distribution"] == "hsds-backends"
    assert inline["capabilities"]["query"] is True
    assert inline["capabilities"]["storage_kinds"] is None  # every storage the core reads
    lam = [d for d in data if d["name"] == "lambda"]
    if lam:  # the function reads S3 (and posix on its local runtime), never Azure
        assert lam[0]["capabilities"]["storage_kinds"] == ["posix", "s3"]
    r = _invoke("backends")
    assert r.output.startswith("inline") or "inline " in r.output
    if lam:
        (line,) = [ln for ln in r.output.splitlines() if ln.startswith("lambda ")]
        assert "concurrency=1000 storage=posix,s3  the chunk_read" in line


def test_cli_demo_runs_and_verifies(tmp_path: Path) -> None:
    r = _invoke("demo", "--dir", str(tmp_path / "d"), "--size", "512", "--backend", "inline")
    assert r.exit_code == 0, r.output
    assert "all results byte-identical to the numpy oracle" in r.output
    lines = [ln for ln in r.output.splitlines() if ln.startswith("inline ")]
    assert len(lines) == 5 and all(ln.endswith("yes") for ln in lines)
    assert os.path.isfile(tmp_path / "d" / "hsdstest" / "home" / "demo" / "sample.h5" / ".domain.json")


def test_console_script_installed(root: Path, tmp_path: Path) -> None:
    exe = Path(sys.executable).parent / "hsds-backends"
    out = tmp_path / "o.npy"
    r = subprocess.run([str(exe), "read", DOMAIN, "/vlen", "--root-dir", str(root), "-o", str(out)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert np.load(out, allow_pickle=True).tolist() == ["x", "", "yy", "zzz", "é"]


def test_read_never_writes(root: Path, tmp_path: Path) -> None:
    def snapshot() -> dict[str, tuple[int, int]]:
        out = {}
        for dirpath, _, files in os.walk(root):
            for f in files:
                st = os.stat(os.path.join(dirpath, f))
                out[os.path.join(dirpath, f)] = (st.st_size, st.st_mtime_ns)
        return out

    before = snapshot()
    with hb.open_domain(DOMAIN, root_dir=str(root)) as dom:
        dom["/grid"][...]
        dom["/group/table"].query("temp > 3")
        with pytest.raises(hb.SelectionError):
            dom["/grid"].read("[0:100, 0]")
    _invoke("read", DOMAIN, "/grid", "--root-dir", str(root), "-o", str(tmp_path / "x.npy"))
    assert snapshot() == before
