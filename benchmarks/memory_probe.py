#!/usr/bin/env python
"""Print the peak RSS growth of one full read of the benchmark grid, measured in this fresh interpreter.

Run by :func:`systems.memory.measure_memory`::

    python benchmarks/memory_probe.py HSDS_ROOT BUCKET DOMAIN BACKEND

A fresh process keeps earlier reads' freed memory out of the figure. After one read of a single
chunk (imports, pools, the backend started), Linux's ``VmHWM`` is reset to the current RSS through
``/proc/self/clear_refs``; the full read's ``VmHWM`` minus that RSS is the growth. Prints one JSON
line: ``base_kib``, ``peak_kib`` and ``output_bytes``.
"""

from __future__ import annotations

import asyncio
import gc
import json
import sys


def kib(name: str) -> int:
    """Return the ``/proc/self/status`` figure ``name`` (``VmRSS``, ``VmHWM``) in KiB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(name + ":"):
                return int(line.split()[1])
    raise LookupError(f"{name} not in /proc/self/status")


async def probe(root: str, bucket: str, domain: str, backend: str) -> dict[str, int]:
    """Return ``base_kib``, ``peak_kib`` and ``output_bytes`` of one full read of ``/grid`` on ``backend``."""
    from hsds_backends.api import Reader

    async with Reader({"root_dir": root, "bucket_name": bucket, "backend": backend}) as reader:
        dset = await (await reader.open(domain)).get("/grid")
        await dset.read(tuple(slice(0, c) for c in dset.chunks), backend=backend)  # imports, pools
        gc.collect()
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset VmHWM to the current RSS
        base = kib("VmRSS")
        out = await dset.read(None, backend=backend)
        peak = kib("VmHWM")
        return {"base_kib": base, "peak_kib": peak, "output_bytes": out.nbytes}


def main(argv: list[str]) -> int:
    """Run the probe on ``argv`` (root, bucket, domain, backend) and print its JSON line."""
    root, bucket, domain, backend = argv
    print(json.dumps(asyncio.run(probe(root, bucket, domain, backend))))
    return 0


if __name__ == "__main__":  # the dask backend's spawned workers import this module again
    sys.exit(main(sys.argv[1:]))
