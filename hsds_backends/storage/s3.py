"""S3 object storage over aiobotocore (docs/hsds-format.md §1.5, S3 driver).

aiobotocore (and botocore) are imported inside methods only, so importing
:mod:`hsds_backends` never pulls in a cloud SDK (docs/architecture.md §2).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING, Any, ClassVar

from .._aws import open_client
from ..config import is_unset
from ..errors import ConfigError, StorageError
from .base import Storage, check_bucket, check_key

if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = ["S3Storage"]

# docs/hsds-format.md §1.5 (s3Client.get_object): these codes mean "no such object" and read
# as a missing chunk (fill value, docs/hsds-format.md §3.4). "NotFound" is what head_object reports.
_MISSING_CODES: frozenset[str] = frozenset({"NoSuchKey", "NoSuchBucket", "404", "NotFound"})
# docs/hsds-format.md §1.5 / §6.4: access-denied codes (HSDS: AccessDenied/401/403 → 403). Bad or
# expired credentials are reported the same way, since the fix is the same: check credentials.
_DENIED_CODES: frozenset[str] = frozenset(
    {
        "AccessDenied",
        "401",
        "403",
        "Forbidden",
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "ExpiredToken",
        "InvalidToken",
        "TokenRefreshRequired",
    }
)
class S3Storage(Storage):
    """Objects in S3 (or any S3-compatible endpoint: minio, ceph, moto) via aiobotocore.

    Parameters
    ----------
    endpoint_url
        S3 endpoint, e.g. ``http://127.0.0.1:9000`` (HSDS key ``aws_s3_gateway``). ``None`` uses
        AWS (or ``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL`` if set, as botocore does).
    region
        Signing region (HSDS key ``aws_region``).
    access_key_id, secret_access_key, session_token
        Explicit credentials. Leave both key id and secret ``None`` to use botocore's standard
        chain (``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``/``AWS_SESSION_TOKEN``,
        ``AWS_PROFILE`` and ``~/.aws``, container or instance roles). Giving only one of the
        pair raises :class:`~hsds_backends.errors.ConfigError`.
    max_pool_connections
        HTTP connection pool size of the client (HSDS key ``aio_max_pool_connections``).
    connect_timeout, read_timeout
        Seconds, passed to botocore.
    addressing_style
        ``"path"``, ``"virtual"`` or ``None`` (botocore's choice; path style for IP endpoints).

    Notes
    -----
    One aiobotocore client is created on first use and reused by every call until
    :meth:`aclose`. Use an instance from **one event loop at a time**: the client's
    connections belong to the loop that created it. If a call comes from another running
    loop (e.g. a second ``asyncio.run``), the old client is dropped (closed if possible) and
    a new one is created on the current loop. Calling a method after :meth:`aclose` opens a
    new client. Instances do not pickle: ship :meth:`to_config` (which holds no secrets) and
    reopen with :meth:`from_config` where the credentials are available.

    See Also
    --------
    hsds_backends.storage.posix.PosixStorage : the posix driver with the same interface.
    """

    kind: ClassVar[str] = "s3"
    credentials_from: ClassVar[str] = "the AWS credential chain (or aws_access_key_id / aws_secret_access_key)"

    def __init__(
        self,
        endpoint_url: str | None = None,
        region: str | None = "us-east-1",
        access_key_id: str | None = None,
        secret_access_key: str | None = None,
        session_token: str | None = None,
        *,
        max_pool_connections: int = 64,
        connect_timeout: float = 10.0,
        read_timeout: float = 60.0,
        addressing_style: str | None = None,
    ) -> None:
        if (access_key_id is None) != (secret_access_key is None):
            missing = "secret_access_key" if secret_access_key is None else "access_key_id"
            raise ConfigError(
                f"S3 credentials are incomplete: {missing} is not set; set both aws_access_key_id and"
                " aws_secret_access_key, or neither to use the AWS credential chain"
                " (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, ~/.aws, instance role)"
            )
        if addressing_style not in (None, "auto", "path", "virtual"):
            raise ConfigError(f"S3 addressing_style {addressing_style!r} is not valid; use 'path', 'virtual' or 'auto'")
        if int(max_pool_connections) < 1:
            raise ConfigError(f"max_pool_connections must be >= 1, got {max_pool_connections!r}")
        self.endpoint_url = endpoint_url or None
        self.region = region or None
        self.max_pool_connections = int(max_pool_connections)
        self.connect_timeout = float(connect_timeout)
        self.read_timeout = float(read_timeout)
        self.addressing_style = addressing_style
        # Credentials are private and never appear in repr() or to_config().
        self.__credentials = (access_key_id, secret_access_key, session_token)
        self._stack: contextlib.AsyncExitStack | None = None
        self._client: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock: asyncio.Lock | None = None
        self._lock_loop: asyncio.AbstractEventLoop | None = None

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> S3Storage:
        """Build an :class:`S3Storage` from HSDS config keys.

        Reads ``aws_s3_gateway``, ``aws_region`` (default ``us-east-1``), ``aws_access_key_id``,
        ``aws_secret_access_key``, ``aws_session_token`` (the value ``xxx`` means unset, as in
        HSDS's config.yml, docs/hsds-format.md §6.1; unset credentials fall back to the AWS chain),
        and, if present, ``aio_max_pool_connections``, ``aws_s3_connect_timeout``,
        ``aws_s3_read_timeout`` and ``aws_s3_addressing_style``.
        """
        key_id = cfg.get("aws_access_key_id")
        secret = cfg.get("aws_secret_access_key")
        token = cfg.get("aws_session_token")
        kwargs: dict[str, Any] = {}
        for cfg_key, arg in (
            ("aio_max_pool_connections", "max_pool_connections"),
            ("aws_s3_connect_timeout", "connect_timeout"),
            ("aws_s3_read_timeout", "read_timeout"),
            ("aws_s3_addressing_style", "addressing_style"),
        ):
            if cfg.get(cfg_key) not in (None, ""):
                kwargs[arg] = cfg[cfg_key]
        return cls(
            endpoint_url=cfg.get("aws_s3_gateway") or None,
            region=cfg.get("aws_region") or "us-east-1",
            access_key_id=None if is_unset(key_id) else str(key_id),
            secret_access_key=None if is_unset(secret) else str(secret),
            session_token=None if is_unset(token) else str(token),
            **kwargs,
        )

    def to_config(self) -> dict[str, Any]:
        """Return the config keys that reopen this storage; never any credential."""
        out: dict[str, Any] = {
            "storage": "s3",
            "aws_s3_gateway": self.endpoint_url,
            "aws_region": self.region,
            "aio_max_pool_connections": self.max_pool_connections,
            "aws_s3_connect_timeout": self.connect_timeout,
            "aws_s3_read_timeout": self.read_timeout,
        }
        if self.addressing_style is not None:
            out["aws_s3_addressing_style"] = self.addressing_style
        return out

    def __repr__(self) -> str:
        return f"S3Storage(endpoint_url={self.endpoint_url!r}, region={self.region!r})"


    # -- client lifecycle -------------------------------------------------------------------

    async def _get_client(self) -> Any:
        loop = asyncio.get_running_loop()
        if self._client is not None and self._loop is loop:
            return self._client
        # A Lock binds to the loop that first waits on it, so keep one per loop.
        if self._lock is None or self._lock_loop is not loop:
            self._lock = asyncio.Lock()
            self._lock_loop = loop
        async with self._lock:
            if self._client is not None and self._loop is loop:
                return self._client
            if self._client is not None:
                await self._drop_client()
            config_kwargs: dict[str, Any] = {
                "max_pool_connections": self.max_pool_connections,
                "connect_timeout": self.connect_timeout,
                "read_timeout": self.read_timeout,
            }
            if self.addressing_style is not None:
                config_kwargs["s3"] = {"addressing_style": self.addressing_style}
            try:
                stack, client = await open_client(
                    "s3", region=self.region, endpoint_url=self.endpoint_url, credentials=self.__credentials, **config_kwargs
                )
            except Exception as exc:
                raise StorageError(
                    f"cannot create an S3 client for endpoint {self.endpoint_url or 'AWS'!r}"
                    f" (region {self.region!r}): {exc}"
                ) from exc
            self._stack, self._client, self._loop = stack, client, loop
            return client

    async def _drop_client(self) -> None:
        """Forget the current client, closing it if its loop allows."""
        stack, loop = self._stack, self._loop
        self._stack = self._client = self._loop = None
        if stack is None:
            return
        current = asyncio.get_running_loop()
        if loop is current:
            await stack.aclose()
        elif loop is not None and loop.is_running() and not loop.is_closed():
            # Created on a loop that still runs in another thread: close it there.
            fut = asyncio.run_coroutine_threadsafe(stack.aclose(), loop)
            with contextlib.suppress(Exception):
                await asyncio.wrap_future(fut)
        else:
            # Its loop is gone; its sockets went with it. Best effort only.
            with contextlib.suppress(Exception):
                await stack.aclose()

    async def aclose(self) -> None:
        """Close the client and its connections. Idempotent; a later call reopens lazily."""
        await self._drop_client()

    # -- object access ----------------------------------------------------------------------

    def _error(self, exc: Exception, op: str, bucket: str, key: str) -> StorageError:
        from botocore.exceptions import ClientError, NoCredentialsError, PartialCredentialsError

        where = f"s3://{bucket}/{key}"
        endpoint = self.endpoint_url or "AWS"
        if isinstance(exc, (NoCredentialsError, PartialCredentialsError)):
            return StorageError(
                f"no AWS credentials to {op} {where}; set aws_access_key_id and aws_secret_access_key"
                " (or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, a profile or an instance role)"
            )
        if isinstance(exc, ClientError):
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code in _DENIED_CODES:
                return StorageError(
                    f"access denied to {where} ({op}: {code}) at {endpoint}; check credentials"
                    " (aws_access_key_id/aws_secret_access_key or the AWS credential chain) and the"
                    " bucket policy"
                )
            if code in ("PermanentRedirect", "301", "AuthorizationHeaderMalformed"):
                # HSDS maps PermanentRedirect to 404; a silent fill would hide a wrong region.
                return StorageError(
                    f"bucket {bucket!r} is not in region {self.region!r} ({op} {where}: {code});"
                    " set aws_region to the bucket's region"
                )
            return StorageError(f"cannot {op} {where} at {endpoint}: {code or 'error'}: {exc}")
        return StorageError(f"cannot {op} {where} at {endpoint}: {type(exc).__name__}: {exc}")

    @staticmethod
    def _code(exc: Exception) -> str | None:
        response = getattr(exc, "response", None)
        if isinstance(response, dict):
            return str(response.get("Error", {}).get("Code", ""))
        return None

    async def get(self, bucket: str, key: str, offset: int | None = None, size: int | None = None) -> bytes | None:
        """Return the object's bytes, or ``size`` bytes from ``offset``; ``None`` if it is missing.

        A range read sends ``Range: bytes=offset-(offset+size-1)`` (docs/hsds-format.md §1.5);
        ``offset`` without ``size`` reads to the end; ``size`` without ``offset`` reads from 0.
        A missing key or bucket (``NoSuchKey``, ``NoSuchBucket``, ``404``) returns ``None``.
        A range that starts past the end returns ``b""`` (as a posix seek+read does).

        Raises
        ------
        StoragePathError
            Unsafe bucket or key, before any request.
        StorageError
            Access denied (``check credentials``) or any other failure, naming bucket and key.
        """
        b, k = check_bucket(bucket), check_key(key)
        if (offset is not None and offset < 0) or (size is not None and size < 0):
            raise StorageError(f"invalid byte range offset={offset!r} size={size!r} for s3://{b}/{k}")
        if size == 0:
            return b"" if await self.exists(b, k) else None
        params: dict[str, Any] = {"Bucket": b, "Key": k}
        if offset is not None or size is not None:
            start = offset or 0
            params["Range"] = f"bytes={start}-" if size is None else f"bytes={start}-{start + size - 1}"
        client = await self._get_client()
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            resp = await client.get_object(**params)
            async with resp["Body"] as stream:
                data: bytes = await stream.read()
        except ClientError as exc:
            code = self._code(exc)
            if code in _MISSING_CODES:
                return None
            if code == "InvalidRange":
                return b""
            raise self._error(exc, "read", b, k) from exc
        except (TimeoutError, BotoCoreError, OSError) as exc:
            raise self._error(exc, "read", b, k) from exc
        except Exception as exc:  # aiohttp payload errors and the like
            if type(exc).__module__.startswith(("aiohttp", "aiobotocore", "botocore")):
                raise self._error(exc, "read", b, k) from exc
            raise
        return data

    async def put(self, bucket: str, key: str, data: bytes) -> None:
        """Write an object (writers only; reads never call this)."""
        b, k = check_bucket(bucket), check_key(key)
        client = await self._get_client()
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            await client.put_object(Bucket=b, Key=k, Body=bytes(data))
        except (TimeoutError, ClientError, BotoCoreError, OSError) as exc:
            raise self._error(exc, "write", b, k) from exc

    async def exists(self, bucket: str, key: str) -> bool:
        """Return whether the object exists (``head_object``); a missing bucket is ``False``."""
        b, k = check_bucket(bucket), check_key(key)
        client = await self._get_client()
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            await client.head_object(Bucket=b, Key=k)
        except ClientError as exc:
            if self._code(exc) in _MISSING_CODES:
                return False
            raise self._error(exc, "check", b, k) from exc
        except (TimeoutError, BotoCoreError, OSError) as exc:
            raise self._error(exc, "check", b, k) from exc
        return True
