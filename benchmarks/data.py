"""The benchmark's data: the grid and the table, written as an HSDS domain by the project's writer, plus a zarr copy.

Generated once per profile under ``<data dir>/<full|small>/`` and reused while ``stamp.json``
matches (:func:`data_stamp`).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from common import BUCKET, DOMAIN, OWNER, REPO_ROOT

#: Bump when the generated data (values, layout, domain names) changes.
DATA_VERSION = 1
#: Filters of both datasets, as the writer takes them.
FILTERS: list[Any] = ["shuffle", ("gzip", 4)]


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
    writer: str = "project"
    """Who writes the HSDS domain: ``"project"`` (hsds_backends.writer) or ``"hsds"`` (a real HSDS
    1.0.2, through h5pyd; its folder gets a ``-hsds`` suffix)."""

    @property
    def folder(self) -> str:
        """Sub-folder of the data dir."""
        return self.name if self.writer == "project" else f"{self.name}-{self.writer}"


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
    grid: np.ndarray[Any, Any]
    table: np.ndarray[Any, Any]
    generated_seconds: float = 0.0

    @property
    def zarr_ready(self) -> bool:
        """Whether the zarr copy exists (zarr-python may be missing at generation time)."""
        return (self.zarr_path / "zarr.json").exists()


def make_grid(p: Profile) -> np.ndarray[Any, Any]:
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
    grid: np.ndarray[Any, Any] = (
        np.sin(np.float32(2 * np.pi * 3) * y)[:, None] * np.cos(np.float32(2 * np.pi * 2) * x)[None, :]
    )
    grid *= np.float32(8)
    grid += (np.float32(15) + np.float32(6) * y)[:, None]
    grid -= (np.float32(4) * x)[None, :]
    grid += rng.standard_normal((n, n), dtype=np.float32) * np.float32(0.3)
    grid *= np.float32(100)
    np.round(grid, out=grid)
    grid /= np.float32(100)
    return grid.astype("<f4", copy=False)


def make_table(p: Profile) -> np.ndarray[Any, Any]:
    """Return the oracle table of ``p``'s size and seed: ``[('id','<i8'), ('temp','<f4'), ('station','S8')]``.

    Ids count up, temperatures are ~ N(15, 8), and there are 100 station names.
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

    Includes a hash of the writer and codec sources (modules or packages), so a change to how
    chunks are written regenerates the HSDS domain.
    """
    h = hashlib.sha256()
    for mod in ("writer", "codecs", "dtypes", "ids"):
        src = REPO_ROOT / "hsds_backends" / mod
        # a module, or a package: every source file of it, in a fixed order
        files = [src.with_suffix(".py")] if src.with_suffix(".py").exists() else sorted(src.rglob("*.py"))
        for f in files:
            h.update(f.read_bytes())
    if p.writer == "hsds":  # HSDS wrote it: what it depends on is the h5pyd script and the HSDS release
        h = hashlib.sha256(_H5PYD_WRITE.encode() + b"hsds==1.0.2 h5pyd==1.0.0")
    return {
        "version": DATA_VERSION,
        "profile": {k: v for k, v in asdict(p).items() if (k, v) != ("writer", "project")},  # keeps earlier caches
        "writer_sha256": h.hexdigest()[:16],
        "numpy": np.__version__.split(".")[0],
    }


async def write_domain(hsds_root: Path, grid: np.ndarray[Any, Any], table: np.ndarray[Any, Any], p: Profile) -> None:
    """Write ``/grid`` and ``/table`` into the benchmark domain under ``hsds_root``, as HSDS stores them.

    Parameters
    ----------
    hsds_root : pathlib.Path
        HSDS ``root_dir``; the bucket folder must exist.
    grid, table : numpy.ndarray
        Data.
    p : Profile
        Chunk sizes.
    """
    from hsds_backends.storage import PosixStorage
    from hsds_backends.writer import Writer

    st = PosixStorage(str(hsds_root))
    try:
        w = Writer(st, BUCKET, owner=OWNER)
        await w.create_dataset(DOMAIN, "/grid", grid, chunks=(p.grid_chunk, p.grid_chunk), filters=FILTERS)
        await w.create_dataset(DOMAIN, "/table", table, chunks=(p.table_chunk,), filters=FILTERS)
    finally:
        await st.aclose()


_H5PYD_WRITE = r"""
for folder in ("/home/", "/home/%s/" % kw["username"]):
    try:
        h5pyd.Folder(folder, mode="r", **kw).close()
    except (IOError, OSError):
        h5pyd.Folder(folder, mode="w", **kw).close()
