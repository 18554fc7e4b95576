"""``hsds-backends demo``: the main job on the embedded default.

Writes a sample domain (HSDS layout, posix storage) into a local folder, then
reads a few selections through every installed backend and reports time,
MB/s (points per second for the point read), and whether each result is byte-identical to a
numpy oracle.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from typing import Any, Final

import numpy as np

from .api import Reader
from .errors import StorageError
from .plugins import backend_names
from .storage import PosixStorage
from .writer import Writer

__all__ = ["DEMO_BUCKET", "DEMO_DOMAIN", "demo_dir_problem", "run_demo", "sample_data"]

DEMO_DOMAIN = "/home/demo/sample.h5"
DEMO_BUCKET = "hsdstest"

# What the demo writes into its bucket (docs/hsds-format.md §1: domains under home/, objects
# under db/): a bucket holding anything else is someone's data, never replaced.
_DEMO_TOP: Final = frozenset({"home", "db"})
_DEMO_HOME_DIRS: Final = {"home": {"demo"}, os.path.join("home", "demo"): {"sample.h5"}, os.path.join("home", "demo", "sample.h5"): set()}


def sample_data(size: int) -> dict[str, np.ndarray[Any, Any]]:
    """Return the oracle arrays of the demo domain (deterministic)."""
    rng = np.random.default_rng(42)
    grid = (np.add.outer(np.arange(size, dtype=np.float32), np.arange(size, dtype=np.float32) * 0.5) + rng.random((size, size), dtype=np.float32))
    n = 200_000
    table = np.zeros(n, dtype=[("id", "<i8"), ("temp", "<f4"), ("station", "S8")])
    table["id"] = np.arange(n)
    table["temp"] = rng.normal(15, 8, n).astype("<f4")
    table["station"] = np.array([b"ST%04d" % i for i in range(100)])[rng.integers(0, 100, n)]
    return {"grid": grid.astype("<f4"), "table": table}


async def _write(root_dir: str, size: int) -> None:
    st = PosixStorage(root_dir)
    w = Writer(st, DEMO_BUCKET, owner="demo")
    data = sample_data(size)
    await w.create_dataset(DEMO_DOMAIN, "/grid", data["grid"], chunks=(256, 256), filters=["shuffle", ("gzip", 4)], fillvalue=-1.0)
    await w.create_dataset(DEMO_DOMAIN, "/table", data["table"], chunks=(25_000,), filters=[("gzip", 4)])


def demo_dir_problem(root_dir: str) -> str | None:
    """Why ``root_dir`` cannot take the demo (``None``: it can), creating it if missing.

    The demo replaces ``root_dir/hsdstest``; it refuses one that holds anything but a
    previous demo's domain, so a folder of real HSDS data is never deleted.
    """
    try:
        os.makedirs(root_dir, exist_ok=True)
    except OSError as exc:
        return f"cannot create the demo folder {root_dir!r}: {exc.strerror or exc}; choose another folder"
    bucket = os.path.join(root_dir, DEMO_BUCKET)
    if not os.path.lexists(bucket):
        return None
    foreign = f"{bucket!r} holds data the demo did not write; choose an empty folder (the demo replaces its {DEMO_BUCKET} bucket)"
    if os.path.islink(bucket) or not os.path.isdir(bucket) or not set(os.listdir(bucket)) <= _DEMO_TOP:
        return foreign
    home = os.path.join(bucket, "home")
    for dirpath, dirnames, filenames in os.walk(home):
        rel = os.path.relpath(dirpath, bucket)
        if rel not in _DEMO_HOME_DIRS or not set(dirnames) <= _DEMO_HOME_DIRS[rel] or not set(filenames) <= {".domain.json"}:
            return foreign
    return None


def run_demo(root_dir: str, *, size: int = 2048, only: list[str] | None = None, echo: Callable[[str], None] = print) -> bool:
    """Write the sample domain under ``root_dir`` and read it through each backend. Return True if all match.

    Raises
    ------
    StorageError
        ``root_dir`` cannot be created, or its ``hsdstest`` bucket holds data the demo did
        not write (see :func:`demo_dir_problem`).
    """
    problem = demo_dir_problem(root_dir)
    if problem is not None:
        raise StorageError(problem)
    t0 = time.perf_counter()
    if os.path.isdir(os.path.join(root_dir, DEMO_BUCKET)):
        import shutil

        shutil.rmtree(os.path.join(root_dir, DEMO_BUCKET))
    asyncio.run(_write(root_dir, size))
    data = sample_data(size)
    grid, table = data["grid"], data["table"]
    echo(f"wrote {DEMO_DOMAIN} under {root_dir}/hsdstest in {time.perf_counter() - t0:.2f} s "
         f"(grid float32 {size}x{size}, 256x256 chunks, gzip+shuffle; table {len(table):,} rows)")
    rng = np.random.default_rng(7)
    pts = np.stack([rng.integers(0, size, 1000), rng.integers(0, size, 1000)], axis=1)
    mask = table["temp"] > 20
    expected_rows = np.nonzero(mask)[0]
    workloads: list[tuple[str, Any, np.ndarray[Any, Any]]] = [
        ("full grid", lambda d: d["grid"].read(), grid),
        ("grid[::4, 100:900]", lambda d: d["grid"].read(np.s_[::4, 100:900]), grid[::4, 100:900]),
        ("one chunk", lambda d: d["grid"].read("[256:512,0:256]"), grid[256:512, 0:256]),
        ("1000 points", lambda d: d["grid"].read_points(pts), grid[tuple(pts.T)]),
        ("query temp > 20", lambda d: d["table"].query("temp > 20"), expected_rows),
    ]
    names = only or [*backend_names(), "auto"]
    ok = True

    async def go() -> None:
        nonlocal ok
        async with Reader({"root_dir": root_dir, "bucket_name": DEMO_BUCKET, "backend": "auto"}) as reader:
            dom = await reader.open(DEMO_DOMAIN)
            dsets = {"grid": await dom.get("/grid"), "table": await dom.get("/table")}
            echo(f"{'backend':<11} {'workload':<20} {'time':>9} {'rate':>14}  identical")
            for name in names:
                for label, fn, exp in workloads:
                    t = time.perf_counter()
                    try:
                        res = await fn({k: _Bound(v, None if name == "auto" else name) for k, v in dsets.items()})
                    except Exception as exc:  # noqa: BLE001 - report and go on to the next backend
                        echo(f"{name:<11} {label:<20} failed: {type(exc).__name__}: {exc}")
                        ok = False
                        continue
                    dt = time.perf_counter() - t
                    out = res.data
                    if label.startswith("query"):
                        same = np.array_equal(out["index"], exp) and out.tobytes() == _rows(table, exp).tobytes()
                        nbytes = out.nbytes
                    else:
                        same = out.dtype == exp.dtype and out.shape == exp.shape and out.tobytes() == exp.tobytes()
                        nbytes = exp.nbytes
                    ok &= same
                    # points are few bytes each: points per second says more than MB/s
                    rate = f"{len(out) / dt:9,.0f} pt/s" if label.endswith("points") else f"{nbytes / dt / 1e6:9.1f} MB/s"
                    echo(f"{name:<11} {label:<20} {dt * 1e3:8.1f}ms {rate:>14}  {'yes' if same else 'NO'}")
                    if name == "auto":
                        echo(f"{'':<11} └ chose {res.stats.backend}: {res.stats.reason}")
    asyncio.run(go())
    echo("all results byte-identical to the numpy oracle" if ok else "MISMATCH: some results differ from the oracle")
    return ok


def _rows(table: np.ndarray[Any, Any], idx: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    from .tasks import query_dtype

    qdt = query_dtype(table.dtype, None)
    out = np.empty(len(idx), dtype=qdt)
    out["index"] = idx
    for f in table.dtype.names or ():
        out[f] = table[f][idx]
    return out


class _Bound:
    """A dataset whose reads all go to one backend (``None``: the selector picks)."""

    def __init__(self, dset: Any, backend: str | None) -> None:
        self._d = dset
        self._b = backend

    async def read(self, sel: Any = None) -> Any:
        return await self._d.read_result(sel, backend=self._b)

    async def read_points(self, pts: Any) -> Any:
        return await self._d.read_points_result(pts, backend=self._b)

    async def query(self, q: str) -> Any:
        return await self._d.query_result(q, backend=self._b)
