"""Hook implementations of the ``containers`` backend (entry point ``containers`` in group ``hsds_backends``).

Cheap to import: the client (:mod:`.backend` and what it uses) needs no aiohttp; the
DN service, which does, is imported only where a DN runs (and when a backend starts
local DNs), so ``hsds-backends backends`` lists this backend without it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from hsds_backends import hookimpl

from .backend import ContainersBackend

if TYPE_CHECKING:
    from collections.abc import Mapping

    from hsds_backends.model import Backend


@hookimpl
def hsds_backends_backend_classes() -> list[type[Backend]]:
    return [ContainersBackend]


@hookimpl
def hsds_backends_make_backend(name: str, config: Mapping[str, Any]) -> Backend | None:
    if name == ContainersBackend.name:
        return ContainersBackend(config)
    return None
