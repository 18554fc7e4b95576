"""Azure Blob storage through the Azure SDK's async client (docs/hsds-format.md §1.5, Azure driver).

HSDS's key layout is unchanged: the bucket is the blob container, the key the blob name. The
connection string comes from config ``azure_connection_string`` (HSDS's key; the environment
variable ``AZURE_CONNECTION_STRING`` sets it, as for HSDS): it holds the account key, so it is
a secret — never in :meth:`AzureStorage.to_config`, a repr, a task or a command line.

``azure.storage.blob`` is imported inside methods only, so importing :mod:`hsds_backends`
never pulls in a cloud SDK (docs/architecture.md §2).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING, Any, ClassVar

from ..config import is_unset
from ..errors import ConfigError, StorageError
from .base import Storage, check_bucket, check_key

if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = ["AzureStorage"]

#: Error codes that mean "no such blob or container": a missing chunk (fill value, docs/hsds-format.md §3.4).
_MISSING_CODES: frozenset[str] = frozenset({"BlobNotFound", "ContainerNotFound", "ResourceNotFound"})


class AzureStorage(Storage):
    """Blobs in Azure Blob storage (or Azurite, the emulator), one async client per event loop.

    Parameters
    ----------
    connection_string
        The account's connection string (``DefaultEndpointsProtocol=…;AccountName=…;AccountKey=…;
        BlobEndpoint=…``), HSDS key ``azure_connection_string``.
    max_concurrency
        Parallel connections for one large download (the SDK's ``max_concurrency``).

    Notes
    -----
    As :class:`~hsds_backends.storage.S3Storage`: the client is made on first use, on the running
    loop; a call from another loop makes a new one. Instances do not pickle: ship
    :meth:`to_config` and reopen with :meth:`from_config` where the connection string is set.
    """

    kind: ClassVar[str] = "azure"
    credentials_from: ClassVar[str] = "azure_connection_string (AZURE_CONNECTION_STRING)"

    def __init__(self, connection_string: str, *, max_concurrency: int = 1) -> None:
        if not connection_string or not isinstance(connection_string, str) or "=" not in connection_string:
            raise ConfigError(
                "azure_connection_string is not set (or is not a connection string); set it, or the environment"
                " variable AZURE_CONNECTION_STRING, to the storage account's connection string"
            )
        parts = dict(p.split("=", 1) for p in connection_string.split(";") if "=" in p)
        self.account = parts.get("AccountName", "")
        self.endpoint = parts.get("BlobEndpoint") or (f"https://{self.account}.blob.core.windows.net" if self.account else "")
        self.max_concurrency = max(1, int(max_concurrency))
        self.__connection_string = connection_string  # private: never in repr() or to_config()
        self._client: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> AzureStorage:
        """Build from HSDS config key ``azure_connection_string`` (else the environment's ``AZURE_CONNECTION_STRING``).

        A description made by :meth:`to_config` elsewhere also names the account and blob
        endpoint it was made for; a connection string here for another account or endpoint is
        refused rather than read (it would serve another account's blobs as this one's).

        Raises
        ------
        ConfigError
            No connection string, or one for another account or endpoint than ``cfg`` names.
        """
        cs = cfg.get("azure_connection_string")
        if is_unset(cs):
            import os

            cs = os.environ.get("AZURE_CONNECTION_STRING")
        storage = cls(str(cs or ""))
        for key, have in (("azure_account", storage.account), ("azure_blob_endpoint", storage.endpoint)):
            want = cfg.get(key)
            if want and str(want).rstrip("/") != have.rstrip("/"):
                raise ConfigError(
                    f"{key} {want!r} was asked for, but the connection string here (azure_connection_string /"
                    f" AZURE_CONNECTION_STRING) is for {have!r}; give this process the connection string of {want!r}"
                )
        return storage

    def to_config(self) -> dict[str, Any]:
        """The keys that reopen this storage where ``AZURE_CONNECTION_STRING`` is set: never the secret."""
        return {"storage": "azure", "azure_account": self.account, "azure_blob_endpoint": self.endpoint}

    def __repr__(self) -> str:
        return f"AzureStorage(account={self.account!r}, endpoint={self.endpoint!r})"


    # -- client lifecycle -------------------------------------------------------------------
    def _service(self) -> Any:
        loop = asyncio.get_running_loop()
        if self._client is not None and self._loop is loop:
            return self._client
        try:
            from azure.storage.blob.aio import BlobServiceClient
        except ImportError as exc:  # pragma: no cover - a dependency of the core
            raise StorageError(f"Azure storage needs the azure-storage-blob package: {exc}") from exc
        old = self._client
        if old is not None and self._loop is not None and not self._loop.is_closed():
            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(old.close(), self._loop)
        try:
            self._client = BlobServiceClient.from_connection_string(self.__connection_string)
        except ValueError as exc:
            raise ConfigError(f"azure_connection_string is not valid: {exc}") from None
        self._loop = loop
        return self._client

    async def aclose(self) -> None:
        """Close the client. Idempotent; a later call reopens lazily."""
        client, loop = self._client, self._loop
        self._client = self._loop = None
        if client is not None and loop is asyncio.get_running_loop():
            await client.close()

    # -- object access ----------------------------------------------------------------------
    def _error(self, exc: Exception, op: str, bucket: str, key: str) -> StorageError:
        from azure.core.exceptions import ClientAuthenticationError

        where = f"{self.endpoint}/{bucket}/{key}"
        if isinstance(exc, ClientAuthenticationError) or getattr(exc, "status_code", None) in (401, 403):
            return StorageError(f"access denied to {where} ({op}); check azure_connection_string (the account name and key)")
        return StorageError(f"cannot {op} {where}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")

    @staticmethod
    def _missing(exc: Exception) -> bool:
        return getattr(exc, "error_code", None) in _MISSING_CODES or getattr(exc, "status_code", None) == 404

    async def get(self, bucket: str, key: str, offset: int | None = None, size: int | None = None) -> bytes | None:
        """Return the blob's bytes, or ``size`` bytes from ``offset``; ``None`` if blob or container is missing.

        A range read asks for exactly that range (``x-ms-range``); a range that starts past the end
        returns ``b""`` (as a posix seek+read does).

        Raises
        ------
        StoragePathError
            Unsafe bucket or key, before any request.
        StorageError
            Access denied (check the connection string) or any other failure, naming the blob.
        """
        b, k = check_bucket(bucket), check_key(key)
        if (offset is not None and offset < 0) or (size is not None and size < 0):
            raise StorageError(f"invalid byte range offset={offset!r} size={size!r} for {b}/{k}")
        if size == 0:
            return b"" if await self.exists(b, k) else None
        from azure.core.exceptions import AzureError, HttpResponseError

        blob = self._service().get_blob_client(container=b, blob=k)
        try:
            start = offset or 0
            stream = await blob.download_blob(
                offset=start if (offset is not None or size is not None) else None,
                length=size, max_concurrency=self.max_concurrency,
            )
            data: bytes = await stream.readall()
        except HttpResponseError as exc:
            if self._missing(exc):
                return None
            if getattr(exc, "status_code", None) == 416:
                return b""
            raise self._error(exc, "read", b, k) from exc
        except (AzureError, OSError, asyncio.TimeoutError) as exc:
            raise self._error(exc, "read", b, k) from exc
        return data

    async def put(self, bucket: str, key: str, data: bytes) -> None:
        """Write a blob (writers only; reads never call this)."""
        b, k = check_bucket(bucket), check_key(key)
        from azure.core.exceptions import AzureError

        try:
            await self._service().get_blob_client(container=b, blob=k).upload_blob(bytes(data), overwrite=True)
        except (AzureError, OSError, asyncio.TimeoutError) as exc:
            raise self._error(exc, "write", b, k) from exc

    async def exists(self, bucket: str, key: str) -> bool:
        """Return whether the blob exists; a missing container is ``False``."""
        b, k = check_bucket(bucket), check_key(key)
        from azure.core.exceptions import AzureError, HttpResponseError

        try:
            return bool(await self._service().get_blob_client(container=b, blob=k).exists())
        except HttpResponseError as exc:
            if self._missing(exc):
                return False
            raise self._error(exc, "check", b, k) from exc
        except (AzureError, OSError, asyncio.TimeoutError) as exc:
            raise self._error(exc, "check", b, k) from exc
