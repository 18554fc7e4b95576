"""Write with the Writer, read with the public API, compare to numpy byte for byte.

Covers docs/hsds-format.md §1.2 (keys), §1.4 (partitions), §2.2 (types), §2.3 (layout styles),
§2.4 (fill values, filters), §3 (chunk bytes, missing chunks, reference layouts).
"""

from __future__ import annotations

import asyncio
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import hsds_backends as hb
from hsds_backends import vlen_dtype
from hsds_backends.dataset import DatasetMeta
from hsds_backends.dtypes import vlen_of
from hsds_backends.errors import (
    ChunkDecodeError,
    DatasetJsonError,
    DatasetNotFoundError,
    DomainNotFoundError,
    FieldError,
    HsdsBackendsError,
    QueryError,
    SelectionError,
    StoragePathError,
)
from hsds_backends.ids import chunk_key, object_key
from hsds_backends.storage import PosixStorage
from hsds_backends.writer import FILTER_NAMES, Writer, normalize_filters

BUCKET = "hsdstest"
DOMAIN = "/home/test_user1/rt.h5"
ARANGE = np.arange(20000, dtype="<i4").reshape(100, 200)
RT = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def cfg(root: str | Path) -> dict[str, Any]:
    return {"root_dir": str(root), "bucket_name": BUCKET, "backend": "inline", "max_workers": 2}


def write(root: str | Path, fn: Callable[[Writer], Any]) -> Any:
    async def go() -> Any:
        return await fn(Writer(PosixStorage(root), BUCKET))

    return asyncio.run(go())


def write_linked(
    root: Path, name: str, data: Any, file_key: str, chunks: tuple[int, ...], filters: Any, fillvalue: Any, skip: tuple[int, ...]
) -> Any:
    """Write ``data`` as a linked (``H5D_CHUNKED_REF``) dataset whose chunk ``skip`` is never written."""
    return write(
        root,
        lambda w: w.create_linked_dataset(
            DOMAIN, name, data, file_key=file_key, chunks=chunks, filters=filters, fillvalue=fillvalue, skip_chunk=lambda i: i == skip
        ),
    )


def snapshot(root: str | Path) -> dict[str, tuple[int, int]]:
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            st_ = os.stat(p)
            out[os.path.relpath(p, root)] = (st_.st_mtime_ns, st_.st_size if name in filenames else -1)
    return out


def orthogonal(arr: np.ndarray, key: tuple[Any, ...]) -> np.ndarray:
    """Orthogonal (outer) indexing oracle: ints drop dims, lists select per dim."""
    idx = []
    drop = []
    for k, n in zip(key, arr.shape, strict=False):
        if isinstance(k, int):
            idx.append(np.array([k % n]))
            drop.append(True)
        elif isinstance(k, slice):
            idx.append(np.arange(n)[k])
            drop.append(False)
        else:
            idx.append(np.asarray(k) % n if len(k) else np.asarray(k, dtype=np.intp))
            drop.append(False)
    out = arr[np.ix_(*idx)] if idx else arr
    return out.reshape(tuple(s for s, d in zip(out.shape, drop, strict=False) if not d))


def assert_same(got: np.ndarray, want: np.ndarray) -> None:
    assert got.shape == want.shape
    assert got.dtype == want.dtype
    if want.dtype.hasobject:
        assert vlen_of(got.dtype) == vlen_of(want.dtype) or want.dtype.names is not None
        for g, w in zip(got.reshape(-1), want.reshape(-1), strict=False):
            if want.dtype.names is not None:
                for name in want.dtype.names:
                    _eq(g[name], w[name])
            else:
                _eq(g, w)
    else:
        assert got.tobytes() == want.tobytes()


def _eq(g: Any, w: Any) -> None:
    if isinstance(w, np.ndarray):
        assert isinstance(g, np.ndarray) and g.dtype == w.dtype and g.tobytes() == w.tobytes()
    else:
        assert type(g) is type(w) and g == w


# --------------------------------------------------------------------------- hypothesis round trip

