"""Tests for hsds_backends.dataset: DatasetMeta from HSDS dataset JSON (docs/hsds-format.md §2, §3.5)."""

from __future__ import annotations

import base64
import json
import math
from typing import Any

import numpy as np
import pytest

from hsds_backends import vlen_dtype
from hsds_backends.dataset import LAYOUT_CLASSES, ChunkLocation, DatasetMeta
from hsds_backends.dtypes import type_json_from_dtype
from hsds_backends.errors import DatasetJsonError, HsdsBackendsError

DSET = "d-147ada2c-2ffb2839-39b5-e935ed-e55bf0"
I32 = {"class": "H5T_INTEGER", "base": "H5T_STD_I32LE"}
F64 = {"class": "H5T_FLOAT", "base": "H5T_IEEE_F64LE"}
GZ_SHUF = [
    {"class": "H5Z_FILTER_SHUFFLE", "id": 2, "name": "shuffle"},
    {"class": "H5Z_FILTER_DEFLATE", "id": 1, "name": "gzip", "level": 6},
]


def simple(dims: list[int]) -> dict[str, Any]:
    return {"class": "H5S_SIMPLE", "dims": dims, "maxdims": dims}


def contiguous_ref(shape: tuple[int, ...], type_json: Any, itemsize: int, uri: str, offset: int, **kw: Any) -> DatasetMeta:
    """An ``H5D_CONTIGUOUS_REF`` dataset of ``shape`` whose bytes start at ``offset`` of file ``uri``."""
    layout = {"class": "H5D_CONTIGUOUS_REF", "file_uri": uri, "offset": offset, "size": itemsize * math.prod(shape)}
    return DatasetMeta.from_json(dj(type_json=type_json, shape=simple(list(shape)), creationProperties={"layout": layout}), **kw)


def dj(type_json: Any = I32, shape: Any = None, **kw: Any) -> dict[str, Any]:
    d: dict[str, Any] = {
        "id": DSET,
        "root": "g-147ada2c-2ffb2839-9cf2-52a4a7-73a0b1",
        "created": 1.0,
        "lastModified": 1.0,
        "type": type_json,
        "shape": shape if shape is not None else simple([100, 200]),
        "attributes": {},
    }
    d.update(kw)
    return d


# --------------------------------------------------------------------------- chunk dims (§2.3)


def test_master_top_level_layout_wins() -> None:
    # §2.3 verified on master: requested (40,50) in creationProperties, HSDS stored top-level (100,200)
    j = dj(
        creationProperties={"layout": {"class": "H5D_CHUNKED", "dims": [40, 50]}, "filters": GZ_SHUF},
        layout={"class": "H5D_CHUNKED", "dims": [100, 200]},
    )
    m = DatasetMeta.from_json(j, "hsdstest")
    assert m.chunks == (100, 200)
    assert m.chunk_grid == (1, 1)
    assert m.layout_class == "H5D_CHUNKED"
    assert m.bucket == "hsdstest"
    assert m.filters == tuple(GZ_SHUF)
    assert m.source_json is j


def test_1_0_2_style_uses_creation_properties_dims() -> None:
    # §2.3 [1.0.2 differs]: no top-level layout, the requested (40,50) is used
    m = DatasetMeta.from_json(dj(creationProperties={"layout": {"class": "H5D_CHUNKED", "dims": [40, 50]}}), "hsdstest")
    assert m.chunks == (40, 50)
    assert m.chunk_grid == (3, 4)  # ceil(100/40), ceil(200/50) (§1.3)
    assert m.chunk_nbytes == 40 * 50 * 4
    # chunk key of chunk _1_2 (the §4.2 example) and of _0_0 (§1.2 verified)
    assert m.chunk_id((1, 2)) == "c-147ada2c-2ffb2839-39b5-e935ed-e55bf0_1_2"
    assert m.location((0, 0)) == ChunkLocation("hsdstest", "db/147ada2c-2ffb2839/d/39b5-e935ed-e55bf0/0_0")


