"""Finding 7 (Lambda): the function reads only its own bucket unless told otherwise, and only chunk keys.

``BUCKET_ALLOWLIST`` used to default to any bucket: whoever may invoke the function could read
every bucket its role reaches. Now it defaults to the function's ``BUCKET_NAME`` (``*``
allows any), every task is checked with the core's containment before anything is fetched
(so a task's ``key`` must be its chunk's own key), and the ``lambda`` backend passes config
``allowed_buckets`` to the runtime it starts. The handler runs here in-process on posix
storage; the runtime's workers run the same code.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("hsds_backends_lambda")

from hsds_backends_lambda.backend import LambdaBackend, worker_env  # noqa: E402
from hsds_backends_lambda.handler import _State, handle_event  # noqa: E402

from hsds_backends.ids import chunk_key  # noqa: E402
from hsds_backends.storage import PosixStorage  # noqa: E402
from hsds_backends.tasks import ChunkTask  # noqa: E402
from hsds_backends.writer import Writer  # noqa: E402

OWN, OTHER = "hsdstest", "payroll"
DATA = np.arange(8, dtype="<i4")
SECRET = b"S" * DATA.nbytes  # the size of a chunk, so a chunk task would return it whole


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any], dict[str, Any]]:
    """A root with the function's bucket and another one; a chunk task for each, and a planted non-chunk object."""
    root = tmp_path_factory.mktemp("finding7")

    async def write(bucket: str) -> dict[str, Any]:
        meta = await Writer(PosixStorage(root), bucket).create_dataset(f"/home/u/{bucket}.h5", "/d", DATA, chunks=(8,))
        return ChunkTask(meta.chunk_id((0,)), meta, meta.location((0,)), "hyperslab", None).to_wire()

    own, other = asyncio.run(write(OWN)), asyncio.run(write(OTHER))
    (root / OWN / "secret.bin").write_bytes(SECRET)
    return root, own, other


@pytest.fixture
def state(store: tuple[Path, dict[str, Any], dict[str, Any]], request: pytest.FixtureRequest) -> Iterator[_State]:
    env = {"ROOT_DIR": str(store[0]), "BUCKET_NAME": OWN, "HSDS_LAMBDA_THREADS": "1", **getattr(request, "param", {})}
    st = _State(env)
    yield st
    st.close()


def _body(answer: dict[str, Any]) -> bytes:
    return base64.b64decode(answer["body"])


def test_finding_7_the_function_reads_only_its_own_bucket_by_default(state: _State, store: tuple[Path, dict[str, Any], dict[str, Any]]) -> None:
    """Finding 7: with no ``BUCKET_ALLOWLIST`` the function served any bucket its role could reach."""
    _, own, other = store
    answer = handle_event(other, state)
    assert answer["statusCode"] == 403 and answer["error_type"] == "StoragePathError", answer
    assert answer["message"] == (
        f"chunk {other['chunk_id']}: bucket 'payroll' is not an allowed bucket (allowed: ['hsdstest']);"
        " add it to the function's BUCKET_ALLOWLIST (default: its BUCKET_NAME; '*': any) to serve it"
    )
    batch = handle_event({"tasks": [other, own]}, state)  # in a batch: that task refused, the rest served
    assert [r["statusCode"] for r in batch["results"]] == [403, 200]
    assert _body(batch["results"][1]) == DATA.tobytes()


@pytest.mark.parametrize("state", [{"BUCKET_ALLOWLIST": "*"}, {"BUCKET_ALLOWLIST": f"{OWN}, {OTHER}"}], indirect=True, ids=["any", "listed"])
def test_bucket_allowlist_widens_it(state: _State, store: tuple[Path, dict[str, Any], dict[str, Any]]) -> None:
    answer = handle_event(store[2], state)
    assert answer["statusCode"] == 200 and _body(answer) == DATA.tobytes()


def test_finding_7_a_task_reads_only_its_own_chunk_key(state: _State, store: tuple[Path, dict[str, Any], dict[str, Any]]) -> None:
    """Finding 7: a task's ``key`` read any object of an allowed bucket (here one that is not a chunk)."""
    own = store[1]
    forged = dict(own, key="secret.bin")
    answer = handle_event(forged, state)
    assert answer["statusCode"] == 403, answer
    assert answer["message"] == (
        f"chunk {own['chunk_id']}: key 'secret.bin' is not the chunk's own key {chunk_key(own['chunk_id'])!r};"
        " a chunk task may read only its chunk"
    )
    assert SECRET not in json.dumps(answer).encode()


def test_finding_7_the_backend_passes_allowed_buckets_to_its_runtime(tmp_path: Path) -> None:
    """Finding 7: the embedded runtime's function got no allow-list at all (so: any bucket)."""
    base = {"root_dir": str(tmp_path), "bucket_name": OWN}
    assert worker_env(base)["BUCKET_ALLOWLIST"] == OWN
    assert worker_env({**base, "allowed_buckets": [OTHER, OWN]})["BUCKET_ALLOWLIST"] == f"{OWN},{OTHER}"  # sorted
    assert worker_env({**base, "allowed_buckets": ["*"]})["BUCKET_ALLOWLIST"] == "*"
    assert LambdaBackend({**base, "allowed_buckets": [OTHER]}).worker_env()["BUCKET_ALLOWLIST"] == OTHER