S = vlen_dtype(str)
B = vlen_dtype(bytes)
DTYPES = [
    np.dtype("<i1"),
    np.dtype(">i2"),
    np.dtype("<u4"),
    np.dtype(">u8"),
    np.dtype("<f2"),
    np.dtype(">f4"),
    np.dtype("<f8"),
    np.dtype("S7"),
    np.dtype("V3"),
    np.dtype("?"),
    np.dtype([("a", ">i4"), ("b", "S3"), ("c", "<f8")]),
    np.dtype([("x", "u1"), ("inner", [("y", "<i2"), ("z", ">f4")])]),
    S,
    B,
    vlen_dtype("<i4"),
    np.dtype([("id", "<i8"), ("name", S), ("v", vlen_dtype(">i2"))]),
]
FILTERS = [
    [],
    ["gzip"],
    ["shuffle", ("gzip", 9)],
    ["lz4"],
    ["blosclz"],
    ["lz4hc"],
    ["zstd"],
    ["shuffle"],
    ["bitshuffle"],
    ["bitshuffle", "lz4"],
    ["fletcher32", "gzip"],
    ["shuffle", "zstd"],
    ["deflate"],
]


def random_array(dt: np.dtype[Any], shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    n = int(np.prod(shape))
    if dt.hasobject and dt.names is None:
        out = np.empty(n, dtype=dt)
        tag = vlen_of(dt)
        for i in range(n):
            k = int(rng.integers(0, 6))
            if tag is str:
                out[i] = "".join(rng.choice(list("aé€z0 "), k))
            elif tag is bytes:
                out[i] = rng.integers(0, 256, k, dtype=np.uint8).tobytes()
            else:
                out[i] = rng.integers(-100, 100, k).astype(tag)
        return out.reshape(shape)
    if dt.names is not None and dt.hasobject:
        out = np.empty(n, dtype=dt)
        for i in range(n):
            out[i] = (
                int(rng.integers(-5, 5)),
                "s" * int(rng.integers(0, 4)),
                rng.integers(0, 9, int(rng.integers(0, 3))).astype(">i2"),
            )
        return out.reshape(shape)
    raw = rng.integers(0, 256, n * dt.itemsize, dtype=np.uint8)
    arr = np.frombuffer(raw.tobytes(), dtype=dt).copy()
    if dt.kind == "b":
        arr = (raw[:n] % 2).astype(bool)
    elif dt.kind == "f":
        arr = rng.normal(0, 100, n).astype(dt)
    elif dt.names is not None:
        for name in dt.names:
            sub = dt.fields[name][0]
            if sub.kind == "f":
                arr[name] = rng.normal(0, 10, n).astype(sub)
            elif sub.names is not None and "z" in sub.names:
                arr[name]["z"] = rng.normal(0, 10, n).astype(">f4")
    return arr.reshape(shape)


def fill_for(dt: np.dtype[Any], rng: np.random.Generator) -> Any:
    if dt.hasobject:
        return None
    one = random_array(dt, (1,), rng)
    return one[0]


@st.composite
def case(draw: st.DrawFn) -> dict[str, Any]:
    dt = draw(st.sampled_from(DTYPES))
    rank = draw(st.integers(1, 3))
    shape = tuple(draw(st.integers(1, 9)) for _ in range(rank))
    chunks = tuple(draw(st.integers(1, s + 3)) for s in shape)
    filters = draw(st.sampled_from(FILTERS))
    seed = draw(st.integers(0, 2**32 - 1))
    use_fill = draw(st.booleans())
    skip_mod = draw(st.sampled_from([0, 2, 3]))
    style = draw(st.sampled_from(["master", "1.0.2"]))
    partitions = draw(st.sampled_from([None, 1, 3]))
    key = []
    for s in shape:
        kind = draw(st.sampled_from(["slice", "int", "list", "all"]))
        if kind == "slice":
            a = draw(st.integers(-s, s))
            b = draw(st.integers(-s, s + 2))
            key.append(slice(a, b, draw(st.integers(1, 4))))
        elif kind == "int":
            key.append(draw(st.integers(-s, s - 1)))
        elif kind == "list":
            key.append(draw(st.lists(st.integers(-s, s - 1), min_size=1, max_size=4)))
        else:
            key.append(slice(None))
    return {
        "dtype": dt,
        "shape": shape,
        "chunks": chunks,
        "filters": filters,
        "seed": seed,
        "use_fill": use_fill,
        "skip_mod": skip_mod,
        "style": style,
        "partitions": partitions,
        "key": tuple(key),
    }


@RT
@given(case())
def test_round_trip_property(c: dict[str, Any]) -> None:
    rng = np.random.default_rng(c["seed"])
    dt, shape, chunks = c["dtype"], c["shape"], c["chunks"]
    data = random_array(dt, shape, rng)
    fill = fill_for(dt, rng) if c["use_fill"] else None
    skip = (lambda i: sum(i) % c["skip_mod"] == 0) if c["skip_mod"] else None
    with tempfile.TemporaryDirectory() as root:
        meta: DatasetMeta = write(
            root,
            lambda w: w.create_dataset(
                DOMAIN,
                "/g/d",
                data,
                chunks=chunks,
                filters=c["filters"],
                fillvalue=fill,
                skip_chunk=skip,
                layout_style=c["style"],
                partition_count=c["partitions"],
            ),
        )
        # oracle: skipped chunks read as fill (or zeros / empty vlen)
        expected = data.copy()
        if skip is not None:
            fe = meta.fill_element
            for index in np.ndindex(*meta.chunk_grid):
                if skip(index):
                    region = tuple(slice(i * ch, (i + 1) * ch) for i, ch in zip(index, chunks, strict=False))
                    if dt.hasobject:
                        for pos in np.ndindex(*expected[region].shape):
                            expected[region][pos] = meta.fill_element[()] if dt.names is None else fe[()]
                    else:
                        expected[region] = fe[()] if dt.names is None else fe
        before = snapshot(root)
        with hb.open_domain(DOMAIN, config=cfg(root)) as dom:
            dset = dom["/g/d"]
            assert dset.shape == shape and dset.chunks == chunks
            assert dset.dtype == dt
            assert_same(dset.read(), expected)  # read(): vlen strings as str (d[...] gives bytes, as h5py)
            assert_same(dset.read(c["key"]), orthogonal(expected, c["key"]))  # read(): lists in any order, outer product
            pts = [tuple(int(rng.integers(0, s)) for s in shape) for _ in range(5)]
            assert_same(
                dset.read_points(pts),
                np.array([expected[p] for p in pts], dtype=dt) if not dt.hasobject else _obj_points(expected, pts),
            )
        assert snapshot(root) == before, "a read never writes"


def _obj_points(expected: np.ndarray, pts: list[tuple[int, ...]]) -> np.ndarray:
    out = np.empty(len(pts), dtype=expected.dtype)
    for i, p in enumerate(pts):
        out[i] = expected[p]
    return out


# --------------------------------------------------------------------------- specific round trips


@pytest.mark.parametrize("style", ["master", "1.0.2"])
def test_layout_styles_on_disk(tmp_path: Path, style: str) -> None:
    meta = write(
        tmp_path,
        lambda w: w.create_dataset(
            DOMAIN, "/d", ARANGE, chunks=(40, 50), filters=["shuffle", ("gzip", 6)], layout_style=style
        ),
    )
    dj = json.loads((tmp_path / BUCKET / object_key(meta.id)).read_text())
    assert dj["creationProperties"]["layout"] == {"class": "H5D_CHUNKED", "dims": [40, 50]}
    if style == "master":
        assert dj["layout"] == {"class": "H5D_CHUNKED", "dims": [40, 50]}
    else:
        assert "layout" not in dj  # §2.3 [1.0.2 differs]
    keys = sorted(p.name for p in (tmp_path / BUCKET / chunk_key(meta.chunk_id((0, 0)))).parent.iterdir())
    assert keys == sorted([".dataset.json"] + [f"{i}_{j}" for i in range(3) for j in range(4)])
    with hb.open_domain(DOMAIN, root_dir=str(tmp_path), bucket=BUCKET, backend="inline") as dom:
        d = dom["/d"]
        assert d.chunks == (40, 50)
        np.testing.assert_array_equal(d[10:95:3, 7:180:5], ARANGE[10:95:3, 7:180:5])  # §7 verified strided read
        assert d.read("[40:42,100:103]").ravel().tolist() == [8100, 8101, 8102, 8300, 8301, 8302]
        assert d.read_points([[40, 100], [79, 149], [41, 101]]).tolist() == [8100, 15949, 8301]


def test_master_top_level_dims_win_on_read(tmp_path: Path) -> None:
    # §2.3 verified on master: requested (40,50) kept in creationProperties, chunks cut at top-level (100,200)
    meta = write(tmp_path, lambda w: w.create_dataset(DOMAIN, "/d", ARANGE, chunks=(100, 200), filters=["gzip"]))
    path = tmp_path / BUCKET / object_key(meta.id)
    dj = json.loads(path.read_text())
    dj["creationProperties"]["layout"]["dims"] = [40, 50]
    path.write_text(json.dumps(dj))
    with hb.open_domain(DOMAIN, config=cfg(tmp_path)) as dom:
        d = dom["/d"]
        assert d.chunks == (100, 200)
        np.testing.assert_array_equal(d[...], ARANGE)


def test_partition_count_keys_and_read(tmp_path: Path) -> None:
    meta = write(tmp_path, lambda w: w.create_dataset(DOMAIN, "/d", ARANGE, chunks=(40, 50), partition_count=4))
    folder = tmp_path / BUCKET / Path(object_key(meta.id)).parent
    parts = sorted(p.name for p in folder.iterdir() if p.is_dir())
    want = sorted({f"p{(i * 29 + j * 31) % 4}" for i in range(3) for j in range(4)})  # §1.4
    assert parts == want
    assert (folder / "p1" / "3_4").exists() is False  # 3_4 does not exist in a 3x4 grid
    assert (folder / f"p{(1 * 29 + 2 * 31) % 4}" / "1_2").exists()
    with hb.open_domain(DOMAIN, config=cfg(tmp_path)) as dom:
        np.testing.assert_array_equal(dom["/d"][...], ARANGE)


def test_linked_chunked_ref_with_gzip_shuffle_fletcher32(tmp_path: Path) -> None:
    data = (np.arange(60 * 70) / 7).astype(">f4").reshape(60, 70)
    meta = write_linked(
        tmp_path, "/ref", data, "files/linked.h5", (16, 32), ["shuffle", ("gzip", 5), "fletcher32"], -2.0, (1, 1)
    )
    assert meta.layout_class == "H5D_CHUNKED_REF"
    dj = json.loads((tmp_path / BUCKET / object_key(meta.id)).read_text())
    lay = dj["creationProperties"]["layout"]
    assert (
        lay["class"] == "H5D_CHUNKED_REF" and lay["file_uri"] == f"{BUCKET}/files/linked.h5" and lay["dims"] == [16, 32]
    )
    assert "1_1" not in lay["chunks"] and len(lay["chunks"]) == 4 * 3 - 1
    assert dj["layout"] == {"class": "H5D_CHUNKED", "dims": [16, 32]}
    expected = data.copy()
    expected[16:32, 32:64] = -2.0
    with hb.open_domain(DOMAIN, config=cfg(tmp_path)) as dom:
        d = dom["/ref"]
        assert d.dtype == np.dtype(">f4")
        assert d[...].tobytes() == expected.tobytes()
        assert d.read(np.s_[5:50:7, [3, 69, 40]]).tobytes() == expected[5:50:7][:, [3, 69, 40]].tobytes()


def test_linked_chunked_ref_corrupt_checksum(tmp_path: Path) -> None:
    data = np.arange(64, dtype="<i4").reshape(8, 8)
    meta = write(
        tmp_path,
        lambda w: w.create_linked_dataset(
            DOMAIN, "/ref", data, file_key="f.h5", chunks=(4, 4), filters=["gzip", "fletcher32"]
        ),
    )
    off, size = meta.chunk_table["1_0"]
    f = tmp_path / BUCKET / "f.h5"
    blob = bytearray(f.read_bytes())
    blob[off + size - 1] ^= 0xFF  # flip a checksum byte
    f.write_bytes(bytes(blob))
    before = snapshot(tmp_path)
    with hb.open_domain(DOMAIN, config=cfg(tmp_path)) as dom:
        d = dom["/ref"]
        np.testing.assert_array_equal(d[0:4, :], data[0:4])
        with pytest.raises(ChunkDecodeError, match=meta.chunk_id((1, 0))) as ei:
            d[4:8, 0:4]
        assert "f.h5" in str(ei.value)
    assert snapshot(tmp_path) == before


def test_linked_contiguous_ref(tmp_path: Path) -> None:
    data = np.arange(30 * 11, dtype="<u2").reshape(30, 11)
    meta = write(
        tmp_path,
        lambda w: w.create_linked_dataset(
            DOMAIN, "/c", data, file_key="files/c.h5", layout="H5D_CONTIGUOUS_REF", header_bytes=1000
        ),
    )
    assert meta.layout_class == "H5D_CONTIGUOUS_REF"
    assert meta.contiguous_offset == 1000 and meta.contiguous_size == data.nbytes
    assert meta.chunks == (30, 11)  # small: one chunk covering the dataset
    with hb.open_domain(DOMAIN, config=cfg(tmp_path)) as dom:
        d = dom["/c"]
        assert d[...].tobytes() == data.tobytes()
        assert d.read(np.s_[[29, 0], 10]).tolist() == [data[29, 10], data[0, 10]]
        assert d.read_points([[3, 4]]).tolist() == [data[3, 4]]


def test_linked_file_missing_is_an_error(tmp_path: Path) -> None:
    # §6.4/§3.4: HSDS turns a 404 into fill only for HSDS chunks; with an s3path the 404 propagates.
    data = np.arange(64, dtype="<i4").reshape(8, 8)
    write(tmp_path, lambda w: w.create_linked_dataset(DOMAIN, "/ref", data, file_key="gone.h5", chunks=(4, 4)))
    (tmp_path / BUCKET / "gone.h5").unlink()
    with hb.open_domain(DOMAIN, config=cfg(tmp_path)) as dom, pytest.raises(HsdsBackendsError, match="gone.h5"):
        dom["/ref"][...]


def test_array_type_round_trip(tmp_path: Path) -> None:
    dt = np.dtype(("<i2", (3, 2)))
    data = np.arange(5 * 6, dtype="<i2").reshape(5, 3, 2)
    write(
        tmp_path,
        lambda w: w.create_dataset(
            DOMAIN,
            "/a",
            data,
            dtype=dt,
            chunks=(2,),
            fillvalue=np.full((3, 2), -1, "<i2"),
            skip_chunk=lambda i: i == (1,),
        ),
    )
    expected = data.copy()
    expected[2:4] = -1
    with hb.open_domain(DOMAIN, config=cfg(tmp_path)) as dom:
        d = dom["/a"]
        assert d.shape == (5,) and d.dtype == dt
        np.testing.assert_array_equal(d[...], expected)


def test_writer_records_filters_and_fill(tmp_path: Path) -> None:
    meta = write(
        tmp_path,
        lambda w: w.create_dataset(
            DOMAIN, "/d", np.zeros(4, ">u2"), filters=["shuffle", ("gzip", 6), "fletcher32"], fillvalue=9
        ),
    )
    dj = json.loads((tmp_path / BUCKET / object_key(meta.id)).read_text())
    # §2.4 verified stored form
    assert dj["creationProperties"]["filters"] == [
        {"class": "H5Z_FILTER_SHUFFLE", "id": 2, "name": "shuffle"},
        {"class": "H5Z_FILTER_DEFLATE", "id": 1, "name": "gzip", "level": 6},
        {"class": "H5Z_FILTER_FLETCHER32", "id": 3, "name": "fletcher32"},
    ]
    assert dj["creationProperties"]["fillValue"] == 9
    assert dj["type"] == {"class": "H5T_INTEGER", "base": "H5T_STD_U16BE"}
    assert dj["shape"] == {"class": "H5S_SIMPLE", "dims": [4], "maxdims": [4]}
    cmp_ = json.loads(
        (
            tmp_path
            / BUCKET
            / object_key(
                write(
                    tmp_path, lambda w: w.create_dataset(DOMAIN, "/c", np.zeros(2, [("a", "<i4")]), fillvalue=(3,))
                ).id
            )
        ).read_text()
    )
    assert cmp_["creationProperties"]["fillValue_encoding"] == "base64"


def test_normalize_filters() -> None:
    assert normalize_filters(["deflate"]) == [{"class": "H5Z_FILTER_DEFLATE", "id": 1, "name": "gzip", "level": 5}]
    assert normalize_filters([("zstd", 3), "shuffle"]) == [
        {"class": "H5Z_FILTER_ZSTD", "id": 32015, "name": "zstd", "level": 3},
        {"class": "H5Z_FILTER_SHUFFLE", "id": 2, "name": "shuffle"},
    ]
    assert normalize_filters([{"class": "H5Z_FILTER_USER", "id": 9}]) == [{"class": "H5Z_FILTER_USER", "id": 9}]
    assert normalize_filters(None) == []
    assert set(FILTER_NAMES) >= {"gzip", "shuffle", "lz4", "zstd", "bitshuffle", "fletcher32"}
    with pytest.raises(DatasetJsonError, match=r"unknown filter 'szip'; choose from \['bitshuffle', 'blosclz'"):
        normalize_filters(["szip"])


def test_writer_errors(tmp_path: Path) -> None:
    with pytest.raises(DatasetJsonError, match="pass data or a shape"):
        write(tmp_path, lambda w: w.create_dataset(DOMAIN, "/x"))
    with pytest.raises(DatasetJsonError, match=r"chunks \[3\] do not fit shape \[4, 4\]"):
        write(tmp_path, lambda w: w.create_dataset(DOMAIN, "/x", np.zeros((4, 4)), chunks=(3,)))
    write(tmp_path, lambda w: w.create_dataset(DOMAIN, "/x", np.zeros(3)))
    with pytest.raises(DatasetJsonError, match=f"'/x' already exists in domain '{DOMAIN}'"):
        write(tmp_path, lambda w: w.create_dataset(DOMAIN, "/x", np.zeros(3)))
    with pytest.raises(DatasetJsonError, match="variable-length datasets cannot have a fill value"):
        write(tmp_path, lambda w: w.create_dataset(DOMAIN, "/v", np.array(["a"], dtype=S), fillvalue="x"))
    with pytest.raises(
        DatasetJsonError, match="layout 'H5D_COMPACT' must be 'H5D_CHUNKED_REF', 'H5D_CHUNKED_REF_INDIRECT' or 'H5D_CONTIGUOUS_REF'"
    ):
        write(
            tmp_path, lambda w: w.create_linked_dataset(DOMAIN, "/l", np.zeros(3), file_key="f", layout="H5D_COMPACT")
        )
    with pytest.raises(StoragePathError):
        Writer(PosixStorage(tmp_path), "../evil")


def test_write_fill_chunks_false_and_nested_groups(tmp_path: Path) -> None:
    data = np.zeros((8, 8), "<i4")
    data[0, 0] = 1
    meta = write(tmp_path, lambda w: w.create_dataset(DOMAIN, "/g1/g2/d", data, chunks=(4, 4), write_fill_chunks=False))
    folder = tmp_path / BUCKET / Path(object_key(meta.id)).parent
    assert sorted(p.name for p in folder.iterdir()) == [".dataset.json", "0_0"]
    with hb.open_domain(DOMAIN, config=cfg(tmp_path)) as dom:
        np.testing.assert_array_equal(dom["/g1/g2/d"][...], data)
        np.testing.assert_array_equal(dom["g1/g2/d"][0], data[0])  # leading '/' optional


# --------------------------------------------------------------------------- async reader, queries


async def test_async_reader_query_and_fields(tmp_path: Path) -> None:
    rows = np.zeros(50, dtype=[("id", "<i8"), ("temp", "<f4"), ("station", "S8")])
    rows["id"] = np.arange(50)
    rows["temp"] = np.arange(50) / 2
    rows["station"] = [b"A", b"B"] * 25
    w = Writer(PosixStorage(tmp_path), BUCKET)
    await w.create_dataset(DOMAIN, "/t", rows, chunks=(16,), filters=["gzip"])
    async with hb.Reader(cfg(tmp_path)) as reader:
        dom = await reader.open(DOMAIN)
        d = await dom.get("/t")
        res = await d.read_result(np.s_[3:40:4], fields=["temp", "id"])
        assert res.data.dtype.names == ("temp", "id")
        assert res.data["id"].tolist() == list(range(3, 40, 4))
        assert res.stats.kind == "hyperslab" and res.stats.chunks == 3 and res.stats.backend == "inline"
        q = await d.query("(temp > 10) & (station == b'B')", select="[0:50:3]", limit=3)
        assert q["index"].tolist() == [21, 27, 33]
        assert q["id"].tolist() == [21, 27, 33]
        with pytest.raises(FieldError, match="unknown field 'nope'"):
            await d.read(fields="nope")
        with pytest.raises(QueryError):
            await d.query("temp >")


# --------------------------------------------------------------------------- a read never writes


def test_a_read_never_writes(tmp_path: Path) -> None:
    rows = np.zeros(20, dtype=[("id", "<i8"), ("temp", "<f4")])
    meta = write(
        tmp_path,
        lambda w: w.create_dataset(
            DOMAIN, "/d", ARANGE, chunks=(40, 50), filters=["gzip"], fillvalue=-1, skip_chunk=lambda i: i == (0, 0)
        ),
    )
    write(tmp_path, lambda w: w.create_dataset(DOMAIN, "/t", rows, chunks=(8,), skip_chunk=lambda i: i == (1,)))
    write(tmp_path, lambda w: w.create_dataset("/home/test_user1/other.h5", "/x", np.zeros(3)))
    bad = tmp_path / BUCKET / chunk_key(meta.chunk_id((1, 1)))
    bad.write_bytes(b"\x02\x01garbage")
    before = snapshot(tmp_path)
    with hb.open_domain(DOMAIN, config=cfg(tmp_path)) as dom:
        d = dom["/d"]
        assert d[0, 0] == -1
        np.testing.assert_array_equal(d[80:, 150:], ARANGE[80:, 150:])
        assert d.read_points([[0, 1], [99, 199]]).tolist() == [-1, 19999]
        assert dom["/t"].query("temp == 0")["index"].tolist() == list(range(20))
        with pytest.raises(ChunkDecodeError, match=meta.chunk_id((1, 1))):
            d[40:80, 50:100]
        with pytest.raises(SelectionError, match="out of range"):
            d.read("[0:101,0:1]")
        with pytest.raises(FieldError, match=r"for an HSDS select string use \.read\('\[0:1,0:1\]'\)"):
            d["[0:1,0:1]"]
        with pytest.raises(hb.LinkNotFoundError, match="no link 'nope'"):
            dom["/nope"]
        with pytest.raises(DatasetNotFoundError, match="is not a dataset"):
            dom.dataset(meta.id.replace("d-", "g-", 1))
    with pytest.raises(
        DomainNotFoundError, match="domain '/home/test_user1/missing.h5' not found in bucket 'hsdstest'"
    ):
        hb.open_domain("/home/test_user1/missing.h5", config=cfg(tmp_path))
    with pytest.raises(DomainNotFoundError, match="is a folder, not a domain"):
        hb.open_domain("/home/test_user1", config=cfg(tmp_path))
    with pytest.raises(StoragePathError, match=r"contains an empty, '\.' or '\.\.' component"):
        hb.open_domain("/home/../etc", config=cfg(tmp_path))
    with pytest.raises(StoragePathError):
        hb.open_domain(DOMAIN, config={**cfg(tmp_path), "bucket_name": ".."})
    assert snapshot(tmp_path) == before
    # and nothing was created outside root_dir's bucket either
    assert sorted(os.listdir(tmp_path)) == [BUCKET]


# --------------------------------------------------------------------------- more layouts and shapes


@pytest.mark.parametrize(
    "filters",
    [
        [],
        ["shuffle"],
        ["gzip"],
        ["fletcher32"],
        ["shuffle", "fletcher32"],
        ["lz4"],
        ["shuffle", "lz4"],
        ["bitshuffle"],
        ["bitshuffle", "zstd"],
        ["zstd", "fletcher32"],
        ["blosclz"],
    ],
)
def test_linked_chunked_ref_filters(tmp_path: Path, filters: list[str]) -> None:
    # linked HDF5 chunks are encoded by the HDF5 pipeline (shuffle → compress → fletcher32), §3.3 table
    data = (np.arange(37 * 23) * 3).astype(">i8").reshape(37, 23)
    write_linked(tmp_path, "/r", data, "x/f.h5", (10, 7), filters, 5, (0, 1))
    expected = data.copy()
    expected[0:10, 7:14] = 5
    with hb.open_domain(DOMAIN, config=cfg(tmp_path)) as dom:
        got = dom["/r"][...]
        assert got.dtype == np.dtype(">i8")
        assert got.tobytes() == expected.tobytes()


def test_linked_contiguous_ref_last_chunk_ends_at_eof(tmp_path: Path) -> None:
    # > 4 MiB: split into chunks of 2,250,001 bytes; the last one is 1 byte short at EOF (§3.5, 1.0.2 pads)
    data = (np.arange(4_500_001) % 251).astype("u1")
    meta = write(
        tmp_path, lambda w: w.create_linked_dataset(DOMAIN, "/c", data, file_key="c.h5", layout="H5D_CONTIGUOUS_REF")
    )
    assert meta.chunks == (2_250_001,)
    assert meta.chunk_grid == (2,)
    with hb.open_domain(DOMAIN, config=cfg(tmp_path)) as dom:
        d = dom["/c"]
        assert d[-3:].tolist() == data[-3:].tolist()
        assert d[2_250_000:2_250_003].tolist() == data[2_250_000:2_250_003].tolist()
        assert d.read_points([[4_500_000], [0]]).tolist() == [data[-1], data[0]]


def test_scalar_and_zero_extent(tmp_path: Path) -> None:
    write(tmp_path, lambda w: w.create_dataset(DOMAIN, "/s", np.array(7, "<i2")))
    write(tmp_path, lambda w: w.create_dataset(DOMAIN, "/s_missing", shape=(), dtype=">f8", fillvalue=-0.5))
    write(tmp_path, lambda w: w.create_dataset(DOMAIN, "/z", np.zeros(0, "<i4"), chunks=(4,)))
    with hb.open_domain(DOMAIN, config=cfg(tmp_path)) as dom:
        s = dom["/s"]
        assert s.shape == () and s.chunks is None and s.meta.chunks == (1,)  # h5py reports no chunks for a scalar
        for key in [(), Ellipsis]:
            v = s[key]
            assert v.shape == () and v.dtype == np.dtype("<i2") and v[()] == 7
        assert isinstance(s[()], np.int16) and isinstance(s[...], np.ndarray)  # as h5py: a scalar, a 0-d array
        with pytest.raises(ValueError, match=r"slices a scalar dataset; read its value with d\[\(\)\]"):
            s[:]
        assert s.read("[]")[()] == 7 and s.read()[()] == 7
        with pytest.raises(SelectionError, match="a scalar dataset cannot be point-selected"):
            s.read_points([[0]])
        m = dom["/s_missing"]
        assert m[()][()] == -0.5 and m.fillvalue == -0.5
        z = dom["/z"]
        assert z.shape == (0,)
        for key in [Ellipsis, slice(0, 0), []]:
            out = z[key]
            assert out.shape == (0,) and out.dtype == np.dtype("<i4")


def test_vlen_table_fields_points_and_query(tmp_path: Path) -> None:
    dt = np.dtype([("id", "<i4"), ("name", S), ("v", vlen_dtype("<i2"))])
    t = np.empty(10, dt)
    for i in range(10):
        t[i] = (i, f"n{i}" * (i % 3), np.arange(i % 4, dtype="<i2"))
    write(
        tmp_path,
        lambda w: w.create_dataset(
            DOMAIN, "/vt", t, chunks=(4,), filters=["shuffle", "gzip"], skip_chunk=lambda i: i == (1,)
        ),
    )
    with hb.open_domain(DOMAIN, config=cfg(tmp_path)) as dom:
        vt = dom["/vt"]
        full = vt.read()  # vlen strings as str (vt[...] gives bytes, as h5py)
        assert full["id"].tolist() == [0, 1, 2, 3, 0, 0, 0, 0, 8, 9]
        assert full["name"].tolist() == ["", "n1", "n2n2", "", "", "", "", "", "n8n8", ""]
        assert [x.tolist() for x in full["v"]] == [[], [0], [0, 1], [0, 1, 2], [], [], [], [], [], [0]]
        proj = vt.read(fields=["v", "id"])
        assert proj.dtype.names == ("v", "id")
        assert proj["id"].tolist() == full["id"].tolist()
        pts = vt.read_points([[8], [5], [1], [2]], fields="name")  # one name: the field itself, as h5py
        assert pts.tolist() == ["n8n8", "", "n1", "n2n2"]
        q = vt.query("id > 2", limit=5)
        assert q["index"].tolist() == [3, 8, 9]
        assert q["name"].tolist() == ["", "n8n8", ""]
        assert [x.tolist() for x in q["v"]] == [[0, 1, 2], [], [0]]
        q2 = vt.query("id >= 4", fields=["name"])
        assert q2.dtype.names == ("index", "name") and q2["name"].tolist() == ["n8n8", ""]
