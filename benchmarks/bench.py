#!/usr/bin/env python
"""Reproducible benchmark: hsds-backends vs real HSDS (h5pyd), zarr-python and TensorStore.

One command::

    python benchmarks/bench.py [--backends inline,...] [--repeat N] [--data-dir DIR]
                               [--skip-hsds] [--skip-zarr] [--skip-tensorstore] [--skip-dask-array]
                               [--skip-auto] [--json out.json] [--small]

Data (generated once, cached in ``--data-dir``, default ``<repo>/bench-data``; :mod:`data`):

* ``/grid``: float32 8192x8192, 512x512 chunks, filters ``shuffle`` + ``gzip`` level 4,
  stored as HSDS stores it (a Blosc container with internal zlib per chunk), written by
  :class:`hsds_backends.writer.Writer` (``--writer hsds``: by a real HSDS 1.0.2 through
  h5pyd, cached apart, so every row also runs on HSDS's own Blosc blocks). Values: a smooth field plus noise, rounded to
  0.01 like sensor data, so chunks compress like real data (about 2.7x).
* ``/table``: 4 million rows of ``[('id','<i8'), ('temp','<f4'), ('station','S8')]``,
  250k-row chunks, same filters; ``temp ~ N(15, 8)`` so about 27% of rows match ``temp > 20``.
* A zarr v3 copy of the grid (Blosc zlib level 4 + byte shuffle, same chunks), written by
  zarr-python, read by zarr-python and by TensorStore.

Workloads (:mod:`workloads`): full read (first read of a fresh client = "cold", then best of N =
"warm"), ``[::4, 1000:3000]``, one chunk, 1000 random points, and the query ``temp > 20``.
Systems (:mod:`systems`): every installed hsds-backends backend (``inline``, ...) through one
async :class:`hsds_backends.Reader`, and ``auto`` (the selector) in that same reader, each
workload after the backends, so it chooses from the latencies their reads measured, as a
long-running service would (:mod:`systems.backends`); real HSDS 1.0.2 via h5pyd (on the very
files our writer wrote), zarr-python, TensorStore and dask.array. Each timing is the best of
``--repeat`` runs after one warm-up (:mod:`timing`); every result is compared byte for byte with
a numpy oracle. The table (:mod:`report`) shows seconds and the speed-up versus a baseline
measured in the same run (HSDS via h5pyd when it ran, else zarr-python).

Exit status: 0 when every hsds-backends result matched the oracle, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
import dataclasses
from dataclasses import asdict
from pathlib import Path

from common import AUTO, DASK_ARRAY_NAME, HSDS_NAME, REPO_ROOT, TS_NAME, ZARR_NAME, echo, module_available


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse the command line (see the module docstring)."""
    ap = argparse.ArgumentParser(
        description=(__doc__ or "").split("\n", 1)[0], formatter_class=argparse.RawDescriptionHelpFormatter
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
    ap.add_argument("--skip-floor", action="store_true", help="leave out the decode floor (every stored block inflated, nothing else)")
    ap.add_argument("--json", type=Path, help="also write the results as JSON here")
    ap.add_argument("--small", action="store_true", help="2048x2048 grid and 400k rows: a quick smoke run")
    ap.add_argument(
        "--writer", choices=["project", "hsds"], default="project",
        help="who writes the HSDS domain: the project's writer (default) or a real HSDS 1.0.2 through h5pyd (cached apart)",
    )
    args = ap.parse_args(argv)
    if args.repeat < 1:
        ap.error("--repeat must be >= 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; return the exit status (1 if an hsds-backends result mismatched)."""
    args = parse_args(argv)
    # Imported here, not at the top: dask's spawned workers re-run this module's top level, and
    # keeping it to the standard library keeps their start-up (part of some cold cells) as before.
    from data import FULL, SMALL, dataset_dirs, dir_bytes, ensure_data, stored_chunk_bytes
    from report import choose_baseline, loadavg_1min, machine_info, render
    from results import Report, SystemRun
    from systems.backends import bench_backends, regret_note
    from systems.base import BenchContext
    from systems.dask_array import bench_dask_array
    from systems.decode_floor import bench_decode_floor
    from systems.hsds_h5pyd import bench_hsds
    from systems.tensorstore_zarr3 import bench_tensorstore
    from systems.zarr_python import bench_zarr
    from workloads import Selections, expected_results

    t_start = time.perf_counter()
    load_start = loadavg_1min()
    from hsds_backends import list_backends

    installed = [b.name for b in list_backends()]
    names = [n.strip() for n in args.backends.split(",") if n.strip()] if args.backends else list(installed)
    unknown = [n for n in names if n not in installed and n != AUTO]
    with_auto = not args.skip_auto and bool(names)
    names = list(dict.fromkeys(n for n in names if n != AUTO))  # auto always runs last, once
    if unknown:
        echo(f"backend(s) not installed: {', '.join(unknown)}; installed: {', '.join(installed)}")
        return 2

    profile = dataclasses.replace(SMALL if args.small else FULL, writer=args.writer)
    if not args.skip_dask_array and not module_available("distributed"):
        args.skip_dask_array = True  # the comparison for the dask backend; nothing to compare without dask
    want_zarr = not (args.skip_zarr and args.skip_tensorstore and args.skip_dask_array) and module_available("zarr")
    data = ensure_data(args.data_dir, profile, want_zarr=want_zarr, echo=echo)
    if data.generated_seconds:
        echo(f"data generated in {data.generated_seconds:.1f} s")
    sel = Selections.for_profile(profile)
    expected = expected_results(data, sel)
    ctx = BenchContext(data, sel, expected, args.repeat)

    systems: list[SystemRun] = bench_backends(names, ctx, with_auto=with_auto) if names or with_auto else []
    regret_note(systems)
    if not args.skip_hsds:
        echo(f"running {HSDS_NAME} ...")
        systems.append(bench_hsds(ctx, echo))
    for skip, title, fn in (
        (args.skip_zarr, ZARR_NAME, bench_zarr),
        (args.skip_tensorstore, TS_NAME, bench_tensorstore),
        (args.skip_dask_array, DASK_ARRAY_NAME, bench_dask_array),
    ):
        if skip:
            continue
        echo(f"running {title} ...")
        if data.zarr_ready:
            systems.append(fn(ctx))
        else:
            systems.append(SystemRun(title, error="no zarr copy: writing it needs zarr-python (pip install zarr)"))

    if not args.skip_floor:
        echo("running the decode floor ...")
        grid_dir = dataset_dirs(data.hsds_root).get("grid")
        floor = bench_decode_floor(ctx, str(grid_dir)) if grid_dir else SystemRun("decode floor", error="no grid dataset found")
        systems.append(floor)
        f = floor.cells["full"].seconds if "full" in floor.cells else None
        ratios = [
            f"{s.name} {c.seconds / f:.2f}×" for s in systems
            if s is not floor and (c := s.cells.get("full")) is not None and c.seconds and f
        ]
        if ratios:
            floor.notes.append("full read (warm) / decode floor: " + ", ".join(ratios))

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
