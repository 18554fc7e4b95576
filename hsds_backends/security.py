"""Fail closed: what a service that runs chunk tasks from the network may touch and answer.

docs/architecture.md §11 (trust boundaries). Every listener — a DN, the Lambda function and
its local runtime, a dask worker — parses tasks it did not build. Before running one it asks
a :class:`Containment`:

- the task's bucket (or a linked file's bucket) must be in the allowed buckets — config
  ``allowed_buckets``, by default just the configured ``bucket_name``; ``["*"]`` allows any
  bucket the storage reaches (say so on purpose);
- a chunk of an ``H5D_CHUNKED`` dataset must be read from the HSDS chunk key of its own
  chunk id (docs/hsds-format.md §1.2), so a task cannot name an arbitrary object;
- a linked chunk (``H5D_CHUNKED_REF``/``H5D_CONTIGUOUS_REF``) may name any file, but only
  inside an allowed bucket.

Posix storage resolves every path (symbolic links included) and refuses one outside its
root (:class:`~hsds_backends.storage.PosixStorage`); bucket names never start with a dot.

Also here: the helpers a listener needs to refuse unauthenticated access off loopback
(:func:`is_loopback`, :func:`read_token_file`, :func:`host_allowed`).
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from .errors import ConfigError, StoragePathError
from .ids import chunk_key

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

    from .tasks import ChunkTask

__all__ = ["ANY_BUCKET", "Containment", "host_allowed", "is_loopback", "read_token_file"]

#: ``allowed_buckets: ["*"]``: any bucket the storage's credentials reach.
ANY_BUCKET: Final = "*"


@dataclass(frozen=True)
class Containment:
    """Which objects chunk tasks from the network may read.

    Parameters
    ----------
    buckets
        The allowed buckets; ``None`` = any (only when the operator said ``"*"``).
    setting
        Where an operator allows more buckets, for refusals ("config allowed_buckets";
        the Lambda function names its ``BUCKET_ALLOWLIST``).
    """

    buckets: frozenset[str] | None
    setting: str = "config allowed_buckets"

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Containment:
        """Build from config ``allowed_buckets`` (list or comma-separated), else ``bucket_name``."""
        return cls.of(config.get("allowed_buckets") or (), default=str(config.get("bucket_name") or ""))

    @classmethod
    def of(cls, names: Iterable[str] | str, *, default: str = "", setting: str = "config allowed_buckets") -> Containment:
        """Build from bucket names (``"*"`` = any); none given: only ``default``."""
        items = [n.strip() for n in (names.split(",") if isinstance(names, str) else names) if n and n.strip()]
        if ANY_BUCKET in items:
            return cls(None, setting)
        if not items and default:
            items = [default]
        return cls(frozenset(items), setting)

    def describe(self) -> str:
        """One phrase for messages and logs: ``any bucket`` or ``buckets ['a', 'b']``."""
        return "any bucket" if self.buckets is None else f"buckets {sorted(self.buckets)}"

    def check_bucket(self, bucket: str, *, what: str = "bucket") -> None:
        """Raise :class:`StoragePathError` (status 403) unless ``bucket`` is allowed."""
        if self.buckets is not None and bucket not in self.buckets:
            raise StoragePathError(
                f"{what} {bucket!r} is not an allowed bucket (allowed: {sorted(self.buckets)}); "
                f"add it to {self.setting} to serve it",
                status=403,
            )

    def check_task(self, task: ChunkTask) -> None:
        """Raise :class:`StoragePathError` (status 403) unless ``task`` reads only what it may.

        An ``H5D_CHUNKED`` chunk must come from its own chunk key in an allowed bucket; a
        linked chunk from any file of an allowed bucket.
        """
        loc = task.location
        if loc is None:
            return
        if loc.linked:
            self.check_bucket(loc.bucket, what=f"chunk {task.chunk_id}: linked file bucket")
            return
        self.check_bucket(loc.bucket, what=f"chunk {task.chunk_id}: bucket")
        expected = chunk_key(task.chunk_id)
        if loc.key != expected:
            raise StoragePathError(
                f"chunk {task.chunk_id}: key {loc.key!r} is not the chunk's own key {expected!r}; "
                "a chunk task may read only its chunk",
                status=403,
            )


def is_loopback(host: str) -> bool:
    """Return whether ``host`` (a name or address) is a loopback interface (``localhost``, 127/8, ::1)."""
    h = host.strip("[]").lower()
    if h == "localhost":
        return True
    try:
        return ipaddress.ip_address(h).is_loopback
    except ValueError:
        return False


def host_allowed(host_header: str | None) -> bool:
    """Return whether a request's ``Host`` header names this machine's loopback.

    A listener bound to loopback answers only requests addressed to loopback: a web page
    that rebinds its own domain name to 127.0.0.1 still sends its domain in ``Host``.
    No header (HTTP/1.0, unix sockets) is accepted.
    """
    if not host_header:
        return True
    host = host_header.strip()
    if host.startswith("["):  # [::1]:port
        host = host[1 : host.find("]")] if "]" in host else host
    elif host.count(":") == 1:
        host = host.split(":", 1)[0]
    return is_loopback(host)


def read_token_file(path: str | os.PathLike[str]) -> str:
    """Return the bearer token in ``path`` (surrounding white space removed).

    Raises
    ------
    ConfigError
        The file cannot be read or holds no token: an empty token would silently turn
        authentication off.
    """
    p = os.fspath(path)
    try:
        with open(p, encoding="utf-8") as f:
            token = f.read().strip()
    except OSError as exc:
        raise ConfigError(f"cannot read the token file {p!r}: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"token file {p!r} is not text; write the token as one line of text") from exc
    if not token:
        raise ConfigError(f"token file {p!r} is empty; write a token into it (for example: openssl rand -hex 32 > {p})")
    return token
