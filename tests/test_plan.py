"""Tests for hsds_backends.plan: planning chunk tasks and assembling results (docs/hsds-format.md §1.3, §3.4, §5)."""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import pytest

from hsds_backends import kernel, vlen_dtype
from hsds_backends.dataset import DatasetMeta
from hsds_backends.errors import FieldError, QueryError, SelectionError, TaskError
from hsds_backends.ids import chunk_key
from hsds_backends.plan import Assembler, ReadPlan, plan_hyperslab, plan_points, plan_query
from hsds_backends.selection import Coords, Hyperslab, Slice, from_index, parse_select
from hsds_backends.storage import PosixStorage
from hsds_backends.tasks import ChunkResult
from hsds_backends.writer import Writer

BUCKET = "hsdstest"
DOMAIN = "/home/test_user1/plan.h5"
ARANGE = np.arange(20000, dtype="<i4").reshape(100, 200)
TABLE = np.dtype([("id", "<i8"), ("flag", "u1"), ("temp", "<f4"), ("name", "S4")])
FILL_ROW = np.array((-1, 7, 1.5, b"fill"), dtype=TABLE)


async def run(plan: ReadPlan, storage: PosixStorage, order: str = "reverse") -> tuple[np.ndarray, Assembler]:
    asm = Assembler(plan)
    results = [await kernel.run_task(t, storage) for t in plan.tasks]
    idx = list(range(len(results)))
    if order == "reverse":
        idx.reverse()
    for i in idx:
        asm.add(i, results[i])
    return asm.result(), asm


def meta_of(shape: list[int], chunks: list[int], type_json: Any = "H5T_STD_I32LE", **cp: Any) -> DatasetMeta:
    return DatasetMeta.from_json(
        {
            "id": "d-147ada2c-2ffb2839-39b5-e935ed-e55bf0",
            "type": type_json,
            "shape": {"class": "H5S_SIMPLE", "dims": shape},
            "layout": {"class": "H5D_CHUNKED", "dims": chunks},
            "creationProperties": cp,
        },
        BUCKET,
    )


# --------------------------------------------------------------------------- plan_hyperslab


def test_plan_hyperslab_tasks_for_verified_layout() -> None:
    meta = meta_of([100, 200], [40, 50])
    plan = plan_hyperslab(meta, parse_select("[40:42,100:103]", meta.shape))
    assert plan.kind == "hyperslab"
    assert [t.chunk_id for t in plan.tasks] == ["c-147ada2c-2ffb2839-39b5-e935ed-e55bf0_1_2"]
    assert plan.tasks[0].select == "[0:2,0:3]"  # the §4.2 verified DN request
    assert plan.tasks[0].location is not None
    assert plan.tasks[0].location.key == "db/147ada2c-2ffb2839/d/39b5-e935ed-e55bf0/1_2"
    assert plan.block_shape == (2, 3) and plan.result_shape == (2, 3)
    assert plan.nbytes == 24
    assert plan.max_task_bytes == 40 * 50 * 4


def test_plan_hyperslab_chunk_order_and_selects() -> None:
    meta = meta_of([100, 200], [40, 50])
    plan = plan_hyperslab(meta, parse_select("[30:90:1,0:200:90]", meta.shape))
    # dim 0 → chunks 0,1,2; dim 1 (step 90 > 50) → points 0,90,180 → chunks 0,1,3 (§1.3)
    assert [t.chunk_id.split("_", 1)[1] for t in plan.tasks] == [
        "0_0",
        "0_1",
        "0_3",
        "1_0",
        "1_1",
        "1_3",
        "2_0",
        "2_1",
        "2_3",
    ]
    assert plan.tasks[0].select == "[30:40,0:1:90]"
    assert plan.tasks[4].select == "[0:40,40:41:90]"
    assert plan.tasks[8].select == "[0:10,30:31:90]"
    assert plan.num_chunks == 9
    assert plan.result_shape == (60, 3)


