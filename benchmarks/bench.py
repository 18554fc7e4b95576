#!/usr/bin/env python
"""Reproducible benchmark: hsds-backends vs real HSDS (h5pyd), zarr-python and TensorStore.

One command::

    python benchmarks/bench.py [--backends inline,...] [--repeat N] [--data-dir DIR]
                               [--skip-hsds] [--skip-zarr] [--skip-tensorstore] [--skip-dask-array]
                               [--skip-auto] [--json out.json] [--small]

Data (generated once, cached in ``--data-dir``, default ``<repo>/bench-data``):

* ``/grid``: float32 8192x8192, 512x512 chunks, filters ``shuffle`` + ``gzip`` level 4,
  stored as HSDS stores it (a Blosc container with internal zlib per chunk), written by
  :class:`hsds_backends.writer.Writer`. Values: a smooth field plus noise, rounded to
  0.01 like sensor data, so chunks compress like real data (about 2.7x).
* ``/table``: 4 million rows of ``[('id','<i8'), ('temp','<f4'), ('station','S8')]``,
  250k-row chunks, same filters; ``temp ~ N(15, 8)`` so about 27% of rows match ``temp > 20``.
* A zarr v3 copy of the grid (Blosc zlib level 4 + byte shuffle, same chunks), written by
  zarr-python, read by zarr-python and by TensorStore.

Workloads: full read (first read of a fresh client = "cold", then best of N = "warm"),
``[::4, 1000:3000]``, one chunk, 1000 random points, and the query ``temp > 20``.
Systems: every installed hsds-backends backend (``inline``, ...) through one async
:class:`hsds_backends.Reader`, and ``auto`` (the selector) in that same reader, each workload
after the backends, so it chooses from the latencies their reads measured, as a long-running
service would (:func:`bench_backends`); real HSDS 1.0.2 via h5pyd (on the very files our writer
wrote), zarr-python and TensorStore. Each timing is the best of ``--repeat`` runs after one
warm-up; every result is compared byte for byte with a numpy oracle. The table shows
seconds and the speed-up versus a baseline measured in the same run (HSDS via h5pyd when it
ran, else zarr-python).

Exit status: 0 when every hsds-backends result matched the oracle, 1 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import hashlib
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
#: Bump when the generated data (values, layout, domain names) changes.
DATA_VERSION = 1
BUCKET = "bench"
DOMAIN = "/home/test_user1/bench.h5"
OWNER = "test_user1"
FILTERS: list[Any] = ["shuffle", ("gzip", 4)]
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

#: Shortest warm-up of an hsds-backends system before its timed calls of a workload: one call,
#: repeated until this long has passed. What the previous system leaves running for a few
#: milliseconds (the dask scheduler and workers settling after a gather) otherwise lands on the
#: next system's timed calls of a short workload: one chunk read +15-30% after dask.
WARMUP_S = 0.2

#: Timed calls go on past ``--repeat`` until they add up to this long (at most ``MAX_RUNS``), as
#: ``timeit``'s autorange does: a read of a few milliseconds is then the best of dozens of calls,
#: not of three, for every system alike, and the machine's noise no longer decides the ratios.
MIN_TIMED_S = 0.5
MAX_RUNS = 100


def more_runs(done: int, timed_s: float, repeat: int) -> bool:
    """Whether to time another call after ``done`` calls that took ``timed_s`` in all."""
    return done < repeat or (timed_s < MIN_TIMED_S and done < MAX_RUNS)


#: The workloads timed best-of-N (``full_cold`` is the single first read).
WORKLOADS_TIMED: tuple[str, ...] = ("full", "stepped", "chunk", "points", "query")

HSDS_NAME = "HSDS h5pyd"
ZARR_NAME = "zarr-python"
TS_NAME = "TensorStore"
DASK_ARRAY_NAME = "dask.array.from_zarr"


# ----------------------------------------------------------------------------- data model


@dataclass(frozen=True)
class Profile:
    """Sizes of the generated data.

    Attributes
    ----------
    name : str
        ``"full"`` or ``"small"``; also the sub-folder of the data dir.
    grid_size : int
        The grid is ``grid_size`` x ``grid_size`` float32.
    grid_chunk : int
        Square chunk edge of the grid.
    rows : int
        Rows of the table.
    table_chunk : int
        Rows per table chunk.
    n_points : int
        Random points read.
    seed : int
        Seed of every random number used.
    """

    name: str
    grid_size: int
    grid_chunk: int
    rows: int
    table_chunk: int
    n_points: int = 1000
    seed: int = 20240601


FULL = Profile("full", 8192, 512, 4_000_000, 250_000)
SMALL = Profile("small", 2048, 512, 400_000, 50_000)


@dataclass
class BenchData:
    """Paths of one generated data set and its numpy oracle.

    Attributes
    ----------
    profile : Profile
        What was generated.
    root : pathlib.Path
        Folder of this profile inside the data dir.
    hsds_root : pathlib.Path
        HSDS ``root_dir`` (the bucket is ``hsds_root / BUCKET``).
    zarr_path : pathlib.Path
        The zarr v3 copy of the grid.
    grid, table : numpy.ndarray
        The oracle arrays.
    generated_seconds : float
        Time spent generating the data in this run (0 when it was cached).
    """

    profile: Profile
    root: Path
    hsds_root: Path
    zarr_path: Path
    grid: np.ndarray
    table: np.ndarray
    generated_seconds: float = 0.0

    @property
    def zarr_ready(self) -> bool:
        """Whether the zarr copy exists (zarr-python may be missing at generation time)."""
        return (self.zarr_path / "zarr.json").exists()


@dataclass(frozen=True)
class Selections:
    """The selections of the workloads (numpy indices into the grid, points, query).

    Attributes
    ----------
    stepped, chunk : tuple of slice
        ``[::4, 1000:3000]`` and one whole chunk (chunk index (1, 1)).
    points : numpy.ndarray
        ``(n, 2)`` int64 coordinates.
    """

    stepped: tuple[slice, slice]
    chunk: tuple[slice, slice]
    points: np.ndarray

    @classmethod
    def for_profile(cls, p: Profile) -> Selections:
        """Build the selections of profile ``p`` (points are deterministic)."""
        rng = np.random.default_rng(p.seed + 1)
        pts = rng.integers(0, p.grid_size, size=(p.n_points, 2), dtype=np.int64)
        c, n = p.grid_chunk, p.grid_size
        # numpy clips slices to the shape, TensorStore does not: store them clipped
        stepped = tuple(slice(*s.indices(n)) for s in np.s_[::4, 1000:3000])
        return cls(stepped, np.s_[c : 2 * c, c : 2 * c], pts)  # type: ignore[arg-type]


@dataclass
class Measurement:
    """One cell of the table.

    Attributes
    ----------
    seconds : float or None
        Best-of-N wall time (the single first read for ``full_cold``); ``None`` when not run.
    ok : bool or None
        Result byte-identical to the oracle; ``None`` when not checked or not run.
    note : str
        Why there is no figure (``"n/a"``, an error), or a remark.
    """

    seconds: float | None = None
    ok: bool | None = None
    note: str = ""


@dataclass
class SystemRun:
    """All measurements of one system.

    Attributes
    ----------
    name : str
        Column title (``inline``, ``HSDS h5pyd``, ...).
    ours : bool
        An hsds-backends backend (a mismatch fails the run).
    cells : dict
        Workload key -> :class:`Measurement`.
    error : str
        Set when the system could not run at all.
    notes : list of str
        Remarks printed under the table.
    info : dict
        Versions, memory figures and similar extras.
    """

    name: str
    ours: bool = False
    cells: dict[str, Measurement] = field(default_factory=dict)
    error: str = ""
    notes: list[str] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class Report:
    """Everything one run measured (``--json`` writes it)."""

    profile: Profile
    repeat: int
    machine: dict[str, Any]
    data: dict[str, Any]
    baseline: str
    systems: list[SystemRun]
    seconds_total: float = 0.0


# ----------------------------------------------------------------------------- data


def make_grid(p: Profile) -> np.ndarray:
    """Return the oracle grid: smooth field + gaussian noise, rounded to 0.01 (float32).

    Parameters
    ----------
    p : Profile
        Sizes and seed.

    Returns
    -------
    numpy.ndarray
        ``(grid_size, grid_size)`` little-endian float32, C order.
    """
    n = p.grid_size
    rng = np.random.default_rng(p.seed)
    y = np.linspace(0.0, 1.0, n, dtype=np.float32)
    x = y
    grid = np.sin(np.float32(2 * np.pi * 3) * y)[:, None] * np.cos(np.float32(2 * np.pi * 2) * x)[None, :]
    grid *= np.float32(8)
    grid += (np.float32(15) + np.float32(6) * y)[:, None]
    grid -= (np.float32(4) * x)[None, :]
    grid += rng.standard_normal((n, n), dtype=np.float32) * np.float32(0.3)
    grid *= np.float32(100)
    np.round(grid, out=grid)
    grid /= np.float32(100)
    return grid.astype("<f4", copy=False)


def make_table(p: Profile) -> np.ndarray:
    """Return the oracle table: ids, temperatures ~ N(15, 8) and 100 station names.

    Parameters
    ----------
    p : Profile
        Sizes and seed.

    Returns
    -------
    numpy.ndarray
        Structured array ``[('id','<i8'), ('temp','<f4'), ('station','S8')]``.
    """
    rng = np.random.default_rng(p.seed + 2)
    t = np.empty(p.rows, dtype=[("id", "<i8"), ("temp", "<f4"), ("station", "S8")])
    t["id"] = np.arange(p.rows, dtype=np.int64)
    t["temp"] = rng.normal(15.0, 8.0, p.rows).astype("<f4")
    stations = np.array([b"ST%04d" % i for i in range(100)], dtype="S8")
    t["station"] = stations[rng.integers(0, 100, p.rows)]
    return t


def data_stamp(p: Profile) -> dict[str, Any]:
    """Return what the cached data depends on; a difference triggers regeneration.

    Includes a hash of the writer and codec sources, so a change to how chunks are written
    regenerates the HSDS domain.
    """
    h = hashlib.sha256()
    for mod in ("writer.py", "codecs.py", "dtypes.py", "ids.py"):
        src = REPO_ROOT / "hsds_backends" / mod
        if src.exists():
            h.update(src.read_bytes())
    return {
        "version": DATA_VERSION,
        "profile": asdict(p),
        "writer_sha256": h.hexdigest()[:16],
        "numpy": np.__version__.split(".")[0],
    }


async def _write_domain(hsds_root: Path, grid: np.ndarray, table: np.ndarray, p: Profile) -> None:
    from hsds_backends.storage import PosixStorage
    from hsds_backends.writer import Writer

    st = PosixStorage(str(hsds_root))
    try:
        w = Writer(st, BUCKET, owner=OWNER)
        await w.create_dataset(DOMAIN, "/grid", grid, chunks=(p.grid_chunk, p.grid_chunk), filters=FILTERS)
        await w.create_dataset(DOMAIN, "/table", table, chunks=(p.table_chunk,), filters=FILTERS)
    finally:
        await st.aclose()


def write_zarr_copy(path: Path, grid: np.ndarray, p: Profile) -> None:
    """Write the grid as a zarr v3 array (Blosc zlib level 4 + shuffle, same chunks).

    Parameters
    ----------
    path : pathlib.Path
        Array folder (replaced if present).
    grid : numpy.ndarray
        Data.
    p : Profile
        Chunk size.
    """
    import zarr
    from zarr.codecs import BloscCodec

    if path.exists():
        shutil.rmtree(path)
    arr = zarr.create_array(
        store=str(path),
        shape=grid.shape,
        chunks=(p.grid_chunk, p.grid_chunk),
        dtype=grid.dtype,
        compressors=BloscCodec(cname="zlib", clevel=4, shuffle="shuffle"),
        fill_value=0.0,
        zarr_format=3,
    )
    arr[...] = grid


def ensure_data(data_dir: Path, p: Profile, *, want_zarr: bool, echo: Callable[[str], None]) -> BenchData:
    """Generate the data of profile ``p`` under ``data_dir/p.name`` unless cached.

    Parameters
    ----------
    data_dir : pathlib.Path
        Cache root.
    p : Profile
        What to generate.
    want_zarr : bool
        Also write the zarr copy (needs zarr-python).
    echo : callable
        Progress messages.

    Returns
    -------
    BenchData
        Paths and oracle arrays.
    """
    root = (data_dir / p.name).absolute()
    stamp_path = root / "stamp.json"
    stamp = data_stamp(p)
    hsds_root, zarr_path, oracle = root / "hsds", root / "zarr" / "grid.zarr", root / "oracle"
    t0 = time.perf_counter()
    cached = stamp_path.exists() and json.loads(stamp_path.read_text()) == stamp
    if not cached:
        echo(f"generating {p.name} data in {root} ...")
        if root.exists():
            shutil.rmtree(root)
        (hsds_root / BUCKET).mkdir(parents=True)
        oracle.mkdir(parents=True)
        grid, table = make_grid(p), make_table(p)
        np.save(oracle / "grid.npy", grid)
        np.save(oracle / "table.npy", table)
        asyncio.run(_write_domain(hsds_root, grid, table, p))
        stamp_path.write_text(json.dumps(stamp, indent=1))
    else:
        grid, table = np.load(oracle / "grid.npy"), np.load(oracle / "table.npy")
    if want_zarr and not (zarr_path / "zarr.json").exists():
        echo("writing the zarr copy ...")
        write_zarr_copy(zarr_path, grid, p)
    spent = time.perf_counter() - t0 if not cached else 0.0
    return BenchData(p, root, hsds_root, zarr_path, grid, table, spent)


def dir_bytes(path: Path) -> int:
    """Return the total size of the files under ``path`` (0 if it does not exist)."""
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.exists() else 0


def stored_chunk_bytes(hsds_root: Path) -> dict[str, int]:
    """Return the stored chunk bytes of ``grid`` (rank 2) and ``table`` (rank 1) in the bench bucket."""
    out: dict[str, int] = {}
    for dj in (hsds_root / BUCKET).rglob(".dataset.json"):
        rank = len(json.loads(dj.read_text()).get("shape", {}).get("dims", []))
        name = {2: "grid", 1: "table"}.get(rank)
        if name:
            out[name] = sum(
                f.stat().st_size for f in dj.parent.rglob("*") if f.is_file() and not f.name.startswith(".")
            )
    return out


def expected_results(data: BenchData, sel: Selections) -> dict[str, np.ndarray]:
    """Return the oracle answer of every workload.

    ``query`` is the hsds-backends form (``index`` then the fields); ``query_rows`` the plain
    matching rows, as HSDS returns them.
    """
    from hsds_backends.tasks import query_dtype

    grid, table = data.grid, data.table
    idx = np.nonzero(table["temp"] > 20)[0]
    rows = np.empty(len(idx), dtype=query_dtype(table.dtype, None))
    rows["index"] = idx
    for f in table.dtype.names or ():
        rows[f] = table[f][idx]
    return {
        "full": grid,
        "stepped": grid[sel.stepped],
        "chunk": grid[sel.chunk],
        "points": grid[sel.points[:, 0], sel.points[:, 1]],
        "query": rows,
        "query_rows": table[idx],
    }


def identical(got: Any, exp: np.ndarray) -> bool:
    """Return True when ``got`` has the dtype, shape and bytes of ``exp``."""
    a = np.asarray(got)
    return a.dtype == exp.dtype and a.shape == exp.shape and a.tobytes() == exp.tobytes()


# ----------------------------------------------------------------------------- timing


def time_best(fn: Callable[[], Any], repeat: int, *, result: Any = None) -> tuple[float, Any]:
    """Return the best of ``repeat`` timed calls of ``fn`` and the warm-up's result.

    Parameters
    ----------
    fn : callable
        The workload.
    repeat : int
        Timed calls.
    result : object, optional
        The result of a call already made (it then serves as the warm-up); default: one
        untimed warm-up call is made first.
    """
    if result is None:
        result = fn()
    best, total, n = math.inf, 0.0, 0
    while more_runs(n, total, repeat):
        t = time.perf_counter()
        fn()
        dt = time.perf_counter() - t
        best, total, n = min(best, dt), total + dt, n + 1
    return best, result


def _timed_cells(
    run: SystemRun,
    ops: dict[str, Callable[[], Any]],
    expected: dict[str, np.ndarray],
    repeat: int,
) -> None:
    """Fill ``run.cells`` by timing each of ``ops``.

    ``full`` also gets the ``full_cold`` cell: its first call, which then serves as its warm-up.
    """
    for key, fn in ops.items():
        try:
            first = None
            if key == "full":
                t = time.perf_counter()
                first = fn()
                run.cells["full_cold"] = Measurement(time.perf_counter() - t, identical(first, expected["full"]))
            best, res = time_best(fn, repeat, result=first)
            run.cells[key] = Measurement(best, identical(res, expected[key]))
            del first, res
        except Exception as exc:  # noqa: BLE001 - record and go on with the next workload
            run.cells[key] = Measurement(note=f"error: {type(exc).__name__}: {exc}"[:300])


# ----------------------------------------------------------------------------- hsds-backends


_MEMORY_PROBE = r"""
import asyncio, gc, json, sys
from hsds_backends.api import Reader

