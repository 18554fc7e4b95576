"""hsds-backends-dask: run hsds-backends chunk reads on a dask.distributed cluster.

The backend is registered under the entry point ``dask`` in group ``hsds_backends``;
use it with ``backend="dask"`` (or config ``backend: dask``). Importing this package
does not import dask.
"""

from __future__ import annotations

from .backend import CONFIG_KEYS, DaskBackend

__all__ = ["CONFIG_KEYS", "DaskBackend", "__version__"]

__version__ = "0.1.0"