def test_plan_hyperslab_rank_mismatch() -> None:
    meta = meta_of([100, 200], [40, 50])
    with pytest.raises(SelectionError, match="selection has rank 1, the dataset has rank 2"):
        plan_hyperslab(meta, Hyperslab((Slice(0, 1),)))


def test_plan_hyperslab_empty_selection() -> None:
    meta = meta_of([100, 200], [40, 50])
    plan = plan_hyperslab(meta, from_index(np.s_[5:5, :], meta.shape))
    assert plan.tasks == [] and plan.result_shape == (0, 200)
    out = Assembler(plan).result()
    assert out.shape == (0, 200) and out.dtype == np.dtype("<i4")


def test_plan_fields_errors() -> None:
    meta = meta_of([10], [4], type_json={"class": "H5T_COMPOUND", "fields": [{"name": "a", "type": "H5T_STD_I8LE"}]})
    with pytest.raises(FieldError, match=r"unknown field 'b'; the dataset's fields are \['a'\]"):
        plan_hyperslab(meta, Hyperslab.all(meta.shape), fields="a:b")
    with pytest.raises(FieldError, match="is not a compound"):
        plan_hyperslab(meta_of([10], [4]), Hyperslab.all((10,)), fields=["x"])


# --------------------------------------------------------------------------- assembling hyperslabs


@pytest.mark.parametrize("order", ["forward", "reverse"])
async def test_missing_chunks_filled_with_fill_value(writer: Writer, storage: PosixStorage, order: str) -> None:
    meta = await writer.create_dataset(
        DOMAIN,
        "/d",
        ARANGE,
        chunks=(40, 50),
        fillvalue=-7,
        filters=["gzip"],
        skip_chunk=lambda i: (i[0] + i[1]) % 2 == 0,
    )
    hs = parse_select("[10:95:3,7:180:5]", meta.shape)
    out, asm = await run(plan_hyperslab(meta, hs), storage, order)
    expected = ARANGE.copy()
    for i, j in np.ndindex(3, 4):
        if (i + j) % 2 == 0:
            expected[i * 40 : (i + 1) * 40, j * 50 : (j + 1) * 50] = -7
    np.testing.assert_array_equal(out, expected[10:95:3, 7:180:5])
    assert out.dtype == np.dtype("<i4")
    assert asm.filled == 6


async def test_missing_chunks_without_fill_are_zeros(writer: Writer, storage: PosixStorage) -> None:
    meta = await writer.create_dataset(
        DOMAIN, "/d", ARANGE.astype(">f8"), chunks=(40, 50), skip_chunk=lambda i: i == (0, 0)
    )
    out, asm = await run(plan_hyperslab(meta, from_index(np.s_[38:42, 48:52], meta.shape)), storage)
    assert asm.filled == 1
    want = ARANGE[38:42, 48:52].astype(">f8")
    want[:2, :2] = 0
    np.testing.assert_array_equal(out, want)
    assert out.dtype == np.dtype(">f8")


async def test_compound_fill_and_field_projection_order(writer: Writer, storage: PosixStorage) -> None:
    rows = np.zeros(20, dtype=TABLE)
    rows["id"] = np.arange(20)
    rows["temp"] = np.arange(20) / 4
    rows["name"] = b"r"
    meta = await writer.create_dataset(
        DOMAIN, "/t", rows, chunks=(8,), fillvalue=FILL_ROW, skip_chunk=lambda i: i == (1,)
    )
    out, asm = await run(
        plan_hyperslab(meta, from_index(np.s_[5:12], meta.shape), fields=["name", "temp", "id"]), storage
    )
    assert asm.filled == 1
    assert out.dtype.names == ("name", "temp", "id")  # order given (§5.4), packed
    assert out.dtype.itemsize == 4 + 4 + 8
    assert out["id"].tolist() == [5, 6, 7, -1, -1, -1, -1]
    assert out["name"].tolist() == [b"r"] * 3 + [b"fill"] * 4
    assert out["temp"].tolist() == [1.25, 1.5, 1.75] + [1.5] * 4
    full, _ = await run(plan_hyperslab(meta, Hyperslab.all(meta.shape)), storage)
    assert full.dtype == TABLE
    assert full[9] == FILL_ROW[()]


