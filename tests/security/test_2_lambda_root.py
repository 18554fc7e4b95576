"""Finding 2 (Lambda): the local Lambda runtime never serves the folder it happens to start in.

``lambda serve-local`` with neither ``--root-dir`` nor S3 used to give its workers
``ROOT_DIR=<current folder>``; a function whose ``ROOT_DIR`` is relative read the worker's
current folder. Now serve-local refuses to start, and the handler answers a ``ConfigError``
for a relative ``ROOT_DIR`` or no storage at all. (The ``lambda`` backend still names its
reader's own root to the runtime it starts: the workers read exactly what the reader reads.)
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("hsds_backends_lambda")
pytest.importorskip("awslambdaric")

from hsds_backends_lambda import handler  # noqa: E402
from hsds_backends_lambda.local import FunctionSpec, LocalLambdaRuntime  # noqa: E402

from hsds_backends.storage import PosixStorage  # noqa: E402
from hsds_backends.tasks import ChunkTask  # noqa: E402
from hsds_backends.writer import Writer  # noqa: E402

BUCKET = "hsdstest"
SECRET = np.frombuffer(b"aws_secret_access_key = not-really-a-secret-key-0001", dtype="u1")

#: Variables that would name a storage for serve-local or the handler.
_STORAGE_VARS = ("ROOT_DIR", "HSDS_BACKENDS_ROOT_DIR", "AWS_S3_GATEWAY", "HSDS_BACKENDS_AWS_S3_GATEWAY", "STORAGE", "HSDS_BACKENDS_STORAGE")


@pytest.fixture
def home(tmp_path: Path) -> tuple[Path, dict[str, object]]:
    """A folder someone starts the runtime in, holding data they never meant to serve; and a task for it."""
    home = tmp_path / "home"

    async def write() -> dict[str, object]:
        meta = await Writer(PosixStorage(home), BUCKET).create_dataset("/home/u/creds.h5", "/d", SECRET, chunks=(SECRET.size,))
        return ChunkTask(meta.chunk_id((0,)), meta, meta.location((0,)), "hyperslab", None).to_wire()

    return home, asyncio.run(write())


def test_finding_2_serve_local_without_a_root_refuses_to_start(home: tuple[Path, dict[str, object]]) -> None:
    """Finding 2: ``lambda serve-local`` with no ``--root-dir`` served the current folder."""
    cwd = home[0]
    env = {k: v for k, v in os.environ.items() if k not in _STORAGE_VARS}
    code = "from hsds_backends.cli import main; main()"
    try:
        r = subprocess.run(
            [sys.executable, "-c", code, "lambda", "serve-local", "--port", "0", "--workers", "1"],
            cwd=cwd, env=env, capture_output=True, text=True, timeout=60, check=False,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"serve-local started without a root and served {cwd}: {exc.stderr!r}")
    assert r.returncode != 0
    assert r.stderr.strip() == (
        "Error: the local Lambda runtime needs its storage named: set root_dir (a posix folder) or aws_s3_gateway (S3);"
        " it does not serve the current folder by default"
    )


def test_finding_2_a_relative_root_dir_is_refused_not_resolved_in_the_workers_folder(home: tuple[Path, dict[str, object]]) -> None:
    """Finding 2: ``ROOT_DIR`` defaulted to (or resolved against) the folder the worker runs in."""
    cwd, task = home
    # the worker's current folder is code_dir: exactly where ROOT_DIR "." used to point
    spec = FunctionSpec("chunk_read", env={"ROOT_DIR": ".", "BUCKET_NAME": BUCKET}, code_dir=str(cwd), concurrency=1)

    async def go() -> dict[str, object]:
        async with LocalLambdaRuntime(functions=[spec]) as rt:
            body, error_type, _ = await rt.run("chunk_read", json.dumps(task).encode())
            assert error_type is None  # an answer, not a crash
            answer: dict[str, object] = json.loads(body)
            return answer

    answer = asyncio.run(go())
    assert answer["statusCode"] == 500 and answer["error_type"] == "ConfigError", answer
    assert answer["message"] == "ROOT_DIR '.' is not an absolute path; set ROOT_DIR to the storage folder's absolute path"
    assert "body" not in answer or answer["body"] == answer["message"]  # no data


def test_finding_2_the_handler_without_any_storage_answers_a_config_error(monkeypatch: pytest.MonkeyPatch, home: tuple[Path, dict[str, object]]) -> None:
    """Finding 2: with neither ``ROOT_DIR`` nor S3 configured the handler must not pick a storage by itself."""
    cwd, task = home
    for k in (*_STORAGE_VARS, "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_CONTAINER_CREDENTIALS_FULL_URI"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # the old code went looking for credentials
    monkeypatch.setenv("BUCKET_NAME", BUCKET)
    monkeypatch.chdir(cwd)
    handler.reset_state()
    try:
        answer = json.loads(handler.lambda_handler(task))
    finally:
        handler.reset_state()
    assert answer["statusCode"] == 500 and answer["error_type"] == "ConfigError", answer
    assert answer["message"] == (
        "this function has no storage configured: set ROOT_DIR (an absolute posix folder, local runtime only)"
        " or AWS_S3_GATEWAY / STORAGE=s3 (S3; on AWS the function's role credentials are enough)"
    )
