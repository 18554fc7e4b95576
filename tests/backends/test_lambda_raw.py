"""Raw (binary) answers, reused answer buffers, and the local runtime in a child process.

The client asks for raw answers by default (``aws_lambda_answer: raw``); ``base64`` keeps the
2021 JSON form. Both must give the bytes the kernel gives. The embedded runtime runs in a child
process (:class:`hsds_backends_lambda.local.RuntimeProcess`).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("hsds_backends_lambda")
pytest.importorskip("awslambdaric")

from hsds_backends_lambda.backend import LambdaBackend  # noqa: E402
from hsds_backends_lambda.client import InvokeClient, InvokeStats, parse_answer  # noqa: E402
from hsds_backends_lambda.handler import _State, dumps_answer, handle_event  # noqa: E402
from hsds_backends_lambda.local import FunctionSpec, LocalLambdaRuntime, RuntimeProcess  # noqa: E402
from hsds_backends_lambda.wire import RAW_MAGIC, parse_raw_answer  # noqa: E402

from hsds_backends._proc import MALLOC_ENV  # noqa: E402
from hsds_backends.api import Reader  # noqa: E402
from hsds_backends.errors import BackendError, ConfigError  # noqa: E402
from hsds_backends.kernel import fetch, process  # noqa: E402
from hsds_backends.storage import PosixStorage  # noqa: E402
from hsds_backends.tasks import ChunkTask  # noqa: E402
from hsds_backends.testing.data import CONFORMANCE_DOMAIN, ConformanceData  # noqa: E402

BUCKET = "hsdstest"


@pytest.fixture(scope="module")
def data(conformance_root: tuple[Path, ConformanceData]) -> tuple[Path, ConformanceData]:
    return conformance_root


@pytest.fixture(scope="module")
def state(data: Any) -> Iterator[_State]:
    st = _State({"ROOT_DIR": str(data[0]), "BUCKET_NAME": BUCKET})  # BUCKET_NAME: the one bucket it may read
    yield st
    st.close()


def _tasks(data: Any, runner: asyncio.Runner, name: str, sel: Any) -> list[ChunkTask]:
    async def go() -> list[ChunkTask]:
        async with Reader({"root_dir": str(data[0]), "bucket_name": BUCKET}) as reader:
            d = await (await reader.open(CONFORMANCE_DOMAIN)).get(f"/{name}")
            return list(d.plan(sel).tasks)

    return runner.run(go())


def _kernel_bytes(task: ChunkTask, root: Path, runner: asyncio.Runner) -> bytes | None:
    st = PosixStorage(root)
    res = process(task, runner.run(fetch(task, st)))
    return None if res.status == "missing" else bytes(res.data)


# ----------------------------------------------------------------------------- the handler's raw answer


@pytest.mark.parametrize(("name", "sel"), [("f4_fill", np.s_[3:90, 5:61]), ("be_i4", None), ("empty_fill", None), ("table", np.s_[::3])])
def test_raw_answer_holds_the_kernel_bytes(state: _State, data: Any, runner: asyncio.Runner, name: str, sel: Any) -> None:
    tasks = _tasks(data, runner, name, sel)
    event = {"tasks": [t.to_wire() for t in tasks], "answer": "raw"}
    raw = dumps_answer(handle_event(event, state))
    assert raw.startswith(RAW_MAGIC)
    answer = parse_answer(raw)
    assert len(answer["results"]) == len(tasks)
    b64 = parse_answer(dumps_answer(handle_event({"tasks": [t.to_wire() for t in tasks]}, state)))  # the JSON form
    for task, r, j in zip(tasks, answer["results"], b64["results"], strict=True):
        expected = _kernel_bytes(task, data[0], runner)
        if expected is None:
            assert r == {"statusCode": 404, "chunk_id": task.chunk_id} and j["statusCode"] == 404
        else:
            assert r["statusCode"] == 200 and r["chunk_id"] == task.chunk_id
            assert bytes(r["data"]) == expected and r["nbytes"] == len(expected)
            assert r["fetched"] > 0 and "body" not in r


def test_raw_answer_carries_errors_in_its_header(state: _State, data: Any, runner: asyncio.Runner) -> None:
    good, bad = _tasks(data, runner, "f4_fill", np.s_[0:64, 32:64])[:2]
    wrong = {**bad.to_wire(), "select": "[0:999,0:1]"}
    raw = dumps_answer(handle_event({"tasks": [good.to_wire(), wrong], "answer": "raw"}, state))
    first, second = parse_raw_answer(raw)["results"]
    assert bytes(first["data"]) == _kernel_bytes(good, data[0], runner)
    assert second["statusCode"] == 400 and "0:999" in second["message"] and "data" not in second


def test_raw_answer_too_large_result_says_so(data: Any, runner: asyncio.Runner) -> None:
    st = _State({"ROOT_DIR": str(data[0]), "BUCKET_NAME": BUCKET, "HSDS_LAMBDA_MAX_RESPONSE": "1000"})
    try:
        tasks = _tasks(data, runner, "be_i4", None)[:2]
        answer = parse_raw_answer(dumps_answer(handle_event({"tasks": [t.to_wire() for t in tasks], "answer": "raw"}, st)))
    finally:
        st.close()
    for r in answer["results"]:
        assert r["statusCode"] == 413 and r["error_type"] == "ResultTooLarge" and r["nbytes"] == 20 * 16 * 4
        assert "split the selection" in r["message"]


def test_a_bad_batch_is_still_answered_in_json(state: _State) -> None:
    raw = dumps_answer(handle_event({"tasks": "nope", "answer": "raw"}, state))
    assert not raw.startswith(RAW_MAGIC)
    answer = json.loads(raw)
    assert answer["statusCode"] == 400 and "'tasks' must be a list" in answer["message"]


@pytest.mark.parametrize(
    ("cut", "match"),
    [
        (lambda r: r[:10], "shorter than its 12-byte preamble"),
        (lambda r: r[:20], "cut short: its header alone is"),
        (lambda r: r[:-1], "claims 4 bytes at offset"),
        (lambda r: r + b"x", "1 bytes after the last result"),
    ],
    ids=["preamble", "header", "body", "trailing"],
)
def test_damaged_raw_answers_are_refused(cut: Any, match: str) -> None:
    header = json.dumps({"statusCode": 200, "results": [{"statusCode": 200, "chunk_id": "c-1", "nbytes": 4}]}).encode()
    raw = RAW_MAGIC + len(header).to_bytes(4, "little") + header + b"abcd"
    assert bytes(parse_raw_answer(raw)["results"][0]["data"]) == b"abcd"
    with pytest.raises(ValueError, match=match):
        parse_raw_answer(cut(raw))


# ----------------------------------------------------------------------------- through a runtime


@pytest.fixture(scope="module")
def runtime(data: Any, runner: asyncio.Runner) -> Iterator[LocalLambdaRuntime]:
    spec = FunctionSpec("chunk_read", env={"ROOT_DIR": str(data[0]), "BUCKET_NAME": BUCKET, "HSDS_LAMBDA_THREADS": "1", **MALLOC_ENV}, concurrency=2, warm=2)
    rt = LocalLambdaRuntime(functions=[spec])
    runner.run(rt.start())
    yield rt
    runner.run(rt.stop())


def _read(cfg: dict[str, Any], runner: asyncio.Runner, reads: list[tuple[str, Any]]) -> tuple[list[np.ndarray], LambdaBackend]:
    async def go() -> tuple[list[np.ndarray], LambdaBackend]:
        async with Reader(cfg) as reader:
            backend = reader.backend("lambda")
            assert isinstance(backend, LambdaBackend)
            dom = await reader.open(CONFORMANCE_DOMAIN)
            out = [await (await dom.get(f"/{n}")).read(sel, backend="lambda") for n, sel in reads]
            return out, backend

    return runner.run(go())


@pytest.mark.parametrize("answer", ["raw", "base64"])
def test_both_answer_forms_read_the_same_bytes(data: Any, runtime: LocalLambdaRuntime, runner: asyncio.Runner, answer: str) -> None:
    root, cd = data
    cfg = {"root_dir": str(root), "bucket_name": BUCKET, "aws_lambda_gateway": runtime.url, "aws_lambda_max_invoke": 2, "aws_lambda_answer": answer}
    reads = [("f4_fill", None), ("f4_fill", np.s_[7:90:3, 2:60]), ("be_i4", None), ("empty_fill", None), ("f4_fill", np.s_[1:2, 3:4])]
    before = runtime.meter("chunk_read").response_bytes
    got, backend = _read(cfg, runner, reads)
    for (name, sel), arr in zip(reads, got, strict=True):
        expected = cd.arrays[name] if sel is None else cd.arrays[name][sel]
        assert arr.dtype == expected.dtype and arr.tobytes() == expected.tobytes(), (name, sel)
    assert backend.raw is (answer == "raw")
    if answer == "raw":
        # answers were received into reused buffers, released after placement
        assert backend._buffers and all(len(b) >= 6_291_556 for b in backend._buffers)
    assert runtime.meter("chunk_read").response_bytes > before


def test_raw_answers_are_smaller_than_base64(data: Any, runtime: LocalLambdaRuntime, runner: asyncio.Runner) -> None:
    sizes = {}
    for answer in ("raw", "base64"):
        before = runtime.meter("chunk_read").response_bytes
        cfg = {"root_dir": str(data[0]), "bucket_name": BUCKET, "aws_lambda_gateway": runtime.url, "aws_lambda_answer": answer}
        _read(cfg, runner, [("f4_fill", None)])
        sizes[answer] = runtime.meter("chunk_read").response_bytes - before
    assert sizes["raw"] * 1.2 < sizes["base64"]  # 4 KB chunks: the per-result header weighs a little


def test_bad_answer_setting_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="aws_lambda_answer='binary' is not one of raw, base64; use raw"):
        LambdaBackend({"aws_lambda_answer": "binary"})


def test_local_process_setting_is_parsed_as_a_config_boolean() -> None:
    assert LambdaBackend({}).local_process and not LambdaBackend({"aws_lambda_local_process": "off"}).local_process
    with pytest.raises(ConfigError, match="config key 'aws_lambda_local_process': 'maybe' from config is not a boolean"):
        LambdaBackend({"aws_lambda_local_process": "maybe"})


# ----------------------------------------------------------------------------- the runtime process


def test_runtime_process_serves_meters_and_stops(data: Any, runner: asyncio.Runner) -> None:
    spec = FunctionSpec("chunk_read", env={"ROOT_DIR": str(data[0]), "HSDS_LAMBDA_THREADS": "1"}, concurrency=1, warm=1)

    async def go() -> tuple[Any, Any, int, int]:
        rt = await RuntimeProcess(spec).start()
        pid = rt.pid
        assert rt.url.startswith("http://127.0.0.1:") and pid != os.getpid()
        client = InvokeClient("chunk_read", rt.url, credentials=("local", "local", None), max_in_flight=1, backoff_base_s=0.01)
        try:
            await rt.set_faults("chunk_read", throttle=1)
            pong = await client.invoke(b'{"ping": true}', InvokeStats())
            meter = await rt.meter("chunk_read")
        finally:
            await client.aclose()
            await rt.stop()
        assert pid is not None
        return pong, meter, pid, rt.pid or 0

    pong, meter, pid, after = runner.run(go())
    assert pong["pong"] is True
    assert meter.invocations == 1 and meter.throttles == 1
    assert after == 0
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="parent-death signal and subreapers are Linux features")
def test_runtime_process_exits_when_its_parent_goes(data: Any) -> None:
    """A SIGKILLed parent's runtime process gets SIGTERM from the kernel and shuts down cleanly (exit code 0).

    The runtime process is the parent's child, so only a subreaper can see its exit code: a
    helper process declares itself one, starts the parent, kills it and collects the orphan.
    """
    parent_code = textwrap.dedent(
        f"""
        import asyncio
        from hsds_backends_lambda.local import FunctionSpec, RuntimeProcess

        async def main():
            spec = FunctionSpec("chunk_read", env={{"ROOT_DIR": {str(data[0])!r}}}, concurrency=1, warm=0)
            rt = await RuntimeProcess(spec).start()
            print(rt.pid, flush=True)
            await asyncio.sleep(60)

        asyncio.run(main())
        """
    )
    reaper_code = textwrap.dedent(
        f"""
        import ctypes, os, signal, subprocess, sys, time
        ctypes.CDLL(None, use_errno=True).prctl(36, 1)  # PR_SET_CHILD_SUBREAPER: orphans become our children
        parent = subprocess.Popen([sys.executable, "-c", {parent_code!r}], stdout=subprocess.PIPE, text=True)
        pid = int(parent.stdout.readline())
        parent.kill()
        parent.wait()
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                print(os.waitstatus_to_exitcode(status))
                break
            time.sleep(0.05)
        else:
            os.kill(pid, signal.SIGKILL)
            print("still running")
        """
    )
    out = subprocess.run([sys.executable, "-c", reaper_code], capture_output=True, text=True, timeout=120, check=False)
    assert out.stdout.strip() == "0", out.stdout + out.stderr


def test_runtime_process_start_failure_is_explained(runner: asyncio.Runner) -> None:
    spec = FunctionSpec("chunk_read", concurrency=0)

    with pytest.raises(BackendError, match="local Lambda runtime process did not start: ConfigError: function 'chunk_read': concurrency must be >= 1"):
        runner.run(RuntimeProcess(spec).start())


class _Content:
    def __init__(self, chunks: list[Any]) -> None:
        self.chunks = list(chunks)

    async def readany(self) -> bytes:
        item = self.chunks.pop(0) if self.chunks else b""
        if isinstance(item, BaseException):
            raise item
        return item


class _Body:
    def __init__(self, chunks: list[Any]) -> None:
        self.raw_stream = type("Resp", (), {"content": _Content(chunks)})()

    async def readinto(self, b: Any) -> int:  # pragma: no cover - the raw_stream path is taken
        raise AssertionError("not used")


@pytest.mark.parametrize(
    ("declared", "chunks", "match"),
    [
        (6, [b"abc", b"def"], None),
        (6, [b"abc"], "ended after 3 of its 6 bytes"),
        (4, [b"abc", b"def"], "longer than its declared 4 bytes"),
        (6, [b"abc", "payload"], r"broke off after 3 of its 6 bytes: ClientPayloadError"),
    ],
    ids=["whole", "short", "long", "broken"],
)
def test_answers_are_received_into_the_buffer_or_fail_as_transport_errors(declared: int, chunks: list[Any], match: str | None) -> None:
    import aiohttp
    from hsds_backends_lambda.client import _read_payload

    chunks = [aiohttp.ClientPayloadError("connection lost") if c == "payload" else c for c in chunks]
    resp = {"Payload": _Body(chunks), "ResponseMetadata": {"HTTPHeaders": {"content-length": str(declared)}}}
    buf = bytearray(16)
    if match is None:
        got = asyncio.run(_read_payload(resp, lambda: buf))
        assert bytes(got) == b"abcdef" and bytes(buf[:6]) == b"abcdef"
    else:
        with pytest.raises(OSError, match=match):  # OSError: InvokeClient.invoke retries it
            asyncio.run(_read_payload(resp, lambda: buf))