def kib(name):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(name + ":"):
                return int(line.split()[1])

async def main(root, bucket, domain, backend):
    async with Reader({"root_dir": root, "bucket_name": bucket, "backend": backend}) as reader:
        dset = await (await reader.open(domain)).get("/grid")
        await dset.read(tuple(slice(0, c) for c in dset.chunks), backend=backend)  # imports, pools
        gc.collect()
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset VmHWM to the current RSS
        base = kib("VmRSS")
        out = await dset.read(None, backend=backend)
        peak = kib("VmHWM")
        print(json.dumps({"base_kib": base, "peak_kib": peak, "output_bytes": out.nbytes}))

asyncio.run(main(*sys.argv[1:]))
"""


def measure_memory(data: BenchData, backend: str) -> dict[str, Any]:
    """Return the peak-memory figures of one full read on ``backend`` (untimed).

    Two figures: the peak RSS growth of a full read in a fresh interpreter (Linux
    ``VmHWM`` after resetting it through ``/proc/self/clear_refs``; the fresh process keeps
    earlier reads' freed memory out of the figure), and the ``tracemalloc`` peak of a full
    read in this process (Python and numpy allocations, independent of the allocator).

    Parameters
    ----------
    data : BenchData
        Data set (the grid is read).
    backend : str
        Backend name.

    Returns
    -------
    dict
        ``output_mb``, ``peak_rss_delta_mb`` (``None`` if unmeasurable) and ``tracemalloc_peak_mb``.
    """
    from hsds_backends import open_domain

    info: dict[str, Any] = {"output_mb": data.grid.nbytes / 2**20, "peak_rss_delta_mb": None}
    proc = subprocess.run(
        [sys.executable, "-c", _MEMORY_PROBE, str(data.hsds_root), BUCKET, DOMAIN, backend],
        check=False,
        capture_output=True,
        text=True,
        timeout=600,
    )
    if proc.returncode == 0:
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        info["peak_rss_delta_mb"] = (r["peak_kib"] - r["base_kib"]) / 1024
    else:
        info["rss_error"] = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"rc {proc.returncode}"
    with open_domain(DOMAIN, root_dir=str(data.hsds_root), bucket=BUCKET) as dom:
        grid = dom["/grid"]
        grid.read(tuple(slice(0, c) for c in grid.chunks), backend=backend)
        gc.collect()
        tracemalloc.start()
        try:
            out = grid.read(None, backend=backend)
            info["tracemalloc_peak_mb"] = tracemalloc.get_traced_memory()[1] / 2**20
        finally:
            tracemalloc.stop()
        del out
    return info


AUTO = "auto"


def reader_config(data: BenchData) -> dict[str, Any]:
    """Return the config of the benchmark's :class:`hsds_backends.Reader`.

    ``backend: auto`` so that reads without an explicit backend go to the selector, and
    ``dn_count`` = this machine's cores, which configures the embedded data nodes — the
    same number the ``containers`` backend starts by default — so that ``containers`` is an
    auto candidate (an embedded backend without ``dn_count``/``dn_urls`` is not configured
    for automatic use).
    """
    from hsds_backends.model import default_workers

    return {"root_dir": str(data.hsds_root), "bucket_name": BUCKET, "backend": AUTO, "dn_count": default_workers()}


def _ops(grid: Any, table: Any, sel: Selections, backend: str | None) -> dict[str, Callable[[], Awaitable[Any]]]:
    """Return the workloads as ``read_result`` calls on ``backend`` (``None``: the selector chooses)."""
    return {
        "full": lambda: grid.read_result(None, backend=backend),
        "stepped": lambda: grid.read_result(sel.stepped, backend=backend),
        "chunk": lambda: grid.read_result(sel.chunk, backend=backend),
        "points": lambda: grid.read_points_result(sel.points, backend=backend),
        "query": lambda: table.query_result(QUERY, backend=backend),
    }


async def _time_cold(run: SystemRun, op: Callable[[], Awaitable[Any]], expected: dict[str, np.ndarray]) -> None:
    """Time the backend's first full read into ``run``'s ``full_cold`` cell (it starts DNs, clusters, runtimes)."""
    try:
        t = time.perf_counter()
        res = await op()
        run.cells["full_cold"] = Measurement(time.perf_counter() - t, identical(res.data, expected["full"]))
    except Exception as exc:  # noqa: BLE001
        run.cells["full_cold"] = Measurement(ok=False, note=f"error: {type(exc).__name__}: {exc}"[:300])


async def _time_workload_major(
    systems: Sequence[tuple[SystemRun, dict[str, Callable[[], Awaitable[Any]]]]],
    expected: dict[str, np.ndarray],
    repeat: int,
) -> dict[str, dict[str, list[Any]]]:
    """Fill each system's cells, one workload at a time: every system in turn, best of ``repeat`` after a warm-up.

    Workload-major order — all systems do the full read, then all do the stepped read, … —
    with the systems in the given order (the backends, then ``auto``): ``auto``'s first read of
    a workload follows every backend's, and the runs compared in one row are seconds apart, not
    a minute, so a shared machine's slow and fast moments fall less on one column. Each
    system's own runs stay back to back: its warm-up (one call, repeated for at least
    :data:`WARMUP_S`), then ``repeat`` timed calls. The first warm-up result is checked against
    the oracle. Returns, per system and workload, the ``RequestStats`` of every call, warm-up
    first.
    """
    seen: dict[str, dict[str, list[Any]]] = {run.name: {} for run, _ in systems}
    for key in WORKLOADS_TIMED:
        for run, ops in systems:
            stats = seen[run.name].setdefault(key, [])

            async def fn(op: Callable[[], Awaitable[Any]] = ops[key], stats: list[Any] = stats) -> Any:
                res = await op()
                stats.append(res.stats)
                return res.data

            try:
                warm_until = time.perf_counter() + WARMUP_S
                first = await fn()
                ok = identical(first, expected[key])
                del first
                while time.perf_counter() < warm_until:  # outlast what the previous system left running
                    await fn()
                best, total, n = math.inf, 0.0, 0
                while more_runs(n, total, repeat):
                    t = time.perf_counter()
                    await fn()
                    dt = time.perf_counter() - t
                    best, total, n = min(best, dt), total + dt, n + 1
                run.cells[key] = Measurement(best, ok)
            except Exception as exc:  # noqa: BLE001 - record and go on with the others
                run.cells[key] = Measurement(ok=False, note=f"error: {type(exc).__name__}: {exc}"[:300])
    return seen


async def _extras(name: str, reader: Any, grid: Any, table: Any, sel: Selections, expected: dict[str, np.ndarray], data: BenchData, repeat: int) -> list[str]:
    """Return the backend's own extra notes (containers: DN start-up, caches off; lambda: invoke overhead, AWS model)."""
    if name == "containers":  # DN start-up, cold-cache reads from running DNs, cache figures
        try:
            from hsds_backends_containers.bench import bench_extras as dn_extras

            return list(await dn_extras(reader, grid, sel.chunk, expected, repeat))
        except Exception as exc:  # noqa: BLE001
            return [f"containers extras failed: {type(exc).__name__}: {exc}"]
    if name == "lambda":  # per-invoke overhead and the AWS cost/latency model (hsds_backends_lambda.cost)
        try:
            from hsds_backends_lambda.cost import bench_extras

            return list(await bench_extras(reader, grid, table, sel, expected, data.hsds_root, BUCKET, QUERY))
        except Exception as exc:  # noqa: BLE001
            return [f"lambda extras failed: {type(exc).__name__}: {exc}"]
    return []