async def test_points_fill_and_order(writer: Writer, storage: PosixStorage) -> None:
    meta = await writer.create_dataset(
        DOMAIN, "/d", ARANGE, chunks=(40, 50), fillvalue=-1, skip_chunk=lambda i: i == (0, 0)
    )
    pts = [[99, 199], [0, 0], [40, 100], [0, 1], [99, 199]]
    plan = plan_points(meta, pts)
    assert plan.kind == "points" and plan.num_points == 5
    assert len(plan.tasks) == 3  # grouped by chunk
    out, asm = await run(plan, storage)
    assert out.tolist() == [19999, -1, 8100, -1, 19999]  # request order, duplicates kept
    assert asm.filled == 1
    empty = plan_points(meta, np.zeros((0, 2), dtype=np.int64))
    assert empty.tasks == [] and Assembler(empty).result().shape == (0,)


async def test_scalar_plan(writer: Writer, storage: PosixStorage) -> None:
    meta = await writer.create_dataset(DOMAIN, "/s", np.array(-2.5, "<f4"))
    out, _ = await run(plan_hyperslab(meta, Hyperslab((), ())), storage)
    assert out.shape == () and out.dtype == np.dtype("<f4") and out[()] == -2.5
    missing = await writer.create_dataset(DOMAIN, "/s2", shape=(), dtype="<i2", fillvalue=3)
    out, asm = await run(plan_hyperslab(missing, Hyperslab((), ())), storage)
    assert out[()] == 3 and asm.filled == 1


async def test_vlen_hyperslab_with_missing_chunk(writer: Writer, storage: PosixStorage) -> None:
    arr = np.empty((3, 4), vlen_dtype(str))
    arr[...] = "x"
    arr[1, 2] = "héllo"
    meta = await writer.create_dataset(DOMAIN, "/v", arr, chunks=(2, 2), skip_chunk=lambda i: i == (0, 0))
    out, asm = await run(plan_hyperslab(meta, from_index(np.s_[:, 1:3], meta.shape)), storage)
    assert out.tolist() == [["", "x"], ["", "héllo"], ["x", "x"]]
    assert asm.filled == 1


async def test_array_type_missing_chunk_is_filled(writer: Writer, storage: PosixStorage) -> None:
    # H5T_ARRAY dataset (§2.2 sub-array dtype) with one chunk missing
    dt = np.dtype(("<i2", (3, 2)))
    meta = await writer.create_dataset(DOMAIN, "/a", None, shape=(4,), dtype=dt, chunks=(3,))
    a3 = np.arange(24, dtype="<i2").reshape(4, 3, 2)
    await storage.put(BUCKET, chunk_key(meta.chunk_id((0,))), a3[:3].tobytes())
    full = plan_hyperslab(meta, from_index(np.s_[0:3], meta.shape))
    out, _ = await run(full, storage)
    np.testing.assert_array_equal(out, a3[:3])
    out, asm = await run(plan_hyperslab(meta, from_index(np.s_[1:4], meta.shape)), storage)
    want = a3[1:4].copy()
    want[2] = 0
    np.testing.assert_array_equal(out, want)
    assert asm.filled == 1


def test_assembler_rejects_wrong_length_result() -> None:
    meta = meta_of([100, 200], [40, 50])
    plan = plan_hyperslab(meta, parse_select("[0:2,0:3]", meta.shape))
    asm = Assembler(plan)
    cid = plan.tasks[0].chunk_id
    with pytest.raises(TaskError, match=re.escape(f"chunk {cid}: result has 20 bytes, expected 24 (6 × 4)")):
        asm.add(0, ChunkResult(cid, "ok", b"\x00" * 20))


