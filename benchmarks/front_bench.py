#!/usr/bin/env python
"""h5pyd through a real HSDS whose DNs sit behind HSDS fronts, per backend, against the same HSDS without fronts.

One run times, for each system in turn, the benchmark's workloads through h5pyd
(``h5pyd_client.py`` in HSDS's virtualenv) and checks every answer against numpy:

- ``HSDS``: ``HsdsDeployment(fronts=False)``, the SN talking to its DNs directly;
- ``front <backend>``: the same deployment with fronts (docs/architecture.md §12), chunk reads
  served by ``inline``, ``lambda`` (local runtime), ``dask`` (LocalCluster) or ``containers``.

Every deployment has the same settings (two DNs, unix sockets, ``MAX_TASKS_PER_NODE_PER_REQUEST``
256) and reads the same files (the benchmark's data, written by the project's writer as HSDS
stores them). Before the cold full read each system reads one table chunk, so a backend's own
start-up (a Lambda runtime, a dask cluster) is not counted as the grid's cold read; the OS page
cache is warm for every system alike. Figures are best of ``--repeat`` (see ``timing.py``);
ratios are against ``HSDS`` in the same run.

    python benchmarks/front_bench.py [--small] [--repeat N] [--rounds N] [--backends a,b] [--json FILE]

With ``--rounds N`` every system runs N times, in rotated order, and each cell is the best
round's (load on the machine drifts; the rotation keeps it from favouring one system).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from common import BUCKET, DOMAIN, QUERY, REPO_ROOT, WORKLOADS, echo

BACKENDS = ("inline", "lambda", "dask", "containers")
#: Backend settings for a 2-core machine (as the tests use them).
BACKEND_CONFIG: dict[str, dict[str, Any]] = {
    "inline": {},
    "lambda": {"aws_lambda_local_workers": 2},
    "dask": {"dask_n_workers": 2},
    "containers": {"dn_count": 2},
}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n", 1)[0])
    ap.add_argument("--backends", default=",".join(BACKENDS), help="comma-separated backends behind the fronts")
    ap.add_argument("--repeat", type=int, default=3, help="timed runs per workload, at least (best counts)")
    ap.add_argument("--rounds", type=int, default=2, help="run every system this many times, in rotated order (best counts)")
    ap.add_argument("--data-dir", type=Path, default=REPO_ROOT / "bench-data", help="data cache (as bench.py)")
    ap.add_argument("--small", action="store_true", help="2048x2048 grid and 400k rows")
    ap.add_argument("--json", type=Path, help="also write the results as JSON here")
    return ap.parse_args(argv)


def _log_tail(run_dir: Path, n: int = 30) -> str:
    parts = []
    for p in sorted(run_dir.glob("*.log")):
        parts.append(f"--- {p.name} ---\n" + "\n".join(p.read_text(errors="replace").splitlines()[-n:]))
    return "\n".join(parts)


def run_system(title: str, backend: str | None, ctx: Any, venv: Path) -> dict[str, Any]:
    """Start one deployment, time the workloads through h5pyd, stop it; return its cells and figures."""
    import numpy as np

    sys.path.insert(0, str(REPO_ROOT / "tests"))
    import hsds_harness as harness  # type: ignore[import-not-found, unused-ignore]  # tests/ is not a package
    from hsds_backends_containers.front import STATS_PATH
    from hsds_backends_containers.launcher import HsdsDeployment
    from systems.hsds_h5pyd import _slice_args, run_client
    from workloads import identical

    cfg: dict[str, Any] = {"root_dir": str(ctx.data.hsds_root), "bucket_name": BUCKET, "backend": backend or "inline",
                           "front_readonly": True, **BACKEND_CONFIG.get(backend or "", {})}
    dep = HsdsDeployment(cfg, dn_count=2, port=None, hsds_node=venv / "bin" / "hsds-node", fronts=backend is not None)
    out: dict[str, Any] = {"title": title, "backend": backend, "cells": {}}

    async def go() -> None:
        t0 = time.perf_counter()
        await dep.start()
        out["start_seconds"] = time.perf_counter() - t0
        run_dir = Path(dep.run_dir or "")
        password = Path(dep.password_file or "").read_text().split(":", 1)[1].strip()
        client = harness.H5pydClient(dep.sn_url, dep.username, password, BUCKET, run_dir / "client", venv,
                                     log_tail=lambda n=30: _log_tail(run_dir, n))
        work = run_dir / "bench-out"
        work.mkdir(exist_ok=True)
        res = await asyncio.to_thread(run_client, client, harness, 3600, {
            "domain": DOMAIN, "repeat": ctx.repeat, "stepped": _slice_args(ctx.sel.stepped), "chunk": _slice_args(ctx.sel.chunk),
            "points": ctx.sel.points.tolist(), "query": QUERY, "out_dir": str(work), "warm_up_table": True,
        })
        exp_key = {"full_cold": "full", "query": "query_rows"}
        checked: dict[str, bool] = {}
        for key, cell in res["cells"].items():
            if "error" in cell:
                out["cells"][key] = {"error": cell["error"]}
                continue
            if cell["npy"] not in checked:
                checked[cell["npy"]] = identical(np.load(cell["npy"]), ctx.expected[exp_key.get(key, key)])
            out["cells"][key] = {"seconds": cell["seconds"], "ok": checked[cell["npy"]]}
        if backend is not None:
            status, _, body = harness.unix_http_request(harness.socket_path_from_url(dep.front_urls[0]), "GET", STATS_PATH)
            stats = json.loads(body)
            by: dict[str, int] = {}
            for f in stats["fronts"]:
                for k, v in f["chunk_reads_by_backend"].items():
                    by[k] = by.get(k, 0) + v
            out["served"] = by
            out["fallbacks"] = sum(f["fallbacks"] for f in stats["fronts"])
            out["forwarded_reads"] = sum(sum(f["forwarded_reads"].values()) for f in stats["fronts"])

    async def main() -> None:
        try:
            await go()
        finally:
            await dep.stop()

    try:
        asyncio.run(main())
    except Exception as exc:  # noqa: BLE001 - one system's failure is reported in its column
        out["error"] = f"{type(exc).__name__}: {str(exc)[:1000]}"
    finally:
        sys.path.remove(str(REPO_ROOT / "tests"))
    return out


def _best(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One system's rounds as one column: each cell the best round's, every round's figures kept."""
    out = dict(runs[-1])
    out["rounds"] = runs
    errors = [r["error"] for r in runs if r.get("error")]
    if errors:
        out["error"] = errors[0]
    cells: dict[str, Any] = {}
    for r in runs:
        for key, cell in r.get("cells", {}).items():
            best = cells.get(key)
            if "error" in cell or not cell.get("ok", False):
                cells[key] = cell  # a wrong answer or an error is never hidden by a better round
            elif best is None or ("seconds" in best and best.get("ok") and cell["seconds"] < best["seconds"]):
                cells[key] = cell
    out["cells"] = cells
    return out


