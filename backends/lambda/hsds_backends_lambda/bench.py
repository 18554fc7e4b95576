"""Extra benchmark figures for the ``lambda`` backend (called by ``benchmarks/systems/backends.py``).

The benchmark's cells time reads; this adds what only this backend can say: the per-invoke
overhead of the transport (an empty invoke through aiobotocore, the Invoke API, the Runtime
API and an awslambdaric worker, and back), what the run would have been billed on AWS, and
the AWS cost/latency model's estimates (:class:`~hsds_backends_lambda.cost.AwsLambdaModel`)
for the benchmark's reads.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Mapping
from typing import Any

from .backend import LambdaBackend
from .client import InvokeStats
from .cost import AwsLambdaModel

__all__ = ["bench_extras", "measure_invoke_overhead"]


async def measure_invoke_overhead(backend: LambdaBackend, n: int = 40) -> dict[str, float]:
    """Time ``n`` invokes of ``{"ping": true}`` (the handler returns at once) through ``backend``'s client.

    Returns median, p90 and min round trip in seconds (after 3 untimed invokes): the
    per-invoke overhead of the transport.
    """
    client = await backend.client()
    stats = InvokeStats()
    times = []
    for _ in range(n + 3):
        t = time.perf_counter()
        await client.invoke(b'{"ping":true}', stats)
        times.append(time.perf_counter() - t)
    times = sorted(times[3:])
    return {"median": statistics.median(times), "p90": times[int(0.9 * (len(times) - 1))], "min": times[0]}


async def bench_extras(reader: Any, grid: Any, table: Any, sel: Any, expected: Mapping[str, Any], hsds_root: Any, bucket: str, query: str) -> list[str]:
    """Return the benchmark's Lambda lines: per-invoke overhead, this run's billing, the AWS model's estimates.

    Parameters
    ----------
    reader
        The benchmark's :class:`hsds_backends.Reader`; its ``lambda`` backend has served the run.
    grid, table
        The benchmark's grid and table datasets.
    sel
        The benchmark's selections (``stepped``, ``chunk``, ``points``).
    expected
        The expected arrays by workload key (their sizes are the result bytes).
    hsds_root, bucket
        Where the stored chunks are (their sizes are the bytes read from S3).
    query
        The benchmark's query on ``table``.
    """
    from hsds_backends.plan import plan_points, plan_query

    backend = reader.backend("lambda")
    if not isinstance(backend, LambdaBackend):
        raise TypeError(f"the reader's 'lambda' backend is a {type(backend).__name__}, not a LambdaBackend")
    lines = []
    ov = await measure_invoke_overhead(backend)
    lines.append(
        f"per-invoke overhead (empty invoke through aiobotocore → local runtime → awslambdaric, {backend.local_workers} workers): "
        f"median {ov['median'] * 1e3:.2f} ms, p90 {ov['p90'] * 1e3:.2f} ms, min {ov['min'] * 1e3:.2f} ms"
    )
    st = backend.stats
    lines.append(
        f"this run: {st.tasks} chunk tasks in {st.invokes} invokes ({st.retried} retried, {st.throttled} throttled, "
        f"{st.split} split), {st.gb_s:.2f} GB-s billed-equivalent = ${st.dollars:.4f} at AWS prices"
    )
    plans = {
        "full": grid.plan(None),
        "stepped": grid.plan(sel.stepped),
        "chunk": grid.plan(sel.chunk),
        "points": plan_points(grid.meta, sel.points),
        "query": plan_query(table.meta, query, None, None, None),
    }
    model = AwsLambdaModel.from_config(backend.config, memory_mb=backend.memory_mb, arch=backend.arch)
    lines.append(
        f"AWS model ({model.memory_mb} MB {model.arch}, ${model.gb_s_price}/GB-s, warm {model.warm_overhead_s * 1e3:.0f} ms, "
        f"S3 {model.s3_latency_s * 1e3:.0f} ms + {model.s3_mb_s:.0f} MB/s, cold start {model.cold_start_s:.1f} s, "
        f"client {model.client_mb_s:.0f} MB/s; one invoke per chunk as HSDS did):"
    )
    for key, plan in plans.items():
        stored = 0
        for t in plan.tasks:
            loc = t.location
            if loc is not None:
                p = os.path.join(str(hsds_root), loc.bucket, loc.key)
                stored += os.path.getsize(p) if os.path.exists(p) else 0
        raw = plan.num_chunks * plan.meta.chunk_nbytes
        result = int(getattr(expected.get(key), "nbytes", 0))
        warm = model.estimate(chunks=plan.num_chunks, stored_bytes=stored, raw_bytes=raw, result_bytes=result)
        cold = model.with_(cold=True).estimate(chunks=plan.num_chunks, stored_bytes=stored, raw_bytes=raw, result_bytes=result)
        lines.append(
            f"  {key:<8} {plan.num_chunks:>4} chunks: warm {warm.seconds * 1e3:,.0f} ms, cold {cold.seconds * 1e3:,.0f} ms; "
            f"{warm.gb_s:.3f} GB-s, ${warm.dollars:.6f} per read (cold ${cold.dollars:.6f}); {warm.invokes} × {warm.per_invoke_s * 1e3:.0f} ms"
        )
    return lines
