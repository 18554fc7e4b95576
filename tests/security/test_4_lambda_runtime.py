"""Finding 4: the local Lambda runtime serves no one but its own workers and the backend that started it.

Another local user reaches every loopback port. Here "another user" is another process with
none of the runtime's secrets: a plain ``http.client`` script in a subprocess. It asks an
environment's Runtime API for the next event and posts a forged response (before the fix
it got the payload and the reader received its bytes as data), calls the control endpoints
without the token, sends a foreign ``Host`` header, and invokes the backend's embedded
runtime with made-up credentials.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("hsds_backends_lambda")
pytest.importorskip("awslambdaric")

from hsds_backends_lambda.backend import LambdaBackend  # noqa: E402
from hsds_backends_lambda.local import FunctionSpec, LocalLambdaRuntime, RuntimeProcess  # noqa: E402

from hsds_backends.api import Reader  # noqa: E402
from hsds_backends.testing.fixtures import reader_and_backend  # noqa: E402
from hsds_backends.storage import PosixStorage  # noqa: E402
from hsds_backends.writer import Writer  # noqa: E402

BUCKET = "hsdstest"
DOMAIN = "/home/t/finding4.h5"
DATA = np.arange(8, dtype="<i4")
FORGED = b"A" * DATA.nbytes

#: The other local user: asks for the next event; given one, answers it with forged bytes.
THIEF = r"""
import base64, http.client, json, sys
c = http.client.HTTPConnection("127.0.0.1", int(sys.argv[1]), timeout=30)
c.request("GET", "/2018-06-01/runtime/invocation/next")
r = c.getresponse()
body = r.read()
print(r.status, body.decode("utf-8", "replace"), flush=True)
if r.status == 200:
    rid = r.getheader("Lambda-Runtime-Aws-Request-Id")
    forged = {"statusCode": 200, "chunk_id": json.loads(body)["chunk_id"], "body": base64.b64encode(b"A" * int(sys.argv[2])).decode()}
    c.request("POST", f"/2018-06-01/runtime/invocation/{rid}/response", json.dumps(forged))
    r = c.getresponse()
    print(r.status, r.read().decode("utf-8", "replace"), flush=True)
"""

#: The other local user, knowing a pending request id: posts a forged response for it.
FORGER = r"""
import base64, http.client, json, sys
port, rid, cid, n = int(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4])
c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
forged = {"statusCode": 200, "chunk_id": cid, "body": base64.b64encode(b"A" * n).decode()}
c.request("POST", f"/2018-06-01/runtime/invocation/{rid}/response", json.dumps(forged))
r = c.getresponse()
print(r.status, r.read().decode("utf-8", "replace"), flush=True)
"""


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory, runner: asyncio.Runner) -> Path:
    root = tmp_path_factory.mktemp("finding4")
    runner.run(Writer(PosixStorage(root), BUCKET).create_dataset(DOMAIN, "/d", DATA, chunks=(8,)))
    return root


@pytest.fixture(scope="module")
def runtime(root: Path, runner: asyncio.Runner) -> Iterator[LocalLambdaRuntime]:
    spec = FunctionSpec("chunk_read", env={"ROOT_DIR": str(root), "BUCKET_NAME": BUCKET, "HSDS_LAMBDA_THREADS": "1"}, concurrency=1, warm=1)
    rt = LocalLambdaRuntime(functions=[spec])
    runner.run(rt.start())
    yield rt
    runner.run(rt.stop())


@pytest.fixture(scope="module")
def reader_backend(root: Path, runtime: LocalLambdaRuntime, runner: asyncio.Runner) -> Iterator[tuple[Reader, LambdaBackend]]:
    # base64 answers, one task per invoke: the 2021 single-task form a thief can imitate
    cfg = {"root_dir": str(root), "bucket_name": BUCKET, "aws_lambda_gateway": runtime.url, "aws_lambda_answer": "base64", "aws_lambda_max_invoke": 1}
    yield from reader_and_backend(runner, LambdaBackend, cfg)


async def _read(rb: tuple[Reader, LambdaBackend]) -> np.ndarray:
    reader, backend = rb
    dset = await (await reader.open(DOMAIN)).get("/d")
    return await dset.read(None, backend=backend)


def _env_port(rt: LocalLambdaRuntime, runner: asyncio.Runner) -> int:
    fn = rt.function("chunk_read")
    runner.run(rt.prewarm("chunk_read", 1))
    env = next(e for e in fn.envs if not e.dead)
    return env.port


def test_finding_4_another_process_cannot_take_the_next_event(
    runtime: LocalLambdaRuntime, reader_backend: tuple[Reader, LambdaBackend], runner: asyncio.Runner
) -> None:
    """Finding 4: another local user asked an environment's port for the next event and answered it with its own bytes."""
    port = _env_port(runtime, runner)
    thief = subprocess.Popen([sys.executable, "-c", THIEF, str(port), str(DATA.nbytes)], stdout=subprocess.PIPE, text=True)
    try:
        runner.run(asyncio.sleep(1.0))  # the loop serves the thief's request meanwhile
        reads = [runner.run(_read(reader_backend)) for _ in range(3)]
        out, _ = thief.communicate(timeout=30)
    finally:
        if thief.poll() is None:
            thief.kill()
            thief.wait()
    for got in reads:  # the reader got the stored bytes every time, never the thief's
        assert got.tobytes() == DATA.tobytes()
    status, _, body = out.strip().partition(" ")
    assert status == "403", out
    refusal = json.loads(body)  # one line: no payload, and no second (forging) request
    assert refusal["errorType"] == "AccessDenied"
    assert refusal["errorMessage"].endswith(
        "is not this environment's worker process; a local Lambda environment's Runtime API serves only its own awslambdaric worker"
    )