def render(systems: list[dict[str, Any]], machine: str) -> str:
    base = systems[0]
    lines = [f"h5pyd through HSDS, with and without fronts ({machine}); seconds, best of every round's best of N, ratio to HSDS", ""]
    lines.append("| workload | " + " | ".join(s["title"] for s in systems) + " |")
    lines.append("|---|" + "---|" * len(systems))
    for key, label in WORKLOADS:
        row = [label]
        b = base["cells"].get(key, {}).get("seconds")
        for s in systems:
            cell = s["cells"].get(key)
            if s.get("error") or cell is None:
                row.append("—")
            elif "error" in cell:
                row.append("error")
            else:
                mark = "" if cell["ok"] else " ✗"
                ratio = f" ({cell['seconds'] / b:.2f}×)" if b and s is not base else ""
                row.append(f"{cell['seconds']:.4f}{ratio}{mark}")
        lines.append("| " + " | ".join(row) + " |")
    lines.append("")
    for s in systems:
        if s.get("error"):
            lines.append(f"- {s['title']}: {s['error']}")
        elif s["backend"] is not None:
            lines.append(f"- {s['title']}: chunk reads served {s.get('served')}, forwarded {s.get('forwarded_reads')}, "
                         f"fallbacks {s.get('fallbacks')}; started in {s['start_seconds']:.1f} s")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    from data import FULL, SMALL, ensure_data
    from report import machine_info
    from systems.base import BenchContext
    from workloads import Selections, expected_results

    sys.path.insert(0, str(REPO_ROOT / "tests"))
    import hsds_harness as harness  # type: ignore[import-not-found, unused-ignore]

    sys.path.pop(0)
    venv = harness.ensure_hsds_venv()
    profile = SMALL if args.small else FULL
    data = ensure_data(args.data_dir, profile, want_zarr=False, echo=echo)
    sel = Selections.for_profile(profile)
    ctx = BenchContext(data, sel, expected_results(data, sel), args.repeat)
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    order = [("HSDS", None), *((f"front {b}", b) for b in backends)]
    runs: dict[str, list[dict[str, Any]]] = {title: [] for title, _ in order}
    for k in range(max(1, args.rounds)):
        rotated = order[k % len(order):] + order[: k % len(order)]  # no system always runs first or last
        for title, backend in rotated:
            echo(f"round {k + 1}: running {title} ...")
            runs[title].append(run_system(title, backend, ctx, venv))
    systems = [_best(runs[title]) for title, _ in order]
    m = machine_info()
    text = render(systems, f"{m.get('cores', '?')} cores, {profile.name} profile")
    print(text)
    if args.json:
        args.json.write_text(json.dumps({"profile": profile.name, "repeat": args.repeat, "rounds": args.rounds, "machine": m, "systems": systems},
                                        indent=1, default=str))
    failed = [s["title"] for s in systems if s.get("error") or any(not c.get("ok", False) for c in s["cells"].values())]
    print(f"FAILED: mismatch or error in: {', '.join(failed)}" if failed else "every answer matched numpy")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