def test_top_level_layout_without_creation_properties() -> None:
    m = DatasetMeta.from_json(dj(layout={"class": "H5D_CHUNKED", "dims": [10, 20]}))
    assert m.chunks == (10, 20)
    assert m.layout_class == "H5D_CHUNKED"
    assert m.fill is None and m.filters == ()


def test_no_layout_at_all_is_one_chunk() -> None:
    m = DatasetMeta.from_json(dj())
    assert m.chunks == (100, 200)
    assert m.chunk_grid == (1, 1)


def test_contiguous_request_is_stored_chunked_whole_shape() -> None:
    # §2.3: H5D_CONTIGUOUS requests are stored as H5D_CHUNKED; no dims → one chunk = whole shape
    m = DatasetMeta.from_json(dj(creationProperties={"layout": {"class": "H5D_CONTIGUOUS"}}))
    assert m.layout_class == "H5D_CHUNKED"
    assert m.chunks == (100, 200)
    m2 = DatasetMeta.from_json(
        dj(
            creationProperties={"layout": {"class": "H5D_CONTIGUOUS"}},
            layout={"class": "H5D_CHUNKED", "dims": [25, 200]},
        )
    )
    assert m2.chunks == (25, 200)


def test_partition_count_top_level_and_creation_properties() -> None:
    m = DatasetMeta.from_json(dj(layout={"class": "H5D_CHUNKED", "dims": [40, 50], "partition_count": 7}), "b")
    assert m.partition_count == 7
    assert m.chunk_id((3, 4)) == "c1-147ada2c-2ffb2839-39b5-e935ed-e55bf0_3_4"
    assert m.location((3, 4)) == ChunkLocation("b", "db/147ada2c-2ffb2839/d/39b5-e935ed-e55bf0/p1/3_4")
    m2 = DatasetMeta.from_json(
        dj(creationProperties={"layout": {"class": "H5D_CHUNKED", "dims": [40, 50], "partition_count": 7}})
    )
    assert m2.partition_count == 7


def test_zero_extent_dataset_with_layout() -> None:
    # an extensible dataset created empty: dims [0], HSDS still stores chunk dims
    m = DatasetMeta.from_json(
        dj(shape={"class": "H5S_SIMPLE", "dims": [0], "maxdims": [0]}, layout={"class": "H5D_CHUNKED", "dims": [1024]})
    )
    assert m.shape == (0,)
    assert m.chunks == (1024,)
    assert m.chunk_grid == (0,)


# --------------------------------------------------------------------------- shapes (§2.1)


def test_scalar() -> None:
    m = DatasetMeta.from_json(dj(shape={"class": "H5S_SCALAR"}, layout={"class": "H5D_CHUNKED", "dims": [1]}))
    assert m.shape == ()
    assert m.is_scalar and m.rank == 0
    assert m.chunks == (1,)
    assert m.data_shape == (1,)
    assert m.chunk_grid == (1,)
    assert m.chunk_id((0,)) == "c-147ada2c-2ffb2839-39b5-e935ed-e55bf0_0"


def test_scalar_without_layout() -> None:
    m = DatasetMeta.from_json(dj(shape={"class": "H5S_SCALAR"}))
    assert m.chunks == (1,)


def test_null_dataspace_error() -> None:
    with pytest.raises(
        DatasetJsonError, match=f"dataset '{DSET}' has a null dataspace \\(H5S_NULL\\); it holds no values to read"
    ):
        DatasetMeta.from_json(dj(shape={"class": "H5S_NULL"}))


@pytest.mark.parametrize("shape", [{"class": "H5S_FOO"}, {}, "x", None])
def test_unknown_shape_class(shape: Any) -> None:
    j = dj()
    j["shape"] = shape
    with pytest.raises(DatasetJsonError, match=f"dataset '{DSET}' has unknown shape class"):
        DatasetMeta.from_json(j)


