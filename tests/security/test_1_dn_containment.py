"""Finding 1: a DN must not hand out any file under its root, nor beyond it.

A real ``hsds-backends dn serve`` on 127.0.0.1 without a token, spoken to as another local
user or a DNS-rebinding web page would: made-up dataset JSON whose tasks name
``.ssh/id_rsa``, a non-chunk key of the served bucket, a bucket it does not serve, or a
bucket that is a symbolic link out of the root. Every such request is refused before
anything is read, and no refusal carries the secret's bytes or its size.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

pytest.importorskip("hsds_backends_containers")

from _dn_harness import CHUNK0, DN, batch, contiguous_ref, frames, json_message, start_dn  # noqa: E402

from hsds_backends.ids import chunk_id, chunk_key  # noqa: E402
from hsds_backends.storage import PosixStorage  # noqa: E402
from hsds_backends.writer import Writer  # noqa: E402

SECRET = b"-----BEGIN OPENSSH PRIVATE KEY----- only root may read this " + b"k" * 937  # 1000 bytes
GRID = np.arange(40 * 50, dtype="<i4").reshape(40, 50)
JSON = {"Content-Type": "application/json"}


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A root with the served bucket, a dot-folder, another bucket, and links out of the root."""
    root = tmp_path_factory.mktemp("root")
    outside = tmp_path_factory.mktemp("elsewhere")

    async def write() -> Any:
        return await Writer(PosixStorage(root), "hsdstest").create_dataset("/home/a/data.h5", "/grid", GRID, chunks=(20, 25))

    grid = asyncio.run(write())
    (root / ".ssh").mkdir()
    (root / ".ssh" / "id_rsa").write_bytes(SECRET)
    (root / "hsdstest" / "secret.txt").write_bytes(SECRET)
    (root / "other").mkdir()
    (root / "other" / "file.bin").write_bytes(SECRET)
    (outside / "stolen.bin").write_bytes(SECRET)
    # the dataset, copied into the folder the link points to, so a read through the link would succeed
    os.symlink(outside, root / "evil")
    shutil.copytree(root / "hsdstest" / "db", outside / "db")
    os.symlink(outside / "stolen.bin", root / "hsdstest" / "lnk.bin")
    return {"root": str(root), "grid": grid}


@pytest.fixture(scope="module")
def dn(root: dict[str, Any]) -> Iterator[DN]:
    """A DN without a token on loopback TCP, started as the report had it: it serves its default bucket, hsdstest."""
    node = start_dn("--root-dir", root["root"])
    yield node
    node.stop()


def _no_secret(body: bytes) -> None:
    assert SECRET[:40] not in body
    assert b"1000" not in body  # nor its size


def test_rebinding_shaped_batch_is_refused(dn: DN) -> None:
    """Finding 1: the reported request — no token, text/plain, a foreign Host, CONTIGUOUS_REF at .ssh/id_rsa — gets a 403, not the key."""
    body = batch(contiguous_ref(1000), {"chunk_id": CHUNK0, "bucket": "hsdstest", "s3path": ".ssh/id_rsa", "s3offset": 0, "s3size": 1000})
    assert len(body) < 700
    status, _, raw = dn.request("POST", "/batch", body=body, headers={"Content-Type": "text/plain"}, host=f"attacker.example:{dn.port}")
    assert status == 403, raw[:300]
    assert json_message(raw).startswith("Host 'attacker.example:")
    assert "answers only requests addressed to 127.0.0.1, ::1 or localhost" in json_message(raw)
    _no_secret(raw)
    # addressed to loopback, a text/plain body is still not a batch
    status, _, raw = dn.request("POST", "/batch", body=body, headers={"Content-Type": "text/plain"})
    assert status == 415 and json_message(raw) == "Content-Type 'text/plain' is not supported on /batch; send 'application/json'"
    _no_secret(raw)


ESCAPES = [
    # id, task, status, message fragment
    ("dot-folder", {"s3path": ".ssh/id_rsa", "s3offset": 0, "s3size": 1000}, 400,
     "bucket '.ssh' is not a valid bucket name"),
    ("dot-folder-wrong-size", {"s3path": ".ssh/id_rsa", "s3offset": 0, "s3size": 5000}, 400,
     "bucket '.ssh' is not a valid bucket name"),
    ("dotdot", {"s3path": "hsdstest/../.ssh/id_rsa", "s3offset": 0, "s3size": 1000}, 400, "'..'"),
    ("other-bucket", {"s3path": "other/file.bin", "s3offset": 0, "s3size": 4000}, 403,
     "linked file bucket 'other' is not an allowed bucket (allowed: ['hsdstest']); add it to config allowed_buckets"),
]


