"""Hook implementations of the ``dask`` backend (entry point ``dask`` in group ``hsds_backends``).

Cheap to import: :mod:`.backend` imports dask and distributed only when a backend
starts, so ``hsds-backends backends`` lists this backend without importing dask.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from hsds_backends import hookimpl

from .backend import DaskBackend

if TYPE_CHECKING:
    from collections.abc import Mapping

    from hsds_backends.model import Backend


@hookimpl
def hsds_backends_backend_classes() -> list[type[Backend]]:
    return [DaskBackend]


@hookimpl
def hsds_backends_make_backend(name: str, config: Mapping[str, Any]) -> Backend | None:
    if name == DaskBackend.name:
        return DaskBackend(config)
    return None