def test_assembler_rejects_malformed_vlen_result() -> None:
    meta = meta_of([4], [4], type_json={"class": "H5T_STRING", "length": "H5T_VARIABLE", "charSet": "H5T_CSET_UTF8"})
    plan = plan_hyperslab(meta, Hyperslab.all(meta.shape))
    cid = plan.tasks[0].chunk_id
    with pytest.raises(TaskError, match=re.escape(f"chunk {cid}: result holds malformed variable-length data")):
        Assembler(plan).add(0, ChunkResult(cid, "ok", b"\x05\x00\x00\x00ab"))


# --------------------------------------------------------------------------- queries


async def _table(writer: Writer, n: int = 60, chunks: int = 8, **kw: Any) -> tuple[DatasetMeta, np.ndarray]:
    rows = np.zeros(n, dtype=TABLE)
    rows["id"] = np.arange(n) * 10
    rows["temp"] = np.arange(n, dtype="<f4")
    rows["flag"] = (np.arange(n) % 5 == 0).astype("u1")
    meta = await writer.create_dataset(DOMAIN, "/t", rows, chunks=(chunks,), **kw)
    return meta, rows


async def test_query_global_limit_takes_lowest_indices(writer: Writer, storage: PosixStorage) -> None:
    meta, _ = await _table(writer)
    plan = plan_query(meta, "flag == 1", limit=4)
    assert plan.limit == 4 and all(t.limit == 4 for t in plan.tasks)
    out, _ = await run(plan, storage, "reverse")  # results arrive last chunk first
    assert out["index"].tolist() == [0, 5, 10, 15]
    assert out["id"].tolist() == [0, 50, 100, 150]
    out, _ = await run(plan_query(meta, "flag == 1"), storage)
    assert out["index"].tolist() == list(range(0, 60, 5))


async def test_stepped_query_indices_are_absolute(writer: Writer, storage: PosixStorage) -> None:
    # §5.3: HSDS master reports hits at rows 6/12/18 (with a step) as 5/9/13; we must report 6/12/18
    rows = np.zeros(24, dtype=TABLE)
    rows["id"] = np.arange(24)
    rows["flag"][[6, 12, 18]] = 1
    rows["flag"][[7, 13]] = 1  # off the step grid: must not be reported
    for chunks in (24, 8, 5):
        meta = await writer.create_dataset(DOMAIN, f"/s{chunks}", rows, chunks=(chunks,))
        out, _ = await run(plan_query(meta, "flag == 1", parse_select("[0:24:3]", meta.shape)), storage)
        assert out["index"].tolist() == [6, 12, 18], chunks
        assert out["id"].tolist() == [6, 12, 18]
        out, _ = await run(plan_query(meta, "flag == 1", parse_select("[1:24:6]", meta.shape)), storage)
        assert out["index"].tolist() == [7, 13], chunks


async def test_query_fields_projection_and_index_column(writer: Writer, storage: PosixStorage) -> None:
    meta, _ = await _table(writer)
    plan = plan_query(meta, "(temp > 40) & (flag == 1)", fields="temp:id")
    out, _ = await run(plan, storage)
    assert out.dtype.names == ("index", "temp", "id")
    assert out.dtype["index"] == np.dtype("<u8")
    assert out["index"].tolist() == [45, 50, 55]
    assert out["temp"].tolist() == [45.0, 50.0, 55.0]


async def test_query_over_missing_chunk_matches_fill(writer: Writer, storage: PosixStorage) -> None:
    meta, _ = await _table(writer, n=20, chunks=8, fillvalue=FILL_ROW, skip_chunk=lambda i: i == (2,))
    out, _ = await run(plan_query(meta, "flag == 7"), storage)
    assert out["index"].tolist() == [16, 17, 18, 19]  # not 20..23: outside the extent
    assert out["name"].tolist() == [b"fill"] * 4


