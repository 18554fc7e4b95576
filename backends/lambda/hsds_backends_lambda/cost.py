"""A cost/latency model for chunk reads on real AWS Lambda.

Every figure is a parameter with a documented source (aws-lambda.md §3, §1.4); the ones
marked *assumed* have no official number and must be measured in a real account before a
decision depends on them. The model::

    invokes B         = batches of k = ceil(chunks / B) chunk tasks each
    per invoke (s)    = warm_overhead + s3_latency + stored/B / s3_bandwidth
                        + raw/B / (decode_rate · vCPUs) + result/B / encode_rate
    environments E    = min(B, concurrency)           waves W = ceil(B / E)
    scale-up (s)      = max(0, E - 1000) / 1000 · 10  (1,000 new environments per 10 s per function, §1.4)
    wall (s)          = [cold_start] + scale-up + max(W · per_invoke, result / client_bandwidth + per_invoke)
    GB-s              = B · ceil_ms(per_invoke) · memory/1024  [+ E · cold_start · memory/1024: INIT is billed since 2025-08-01]
    dollars           = GB-s · price_gb_s + B · price_request + chunks · price_s3_get

with vCPUs = memory_mb / 1769 (1,769 MB = one vCPU-second per second, §1.4).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

__all__ = ["AwsLambdaModel", "Estimate"]


@dataclass(frozen=True)
class Estimate:
    """The model's answer for one read."""

    seconds: float
    """Expected wall time."""
    dollars: float
    """Expected charge: Lambda GB-s and requests plus S3 GETs."""
    invokes: int
    """Invokes (batches)."""
    gb_s: float
    """Billed GB-seconds."""
    per_invoke_s: float
    """Duration of one invoke."""
    detail: str
    """One line: how the figure was reached."""
    parts: dict[str, float] = field(default_factory=dict)
    """The terms of the wall time."""