@pytest.mark.parametrize("key", ["type", "shape"])
def test_missing_keys(key: str) -> None:
    j = dj()
    del j[key]
    with pytest.raises(DatasetJsonError, match=f"dataset JSON '{DSET}' has no '{key}' key"):
        DatasetMeta.from_json(j)


def test_not_a_dict() -> None:
    with pytest.raises(DatasetJsonError, match="dataset JSON must be an object, got list"):
        DatasetMeta.from_json([])  # type: ignore[arg-type]


def test_bad_type_is_dataset_json_error_naming_the_dataset() -> None:
    with pytest.raises(DatasetJsonError, match=f"dataset '{DSET}': unknown type class 'H5T_NOPE'"):
        DatasetMeta.from_json(dj(type_json={"class": "H5T_NOPE"}))


# --------------------------------------------------------------------------- layouts / errors


@pytest.mark.parametrize("cls", ["H5D_COMPACT", "H5D_VIRTUAL"])
def test_unknown_layout_error(cls: str) -> None:
    with pytest.raises(
        DatasetJsonError,
        match=f"has layout '{cls}'; supported layouts: H5D_CHUNKED, H5D_CHUNKED_REF, H5D_CONTIGUOUS_REF, H5D_CHUNKED_REF_INDIRECT$",
    ):
        DatasetMeta.from_json(dj(creationProperties={"layout": {"class": cls, "dims": [10, 10]}}))
    assert cls not in LAYOUT_CLASSES


@pytest.mark.parametrize("dims", [[40], [40, 50, 1], [0, 50], [-1, 50]])
def test_chunk_dims_must_fit(dims: list[int]) -> None:
    with pytest.raises(DatasetJsonError, match=r"chunk dims \[.*\] do not fit shape \[100, 200\]"):
        DatasetMeta.from_json(dj(layout={"class": "H5D_CHUNKED", "dims": dims}))


@pytest.mark.parametrize(
    "j",
    [
        dj(shape={"class": "H5S_SIMPLE"}),  # no dims
        dj(shape={"class": "H5S_SIMPLE", "dims": ["a"]}),
        dj(layout={"class": "H5D_CHUNKED", "dims": ["a", 2]}),
        dj(layout={"class": "H5D_CHUNKED", "dims": 5}),
        dj(creationProperties="x"),
        dj(layout="x"),
        dj(creationProperties={"layout": "x"}),
    ],
    ids=[
        "no-dims",
        "dims-not-int",
        "chunk-dims-not-int",
        "chunk-dims-not-list",
        "cp-not-dict",
        "layout-not-dict",
        "cp-layout-not-dict",
    ],
)
def test_malformed_json_is_dataset_json_error(j: dict[str, Any]) -> None:
    # KeyError/ValueError/TypeError/AttributeError must not leak from a malformed dataset JSON
    with pytest.raises(DatasetJsonError, match=DSET):
        DatasetMeta.from_json(j)


def test_reference_layout_refuses_vlen() -> None:
    with pytest.raises(DatasetJsonError, match="reference layouts cannot hold variable-length types"):
        DatasetMeta.from_json(
            dj(
                type_json={"class": "H5T_STRING", "length": "H5T_VARIABLE", "charSet": "H5T_CSET_UTF8"},
                creationProperties={
                    "layout": {"class": "H5D_CHUNKED_REF", "file_uri": "b/f.h5", "dims": [10, 10], "chunks": {}}
                },
            )
        )


# --------------------------------------------------------------------------- fill values (§2.4)


def test_fill_json_scalar() -> None:
    m = DatasetMeta.from_json(dj(type_json=F64, creationProperties={"fillValue": -1.5}))
    assert m.fill == np.float64(-1.5).tobytes()
    assert m.fill_element.shape == () and m.fill_element.dtype == np.dtype("<f8")
    assert m.fill_element[()] == -1.5


def test_fill_json_int_and_big_endian() -> None:
    m = DatasetMeta.from_json(
        dj(type_json={"class": "H5T_INTEGER", "base": "H5T_STD_I16BE"}, creationProperties={"fillValue": 7})
    )
    assert m.fill == b"\x00\x07"
    assert m.fill_element[()] == 7