async def test_query_no_hits_and_missing_result(writer: Writer, storage: PosixStorage) -> None:
    meta, _ = await _table(writer, n=16)
    plan = plan_query(meta, "temp > 1000")
    out, _ = await run(plan, storage)
    assert out.shape == (0,) and out.dtype == plan.out_dtype
    asm = Assembler(plan)
    for i, t in enumerate(plan.tasks):
        asm.add(i, ChunkResult(t.chunk_id, "missing"))  # a remote 404 = no rows
    assert asm.result().size == 0


def test_query_result_not_whole_rows() -> None:
    meta = meta_of([16], [8], type_json={"class": "H5T_COMPOUND", "fields": [{"name": "a", "type": "H5T_STD_I8LE"}]})
    plan = plan_query(meta, "a > 0")
    cid = plan.tasks[0].chunk_id
    with pytest.raises(TaskError, match=re.escape(f"chunk {cid}: query result of 10 bytes is not whole rows of 9")):
        Assembler(plan).add(0, ChunkResult(cid, "ok", b"\x00" * 10))


@pytest.mark.parametrize("limit", [-1, "3", 2.5])
def test_query_limit_validation(limit: Any) -> None:
    meta = meta_of([16], [8], type_json={"class": "H5T_COMPOUND", "fields": [{"name": "a", "type": "H5T_STD_I8LE"}]})
    with pytest.raises(QueryError, match=re.escape(f"Limit {limit!r} must be a non-negative integer (0 = no limit)")):
        plan_query(meta, "a > 0", limit=limit)


def test_query_limit_zero_is_no_limit() -> None:
    meta = meta_of([16], [8], type_json={"class": "H5T_COMPOUND", "fields": [{"name": "a", "type": "H5T_STD_I8LE"}]})
    plan = plan_query(meta, "a > 0", limit=0)
    assert plan.limit is None and all(t.limit is None for t in plan.tasks)


def test_query_needs_table() -> None:
    with pytest.raises(
        QueryError, match=r"query 'x > 1' needs a 1-d compound \(table\) dataset; this dataset has shape \[100, 200\]"
    ):
        plan_query(meta_of([100, 200], [40, 50]), "x > 1")
    with pytest.raises(
        QueryError, match=r"needs a 1-d compound \(table\) dataset; this dataset has shape \[10\] and type int32"
    ):
        plan_query(meta_of([10], [4]), "x > 1")


def test_query_coordinate_selection_refused() -> None:
    meta = meta_of([16], [8], type_json={"class": "H5T_COMPOUND", "fields": [{"name": "a", "type": "H5T_STD_I8LE"}]})
    with pytest.raises(
        SelectionError, match=r"a query's selection must be a range like \[0:1000:2\], not a coordinate list"
    ):
        plan_query(meta, "a > 0", Hyperslab((Coords(np.array([1, 2])),)))


def test_query_bad_text_fails_at_plan_time() -> None:
    meta = meta_of([16], [8], type_json={"class": "H5T_COMPOUND", "fields": [{"name": "a", "type": "H5T_STD_I8LE"}]})
    with pytest.raises(FieldError, match="unknown field 'b'"):
        plan_query(meta, "b > 0")
    with pytest.raises(QueryError):
        plan_query(meta, "a >")


def test_query_plan_tasks() -> None:
    meta = meta_of([20], [8], type_json={"class": "H5T_COMPOUND", "fields": [{"name": "a", "type": "H5T_STD_I8LE"}]})
    plan = plan_query(meta, "a > 0", parse_select("[2:20:3]", meta.shape), limit=5)
    assert [t.select for t in plan.tasks] == ["[2:6:3]", "[0:7:3]", "[1:2:3]"]  # rows 2,5 | 8,11,14 | 17
    assert [t.kind for t in plan.tasks] == ["query"] * 3
    assert plan.nbytes == 0


