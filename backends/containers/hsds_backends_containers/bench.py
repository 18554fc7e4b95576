"""Extra benchmark figures for the ``containers`` backend (called by ``benchmarks/bench.py``).

The benchmark's own cells time reads through a fresh reader: its "cold" full
read includes starting the local DNs, and its warm reads hit the DNs'
decoded-chunk caches. HSDS's published figure is a cold-cache read from a
server that is already up, so this adds the comparable figures: DN start-up
time alone, the first full read from freshly started DNs (cold caches), the
best full read and one-chunk read with the DN caches switched off, and the
cache statistics of the benchmark's own DNs.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import numpy as np

from .backend import ContainersBackend

__all__ = ["bench_extras"]


async def bench_extras(reader: Any, grid: Any, chunk_sel: Any, expected: Mapping[str, np.ndarray[Any, Any]], repeat: int = 3) -> list[str]:
    """Return one-line notes with the figures described in the module docstring."""
    notes: list[str] = []
    main = reader.backend("containers")
    if isinstance(main, ContainersBackend) and main.started:
        caches = [i.get("cache", {}) for i in await main.info()]
        hits = sum(c.get("hits", 0) for c in caches)
        misses = sum(c.get("misses", 0) for c in caches)
        mb = sum(c.get("bytes", 0) for c in caches) / 2**20
        notes.append(
            f"{main.node_count} local DNs on unix sockets; warm cells read through the DNs' chunk caches "
            f"({hits} hits, {misses} misses, {mb:.0f} MB cached in total)"
        )
    cfg = dict(reader.config)
    cold = ContainersBackend({**cfg, "backend": "containers"})
    try:
        t = time.perf_counter()
        await cold.start()
        start_s = time.perf_counter() - t
        t = time.perf_counter()
        first = await grid.read(None, backend=cold)
        first_s = time.perf_counter() - t
        ok = first.tobytes() == expected["full"].tobytes()
        del first
    finally:
        await cold.aclose()
    notes.append(
        f"DN start-up {start_s:.2f} s; first full read from freshly started DNs (cold caches, "
        f"the HSDS-comparable figure) {first_s:.2f} s {'✓' if ok else '✗'}"
    )
    nocache = ContainersBackend({**cfg, "backend": "containers", "chunk_mem_cache_size": 0})
    try:
        await nocache.start()
        await grid.read(chunk_sel, backend=nocache)
        best_full = best_chunk = float("inf")
        ok = True
        # each workload in its own loop, as the table's cells are timed
        for _ in range(max(1, repeat)):
            t = time.perf_counter()
            out = await grid.read(None, backend=nocache)
            best_full = min(best_full, time.perf_counter() - t)
            ok = ok and out.tobytes() == expected["full"].tobytes()
            del out
        await grid.read(chunk_sel, backend=nocache)  # warm-up, as for the table's cells
        for _ in range(max(1, repeat)):
            t = time.perf_counter()
            out = await grid.read(chunk_sel, backend=nocache)
            best_chunk = min(best_chunk, time.perf_counter() - t)
            ok = ok and out.tobytes() == expected["chunk"].tobytes()
    finally:
        await nocache.aclose()
    notes.append(
        f"with the DN caches off (every chunk fetched and decoded): full read {best_full:.2f} s, "
        f"one chunk {best_chunk * 1e3:.1f} ms {'✓' if ok else '✗'}"
    )
    return notes
