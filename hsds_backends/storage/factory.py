"""Open the storage a configuration describes (HSDS's driver choice, docs/hsds-format.md §1.5)."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from ..config import is_unset
from .posix import PosixStorage
from .s3 import S3Storage

if TYPE_CHECKING:
    from collections.abc import Mapping

    from .base import Storage

__all__ = ["storage_from_config"]


def storage_from_config(cfg: Mapping[str, Any]) -> Storage:
    """Open the storage that ``cfg`` describes (HSDS's driver choice, docs/hsds-format.md §1.5).

    ``root_dir`` set → posix; else ``aws_s3_gateway`` set → S3; else
    ``azure_connection_string`` set → Azure Blob; else posix under the current folder.
    """
    root_dir = cfg.get("root_dir")
    if root_dir:
        return PosixStorage(root_dir)
    if cfg.get("aws_s3_gateway") or cfg.get("storage") == "s3":
        return S3Storage.from_config(cfg)
    if not is_unset(cfg.get("azure_connection_string")) or cfg.get("storage") == "azure":
        from .azure import AzureStorage

        return AzureStorage.from_config(cfg)
    return PosixStorage(os.getcwd())