def test_fill_base64() -> None:
    raw = np.int32(-123456).tobytes()
    m = DatasetMeta.from_json(
        dj(creationProperties={"fillValue": base64.b64encode(raw).decode(), "fillValue_encoding": "base64"})
    )
    assert m.fill == raw
    assert m.fill_element[()] == -123456


def test_fill_base64_wrong_length() -> None:
    with pytest.raises(DatasetJsonError, match="base64 fillValue decodes to 3 bytes; the dataset type needs 4"):
        DatasetMeta.from_json(dj(creationProperties={"fillValue": "AAAA", "fillValue_encoding": "base64"}))


def test_fill_compound_json_list() -> None:
    dt = np.dtype([("a", "<i4"), ("s", "S3"), ("f", ">f8"), ("inner", [("x", "u1"), ("y", "S2")])])
    m = DatasetMeta.from_json(
        dj(type_json=type_json_from_dtype(dt), creationProperties={"fillValue": [7, "ab", 1.5, [3, "q"]]})
    )
    want = np.array((7, b"ab", 1.5, (3, b"q")), dtype=dt)
    assert m.fill == want.tobytes()
    assert m.fill_element[()] == want[()]


def test_fill_compound_base64() -> None:
    dt = np.dtype([("a", "<i4"), ("b", "<f4")])
    raw = np.array((1, 2.5), dtype=dt).tobytes()
    m = DatasetMeta.from_json(
        dj(
            type_json=type_json_from_dtype(dt),
            creationProperties={"fillValue": base64.b64encode(raw).decode(), "fillValue_encoding": "base64"},
        )
    )
    assert m.fill == raw
    assert m.fill_element["b"] == 2.5


def test_fill_fixed_string() -> None:
    m = DatasetMeta.from_json(
        dj(
            type_json={"class": "H5T_STRING", "length": 4, "charSet": "H5T_CSET_ASCII"},
            creationProperties={"fillValue": "ab"},
        )
    )
    assert m.fill == b"ab\x00\x00"


def test_no_fill_is_zeros() -> None:
    m = DatasetMeta.from_json(dj(type_json=F64, creationProperties={"fillValue": None}))
    assert m.fill is None
    assert m.fill_element.tobytes() == bytes(8)


@pytest.mark.parametrize(
    ("fill", "message"),
    [
        ("abc", "fillValue 'abc' does not fit the dataset type int32"),
        (2**40, "fillValue 1099511627776 does not fit the dataset type int32"),
    ],
)
def test_bad_fill(fill: Any, message: str) -> None:
    with pytest.raises(DatasetJsonError, match=message):
        DatasetMeta.from_json(dj(creationProperties={"fillValue": fill}))


def test_fill_list_for_scalar_type_is_refused() -> None:
    # a list fill for an int32 dataset would give 8 bytes for a 4-byte element
    with pytest.raises(DatasetJsonError, match=r"fillValue \[1, 2\]"):
        DatasetMeta.from_json(dj(creationProperties={"fillValue": [1, 2]}))


@pytest.mark.parametrize(("tag", "empty"), [(str, ""), (bytes, b"")])
def test_vlen_fill_element_is_empty(tag: type, empty: Any) -> None:
    m = DatasetMeta.from_json(
        dj(type_json=type_json_from_dtype(vlen_dtype(tag)), creationProperties={"fillValue": "x"})
    )
    assert m.is_vlen and m.itemsize == 0
    assert m.fill is None
    assert m.fill_element[()] == empty


def test_vlen_sequence_fill_element_is_empty_array() -> None:
    m = DatasetMeta.from_json(dj(type_json=type_json_from_dtype(vlen_dtype("<i4"))))
    v = m.fill_element[()]
    assert isinstance(v, np.ndarray) and v.dtype == np.dtype("<i4") and v.size == 0


