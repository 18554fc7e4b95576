"""Finding 1 (core): no byte outside the storage.

The DN-level reproduction (a crafted ``POST /batch``) is in ``test_1_dn_containment.py``;
these tests pin the core pieces every service relies on: posix paths are resolved before the
root check (a symbolic link under the root is not followed out of it), dot-folders are never
buckets, and a task may read only its own chunk key in an allowed bucket.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import numpy as np
import pytest

from hsds_backends.errors import StoragePathError
from hsds_backends.ids import chunk_key
from hsds_backends.security import Containment
from hsds_backends.storage import PosixStorage
from hsds_backends.tasks import ChunkTask
from hsds_backends.writer import Writer

SECRET = b"-----BEGIN OPENSSH PRIVATE KEY----- not really\n"


@pytest.fixture
def layout(tmp_path: Path) -> tuple[Path, Path]:
    """A storage root with a real bucket, a dot-folder, and a bucket that is a link to a folder outside."""
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "hsdstest").mkdir(parents=True)
    (root / ".ssh").mkdir()
    (root / ".ssh" / "id_rsa").write_bytes(SECRET)
    outside.mkdir()
    (outside / "secret").write_bytes(SECRET)
    os.symlink(outside, root / "evilbucket")
    os.symlink(outside / "secret", root / "hsdstest" / "link_to_secret")
    return root, outside


def test_finding_1_a_symlinked_bucket_or_file_is_not_followed_out_of_the_root(layout: tuple[Path, Path]) -> None:
    """Finding 1: ``evilbucket -> /elsewhere`` under the root was followed (the check normalised, never resolved)."""
    root, _ = layout
    st = PosixStorage(root)
    with pytest.raises(StoragePathError, match=r"bucket 'evilbucket', key 'secret' resolves outside the storage root \(a symbolic link\)") as ei:
        asyncio.run(st.get("evilbucket", "secret"))
    assert ei.value.status == 403
    with pytest.raises(StoragePathError, match=r"key 'link_to_secret' resolves outside the storage root"):
        st.read_sync("hsdstest", "link_to_secret")


def test_finding_1_dot_folders_are_never_buckets(layout: tuple[Path, Path]) -> None:
    """Finding 1: any folder under the root counted as a bucket, dot-folders included (``.ssh``)."""
    root, _ = layout
    with pytest.raises(StoragePathError, match=r"bucket '.ssh' is not a valid bucket name; .* no leading '\.': dot-folders are never buckets"):
        PosixStorage(root).read_sync(".ssh", "id_rsa")


def test_a_root_that_is_itself_a_link_still_serves_its_buckets(tmp_path: Path) -> None:
    real = tmp_path / "real"
    (real / "b").mkdir(parents=True)
    (real / "b" / "obj").write_bytes(b"ok")
    os.symlink(real, tmp_path / "alias")
    assert PosixStorage(tmp_path / "alias").read_sync("b", "obj") == b"ok"


def _task(root: Path, **wire: object) -> ChunkTask:
    """A task for chunk 0 of a small dataset (written once), with ``wire`` fields overridden."""
    domain = f"/home/t/x{len(list(root.rglob('*.json')))}.h5"

    async def write() -> ChunkTask:
        meta = await Writer(PosixStorage(root), "hsdstest").create_dataset(domain, "/d", np.arange(16, dtype="<i4"), chunks=(8,))
        return ChunkTask.from_wire({**ChunkTask(meta.chunk_id((0,)), meta, meta.location((0,)), "hyperslab", "[0:8]").to_wire(), **wire})

    return asyncio.run(write())


def test_finding_1_a_task_reads_only_its_own_chunk_key_in_an_allowed_bucket(layout: tuple[Path, Path]) -> None:
    """Finding 1: a task's ``key`` read any file in a bucket, and any bucket was served."""
    root, _ = layout
    contain = Containment.of([], default="hsdstest")
    good = _task(root)
    contain.check_task(good)  # its own chunk key: fine
    assert good.location is not None and good.location.key == chunk_key(good.chunk_id)
    with pytest.raises(StoragePathError, match=r"key 'db/secrets.txt' is not the chunk's own key 'db/.*'; a chunk task may read only its chunk") as ei:
        contain.check_task(_task(root, key="db/secrets.txt"))
    assert ei.value.status == 403
    with pytest.raises(StoragePathError, match=r"bucket 'other' is not an allowed bucket \(allowed: \['hsdstest'\]\); add it to config allowed_buckets"):
        contain.check_task(_task(root, bucket="other"))
    linked = _task(root, s3path="hsdstest/files/f.h5", s3offset=0, s3size=64)
    contain.check_task(linked)  # a linked file in an allowed bucket
    with pytest.raises(StoragePathError, match=r"linked file bucket 'elsewhere' is not an allowed bucket"):
        contain.check_task(_task(root, s3path="elsewhere/f.h5", s3offset=0, s3size=64))


def test_allowed_buckets_from_config() -> None:
    assert Containment.from_config({"bucket_name": "b1"}).buckets == frozenset({"b1"})
    assert Containment.from_config({"bucket_name": "b1", "allowed_buckets": ["x", "y"]}).buckets == frozenset({"x", "y"})
    assert Containment.from_config({"allowed_buckets": "x, y"}).buckets == frozenset({"x", "y"})
    anyb = Containment.from_config({"bucket_name": "b1", "allowed_buckets": ["*"]})
    assert anyb.buckets is None and anyb.describe() == "any bucket"
    anyb.check_bucket("whatever")
