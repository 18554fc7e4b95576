"""Hook implementations of the ``lambda`` backend (entry point ``lambda`` in group ``hsds_backends``).

Only hookimpls live here, and importing this module stays cheap: the backend module imports
aiobotocore and aiohttp only when a backend starts (docs/architecture.md §2).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from hsds_backends import hookimpl

if TYPE_CHECKING:
    from collections.abc import Mapping

    from hsds_backends.model import Backend


@hookimpl
def hsds_backends_backend_classes() -> list[type[Backend]]:
    from .backend import LambdaBackend

    return [LambdaBackend]


@hookimpl
def hsds_backends_make_backend(name: str, config: Mapping[str, Any]) -> Backend | None:
    if name != "lambda":
        return None
    from .backend import LambdaBackend

    return LambdaBackend(config)
