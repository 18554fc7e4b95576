"""Hook implementations of the ``lambda`` backend (entry point ``lambda`` in group ``hsds_backends``).

Only hookimpls live here, and importing this module stays cheap: the backend module imports
aiobotocore and aiohttp only when a backend starts (docs/architecture.md §2).
"""

from __future__ import annotations

from hsds_backends.plugins import backend_hooks

hsds_backends_backend_classes, hsds_backends_make_backend = backend_hooks("lambda", "hsds_backends_lambda.backend:LambdaBackend")