def test_linked_paths_outside_the_allowed_buckets_are_refused(dn: DN) -> None:
    """Finding 1: s3path into a dot-folder (right or wrong size), out through '..' or into another bucket: refused before reading, size not revealed."""
    for name, task, status, fragment in ESCAPES:
        body = batch(contiguous_ref(1000), {"chunk_id": CHUNK0, "bucket": "hsdstest", **task})
        got, _, raw = dn.request("POST", "/batch", body=body, headers=JSON)
        assert got == status, (name, raw[:300])
        assert fragment in json_message(raw), name
        _no_secret(raw)
        # the HSDS route refuses the same s3path (there is no dataset JSON to load: it must not get further)
        path = f"/chunks/{CHUNK0}?bucket=hsdstest&s3path={task['s3path']}&s3offset=0&s3size={task['s3size']}"
        got, _, raw = dn.request("GET", path)
        assert got in (400, 403, 404), (name, raw[:300])
        _no_secret(raw)


def test_a_chunk_task_reads_only_its_own_chunk_key(dn: DN, root: dict[str, Any]) -> None:
    """Finding 1: an H5D_CHUNKED task's 'key' naming another object of the bucket is a 403; its own chunk is served."""
    grid = root["grid"]
    cid = chunk_id(grid.id, (0, 0))
    task = {"chunk_id": cid, "bucket": "hsdstest", "key": "secret.txt"}
    status, _, raw = dn.request("POST", "/batch", body=batch(grid.wire_text(), task), headers=JSON)
    assert status == 403, raw[:300]
    assert json_message(raw) == (
        f"chunk {cid}: key 'secret.txt' is not the chunk's own key '{chunk_key(cid)}'; a chunk task may read only its chunk"
    )
    _no_secret(raw)
    # its own key is served
    status, _, raw = dn.request("POST", "/batch", body=batch(grid.wire_text(), {"chunk_id": cid, "bucket": "hsdstest"}), headers=JSON)
    assert status == 200
    [(j, st, payload)] = frames(raw)
    assert (j, st) == (0, 0) and payload == GRID[0:20, 0:25].tobytes()
    cid = chunk_id(grid.id, (1, 0))
    status, headers, raw = dn.request("GET", f"/chunks/{cid}?bucket=hsdstest&select=[0:2,0:3]")
    assert status == 200 and headers["content-type"] == "application/octet-stream"
    assert raw == GRID[20:22, 0:3].tobytes()


def test_symbolic_links_out_of_the_root_are_refused(root: dict[str, Any]) -> None:
    """Finding 1: a bucket that links elsewhere, and a linked file inside the bucket, are 403s even when allowed."""
    dn = start_dn("--root-dir", root["root"], "--allowed-buckets", "hsdstest,evil")
    try:
        _symlinks_refused(dn, root)
    finally:
        dn.stop()


def _symlinks_refused(dn: DN, root: dict[str, Any]) -> None:
    grid = root["grid"]
    cid = chunk_id(grid.id, (1, 1))
    status, _, raw = dn.request("GET", f"/chunks/{cid}?bucket=evil")
    assert status == 403, raw[:300]
    assert "bucket 'evil'" in json_message(raw) and "resolves outside the storage root (a symbolic link)" in json_message(raw)
    task = {"chunk_id": CHUNK0, "bucket": "hsdstest", "s3path": "hsdstest/lnk.bin", "s3offset": 0, "s3size": 1000}
    status, _, raw = dn.request("POST", "/batch", body=batch(contiguous_ref(1000), task), headers=JSON)
    _no_secret(raw)
    if status == 200:  # refused per task: the frame holds the error
        [(_, st, payload)] = frames(raw)
        doc = json.loads(payload)
        assert st == 2 and doc["statusCode"] == 403, doc
        assert "key 'lnk.bin' resolves outside the storage root (a symbolic link)" in doc["message"]
    else:
        assert status == 403 and "resolves outside the storage root" in json_message(raw)
