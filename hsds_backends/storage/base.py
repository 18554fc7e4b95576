"""The storage interface: bucket and key checks, and the :class:`Storage` base class.

Keys are bucket-relative HSDS keys (docs/hsds-format.md §1.2). A missing object
reads as ``None`` (the caller substitutes the fill value, docs/hsds-format.md §3.4).
A read never writes anything: only :meth:`Storage.put` writes, and only the writer
calls it.

Reads are awaited (:meth:`Storage.get`). A storage that can also read without an
event loop, cheaply, says so through :meth:`Storage.sync_reader` (a
:class:`SyncRead` or ``None``): one attribute call, no ``isinstance`` checks, so
executors ask it per batch or per task.

A blocking read may land in a buffer the calling thread reuses, instead of a new
``bytes`` (whose fresh pages the kernel must zero first, which costs more than
the copy from the page cache), but only where the caller allowed it:
:func:`reusable_read_buffer` opens that permission for one read, and the caller
promises to be done with the bytes before the block ends. A storage's reader asks
:func:`read_buffer`; readers that never ask are unaffected.
"""

from __future__ import annotations

import re
import threading
from abc import ABC, abstractmethod
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, Self

from ..errors import StoragePathError

if TYPE_CHECKING:
    from collections.abc import Hashable, Iterator

__all__ = ["Storage", "SyncRead", "check_bucket", "check_key", "read_buffer", "reusable_read_buffer"]


class SyncRead(Protocol):
    """A blocking read: ``read(bucket, key, offset, size)`` → the bytes, or ``None`` if the object is missing.

    Same arguments and answers as :meth:`Storage.get`, but called from a worker
    thread instead of awaited; see :meth:`Storage.sync_reader`.
    """

    def __call__(
        self, bucket: str, key: str, offset: int | None = None, size: int | None = None, /
    ) -> bytes | memoryview | None: ...


#: Reads up to this size may use the thread's buffer; larger ones get their own.
READ_BUFFER_MAX = 32 << 20
_read_buffers = threading.local()


@contextmanager
def reusable_read_buffer() -> Iterator[None]:
    """Let the next blocking read in this thread land in the thread's reusable buffer.

    The caller must be done with what that read returned (a ``memoryview`` of the
    buffer) before the block ends: the next read overwrites it. One read per block.
    """
    _read_buffers.allowed = True
    try:
        yield
    finally:
        _read_buffers.allowed = False


def read_buffer(n: int) -> memoryview | None:
    """A writable view of ``n`` bytes of this thread's reusable buffer, if the caller allowed it (else ``None``)."""
    if not getattr(_read_buffers, "allowed", False) or not 0 < n <= READ_BUFFER_MAX:
        return None
    _read_buffers.allowed = False  # one read per permission
    buf: bytearray | None = getattr(_read_buffers, "buf", None)
    if buf is None or len(buf) < n:
        buf = bytearray(max(n, 1 << 20))
        _read_buffers.buf = buf
    return memoryview(buf)[:n]


# docs/hsds-format.md §1.5: bucket names must match [a-zA-Z0-9_.-]+ (after a protocol prefix).
_BUCKET_RE: re.Pattern[str] = re.compile(r"^[A-Za-z0-9_.-]+$")


def check_bucket(bucket: str) -> str:
    """Return ``bucket`` with any ``s3://``/``file://`` prefix removed, or raise.

    Rejects ``..``, ``/``, a leading ``.`` (a dot-folder under a posix root is never a
    bucket), empty names and characters HSDS does not allow.
    """
    if not isinstance(bucket, str) or not bucket:
        raise StoragePathError(f"bucket {bucket!r} is empty; pass a bucket name such as 'hsdstest'")
    name = bucket
    for prefix in ("s3://", "file://"):
        if name.startswith(prefix):
            name = name[len(prefix) :].rstrip("/")
    if name.startswith(".") or not _BUCKET_RE.match(name):
        raise StoragePathError(
            f"bucket {bucket!r} is not a valid bucket name; use only letters, digits, '_', '.' and '-'"
            " (no '/', and no leading '.': dot-folders are never buckets)"
        )
    return name


def check_key(key: str) -> str:
    """Return the bucket-relative ``key`` (leading ``/`` stripped), or raise.

    HSDS strips a leading ``/`` from keys (docs/hsds-format.md §1.2); we do too, but reject any
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
    :class:`~hsds_backends.storage.s3.S3Storage` (aiobotocore). Instances are cheap to
    describe as data (:meth:`to_config`) so a chunk task's executor can reopen
    the same storage in another process without shipping credentials in tasks.
    """

    kind: ClassVar[str]

    #: Where this kind of storage takes its credentials from, if it holds any ("": it holds
    #: none). A storage that holds credentials refuses to be pickled: the bytes would carry them
    #: into task queues and logs.
    credentials_from: ClassVar[str] = ""

    def __getstate__(self) -> Any:
        if self.credentials_from:
            name = type(self).__name__
            raise TypeError(
                f"{name} cannot be pickled (it holds credentials); send storage.to_config() (no secrets) and reopen it"
                f" with {name}.from_config(...) where {self.credentials_from} is configured"
            )
        return self.__dict__.copy()

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

    async def aclose(self) -> None:  # noqa: B027 - an optional hook: not abstract
        """Release connections. Idempotent."""

    # -- the synchronous capability (posix has it, S3 does not) ------------------------------

    def sync_reader(self) -> SyncRead | None:
        """Return a blocking reader of this storage, or ``None`` when reads must be awaited.

        Code that already runs in a worker thread (the kernel's
        :func:`~hsds_backends.kernel.run_task_sync`, a thread pool that reads
        and decodes in one hop) reads through it instead of the event loop.
        Asked once per batch or per task, so it must be cheap: the posix
        storage returns its bound :meth:`PosixStorage.read_sync`; the default
        (and S3, whose client belongs to an event loop) is ``None``.
        """
        return None

    def version_sync(self, bucket: str, key: str) -> Hashable | None:
        """Return a token that changes when the object changes, or ``None`` if there is no cheap one.

        Blocking and meant to be cheap: posix answers with the file's
        modification time and size; the default (and S3, where it would cost a
        request) is ``None``. A decoded-chunk cache keeps the token with an
        entry so that an object rewritten underneath it is not served stale.
        """
        return None

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