def test_finding_4_a_forged_response_is_refused_and_the_reader_gets_the_real_bytes(
    runtime: LocalLambdaRuntime, reader_backend: tuple[Reader, LambdaBackend], runner: asyncio.Runner
) -> None:
    """Finding 4: a response posted by another local user for a pending invocation was taken as the answer."""
    port = _env_port(runtime, runner)
    env = next(e for e in runtime.function("chunk_read").envs if not e.dead)

    async def go() -> tuple[np.ndarray, str]:
        runtime.faults("chunk_read").update(straggle=1, straggle_s=1.5)  # the invocation waits, pending, before delivery
        read = asyncio.ensure_future(_read(reader_backend))
        for _ in range(500):
            if env.pending is not None:
                break
            await asyncio.sleep(0.01)
        inv = env.pending
        assert inv is not None
        cid = json.loads(inv.payload)["chunk_id"]  # what a thief would know had it seen the event
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", FORGER, str(port), inv.id, cid, str(DATA.nbytes), stdout=asyncio.subprocess.PIPE
        )
        out, _ = await proc.communicate()
        return await read, out.decode()

    got, out = runner.run(go())
    assert out.startswith("403 "), out
    assert "is not this environment's worker process" in out
    assert got.tobytes() == DATA.tobytes() and got.tobytes() != FORGED


async def _request(method: str, url: str, **kw: Any) -> tuple[int, str]:
    import aiohttp

    async with aiohttp.ClientSession() as s, s.request(method, url, **kw) as r:
        return r.status, await r.text()


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/local/functions/chunk_read/faults", {"latency_s": 30}),
        ("GET", "/local/functions/chunk_read/faults", None),
        ("GET", "/local/functions/chunk_read/meter", None),
        ("GET", "/local/functions", None),
    ],
    ids=["set-faults", "get-faults", "meter", "list"],
)
def test_finding_4_control_endpoints_need_the_token(runtime: LocalLambdaRuntime, runner: asyncio.Runner, method: str, path: str, body: Any) -> None:
    """Finding 4: ``/local/.../faults`` (and the other control endpoints) answered anyone on the host."""
    near_miss = {"Authorization": f"Bearer {getattr(runtime, 'token', '')}x"}
    for auth in ({}, {"Authorization": "Bearer not-the-token"}, near_miss):
        status, text = runner.run(_request(method, runtime.url + path, json=body, headers=auth))
        assert status == 401, (auth, text)
        assert json.loads(text)["message"] == (
            f"{method} {path} needs the local runtime's token: send 'Authorization: Bearer <token>'"
            " (LocalLambdaRuntime.token; serve-local writes it to its --token-file)"
        )
    assert runtime.faults("chunk_read").latency_s == 0  # nothing was changed
    status, _ = runner.run(_request(method, runtime.url + path, json=body, headers={"Authorization": f"Bearer {runtime.token}"}))
    assert status == 200
    runtime.faults("chunk_read").update(latency_s=0)


def test_finding_4_a_foreign_host_header_is_refused(runtime: LocalLambdaRuntime, runner: asyncio.Runner) -> None:
    """Finding 4: a loopback listener must refuse a request addressed to another name (DNS rebinding)."""
    url = f"{runtime.url}/2015-03-31/functions/chunk_read/invocations"
    status, text = runner.run(_request("POST", url, data=b'{"ping": true}', headers={"Host": "evil.example:80"}))
    assert status == 403
    assert json.loads(text)["message"] == (
        "Host 'evil.example:80' is not a loopback name; the local Lambda runtime answers only requests addressed to 127.0.0.1, ::1 or localhost"
    )


def test_finding_4_the_embedded_runtime_takes_invokes_only_from_its_backend(root: Path, runner: asyncio.Runner) -> None:
    """Finding 4: the backend's own runtime ran the reading user's function (their storage and credentials) for any local user."""
    from aiobotocore.session import get_session
    from botocore.exceptions import ClientError

    cfg = {"root_dir": str(root), "bucket_name": BUCKET, "aws_lambda_local_workers": 1}

    async def go() -> tuple[Any, np.ndarray, bytes, str]:
        async with Reader(cfg) as reader, LambdaBackend(cfg) as backend:
            await backend.client()
            rt = backend.runtime
            assert isinstance(rt, RuntimeProcess) and rt.pid is not None
            with open(f"/proc/{rt.pid}/cmdline", "rb") as f:
                cmdline = f.read()
            with open(f"/proc/{rt.pid}/environ", "rb") as f:
                cmdline += f.read()
            try:
                async with get_session().create_client(
                    "lambda", region_name="us-east-1", endpoint_url=rt.url, aws_access_key_id="local", aws_secret_access_key="local"
                ) as lam:
                    await lam.invoke(FunctionName="chunk_read", Payload=b'{"ping": true}')
                refused: Any = None
            except ClientError as exc:
                refused = exc
            dset = await (await reader.open(DOMAIN)).get("/d")
            return refused, await dset.read(None, backend=backend), cmdline, getattr(rt, "token", "")

    refused, got, cmdline_and_environ, token = runner.run(go())
    assert refused is not None, "a client without the runtime's token was served"
    assert refused.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    assert refused.response["Error"]["Code"] == "UnrecognizedClientException"
    assert "signed with its token as the access key id" in refused.response["Error"]["Message"]
    assert got.tobytes() == DATA.tobytes()  # the backend itself is served
    assert token.encode() not in cmdline_and_environ  # handed over on the child's stdin, never argv or its environment
