#!/usr/bin/env python
"""Time the benchmark's workloads through h5pyd against a running HSDS; run in HSDS's own virtualenv.

Run by :func:`systems.hsds_h5pyd.bench_hsds` with the HSDS virtualenv's interpreter::

    python benchmarks/h5pyd_client.py ARGS_JSON RESULT_JSON

with the environment of ``HsdsServer.client_env()`` (``HS_ENDPOINT``, ``HS_USERNAME``,
``HS_PASSWORD``, ``HS_BUCKET``). ``ARGS_JSON`` holds ``domain``, ``repeat``, ``stepped`` and
``chunk`` (``[start, stop, step]`` per dimension), ``points`` (``[[row, col], ...]``), ``query``,
``out_dir`` and optionally ``warm_up_table`` (read ten table rows first). Each workload's result is saved as ``<out_dir>/<key>.npy`` for the caller to check
against numpy; ``RESULT_JSON`` gets ``{"cells": {key: {"seconds", "npy"} or {"error"}},
"read_where": {...}, "versions": {...}}``. The first full read after the server started is the
cold figure (``full_cold``); every other figure is timed by :func:`timing.time_best`, the rule all
systems follow (this script's folder is on ``sys.path``, as for any script run by path).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from time import perf_counter
from typing import Any

import h5pyd  # type: ignore[import-not-found, unused-ignore]
import numcodecs  # type: ignore[import-not-found, unused-ignore]
import numpy as np

from timing import time_best


#: What ``json`` cannot write itself, and how to write it.
_TO_JSON: tuple[tuple[Any, Any], ...] = (
    (np.generic, lambda o: o.item()),
    (np.ndarray, lambda o: o.tolist()),
    (bytes, lambda o: o.decode("latin-1")),
    (set | tuple, list),
)


def _json_default(o: Any) -> Any:
    """Make numpy scalars and arrays, bytes, sets and tuples JSON-serialisable."""
    for types, convert in _TO_JSON:
        if isinstance(o, types):
            return convert(o)
    raise TypeError(f"not JSON serialisable: {type(o)!r}")


def run(args: dict[str, Any]) -> dict[str, Any]:
    """Time every workload of ``args`` (see the module docstring) and return the result document."""
    kw = {
        "endpoint": os.environ["HS_ENDPOINT"],
        "username": os.environ["HS_USERNAME"],
        "password": os.environ["HS_PASSWORD"],
        "bucket": os.environ["HS_BUCKET"],
    }
    f = h5pyd.File(args["domain"], "r", **kw)
    g, t = f["/grid"], f["/table"]
    st = slice(*args["stepped"][0]), slice(*args["stepped"][1])
    ch = slice(*args["chunk"][0]), slice(*args["chunk"][1])
    pts = [tuple(p) for p in args["points"]]
    nrows = t.shape[0]
    ops: dict[str, Callable[[], Any]] = {
        "full": lambda: g[...],
        "stepped": lambda: g[st],
        "chunk": lambda: g[ch],
        "points": lambda: g.points[pts],
        # Table.read_where() is the documented call, but see "read_where" below
        "query": lambda: t.__getitem__((slice(0, nrows),), query=args["query"]),
    }
    out: dict[str, Any] = {
        "cells": {},
        "versions": {
            "h5pyd": h5pyd.version.version,
            "numpy": np.__version__,
            "numcodecs": numcodecs.__version__,
            "python": sys.version.split()[0],
        },
    }

    def save(key: str, arr: Any) -> str:
        path = os.path.join(args["out_dir"], key + ".npy")
        np.save(path, np.asarray(arr))
        return path

    if args.get("warm_up_table"):
        t[0:10]  # a backend behind HSDS starts here, not in the grid's cold read
    for key, fn in ops.items():
        try:
            if key == "full":  # the first read after server start: cold, and the warm-up
                t0 = perf_counter()
                res = fn()
                cold = perf_counter() - t0
                npy = save(key, res)
                out["cells"]["full_cold"] = {"seconds": cold, "npy": npy}
            else:
                res = fn()  # warm-up
                npy = save(key, res)
            best = time_best(fn, args["repeat"], result=res)[0]
            out["cells"][key] = {"seconds": best, "npy": npy}
            del res
        except Exception as exc:  # noqa: BLE001 - record and go on with the next workload
            out["cells"][key] = {"error": f"{type(exc).__name__}: {str(exc)[:300]}"}

    try:  # the documented query call, timed once, to report what it returns
        t0 = perf_counter()
        n = sum(1 for _ in t.read_where(args["query"]))
        s = perf_counter() - t0
        out["read_where"] = {"rows": n, "seconds": s}
    except Exception as exc:  # noqa: BLE001
        out["read_where"] = {"error": f"{type(exc).__name__}: {str(exc)[:300]}"}
    f.close()
    return out


def main(argv: list[str]) -> int:
    """Read the arguments file, run, write the result file."""
    args_path, result_path = argv
    with open(args_path) as fa:
        args = json.load(fa)
    out = run(args)
    with open(result_path, "w") as fr:
        json.dump(out, fr, default=_json_default)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
