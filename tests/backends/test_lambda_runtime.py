"""The local Lambda runtime reproduces the Invoke API's wire semantics (aws-lambda.md §1).

A plain aiobotocore Lambda client (retries off) talks to the runtime; the functions are small
handlers written into a temp folder and run by real ``python -m awslambdaric`` workers.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("hsds_backends_lambda")
pytest.importorskip("awslambdaric")

from botocore.exceptions import ClientError  # noqa: E402
from hsds_backends_lambda.local import FunctionSpec, LocalLambdaRuntime  # noqa: E402

from hsds_backends.errors import ConfigError  # noqa: E402

HANDLER = '''
import json, os, time

def handler(event, context):
    print("got", json.dumps(event)[:60])
    do = event.get("do")
    if do == "big":
        return "x" * 6_291_600
    if do == "raise":
        raise ValueError("boom in " + context.function_name)
    if do == "sleep":
        time.sleep(event["s"])
        return {"slept": event["s"]}
    if do == "exit":
        os._exit(3)
    return {"request_id": context.aws_request_id, "function": context.function_name, "memory": context.memory_limit_in_mb,
            "remaining_ms": context.get_remaining_time_in_millis(), "arn": context.invoked_function_arn, "pid": os.getpid()}
'''


@pytest.fixture(scope="module")
def runtime(tmp_path_factory: pytest.TempPathFactory, runner: asyncio.Runner) -> Iterator[LocalLambdaRuntime]:
    code = tmp_path_factory.mktemp("fn")
    (Path(code) / "app.py").write_text(HANDLER)
    rt = LocalLambdaRuntime(
        functions=[
            FunctionSpec("echo", handler="app.handler", code_dir=str(code), timeout_s=1.0, concurrency=1, warm=1, memory_mb=512),
            FunctionSpec("broken", handler="nomodule.handler", code_dir=str(code), timeout_s=1.0, concurrency=1),
        ]
    )
    runner.run(rt.start())
    yield rt
    runner.run(rt.stop())


@pytest.fixture(scope="module")
def lam(runtime: LocalLambdaRuntime, runner: asyncio.Runner) -> Iterator[Any]:
    from aiobotocore.config import AioConfig
    from aiobotocore.session import get_session

    cm = get_session().create_client(
        "lambda",
        region_name="us-east-1",
        endpoint_url=runtime.url,
        aws_access_key_id="local",
        aws_secret_access_key="local",
        config=AioConfig(retries={"total_max_attempts": 1}, read_timeout=30),
    )
    client = runner.run(cm.__aenter__())
    yield client
    runner.run(cm.__aexit__(None, None, None))


def invoke(lam: Any, runner: asyncio.Runner, event: Any, name: str = "echo", **kw: Any) -> tuple[dict[str, Any], Any]:
    async def go() -> tuple[dict[str, Any], Any]:
        payload = event if isinstance(event, bytes) else json.dumps(event).encode()
        resp = await lam.invoke(FunctionName=name, Payload=payload, **kw)
        body = await resp["Payload"].read()
        return resp, (json.loads(body) if body else None)

    return runner.run(go())


def test_context_version_and_tail_log(lam: Any, runner: asyncio.Runner) -> None:
    resp, body = invoke(lam, runner, {"hello": 1}, LogType="Tail")
    assert resp["StatusCode"] == 200 and resp["ExecutedVersion"] == "$LATEST" and "FunctionError" not in resp
    assert body["function"] == "echo" and body["memory"] == "512" and 0 < body["remaining_ms"] <= 1000
    assert body["arn"] == "arn:aws:lambda:us-east-1:000000000000:function:echo"
    tail = base64.b64decode(resp["LogResult"]).decode()
    assert tail.startswith(f"START RequestId: {body['request_id']} Version: $LATEST")
    assert 'got {"hello": 1}' in tail
    assert f"END RequestId: {body['request_id']}" in tail
    assert "Billed Duration:" in tail and "Memory Size: 512 MB" in tail and "Max Memory Used:" in tail
    resp2, body2 = invoke(lam, runner, {}, LogType="Tail")
    assert body2["pid"] == body["pid"]  # warm reuse
    assert "Init Duration" not in base64.b64decode(resp2["LogResult"]).decode()


def test_handler_exception_shape(lam: Any, runner: asyncio.Runner) -> None:
    resp, body = invoke(lam, runner, {"do": "raise"})
    assert resp["StatusCode"] == 200 and resp["FunctionError"] == "Unhandled"
    assert body["errorType"] == "ValueError" and body["errorMessage"] == "boom in echo"
    assert body["requestId"] and isinstance(body["stackTrace"], list) and "app.py" in body["stackTrace"][0]


def test_oversize_response_resets_the_environment(lam: Any, runner: asyncio.Runner, runtime: LocalLambdaRuntime) -> None:
    cold = runtime.meter("echo").cold_starts
    resp, body = invoke(lam, runner, {"do": "big"})
    assert resp["FunctionError"] == "Unhandled" and body["errorType"] == "Function.ResponseSizeTooLarge"
    assert "6291556 bytes" in body["errorMessage"]
    resp, body = invoke(lam, runner, {}, LogType="Tail")
    assert "FunctionError" not in resp and runtime.meter("echo").cold_starts == cold + 1
    assert "Init Duration:" in base64.b64decode(resp["LogResult"]).decode()


def test_timeout_and_exit(lam: Any, runner: asyncio.Runner) -> None:
    resp, body = invoke(lam, runner, {"do": "sleep", "s": 3})
    assert resp["FunctionError"] == "Unhandled" and body["errorType"] == "Sandbox.Timedout"
    assert body["errorMessage"].endswith("Task timed out after 1.00 seconds")
    resp, body = invoke(lam, runner, {"do": "exit"})
    assert body["errorType"] == "Runtime.ExitError" and "exit status 3" in body["errorMessage"]
    assert invoke(lam, runner, {})[0]["StatusCode"] == 200  # a new environment takes over


def test_init_error(lam: Any, runner: asyncio.Runner) -> None:
    resp, body = invoke(lam, runner, {}, name="broken")
    assert resp["FunctionError"] == "Unhandled" and body["errorType"] == "Runtime.ImportModuleError"
    assert "nomodule" in body["errorMessage"]


def test_concurrency_cap_is_429_with_reason(lam: Any, runner: asyncio.Runner) -> None:
    async def two() -> list[Any]:
        async def one(s: float) -> Any:
            try:
                resp = await lam.invoke(FunctionName="echo", Payload=json.dumps({"do": "sleep", "s": s}).encode())
                return json.loads(await resp["Payload"].read())
            except ClientError as exc:
                return exc

        first = asyncio.create_task(one(0.5))
        await asyncio.sleep(0.1)
        return [await one(0.0), await first]

    throttled, ok = runner.run(two())
    assert ok == {"slept": 0.5}
    assert isinstance(throttled, ClientError)
    assert throttled.response["ResponseMetadata"]["HTTPStatusCode"] == 429
    assert throttled.response["Error"]["Code"] == "TooManyRequestsException"
    assert throttled.response["Reason"] == "ReservedFunctionConcurrentInvocationLimitExceeded"


@pytest.mark.parametrize(
    ("name", "payload", "status", "code"),
    [
        ("nope", b"{}", 404, "ResourceNotFoundException"),
        ("echo:v2", b"{}", 404, "ResourceNotFoundException"),
        ("echo", b"{not json", 400, "InvalidRequestContentException"),
        ("echo", b'"' + b"x" * 6_291_456 + b'"', 413, "RequestEntityTooLargeException"),
    ],
    ids=["unknown", "qualifier", "not-json", "too-large"],
)
def test_api_errors(lam: Any, runner: asyncio.Runner, name: str, payload: bytes, status: int, code: str) -> None:
    with pytest.raises(ClientError) as info:
        invoke(lam, runner, payload, name=name)
    assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == status
    assert info.value.response["Error"]["Code"] == code


def test_names_types_and_fault_endpoint(lam: Any, runner: asyncio.Runner, runtime: LocalLambdaRuntime) -> None:
    arn = "arn:aws:lambda:us-east-1:000000000000:function:echo:$LATEST"
    assert invoke(lam, runner, {}, name=arn)[0]["StatusCode"] == 200
    assert invoke(lam, runner, {}, InvocationType="DryRun")[0]["StatusCode"] == 204
    assert invoke(lam, runner, {}, InvocationType="Event")[0]["StatusCode"] == 202
    # echo has concurrency 1: until the Event run ends, a sync invoke is refused (429) as AWS would
    runner.run(runtime.background_done())

    async def set_faults() -> Any:
        import aiohttp

        auth = {"Authorization": f"Bearer {runtime.token}"}  # the control endpoints need the runtime's token
        async with aiohttp.ClientSession() as s, s.post(f"{runtime.url}/local/functions/echo/faults", json={"throttle": 1}, headers=auth) as r:
            return await r.json()

    assert runner.run(set_faults())["throttle"] == 1
    with pytest.raises(ClientError, match="TooManyRequestsException"):
        invoke(lam, runner, {})
    assert invoke(lam, runner, {})[0]["StatusCode"] == 200


def test_binds_loopback_only() -> None:
    with pytest.raises(ConfigError, match="loopback addresses only, not '0.0.0.0'"):
        LocalLambdaRuntime("0.0.0.0")
