"""Finding 7 (dask): the workers run only contained tasks.

A dask worker ran any chunk task it was given: one naming another bucket, or an object of
its bucket that is not the task's chunk (a crafted dataset JSON builds such tasks). Now the
worker checks every task with :class:`hsds_backends.security.Containment` before fetching:
the buckets come from the backend's config (``allowed_buckets``, else ``bucket_name``) and
travel to the workers with the storage description. A refused task is raised in the client
as the core's :class:`~hsds_backends.errors.StoragePathError` (403), naming the chunk, the
bucket or the key.

Storage: posix, bucket ``hsdstest`` (the configured one) and ``other``, a copy of it (the same
keys hold the same bytes there, so a task pointed at ``other`` would read real data).
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("hsds_backends_dask")
pytest.importorskip("distributed")

from hsds_backends_dask import DaskBackend

from hsds_backends._inline import InlineBackend
from hsds_backends.api import Reader
from hsds_backends.dataset import ChunkLocation
from hsds_backends.errors import StoragePathError
from hsds_backends.plan import plan_hyperslab
from hsds_backends.security import Containment
from hsds_backends.selection import parse_select
from hsds_backends.tasks import ChunkTask
from conftest import write_grid

DOMAIN = "/home/test/dask-buckets.h5"
GRID = np.arange(32 * 32, dtype="<u2").reshape(32, 32)  # 16 chunks of 8x8
SECRET = b"not chunk bytes: a file the reader must not serve\n"


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory, runner: asyncio.Runner) -> Path:
    path = write_grid(runner, tmp_path_factory.mktemp("dask-buckets"), DOMAIN, GRID, (8, 8))
    shutil.copytree(path / "hsdstest", path / "other")
    (path / "other" / "secret.bin").write_bytes(SECRET)
    (path / "hsdstest" / "secret.bin").write_bytes(SECRET)
    return path


@pytest.fixture(scope="module")
def backend(root: Path, runner: asyncio.Runner) -> Iterator[DaskBackend]:
    """The embedded cluster with the default containment: only ``bucket_name``."""
    b = DaskBackend({"root_dir": str(root), "bucket_name": "hsdstest", "dask_n_workers": 1})
    yield b
    runner.run(b.aclose())


async def _tasks(root: Path, bucket: str = "hsdstest") -> list[ChunkTask]:
    async with Reader({"root_dir": str(root), "bucket_name": "hsdstest"}) as reader:
        dset = await (await reader.open(DOMAIN, bucket=bucket)).get("/grid")
        return list(plan_hyperslab(dset.meta, parse_select("[:, :]", dset.shape)).tasks)


def _crafted(tasks: list[ChunkTask], elsewhere: list[ChunkTask]) -> dict[str, ChunkTask]:
    t, u = tasks[0], tasks[5]
    assert t.location is not None and u.location is not None
    return {
        **({"another bucket": elsewhere[0]} if elsewhere else {}),  # a task's bucket is its dataset's
        "another chunk's key": ChunkTask(t.chunk_id, t.dset, ChunkLocation("hsdstest", u.location.key)),
        "a file that is no chunk": ChunkTask(t.chunk_id, t.dset, ChunkLocation("hsdstest", "secret.bin")),
        "a missing object": ChunkTask(t.chunk_id, t.dset, ChunkLocation("hsdstest", "db/no-such-object")),
        "a linked file in another bucket": ChunkTask(
            t.chunk_id, t.dset, ChunkLocation("other", "secret.bin", 0, len(SECRET), linked=True)
        ),
    }


MESSAGES = {
    "another bucket": r"chunk (c-\S+): bucket 'other' is not an allowed bucket \(allowed: \['hsdstest'\]\); add it to config allowed_buckets",
    "another chunk's key": r"chunk (c-\S+): key '\S+' is not the chunk's own key '\S+'; a chunk task may read only its chunk",
    "a file that is no chunk": r"chunk (c-\S+): key 'secret.bin' is not the chunk's own key '\S+'; a chunk task may read only its chunk",
    "a missing object": r"chunk (c-\S+): key 'db/no-such-object' is not the chunk's own key",
    "a linked file in another bucket": r"chunk (c-\S+): linked file bucket 'other' is not an allowed bucket \(allowed: \['hsdstest'\]\)",
}


@pytest.mark.parametrize("case", list(MESSAGES))
def test_finding_7_a_dask_worker_refuses_a_task_outside_its_chunk_or_buckets(
    backend: DaskBackend, root: Path, runner: asyncio.Runner, case: str
) -> None:
    """Finding 7: a dask worker read any bucket and any key its storage reached (no allowlist, no chunk-key check)."""
    tasks = runner.run(_tasks(root))
    task = _crafted(tasks, runner.run(_tasks(root, "other")))[case]
    # the core's refusal, as a DN or the Lambda function raises it for the same task
    with pytest.raises(StoragePathError) as want:
        Containment.from_config({"bucket_name": "hsdstest"}).check_task(task)
    with pytest.raises(StoragePathError, match=MESSAGES[case]) as got:
        runner.run(backend.read_chunk(task))
    assert type(got.value) is type(want.value) is StoragePathError
    assert str(want.value) in str(got.value) and got.value.status == 403
    assert re.search(MESSAGES[case], str(got.value)).group(1) == task.chunk_id  # type: ignore[union-attr]
    assert "Traceback" not in str(got.value) and "distributed" not in str(got.value)
    # a batch stops at the refused task; the honest tasks of a read still run, byte-identical to inline
    inline = InlineBackend({"root_dir": str(root)})
    for t in tasks[:3]:
        assert bytes(runner.run(backend.read_chunk(t)).data) == bytes(runner.run(inline.read_chunk(t)).data)


def test_finding_7_a_dask_read_of_an_unallowed_bucket_is_refused_until_allowed(
    backend: DaskBackend, root: Path, runner: asyncio.Runner
) -> None:
    """Finding 7: dask read every bucket; now only bucket_name, or what allowed_buckets lists."""

    async def read(b: Any, bucket: str) -> np.ndarray[Any, Any]:
        async with Reader({"root_dir": str(root), "bucket_name": "hsdstest"}) as reader:
            dset = await (await reader.open(DOMAIN, bucket=bucket)).get("/grid")
            return await dset.read(np.s_[2:30, 5:25], backend=b)

    assert runner.run(read(backend, "hsdstest")).tobytes() == GRID[2:30, 5:25].tobytes()
    with pytest.raises(
        StoragePathError,
        match=r"^chunk c-\S+: bucket 'other' is not an allowed bucket \(allowed: \['hsdstest'\]\); add it to config allowed_buckets to serve it$",
    ):
        runner.run(read(backend, "other"))
    widened = DaskBackend(
        {"root_dir": str(root), "bucket_name": "hsdstest", "allowed_buckets": ["hsdstest", "other"], "dask_n_workers": 1}
    )
    try:
        assert runner.run(read(widened, "other")).tobytes() == GRID[2:30, 5:25].tobytes()
        # widened buckets, still only chunk keys
        task = _crafted(runner.run(_tasks(root)), [])["a file that is no chunk"]
        with pytest.raises(StoragePathError, match=MESSAGES["a file that is no chunk"]):
            runner.run(widened.read_chunk(task))
    finally:
        runner.run(widened.aclose())


def test_finding_7_the_containment_travels_with_the_storage_description_not_credentials() -> None:
    """Finding 7: the workers learn the allowed buckets from the backend's config (allowed_buckets, else bucket_name)."""
    creds = {"aws_s3_gateway": "http://127.0.0.1:9", "aws_access_key_id": "AKIDEXAMPLE", "aws_secret_access_key": "s3cr3t-value"}
    default = json.loads(DaskBackend({**creds, "bucket_name": "mybucket"})._storage_text)
    assert default["allowed_buckets"] == ["mybucket"]
    assert json.loads(DaskBackend({**creds, "allowed_buckets": "b,a"})._storage_text)["allowed_buckets"] == ["a", "b"]
    assert json.loads(DaskBackend({**creds, "allowed_buckets": ["*"]})._storage_text)["allowed_buckets"] is None
    text = DaskBackend({**creds, "bucket_name": "mybucket"})._storage_text
    assert "s3cr3t-value" not in text and "AKIDEXAMPLE" not in text