def _auto_notes(seen: dict[str, list[Any]]) -> list[str]:
    """Return one line per workload: which backends auto ran, and the last run's choice and reason."""
    notes = []
    for key, stats in seen.items():
        counts: dict[str, int] = {}
        for st in stats:
            counts[st.backend] = counts.get(st.backend, 0) + 1
        ran = ", ".join(f"{b} ×{n}" for b, n in counts.items()) + f" (of {len(stats)} reads, warm-up included)"
        last = stats[-1]
        notes.append(
            f"auto {key}: ran {ran}; last: {last.backend} in {last.seconds * 1e3:.1f} ms "
            f"(estimated {last.estimate_seconds * 1e3:.1f} ms) — {last.reason}"
        )
    return notes


async def _bench_backends_async(
    names: Sequence[str], with_auto: bool, data: BenchData, sel: Selections, expected: dict[str, np.ndarray], repeat: int
) -> list[SystemRun]:
    """Time every backend of ``names``, then ``auto``, in one :class:`hsds_backends.Reader`.

    1. Each backend's first read (a full read, explicit ``backend=name``) is its cold cell; it
       starts the backend (DN processes, the dask cluster, the Lambda runtime), which then stays up.
    2. The warm workloads, one at a time, each timed for every backend (``backend=name``) and
       then ``auto`` (``backend=None``) (:func:`_time_workload_major`). ``auto`` always reads
       after the backends, in the same reader: the selector has the latencies measured during
       their reads — as in an HSDS service that has been serving traffic — and every backend is
       up (DNs with warm chunk caches), for ``auto`` and the backends alike.
    3. Each backend's extras (containers: DN start-up and caches-off figures on separate DNs;
       lambda: invoke overhead, AWS model), then ``auto``'s choices and reasons.

    Only ``auto``'s cold cell comes from a fresh reader (see :func:`_auto_cold`).
    """
    from hsds_backends.api import Reader

    runs = [SystemRun(n, ours=True) for n in names]
    auto = SystemRun(AUTO, ours=True) if with_auto else None
    async with Reader(reader_config(data)) as reader:
        dom = await reader.open(DOMAIN)
        grid, table = await dom.get("/grid"), await dom.get("/table")
        for run in runs:
            echo(f"starting hsds-backends backend {run.name!r} (its cold read) ...")
            await _time_cold(run, _ops(grid, table, sel, run.name)["full"], expected)
        systems = [(run, _ops(grid, table, sel, run.name)) for run in runs]
        if auto is not None:
            systems.append((auto, _ops(grid, table, sel, None)))
        echo(f"timing {', '.join(r.name for r, _ in systems)}, workload by workload ...")
        seen = await _time_workload_major(systems, expected, repeat)
        if auto is not None:
            auto.notes.append(await _paired_regret(systems, repeat))
        for run in runs:
            run.notes.extend(await _extras(run.name, reader, grid, table, sel, expected, data, repeat))
        if auto is not None:
            auto.notes.extend(_auto_notes(seen[AUTO]))  # after the timed runs: no formatting inside them
    return [*runs, *([auto] if auto is not None else [])]