@dataclass(frozen=True)
class AwsLambdaModel:
    """Parameters of the model (see the module docstring); all overridable from config.

    Attributes
    ----------
    memory_mb
        Function memory (config ``aws_lambda_memory_mb``); CPU is proportional.
    arch
        ``x86_64`` or ``arm64`` (config ``aws_lambda_arch``): sets the default GB-s price.
    price_gb_s, price_request, price_s3_get
        Dollars (config ``aws_lambda_price_gb_s``, ``aws_lambda_price_request``):
        $0.0000166667/GB-s x86, $0.0000133334 arm64, $0.20 per 1M requests, S3 GET $0.0004 per 1k (§3).
    cold_start_s
        Python zip runtime 150–400 ms plus numpy/numcodecs imports 0.5–2 s (§3): 0.8 s.
    cold
        Whether the read starts with cold environments (the first read after deploy or idle).
    warm_overhead_s
        Warm invoke latency, median ≈ 25 ms (Wang et al., USENIX ATC'18, §3).
    s3_latency_s
        S3 Standard first-byte median, "tens of ms" (§3): 30 ms.
    s3_mb_s
        *Assumed* per-function S3 throughput at 1,769 MB: no official figure (PyWren measured
        ~30 MB/s per worker in 2017; throughput rises with memory, §3): 80 MB/s.
    decode_mb_s
        Decode+select throughput per vCPU in MB of raw chunk bytes per second; default from
        this repository's ``inline`` benchmark on one core (zlib + shuffle): 250 MB/s.
    encode_mb_s
        base64 + JSON of results in the function: 1,000 MB/s.
    client_mb_s
        *Assumed* bandwidth from Lambda to the reading client (same region): 600 MB/s.
    concurrency
        Invokes in flight: min(``aws_lambda_max_invoke``, account concurrency 1,000, §1.4).
    """

    memory_mb: int = 1769
    arch: str = "x86_64"
    price_gb_s: float | None = None
    price_request: float = 0.20 / 1e6
    price_s3_get: float = 0.0004 / 1e3
    cold_start_s: float = 0.8
    cold: bool = False
    warm_overhead_s: float = 0.025
    s3_latency_s: float = 0.030
    s3_mb_s: float = 80.0
    decode_mb_s: float = 250.0
    encode_mb_s: float = 1000.0
    client_mb_s: float = 600.0
    concurrency: int = 1000

    @classmethod
    def from_config(cls, config: Mapping[str, Any], **overrides: Any) -> AwsLambdaModel:
        """Build the model from config keys (``aws_lambda_memory_mb``, ``aws_lambda_arch``, prices, ``aws_lambda_max_invoke``)."""
        kw: dict[str, Any] = {}
        for key, attr, cast in (
            ("aws_lambda_memory_mb", "memory_mb", int),
            ("aws_lambda_arch", "arch", str),
            ("aws_lambda_price_gb_s", "price_gb_s", float),
            ("aws_lambda_price_request", "price_request", float),
        ):
            if config.get(key) not in (None, ""):
                kw[attr] = cast(config[key])
        kw["concurrency"] = min(1000, int(config.get("aws_lambda_max_invoke") or 1000))
        kw.update(overrides)
        return cls(**kw)

    @property
    def gb_s_price(self) -> float:
        if self.price_gb_s is not None:
            return self.price_gb_s
        return 0.0000133334 if self.arch == "arm64" else 0.0000166667

    @property
    def vcpus(self) -> float:
        return self.memory_mb / 1769

    def with_(self, **changes: Any) -> AwsLambdaModel:
        return replace(self, **changes)

    def estimate(self, *, chunks: int, stored_bytes: int, raw_bytes: int, result_bytes: int, invokes: int | None = None) -> Estimate:
        """Estimate one read.

        Parameters
        ----------
        chunks
            Chunk tasks (one S3 GET each).
        stored_bytes, raw_bytes, result_bytes
            Bytes read from S3, decoded (uncompressed chunk bytes) and returned.
        invokes
            Batches; default one invoke per chunk (as HSDS did, §6.2).
        """
        if chunks <= 0:
            return Estimate(0.0, 0.0, 0, 0.0, 0.0, "no chunks")
        b = max(1, min(chunks, invokes or chunks))
        mb = 1024 * 1024
        s3 = (stored_bytes / b) / (self.s3_mb_s * mb)
        decode = (raw_bytes / b) / (self.decode_mb_s * mb * max(self.vcpus, 0.07))
        encode = (result_bytes / b) / (self.encode_mb_s * mb)
        per = self.warm_overhead_s + self.s3_latency_s + s3 + decode + encode
        envs = min(b, self.concurrency)
        waves = math.ceil(b / envs)
        scale = max(0, envs - 1000) / 1000 * 10
        transfer = result_bytes / (self.client_mb_s * mb)
        cold = self.cold_start_s if self.cold else 0.0
        wall = cold + scale + max(waves * per, transfer + per)
        billed_s = math.ceil(per * 1000) / 1000
        gb = self.memory_mb / 1024
        gb_s = b * billed_s * gb + (envs * self.cold_start_s * gb if self.cold else 0.0)
        dollars = gb_s * self.gb_s_price + b * self.price_request + chunks * self.price_s3_get
        detail = (
            f"{b} invokes × {per * 1e3:.0f} ms ({envs} at once, {waves} wave(s)) at {self.memory_mb} MB"
            f"{', cold start' if self.cold else ''}; {gb_s:.2f} GB-s → ${dollars:.6f}"
        )
        return Estimate(
            wall,
            dollars,
            b,
            gb_s,
            per,
            detail,
            {"cold_start": cold, "scale_up": scale, "waves": waves * per, "transfer": transfer, "per_invoke": per},
        )


async def measure_invoke_overhead(backend: Any, n: int = 40) -> dict[str, float]:
    """Time ``n`` invokes of ``{"ping": true}`` (the handler returns at once) through ``backend``'s client.

    Returns median, p90 and min round trip in seconds: the per-invoke overhead of the
    transport (aiobotocore → Invoke API → Runtime API → awslambdaric worker and back).
    """
    import statistics
    import time

    from .client import InvokeStats

    client = await backend._ensure()
    stats = InvokeStats()
    times = []
    for _ in range(n + 3):
        t = time.perf_counter()
        await client.invoke(b'{"ping":true}', stats)
        times.append(time.perf_counter() - t)
    times = sorted(times[3:])
    return {"median": statistics.median(times), "p90": times[int(0.9 * (len(times) - 1))], "min": times[0]}


async def bench_extras(reader: Any, grid: Any, table: Any, sel: Any, expected: Mapping[str, Any], hsds_root: Any, bucket: str, query: str) -> list[str]:
    """Return the Lambda lines of ``benchmarks/bench.py``: per-invoke overhead, meter, AWS model estimates."""
    import os

    from hsds_backends.plan import plan_points, plan_query

    backend = reader.backend("lambda")
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
