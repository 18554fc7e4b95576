"""hsds-backends-dask: run hsds-backends chunk reads on a dask.distributed cluster.

The backend is registered under the entry point ``dask`` in group ``hsds_backends``;
use it with ``backend="dask"`` (or config ``backend: dask``); its config keys are
:attr:`DaskBackend.config_keys`. Importing this package does not import dask.
"""

from __future__ import annotations

from .backend import DaskBackend

__all__ = ["DaskBackend", "__version__"]

__version__ = "0.1.0"
