"""Tests for hsds_backends.tasks: chunk task / result wire format (docs/hsds-format.md §6.3, §6.4)."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from hsds_backends import errors, kernel
from hsds_backends.dataset import ChunkLocation, DatasetMeta
from hsds_backends.errors import (
    ChunkDecodeError,
    DatasetJsonError,
    FieldError,
    HsdsBackendsError,
    SelectionError,
    StoragePathError,
    TaskError,
)
from hsds_backends.ids import chunk_key, object_key
from hsds_backends.plan import ReadPlan, plan_hyperslab, plan_points, plan_query
from hsds_backends.selection import parse_select
from hsds_backends.storage import PosixStorage
from hsds_backends.tasks import ChunkResult, ChunkTask, error_from_wire, error_to_wire, field_dtype, query_dtype
from hsds_backends.writer import Writer

BUCKET = "hsdstest"
DOMAIN = "/home/test_user1/test.h5"
ARANGE = np.arange(20000, dtype="<i4").reshape(100, 200)
TABLE = np.dtype([("id", "<i8"), ("flag", "u1"), ("temp", "<f4"), ("name", "S4")])
CID = "c-147ada2c-2ffb2839-39b5-e935ed-e55bf0_1_2"
DSET_JSON = {
    "id": "d-147ada2c-2ffb2839-39b5-e935ed-e55bf0",
    "type": {"class": "H5T_INTEGER", "base": "H5T_STD_I32LE"},
    "shape": {"class": "H5S_SIMPLE", "dims": [100, 200]},
    "layout": {"class": "H5D_CHUNKED", "dims": [40, 50]},
}


def rewire(task: ChunkTask) -> ChunkTask:
    """Through real JSON text, as a remote executor would receive it."""
    return ChunkTask.from_wire(json.loads(json.dumps(task.to_wire())))


async def both(task: ChunkTask, storage: PosixStorage) -> ChunkResult:
    a = await kernel.run_task(task, storage)
    b = await kernel.run_task(rewire(task), storage)
    assert a == b, task.chunk_id
    # and the result itself survives its wire form
    assert ChunkResult.from_wire(json.loads(json.dumps(a.to_wire()))) == a
    return a


async def all_plan_tasks_round_trip(plan: ReadPlan, storage: PosixStorage) -> list[ChunkResult]:
    out = []
    for t in plan.tasks:
        w = rewire(t)
        assert w.chunk_id == t.chunk_id
        assert w.kind == t.kind and w.select == t.select and w.fields == t.fields
        assert w.query == t.query and w.limit == t.limit
        assert w.location == t.location
        assert (w.points is None) == (t.points is None)
        if t.points is not None:
            np.testing.assert_array_equal(w.points, t.points)
        out.append(await both(t, storage))
    return out


# --------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("filters", [[], ["shuffle", ("gzip", 6)], ["bitshuffle", "zstd"]])
async def test_wire_round_trip_hyperslab(writer: Writer, storage: PosixStorage, filters: list[Any]) -> None:
    meta = await writer.create_dataset(
        DOMAIN, "/d", ARANGE, chunks=(40, 50), filters=filters, fillvalue=-9, skip_chunk=lambda i: i == (0, 0)
    )
    plan = plan_hyperslab(meta, parse_select("[10:95:3,7:180:5]", meta.shape))
    results = await all_plan_tasks_round_trip(plan, storage)
    assert [r.status for r in results].count("missing") == 1


async def test_wire_round_trip_points_and_partitions(writer: Writer, storage: PosixStorage) -> None:
    meta = await writer.create_dataset(DOMAIN, "/d", ARANGE, chunks=(40, 50), partition_count=3)
    plan = plan_points(meta, [[40, 100], [79, 149], [41, 101], [0, 0], [99, 199]])
    results = await all_plan_tasks_round_trip(plan, storage)
    assert any(t.to_wire()["chunk_id"].startswith("c1-") or t.chunk_id.startswith(("c0-", "c2-")) for t in plan.tasks)
    by_chunk = {t.chunk_id: r for t, r in zip(plan.tasks, results, strict=False)}
    assert np.frombuffer(by_chunk[meta.chunk_id((1, 2))].data, "<i4").tolist() == [8100, 15949, 8301]


async def test_wire_round_trip_query_with_fields_and_limit(writer: Writer, storage: PosixStorage) -> None:
    rows = np.zeros(40, dtype=TABLE)
    rows["id"] = np.arange(40)
    rows["flag"] = np.arange(40) % 3 == 0
    meta = await writer.create_dataset(DOMAIN, "/t", rows, chunks=(16,), filters=["gzip"])
    plan = plan_query(meta, "flag == 1", parse_select("[1:40:2]", meta.shape), limit=3, fields="name:id")
    results = await all_plan_tasks_round_trip(plan, storage)
    wire = plan.tasks[0].to_wire()
    assert wire["query"] == "(flag == 1)" and wire["Limit"] == 3 and wire["fields"] == ["name", "id"]
    got = np.frombuffer(results[0].data, plan.out_dtype)
    assert got.dtype.names == ("index", "name", "id")
    assert got["index"].tolist() == [3, 9, 15]


async def test_wire_round_trip_linked_layouts(writer: Writer, storage: PosixStorage) -> None:
    data = np.arange(3000, dtype=">i4").reshape(30, 100)
    ref = await writer.create_linked_dataset(
        DOMAIN,
        "/ref",
        data,
        file_key="linked/file.h5",
        chunks=(8, 40),
        filters=["shuffle", "gzip", "fletcher32"],
        skip_chunk=lambda i: i == (1, 1),
    )
    plan = plan_hyperslab(ref, parse_select("[0:30,0:100]", ref.shape))
    results = await all_plan_tasks_round_trip(plan, storage)
    wires = [t.to_wire() for t in plan.tasks]
    assert all("s3path" in w for w in wires if w["s3size"])
    assert {w["s3path"] for w in wires if w["s3size"]} == {f"{BUCKET}/linked/file.h5"}
    assert [w["s3size"] for w in wires].count(0) == 1
    assert [r.status for r in results].count("missing") == 1
    cont = await writer.create_linked_dataset(
        DOMAIN, "/cont", data, file_key="linked/c.h5", layout="H5D_CONTIGUOUS_REF"
    )
    (res,) = await all_plan_tasks_round_trip(plan_hyperslab(cont, parse_select("[3:5,0:2]", cont.shape)), storage)
    assert np.frombuffer(res.data, ">i4").tolist() == [300, 301, 400, 401]


def test_to_wire_shape() -> None:
    meta = DatasetMeta.from_json(DSET_JSON, BUCKET)
    t = ChunkTask(CID, meta, meta.location((1, 2)), "hyperslab", "[0:2,0:3]")
    w = t.to_wire()
    assert w == {
        "chunk_id": CID,
        "dset_json": meta.wire_json(),
        "bucket": BUCKET,
        "kind": "hyperslab",
        "select": "[0:2,0:3]",
    }
    p = ChunkTask(CID, meta, meta.location((1, 2)), "points", points=np.array([[40, 100], [79, 149]], dtype=np.uint64))
    w = p.to_wire()
    assert base64.b64decode(w["point_arr"]) == np.array([40, 100, 79, 149], "<u8").tobytes()
    assert w["num_points"] == 2
    # an explicit key is sent only when it differs from the chunk's own key
    k = ChunkTask(CID, meta, ChunkLocation(BUCKET, "elsewhere/0"), "hyperslab")
    assert k.to_wire()["key"] == "elsewhere/0"
    assert ChunkTask.from_wire(k.to_wire()).location == ChunkLocation(BUCKET, "elsewhere/0")


# --------------------------------------------------------------------------- 2021 HSDS payload


async def test_2021_lambda_payload(writer: Writer, storage: PosixStorage) -> None:
    # §6.3: select (chunk-relative), bucket, chunk_id, dset_json (whole dataset JSON); no 'kind'
    meta = await writer.create_dataset(
        DOMAIN, "/d", ARANGE, chunks=(40, 50), filters=["shuffle", ("gzip", 6)], layout_style="1.0.2"
    )
    dset_json = json.loads(Path(storage.path(BUCKET, object_key(meta.id))).read_text())
    cid = meta.chunk_id((1, 2))
    payload = {"select": "[0:2,0:3]", "bucket": BUCKET, "chunk_id": cid, "dset_json": dset_json}
    t = ChunkTask.from_wire(payload)
    assert t.kind == "hyperslab"
    assert t.location == ChunkLocation(BUCKET, chunk_key(cid))
    assert np.frombuffer((await kernel.run_task(t, storage)).data, "<i4").tolist() == [
        8100,
        8101,
        8102,
        8300,
        8301,
        8302,
    ]
    # points: action/count are ignored, point_arr is base64 of uint64 coordinates, num_points
    pts = np.array([[40, 100], [79, 149], [41, 101]], dtype="<u8")
    payload = {
        "action": "get",
        "count": 3,
        "bucket": BUCKET,
        "chunk_id": cid,
        "dset_json": json.dumps(dset_json),
        "point_arr": base64.b64encode(pts.tobytes()).decode(),
        "num_points": 3,
    }
    t = ChunkTask.from_wire(payload)
    assert t.kind == "points" and t.num_points == 3
    assert np.frombuffer((await kernel.run_task(t, storage)).data, "<i4").tolist() == [8100, 15949, 8301]


async def test_2021_query_payload_and_s3_keys(writer: Writer, storage: PosixStorage) -> None:
    rows = np.zeros(20, dtype=TABLE)
    rows["flag"] = 1
    meta = await writer.create_dataset(DOMAIN, "/t", rows, chunks=(8,))
    cid = meta.chunk_id((1,))
    payload = {
        "query": "flag == 1",
        "Limit": 2,
        "select": "[0:8]",
        "bucket": BUCKET,
        "chunk_id": cid,
        "dset_json": meta.wire_json(),
    }
    t = ChunkTask.from_wire(payload)
    assert t.kind == "query" and t.limit == 2
    out = np.frombuffer((await kernel.run_task(t, storage)).data, query_dtype(TABLE, None))
    assert out["index"].tolist() == [8, 9]
    # s3path/s3offset/s3size select a byte range of another object
    data = np.arange(12, dtype="<i2")
    await storage.put("other", "dir/file.bin", b"\xff" * 10 + data.tobytes())
    m2 = DatasetMeta.from_json(
        {
            "id": meta.id,
            "type": "H5T_STD_I16LE",
            "shape": {"class": "H5S_SIMPLE", "dims": [12]},
            "creationProperties": {
                "layout": {"class": "H5D_CONTIGUOUS_REF", "file_uri": "other/dir/file.bin", "offset": 10, "size": 24}
            },
        }
    )
    p = {
        "chunk_id": meta.chunk_id((0,)),
        "dset_json": m2.wire_json(),
        "bucket": BUCKET,
        "s3path": "s3://other/dir/file.bin",
        "s3offset": 10,
        "s3size": 24,
        "select": "[2:5]",
    }
    t = ChunkTask.from_wire(p)
    assert t.location == ChunkLocation("other", "dir/file.bin", 10, 24, linked=True)
    assert np.frombuffer((await kernel.run_task(t, storage)).data, "<i2").tolist() == [2, 3, 4]
    # s3size 0 → nothing to read → missing (fill)
    t0 = ChunkTask.from_wire({**p, "s3size": 0})
    assert t0.location is None
    assert (await kernel.run_task(t0, storage)).status == "missing"


def test_fields_as_colon_string() -> None:
    t = ChunkTask.from_wire({"chunk_id": CID, "dset_json": DSET_JSON, "bucket": BUCKET, "fields": "a:b"})
    assert t.fields == ("a", "b")
    t = ChunkTask.from_wire({"chunk_id": CID, "dset_json": DSET_JSON, "bucket": BUCKET, "fields": ""})
    assert t.fields is None


# --------------------------------------------------------------------------- bad payloads


def base(**kw: Any) -> dict[str, Any]:
    d: dict[str, Any] = {"chunk_id": CID, "dset_json": DSET_JSON, "bucket": BUCKET}
    d.update(kw)
    return d


@pytest.mark.parametrize(
    ("payload", "exc", "message"),
    [
        ([], TaskError, "chunk task must be a JSON object, got list"),
        ({"dset_json": DSET_JSON, "bucket": BUCKET}, TaskError, "chunk task is missing 'chunk_id'"),
        ({"chunk_id": CID, "bucket": BUCKET}, TaskError, "chunk task is missing 'dset_json'"),
        ({"chunk_id": CID, "dset_json": DSET_JSON}, TaskError, "chunk task has no 'bucket'"),
        (base(chunk_id=5), TaskError, "chunk_id must be a string, got 5"),
        (base(chunk_id="x"), StoragePathError, "chunk id 'x' is not an HSDS chunk id"),
        (base(bucket=".."), StoragePathError, r"bucket '\.\.' is not a valid bucket name"),
        (base(bucket="a/b"), StoragePathError, "bucket 'a/b' is not a valid bucket name"),
        (base(key="db/../../etc/passwd"), StoragePathError, r"key 'db/\.\./\.\./etc/passwd' contains '\.\.'"),
        (base(s3path="s3://b/../x", s3size=4), StoragePathError, r"contains '\.\.'"),
        (base(s3path="s3://../x", s3size=4), StoragePathError, r"bucket '\.\.' is not a valid bucket name"),
        (base(s3path="nobucket", s3size=4), TaskError, "s3path 'nobucket' must be 'bucket/key' or 's3://bucket/key'"),
        (base(s3path="b/k", s3size="x"), TaskError, "s3size must be an integer, got 'x'"),
        (base(s3path="b/k", s3size=4, s3offset="q"), TaskError, "s3offset must be an integer, got 'q'"),
        (base(point_arr="!!!not base64"), TaskError, "point_arr is not valid base64"),
        (base(point_arr=123), TaskError, "point_arr is not valid base64"),
        (
            base(point_arr=base64.b64encode(b"\x00" * 12).decode()),
            TaskError,
            "point_arr holds 12 bytes, not a whole number of rank-2 uint64 points",
        ),
        (
            base(point_arr=base64.b64encode(b"\x00" * 16).decode(), num_points=2),
            TaskError,
            r"num_points 2 does not match point_arr \(1 points\)",
        ),
        (base(kind="delete"), TaskError, "kind 'delete' must be 'hyperslab', 'points' or 'query'"),
        (base(kind="points"), TaskError, "a points task needs 'point_arr'"),
        (base(fields=5), TaskError, "fields must be a list of names or 'a:b', got 5"),
        (base(fields=["a", 1]), TaskError, r"fields must be a list of names or 'a:b', got \['a', 1\]"),
        (base(select=[0, 1]), TaskError, r"select must be a string like '\[0:10,5\]', got \[0, 1\]"),
        (base(query=5), TaskError, "query must be a string, got 5"),
        (base(Limit="ten"), TaskError, "Limit must be an integer, got 'ten'"),
        (base(dset_json={"id": "d-x"}), DatasetJsonError, "dataset JSON 'd-x' has no 'type' key"),
        (base(dset_json={**DSET_JSON, "shape": {"class": "H5S_NULL"}}), DatasetJsonError, "H5S_NULL"),
    ],
)
def test_bad_payloads(payload: Any, exc: type[Exception], message: str) -> None:
    with pytest.raises(exc, match=message) as ei:
        ChunkTask.from_wire(payload)
    assert isinstance(ei.value, HsdsBackendsError)
    if exc is TaskError:
        assert ei.value.status == 400  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("payload", "fragment"),
    [
        (base(dset_json="{not json"), "dset_json"),
        (base(point_arr=base64.b64encode(b"\x00" * 16).decode(), num_points="x"), "num_points"),
        (base(Limit=-1), "Limit"),
    ],
    ids=["dset_json-not-json", "num_points-not-int", "negative-limit"],
)
def test_bad_payload_values_are_task_errors(payload: dict[str, Any], fragment: str) -> None:
    # JSONDecodeError / ValueError must not leak, and a negative Limit must not drop the last hit (hits[:-1])
    with pytest.raises(TaskError, match=fragment):
        ChunkTask.from_wire(payload)


async def test_bad_select_fails_at_run_naming_chunk(storage: PosixStorage) -> None:
    t = ChunkTask.from_wire(base(select="[0:2,zz]", s3size=0, kind="query", query="x"))
    # a missing chunk under a query is read as fill, so the select is parsed and fails
    with pytest.raises(HsdsBackendsError, match=re.escape(CID)):
        await kernel.run_task(t, storage)
    t = ChunkTask.from_wire(base(select="[0:2,zz]"))
    await storage.put(BUCKET, chunk_key(CID), np.zeros(2000, "<i4").tobytes())
    with pytest.raises(
        SelectionError, match=re.escape(f"chunk {CID}: bad select '[0:2,zz]': index 'zz' is not an integer")
    ):
        await kernel.run_task(t, storage)


# --------------------------------------------------------------------------- results and errors on the wire


def test_chunk_result_wire() -> None:
    ok = ChunkResult(CID, "ok", b"\x00\x01\x02")
    assert ok.to_wire() == {"statusCode": 200, "chunk_id": CID, "body": "AAEC", "fetched": 0, "decoded": 0}
    assert ChunkResult.from_wire(ok.to_wire()) == ok
    measured = ChunkResult(CID, "ok", b"\x00", fetched=5, decoded=40)
    assert ChunkResult.from_wire(measured.to_wire()) == measured
    missing = ChunkResult(CID, "missing")
    assert missing.to_wire() == {"statusCode": 404, "chunk_id": CID, "body": ""}
    assert ChunkResult.from_wire({"statusCode": 404}, CID) == missing
    # §6.4 Lambda answer without chunk_id: the caller supplies it
    assert ChunkResult.from_wire({"statusCode": 200, "body": "AAEC"}, CID) == ok


def test_chunk_result_bad_body_is_an_error() -> None:
    # b64decode without validate=True silently drops bad characters: '!!!' → b'' (query rows vanish)
    with pytest.raises(TaskError, match="body"):
        ChunkResult.from_wire({"statusCode": 200, "body": "!!!", "chunk_id": CID})


@pytest.mark.parametrize(
    ("exc", "status", "name"),
    [
        (SelectionError("bad select"), 400, "SelectionError"),
        (FieldError("unknown field"), 400, "FieldError"),
        (StoragePathError("bad key"), 400, "StoragePathError"),
        (ChunkDecodeError(f"chunk {CID} (key k) is corrupt"), 500, "ChunkDecodeError"),
        (errors.UnsupportedFilterError("szip"), 500, "UnsupportedFilterError"),
        (errors.NotFoundError("gone"), 404, "NotFoundError"),
    ],
)
def test_error_wire_round_trip(exc: HsdsBackendsError, status: int, name: str) -> None:
    w = error_to_wire(exc, CID)
    assert w == {"statusCode": status, "error_type": name, "message": str(exc), "chunk_id": CID}
    back = error_from_wire(json.loads(json.dumps(w)))
    assert type(back) is type(exc)
    assert back.status == status  # type: ignore[attr-defined]
    assert CID in str(back) and str(exc) in str(back)
    # an error report is an error even when its status is 404: only a bare 404 means "missing chunk"
    with pytest.raises(type(exc)):
        ChunkResult.from_wire(w)


async def test_missing_linked_file_error_survives_the_wire(storage: PosixStorage) -> None:
    # the kernel raises NotFoundError for a missing linked file (§3.4: with an s3path the 404 propagates);
    # a remote executor reports it as statusCode 404 + error_type, which must not turn into fill values
    meta = DatasetMeta.from_json(
        {
            **DSET_JSON,
            "creationProperties": {
                "layout": {"class": "H5D_CONTIGUOUS_REF", "file_uri": "other/gone.h5", "offset": 0, "size": 80000}
            },
        },
        BUCKET,
    )
    task = ChunkTask(meta.chunk_id((0, 0)), meta, meta.location((0, 0)), "hyperslab", "[0:1,0:1]")
    with pytest.raises(errors.NotFoundError, match="linked file other/gone.h5 is missing") as ei:
        await kernel.run_task(rewire(task), storage)
    w = error_to_wire(ei.value, task.chunk_id)
    assert w["statusCode"] == 404 and w["error_type"] == "NotFoundError"
    with pytest.raises(errors.NotFoundError, match="gone.h5"):
        ChunkResult.from_wire(json.loads(json.dumps(w)))
    assert ChunkResult.from_wire({"statusCode": 404}, task.chunk_id).status == "missing"  # a bare 404 still fills


def test_error_to_wire_foreign_exception() -> None:
    w = error_to_wire(ValueError("boom"), CID)
    assert w["error_type"] == "TaskError"
    assert w["message"] == "ValueError: boom"
    assert w["statusCode"] == 500  # an internal failure, not a bad request


@pytest.mark.parametrize(
    ("wire", "cls", "message"),
    [
        ({"statusCode": 500, "error_type": "os.system", "message": "x"}, TaskError, f"chunk {CID}: x"),
        ({"statusCode": 500, "error_type": "ValueError", "message": "x"}, TaskError, "x"),
        ({"statusCode": 502, "errorMessage": "Lambda died"}, TaskError, "Lambda died"),
        ({"statusCode": 503}, TaskError, "chunk task failed with status 503"),
    ],
)
def test_error_from_wire_unknown_types_fall_back(wire: dict[str, Any], cls: type, message: str) -> None:
    err = error_from_wire(wire, CID)
    assert type(err) is cls
    assert message in str(err)
    assert CID in str(err)


# --------------------------------------------------------------------------- dtypes of results


def test_field_dtype_and_query_dtype() -> None:
    sub = field_dtype(TABLE, ("temp", "id"))
    assert sub.names == ("temp", "id") and sub.itemsize == 12
    assert [sub.fields[n][1] for n in sub.names] == [0, 4]
    assert field_dtype(TABLE, None) is TABLE
    q = query_dtype(TABLE, None)
    assert q.names == ("index", "id", "flag", "temp", "name")
    assert q.fields["index"][0] == np.dtype("<u8") and q.itemsize == 8 + TABLE.itemsize
    clash = np.dtype([("index", "<i4"), ("_index", "u1")])
    assert query_dtype(clash, None).names == ("__index", "index", "_index")  # §5.3: renamed
    with pytest.raises(FieldError, match=r"field 'id' is named twice in \['id', 'id'\]"):
        field_dtype(TABLE, ("id", "id"))
    with pytest.raises(FieldError, match=r"fields \['a'\] given, but the dataset type int32 is not a compound"):
        field_dtype(np.dtype("<i4"), ("a",))
