"""Faults through the local Lambda runtime, and bad payloads to the handler.

One runtime (two warm awslambdaric workers, function timeout 2 s) serves the whole module;
the backend talks to it through ``aws_lambda_gateway`` as it would to AWS. Faults are scripted
per call with :class:`hsds_backends_lambda.local.Faults`; every test asserts the bytes read.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("hsds_backends_lambda")
pytest.importorskip("awslambdaric")

from hsds_backends_lambda.backend import LambdaBackend, split_task  # noqa: E402
from hsds_backends_lambda.handler import _State, handle_event  # noqa: E402
from hsds_backends_lambda.local import FunctionSpec, LocalLambdaRuntime  # noqa: E402

from hsds_backends import vlen_dtype  # noqa: E402
from hsds_backends.api import Reader  # noqa: E402
from hsds_backends.testing.fixtures import reader_and_backend  # noqa: E402
from hsds_backends.errors import BackendError, ChunkDecodeError  # noqa: E402
from hsds_backends.storage import PosixStorage  # noqa: E402
from hsds_backends.testing.data import CONFORMANCE_DOMAIN, ConformanceData  # noqa: E402
from hsds_backends.writer import Writer  # noqa: E402

BUCKET = "hsdstest"


@pytest.fixture(scope="module")
def data(conformance_root: tuple[Path, ConformanceData], runner: asyncio.Runner) -> tuple[Path, ConformanceData, dict[str, np.ndarray]]:
    root, cd = conformance_root
    rng = np.random.default_rng(7)
    big = rng.normal(size=(1024, 1024)).astype("<f8")  # one 8 MB chunk: over the 6 MB response limit
    words = np.empty(600, dtype=vlen_dtype(str))
    words[:] = ["%05d" % i + "é" * 6000 for i in range(600)]  # ~7 MB of vlen strings in one chunk

    async def write() -> None:
        w = Writer(PosixStorage(root), BUCKET, owner="conformance")
        await w.create_dataset(CONFORMANCE_DOMAIN, "/big", big, chunks=(1024, 1024), filters=[("gzip", 1)])
        await w.create_dataset(CONFORMANCE_DOMAIN, "/big_vlen", words, chunks=(600,))

    runner.run(write())
    return root, cd, {"big": big, "big_vlen": words}


@pytest.fixture(scope="module")
def runtime(data: Any, runner: asyncio.Runner) -> Iterator[LocalLambdaRuntime]:
    root = data[0]
    spec = FunctionSpec(
        "chunk_read",
        env={"ROOT_DIR": str(root), "BUCKET_NAME": BUCKET, "HSDS_LAMBDA_THREADS": "1", "LOG_LEVEL": "WARNING"},
        timeout_s=2.0,
        concurrency=2,
        warm=2,
    )
    rt = LocalLambdaRuntime(functions=[spec])
    runner.run(rt.start())
    yield rt
    runner.run(rt.stop())


@pytest.fixture(scope="module")
def reader_backend(data: Any, runtime: LocalLambdaRuntime, runner: asyncio.Runner) -> Iterator[tuple[Reader, LambdaBackend]]:
    cfg = {
        "root_dir": str(data[0]),
        "bucket_name": BUCKET,
        "aws_lambda_gateway": runtime.url,
        "aws_lambda_max_invoke": 2,
        "aws_lambda_timeout": 2,
        "aws_lambda_retry_base": 0.02,
    }
    yield from reader_and_backend(runner, LambdaBackend, cfg)


@pytest.fixture(autouse=True)
def _no_faults_left(runtime: LocalLambdaRuntime) -> Iterator[None]:
    yield
    runtime.faults("chunk_read").update(throttle=0, retry_after=0, latency_s=0, crash=0, straggle=0, straggle_s=0)


def read(rb: tuple[Reader, LambdaBackend], runner: asyncio.Runner, name: str, sel: Any = None) -> np.ndarray:
    reader, backend = rb

    async def go() -> np.ndarray:
        dset = await (await reader.open(CONFORMANCE_DOMAIN)).get(f"/{name}")
        return await dset.read(sel, backend=backend)

    return runner.run(go())


def same(a: np.ndarray, b: np.ndarray) -> None:
    assert a.dtype == b.dtype and a.shape == b.shape
    if b.dtype.hasobject:
        assert a.tolist() == b.tolist()
    else:
        assert a.tobytes() == b.tobytes()


# ----------------------------------------------------------------------------- faults


def test_throttle_storm_backs_off_then_succeeds(reader_backend: Any, runner: asyncio.Runner, runtime: LocalLambdaRuntime, data: Any) -> None:
    meter = runtime.meter("chunk_read")
    before = meter.throttles
    runtime.faults("chunk_read").update(throttle=6)
    out = read(reader_backend, runner, "be_i4")
    same(out, data[1].arrays["be_i4"])
    stats = reader_backend[1].last_stats
    assert stats.throttled == 6 and stats.retried >= 6
    assert meter.throttles - before == 6


def test_retry_after_is_honoured(reader_backend: Any, runner: asyncio.Runner, runtime: LocalLambdaRuntime, data: Any) -> None:
    runtime.faults("chunk_read").update(throttle=1, retry_after=0.4)
    t0 = time.perf_counter()
    out = read(reader_backend, runner, "be_i4", np.s_[0:5, 0:5])
    assert time.perf_counter() - t0 >= 0.4
    same(out, data[1].arrays["be_i4"][0:5, 0:5])
    assert reader_backend[1].last_stats.throttled == 1


def test_function_timeout_is_retried(reader_backend: Any, runner: asyncio.Runner, runtime: LocalLambdaRuntime, data: Any) -> None:
    meter = runtime.meter("chunk_read")
    before = meter.timeouts
    runtime.faults("chunk_read").update(straggle=1, straggle_s=3.0)  # > the 2 s function timeout
    out = read(reader_backend, runner, "be_i4", np.s_[0:20, 0:16])  # one chunk, one invoke
    same(out, data[1].arrays["be_i4"][0:20, 0:16])
    assert meter.timeouts - before == 1
    assert reader_backend[1].last_stats.retried == 1


def test_crashed_worker_is_retried(reader_backend: Any, runner: asyncio.Runner, runtime: LocalLambdaRuntime, data: Any) -> None:
    meter = runtime.meter("chunk_read")
    before = meter.crashes
    runtime.faults("chunk_read").update(crash=1)
    out = read(reader_backend, runner, "cube_u8")
    same(out, data[1].arrays["cube_u8"])
    assert meter.crashes - before == 1
    assert reader_backend[1].last_stats.retried >= 1


def test_straggler_does_not_change_the_result(reader_backend: Any, runner: asyncio.Runner, runtime: LocalLambdaRuntime, data: Any) -> None:
    runtime.faults("chunk_read").update(straggle=1, straggle_s=0.5, latency_s=0.01)
    same(read(reader_backend, runner, "partitioned"), data[1].arrays["partitioned"])
    assert reader_backend[1].last_stats.retried == 0


def test_result_over_6mb_is_split(reader_backend: Any, runner: asyncio.Runner, data: Any) -> None:
    out = read(reader_backend, runner, "big")
    same(out, data[2]["big"])
    stats = reader_backend[1].last_stats
    assert stats.invokes >= 2 and stats.tasks == 1  # one chunk, split before sending
    assert stats.response_bytes > 8 * 1024 * 1024


def test_vlen_result_over_6mb_is_split_after_the_function_says_so(reader_backend: Any, runner: asyncio.Runner, data: Any) -> None:
    out = read(reader_backend, runner, "big_vlen")
    same(out, data[2]["big_vlen"])
    stats = reader_backend[1].last_stats
    assert stats.split >= 1 and stats.failed == 0  # a 413 answer from the handler, not Function.ResponseSizeTooLarge


def test_undecodable_chunk_fails_once_naming_the_chunk(reader_backend: Any, runner: asyncio.Runner, data: Any) -> None:
    cid, key = data[1].bad_keys["bad_corrupt"]
    with pytest.raises(ChunkDecodeError, match=cid) as info:
        read(reader_backend, runner, "bad_corrupt", np.s_[0:50, 50:100])
    assert key in str(info.value)
    stats = reader_backend[1].last_stats
    assert stats.invokes == 1 and stats.retried == 0


def test_unknown_function_is_a_clear_error(data: Any, runtime: LocalLambdaRuntime, runner: asyncio.Runner) -> None:
    cfg = {"root_dir": str(data[0]), "aws_lambda_gateway": runtime.url, "aws_lambda_chunkread_function": "chunk_reed"}

    async def go() -> None:
        async with Reader(cfg) as reader, LambdaBackend(cfg) as backend:
            dset = await (await reader.open(CONFORMANCE_DOMAIN)).get("/be_i4")
            await dset.read(np.s_[0:5, 0:5], backend=backend)

    with pytest.raises(BackendError, match=r"HTTP 404 ResourceNotFoundException: Function not found: .*chunk_reed"):
        runner.run(go())


def test_split_task_halves_concatenate(data: Any) -> None:
    from hsds_backends.dataset import DatasetMeta
    from hsds_backends.plan import plan_hyperslab
    from hsds_backends.selection import parse_select

    root = data[0]
    dj = next((root / BUCKET).rglob(".dataset.json"))
    meta = DatasetMeta.from_json(json.loads(dj.read_text()), BUCKET)
    plan = plan_hyperslab(meta, parse_select("[" + ",".join(f"0:{s}" for s in meta.shape) + "]", meta.shape))
    a, b = split_task(plan.tasks[0])
    assert a.select != b.select


# ----------------------------------------------------------------------------- bad payloads


@pytest.fixture(scope="module")
def state(data: Any) -> Iterator[_State]:
    st = _State({"ROOT_DIR": str(data[0]), "BUCKET_ALLOWLIST": f"{BUCKET},other"})
    yield st
    st.close()


@pytest.fixture(scope="module")
def be_i4_task(data: Any, runner: asyncio.Runner) -> dict[str, Any]:
    async def go() -> dict[str, Any]:
        async with Reader({"root_dir": str(data[0]), "bucket_name": BUCKET}) as reader:
            dset = await (await reader.open(CONFORMANCE_DOMAIN)).get("/be_i4")
            return dset.plan(np.s_[0:4, 0:3]).tasks[0].to_wire()

    return runner.run(go())


@pytest.mark.parametrize(
    ("mutate", "status", "match"),
    [
        (lambda d: d.pop("chunk_id"), 400, "missing 'chunk_id'"),
        (lambda d: d.pop("dset_json"), 400, "missing 'dset_json'"),
        (lambda d: d.update(select="[0:50,0:3]"), 400, r"0:50"),
        (lambda d: d.update(select="[a:b]"), 400, r"a:b"),
        (lambda d: d.update(bucket="secret-bucket"), 403, r"'secret-bucket' is not an allowed bucket \(allowed: \['hsdstest', 'other'\]\); add it to the function's BUCKET_ALLOWLIST"),
        (lambda d: d.update(key="../../etc/passwd"), 400, r"contains '\.\.'"),
        (lambda d: d.update(s3path="hsdstest/../x", s3size=10), 400, r"contains '\.\.'"),
        (lambda d: d.update(point_arr="not base64!"), 400, "point_arr is not valid base64"),
    ],
    ids=["no-chunk_id", "no-dset_json", "select-out-of-chunk", "select-garbage", "bucket-not-allowed", "dotdot-key", "dotdot-s3path", "bad-point_arr"],
)
def test_bad_payload_gets_a_4xx_answer(state: _State, be_i4_task: dict[str, Any], mutate: Any, status: int, match: str) -> None:
    d = json.loads(json.dumps(be_i4_task))
    mutate(d)
    answer = handle_event(d, state)
    assert answer["statusCode"] == status
    import re

    assert re.search(match, answer["message"]), answer["message"]
    # the same task inside a batch: the batch answers 200, the task its own 4xx
    batch = handle_event({"tasks": [d, be_i4_task]}, state)
    assert batch["statusCode"] == 200
    assert batch["results"][0]["statusCode"] == status and batch["results"][1]["statusCode"] == 200


def test_not_an_object_gets_400(state: _State) -> None:
    assert handle_event([1, 2], state)["statusCode"] == 400
    answer = handle_event({"tasks": "nope"}, state)
    assert answer["statusCode"] == 400 and "'tasks' must be a list" in answer["message"]


def test_2021_payloads(state: _State, data: Any, runner: asyncio.Runner) -> None:
    cd = data[1]

    async def plans() -> tuple[Any, Any, Any]:
        async with Reader({"root_dir": str(data[0]), "bucket_name": BUCKET}) as reader:
            dom = await reader.open(CONFORMANCE_DOMAIN)
            g = await dom.get("/be_i4")
            t = await dom.get("/table")
            from hsds_backends.plan import plan_points, plan_query

            return g.plan(np.s_[0:4, 0:3]).tasks[0], plan_points(g.meta, [[1, 2], [3, 0]]).tasks[0], plan_query(t.meta, "temp > 20", None, None, None).tasks[0]

    hs, pts, q = runner.run(plans())
    # the 2021 SN sent the whole dataset JSON as dset_json and no 'kind'
    d = {k: v for k, v in hs.to_wire().items() if k != "kind"}
    ans = handle_event(d, state)
    assert ans["statusCode"] == 200
    dt = cd.arrays["be_i4"].dtype
    got = np.frombuffer(base64.b64decode(ans["body"]), dtype=dt).reshape(4, 3)
    same(got, cd.arrays["be_i4"][0:4, 0:3])
    d = {k: v for k, v in pts.to_wire().items() if k != "kind"}
    d.update(action="get", count=2)
    ans = handle_event(d, state)
    assert np.frombuffer(base64.b64decode(ans["body"]), dtype=dt).tolist() == [cd.arrays["be_i4"][1, 2], cd.arrays["be_i4"][3, 0]]
    d = {k: v for k, v in q.to_wire().items() if k != "kind"}
    ans = handle_event(d, state)
    body = json.loads(ans["body"])
    table = cd.arrays["table"][:128]
    assert body["index"] == np.nonzero(table["temp"] > 20)[0].tolist()
    assert len(body["value"]) == len(body["index"])


def test_bad_payload_through_the_runtime(runtime: LocalLambdaRuntime, be_i4_task: dict[str, Any], runner: asyncio.Runner) -> None:
    d = dict(be_i4_task, bucket="not-allowed-here", select="[0:2,0:2]")
    body, error_type, tail = runner.run(runtime.run("chunk_read", json.dumps(d).encode()))
    assert error_type is None  # a bad payload is an answer, not a function error
    answer = json.loads(body)
    # the runtime's function has no BUCKET_ALLOWLIST, so only its BUCKET_NAME may be read: 403, nothing fetched
    assert answer["statusCode"] == 403 and "'not-allowed-here' is not an allowed bucket (allowed: ['hsdstest']); add it to the function's BUCKET_ALLOWLIST" in answer["message"]
    d = dict(be_i4_task, select="[0:99,0:2]")
    answer = json.loads(runner.run(runtime.run("chunk_read", json.dumps(d).encode()))[0])
    assert answer["statusCode"] == 400 and "0:99" in answer["message"]
    assert "REPORT RequestId:" in runner.run(runtime.run("chunk_read", b'{"ping": true}'))[2]