#: Rounds of the paired regret measurement (at least; short reads go on until 0.5 s each side).
PAIRED_ROUNDS = 10


async def _paired_regret(systems: Sequence[tuple[SystemRun, dict[str, Callable[[], Awaitable[Any]]]]], repeat: int) -> str:
    """Return the selector regret measured in pairs: ``auto`` and the fastest backend alternating.

    The table's cells are each system's best over its own run of calls; two such runs of the
    *same* backend seconds apart differ by up to ~20% on this machine for reads of a few to a few
    tens of ms, which swamps a 10% target. Here, per workload, ``auto`` and the backend with the
    fastest cell read alternately (which one goes first alternates too), at least
    :data:`PAIRED_ROUNDS` rounds and until each side has 0.5 s of calls; the regret is the ratio
    of their best calls. Both sides then see the same moments of the machine.
    """
    ops = {run.name: o for run, o in systems}
    cells = {run.name: run.cells for run, _ in systems}
    parts = []
    for key in WORKLOADS_TIMED:
        timed = [(c[key].seconds, name) for name, c in cells.items() if name != AUTO and key in c and c[key].seconds and c[key].ok]
        if not timed or AUTO not in ops:
            continue
        best_name = min(timed)[1]
        sides: dict[str, list[float]] = {AUTO: [], best_name: []}
        rnd = 0
        while rnd < PAIRED_ROUNDS or any(more_runs(len(t), sum(t), repeat) for t in sides.values()):
            order = (AUTO, best_name) if rnd % 2 else (best_name, AUTO)
            for name in order:
                t0 = time.perf_counter()
                await ops[name][key]()
                sides[name].append(time.perf_counter() - t0)
            rnd += 1
        parts.append(f"{key} {min(sides[AUTO]) / min(sides[best_name]):.2f} (vs {best_name}, {rnd} rounds)")
    return "selector regret, paired (auto and the fastest backend alternating; target <= 1.1): " + ", ".join(parts)


