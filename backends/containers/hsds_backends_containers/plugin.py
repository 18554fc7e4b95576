"""Hook implementations of the ``containers`` backend (entry point ``containers`` in group ``hsds_backends``).

Cheap to import: the client (:mod:`.backend` and what it uses) needs no aiohttp; the
DN service, which does, is imported only where a DN runs (and when a backend starts
local DNs), so ``hsds-backends backends`` lists this backend without it.
"""

from __future__ import annotations

from hsds_backends.plugins import backend_hooks

hsds_backends_backend_classes, hsds_backends_make_backend = backend_hooks("containers", "hsds_backends_containers.backend:ContainersBackend")