f = h5pyd.File(args["domain"], "w", **kw)
g = np.load(args["grid"], mmap_mode="r")
c = args["grid_chunk"]
d = f.create_dataset("grid", shape=g.shape, dtype=g.dtype, chunks=(c, c), compression="gzip", compression_opts=4, shuffle=True)
for r in range(0, g.shape[0], c):
    d[r : r + c] = np.ascontiguousarray(g[r : r + c])
t = np.load(args["table"])
tc = args["table_chunk"]
dt = f.create_dataset("table", shape=t.shape, dtype=t.dtype, chunks=(tc,), compression="gzip", compression_opts=4, shuffle=True)
step = 100_000
for r in range(0, len(t), step):
    dt[r : r + step] = t[r : r + step]
try:
    f.flush()  # ask the DNs to write what they hold
except Exception:  # noqa: BLE001 - an older h5pyd: the wait below covers it
    pass
f.close()
emit({"ok": True})
"""


def write_domain_hsds(hsds_root: Path, oracle: Path, p: Profile, echo: Callable[[str], None]) -> None:
    """Write ``/grid`` and ``/table`` through a real HSDS 1.0.2 with h5pyd (its own virtualenv), then let it flush.

    HSDS picks its own Blosc block size and may resize the table's chunks (``max_chunk_size``);
    what it stores is what the readers then read. The server is stopped once every chunk object
    has been on disk, unchanged, for 2 s.
    """
    import sys

    sys.path.insert(0, str(REPO_ROOT / "tests"))
    try:
        import hsds_harness as harness  # type: ignore[import-not-found, unused-ignore]  # tests/ is not a package
    finally:
        sys.path.pop(0)
    harness.ensure_hsds_venv()
    with harness.HsdsServer(hsds_root, bucket=BUCKET, username=OWNER) as server:
        echo(f"  writing through HSDS 1.0.2 with h5pyd ({p.grid_size}² grid, {p.rows:,} rows) ...")
        server.run_h5pyd(_H5PYD_WRITE, timeout=3600, domain=DOMAIN, grid=str(oracle / "grid.npy"), table=str(oracle / "table.npy"),
                         grid_chunk=p.grid_chunk, table_chunk=p.table_chunk)
        # the DNs write dirty chunks a few seconds after the requests: wait until the grid's chunks are
        # all there and nothing has changed for 2 s (at most 5 minutes)
        grid_chunks = (-(-p.grid_size // p.grid_chunk)) ** 2
        last, still, deadline = None, 0.0, time.monotonic() + 300
        while still < 2.0:
            if time.monotonic() > deadline:
                raise RuntimeError(f"HSDS did not finish writing {hsds_root / BUCKET} within 300 s\n{server.log_tail(30)}")
            time.sleep(0.5)
            files = [f for f in (hsds_root / BUCKET).rglob("*") if f.is_file()]
            now = sorted((str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files)
            dirs = dataset_dirs(hsds_root)
            grid_done = "grid" in dirs and sum(1 for f in dirs["grid"].rglob("*") if f.is_file() and not f.name.startswith(".")) >= grid_chunks
            still = still + 0.5 if now == last and grid_done else 0.0
            last = now


def write_zarr_copy(path: Path, grid: np.ndarray[Any, Any], p: Profile) -> None:
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
    root = (data_dir / p.folder).absolute()
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
        if p.writer == "hsds":
            write_domain_hsds(hsds_root, oracle, p, echo)
        else:
            asyncio.run(write_domain(hsds_root, grid, table, p))
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


def dataset_dirs(hsds_root: Path) -> dict[str, Path]:
    """Return the folders of ``grid`` (rank 2) and ``table`` (rank 1) in the bench bucket (their chunk objects)."""
    out: dict[str, Path] = {}
    for dj in (hsds_root / BUCKET).rglob(".dataset.json"):
        rank = len(json.loads(dj.read_text()).get("shape", {}).get("dims", []))
        name = {2: "grid", 1: "table"}.get(rank)
        if name:
            out[name] = dj.parent
    return out


def stored_chunk_bytes(hsds_root: Path) -> dict[str, int]:
    """Return the stored chunk bytes of ``grid`` (rank 2) and ``table`` (rank 1) in the bench bucket."""
    return {
        name: sum(f.stat().st_size for f in folder.rglob("*") if f.is_file() and not f.name.startswith("."))
        for name, folder in dataset_dirs(hsds_root).items()
    }
