"""Measured latency per plan shape, kept per backend by the selector's ledger (:mod:`hsds_backends._ledger`).

A backend's declared cost model (``overhead_s``, ``per_chunk_s``, or its own
:meth:`~hsds_backends.model.Backend.estimate_cost`) is a guess made before it
ever ran; what it really costs depends on the machine, the data and its state
(a data node's chunk cache warms up, a cluster gets busy). The reader therefore
records how long each request took on the backend that ran it, keyed by the
request's *shape* — its kind and a size bucket of its chunk count — because a
one-chunk read and a 256-chunk read say little about each other.

Size buckets grow by powers of four: 1, 2–4, 5–16, 17–64, 65–256, 257–1024, …
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Final

from .errors import PluginError

__all__ = ["ShapeKey", "shape_key", "bucket_label", "LatencyTable", "Measured"]

#: ``(kind, bucket)``: ``kind`` is ``hyperslab``, ``points`` or ``query``; bucket 0 is one
#: chunk, bucket ``b >= 1`` holds ``4**(b-1) + 1`` to ``4**b`` chunks.
ShapeKey = tuple[str, int]

#: Readings a key keeps (see :class:`LatencyTable` for why a median of five).
DEFAULT_WINDOW: Final = 5


def shape_key(kind: str, num_chunks: int) -> ShapeKey:
    """Return the latency key of a plan of ``kind`` touching ``num_chunks`` chunks."""
    n = max(1, num_chunks)
    # bucket b covers (4**(b-1), 4**b]: the number of base-4 digits of n - 1, rounded up
    return (kind, ((n - 1).bit_length() + 1) // 2)


def bucket_label(bucket: int) -> str:
    """Return ``"1 chunk"``, ``"2–4 chunks"``, ``"65–256 chunks"``, … for a size bucket."""
    if bucket <= 0:
        return "1 chunk"
    return f"{4 ** (bucket - 1) + 1}–{4**bucket} chunks"


def _median(values: list[float] | list[int]) -> float:
    """Return the median of a few values (``statistics.median`` without its generality: it runs per request)."""
    s = sorted(values)
    m = len(s) // 2
    return float(s[m]) if len(s) % 2 else (s[m - 1] + s[m]) / 2


@dataclass(frozen=True, slots=True)
class Measured:
    """What :meth:`LatencyTable.lookup` found for a key."""

    key: ShapeKey
    """The key the figure was measured at (the one asked for, or the nearest of its kind)."""
    wave_s: float
    """Median seconds per wave of ``max_concurrency`` tasks over the key's recent readings."""
    chunks: int
    """Median chunk count of those readings (for "measured at ~N chunks")."""
    exact: bool
    """Whether ``key`` is the key asked for."""


class LatencyTable:
    """Recent per-wave wall times of one backend, per :data:`ShapeKey`.

    Each key keeps its last ``window`` readings; the figure used is their
    median. A median of the last few rather than an exponentially weighted
    mean, because what the selector must notice is a *change of regime* — a
    data node's chunk cache that has warmed up, a cluster that became busy —
    and a median of five switches over completely after three readings in the
    new regime, while an EWMA with a typical weight of 0.3 still carries a
    third of a 3× slower first reading after three more. The median also
    ignores a single outlier (a garbage-collection pause, a neighbour's burst)
    that would drag a mean for many requests.

    Parameters
    ----------
    window
        Readings kept per key (at least 1).
    """

    __slots__ = ("window", "_readings", "_attempts", "_figures")

    def __init__(self, window: int = DEFAULT_WINDOW) -> None:
        if window < 1:
            raise PluginError(f"latency window {window!r} must be >= 1 (the ledger's window); use 5, the default")
        self.window = window
        self._readings: dict[ShapeKey, deque[tuple[float, int]]] = {}
        self._attempts: dict[ShapeKey, int] = {}
        # the medians, recomputed on record: lookups (one per candidate per request) outnumber readings
        self._figures: dict[ShapeKey, tuple[float, int]] = {}

    def __repr__(self) -> str:
        keys = ", ".join(f"{k[0]}/{bucket_label(k[1])}: {len(v)}" for k, v in sorted(self._readings.items()))
        return f"<LatencyTable {keys or 'empty'}>"

    def record(self, key: ShapeKey, wave_s: float, chunks: int) -> None:
        """Add a reading: ``wave_s`` seconds per wave for a request of ``chunks`` chunks."""
        q = self._readings.get(key)
        if q is None:
            q = self._readings[key] = deque(maxlen=self.window)
        q.append((max(0.0, wave_s), chunks))
        self._figures[key] = (_median([r[0] for r in q]), int(_median([r[1] for r in q])))

    def note_attempt(self, key: ShapeKey) -> None:
        """Count a request of shape ``key`` run on this backend, measured or not."""
        self._attempts[key] = self._attempts.get(key, 0) + 1

    def attempts(self, key: ShapeKey) -> int:
        """Return how many requests of shape ``key`` ran on this backend."""
        return self._attempts.get(key, 0)

    def measured(self, key: ShapeKey) -> bool:
        """Return whether there is a reading for ``key`` itself."""
        return key in self._figures

    def lookup(self, key: ShapeKey) -> Measured | None:
        """Return the figure of ``key``, else of the nearest measured bucket of the same kind, else ``None``.

        Of two buckets equally near, the larger one wins: its readings are
        dominated by per-chunk work, which scales by waves better than the
        fixed costs that dominate small reads.
        """
        fig = self._figures.get(key)
        if fig is not None:
            return Measured(key, fig[0], fig[1], True)
        kind, bucket = key
        near: ShapeKey | None = None
        for k in self._figures:
            if k[0] == kind and (near is None or (abs(k[1] - bucket), -k[1]) < (abs(near[1] - bucket), -near[1])):
                near = k
        if near is None:
            return None
        fig = self._figures[near]
        return Measured(near, fig[0], fig[1], False)

    def clear(self) -> None:
        """Forget every reading and attempt."""
        self._readings.clear()
        self._attempts.clear()
        self._figures.clear()
