"""Posix object storage: objects are files ``root_dir/bucket/key`` (docs/hsds-format.md §1.5)."""

from __future__ import annotations

import asyncio
import os
from typing import TYPE_CHECKING, Any, ClassVar

from ..errors import StorageError, StoragePathError
from .base import Storage, check_bucket, check_key, read_buffer

if TYPE_CHECKING:
    from collections.abc import Hashable

    from .base import SyncRead

__all__ = ["PosixStorage"]


class PosixStorage(Storage):
    """Objects as files under ``root_dir/bucket/key`` (docs/hsds-format.md §1.5, posix driver).

    Parameters
    ----------
    root_dir
        Absolute or relative folder; made absolute. It must exist for reads.
    """

    kind: ClassVar[str] = "posix"

    def __init__(self, root_dir: str | os.PathLike[str]) -> None:
        self.root_dir = os.path.abspath(os.fspath(root_dir))
        # the root as the kernel sees it: paths are checked against it after resolving links
        self._real_root = os.path.realpath(self.root_dir)

    def __repr__(self) -> str:
        return f"PosixStorage(root_dir={self.root_dir!r})"

    def path(self, bucket: str, key: str) -> str:
        """Return the file path of ``bucket``/``key``, refusing anything outside ``root_dir``."""
        b = check_bucket(bucket)
        k = check_key(key)
        p = os.path.normpath(os.path.join(self.root_dir, b, k))
        if not p.startswith(os.path.join(self.root_dir, b) + os.sep):
            raise StoragePathError(f"key {key!r} escapes bucket {bucket!r}")
        # resolve symbolic links (a bucket or folder linked elsewhere): the file must stay under the root
        real = os.path.realpath(p)
        if not real.startswith(os.path.join(self._real_root, b) + os.sep):
            raise StoragePathError(f"bucket {bucket!r}, key {key!r} resolves outside the storage root (a symbolic link)", status=403)
        return real

    def read_sync(self, bucket: str, key: str, offset: int | None = None, size: int | None = None) -> bytes | memoryview | None:
        """Blocking read used by :meth:`get` and by executors that already run in a thread.

        Where the caller allowed it (:func:`~hsds_backends.storage.base.reusable_read_buffer`),
        the bytes land in the thread's reusable buffer and a view of it is returned.
        """
        p = self.path(bucket, key)
        try:
            fd = os.open(p, os.O_RDONLY | os.O_CLOEXEC)
        except (FileNotFoundError, IsADirectoryError):
            return None
        except OSError as exc:
            raise _read_error(bucket, key, exc) from exc
        try:
            start = offset or 0
            want = size if size is not None else os.fstat(fd).st_size - start
            buf = read_buffer(want)
            if buf is None:
                return _read_fresh(fd, start, size)
            got = 0
            while got < want:  # short reads: a slow file system, or the file shrank under us
                n = os.preadv(fd, [buf[got:]], start + got)
                if n == 0:
                    break
                got += n
            return buf[:got]
        except IsADirectoryError:
            return None
        except OSError as exc:
            raise _read_error(bucket, key, exc) from exc
        finally:
            os.close(fd)

    def sync_reader(self) -> SyncRead:
        """Return :meth:`read_sync`: posix reads need no event loop."""
        return self.read_sync

    def version_sync(self, bucket: str, key: str) -> Hashable | None:
        """Return the file's ``(st_mtime_ns, st_size)``, or ``None`` if it cannot be stat'ed (missing)."""
        try:
            st = os.stat(self.path(bucket, key))
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size)

    async def get(self, bucket: str, key: str, offset: int | None = None, size: int | None = None) -> bytes | None:
        # Small page-cached reads are faster inline than through a thread hop.
        data = self.read_sync(bucket, key, offset, size)
        return bytes(data) if isinstance(data, memoryview) else data  # never a reused buffer from here

    async def exists(self, bucket: str, key: str) -> bool:
        return os.path.isfile(self.path(bucket, key))

    async def put(self, bucket: str, key: str, data: bytes) -> None:
        p = self.path(bucket, key)
        await asyncio.to_thread(_write_file, p, data)

    def to_config(self) -> dict[str, Any]:
        return {"root_dir": self.root_dir}


def _read_fresh(fd: int, start: int, size: int | None) -> bytes:
    """Read ``size`` bytes (``None``: to the end) from ``start`` into new bytes."""
    with os.fdopen(fd, "rb", buffering=0, closefd=False) as f:
        if start:
            f.seek(start)
        return f.read(size if size is not None else -1) or b""


def _read_error(bucket: str, key: str, exc: OSError) -> StorageError:
    # bucket and key, not the file path: the message may travel to a remote caller
    return StorageError(f"cannot read bucket {bucket!r}, key {key!r}: {exc.strerror or type(exc).__name__}")


def _write_file(path: str, data: bytes) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)