# --------------------------------------------------------------------------- wire JSON


@pytest.mark.parametrize(
    "j",
    [
        dj(
            creationProperties={
                "layout": {"class": "H5D_CHUNKED", "dims": [40, 50]},
                "filters": GZ_SHUF,
                "fillValue": 9,
            }
        ),
        dj(layout={"class": "H5D_CHUNKED", "dims": [40, 50], "partition_count": 5}),
        dj(shape={"class": "H5S_SCALAR"}, type_json=F64, creationProperties={"fillValue": 2.5}),
        dj(
            type_json=type_json_from_dtype(np.dtype([("a", "<i4"), ("s", vlen_dtype(str))])),
            layout={"class": "H5D_CHUNKED", "dims": [10, 10]},
        ),
        dj(
            creationProperties={
                "layout": {
                    "class": "H5D_CONTIGUOUS_REF",
                    "file_uri": "s3://other/data/f.h5",
                    "offset": 2048,
                    "size": 80000,
                }
            }
        ),
    ],
    ids=["chunked", "partitioned", "scalar", "vlen-compound", "contiguous-ref"],
)
def test_wire_json_round_trip(j: dict[str, Any]) -> None:
    m = DatasetMeta.from_json(j, "hsdstest")
    w = m.wire_json()
    json.dumps(w)  # JSON-serialisable
    m2 = DatasetMeta.from_json(json.loads(m.wire_text()), "hsdstest")
    for f in (
        "id",
        "bucket",
        "shape",
        "dtype",
        "type_json",
        "chunks",
        "fill",
        "filters",
        "layout_class",
        "partition_count",
        "file_uri",
        "contiguous_offset",
        "contiguous_size",
    ):
        assert getattr(m2, f) == getattr(m, f), f
    assert m2.dtype.metadata == m.dtype.metadata
    if m.fill is not None:
        assert w["creationProperties"]["fillValue_encoding"] == "base64"
        assert base64.b64decode(w["creationProperties"]["fillValue"]) == m.fill


def test_wire_json_drops_chunk_table() -> None:
    j = dj(
        creationProperties={
            "layout": {"class": "H5D_CHUNKED_REF", "file_uri": "b/f.h5", "dims": [50, 100], "chunks": {"0_0": [10, 20]}}
        }
    )
    m = DatasetMeta.from_json(j, "b")
    w = m.wire_json()
    assert "chunks" not in w["creationProperties"]["layout"]
    assert w["creationProperties"]["layout"]["dims"] == [50, 100]
    m2 = DatasetMeta.from_json(w, "b")
    assert m2.chunk_table == {}
    assert m2.chunks == (50, 100) and m2.layout_class == "H5D_CHUNKED_REF"
    assert m2.wire_text() == m.wire_text()


# --------------------------------------------------------------------------- reference locations (§3.5)


def chunked_ref(file_uri: str = "s3://linked/path/file.h5", **layout: Any) -> DatasetMeta:
    lay = {
        "class": "H5D_CHUNKED_REF",
        "file_uri": file_uri,
        "dims": [50, 100],
        "chunks": {"0_0": [2048, 4000], "0_1": [6048, 0], "1_1": [9000, 17]},
    }
    lay.update(layout)
    return DatasetMeta.from_json(
        dj(creationProperties={"layout": lay, "filters": GZ_SHUF}, layout={"class": "H5D_CHUNKED", "dims": [50, 100]}),
        "hsdstest",
    )


def test_chunked_ref_locations() -> None:
    m = chunked_ref()
    assert m.layout_class == "H5D_CHUNKED_REF"
    assert m.chunks == (50, 100)
    assert m.location((0, 0)) == ChunkLocation("linked", "path/file.h5", 2048, 4000, linked=True)
    assert m.location((1, 1)) == ChunkLocation("linked", "path/file.h5", 9000, 17, linked=True)
    # absent key → no bytes → fill; size 0 → fill (§3.5)
    assert m.location((1, 0)) is None
    assert m.location((0, 1)) is None


