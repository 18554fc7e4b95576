"""Groups (links, paths, soft and external links) and attributes of every type class, read like h5py."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import hsds_backends as hb
from hsds_backends.attrs import AttributeNotFoundError, decode_attribute
from hsds_backends.dtypes import vlen_dtype
from hsds_backends.errors import DatasetJsonError
from hsds_backends.groups import AsyncGroup, ExternalLink, Group, HardLink, LinkNotFoundError, SoftLink, join_path
from hsds_backends.storage.posix import PosixStorage
from hsds_backends.writer import Writer

DOMAIN = "/home/test/groups.h5"
CMPD = np.dtype([("id", "<i4"), ("temp", ">f8"), ("name", "S5")])
ENUM = np.dtype("<u1", metadata={"enum": {"RED": 0, "GREEN": 1, "BLUE": 2}})


async def _write(root: Path) -> None:
    w = Writer(PosixStorage(root), "hsdstest")
    await w.create_domain(DOMAIN)
    await w.create_dataset(DOMAIN, "/grid", np.arange(64, dtype="<f4").reshape(8, 8), chunks=(4, 4), filters=["shuffle", "gzip"])
    await w.create_group(DOMAIN, "/grp/nested")
    await w.create_dataset(DOMAIN, "/grp/nested/table", np.zeros(6, dtype=CMPD), chunks=(3,))
    await w.create_group(DOMAIN, "/empty")
    await w.create_soft_link(DOMAIN, "/grp/soft", "nested/table")
    await w.create_soft_link(DOMAIN, "/abs", "/grp/nested")
    await w.create_soft_link(DOMAIN, "/dangling", "/nowhere")
    await w.create_external_link(DOMAIN, "/grp/ext", "/home/test/other.h5", "/data")
    sa = w.set_attribute
    await sa(DOMAIN, "/", "title", "a test domain", vlen_dtype(str))
    await sa(DOMAIN, "/", "version", np.int16(3))
    await sa(DOMAIN, "/grp", "be_ints", np.array([1, -2, 300], dtype=">i4"))
    await sa(DOMAIN, "/grp", "le_u64", np.array([[1, 2], [3, 2**63]], dtype="<u8"))
    await sa(DOMAIN, "/grp", "be_float", np.array(2.5, dtype=">f8"))
    await sa(DOMAIN, "/grp", "f32", np.array([0.5, -1.25], dtype="<f4"))
    await sa(DOMAIN, "/grp", "fixed", np.bytes_(b"abc"), "S8")
    await sa(DOMAIN, "/grp", "fixed_arr", np.array([b"x", b"yz"], dtype="S3"))
    await sa(DOMAIN, "/grp", "vstr_arr", ["α", "bb", ""], vlen_dtype(str))
    await sa(DOMAIN, "/grp", "vbytes", b"raw", vlen_dtype(bytes))
    await sa(DOMAIN, "/grp", "vlen_ints", [[1, 2, 3], [4]], vlen_dtype("<i2"))
    await sa(DOMAIN, "/grp", "cmpd", np.array((7, 1.5, b"seven"), dtype=CMPD))
    await sa(DOMAIN, "/grp", "cmpd_arr", np.array([(1, 0.5, b"a"), (2, -0.5, b"bb")], dtype=CMPD))
    await sa(DOMAIN, "/grp", "array_t", np.arange(6, dtype="<i2").reshape(2, 3), np.dtype(("<i2", (2, 3))))
    await sa(DOMAIN, "/grp", "array_t_1d", np.arange(12, dtype=">f4").reshape(2, 2, 3), np.dtype((">f4", (2, 3))))
    await sa(DOMAIN, "/grp", "enum", np.array([0, 2, 1], dtype="u1"), ENUM)
    await sa(DOMAIN, "/grp", "flag", np.bool_(True))
    ref_t = {"class": "H5T_REFERENCE", "base": "H5T_STD_REF_OBJ"}
    meta = await w.create_dataset(DOMAIN, "/grp/refd", np.arange(3, dtype="<i8"))
    await sa(DOMAIN, "/grp", "ref", f"datasets/{meta.id}", type_json=ref_t)
    await sa(DOMAIN, "/grp", "refs", [f"datasets/{meta.id}", "groups/g-0"], type_json=ref_t, shape={"class": "H5S_SIMPLE", "dims": [2]})
    await sa(DOMAIN, "/grp", "empty", None, type_json={"class": "H5T_INTEGER", "base": "H5T_STD_I32LE"}, shape={"class": "H5S_NULL"})
    await sa(DOMAIN, "/grid", "units", "K", vlen_dtype(str))
    await sa(DOMAIN, "/grp/nested/table", "rows", np.uint32(6))


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("groups")
    asyncio.run(_write(root))
    return root


@pytest.fixture
def dom(root: Path) -> Any:
    with hb.open_domain(DOMAIN, root_dir=str(root)) as d:
        yield d


# ------------------------------------------------------------------------------------ groups


def test_domain_is_a_mapping_of_the_root_group(dom: Any) -> None:
    assert dom.keys() == ["abs", "dangling", "empty", "grid", "grp"]
    assert list(dom) == dom.keys()
    assert len(dom) == 5
    assert "grp/nested/table" in dom and "/grp/nested" in dom
    assert "nope" not in dom and "dangling" in dom  # as h5py: the link exists, though it dangles
    assert "grp/ext" in dom and "grp/ext/data" not in dom and "/" in dom and "abs/table" in dom
    with pytest.raises(LinkNotFoundError, match="no link 'nowhere'"):
        dom.items()  # as h5py: a dangling soft link cannot be opened
    g = dom.root["grp"]
    assert [k for k, _ in g.items()] == list(g) == sorted(g)
    assert isinstance(list(g.values())[list(g).index("refd")], hb.Dataset)


def test_getitem_gives_groups_and_datasets_with_or_without_slash(dom: Any) -> None:
    root = dom.root
    assert isinstance(root, Group) and root.name == "/"
    g = root["grp"]
    assert isinstance(g, Group) and g.name == "/grp"
    assert root["/grp/nested"].name == "/grp/nested"
    nested = g["nested"]
    assert list(nested) == ["table"] and list(nested.keys()) == ["table"]
    t = nested["table"]
    assert isinstance(t, hb.Dataset) and t.dtype == CMPD
    assert nested["/grid"].shape == (8, 8)  # absolute from anywhere
    assert nested[".."].name == "/grp"
    assert dom.group("grp/nested").name == "/grp/nested"
    np.testing.assert_array_equal(dom.get_object("grid")[0:2, 0], [0.0, 8.0])


def test_soft_links_are_followed_and_external_links_reported(dom: Any) -> None:
    g = dom.root["grp"]
    assert g["soft"].shape == (6,)  # relative soft link
    assert dom.root["abs"].name == "/grp/nested"
    assert dom.root["abs/table"].shape == (6,)
    ext = g["ext"]
    assert ext == ExternalLink("/home/test/other.h5", "/data")
    assert g.get("soft", getlink=True) == SoftLink("nested/table")
    assert isinstance(g.get("nested", getlink=True), HardLink)
    with pytest.raises(LinkNotFoundError, match=r"'/grp/ext' .* external link to '/data' in '/home/test/other.h5'"):
        g["ext/data"]
    with pytest.raises(LinkNotFoundError, match=r"no link 'nowhere' in group '/'"):
        dom.root["dangling"]
    with pytest.raises(KeyError):
        dom.root["grp/missing"]
    with pytest.raises(LinkNotFoundError, match=r"'/grid' .* is a dataset, not a group"):
        dom.root["grid/x"]
    assert dom.root.get("grp/missing") is None and dom.root.get("grp/missing", 5) == 5


def test_a_soft_link_loop_is_an_error(tmp_path: Path) -> None:
    async def write() -> None:
        w = Writer(PosixStorage(tmp_path), "hsdstest")
        await w.create_soft_link(DOMAIN, "/a", "/b")
        await w.create_soft_link(DOMAIN, "/b", "/a")

    asyncio.run(write())
    with hb.open_domain(DOMAIN, root_dir=str(tmp_path)) as d:
        with pytest.raises(LinkNotFoundError, match="soft links resolving 'a'"):
            d.root["a"]


def test_visit_and_visititems_like_h5py(dom: Any) -> None:
    names: list[str] = []
    assert dom.visit(names.append) is None
    assert names == ["empty", "grid", "grp", "grp/nested", "grp/nested/table", "grp/refd"]
    kinds: dict[str, str] = {}
    dom.visititems(lambda n, o: kinds.__setitem__(n, type(o).__name__))
    assert kinds["grp/nested"] == "Group" and kinds["grid"] == "Dataset"
    assert dom.visit(lambda n: n if n.endswith("table") else None) == "grp/nested/table"
    assert dom.root["grp"].visit(lambda n: n) == "nested"
    # the object given to visititems can be read from the callback
    assert dom.visititems(lambda n, o: float(o[1, 1]) if n == "grid" else None) == 9.0


def test_async_groups(root: Path) -> None:
    async def go() -> None:
        async with hb.Reader({"root_dir": str(root), "bucket_name": "hsdstest"}) as reader:
            dom = await reader.open(DOMAIN)
            r = await dom.root()
            assert r.keys() == await dom.keys() and len(r) == 5
            g = await r["grp"]
            assert isinstance(g, AsyncGroup) and sorted(g) == g.keys()
            t = await g.get_object("soft")
            assert isinstance(t, hb.AsyncDataset) and t.shape == (6,)
            assert await dom.contains("/grp/nested") and not await g.contains("zzz")
            assert isinstance(await g.get("ext"), ExternalLink)
            assert [k for k, _ in await g.items()] == g.keys()
            assert len(await g.values()) == len(g)
            seen: list[str] = []
            await dom.visititems(lambda n, o: seen.append(n))
            assert "grp/nested/table" in seen
            assert (await dom.group("grp")).attrs["be_ints"].tolist() == [1, -2, 300]
            assert (await dom.attributes())["version"] == 3
            with pytest.raises(hb.NotFoundError, match="is a dataset, not a group"):
                await dom.group("grid")

    asyncio.run(go())


def test_join_path() -> None:
    assert join_path("/a/b", "c") == "/a/b/c"
    assert join_path("/a/b", "/c/") == "/c"
    assert join_path("/a/b", "../c/./d") == "/a/c/d"
    assert join_path("/", "..") == "/"


# -------------------------------------------------------------------------------- attributes


def test_attrs_mapping(dom: Any) -> None:
    a = dom.attrs
    assert sorted(a) == ["title", "version"] and len(a) == 2
    assert a["title"] == "a test domain" and isinstance(a["title"], str)
    v = a["version"]
    assert isinstance(v, np.int16) and v == 3
    assert "title" in a and "nope" not in a
    assert a.get("nope") is None and a.get("nope", 1) == 1
    assert dict(a.items())["version"] == 3
    with pytest.raises(AttributeNotFoundError, match=r"no attribute 'nope' on group '/'.*attributes there: \['title', 'version'\]"):
        a["nope"]
    with pytest.raises(KeyError):
        a["nope"]
    assert dom["/grid"].attrs["units"] == "K"
    assert dom.root["grp/nested/table"].attrs["rows"] == np.uint32(6)


def _check(value: Any, expected: Any, dtype: Any) -> None:
    arr = np.asarray(value)
    assert arr.dtype == np.dtype(dtype), (arr.dtype, dtype)
    if arr.dtype.hasobject:
        assert arr.tolist() == np.asarray(expected, dtype=object).tolist() if not isinstance(expected, list) else arr.tolist() == expected
    else:
        assert arr.tobytes() == np.asarray(expected, dtype=dtype).tobytes()


def test_numbers_of_both_byte_orders(dom: Any) -> None:
    a = dom.root["grp"].attrs
    _check(a["be_ints"], [1, -2, 300], ">i4")
    _check(a["le_u64"], [[1, 2], [3, 2**63]], "<u8")
    b = a["be_float"]
    assert isinstance(b, np.float64) and b == 2.5  # numpy scalars are native-endian, as h5py's are
    assert a.get_type_json("be_float")["base"] == "H5T_IEEE_F64BE" and a.get_type_json("be_ints")["base"] == "H5T_STD_I32BE"
    _check(a["f32"], [0.5, -1.25], "<f4")


def test_strings_fixed_and_variable(dom: Any) -> None:
    a = dom.root["grp"].attrs
    f = a["fixed"]
    assert isinstance(f, np.bytes_) and f == b"abc" and a.get_type_json("fixed")["length"] == 8
    _check(a["fixed_arr"], [b"x", b"yz"], "S3")
    v = a["vstr_arr"]
    assert v.dtype.kind == "O" and v.tolist() == ["α", "bb", ""]
    vb = a["vbytes"]  # h5py reads variable-length string attributes as str, ASCII ones too
    assert vb == "raw" and isinstance(vb, str)


def test_vlen_sequences(dom: Any) -> None:
    v = dom.root["grp"].attrs["vlen_ints"]
    assert v.shape == (2,) and v[0].dtype == np.dtype("<i2")
    assert [x.tolist() for x in v] == [[1, 2, 3], [4]]


def test_compound(dom: Any) -> None:
    a = dom.root["grp"].attrs
    c = a["cmpd"]
    assert isinstance(c, np.void) and c.dtype == CMPD
    assert (c["id"], c["temp"], c["name"]) == (7, 1.5, b"seven")
    arr = a["cmpd_arr"]
    assert arr.dtype == CMPD and arr.shape == (2,)
    assert arr.tobytes() == np.array([(1, 0.5, b"a"), (2, -0.5, b"bb")], dtype=CMPD).tobytes()


def test_array_types(dom: Any) -> None:
    a = dom.root["grp"].attrs
    s = a["array_t"]  # a scalar attribute of an H5T_ARRAY type: the element's array, as h5py
    assert s.shape == (2, 3) and s.dtype == np.dtype("<i2") and s.tolist() == [[0, 1, 2], [3, 4, 5]]
    arr = a["array_t_1d"]
    assert arr.shape == (2, 2, 3) and arr.dtype == np.dtype(">f4")
    assert arr.tobytes() == np.arange(12, dtype=">f4").tobytes()


def test_enums_and_bool(dom: Any) -> None:
    a = dom.root["grp"].attrs
    e = a["enum"]
    assert e.tolist() == [0, 2, 1] and e.dtype == np.dtype("u1")
    assert e.dtype.metadata is not None and e.dtype.metadata["enum"] == {"RED": 0, "GREEN": 1, "BLUE": 2}
    assert a.get_type_json("enum")["class"] == "H5T_ENUM"
    f = a["flag"]
    assert isinstance(f, np.bool_) and bool(f) is True


def test_references_give_the_target_id(dom: Any) -> None:
    a = dom.root["grp"].attrs
    refd = dom.root["grp/refd"]
    assert a["ref"] == refd.meta.id
    assert a["refs"].tolist() == [refd.meta.id, "g-0"]
    assert dom.path_of(a["ref"]) == "/grp/refd" and dom.path_of("g-0") is None
    assert dom.path_of(dom.root.id) == "/" and dom.path_of(dom.root["grp/nested"].id) == "/grp/nested"
    assert refd.name == "/grp/refd" and dom["grid"].name == "/grid"


def test_older_list_form_of_links(tmp_path: Path) -> None:
    import json

    from hsds_backends.ids import object_key

    async def write() -> str:
        w = Writer(PosixStorage(tmp_path), "hsdstest")
        await w.create_dataset(DOMAIN, "/g/d", np.arange(3))
        return await w.create_domain(DOMAIN)

    root_id = asyncio.run(write())
    key = tmp_path / "hsdstest" / object_key(root_id)
    j = json.loads(key.read_text())
    j["links"] = list(j["links"].values())  # each link keeps its "title"
    key.write_text(json.dumps(j))
    with hb.open_domain(DOMAIN, root_dir=str(tmp_path)) as d:
        assert d.keys() == ["g"] and d.root["g/d"][2] == 2


def test_null_shape_gives_none(dom: Any) -> None:
    a = dom.root["grp"].attrs
    assert a["empty"] is None and a.get_shape("empty") is None


def test_decode_attribute_messages() -> None:
    with pytest.raises(DatasetJsonError, match=r"attribute 'x' is 5; expected an object"):
        decode_attribute("x", 5)  # type: ignore[arg-type]
    with pytest.raises(DatasetJsonError, match=r"attribute 'x': value .* does not fit type"):
        decode_attribute("x", {"type": "H5T_STD_I32LE", "shape": {"class": "H5S_SIMPLE", "dims": [3]}, "value": [1, 2]})
    assert decode_attribute("x", {"type": "H5T_STD_I8LE", "shape": [2], "value": [1, 2]}).tolist() == [1, 2]
    old_list_form = hb.attrs.AttributeManager([{"name": "a", "type": "H5T_STD_I8LE", "shape": {"class": "H5S_SCALAR"}, "value": 4}], "x")
    assert old_list_form["a"] == 4


# ------------------------------------------------------------------------- h5py as the oracle

ORACLE_CASES: list[tuple[str, Any, Any]] = [
    ("i1", np.array([-1, 2], "i1"), None),
    ("le_i4_scalar", np.array(-7, "<i4"), None),
    ("be_i4", np.array([[1, -2], [3, 4]], ">i4"), None),
    ("be_u8", np.array([2**63, 1], ">u8"), None),
    ("le_f2", np.array([0.5, 1.5], "<f2"), None),
    ("be_f8_scalar", np.array(2.5, ">f8"), None),
    ("fixed_scalar", np.bytes_(b"abc"), "S8"),
    ("fixed_arr", np.array([b"x", b"yz"], "S3"), None),
    ("vstr_scalar", "αβ", "vstr"),
    ("vstr_arr", ["a", "bb"], "vstr"),
    ("vbytes_scalar", b"raw", "vbytes"),
    ("vbytes_arr", [b"x", b"yy"], "vbytes"),
    ("vlen_i2", [np.array([1, 2], "i2"), np.array([3], "i2")], "vlen_i2"),
    ("cmpd_scalar", np.array((7, 1.5, b"seven"), CMPD), None),
    ("cmpd_arr", np.array([(1, 0.5, b"a"), (2, -0.5, b"bb")], CMPD), None),
    ("array_scalar", np.arange(6, dtype="<i2").reshape(2, 3), np.dtype(("<i2", (2, 3)))),
    ("array_arr", np.arange(12, dtype=">f4").reshape(2, 2, 3), np.dtype((">f4", (2, 3)))),
    ("enum", np.array([0, 2, 1], "u1"), ENUM),
    ("bool_scalar", np.bool_(True), None),
    ("bool_arr", np.array([True, False]), None),
]


def _ours_dtype(kind: Any) -> Any:
    return {"vstr": vlen_dtype(str), "vbytes": vlen_dtype(bytes), "vlen_i2": vlen_dtype("i2")}.get(kind, kind) if isinstance(kind, str) and kind.startswith("v") else kind


def _h5py_dtype(h5py: Any, kind: Any) -> Any:
    if kind == "vstr":
        return h5py.string_dtype()
    if kind == "vbytes":
        return h5py.string_dtype("ascii")
    if kind == "vlen_i2":
        return h5py.vlen_dtype("i2")
    if kind is ENUM:
        return h5py.enum_dtype(dict(ENUM.metadata["enum"]), basetype="u1")
    return kind


def _same(ours: Any, theirs: Any, name: str) -> None:
    assert type(ours) is type(theirs), (name, type(ours), type(theirs))
    if isinstance(theirs, (np.ndarray, np.generic)):
        assert ours.dtype == theirs.dtype and np.shape(ours) == np.shape(theirs), (name, ours.dtype, theirs.dtype)
        for key in ("vlen", "enum"):  # h5py's "h5py_encoding" tag on fixed strings is not reproduced
            assert (ours.dtype.metadata or {}).get(key) == (theirs.dtype.metadata or {}).get(key), name
        if theirs.dtype.hasobject:
            assert [np.asarray(x).tolist() for x in np.ravel(ours)] == [np.asarray(x).tolist() for x in np.ravel(theirs)], name
        else:
            assert np.asarray(ours).tobytes() == np.asarray(theirs).tobytes(), name
    else:
        assert ours == theirs, name


def test_attributes_equal_h5py(tmp_path: Path) -> None:
    h5py = pytest.importorskip("h5py")
    obj_arr = ("vlen_i2",)

    async def write() -> None:
        w = Writer(PosixStorage(tmp_path), "hsdstest")
        await w.create_domain(DOMAIN)
        for name, value, kind in ORACLE_CASES:
            await w.set_attribute(DOMAIN, "/", name, value, _ours_dtype(kind))

    asyncio.run(write())
    with h5py.File(tmp_path / "oracle.h5", "w") as f:
        for name, value, kind in ORACLE_CASES:
            v = np.array(value, dtype=object) if name in obj_arr else value
            f.attrs.create(name, v, dtype=_h5py_dtype(h5py, kind))
    with h5py.File(tmp_path / "oracle.h5", "r") as f, hb.open_domain(DOMAIN, root_dir=str(tmp_path)) as d:
        assert sorted(d.attrs) == sorted(f.attrs)
        for name, _value, _kind in ORACLE_CASES:
            _same(d.attrs[name], f.attrs[name], name)


def test_groups_equal_h5py(root: Path, tmp_path: Path) -> None:
    h5py = pytest.importorskip("h5py")
    with h5py.File(tmp_path / "oracle.h5", "w") as f:
        f.create_dataset("grid", data=np.arange(64, dtype="<f4").reshape(8, 8))
        f.create_group("grp/nested").create_dataset("table", data=np.zeros(6, dtype=CMPD))
        f.create_group("empty")
        f["grp/refd"] = np.arange(3)
        f["grp/soft"] = h5py.SoftLink("nested/table")
        f["abs"] = h5py.SoftLink("/grp/nested")
        f["dangling"] = h5py.SoftLink("/nowhere")
        f["grp/ext"] = h5py.ExternalLink("other.h5", "/data")
    with h5py.File(tmp_path / "oracle.h5", "r") as f, hb.open_domain(DOMAIN, root_dir=str(root)) as d:
        assert d.keys() == list(f.keys())
        assert list(d.root["grp"]) == list(f["grp"])
        ours: list[str] = []
        theirs: list[str] = []
        d.visit(ours.append)
        f.visit(theirs.append)
        assert ours == theirs
        for p in ("grp", "/grp/nested", "grp/soft", "abs/table", "dangling", "nope", "grp/nested/table", "grp/ext", "grp/ext/x", "/", "grid/x"):
            assert (p in d) == (p in f), p
        assert isinstance(f.get("grp/ext", getlink=True), h5py.ExternalLink)
        assert d.root.get("grp/ext", getlink=True).path == f.get("grp/ext", getlink=True).path
        assert len(d.root["grp"]) == len(f["grp"])


def test_a_crafted_attribute_shape_is_refused_before_allocating() -> None:
    """A stored attribute claiming 2**40 elements for a short value must not allocate them."""
    from hsds_backends.attrs import decode_attribute
    from hsds_backends.errors import DatasetJsonError

    huge = {"class": "H5S_SIMPLE", "dims": [2**40]}
    vlen = {"type": {"class": "H5T_STRING", "charSet": "H5T_CSET_UTF8", "length": "H5T_VARIABLE"}, "shape": huge, "value": ["a"]}
    with pytest.raises(DatasetJsonError, match=r"attribute 'v' has 1 values for shape \[1099511627776\]; the object JSON is corrupt"):
        decode_attribute("v", vlen)
    ref = {"type": {"class": "H5T_REFERENCE", "base": "H5T_STD_REF_OBJ"}, "shape": huge, "value": ["groups/g-1"]}
    with pytest.raises(DatasetJsonError, match=r"attribute 'r' has 1 values for shape \[1099511627776\]"):
        decode_attribute("r", ref)
    fixed = {"type": "H5T_STD_I32LE", "shape": huge, "value": [1]}
    with pytest.raises(DatasetJsonError, match=r"attribute 'i': value .* does not fit type"):
        decode_attribute("i", fixed)
