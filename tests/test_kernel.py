"""Tests for hsds_backends.kernel: one chunk task → bytes (docs/hsds-format.md §3, §4.2, §4.3, §5).

Datasets are written with the Writer into a tmp PosixStorage; tasks are built by the plan
functions (or by hand, as a DN request would be) and run with ``kernel.run_task``.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from hsds_backends import kernel, vlen_dtype
from hsds_backends.dataset import DatasetMeta
from hsds_backends.errors import ChunkDecodeError, FieldError, HsdsBackendsError, SelectionError, TaskError
from hsds_backends.plan import Assembler, ReadPlan, plan_hyperslab, plan_points, plan_query
from hsds_backends.selection import parse_select
from hsds_backends.storage import PosixStorage
from hsds_backends.tasks import ChunkResult, ChunkTask
from hsds_backends.vlen import decode_vlen
from hsds_backends.writer import Writer

BUCKET = "hsdstest"
DOMAIN = "/home/test_user1/test.h5"
ARANGE = np.arange(20000, dtype="<i4").reshape(100, 200)
TABLE = np.dtype([("id", "<i8"), ("flag", "u1"), ("temp", "<f4"), ("name", "S4")])


def file_of(storage: PosixStorage, task: ChunkTask) -> Path:
    assert task.location is not None
    return Path(storage.path(task.location.bucket, task.location.key))


async def run_plan(plan: ReadPlan, storage: PosixStorage) -> np.ndarray:
    asm = Assembler(plan)
    results = [await kernel.run_task(t, storage) for t in plan.tasks]
    for i in reversed(range(len(results))):  # order must not matter
        asm.add(i, results[i])
    return asm.result()


def hs_task(meta: DatasetMeta, index: tuple[int, ...], select: str | None = None, **kw: Any) -> ChunkTask:
    cid = meta.chunk_id(index)
    return ChunkTask(cid, meta, meta.location(index, cid), "hyperslab", select, **kw)


# --------------------------------------------------------------------------- verified examples


@pytest.mark.parametrize("style", ["master", "1.0.2"])
@pytest.mark.parametrize("filters", [[], ["shuffle", ("gzip", 6)], ["lz4"], ["zstd"], ["bitshuffle", "lz4"]])
async def test_verified_select_on_chunk_1_2(
    writer: Writer, storage: PosixStorage, style: str, filters: list[Any]
) -> None:
    # §4.2 verified: select=[0:2,0:3] on chunk _1_2 of a (40,50)-chunked 100x200 arange → 8100 8101 8102 8300 8301 8302
    meta = await writer.create_dataset(DOMAIN, "/dset", ARANGE, chunks=(40, 50), filters=filters, layout_style=style)
    task = hs_task(meta, (1, 2), "[0:2,0:3]")
    res = await kernel.run_task(task, storage)
    assert res.status == "ok"
    assert res.chunk_id == meta.chunk_id((1, 2))
    assert np.frombuffer(res.data, "<i4").tolist() == [8100, 8101, 8102, 8300, 8301, 8302]
    # JSON {"select":"[0:1,0:4]"} → 8100…8103 (§4.3)
    res = await kernel.run_task(hs_task(meta, (1, 2), "[0:1,0:4]"), storage)
    assert np.frombuffer(res.data, "<i4").tolist() == [8100, 8101, 8102, 8103]


async def test_verified_points(writer: Writer, storage: PosixStorage) -> None:
    # §4.3 verified: points [[40,100],[79,149],[41,101]] → 8100 15949 8301
    meta = await writer.create_dataset(DOMAIN, "/dset", ARANGE, chunks=(40, 50), filters=["shuffle", "gzip"])
    plan = plan_points(meta, [[40, 100], [79, 149], [41, 101]])
    assert len(plan.tasks) == 1 and plan.tasks[0].chunk_id == meta.chunk_id((1, 2))
    res = await kernel.run_task(plan.tasks[0], storage)
    assert np.frombuffer(res.data, "<i4").tolist() == [8100, 15949, 8301]


async def test_whole_chunk_without_select(writer: Writer, storage: PosixStorage) -> None:
    meta = await writer.create_dataset(DOMAIN, "/dset", ARANGE, chunks=(40, 50))
    res = await kernel.run_task(hs_task(meta, (2, 3)), storage)
    block = np.frombuffer(res.data, "<i4").reshape(40, 50)
    # edge chunk: rows 80..99 real, rows 100..119 (outside the extent) hold zeros (§3.1)
    np.testing.assert_array_equal(block[:20], ARANGE[80:100, 150:200])
    assert (block[20:] == 0).all()


async def test_edge_chunk_beyond_extent_holds_fill(writer: Writer, storage: PosixStorage) -> None:
    meta = await writer.create_dataset(DOMAIN, "/dset", np.arange(10, dtype="<i2"), chunks=(8,), fillvalue=-3)
    res = await kernel.run_task(hs_task(meta, (1,)), storage)
    assert np.frombuffer(res.data, "<i2").tolist() == [8, 9, -3, -3, -3, -3, -3, -3]


async def test_stepped_and_coordinate_selects(writer: Writer, storage: PosixStorage) -> None:
    meta = await writer.create_dataset(DOMAIN, "/dset", ARANGE, chunks=(40, 50), filters=["gzip"])
    chunk = ARANGE[40:80, 100:150]
    for sel, want in [
        ("[1:30:7,[4,0,4]]", chunk[1:30:7][:, [4, 0, 4]]),
        ("[[39,0],5:50:9]", chunk[[39, 0]][:, 5:50:9]),
        ("[3,:]", chunk[3:4, :]),
        ("[[1,2],[3,4]]", chunk[np.ix_([1, 2], [3, 4])]),  # coordinate lists are orthogonal
    ]:
        res = await kernel.run_task(hs_task(meta, (1, 2), sel), storage)
        np.testing.assert_array_equal(np.frombuffer(res.data, "<i4").reshape(want.shape), want)


@pytest.mark.parametrize("dtype", [">i4", ">f8", "<u2", "S5", "V3", "?"])
async def test_byte_exact_for_fixed_types(writer: Writer, storage: PosixStorage, dtype: str) -> None:
    rng = np.random.default_rng(1)
    raw = rng.integers(0, 256, 30 * np.dtype(dtype).itemsize, dtype=np.uint8)
    if dtype == "?":
        raw = raw % 2
    arr = np.frombuffer(raw.tobytes(), dtype=dtype).reshape(5, 6)
    meta = await writer.create_dataset(DOMAIN, "/d", arr, chunks=(4, 4), filters=["shuffle", "zstd"])
    res = await kernel.run_task(hs_task(meta, (0, 1), "[0:4,0:2]"), storage)
    assert res.data == np.ascontiguousarray(arr[0:4, 4:6]).tobytes()


async def test_fields_projection_in_given_order(writer: Writer, storage: PosixStorage) -> None:
    rows = np.zeros(10, dtype=TABLE)
    rows["id"] = np.arange(10) * 10
    rows["temp"] = np.arange(10) / 2
    rows["name"] = b"ab"
    meta = await writer.create_dataset(DOMAIN, "/t", rows, chunks=(4,))
    res = await kernel.run_task(hs_task(meta, (1,), "[0:3]", fields=("temp", "id")), storage)
    dt = np.dtype([("temp", "<f4"), ("id", "<i8")])  # packed, in the order given (§5.4)
    out = np.frombuffer(res.data, dt)
    assert out["id"].tolist() == [40, 50, 60]
    assert out["temp"].tolist() == [2.0, 2.5, 3.0]
    with pytest.raises(
        FieldError, match=r"unknown field 'nope'; the dataset's fields are \['id', 'flag', 'temp', 'name'\]"
    ):
        await kernel.run_task(hs_task(meta, (1,), "[0:3]", fields=("nope",)), storage)


async def test_vlen_chunk(writer: Writer, storage: PosixStorage) -> None:
    s = vlen_dtype(str)
    arr = np.empty(7, dtype=s)
    arr[:] = ["a", "bc", "", "héllo", "x" * 50, "z", "!"]
    meta = await writer.create_dataset(DOMAIN, "/v", arr, chunks=(4,), filters=["gzip"])
    res = await kernel.run_task(hs_task(meta, (0,), "[0:3]"), storage)
    # the verified §3.2 bytes
    assert res.data == bytes.fromhex("010000006102000000626300000000")
    res = await kernel.run_task(hs_task(meta, (1,)), storage)
    assert decode_vlen(res.data, s, 4).tolist() == ["x" * 50, "z", "!", ""]  # unset element: count 0


async def test_scalar_dataset(writer: Writer, storage: PosixStorage) -> None:
    meta = await writer.create_dataset(DOMAIN, "/s", np.array(3.25, dtype=">f8"))
    assert meta.shape == ()
    res = await kernel.run_task(hs_task(meta, (0,)), storage)
    assert res.data == np.array(3.25, ">f8").tobytes()


# --------------------------------------------------------------------------- missing chunks


async def test_missing_chunk_is_missing(writer: Writer, storage: PosixStorage) -> None:
    meta = await writer.create_dataset(DOMAIN, "/dset", ARANGE, chunks=(40, 50), skip_chunk=lambda i: i == (1, 2))
    task = hs_task(meta, (1, 2), "[0:2,0:3]")
    assert not file_of(storage, task).exists()
    res = await kernel.run_task(task, storage)
    assert res == ChunkResult(meta.chunk_id((1, 2)), "missing", b"")
    pts = plan_points(meta, [[40, 100]])
    assert (await kernel.run_task(pts.tasks[0], storage)).status == "missing"


async def test_query_over_missing_chunk_sees_fill_rows(writer: Writer, storage: PosixStorage) -> None:
    rows = np.zeros(20, dtype=TABLE)
    rows["id"] = np.arange(20)
    fill = np.array((-1, 9, 99.0, b"none"), dtype=TABLE)
    meta = await writer.create_dataset(
        DOMAIN, "/t", rows, chunks=(8,), fillvalue=fill, skip_chunk=lambda i: i in ((1,), (2,))
    )
    plan = plan_query(meta, "flag == 9")
    results = [await kernel.run_task(t, storage) for t in plan.tasks]
    assert [r.status for r in results] == ["ok", "ok", "ok"]
    qdt = plan.out_dtype
    assert np.frombuffer(results[0].data, qdt).size == 0
    got1 = np.frombuffer(results[1].data, qdt)
    assert got1["index"].tolist() == list(range(8, 16))
    assert got1["id"].tolist() == [-1] * 8 and got1["name"].tolist() == [b"none"] * 8
    # the edge chunk is stored/filled full size, but rows past the extent (20..23) are not reported
    got2 = np.frombuffer(results[2].data, qdt)
    assert got2["index"].tolist() == [16, 17, 18, 19]


# --------------------------------------------------------------------------- corrupt chunks


def _corruptions(raw: bytes) -> dict[str, bytes]:
    return {
        "garbage": bytes(range(256)) * 3,
        "truncated": raw[: len(raw) // 2],
        "appended": raw + b"\x00\x01\x02",
        "empty": b"",
        "one-byte": raw[:1],
    }


@pytest.mark.parametrize("kind", ["garbage", "truncated", "appended", "empty", "one-byte"])
@pytest.mark.parametrize(
    "filters", [[], ["shuffle", ("gzip", 6)], ["lz4"], ["bitshuffle"]], ids=["raw", "gzip", "lz4", "bitshuffle"]
)
async def test_corrupt_chunk_raises_chunk_decode_error(
    writer: Writer, storage: PosixStorage, kind: str, filters: list[Any]
) -> None:
    meta = await writer.create_dataset(DOMAIN, "/dset", ARANGE, chunks=(40, 50), filters=filters)
    task = hs_task(meta, (1, 2), "[0:2,0:3]")
    path = file_of(storage, task)
    path.write_bytes(_corruptions(path.read_bytes())[kind])
    assert task.location is not None
    with pytest.raises(ChunkDecodeError) as ei:
        await kernel.run_task(task, storage)
    msg = str(ei.value)
    assert task.chunk_id in msg, msg
    assert task.location.key in msg, msg


@pytest.mark.parametrize("kind", ["garbage", "truncated", "appended"])
async def test_corrupt_vlen_chunk(writer: Writer, storage: PosixStorage, kind: str) -> None:
    arr = np.empty(6, dtype=vlen_dtype(str))
    arr[:] = ["alpha", "b", "", "gamma", "d", "e"]
    meta = await writer.create_dataset(DOMAIN, "/v", arr, chunks=(6,))
    task = hs_task(meta, (0,))
    path = file_of(storage, task)
    path.write_bytes(_corruptions(path.read_bytes())[kind])
    assert task.location is not None
    with pytest.raises(ChunkDecodeError, match=re.escape(f"chunk {task.chunk_id} (key {task.location.key})")):
        await kernel.run_task(task, storage)


async def test_corrupt_chunk_error_for_points_and_query(writer: Writer, storage: PosixStorage) -> None:
    rows = np.zeros(16, dtype=TABLE)
    meta = await writer.create_dataset(DOMAIN, "/t", rows, chunks=(8,), filters=["gzip"])
    plan = plan_query(meta, "flag == 0")
    path = file_of(storage, plan.tasks[0])
    path.write_bytes(path.read_bytes()[:-5])
    with pytest.raises(ChunkDecodeError, match=re.escape(plan.tasks[0].chunk_id)):
        await kernel.run_task(plan.tasks[0], storage)
    with pytest.raises(ChunkDecodeError, match=re.escape(plan.tasks[0].chunk_id)):
        await kernel.run_task(plan_points(meta, [[3]]).tasks[0], storage)


# --------------------------------------------------------------------------- bad tasks


async def test_bad_select_names_chunk(writer: Writer, storage: PosixStorage) -> None:
    meta = await writer.create_dataset(DOMAIN, "/dset", ARANGE, chunks=(40, 50))
    task = hs_task(meta, (1, 2), "[0:41,0:3]")  # chunk-relative: beyond the chunk's 40 rows
    with pytest.raises(
        SelectionError, match=re.escape(f"chunk {task.chunk_id}: bad select '[0:41,0:3]'") + ".*0:41 is out of range"
    ):
        await kernel.run_task(task, storage)


async def test_point_outside_chunk(writer: Writer, storage: PosixStorage) -> None:
    meta = await writer.create_dataset(DOMAIN, "/dset", ARANGE, chunks=(40, 50))
    cid = meta.chunk_id((1, 2))
    task = ChunkTask(cid, meta, meta.location((1, 2)), "points", points=np.array([[40, 100], [0, 0]], dtype=np.uint64))
    with pytest.raises(
        SelectionError,
        match=re.escape(f"point [0, 0] does not lie in chunk {cid} (chunk origin [40, 100], chunk dims [40, 50])"),
    ):
        await kernel.run_task(task, storage)


async def test_query_needs_table(writer: Writer, storage: PosixStorage) -> None:
    meta = await writer.create_dataset(DOMAIN, "/dset", ARANGE, chunks=(40, 50))
    task = ChunkTask(meta.chunk_id((0, 0)), meta, meta.location((0, 0)), "query", "[0:40,0:50]", query="x > 1")
    with pytest.raises(
        TaskError, match=r"query needs a 1-d compound \(table\) dataset; this dataset has shape \[100, 200\]"
    ):
        await kernel.run_task(task, storage)


async def test_query_with_coordinate_select(writer: Writer, storage: PosixStorage) -> None:
    meta = await writer.create_dataset(DOMAIN, "/t", np.zeros(8, dtype=TABLE), chunks=(8,))
    task = ChunkTask(meta.chunk_id((0,)), meta, meta.location((0,)), "query", "[[1,2]]", query="flag == 0")
    with pytest.raises(SelectionError, match=r"a query's select must be a range like '\[0:100:2\]', got '\[\[1,2\]\]'"):
        await kernel.run_task(task, storage)


async def test_query_limit_per_chunk_and_absolute_index(writer: Writer, storage: PosixStorage) -> None:
    rows = np.zeros(32, dtype=TABLE)
    rows["flag"] = 1
    meta = await writer.create_dataset(DOMAIN, "/t", rows, chunks=(16,))
    cid = meta.chunk_id((1,))
    task = ChunkTask(cid, meta, meta.location((1,)), "query", "[2:15:4]", query="flag == 1", limit=2)
    out = np.frombuffer((await kernel.run_task(task, storage)).data, plan_query(meta, "flag == 1").out_dtype)
    assert out["index"].tolist() == [18, 22]  # chunk origin 16 + 2 + k*4, first two only


# --------------------------------------------------------------------------- process() directly


def test_process_none_is_missing_without_io() -> None:
    meta = DatasetMeta.from_json(
        {
            "id": "d-147ada2c-2ffb2839-39b5-e935ed-e55bf0",
            "type": "H5T_STD_I32LE",
            "shape": {"class": "H5S_SIMPLE", "dims": [100, 200]},
            "layout": {"class": "H5D_CHUNKED", "dims": [40, 50]},
        },
        BUCKET,
    )
    task = hs_task(meta, (0, 3), "[0:2,0:3]")
    assert kernel.process(task, None) == ChunkResult("c-147ada2c-2ffb2839-39b5-e935ed-e55bf0_0_3", "missing")
    raw = np.arange(2000, dtype="<i4").tobytes()
    res = kernel.process(task, raw)
    assert np.frombuffer(res.data, "<i4").tolist() == [0, 1, 2, 50, 51, 52]
    assert kernel.chunk_index_tuple(task) == (0, 3)
    with pytest.raises(
        ChunkDecodeError,
        match=re.escape(
            "chunk c-147ada2c-2ffb2839-39b5-e935ed-e55bf0_0_3 (key db/147ada2c-2ffb2839/d/39b5-e935ed-e55bf0/0_3)"
        ),
    ):
        kernel.process(task, raw[:-4])


def test_decode_to_array_is_void_view() -> None:
    meta = DatasetMeta.from_json(
        {
            "id": "d-147ada2c-2ffb2839-39b5-e935ed-e55bf0",
            "type": "H5T_STD_I16BE",
            "shape": {"class": "H5S_SIMPLE", "dims": [4]},
        }
    )
    raw = np.arange(4, dtype=">i2").tobytes()
    arr = kernel.decode_to_array(meta, raw, "cid", "key")
    assert arr.dtype == np.dtype("V2") and arr.shape == (4,)
    assert arr.tobytes() == raw


# --------------------------------------------------------------------------- whole reads through the kernel


@pytest.mark.parametrize("sel", ["[0:100,0:200]", "[10:95:3,7:180:5]", "[[99,0,41],0:200:50]", "[7,[199,0]]"])
async def test_plan_and_kernel_reassemble_numpy(writer: Writer, storage: PosixStorage, sel: str) -> None:
    meta = await writer.create_dataset(DOMAIN, "/dset", ARANGE, chunks=(40, 50), filters=["shuffle", "gzip"])
    hs = parse_select(sel, meta.shape)
    out = await run_plan(plan_hyperslab(meta, hs), storage)
    idx = [np.arange(d.start, d.stop, d.step) if hasattr(d, "step") else d.values for d in hs.dims]
    np.testing.assert_array_equal(out, ARANGE[np.ix_(*idx)])
    assert out.dtype == ARANGE.dtype


async def test_errors_are_hsds_backends_errors(writer: Writer, storage: PosixStorage) -> None:
    meta = await writer.create_dataset(DOMAIN, "/dset", ARANGE, chunks=(40, 50))
    task = hs_task(meta, (0, 0), "garbage")
    with pytest.raises(HsdsBackendsError):
        await kernel.run_task(task, storage)


def test_dataset_json_written_by_writer_is_readable(tmp_path: Path) -> None:
    # sanity: the stored dataset JSON has HSDS's keys (§2)
    import asyncio

    storage = PosixStorage(tmp_path)
    meta = asyncio.run(
        Writer(storage, BUCKET).create_dataset(DOMAIN, "/d", ARANGE, chunks=(40, 50), filters=["shuffle", ("gzip", 6)])
    )
    j = json.loads(
        Path(storage.path(BUCKET, "db/" + meta.id[2:19] + "/d/" + meta.id[20:] + "/.dataset.json")).read_text()
    )
    assert {
        "id",
        "root",
        "created",
        "lastModified",
        "type",
        "shape",
        "attributes",
        "creationProperties",
        "layout",
    } <= set(j)
    assert j["creationProperties"]["filters"] == [
        {"class": "H5Z_FILTER_SHUFFLE", "id": 2, "name": "shuffle"},
        {"class": "H5Z_FILTER_DEFLATE", "id": 1, "name": "gzip", "level": 6},
    ]
    assert j["layout"] == {"class": "H5D_CHUNKED", "dims": [40, 50]}
    assert os.path.isfile(storage.path(BUCKET, "home/test_user1/test.h5/.domain.json"))


@pytest.mark.parametrize(
    ("select", "view"),
    [(None, True), ("[3:9,:]", True), ("[0:2,0:3]", False), ("[1:30:7,3:9]", False), ("[1:30:7,[4,0,4]]", True)],
    ids=["whole-chunk", "whole-rows", "sub-block", "stepped", "coordinates"],
)
@pytest.mark.parametrize("dtype", [">i4", "<i4"])
async def test_process_without_copy_gives_a_view_of_the_same_bytes(
    writer: Writer, storage: PosixStorage, select: str | None, view: bool, dtype: str
) -> None:
    meta = await writer.create_dataset(DOMAIN, "/dset", ARANGE.astype(dtype), chunks=(40, 50), filters=["shuffle", "gzip"])
    task = hs_task(meta, (1, 2), select)
    data = await kernel.fetch(task, storage)
    copied = kernel.process(task, data)
    shared = kernel.process(task, data, copy=False)
    assert isinstance(copied.data, bytes)
    # contiguous results (whole rows, or the fresh array numpy's fancy indexing made) are not copied again
    assert isinstance(shared.data, memoryview) is view
    assert bytes(shared.data) == copied.data and len(shared.data) == len(copied.data)
    assert (shared.fetched, shared.decoded) == (copied.fetched, copied.decoded)


# --------------------------------------------------------------------------- the thread's reusable read buffer


def test_posix_reads_in_worker_threads_and_into_a_reused_buffer_only_when_allowed(tmp_path: Path) -> None:
    """docs/architecture.md §4 "Kernel": posix is read in the decoding thread; a read lands in the thread's
    buffer only inside :func:`reusable_read_buffer`, and only one read per permission."""
    from hsds_backends.storage.base import reusable_read_buffer

    storage = PosixStorage(tmp_path)
    (tmp_path / BUCKET / "k").mkdir(parents=True)
    (tmp_path / BUCKET / "k" / "a").write_bytes(b"0123456789")
    read = storage.sync_reader()
    assert read is not None  # without it every chunk would be read on the event loop, one after another
    assert isinstance(read(BUCKET, "k/a"), bytes)
    with reusable_read_buffer():
        first = read(BUCKET, "k/a", 2, 4)
        second = read(BUCKET, "k/a", 5)
    assert isinstance(first, memoryview) and bytes(first) == b"2345"
    assert isinstance(second, bytes) and second == b"56789"  # one read per permission
    with reusable_read_buffer():
        third = read(BUCKET, "k/a", 6)
        assert bytes(third) == b"6789" and bytes(first) == b"6789"[:4]  # the same buffer: the first view is overwritten
    assert read(BUCKET, "k") is None and read(BUCKET, "k/nope") is None  # a folder, a missing object


async def test_results_of_compressed_chunks_stay_valid_after_the_thread_reads_again(writer: Writer, storage: PosixStorage) -> None:
    """Whole-chunk results are views of the decoded chunk (``copy=False``), never of the reused read buffer."""
    data = np.arange(64 * 64, dtype="<i4").reshape(64, 64)
    meta = await writer.create_dataset(DOMAIN, "/reuse", data, chunks=(32, 32), filters=["shuffle", ("gzip", 4)])
    read = storage.sync_reader()
    results = [kernel.run_task_sync(hs_task(meta, (i, j)), read, None, False) for i in range(2) for j in range(2)]
    for res, (i, j) in zip(results, [(i, j) for i in range(2) for j in range(2)], strict=True):
        assert bytes(res.data) == data[i * 32 : (i + 1) * 32, j * 32 : (j + 1) * 32].tobytes()
        assert res.fetched > 0