def test_assembler_rejects_malformed_vlen_query_result() -> None:
    vt = {
        "class": "H5T_COMPOUND",
        "fields": [
            {"name": "id", "type": "H5T_STD_I32LE"},
            {"name": "s", "type": {"class": "H5T_STRING", "length": "H5T_VARIABLE", "charSet": "H5T_CSET_UTF8"}},
        ],
    }
    meta = meta_of([16], [8], type_json=vt)
    plan = plan_query(meta, "id > 0")
    cid = plan.tasks[0].chunk_id
    row = np.uint64(3).tobytes() + np.int32(3).tobytes()
    for bad in (row + b"\x05\x00\x00\x00ab", row + b"\x02\x00\x00\x00\xff\xfe", row[:5]):
        with pytest.raises(TaskError, match=re.escape(f"chunk {cid}")):
            Assembler(plan).add(0, ChunkResult(cid, "ok", bad))
    good = row + b"\x02\x00\x00\x00hi"
    asm = Assembler(plan)
    asm.add(0, ChunkResult(cid, "ok", good))
    asm.add(1, ChunkResult(plan.tasks[1].chunk_id, "missing"))
    out = asm.result()
    assert out["index"].tolist() == [3] and out["id"].tolist() == [3] and out["s"].tolist() == ["hi"]


async def test_fixed_fields_of_vlen_compound_over_missing_chunk(writer: Writer, storage: PosixStorage) -> None:
    # projecting only fixed-size fields out of a compound with a vlen member: the output is fixed-size,
    # but the fill element must still come from the (object) dataset dtype
    dt = np.dtype([("id", "<i4"), ("name", vlen_dtype(str)), ("f", "<f8")])
    t = np.empty(10, dt)
    for i in range(10):
        t[i] = (i, f"n{i}", i / 2)
    meta = await writer.create_dataset(DOMAIN, "/vt", t, chunks=(4,), skip_chunk=lambda i: i == (1,))
    out, asm = await run(plan_hyperslab(meta, Hyperslab.all(meta.shape), fields=["f", "id"]), storage)
    assert out.dtype == np.dtype([("f", "<f8"), ("id", "<i4")])
    assert out["id"].tolist() == [0, 1, 2, 3, 0, 0, 0, 0, 8, 9]
    assert out["f"].tolist() == [0.0, 0.5, 1.0, 1.5, 0, 0, 0, 0, 4.0, 4.5]
    assert asm.filled == 1
    pts, _ = await run(plan_points(meta, [[5], [9]], fields=["id"]), storage)
    assert pts["id"].tolist() == [0, 9]


@pytest.mark.parametrize("kind", ["query", "hyperslab", "points"])
async def test_assembler_keeps_no_reference_to_result_bytes(writer: Writer, storage: PosixStorage, kind: str) -> None:
    # backends may reuse the buffer behind a result once add() returns (lambda's answer buffers)
    meta, rows = await _table(writer)
    plan = {"query": plan_query(meta, "flag == 1"), "hyperslab": plan_hyperslab(meta, parse_select("[3:50]", meta.shape)),
            "points": plan_points(meta, [[4], [9], [17]])}[kind]
    asm = Assembler(plan)
    for i, task in enumerate(plan.tasks):
        res = kernel.process(task, await kernel.fetch(task, storage))
        buf = bytearray(res.data)
        asm.add(i, ChunkResult(res.chunk_id, res.status, memoryview(buf), res.fetched, res.decoded))
        buf[:] = b"\xff" * len(buf)  # the backend reuses its buffer
    out = asm.result()
    want = {"query": rows[rows["flag"] == 1], "hyperslab": rows[3:50], "points": rows[[4, 9, 17]]}[kind]
    for name in ("id", "temp", "flag", "name"):
        assert out[name].tolist() == want[name].tolist()
