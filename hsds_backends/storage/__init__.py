"""Async object storage in HSDS's layout: posix folders, S3 buckets and Azure Blob containers.

Keys are bucket-relative HSDS keys (docs/hsds-format.md §1.2); a missing object
reads as ``None`` (docs/hsds-format.md §3.4). One concern per module:

=====================  ==========================================================
:mod:`.base`           :class:`Storage`, :class:`SyncRead`, bucket and key checks
:mod:`.posix`          :class:`PosixStorage` (``root_dir/bucket/key``)
:mod:`.s3`             :class:`S3Storage` (aiobotocore, imported on first use)
:mod:`.azure`          :class:`~.azure.AzureStorage` (the Azure SDK's async client, imported on first use)
:mod:`.factory`        :func:`storage_from_config`, :func:`storage_kind`
=====================  ==========================================================

The modules import downwards only (``factory`` → ``posix``/``s3``/``azure`` → ``base``),
and no cloud SDK is imported until a cloud storage opens its client.
"""

from __future__ import annotations

from .base import Storage, SyncRead, check_bucket, check_key
from .factory import STORAGE_KINDS, storage_from_config, storage_kind
from .posix import PosixStorage
from .s3 import S3Storage

__all__ = [
    "STORAGE_KINDS",
    "PosixStorage",
    "S3Storage",
    "Storage",
    "SyncRead",
    "check_bucket",
    "check_key",
    "storage_from_config",
    "storage_kind",
]