async def _auto_cold(data: BenchData, expected: dict[str, np.ndarray]) -> tuple[Measurement, str]:
    """Return auto's cold cell: the first full read of a fresh reader (nothing measured, nothing started)."""
    from hsds_backends.api import Reader

    async with Reader(reader_config(data)) as reader:
        grid = await (await reader.open(DOMAIN)).get("/grid")
        t = time.perf_counter()
        res = await grid.read_result(None)
        m = Measurement(time.perf_counter() - t, identical(res.data, expected["full"]))
        return m, f"auto full_cold (a fresh reader): {res.stats.backend} — {res.stats.reason}"


def regret_note(systems: list[SystemRun]) -> None:
    """Add the selector's regret (auto's time / the fastest backend's) per workload to the auto column."""
    auto = next((s for s in systems if s.name == AUTO), None)
    ours = [s for s in systems if s.ours and s.name != AUTO]
    if auto is None or not ours:
        return
    parts = []
    for key, m in auto.cells.items():
        times = [(s.cells[key].seconds, s.name) for s in ours if key in s.cells and s.cells[key].seconds]
        if m.seconds and times:
            best, who = min(times)
            parts.append(f"{key} {m.seconds / best:.2f} (best {who})")
    if parts:
        auto.notes.append("selector regret (auto / fastest backend, target <= 1.1): " + ", ".join(parts))


def bench_backends(
    names: Sequence[str],
    data: BenchData,
    sel: Selections,
    expected: dict[str, np.ndarray],
    repeat: int,
    *,
    with_auto: bool = True,
) -> list[SystemRun]:
    """Time the workloads of backends ``names`` (then ``auto``) through one async :class:`hsds_backends.Reader`.

    Parameters
    ----------
    names : sequence of str
        Installed backend names, timed in this order.
    data, sel, expected
        Data set, selections and oracle answers.
    repeat : int
        Timed runs per workload (after one warm-up).
    with_auto : bool
        Also time ``auto`` (the selector) after the backends, in the same reader.

    Returns
    -------
    list of SystemRun
        One per backend (one cell per workload, plus peak-memory figures of the full read in
        ``info``, measured afterwards in fresh readers and a fresh process), then ``auto``.
    """
    try:
        runs = asyncio.run(_bench_backends_async(names, with_auto, data, sel, expected, repeat))
    except Exception as exc:  # noqa: BLE001
        return [SystemRun(n, ours=True, error=f"{type(exc).__name__}: {exc}") for n in [*names, *([AUTO] if with_auto else [])]]
    for run in runs:
        if run.name == AUTO:
            if not run.error:
                try:
                    run.cells["full_cold"], note = asyncio.run(_auto_cold(data, expected))
                    run.notes.insert(0, note)
                except Exception as exc:  # noqa: BLE001
                    run.cells["full_cold"] = Measurement(ok=False, note=f"error: {type(exc).__name__}: {exc}"[:300])
            continue
        if run.error:
            continue
        echo(f"measuring the memory of a full read on {run.name!r} ...")
        try:
            run.info["memory"] = measure_memory(data, run.name)
        except Exception as exc:  # noqa: BLE001
            run.notes.append(f"memory measurement failed: {type(exc).__name__}: {exc}")
    return runs


# ----------------------------------------------------------------------------- real HSDS

