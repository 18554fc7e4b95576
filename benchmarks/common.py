"""Names every module of the benchmark shares: the domain, the query, the workloads and the column titles.

Standard library only, like :mod:`timing`: dask's spawned workers re-run the top level of the
benchmark's main module, and whatever it imports costs every worker start-up.
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
BENCH_DIR = Path(__file__).resolve().parent

#: Bucket and domain of the generated HSDS data (the bucket is ``<hsds root>/bench``).
BUCKET = "bench"
DOMAIN = "/home/test_user1/bench.h5"
OWNER = "test_user1"
QUERY = "temp > 20"

#: (key, label) of each workload, in table order.
WORKLOADS: tuple[tuple[str, str], ...] = (
    ("full_cold", "full read (cold, 1st)"),
    ("full", "full read (warm)"),
    ("stepped", "[::4, 1000:3000]"),
    ("chunk", "one chunk"),
    ("points", "1000 random points"),
    ("query", f"query {QUERY}"),
)

#: The workloads timed best-of-N (``full_cold`` is the single first read), in the order they run.
#: Each is also the name of the method that runs it on a system (see :mod:`systems.base`).
WORKLOADS_TIMED: tuple[str, ...] = ("full", "stepped", "chunk", "points", "query")

#: Column titles of the systems that are not hsds-backends backends.
HSDS_NAME = "HSDS h5pyd"
ZARR_NAME = "zarr-python"
TS_NAME = "TensorStore"
DASK_ARRAY_NAME = "dask.array.from_zarr"

#: Column title of the selector (reads with ``backend=None``), also the ``backend`` config value that enables it.
AUTO = "auto"


def echo(msg: str) -> None:
    """Print a progress message on stderr (the report goes to stdout)."""
    print(msg, file=sys.stderr, flush=True)


def error_note(exc: BaseException) -> str:
    """Return the note of a cell whose call raised ``exc`` (cut to 300 characters)."""
    return f"error: {type(exc).__name__}: {exc}"[:300]


def dist_version(name: str) -> str:
    """Return the installed version of distribution ``name`` (``"?"`` if unknown)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return "?"


def module_available(name: str) -> bool:
    """Return whether module ``name`` can be imported (without importing it)."""
    import importlib.util

    return importlib.util.find_spec(name) is not None
