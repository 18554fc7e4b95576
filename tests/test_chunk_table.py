"""``H5D_CHUNKED_REF_INDIRECT``: chunk locations from the chunk table, hyper-chunks, and bad input (docs/hsds-format.md §3.5).

Datasets are written by the project's writer: a linked "HDF5-like" file of HDF5 chunks
(shuffle → zlib → fletcher32) and a chunk-table dataset of (offset, size[, file]) rows. Reads
through ``inline`` are compared with numpy; the conformance suite and the equivalence tests run
the same layouts on every backend. Every refusal is checked by its text.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import hsds_backends as hb
from hsds_backends.chunk_table import MAX_RANGEGET_GAP, merged_ranges
from hsds_backends.dataset import ChunkLocation, DatasetMeta
from hsds_backends.errors import ChunkDecodeError, DatasetJsonError, LimitError, StoragePathError, TaskError
from hsds_backends.ids import chunk_key, object_key
from hsds_backends.api import to_selection
from hsds_backends.kernel import process, run_task
from hsds_backends.plan import plan_hyperslab
from hsds_backends.storage import PosixStorage
from hsds_backends.tasks import ChunkTask
from hsds_backends.writer import Writer

BUCKET = "hsdstest"
DOMAIN = "/home/t/indirect.h5"


def _write(root: Path, *datasets: dict[str, Any]) -> list[DatasetMeta]:
    async def go() -> list[DatasetMeta]:
        w = Writer(PosixStorage(root), BUCKET)
        return [await w.create_linked_dataset(DOMAIN, d.pop("h5path"), d.pop("data"), layout="H5D_CHUNKED_REF_INDIRECT", **d) for d in datasets]

    return asyncio.run(go())


def _read(root: Path, h5path: str, sel: Any = None, config: dict[str, Any] | None = None, backend: str = "inline") -> np.ndarray[Any, Any]:
    with hb.open_domain(DOMAIN, config={"root_dir": str(root), "bucket_name": BUCKET, **(config or {})}) as dom:
        return dom[h5path].read(sel, backend=backend)


def _edit_json(root: Path, obj_id: str, edit: Callable[[dict[str, Any]], None]) -> None:
    path = root / BUCKET / object_key(obj_id)
    doc = json.loads(path.read_text())
    edit(doc)
    path.write_text(json.dumps(doc))


def _table_rows(root: Path, meta: DatasetMeta) -> np.ndarray[Any, Any]:
    async def go() -> np.ndarray[Any, Any]:
        async with hb.Reader({"root_dir": str(root), "bucket_name": BUCKET}) as reader:
            table = await reader.dataset_meta(BUCKET, str(meta.chunk_table_id))
            return (await reader.run(plan_hyperslab(table, to_selection(None, table.shape)))).data

    return asyncio.run(go())


def _rewrite_table(root: Path, meta: DatasetMeta, edit: Callable[[np.ndarray[Any, Any]], None]) -> None:
    """Change chunk-table rows in place (the table is one chunk, written unfiltered here)."""
    table = _table_rows(root, meta)
    edit(table)

    async def go() -> None:
        st = PosixStorage(root)
        tmeta = DatasetMeta.from_json({**json.loads((root / BUCKET / object_key(str(meta.chunk_table_id))).read_text()),
                                       "id": meta.chunk_table_id}, BUCKET)
        assert tmeta.chunk_grid == (1,) * len(tmeta.chunk_grid)
        block = np.zeros(tmeta.chunks, dtype=table.dtype)
        block[tuple(slice(0, n) for n in table.shape)] = table
        await st.put(BUCKET, chunk_key(tmeta.chunk_id((0,) * len(tmeta.chunks))), block.tobytes())

    asyncio.run(go())


# ------------------------------------------------------------------ reads


def test_one_hdf5_chunk_per_hsds_chunk_with_an_unwritten_one(tmp_path: Path) -> None:
    a = (np.arange(37 * 29, dtype="<u2").reshape(37, 29) * 3) % 4099
    (meta,) = _write(tmp_path, dict(h5path="/d", data=a, file_key="f.h5", chunks=(8, 6), filters=["shuffle", "gzip"], fillvalue=9,
                                    skip_chunk=lambda i: i == (2, 3)))
    assert (meta.layout_class, meta.hyper_dims, meta.chunk_table_id is not None) == ("H5D_CHUNKED_REF_INDIRECT", None, True)
    want = a.copy()
    want[16:24, 18:24] = 9
    assert _read(tmp_path, "/d").tobytes() == want.tobytes()
    assert _read(tmp_path, "/d", "[1:36:5, 0:29:4]").tobytes() == want[1:36:5, 0:29:4].tobytes()


def test_hyper_chunks_decode_each_hdf5_chunk_and_place_it(tmp_path: Path) -> None:
    a = np.random.default_rng(1).normal(size=(50, 30, 7)).astype(">f8")
    (meta,) = _write(tmp_path, dict(h5path="/h", data=a, file_key="h.h5", chunks=(20, 12, 7), hyper_dims=(5, 4, 7),
                                    filters=["shuffle", ("gzip", 6), "fletcher32"], fillvalue=-1.0, file_in_table=True,
                                    skip_chunk=lambda i: i in ((0, 0, 0), (9, 7, 0))))
    assert meta.hyper_dims == (5, 4, 7) and meta.hyper_factors == (4, 3, 1) and meta.file_uri is None
    want = a.copy()
    want[0:5, 0:4] = -1.0
    want[45:50, 28:30] = -1.0
    assert _read(tmp_path, "/h").tobytes() == want.tobytes()
    pts = np.array([[0, 0, 0], [4, 3, 6], [49, 29, 6], [22, 13, 2]])
    with hb.open_domain(DOMAIN, config={"root_dir": str(tmp_path), "bucket_name": BUCKET}) as dom:
        assert dom["/h"].read_points(pts).tobytes() == want[tuple(pts.T)].tobytes()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data())
def test_hyper_chunk_reads_equal_numpy(tmp_path_factory: pytest.TempPathFactory, data: st.DataObject) -> None:
    """For random shapes, HDF5 chunk shapes, factors, filters and unwritten chunks: any selection equals numpy."""
    rank = data.draw(st.integers(1, 3))
    hyper = tuple(data.draw(st.integers(1, 6)) for _ in range(rank))
    factors = tuple(data.draw(st.integers(1, 4)) for _ in range(rank))
    chunks = tuple(h * f for h, f in zip(hyper, factors, strict=True))
    shape = tuple(data.draw(st.integers(1, 3 * c)) for c in chunks)
    filters = data.draw(st.sampled_from([[], ["gzip"], ["shuffle", ("gzip", 1)], ["shuffle", "gzip", "fletcher32"], ["fletcher32"]]))
    dt = np.dtype(data.draw(st.sampled_from(["<i4", ">f8", "<u2", "i1"])))
    a = np.arange(int(np.prod(shape)), dtype=np.int64).reshape(shape).astype(dt)
    grid = [-(-s // h) for s, h in zip(shape, hyper, strict=True)]
    skipped = set(data.draw(st.lists(st.tuples(*(st.integers(0, g - 1) for g in grid)), max_size=4)))
    root = tmp_path_factory.mktemp("hyper")
    _write(root, dict(h5path="/x", data=a, file_key="x.h5", chunks=chunks, hyper_dims=hyper, filters=filters, fillvalue=5,
                      skip_chunk=lambda i: tuple(i) in skipped, file_in_table=data.draw(st.booleans())))
    want = a.copy()
    for i in skipped:
        want[tuple(slice(j * h, (j + 1) * h) for j, h in zip(i, hyper, strict=True))] = 5
    sel = tuple(
        slice(lo, data.draw(st.integers(lo + 1, s)), data.draw(st.integers(1, 3)))
        for s in shape for lo in [data.draw(st.integers(0, s - 1))]
    )
    assert _read(root, "/x", sel).tobytes() == want[sel].tobytes()


def test_merged_ranges_merge_near_parts_and_skip_empty_ones() -> None:
    parts = [(5000, 100), (0, 0), (5100, 50), (8000, 10), (5150 + MAX_RANGEGET_GAP, 7), (100, 20)]
    assert merged_ranges(parts) == [(100, 20, [5]), (5000, 1157 + MAX_RANGEGET_GAP - 1000, [0, 2, 4]), (8000, 10, [3])]
    assert merged_ranges([(0, 10), (10 + MAX_RANGEGET_GAP + 1, 5)]) == [(0, 10, [0]), (MAX_RANGEGET_GAP + 11, 5, [1])]
    assert merged_ranges([(0, 0), (9, 0)]) == []


@given(st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 500)), max_size=30), st.integers(0, 2000))
def test_merged_ranges_cover_every_part_once(parts: list[tuple[int, int]], gap: int) -> None:
    ranges = merged_ranges(parts, gap)
    members = sorted(j for _, _, m in ranges for j in m)
    assert members == [j for j, (_, size) in enumerate(parts) if size]
    for start, length, m in ranges:
        for j in m:
            assert start <= parts[j][0] and parts[j][0] + parts[j][1] <= start + length
    for (s1, l1, _), (s2, _, _) in zip(ranges, ranges[1:], strict=False):
        assert s2 - (s1 + l1) > gap


def test_a_plan_is_located_in_place_by_one_table_read_on_the_same_backend(tmp_path: Path) -> None:
    a = np.arange(40 * 40, dtype="<i4").reshape(40, 40)
    (meta,) = _write(tmp_path, dict(h5path="/d", data=a, file_key="f.h5", chunks=(10, 10), filters=["gzip"]))

    async def go() -> tuple[list[str], np.ndarray[Any, Any], int]:
        async with hb.Reader({"root_dir": str(tmp_path), "bucket_name": BUCKET}) as reader:
            dset = await (await reader.open(DOMAIN)).get("/d")
            plan = dset.plan("[0:40, 5:15]")
            assert all(t.location is not None and t.location.pending for t in plan.tasks)
            got = (await reader.run(plan, backend="inline")).data
            assert not any(t.location is not None and t.location.pending for t in plan.tasks)  # located in place
            return [str(t.location) for t in plan.tasks[:1]], got, reader.counters("inline").requests

    where, got, requests = asyncio.run(go())
    assert got.tobytes() == a[:, 5:15].tobytes()
    assert where[0].startswith(f"ChunkLocation(bucket='{BUCKET}', key='f.h5', offset=")
    assert requests == 2  # the table's point read and the read itself, both on inline


def test_scalar_indirect_datasets_are_refused(tmp_path: Path) -> None:
    with pytest.raises(DatasetJsonError) as err:
        _write(tmp_path, dict(h5path="/s", data=np.array(3, dtype="<i4"), file_key="s.h5"))
    assert str(err.value) == "a scalar dataset cannot have layout H5D_CHUNKED_REF_INDIRECT (HDF5 never chunks a scalar)"
    with pytest.raises(DatasetJsonError) as err:
        DatasetMeta.from_json(_indirect_json({"class": "H5S_SCALAR"}), BUCKET)
    assert str(err.value) == (
        "dataset 'd-12345678-12345678-1234-123456-123456': a scalar dataset cannot have layout H5D_CHUNKED_REF_INDIRECT "
        "(HDF5 never chunks a scalar)"
    )


def test_an_hdf5_chunk_table_too_large_in_all_is_refused(tmp_path: Path) -> None:
    a = np.arange(64, dtype="<i4").reshape(8, 8)
    (meta,) = _write(tmp_path, dict(h5path="/h", data=a, file_key="g.h5", chunks=(8, 8), hyper_dims=(4, 4)))
    _rewrite_table(tmp_path, meta, lambda rows: rows["size"].__setitem__(..., 600_000))  # 4 x 600 kB: each under, all over
    with pytest.raises(LimitError) as err:
        _read(tmp_path, "/h", config={"chunk_bytes_limit": 1 << 20})
    assert str(err.value) == (
        f"chunk {meta.chunk_id((0, 0))}: its HDF5 chunks hold 2400000 bytes in all, over chunk_bytes_limit (1048576 bytes); "
        "raise config chunk_bytes_limit to read it"
    )


# ------------------------------------------------------------------ bad input


def test_a_pending_location_is_never_read_as_fill(tmp_path: Path) -> None:
    a = np.ones((8, 8), dtype="<i4")
    (meta,) = _write(tmp_path, dict(h5path="/d", data=a, file_key="f.h5", chunks=(4, 4)))
    task = ChunkTask(meta.chunk_id((0, 0)), meta, meta.location((0, 0)), "hyperslab", "[0:4,0:4]")
    msg = (
        f"chunk {task.chunk_id}: its location is in the dataset's chunk table (H5D_CHUNKED_REF_INDIRECT) and was not looked up; "
        "run the plan through Reader.execute, which reads the chunk table first"
    )
    with pytest.raises(TaskError) as err:
        asyncio.run(run_task(task, PosixStorage(tmp_path)))
    assert str(err.value) == msg
    with pytest.raises(TaskError) as err:
        task.to_wire()
    assert str(err.value) == msg


def test_a_table_entry_outside_the_allowed_buckets_is_refused_naming_the_chunk(tmp_path: Path) -> None:
    a = np.arange(64, dtype="<i4").reshape(8, 8)
    (meta,) = _write(tmp_path, dict(h5path="/d", data=a, file_key="f.h5", chunks=(4, 4), file_in_table=True))
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "f.h5").write_bytes((tmp_path / BUCKET / "f.h5").read_bytes())

    def other(rows: np.ndarray[Any, Any]) -> None:
        rows["file_uri"][1, 0] = b"secrets/f.h5"

    _rewrite_table(tmp_path, meta, other)
    cid = meta.chunk_id((1, 0))
    for backend in ("inline", "containers"):
        with pytest.raises(StoragePathError) as err:
            _read(tmp_path, "/d", backend=backend)
        assert str(err.value) == (
            f"chunk {cid}: linked file bucket 'secrets' is not an allowed bucket (allowed: ['{BUCKET}']); "
            "add it to config allowed_buckets to serve it"
        ), backend
    assert _read(tmp_path, "/d", config={"allowed_buckets": f"{BUCKET},secrets"}).tobytes() == a.tobytes()  # allowed on purpose


def test_an_entry_past_the_end_of_the_file_raises_naming_chunk_offset_and_size(tmp_path: Path) -> None:
    a = np.arange(64, dtype="<i4").reshape(8, 8)
    m1, m2 = _write(
        tmp_path,
        dict(h5path="/d", data=a, file_key="f.h5", chunks=(4, 4), filters=["gzip"]),
        dict(h5path="/h", data=a, file_key="g.h5", chunks=(8, 8), hyper_dims=(4, 4), filters=["gzip"]),
    )
    size = (tmp_path / BUCKET / "f.h5").stat().st_size
    _rewrite_table(tmp_path, m1, lambda rows: rows.__setitem__((1, 1), (size - 10, 40)))
    with pytest.raises(ChunkDecodeError) as err:
        _read(tmp_path, "/d")
    assert str(err.value) == (
        f"chunk {m1.chunk_id((1, 1))}: its bytes (offset {size - 10}, size 40) run past the end of {BUCKET}/f.h5 "
        "(10 of them are there); the dataset's chunk locations are wrong"
    )
    gsize = (tmp_path / BUCKET / "g.h5").stat().st_size
    _rewrite_table(tmp_path, m2, lambda rows: rows.__setitem__((1, 0), (gsize + 100, 30)))
    with pytest.raises(ChunkDecodeError) as err:
        _read(tmp_path, "/h")
    assert str(err.value) == (
        f"chunk {m2.chunk_id((0, 0))}: HDF5 chunk 2 of it (offset {gsize + 100}, size 30) runs past the end of {BUCKET}/g.h5 "
        "(0 of its bytes are there); its chunk-table entry is wrong"
    )
    assert _read(tmp_path, "/d", "[0:4, 0:8]").tobytes() == a[0:4].tobytes()  # the good chunks still read


def test_negative_and_oversized_entries_are_refused(tmp_path: Path) -> None:
    a = np.arange(64, dtype="<i4").reshape(8, 8)
    (meta,) = _write(tmp_path, dict(h5path="/d", data=a, file_key="f.h5", chunks=(4, 4)))
    _rewrite_table(tmp_path, meta, lambda rows: rows.__setitem__((0, 1), (-5, 16)))
    with pytest.raises(DatasetJsonError) as err:
        _read(tmp_path, "/d")
    assert str(err.value) == (
        f"chunk {meta.chunk_id((0, 1))} has chunk-table entry offset -5, size 16; neither may be negative (table {meta.chunk_table_id})"
    )
    _rewrite_table(tmp_path, meta, lambda rows: rows.__setitem__((0, 1), (0, 2_000_000_000)))
    with pytest.raises(LimitError) as err:
        _read(tmp_path, "/d", config={"chunk_bytes_limit": 1 << 20})
    assert str(err.value) == (
        f"chunk {meta.chunk_id((0, 1))} has chunk-table entry size 2000000000, over chunk_bytes_limit (1048576 bytes); "
        "raise config chunk_bytes_limit to read it"
    )


def test_hyper_dims_that_do_not_divide_the_chunk_dims_are_refused(tmp_path: Path) -> None:
    a = np.arange(64, dtype="<i4").reshape(8, 8)
    (meta,) = _write(tmp_path, dict(h5path="/h", data=a, file_key="g.h5", chunks=(8, 8), hyper_dims=(4, 4)))

    def bad(doc: dict[str, Any]) -> None:
        doc["creationProperties"]["layout"]["hyper_dims"] = [3, 4]

    _edit_json(tmp_path, meta.id, bad)
    with pytest.raises(DatasetJsonError) as err:
        _read(tmp_path, "/h")
    assert str(err.value) == (
        f"dataset {meta.id!r}: hyper_dims [3, 4] do not divide the chunk dims [8, 8] (dimension 0: 8 is not a multiple of 3); "
        "each HSDS chunk must hold whole HDF5 chunks"
    )


@pytest.mark.parametrize(
    ("layout", "message"),
    [
        ({"chunk_table": None}, "layout H5D_CHUNKED_REF_INDIRECT needs 'chunk_table', the id of the dataset of chunk locations (d-…); got None"),
        ({"hyper_dims": [4]}, "hyper_dims [4] must be 2 positive extents, one per chunk dim [8, 8]"),
        ({"hyper_dims": "4:4"}, "hyper_dims '4:4' must be a list of integers"),
    ],
)
def test_malformed_indirect_layouts_are_refused(layout: dict[str, Any], message: str) -> None:
    with pytest.raises(DatasetJsonError) as err:
        DatasetMeta.from_json(_indirect_json({"class": "H5S_SIMPLE", "dims": [16, 16]}, dims=[8, 8], file_uri="b/f.h5", **layout), BUCKET)
    assert str(err.value) == f"dataset 'd-12345678-12345678-1234-123456-123456': {message}"


def test_an_unusable_or_missing_chunk_table_is_refused(tmp_path: Path) -> None:
    a = np.arange(64, dtype="<i4").reshape(8, 8)
    m1, plain = asyncio.run(_two(tmp_path, a))

    def point_at(table_id: str) -> Callable[[dict[str, Any]], None]:
        def edit(doc: dict[str, Any]) -> None:
            doc["creationProperties"]["layout"]["chunk_table"] = table_id
        return edit

    _edit_json(tmp_path, m1.id, point_at(plain.id))  # a table of plain integers
    with pytest.raises(DatasetJsonError) as err:
        _read(tmp_path, "/d")
    assert str(err.value) == (
        f"chunk table {plain.id} of dataset {m1.id} has type int32; it must be a compound whose first two fields are "
        "integers (byte offset, byte size), with the file as a third string field when the layout has no file_uri"
    )
    gone = plain.id[:-6] + "ffffff"
    _edit_json(tmp_path, m1.id, point_at(gone))
    with pytest.raises(hb.errors.DatasetNotFoundError) as err:
        _read(tmp_path, "/d")
    assert str(err.value) == f"chunk table {gone} of dataset {m1.id} is missing from bucket '{BUCKET}'"
    _edit_json(tmp_path, m1.id, point_at("d-nonsense"))
    with pytest.raises(DatasetJsonError) as err:
        _read(tmp_path, "/d")
    assert str(err.value).startswith(f"chunk table 'd-nonsense' of dataset {m1.id} is not a dataset id: ")


def _indirect_json(shape: dict[str, Any], **layout: Any) -> dict[str, Any]:
    """A dataset JSON of layout H5D_CHUNKED_REF_INDIRECT (``layout`` adds or replaces layout keys)."""
    return {
        "id": "d-12345678-12345678-1234-123456-123456", "type": {"class": "H5T_INTEGER", "base": "H5T_STD_I32LE"}, "shape": shape,
        "creationProperties": {"layout": {"class": "H5D_CHUNKED_REF_INDIRECT", "chunk_table": "d-12345678-12345678-1234-123456-654321",
                                          **layout}},
    }


async def _two(root: Path, a: np.ndarray[Any, Any]) -> tuple[DatasetMeta, DatasetMeta]:
    w = Writer(PosixStorage(root), BUCKET)
    m1 = await w.create_linked_dataset(DOMAIN, "/d", a, file_key="f.h5", layout="H5D_CHUNKED_REF_INDIRECT", chunks=(4, 4))
    plain = await w.create_dataset(DOMAIN, "/plain", np.zeros((2, 2), dtype="<i4"))
    return m1, plain


def test_the_wire_carries_hyper_chunks_and_refuses_bad_counts(tmp_path: Path) -> None:
    a = np.arange(64, dtype="<i4").reshape(8, 8)
    (meta,) = _write(tmp_path, dict(h5path="/h", data=a, file_key="g.h5", chunks=(8, 8), hyper_dims=(4, 4), filters=["gzip"]))
    loc = ChunkLocation(BUCKET, "g.h5", linked=True, parts=((10, 5), (0, 0), (20, 6), (40, 7)), hyper_dims=(4, 4))
    task = ChunkTask(meta.chunk_id((0, 0)), meta, loc, "hyperslab", "[0:8,0:8]")
    wire = task.to_wire()
    assert (wire["s3offset"], wire["s3size"], wire["hyper_dims"]) == ([10, 0, 20, 40], [5, 0, 6, 7], [4, 4])
    assert ChunkTask.from_wire(wire).location == loc
    assert ChunkTask.from_wire({**wire, "s3offset": "10:0:20:40", "s3size": "5:0:6:7", "hyper_dims": "4:4"}).location == loc
    assert ChunkTask.from_wire({**wire, "s3size": [0, 0, 0, 0]}).location is None  # nothing stored: the fill value
    for change, message in [
        ({"s3offset": [10, 0, 20]}, "3 s3offset values but 4 s3size values; give one of each per HDF5 chunk"),
        ({"s3offset": [1, 2], "s3size": [3, 4]}, "2 HDF5 chunks given; chunk dims [8, 8] over hyper_dims [4, 4] make 4"),
        ({"hyper_dims": [3, 4]}, "hyper_dims [3, 4] do not divide the chunk dims [8, 8] (dimension 0: 8 is not a multiple of 3); "
                                 "each HSDS chunk must hold whole HDF5 chunks"),
        ({"hyper_dims": [8]}, "hyper_dims [8] must be 2 positive extents, one per chunk dim [8, 8]"),
        ({"s3size": [5, None, 6, 7]}, "s3size [5, None, 6, 7] must be an integer or a ':'-separated list of integers"),
        ({"s3size": [5, True, 6, 7]}, "s3size [5, True, 6, 7] must be an integer or a ':'-separated list of integers"),
        ({"s3size": [2**30, 2**30, 0, 0]}, "s3size values sum to 2147483648 bytes, over chunk_bytes_limit (268435456 bytes)"),
        ({"hyper_dims": None}, "s3offset/s3size are lists (hyper-chunks) but hyper_dims is missing"),
        ({"s3size": [5, 0, -6, 7]}, "s3offset 20 / s3size -6 may not be negative"),
    ]:
        with pytest.raises(TaskError) as err:
            ChunkTask.from_wire({k: v for k, v in {**wire, **change}.items() if v is not None})
        assert str(err.value) == f"chunk {task.chunk_id}: {message}", change
    with pytest.raises(TaskError) as err:
        ChunkTask.from_wire({**wire, "s3offset": "x:1:2:3"})
    assert str(err.value) == f"chunk {task.chunk_id}: s3offset 'x:1:2:3' must be an integer or a ':'-separated list of integers"
    with pytest.raises(TaskError) as err:
        ChunkTask.from_wire({**wire, "s3offset": ":" * (1 << 16)})  # counted before it is split
    assert str(err.value) == f"chunk {task.chunk_id}: s3offset lists more than 65536 values"
    # a hyper-chunk decodes to the same bytes however its HDF5 chunks were fetched
    good = ChunkTask.from_wire({**wire, **_real_parts(tmp_path, meta)})
    res = asyncio.run(run_task(good, PosixStorage(tmp_path)))
    assert bytes(res.data) == a.tobytes()
    raw = (tmp_path / BUCKET / "g.h5").read_bytes()
    offs, sizes = _real_parts(tmp_path, meta)["s3offset"], _real_parts(tmp_path, meta)["s3size"]
    joined = b"".join(raw[o : o + n] for o, n in zip(offs, sizes, strict=True))
    assert bytes(process(good, joined).data) == a.tobytes()


def _real_parts(root: Path, meta: DatasetMeta) -> dict[str, Any]:
    rows = _table_rows(root, meta)
    return {"s3offset": rows["offset"].reshape(-1).tolist(), "s3size": rows["size"].reshape(-1).tolist()}
