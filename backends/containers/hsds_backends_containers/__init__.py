"""hsds-backends-containers: chunk reads on HSDS-compatible data-node (DN) services.

The backend (entry point ``containers`` in group ``hsds_backends``) partitions a
read's chunk tasks over DN URLs exactly as HSDS does and streams the results
back. By default it starts one local DN process per core; with config
``dn_urls`` it talks to DNs that already run (containers, Kubernetes pods, or
the DNs of a real HSDS). The DN service itself is ``hsds-backends dn serve``.

Importing this package imports neither aiohttp nor numpy-heavy modules.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._version import __version__

__all__ = ["ContainersBackend", "DataNode", "__version__"]

if TYPE_CHECKING:
    from .backend import ContainersBackend
    from .service import DataNode


def __getattr__(name: str) -> Any:
    if name == "ContainersBackend":
        from .backend import ContainersBackend

        return ContainersBackend
    if name == "DataNode":
        from .service import DataNode

        return DataNode
    raise AttributeError(f"module 'hsds_backends_containers' has no attribute {name!r}")