_H5PYD_SCRIPT = r"""
import time, sys, numcodecs
from time import perf_counter

f = h5pyd.File(args["domain"], "r", **kw)
g, t = f["/grid"], f["/table"]
st = slice(*args["stepped"][0]), slice(*args["stepped"][1])
ch = slice(*args["chunk"][0]), slice(*args["chunk"][1])
pts = [tuple(p) for p in args["points"]]
nrows = t.shape[0]
ops = {
    "full": lambda: g[...],
    "stepped": lambda: g[st],
    "chunk": lambda: g[ch],
    "points": lambda: g.points[pts],
    # Table.read_where() is the documented call, but see "read_where" below
    "query": lambda: t.__getitem__((slice(0, nrows),), query=args["query"]),
}
out = {"cells": {}, "versions": {"h5pyd": h5pyd.version.version, "numpy": np.__version__,
                                  "numcodecs": numcodecs.__version__, "python": sys.version.split()[0]}}

def save(key, arr):
    path = _os.path.join(args["out_dir"], key + ".npy")
    np.save(path, np.asarray(arr))
    return path

for key, fn in ops.items():
    try:
        if key == "full":  # the first read after server start: cold, and the warm-up
            t0 = perf_counter(); res = fn(); cold = perf_counter() - t0
            npy = save(key, res)
            out["cells"]["full_cold"] = {"seconds": cold, "npy": npy}
        else:
            res = fn()  # warm-up
            npy = save(key, res)
        best, total, n = float("inf"), 0.0, 0  # the same rule as bench.more_runs
        while n < args["repeat"] or (total < args["min_timed_s"] and n < args["max_runs"]):
            t0 = perf_counter(); fn(); dt = perf_counter() - t0
            best, total, n = min(best, dt), total + dt, n + 1
        out["cells"][key] = {"seconds": best, "npy": npy}
        del res
    except Exception as exc:
        out["cells"][key] = {"error": "%s: %s" % (type(exc).__name__, str(exc)[:300])}

try:  # the documented query call, timed once, to report what it returns
    t0 = perf_counter(); n = sum(1 for _ in t.read_where(args["query"])); s = perf_counter() - t0
    out["read_where"] = {"rows": n, "seconds": s}
except Exception as exc:
    out["read_where"] = {"error": "%s: %s" % (type(exc).__name__, str(exc)[:300])}
f.close()
emit(out)
"""


def _slice_args(s: tuple[slice, ...]) -> list[list[int | None]]:
    return [[x.start, x.stop, x.step] for x in s]


def bench_hsds(
    data: BenchData, sel: Selections, expected: dict[str, np.ndarray], repeat: int, echo: Callable[[str], None]
) -> SystemRun:
    """Time the workloads through h5pyd against a real HSDS 1.0.2 serving our writer's files.

    HSDS runs from its own venv (``tests/hsds_harness.py``) on unix sockets with the posix
    root ``data.hsds_root``; the h5pyd client runs in that venv too and times each workload
    with ``time.perf_counter``. The first full read after server start is the cold figure
    (fresh DN chunk caches; the OS page cache is warm for every system alike).

    Returns
    -------
    SystemRun
        ``error`` is set when HSDS cannot be started (e.g. no package registry to build its venv).
    """
    run = SystemRun(HSDS_NAME)
    sys.path.insert(0, str(REPO_ROOT / "tests"))
    try:
        import hsds_harness as harness
    except ImportError as exc:
        run.error = f"tests/hsds_harness.py not importable: {exc}"
        return run
    finally:
        sys.path.pop(0)
    try:
        harness.ensure_hsds_venv()
        server = harness.HsdsServer(data.hsds_root, bucket=BUCKET)
        server.start()
    except Exception as exc:  # noqa: BLE001 - HsdsUnavailable, HsdsError, ...
        run.error = f"HSDS not started: {type(exc).__name__}: {str(exc)[:500]}"
        return run
    try:
        run.info["start_seconds"] = server.start_seconds
        run.info["dn_count"] = server.dn_count
        echo(f"  HSDS ready in {server.start_seconds:.1f} s ({server.dn_count} DNs, unix sockets)")
        out_dir = server.socket_dir / "bench-out"
        out_dir.mkdir(exist_ok=True)
        res = server.run_h5pyd(
            _H5PYD_SCRIPT,
            timeout=3600,
            domain=DOMAIN,
            repeat=repeat,
            min_timed_s=MIN_TIMED_S,
            max_runs=MAX_RUNS,
            stepped=_slice_args(sel.stepped),
            chunk=_slice_args(sel.chunk),
            points=sel.points.tolist(),
            query=QUERY,
            out_dir=str(out_dir),
        )
        run.info["versions"] = res.get("versions", {})
        exp_key = {"full_cold": "full", "query": "query_rows"}
        checked: dict[str, bool] = {}  # npy path -> identical (full and full_cold share one file)
        for key, cell in res["cells"].items():
            if "error" in cell:
                run.cells[key] = Measurement(ok=False, note="error: " + cell["error"])
                continue
            if cell["npy"] not in checked:
                checked[cell["npy"]] = identical(np.load(cell["npy"]), expected[exp_key.get(key, key)])
                os.unlink(cell["npy"])
            run.cells[key] = Measurement(cell["seconds"], checked[cell["npy"]])
        rw = res.get("read_where", {})
        n_exp = len(expected["query_rows"])
        if "rows" in rw and rw["rows"] != n_exp:
            run.notes.append(
                f"h5pyd Table.read_where({QUERY!r}) yields {rw['rows']:,} of {n_exp:,} matching rows "
                f"({rw['seconds']:.3f} s): its Cursor stops after the first ~1 MB row buffer; the query cell "
                "times Dataset.__getitem__(slice, query=...) instead, which returns every match"
            )
        elif "rows" in rw:
            run.notes.append(f"h5pyd Table.read_where returned all {n_exp:,} rows in {rw['seconds']:.3f} s")
        else:
            run.notes.append(f"h5pyd Table.read_where failed: {rw.get('error')}")
    except Exception as exc:  # noqa: BLE001
        run.error = f"{type(exc).__name__}: {str(exc)[:1500]}"
    finally:
        server.stop()
    return run


# ----------------------------------------------------------------------------- zarr, TensorStore


def bench_zarr(data: BenchData, sel: Selections, expected: dict[str, np.ndarray], repeat: int) -> SystemRun:
    """Time the grid workloads with zarr-python on the zarr copy (query: not applicable)."""
    run = SystemRun(ZARR_NAME)
    try:
        import zarr
    except ImportError as exc:
        run.error = f"zarr not installed ({exc}); pip install zarr"
        return run
    run.info["versions"] = {"zarr": zarr.__version__}
    z = zarr.open_array(str(data.zarr_path), mode="r")
    rows, cols = sel.points[:, 0], sel.points[:, 1]
    ops: dict[str, Callable[[], Any]] = {
        "full": lambda: z[...],
        "stepped": lambda: z[sel.stepped],
        "chunk": lambda: z[sel.chunk],
        "points": lambda: z.vindex[rows, cols],
    }
    _timed_cells(run, ops, expected, repeat)
    run.cells["query"] = Measurement(note="n/a")
    return run


