"""A cost/latency model for chunk reads on real AWS Lambda.

Every figure is a parameter with a documented source (docs/aws-lambda.md §3,
docs/aws-lambda.md §1.4); the ones marked *assumed* have no official number and must be
measured in a real account before a decision depends on them. The model::

    invokes B         = batches of k = ceil(chunks / B) chunk tasks each
    per invoke (s)    = warm_overhead + s3_latency + stored/B / s3_bandwidth
                        + raw/B / (decode_rate · vCPUs) + result/B / encode_rate
    environments E    = min(B, concurrency)           waves W = ceil(B / E)
    scale-up (s)      = max(0, E - 1000) / 1000 · 10  (1,000 new environments per 10 s per function,
                                                       docs/aws-lambda.md §1.4)
    wall (s)          = [cold_start] + scale-up + max(W · per_invoke, result / client_bandwidth + per_invoke)
    GB-s              = B · ceil_ms(per_invoke) · memory/1024  [+ E · cold_start · memory/1024: INIT is billed since 2025-08-01]
    dollars           = GB-s · price_gb_s + B · price_request + chunks · price_s3_get

with vCPUs = memory_mb / 1769 (1,769 MB = one vCPU-second per second, docs/aws-lambda.md §1.4).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from hsds_backends.config import option

from ._config import CONFIG_KEYS
from .wire import PRICE_GB_S, PRICE_REQUEST

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
        $0.0000166667/GB-s x86, $0.0000133334 arm64, $0.20 per 1M requests, S3 GET $0.0004 per 1k
        (docs/aws-lambda.md §3).
    cold_start_s
        Python zip runtime 150–400 ms plus numpy/numcodecs imports 0.5–2 s (docs/aws-lambda.md §3): 0.8 s.
    cold
        Whether the read starts with cold environments (the first read after deploy or idle).
    warm_overhead_s
        Warm invoke latency, median ≈ 25 ms (Wang et al., USENIX ATC'18, docs/aws-lambda.md §3).
    s3_latency_s
        S3 Standard first-byte median, "tens of ms" (docs/aws-lambda.md §3): 30 ms.
    s3_mb_s
        *Assumed* per-function S3 throughput at 1,769 MB: no official figure (PyWren measured
        ~30 MB/s per worker in 2017; throughput rises with memory, docs/aws-lambda.md §3): 80 MB/s.
    decode_mb_s
        Decode+select throughput per vCPU in MB of raw chunk bytes per second; default from
        this repository's ``inline`` benchmark on one core (zlib + shuffle): 250 MB/s.
    encode_mb_s
        base64 + JSON of results in the function: 1,000 MB/s.
    client_mb_s
        *Assumed* bandwidth from Lambda to the reading client (same region): 600 MB/s.
    concurrency
        Invokes in flight: min(``aws_lambda_max_invoke``, account concurrency 1,000, docs/aws-lambda.md §1.4).
    """

    memory_mb: int = 1769
    arch: str = "x86_64"
    price_gb_s: float | None = None
    price_request: float = PRICE_REQUEST
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
        kw: dict[str, Any] = {
            attr: option(config, key, CONFIG_KEYS[key])
            for key, attr in (
                ("aws_lambda_memory_mb", "memory_mb"),
                ("aws_lambda_arch", "arch"),
                ("aws_lambda_price_gb_s", "price_gb_s"),
                ("aws_lambda_price_request", "price_request"),
            )
        }
        kw["concurrency"] = min(1000, option(config, "aws_lambda_max_invoke", CONFIG_KEYS["aws_lambda_max_invoke"]))
        kw.update(overrides)
        return cls(**kw)

    @property
    def gb_s_price(self) -> float:
        if self.price_gb_s is not None:
            return self.price_gb_s
        return PRICE_GB_S.get(self.arch, PRICE_GB_S["x86_64"])

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
            Batches; default one invoke per chunk (as HSDS did, docs/hsds-format.md §6.2).
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
