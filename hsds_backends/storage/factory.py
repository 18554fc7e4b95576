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

__all__ = ["STORAGE_KINDS", "storage_from_config", "storage_kind"]

#: The storage services the core reads, as :func:`storage_kind` names them.
STORAGE_KINDS = ("posix", "s3", "azure")


def storage_kind(cfg: Mapping[str, Any]) -> str | None:
    """Name the storage ``cfg`` describes, HSDS's driver choice (docs/hsds-format.md §1.5), without opening it.

    ``root_dir`` set → ``"posix"``; else ``aws_s3_gateway`` set (or ``storage: s3``) →
    ``"s3"``; else ``azure_connection_string`` set (or ``storage: azure``) → ``"azure"``;
    else ``None``: nothing named (a reader then reads posix under the current folder; a
    service refuses to).
    """
    if cfg.get("root_dir"):
        return "posix"
    if cfg.get("aws_s3_gateway") or cfg.get("storage") == "s3":
        return "s3"
    if not is_unset(cfg.get("azure_connection_string")) or cfg.get("storage") == "azure":
        return "azure"
    return None


def storage_from_config(cfg: Mapping[str, Any]) -> Storage:
    """Open the storage that ``cfg`` describes (:func:`storage_kind`; nothing named: posix under the current folder)."""
    kind = storage_kind(cfg)
    if kind == "posix":
        return PosixStorage(cfg["root_dir"])
    if kind == "s3":
        return S3Storage.from_config(cfg)
    if kind == "azure":
        from .azure import AzureStorage

        return AzureStorage.from_config(cfg)
    return PosixStorage(os.getcwd())
