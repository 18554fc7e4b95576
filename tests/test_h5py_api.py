"""The h5py-style dataset API (docs/api.md §2–§3): error text, the mask read paths, read_direct,
iter_chunks, asstr, the properties. Generated comparisons with h5py are in test_h5py_oracle.py."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import hsds_backends as hb
from hsds_backends.dtypes import vlen_dtype
from hsds_backends.h5py_index import iter_chunk_slices, parse_h5py_index
from hsds_backends.storage.posix import PosixStorage
from hsds_backends.writer import Writer

DOMAIN = "/home/test/h5api.h5"
GRID = np.arange(600, dtype="<i4").reshape(20, 30)
CMPD = np.dtype([("id", "<i4"), ("temp", ">f8"), ("name", vlen_dtype(str))])


async def _write(root: Path) -> None:
    w = Writer(PosixStorage(root), "hsdstest")
    await w.create_domain(DOMAIN)
    await w.create_dataset(DOMAIN, "/grid", GRID, chunks=(8, 8), filters=["shuffle", ("gzip", 3), "fletcher32"], maxshape=(None, 30))
    await w.create_dataset(DOMAIN, "/scalar", np.array(2.5, dtype=">f8"))
    table = np.zeros(5, dtype=CMPD)
    table["id"] = np.arange(5)
    table["temp"] = np.arange(5) / 2
    table["name"] = np.array(["a", "bé", "", "ccc", "d"], dtype=object)
    await w.create_dataset(DOMAIN, "/table", table, chunks=(2,))
    await w.create_dataset(DOMAIN, "/fixed", np.array([b"ab", b"cde"], dtype="S3"))
    await w.create_group(DOMAIN, "/grp")


@pytest.fixture(scope="module")
def dom(tmp_path_factory: pytest.TempPathFactory) -> Any:
    root = tmp_path_factory.mktemp("h5api")
    asyncio.run(_write(root))
    with hb.open_domain(DOMAIN, root_dir=str(root)) as d:
        yield d


@pytest.mark.parametrize(
    ("key", "cls", "text"),
    [
        ([3, 1], hb.SelectionTypeError, r"index list \[3, 1\] on dimension 0 must be strictly increasing \(as in h5py\); sort it"),
        (([1, 2], [3, 4]), hb.SelectionTypeError, r"index lists on dimensions 0 and 1: h5py-style reads take one index list"),
        (np.s_[::-1], hb.SelectionValueError, r"slice slice\(None, None, -1\) on dimension 0 has step -1; .* reverse the result with \[::-1\]"),
        (np.s_[0:5:0], hb.SelectionValueError, r"has step 0; use a step of 1 or more"),
        ((1, 2, 3), hb.SelectionValueError, r"3 indices for a dataset of rank 2 \(shape \[20, 30\]\)"),
        ((Ellipsis, Ellipsis), hb.SelectionValueError, r"more than one ellipsis"),
        (20, hb.SelectionError, r"index 20 is out of range for dimension 0 \(extent 20\)"),
        (-21, hb.SelectionError, r"index -21 is out of range for dimension 0"),
        ((slice(None), [0, 30]), hb.SelectionError, r"index 30 in the list on dimension 1 is out of range \(extent 30\)"),
        (None, hb.SelectionTypeError, r"indexing with None \(np.newaxis\) is not supported"),
        (1.5, hb.SelectionTypeError, r"index 1.5 on dimension 0 is not an integer, a slice"),
        (np.ones(19, bool), hb.SelectionTypeError, r"boolean mask of shape \[19\] matches neither the dataset's shape \[20, 30\]"),
        ((slice(None), np.ones(29, bool)), hb.SelectionTypeError, r"boolean index of shape \[29\] on dimension 1 does not match its extent 30"),
        (np.array([1.0]), hb.SelectionTypeError, r"must hold integers, not float64"),
        ("temp", hb.FieldError, r"field name\(s\) \['temp'\] given, but the dataset's type int32 is not compound"),
    ],
)
def test_wrong_index_raises_h5pys_class_with_a_message_naming_it(dom: Any, key: Any, cls: type, text: str) -> None:
    builtin = {hb.SelectionTypeError: TypeError, hb.SelectionValueError: ValueError, hb.SelectionError: IndexError, hb.FieldError: ValueError}[cls]
    with pytest.raises(cls, match=text) as e:
        dom["/grid"][key]
    assert isinstance(e.value, builtin)


def test_fields(dom: Any) -> None:
    t = dom["/table"]
    assert t["temp"].dtype == np.dtype(">f8") and t["temp"].tolist() == [0, 0.5, 1, 1.5, 2]
    assert t[1:3, "id"].tolist() == [1, 2]
    assert t["id", "temp"].dtype.names == ("id", "temp") and t[["temp"]].dtype.names == ("temp",)
    assert t.fields("id")[::2].tolist() == [0, 2, 4] and t.fields(["id"]).dtype.names == ("id",)
    assert t.fields("temp").dtype == np.dtype(">f8")
    assert t[2, "id"] == 2 and isinstance(t[2, "id"], np.int32)  # a 0-d result is a numpy scalar
    assert t.read(np.s_[2], fields="id").shape == ()  # read() keeps a 0-d array (it was made 1-d)
    with pytest.raises(hb.FieldError, match=r"unknown field 'nope'; the dataset's fields are \['id', 'temp', 'name'\]"):
        t.fields("nope")
    with pytest.raises(ValueError, match="'nope'"):
        t["nope"]


def test_variable_length_strings_are_bytes_as_in_h5py_and_asstr_decodes(dom: Any) -> None:
    t = dom["/table"]
    assert t["name"].tolist() == [b"a", "bé".encode(), b"", b"ccc", b"d"]
    assert t[1]["name"] == "bé".encode()
    assert t.read(fields="name").tolist() == ["a", "bé", "", "ccc", "d"]  # read() keeps str
    f = dom["/fixed"]
    assert f[:].tolist() == [b"ab", b"cde"] and f.asstr()[:].tolist() == ["ab", "cde"] and f.asstr()[1] == "cde"
    assert f.asstr().dtype == np.dtype(object) and len(f.asstr()) == 2
    with pytest.raises(TypeError, match=r"asstr\(\) needs a string dataset; dataset '/grid' has type int32"):
        dom["/grid"].asstr()


@pytest.mark.parametrize("density", ["dense", "sparse"])
def test_a_full_shape_mask_gives_a_1d_result_in_c_order(dom: Any, density: str) -> None:
    mask = np.zeros(GRID.shape, bool)
    if density == "dense":  # read as its bounding box
        mask[3:9, 4:20] = np.arange(6 * 16).reshape(6, 16) % 3 == 0
    else:  # read as points
        mask[0, 0] = mask[19, 29] = mask[7, 11] = True
    r = dom["/grid"].read_result(np.s_[0:1, 0:1])  # warm the reader
    assert r.data.shape == (1, 1)
    got = dom["/grid"][mask]
    assert got.shape == (int(mask.sum()),) and got.tobytes() == GRID[mask].tobytes()
    assert dom["/grid"][np.zeros(GRID.shape, bool)].shape == (0,)
    assert dom["/table"][np.array([True, False, True, False, True]), "id"].tolist() == [0, 2, 4]


def test_read_direct(dom: Any) -> None:
    g = dom["/grid"]
    out = np.full((4, 5), -1.0)
    g.read_direct(out, np.s_[2:4, 10:13], np.s_[1:3, 2:5])
    assert out[1:3, 2:5].tolist() == GRID[2:4, 10:13].tolist() and (out[0] == -1).all()
    row = np.zeros((3, 30), np.int64)
    g.read_direct(row, np.s_[5])  # one row broadcast to every row of the destination
    assert (row == GRID[5]).all()
    whole = np.zeros(GRID.shape, "<i4")
    g.read_direct(whole)
    assert whole.tobytes() == GRID.tobytes()
    with pytest.raises(TypeError, match=r"must be C-contiguous and writable"):
        g.read_direct(np.zeros((30, 20)).T)
    with pytest.raises(TypeError, match=r"cannot broadcast the source selection's shape \[3, 3\] to the destination selection's shape \[2, 2\]"):
        g.read_direct(np.zeros((2, 2)), np.s_[0:3, 0:3])
    with pytest.raises(TypeError, match=r"read_direct needs a numpy array to read into, got list"):
        g.read_direct([0, 0])


def test_properties_len_iter_and_chunks(dom: Any) -> None:
    g = dom["/grid"]
    assert (g.ndim, g.size, g.nbytes, g.maxshape) == (2, 600, 2400, (None, 30))
    assert (g.compression, g.compression_opts, g.shuffle, g.fletcher32) == ("gzip", 3, True, True)
    assert len(g) == 20 and [r.tolist() for r in g][3] == GRID[3].tolist() and np.asarray(g).tobytes() == GRID.tobytes()
    s = dom["/scalar"]
    assert (s.ndim, s.size, s.maxshape, s.compression, s.shuffle) == (0, 1, (), None, False)
    assert s[()] == 2.5 and isinstance(s[()], np.float64) and s[...].shape == ()
    with pytest.raises(TypeError, match=r"dataset '/scalar' is scalar and has no len\(\)"):
        len(s)
    with pytest.raises(ValueError, match=r"index 0 slices a scalar dataset; read its value with d\[\(\)\] or d\[\.\.\.\]"):
        s[0]
    chunks = list(g.iter_chunks())
    assert len(chunks) == 3 * 4 and chunks[0] == (slice(0, 8, 1), slice(0, 8, 1)) and chunks[-1] == (slice(16, 20, 1), slice(24, 30, 1))
    assert list(g.iter_chunks(np.s_[7:9, 3])) == [(slice(7, 8, 1), slice(3, 4, 1)), (slice(8, 9, 1), slice(3, 4, 1))]


def test_iter_chunks_refusals() -> None:
    with pytest.raises(hb.SelectionValueError, match=r"must give one int or slice per dimension \(2\)"):
        list(iter_chunk_slices((4, 4), (2, 2), np.s_[0:2]))
    with pytest.raises(hb.SelectionValueError, match=r"on dimension 0 must lie within the dataset and not be empty \(0 <= start < stop <= 4\)"):
        list(iter_chunk_slices((4, 4), (2, 2), np.s_[0:9, 0:1]))
    with pytest.raises(hb.SelectionTypeError, match=r"\[1, 2\] on dimension 0 must be an int or a slice"):
        list(iter_chunk_slices((4, 4), (2, 2), ([1, 2], slice(None))))
    with pytest.raises(hb.SelectionTypeError, match="a scalar dataset has no chunks"):
        iter_chunk_slices((), (1,))  # refused when called, as h5py's iter_chunks
    with pytest.raises(hb.SelectionValueError, match=r"on dimension 0 must lie within the dataset and not be empty \(0 <= start < stop <= 0\)"):
        iter_chunk_slices((0, 3), (4, 3))


def test_domain_is_h5pys_file(dom: Any) -> None:
    assert isinstance(dom["grp"], hb.Group) and isinstance(dom["/grid"], hb.Dataset)
    assert dom.get("nope") is None and dom.get("nope", 5) == 5
    with pytest.raises(KeyError, match="no link 'nope'"):
        dom["nope"]
    with pytest.raises(hb.DatasetNotFoundError, match=r"'/grp' in domain .* is not a dataset"):
        dom.dataset("/grp")
    assert dom.dataset("grid").name == "/grid"


def test_parse_keeps_python_bools_as_integers_and_refuses_numpy_bools() -> None:
    idx = parse_h5py_index(True, (3, 4), np.dtype("<f4"))
    assert idx.selection is not None and idx.selection.result_shape == (4,)
    with pytest.raises(hb.SelectionTypeError):
        parse_h5py_index(np.True_, (3, 4), np.dtype("<f4"))


def test_compression_opts_reads_the_level_as_the_decoder_does(tmp_path: Path) -> None:
    """A level stored as text ("4") is the level the codecs apply, and what compression_opts reports."""
    from hsds_backends.codecs.filters import filter_ops

    deflate = {"class": "H5Z_FILTER_DEFLATE", "id": 1, "name": "deflate", "level": "4"}

    async def write() -> None:
        await Writer(PosixStorage(tmp_path), "hsdstest").create_dataset(DOMAIN, "/z", np.arange(10), chunks=(5,), filters=[deflate])

    asyncio.run(write())
    with hb.open_domain(DOMAIN, root_dir=str(tmp_path)) as d:
        z = d["/z"]
        assert (z.compression, z.compression_opts) == ("gzip", filter_ops(z.meta.filters).level) == ("gzip", 4)
        assert z[:].tolist() == list(range(10))
