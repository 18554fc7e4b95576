"""What a function of the local Lambda runtime would have been billed, and its ``REPORT`` lines.

Billing follows AWS (docs/aws-lambda.md §3): duration rounded up to the millisecond, times
memory; the init phase of a cold start is billed too (zip runtimes, since 2025-08-01). The
``REPORT`` line is the one the ``Tail`` log carries (docs/aws-lambda.md §1.2), which is where a
client reads its billed duration from.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from ..wire import PRICE_GB_S, PRICE_REQUEST

__all__ = ["Meter", "peak_memory_mb", "report_line"]


@dataclass
class Meter:
    """What a function would have been billed, and what happened to its invokes.

    ``gb_s`` counts billed duration × memory, plus the init phase of cold starts.
    """

    invocations: int = 0
    errors: int = 0
    throttles: int = 0
    timeouts: int = 0
    crashes: int = 0
    cold_starts: int = 0
    billed_ms: int = 0
    init_ms: float = 0.0
    gb_s: float = 0.0
    request_bytes: int = 0
    response_bytes: int = 0

    def dollars(self, price_gb_s: float = PRICE_GB_S["x86_64"], price_request: float = PRICE_REQUEST) -> float:
        """Return the would-be charge at the given prices (defaults: x86, us-east-1, docs/aws-lambda.md §3)."""
        return self.gb_s * price_gb_s + self.invocations * price_request

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["dollars"] = self.dollars()
        return d

    def bill(self, duration_ms: float, memory_mb: int) -> int:
        """Bill one invocation of ``duration_ms`` at ``memory_mb``; return the billed milliseconds."""
        billed = max(1, math.ceil(duration_ms))
        self.billed_ms += billed
        self.gb_s += billed / 1000 * memory_mb / 1024
        return billed

    def bill_init(self, init_ms: float, memory_mb: int) -> None:
        """Bill the init phase of a cold start."""
        self.init_ms += init_ms
        self.gb_s += init_ms / 1000 * memory_mb / 1024


def report_line(
    request_id: str,
    duration_ms: float,
    billed_ms: int,
    memory_mb: int,
    max_memory_mb: int,
    init_ms: float | None = None,
    timed_out: bool = False,
) -> str:
    """Return the ``REPORT`` line of one invocation, as Lambda logs it."""
    report = (
        f"REPORT RequestId: {request_id}\tDuration: {duration_ms:.2f} ms\tBilled Duration: {billed_ms} ms\t"
        f"Memory Size: {memory_mb} MB\tMax Memory Used: {max_memory_mb} MB\t"
    )
    if init_ms is not None:
        report += f"Init Duration: {init_ms:.2f} ms\t"
    if timed_out:
        report += "Status: timeout"
    return report


def peak_memory_mb(pid: int | None) -> int:
    """Return the peak resident memory of process ``pid`` in MB (``VmHWM``; 0 if unknown)."""
    if pid is None:
        return 0
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) // 1024
    except OSError:
        pass
    return 0
