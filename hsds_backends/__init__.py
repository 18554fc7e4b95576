"""hsds-backends: pluggable chunk-read execution for HSDS-stored datasets.

Open a domain and read::

    import hsds_backends as hb

    with hb.open_domain("/home/user/file.h5", root_dir="data") as dom:
        dset = dom["/temperature"]
        block = dset[0:100:4, 5]
        rows = dset.query("temp > 20", limit=10)

Write a backend: subclass :class:`Backend` and implement the hooks in
:mod:`hsds_backends.hookspecs` with :data:`hookimpl`.
"""

from __future__ import annotations

from ._version import __version__
from .api import AsyncDataset, AsyncDomain, Dataset, Domain, Reader, ReadResult, ReadStats, open_domain
from .groups import AsyncGroup, ExternalLink, Group, SoftLink
from .dataset import DatasetMeta
from .dtypes import dtype_from_type_json, type_json_from_dtype, vlen_dtype
from .errors import (
    BackendError,
    BackendNotInstalledError,
    BackendTimeoutError,
    ChunkDecodeError,
    ConfigError,
    DatasetNotFoundError,
    DomainNotFoundError,
    AttributeNotFoundError,
    FieldError,
    HsdsBackendsError,
    LinkNotFoundError,
    NoBackendError,
    NotFoundError,
    PluginError,
    QueryError,
    SelectionError,
    SelectionTypeError,
    SelectionValueError,
    StorageError,
    StoragePathError,
    TaskError,
    UnknownBackendError,
    UnsupportedFilterError,
)
from .hookspecs import hookimpl, hookspec
from .model import Backend, Capabilities, Choice, CostEstimate, ReadRequest
from .plugins import KNOWN_BACKENDS, BackendInfo, get_plugin_manager, list_backends, make_backend, refresh_plugins
from .storage import PosixStorage, Storage
from .tasks import ChunkResult, ChunkTask

__all__ = [
    "__version__",
    "AsyncDataset",
    "AsyncDomain",
    "AsyncGroup",
    "Backend",
    "BackendError",
    "BackendInfo",
    "BackendNotInstalledError",
    "BackendTimeoutError",
    "Capabilities",
    "Choice",
    "ChunkDecodeError",
    "ChunkResult",
    "ChunkTask",
    "ConfigError",
    "CostEstimate",
    "Dataset",
    "DatasetMeta",
    "DatasetNotFoundError",
    "Domain",
    "DomainNotFoundError",
    "ExternalLink",
    "AttributeNotFoundError",
    "FieldError",
    "Group",
    "HsdsBackendsError",
    "KNOWN_BACKENDS",
    "LinkNotFoundError",
    "NoBackendError",
    "NotFoundError",
    "PluginError",
    "PosixStorage",
    "QueryError",
    "ReadRequest",
    "ReadResult",
    "ReadStats",
    "Reader",
    "SelectionError",
    "SelectionTypeError",
    "SelectionValueError",
    "SoftLink",
    "Storage",
    "StorageError",
    "StoragePathError",
    "TaskError",
    "UnknownBackendError",
    "UnsupportedFilterError",
    "dtype_from_type_json",
    "get_plugin_manager",
    "hookimpl",
    "hookspec",
    "list_backends",
    "make_backend",
    "open_domain",
    "refresh_plugins",
    "type_json_from_dtype",
    "vlen_dtype",
]
