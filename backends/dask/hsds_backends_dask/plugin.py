"""Hook implementations of the ``dask`` backend (entry point ``dask`` in group ``hsds_backends``).

Cheap to import: :mod:`.backend` imports dask and distributed only when a backend
starts, so ``hsds-backends backends`` lists this backend without importing dask.
"""

from __future__ import annotations

from hsds_backends.plugins import backend_hooks

hsds_backends_backend_classes, hsds_backends_make_backend = backend_hooks("dask", "hsds_backends_dask.backend:DaskBackend")