def bench_tensorstore(data: BenchData, sel: Selections, expected: dict[str, np.ndarray], repeat: int) -> SystemRun:
    """Time the grid workloads with TensorStore (``zarr3`` driver) on the zarr copy (query: n/a)."""
    run = SystemRun(TS_NAME)
    try:
        import tensorstore as ts
    except ImportError as exc:
        run.error = f"tensorstore not installed ({exc}); pip install tensorstore"
        return run
    run.info["versions"] = {"tensorstore": _dist_version("tensorstore")}
    arr = ts.open({"driver": "zarr3", "kvstore": {"driver": "file", "path": str(data.zarr_path)}}, read=True).result()
    rows, cols = sel.points[:, 0], sel.points[:, 1]
    ops: dict[str, Callable[[], Any]] = {
        "full": lambda: arr.read().result(),
        "stepped": lambda: arr[sel.stepped].read().result(),
        "chunk": lambda: arr[sel.chunk].read().result(),
        "points": lambda: arr.vindex[rows, cols].read().result(),
    }
    _timed_cells(run, ops, expected, repeat)
    run.cells["query"] = Measurement(note="n/a")
    return run


def bench_dask_array(data: BenchData, sel: Selections, expected: dict[str, np.ndarray], repeat: int) -> SystemRun:
    """Time the grid workloads with ``dask.array.from_zarr`` on a 2-worker distributed cluster (query: n/a).

    The comparison the ``dask`` backend's speed target is stated against: a LocalCluster of
    2 process workers (one thread each, like the backend's embedded cluster on 2 cores),
    the zarr copy read on the workers and the result shipped to this process.
    """
    run = SystemRun(DASK_ARRAY_NAME)
    try:
        import dask
        import dask.array as da
        from distributed import Client, LocalCluster
    except ImportError as exc:
        run.error = f"dask[distributed] not installed ({exc}); pip install 'dask[distributed]'"
        return run
    run.info["versions"] = {"dask": dask.__version__}
    with (
        LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address="127.0.0.1:0",
            scheduler_kwargs={"dashboard": False},
        ) as cluster,
        Client(cluster, set_as_default=False) as client,
    ):
        arr = da.from_zarr(str(data.zarr_path))
        rows, cols = sel.points[:, 0], sel.points[:, 1]
        ops: dict[str, Callable[[], Any]] = {
            "full": lambda: arr.compute(scheduler=client),
            "stepped": lambda: arr[sel.stepped].compute(scheduler=client),
            "chunk": lambda: arr[sel.chunk].compute(scheduler=client),
            "points": lambda: arr.vindex[rows, cols].compute(scheduler=client),
        }
        _timed_cells(run, ops, expected, repeat)
    run.cells["query"] = Measurement(note="n/a")
    return run


# ----------------------------------------------------------------------------- report


def machine_info() -> dict[str, Any]:
    """Return cores, CPU model, Python and library versions, zlib/isal availability."""
    import zlib

    info: dict[str, Any] = {
        "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "cpu": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "zlib": zlib.ZLIB_RUNTIME_VERSION,
        "loadavg_1min": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
    }
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    info["cpu"] = line.split(":", 1)[1].strip()
                    break
        with open("/proc/meminfo") as f:
            info["mem_gb"] = round(int(f.readline().split()[1]) / 2**20, 1)
    except OSError:
        pass
    try:
        import isal

        info["isal"] = getattr(isal, "__version__", "yes")
    except ImportError:
        info["isal"] = None
    try:
        import numcodecs
        from numcodecs import blosc

        info["numcodecs"] = numcodecs.__version__
        info["blosc"] = getattr(blosc, "VERSION_STRING", "?")
    except ImportError:
        pass
    import hsds_backends

    info["hsds_backends"] = hsds_backends.__version__
    return info


def choose_baseline(systems: Sequence[SystemRun]) -> str:
    """Return the baseline column: HSDS h5pyd when it ran, else zarr-python, else the first system."""
    ran = {s.name for s in systems if not s.error and any(c.seconds for c in s.cells.values())}
    for name in (HSDS_NAME, ZARR_NAME, TS_NAME):
        if name in ran:
            return name
    return next(iter(ran), "")


def _fmt_seconds(s: float) -> str:
    if s >= 100:
        return f"{s:.0f} s"
    if s >= 1:
        return f"{s:.2f} s"
    if s >= 0.01:
        return f"{s * 1e3:.0f} ms"
    return f"{s * 1e3:.2f} ms"


def format_cell(m: Measurement | None, base: Measurement | None, is_base: bool) -> str:
    """Render one cell: time, speed-up vs the baseline (``base_time / time``) and ✓/✗."""
    if m is None:
        return "—"
    if m.seconds is None:
        return "—" if m.note in ("", "n/a") else "error"
    parts = [_fmt_seconds(m.seconds)]
    if is_base:
        parts.append("(base)")
    elif base is not None and base.seconds:
        parts.append(f"{base.seconds / m.seconds:.2f}×")
    else:
        parts.append("  —  ")
    if m.ok is not None:
        parts.append("✓" if m.ok else "✗")
    return " ".join(parts)


