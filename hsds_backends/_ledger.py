"""What the selector learns about backends: measured latency and running counters.

The selector's bookkeeping, kept apart from the I/O contract (docs/architecture.md §5): a
:class:`Ledger` belongs to one reader and holds, per backend instance, a
:class:`~hsds_backends._latency.LatencyTable` (seconds per wave of tasks, per plan shape)
and :class:`BackendCounters` (requests, tasks, failures, like HSDS's ``lambda_stats``).
The reader records into it; the selector's estimates read from it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ._latency import DEFAULT_WINDOW, LatencyTable
from .model import CostEstimate, waves

if TYPE_CHECKING:
    from .model import Backend, ReadRequest

__all__ = ["BackendCounters", "Ledger"]


@dataclass
class BackendCounters:
    """Running totals per backend instance, like HSDS's ``lambda_stats``.

    Attributes
    ----------
    requests
        Requests (or failover rounds) run on the backend.
    tasks, in_flight, failed
        Chunk tasks handed to it; of those, not finished yet; failed after its own retries.
    retried
        Retries it reported (``RequestStats.retries``).
    """

    requests: int = 0
    tasks: int = 0
    in_flight: int = 0
    failed: int = 0
    retried: int = 0


class Ledger:
    """Per-backend measurements of one reader.

    Parameters
    ----------
    window
        Readings kept per plan shape (their median is used; see :class:`LatencyTable`).
    """

    __slots__ = ("window", "_latency", "_counters")

    def __init__(self, window: int = DEFAULT_WINDOW) -> None:
        self.window = window
        self._latency: dict[Backend, LatencyTable] = {}
        self._counters: dict[Backend, BackendCounters] = {}

    def __repr__(self) -> str:
        return f"<Ledger {sorted(b.name for b in self._latency)}>"

    def latency(self, backend: Backend) -> LatencyTable:
        """Return ``backend``'s measured latency table (empty until it has served requests)."""
        table = self._latency.get(backend)
        if table is None:
            table = self._latency[backend] = LatencyTable(self.window)
        return table

    def counters(self, backend: Backend) -> BackendCounters:
        """Return ``backend``'s running counters."""
        c = self._counters.get(backend)
        if c is None:
            c = self._counters[backend] = BackendCounters()
        return c

    def observe(self, backend: Backend, request: ReadRequest, seconds: float) -> None:
        """Record a finished request's wall time under its plan shape.

        Called by the reader after a request ran entirely on ``backend`` from an
        already started state (no cold start, no failover, no hedge won elsewhere),
        so the figure is what the backend costs for that shape. Stored per wave of
        ``max_concurrency`` tasks — the whole wall time, fixed overhead included, so
        that the estimate for the same plan is the time measured — which makes
        requests of different sizes within one size bucket comparable.
        """
        n = request.num_chunks
        if n == 0:
            return
        self.latency(backend).record(request.shape, seconds / waves(n, backend.capabilities.max_concurrency), n)

    def estimate(self, backend: Backend, request: ReadRequest) -> CostEstimate:
        """Return the estimate the selector uses: measured latency where there is some, else declared.

        Starts from ``backend.estimate_cost(request)`` (which keeps its dollars, and its
        refusal when infinite). When the backend has served requests of the same shape
        (:attr:`ReadRequest.shape`), the time is waves × the median measured seconds per
        wave ("measured"); else, when it has served the same kind at another size, that
        bucket's figure scaled by waves ("measured at ~N chunks"); else the declared
        figure stands. Cold start (``cold_start_s``) is added while not started.
        """
        declared = backend.estimate_cost(request)
        table = self._latency.get(backend)
        m = table.lookup(request.shape) if table is not None else None
        n = request.num_chunks
        if m is None or n == 0 or not math.isfinite(declared.seconds):
            return declared
        w = waves(n, backend.capabilities.max_concurrency)
        cold = 0.0 if backend.started else backend.cold_start_s

        def detail() -> str:
            src = "measured" if m.exact else f"measured at ~{m.chunks} chunk{'s' if m.chunks != 1 else ''}"
            text = f"{w} wave(s) × {m.wave_s * 1e3:.1f} ms ({src})"
            return text + (f" + cold start {cold:.1f} s" if cold else "")

        return CostEstimate(cold + w * m.wave_s, declared.dollars, detail)
