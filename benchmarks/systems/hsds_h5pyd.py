"""Real HSDS 1.0.2 via h5pyd, serving the very files the project's writer wrote.

HSDS runs from its own virtualenv (``tests/hsds_harness.py``) on unix sockets with the posix root
``data.hsds_root``; ``h5pyd_client.py`` runs in that virtualenv too and times each workload with
``time.perf_counter``; this module checks its saved results against numpy.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import numpy as np

from common import BENCH_DIR, BUCKET, DOMAIN, HSDS_NAME, QUERY, REPO_ROOT
from results import Measurement, SystemRun
from systems.base import BenchContext
from workloads import identical

#: The h5pyd client program, run with the HSDS virtualenv's interpreter.
H5PYD_CLIENT = BENCH_DIR / "h5pyd_client.py"


def _slice_args(s: tuple[slice, ...]) -> list[list[int | None]]:
    return [[x.start, x.stop, x.step] for x in s]


def run_client(server: Any, harness: Any, timeout: float, args: dict[str, Any]) -> dict[str, Any]:
    """Run ``h5pyd_client.py`` with ``args`` against ``server``; return its result document.

    Parameters
    ----------
    server : tests.hsds_harness.HsdsServer
        A running server: its virtualenv's interpreter and client environment are used.
    harness : module
        ``tests/hsds_harness.py`` (for its ``HsdsError``).
    timeout : float
        Seconds the client may take.
    args : dict
        The client's arguments (see its module docstring).

    Raises
    ------
    HsdsError
        The client failed or timed out (with its stderr and the server's log tail).
    """
    work = server.socket_dir / "bench-client"
    work.mkdir(parents=True, exist_ok=True)
    args_path, result_path = work / "args.json", work / "result.json"
    args_path.write_text(json.dumps(args))
    cmd = [str(server.python), str(H5PYD_CLIENT), str(args_path), str(result_path)]
    try:
        proc = subprocess.run(
            cmd,
            cwd=str(work),
            env=server.client_env(),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired as exc:
        raise harness.HsdsError(f"h5pyd client timed out after {timeout}s\n{server.log_tail(30)}") from exc
    if proc.returncode != 0:
        raise harness.HsdsError(
            f"h5pyd client failed (rc={proc.returncode}):\n"
            f"{proc.stderr[-6000:]}\nstdout: {proc.stdout[-1000:]}\n{server.log_tail(30)}"
        )
    result: dict[str, Any] = json.loads(result_path.read_text())
    return result


def bench_hsds(ctx: BenchContext, echo: Callable[[str], None]) -> SystemRun:
    """Time the workloads through h5pyd against a real HSDS 1.0.2 serving our writer's files.

    The first full read after server start is the cold figure (fresh DN chunk caches; the OS
    page cache is warm for every system alike).

    Returns
    -------
    SystemRun
        ``error`` is set when HSDS cannot be started (e.g. no package registry to build its venv).
    """
    data, sel, expected = ctx.data, ctx.sel, ctx.expected
    run = SystemRun(HSDS_NAME)
    sys.path.insert(0, str(REPO_ROOT / "tests"))
    try:
        import hsds_harness as harness  # type: ignore[import-not-found, unused-ignore]  # tests/ is not a package
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
        assert server.socket_dir is not None  # start() made it
        out_dir = server.socket_dir / "bench-out"
        out_dir.mkdir(exist_ok=True)
        res = run_client(
            server,
            harness,
            3600,
            {
                "domain": DOMAIN,
                "repeat": ctx.repeat,
                "stepped": _slice_args(sel.stepped),
                "chunk": _slice_args(sel.chunk),
                "points": sel.points.tolist(),
                "query": QUERY,
                "out_dir": str(out_dir),
            },
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
