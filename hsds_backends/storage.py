"""Async object storage in HSDS's layout: posix folders and S3 buckets.

Keys are bucket-relative HSDS keys (hsds-format.md §1.2). A missing object
reads as ``None`` (the caller substitutes the fill value, §3.4). A read never
writes anything: only :meth:`Storage.put` writes, and only the writer calls it.
"""

from __future__ import annotations

import asyncio
import os
import re
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any, ClassVar

from .errors import StorageError, StoragePathError

if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = [
    "Storage",
    "PosixStorage",
    "check_bucket",
    "check_key",
    "storage_from_config",
]

# hsds-format.md §1.5: bucket names must match [a-zA-Z0-9_.-]+ (after a protocol prefix).
_BUCKET_RE: re.Pattern[str] = re.compile(r"^[A-Za-z0-9_.-]+$")


def check_bucket(bucket: str) -> str:
    """Return ``bucket`` with any ``s3://``/``file://`` prefix removed, or raise.

    Rejects ``..``, ``/``, empty names and characters HSDS does not allow.
    """
    if not isinstance(bucket, str) or not bucket:
        raise StoragePathError(f"bucket {bucket!r} is empty; pass a bucket name such as 'hsdstest'")
    name = bucket
    for prefix in ("s3://", "file://"):
        if name.startswith(prefix):
            name = name[len(prefix) :].rstrip("/")
    if name in (".", "..") or not _BUCKET_RE.match(name):
        raise StoragePathError(
            f"bucket {bucket!r} is not a valid bucket name; use only letters, digits, '_', '.' and '-'"
            " (no '/', no '..')"
        )
    return name


def check_key(key: str) -> str:
    """Return the bucket-relative ``key`` (leading ``/`` stripped), or raise.

    HSDS strips a leading ``/`` from keys (§1.2); we do too, but reject any
    ``..`` component, backslashes and NUL bytes so a key can never escape
    its bucket.
    """
    if not isinstance(key, str) or not key.strip("/"):
        raise StoragePathError(f"key {key!r} is empty")
    k = key.lstrip("/")
    if "\\" in k or "\x00" in k or any(part in ("..", ".") for part in k.split("/")):
        raise StoragePathError(f"key {key!r} contains '..', '.', a backslash or NUL; keys must stay inside the bucket")
    return k


class Storage(ABC):
    """Async access to objects in buckets.

    Implementations: :class:`PosixStorage` (``root_dir/bucket/key``) and
    :class:`hsds_backends._s3.S3Storage` (aiobotocore). Instances are cheap to
    describe as data (:meth:`to_config`) so a chunk task's executor can reopen
    the same storage in another process without shipping credentials in tasks.
    """

    kind: ClassVar[str]

    @abstractmethod
    async def get(self, bucket: str, key: str, offset: int | None = None, size: int | None = None) -> bytes | None:
        """Return the object's bytes (or ``size`` bytes from ``offset``), or ``None`` if it does not exist."""

    @abstractmethod
    async def put(self, bucket: str, key: str, data: bytes) -> None:
        """Write an object. Only the writer calls this; reads never do."""

    @abstractmethod
    async def exists(self, bucket: str, key: str) -> bool:
        """Return whether the object exists."""

    @abstractmethod
    def to_config(self) -> dict[str, Any]:
        """Return config keys that reopen this storage elsewhere (no secrets)."""

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Release connections. Idempotent."""

    async def __aenter__(self) -> Storage:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


class PosixStorage(Storage):
    """Objects as files under ``root_dir/bucket/key`` (hsds-format.md §1.5, posix driver).

    Parameters
    ----------
    root_dir
        Absolute or relative folder; made absolute. It must exist for reads.
    """

    kind: ClassVar[str] = "posix"

    def __init__(self, root_dir: str | os.PathLike[str]) -> None:
        self.root_dir = os.path.abspath(os.fspath(root_dir))

    def __repr__(self) -> str:
        return f"PosixStorage(root_dir={self.root_dir!r})"

    def path(self, bucket: str, key: str) -> str:
        """Return the file path of ``bucket``/``key``, refusing anything outside ``root_dir``."""
        b = check_bucket(bucket)
        k = check_key(key)
        p = os.path.normpath(os.path.join(self.root_dir, b, k))
        if not p.startswith(os.path.join(self.root_dir, b) + os.sep):
            raise StoragePathError(f"key {key!r} escapes bucket {bucket!r}")
        return p

    def read_sync(self, bucket: str, key: str, offset: int | None = None, size: int | None = None) -> bytes | None:
        """Blocking read used by :meth:`get` and by executors that already run in a thread."""
        p = self.path(bucket, key)
        try:
            with open(p, "rb", buffering=0) as f:
                if offset:
                    f.seek(offset)
                return f.read(size if size is not None else -1)
        except FileNotFoundError:
            return None
        except IsADirectoryError:
            return None
        except OSError as exc:
            raise StorageError(f"cannot read {p!r}: {exc}") from exc

    async def get(self, bucket: str, key: str, offset: int | None = None, size: int | None = None) -> bytes | None:
        # Small page-cached reads are faster inline than through a thread hop.
        return self.read_sync(bucket, key, offset, size)

    async def exists(self, bucket: str, key: str) -> bool:
        return os.path.isfile(self.path(bucket, key))

    async def put(self, bucket: str, key: str, data: bytes) -> None:
        p = self.path(bucket, key)
        await asyncio.to_thread(_write_file, p, data)

    def to_config(self) -> dict[str, Any]:
        return {"root_dir": self.root_dir}


def _write_file(path: str, data: bytes) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def storage_from_config(cfg: Mapping[str, Any]) -> Storage:
    """Open the storage that ``cfg`` describes (HSDS's driver choice, hsds-format.md §1.5).

    ``root_dir`` set → posix; else ``aws_s3_gateway`` set → S3; else posix
    under the current folder.
    """
    root_dir = cfg.get("root_dir")
    if root_dir:
        return PosixStorage(root_dir)
    if cfg.get("aws_s3_gateway") or cfg.get("storage") == "s3":
        from ._s3 import S3Storage

        return S3Storage.from_config(cfg)
    return PosixStorage(os.getcwd())