def render(report: Report) -> str:
    """Return the printed report: machine line, data line, table and notes."""
    p, m = report.profile, report.machine
    lines = [
        (
            f"machine: {m.get('cores')} cores ({m.get('cpu')}), {m.get('mem_gb', '?')} GB RAM; python {m['python']}, "
            f"numpy {m['numpy']}, numcodecs {m.get('numcodecs', '-')} (blosc {m.get('blosc', '-')}), zlib {m['zlib']}, "
            f"isal {m.get('isal') or 'not installed'}, hsds-backends {m.get('hsds_backends')}; "
            f"1-min load average at start {m.get('loadavg_1min_start', '?')}, at end {m.get('loadavg_1min', '?')}"
        ),
        (
            f"data ({p.name}): grid float32 {p.grid_size}x{p.grid_size}, {p.grid_chunk}x{p.grid_chunk} chunks, "
            f"shuffle+gzip 4 as HSDS stores it ({report.data.get('grid_stored_mb', 0):.0f} MB stored for "
            f"{report.data.get('grid_mb', 0):.0f} MB; zarr copy {report.data.get('zarr_stored_mb', 0):.0f} MB); "
            f"table {p.rows:,} rows in {p.table_chunk:,}-row chunks ({report.data.get('query_rows', 0):,} match {QUERY!r})"
        ),
        (
            f"timing: best of {report.repeat} or more (timed calls go on until {MIN_TIMED_S:g} s, at most {MAX_RUNS}) after a warm-up (cold = the first read of a fresh client); "
            "cell = time, speed-up vs baseline (baseline time / time, >1 is faster), ✓/✗ = byte-identical to numpy"
        ),
        f"baseline: {report.baseline or 'none'}",
        "",
    ]
    systems = [s for s in report.systems if not s.error]
    base_run = next((s for s in systems if s.name == report.baseline), None)
    header = ["workload", *[s.name for s in systems]]
    rows = []
    for key, label in WORKLOADS:
        base = base_run.cells.get(key) if base_run else None
        rows.append([label, *[format_cell(s.cells.get(key), base, s is base_run) for s in systems]])
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def fmt(r: list[str]) -> str:
        return (
            "| "
            + " | ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))
            + " |"
        )

    lines.append(fmt(header))
    lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    lines.extend(fmt(r) for r in rows)
    lines.append("")
    for s in report.systems:
        if s.error:
            lines.append(f"{s.name}: not run — {s.error}")
        for key, c in s.cells.items():
            if c.note and c.note != "n/a":
                lines.append(f"{s.name} / {key}: {c.note}")
        for n in s.notes:
            lines.append(f"{s.name}: {n}")
        mem = s.info.get("memory")
        if mem:
            out_mb = mem["output_mb"]
            rss = mem.get("peak_rss_delta_mb")
            rss_txt = (
                f"peak RSS +{rss:.0f} MB ({rss / out_mb:.2f}x)"
                if rss is not None
                else f"peak RSS n/a ({mem.get('rss_error')})"
            )
            lines.append(
                f"{s.name}: memory of one full read ({out_mb:.0f} MB output): {rss_txt} in a fresh process; "
                f"tracemalloc peak {mem['tracemalloc_peak_mb']:.0f} MB ({mem['tracemalloc_peak_mb'] / out_mb:.2f}x)"
            )
        if s.name == HSDS_NAME and s.info.get("versions"):
            v = s.info["versions"]
            lines.append(
                f"{s.name}: hsds 1.0.2, h5pyd {v.get('h5pyd')}, numcodecs {v.get('numcodecs')}; "
                f"{s.info.get('dn_count')} DNs on unix sockets, default config; started in {s.info.get('start_seconds', 0):.1f} s"
            )
    lines.append(f"total run time {report.seconds_total:.0f} s")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse the command line (see the module docstring)."""
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n", 1)[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--backends", help="comma-separated hsds-backends backends (default: every installed one)")
    ap.add_argument(
        "--repeat", type=int, default=3, help="timed runs per workload after one warm-up; the best counts (default 3)"
    )
    ap.add_argument(
        "--data-dir", type=Path, default=REPO_ROOT / "bench-data", help="data cache (default <repo>/bench-data)"
    )
    ap.add_argument("--skip-hsds", action="store_true", help="do not run real HSDS via h5pyd")
    ap.add_argument("--skip-zarr", action="store_true", help="do not run zarr-python")
    ap.add_argument("--skip-tensorstore", action="store_true", help="do not run TensorStore")
    ap.add_argument(
        "--skip-dask-array",
        action="store_true",
        help="do not run dask.array.from_zarr on a 2-worker distributed cluster (run when distributed is installed)",
    )
    ap.add_argument(
        "--skip-auto",
        action="store_true",
        help="do not time auto (the selector; by default it runs after the backends, in the same reader)",
    )
    ap.add_argument("--json", type=Path, help="also write the results as JSON here")
    ap.add_argument("--small", action="store_true", help="2048x2048 grid and 400k rows: a quick smoke run")
    args = ap.parse_args(argv)
    if args.repeat < 1:
        ap.error("--repeat must be >= 1")
    return args


def _dist_version(name: str) -> str:
    """Return the installed version of distribution ``name`` (``"?"`` if unknown)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return "?"


def _module_available(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


def echo(msg: str) -> None:
    """Print a progress message on stderr (the report goes to stdout)."""
    print(msg, file=sys.stderr, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; return the exit status (1 if an hsds-backends result mismatched)."""
    args = parse_args(argv)
    t_start = time.perf_counter()
    load_start = round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None
    from hsds_backends import list_backends

    installed = [b.name for b in list_backends()]
    names = [n.strip() for n in args.backends.split(",") if n.strip()] if args.backends else list(installed)
    unknown = [n for n in names if n not in installed and n != AUTO]
    with_auto = not args.skip_auto and bool(names)
    names = list(dict.fromkeys(n for n in names if n != AUTO))  # auto always runs last, once
    if unknown:
        echo(f"backend(s) not installed: {', '.join(unknown)}; installed: {', '.join(installed)}")
        return 2

    profile = SMALL if args.small else FULL
    if not args.skip_dask_array and not _module_available("distributed"):
        args.skip_dask_array = True  # the comparison for the dask backend; nothing to compare without dask
    want_zarr = not (args.skip_zarr and args.skip_tensorstore and args.skip_dask_array) and _module_available("zarr")
    data = ensure_data(args.data_dir, profile, want_zarr=want_zarr, echo=echo)
    if data.generated_seconds:
        echo(f"data generated in {data.generated_seconds:.1f} s")
    sel = Selections.for_profile(profile)
    expected = expected_results(data, sel)

    systems: list[SystemRun] = (
        bench_backends(names, data, sel, expected, args.repeat, with_auto=with_auto) if names or with_auto else []
    )
    regret_note(systems)
    if not args.skip_hsds:
        echo(f"running {HSDS_NAME} ...")
        systems.append(bench_hsds(data, sel, expected, args.repeat, echo))
    for skip, title, fn in (
        (args.skip_zarr, ZARR_NAME, bench_zarr),
        (args.skip_tensorstore, TS_NAME, bench_tensorstore),
        (args.skip_dask_array, DASK_ARRAY_NAME, bench_dask_array),
    ):
        if skip:
            continue
        echo(f"running {title} ...")
        if data.zarr_ready:
            systems.append(fn(data, sel, expected, args.repeat))
        else:
            systems.append(SystemRun(title, error="no zarr copy: writing it needs zarr-python (pip install zarr)"))

    stored = stored_chunk_bytes(data.hsds_root)
    report = Report(
        profile=profile,
        repeat=args.repeat,
        machine={**machine_info(), "loadavg_1min_start": load_start},
        data={
            "dir": str(data.root),
            "grid_mb": data.grid.nbytes / 2**20,
            "grid_stored_mb": stored.get("grid", 0) / 2**20,
            "table_stored_mb": stored.get("table", 0) / 2**20,
            "table_mb": data.table.nbytes / 2**20,
            "zarr_stored_mb": dir_bytes(data.zarr_path) / 2**20,
            "query_rows": len(expected["query_rows"]),
            "generated_seconds": data.generated_seconds,
        },
        baseline=choose_baseline(systems),
        systems=systems,
    )
    report.seconds_total = time.perf_counter() - t_start
    print(render(report))
    if args.json:
        args.json.write_text(json.dumps(asdict(report), indent=1, default=str))
    bad = [
        s.name
        for s in systems
        if s.ours and (s.error or any(c.ok is False or c.note.startswith("error") for c in s.cells.values()))
    ]
    if bad:
        print(f"FAILED: hsds-backends result mismatch or error in: {', '.join(bad)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