@pytest.mark.parametrize(
    ("uri", "bucket", "key"),
    [
        ("s3://linked/path/file.h5", "linked", "path/file.h5"),
        ("file://linked/path/file.h5", "linked", "path/file.h5"),
        ("linked/path/file.h5", "linked", "path/file.h5"),
        ("file.h5", "hsdstest", "file.h5"),  # no bucket part → the dataset's bucket
    ],
)
def test_file_uri_split(uri: str, bucket: str, key: str) -> None:
    loc = chunked_ref(uri).location((0, 0))
    assert loc is not None and (loc.bucket, loc.key) == (bucket, key)


def test_reference_without_file_uri() -> None:
    m = DatasetMeta.from_json(
        dj(creationProperties={"layout": {"class": "H5D_CHUNKED_REF", "dims": [50, 100], "chunks": {"0_0": [1, 2]}}})
    )
    with pytest.raises(DatasetJsonError, match="reference layout has no file_uri; it cannot be read"):
        m.location((0, 0))


def test_contiguous_ref_offsets() -> None:
    # §3.5: offset + Σ_d index[d]·chunk[d]·stride[d], stride[d] = itemsize × Π dims after d
    shape = (3, 5000, 1000)
    m = contiguous_ref(shape, I32, 4, "b/f.h5", 4096, bucket="b")
    assert m.layout_class == "H5D_CONTIGUOUS_REF"
    # getContiguousLayout: trailing dims full, one split dim (halved until < 4 MB), leading dims 1
    assert m.chunks == (1, 625, 1000)
    assert m.chunk_nbytes == 625 * 1000 * 4 < 4 * 1024 * 1024
    strides = (4 * 5000 * 1000, 4 * 1000, 4)
    for index in [(0, 0, 0), (0, 1, 0), (2, 7, 0), (1, 3, 0)]:
        off = 4096 + sum(i * c * s for i, c, s in zip(index, m.chunks, strides, strict=False))
        assert m.location(index) == ChunkLocation("b", "f.h5", off, 625 * 1000 * 4, linked=True)


@pytest.mark.parametrize(
    ("shape", "itemsize", "chunks"),
    [
        ((100, 200), 4, (100, 200)),  # small: one chunk
        ((1000, 1000, 10), 8, (32, 1000, 10)),
        ((10**7,), 1, (2500000,)),
        ((4, 3, 2000, 1000), 2, (1, 1, 2000, 1000)),
    ],
)
def test_contiguous_ref_derived_chunks(shape: tuple[int, ...], itemsize: int, chunks: tuple[int, ...]) -> None:
    t = {1: "H5T_STD_U8LE", 2: "H5T_STD_I16LE", 4: "H5T_STD_I32LE", 8: "H5T_IEEE_F64LE"}[itemsize]
    m = contiguous_ref(shape, t, itemsize, "b/f", 0)
    assert m.chunks == chunks
    split = [d for d, (c, s) in enumerate(zip(m.chunks, shape, strict=False)) if c != s]
    if split:
        d = split[-1]
        assert all(c == 1 for c in m.chunks[:d]), "leading dims are 1"
        assert m.chunks[d + 1 :] == shape[d + 1 :], "trailing dims at full extent"
        assert m.chunk_nbytes < 4 * 1024 * 1024


def test_derived_facts() -> None:
    m = DatasetMeta.from_json(dj(type_json=F64, layout={"class": "H5D_CHUNKED", "dims": [30, 70]}))
    assert m.rank == 2 and not m.is_scalar and not m.is_vlen
    assert m.itemsize == 8
    assert m.chunk_shape == (30, 70)
    assert m.chunk_grid == (4, 3)
    assert m.chunk_nbytes == 30 * 70 * 8
    assert m.ops.compressor is None


def test_errors_are_ours() -> None:
    assert issubclass(DatasetJsonError, HsdsBackendsError)
    assert not issubclass(DatasetJsonError, ValueError)
