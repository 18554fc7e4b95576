"""The peak memory of one hsds-backends full read: RSS growth in a fresh process, and the tracemalloc peak."""

from __future__ import annotations

import gc
import json
import subprocess
import sys
import tracemalloc
from typing import Any

from common import BENCH_DIR, BUCKET, DOMAIN
from data import BenchData

#: The program that measures the RSS growth in a fresh interpreter.
MEMORY_PROBE = BENCH_DIR / "memory_probe.py"


def measure_memory(data: BenchData, backend: str) -> dict[str, Any]:
    """Return the peak-memory figures of one full read on ``backend`` (untimed).

    Two figures: the peak RSS growth of a full read in a fresh interpreter
    (``memory_probe.py``: Linux ``VmHWM`` after resetting it through ``/proc/self/clear_refs``;
    the fresh process keeps earlier reads' freed memory out of the figure), and the
    ``tracemalloc`` peak of a full read in this process (Python and numpy allocations,
    independent of the allocator).

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
        [sys.executable, str(MEMORY_PROBE), str(data.hsds_root), BUCKET, DOMAIN, backend],
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
