"""The decode floor: inflate every stored block of the grid on all cores, and nothing else.

A full read cannot take less than decoding what is stored, so this column is the floor the
readers are measured against (issue #15). The grid's chunk objects are read into memory first
(not timed); then every Blosc block's zlib stream is inflated, over a thread pool of one thread
per core, with the fastest inflater installed (libdeflate, which the Blosc header's block sizes
let it use, else ISA-L, else zlib). No copy, no shuffle, no placement: the answer is not built,
so the cell has no ✓ (``ok`` is ``None``).
"""

from __future__ import annotations

import os
import struct
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from results import Measurement, SystemRun
from systems.base import BenchContext

_HEADER = struct.Struct("<BBBBIII")
TITLE = "decode floor"


def _streams(blob: bytes) -> list[tuple[memoryview, int]]:
    """The (zlib stream, decoded size) of each block of one Blosc-1 container of zlib blocks (typesize 1)."""
    _v, _vlz, flags, _ts, nbytes, bsize, _cb = _HEADER.unpack_from(blob)
    if flags & 0x02 or not nbytes or not bsize:  # stored uncompressed, or empty: nothing to inflate
        return []
    n = -(-nbytes // bsize)
    view = memoryview(blob)
    out = []
    for i, start in enumerate(struct.unpack_from(f"<{n}i", blob, _HEADER.size)):
        (csize,) = struct.unpack_from("<i", blob, start)
        size = min(bsize, nbytes - i * bsize)
        if csize != size:  # a block stored raw needs no inflating
            out.append((view[start + 4 : start + 4 + csize], size))
    return out


def _inflater() -> tuple[str, Any]:
    try:
        import deflate

        return "libdeflate", lambda s: deflate.zlib_decompress(s[0], s[1])
    except ImportError:
        pass
    try:
        from isal import isal_zlib

        return "ISA-L", lambda s: isal_zlib.decompress(s[0])
    except ImportError:
        return "zlib", lambda s: zlib.decompress(s[0])


def bench_decode_floor(ctx: BenchContext, grid_dir: str) -> SystemRun:
    """Time inflating every stored block of the grid's chunk objects in ``grid_dir`` (best of ``ctx.repeat``)."""
    run = SystemRun(TITLE)
    try:
        blobs = [p.read_bytes() for p in sorted(Path(grid_dir).rglob("*")) if p.is_file() and not p.name.startswith(".")]
        streams = [s for b in blobs for s in _streams(b)]
    except (OSError, struct.error) as exc:
        run.error = f"cannot read the grid's chunk objects in {grid_dir}: {exc}"
        return run
    which, inflate = _inflater()
    threads = os.cpu_count() or 1
    # a few batches per thread: the floor must not pay a future per block
    batches = [streams[i :: 4 * threads] for i in range(4 * threads)]

    def work(batch: list[tuple[memoryview, int]]) -> None:
        for s in batch:
            inflate(s)

    best = float("inf")
    with ThreadPoolExecutor(threads) as pool:
        for _ in range(max(3, ctx.repeat) + 1):  # the first is a warm-up
            t = time.perf_counter()
            list(pool.map(work, batches))
            best = min(best, time.perf_counter() - t)
    run.cells["full"] = Measurement(best, None, "decode only")
    run.info = {"inflater": which, "threads": threads, "blocks": len(streams), "stored_mb": sum(len(b) for b in blobs) / 2**20}
    run.notes.append(
        f"{TITLE}: {len(streams)} zlib blocks of {len(blobs)} chunk objects inflated with {which} on {threads} threads, "
        "nothing else (no copy, no placement): the least a full read can take"
    )
    return run
