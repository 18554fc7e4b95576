"""The execution contract every backend implements.

:class:`Backend` is an async ABC (modelled on zarr's ``abc/store.py``): one
abstract :meth:`Backend.read_chunk`, a batched :meth:`Backend.read_chunks` with
bounded concurrency derived from it, :meth:`Backend.aclose`, and ``async with``.
Hooks (:mod:`hsds_backends.hookspecs`) build and choose backends; backends do
the I/O (STYLE.md §3).
"""

from __future__ import annotations

import asyncio
import contextvars
import math
import os
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from .plan import ReadPlan
    from .tasks import ChunkResult, ChunkTask

__all__ = [
    "Backend",
    "BackendCounters",
    "Capabilities",
    "CostEstimate",
    "ReadRequest",
    "RequestStats",
    "Choice",
    "current_stats",
    "default_workers",
]


def default_workers() -> int:
    """Return the number of cores this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - non-Linux
        return max(1, os.cpu_count() or 1)


@dataclass(frozen=True, slots=True)
class Capabilities:
    """What a backend can serve and how much of it at once."""

    hyperslab: bool = True
    """Hyperslab (select-string / numpy-index) reads."""
    points: bool = True
    """Point reads (N×rank coordinates)."""
    query: bool = True
    """Row queries over 1-d compound datasets."""
    fields: bool = True
    """Compound field projection."""
    linked_chunks: bool = True
    """Chunks stored in linked HDF5 files (``H5D_CHUNKED_REF``, ``H5D_CONTIGUOUS_REF``)."""
    vlen: bool = True
    """Variable-length types."""
    max_request_bytes: int | None = None
    """Largest task payload one call may carry (``None`` = no limit)."""
    max_response_bytes: int | None = None
    """Largest result one call may return (``None`` = no limit)."""
    max_concurrency: int = 1
    """Chunk tasks the backend runs at once."""
    remote: bool = False
    """Whether tasks leave this process."""
    costs_money: bool = False
    """Whether running tasks is billed (Lambda)."""
    configured: bool = True
    """Whether the backend has what it needs to run (endpoints, functions)."""
    direct_placement: bool = False
    """``read_chunks(tasks, sink=...)`` accepts a thread-safe ``sink(j, result)`` and calls it from
    its worker threads, so results are copied into the output there (in parallel) rather than on
    the event loop. The backend still yields ``(j, result)`` for every task."""


@dataclass
class RequestStats:
    """Figures for one read request (exposed on :class:`~hsds_backends.api.ReadResult` and by ``--stats``).

    The reader fills the generic fields; a backend adds its own through
    :data:`current_stats` (retries, invokes, billed GB-s, dollars).
    """

    backend: str = ""
    """Backend that ran the request (the first one, if tasks failed over)."""
    reason: str = ""
    """Why the selector chose it (one line)."""
    kind: str = ""
    """``hyperslab``, ``points`` or ``query``."""
    chunks: int = 0
    """Chunk tasks in the plan."""
    missing: int = 0
    """Chunks that do not exist and were filled with the fill value."""
    bytes_fetched: int = 0
    """Stored (compressed) bytes read from storage, as reported by the executors."""
    bytes_decoded: int = 0
    """Bytes after decoding the chunks, as reported by the executors."""
    bytes_returned: int = 0
    """Bytes of chunk results received from the backend(s)."""
    s3_gets: int = 0
    """Storage reads issued (one per existing chunk task; a GET on S3)."""
    retries: int = 0
    """Retries the backend(s) made (transport, throttling)."""
    failovers: int = 0
    """Tasks re-run on another backend after their backend failed."""
    failover_to: list[str] = field(default_factory=list)
    """Backends that took over failed tasks, in order."""
    hedges: int = 0
    """Straggler tasks duplicated on another backend."""
    hedges_won: int = 0
    """Hedged duplicates that finished first (the original was ignored)."""
    estimate_seconds: float = 0.0
    """The selector's time estimate for the chosen backend."""
    estimate_dollars: float = 0.0
    """The selector's charge estimate for the chosen backend."""
    gb_seconds: float = 0.0
    """Billed GB-seconds (Lambda)."""
    dollars: float = 0.0
    """Estimated charge: compute (Lambda) plus requests, as reported by the backend."""
    seconds: float = 0.0
    """Wall time from plan to assembled result."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Backend-specific figures (e.g. ``invokes``)."""

    def to_json(self) -> dict[str, Any]:
        from dataclasses import asdict

        return asdict(self)


#: The stats of the request being executed, for backends to add their figures to.
current_stats: contextvars.ContextVar[RequestStats | None] = contextvars.ContextVar("hsds_backends_stats", default=None)


@dataclass
class BackendCounters:
    """Running totals per backend instance, like HSDS's ``lambda_stats``."""

    requests: int = 0
    tasks: int = 0
    in_flight: int = 0
    failed: int = 0
    retried: int = 0


@dataclass(frozen=True, slots=True)
class CostEstimate:
    """A backend's estimate for running a plan."""

    seconds: float
    """Expected wall time."""
    dollars: float = 0.0
    """Expected charge (0 for local backends)."""
    detail: str = ""
    """One line saying how the figure was reached."""


@dataclass(frozen=True)
class ReadRequest:
    """One read as the selector and backends see it: the plan plus request options."""

    plan: ReadPlan
    nonstrict: bool = False
    """HSDS's ``nonstrict`` flag: the caller allows serverless execution (§6.2)."""
    budget_dollars: float | None = None
    """Upper bound on the estimated charge for this request."""
    options: Mapping[str, Any] = field(default_factory=dict)
    estimator: Callable[[Backend], CostEstimate] | None = field(default=None, repr=False, compare=False)
    """Returns a backend's estimate through the ``hsds_backends_estimate_cost`` hook (set by the reader)."""

    def estimate(self, backend: Backend) -> CostEstimate:
        """Return ``backend``'s cost estimate for this request (through the hook when available)."""
        return self.estimator(backend) if self.estimator is not None else backend.estimate_cost(self)

    @property
    def kind(self) -> str:
        return self.plan.kind

    @property
    def num_chunks(self) -> int:
        return self.plan.num_chunks


@dataclass(frozen=True, slots=True)
class Choice:
    """The selector's answer: which backend and why (one line)."""

    backend: Backend
    reason: str


class Backend(ABC):
    """Execute chunk tasks. Subclass it in a plugin and return it from ``hsds_backends_make_backend``.

    Subclasses set ``name`` (= entry-point name = registered plugin name),
    ``description`` and ``url``, implement :attr:`capabilities` and
    :meth:`read_chunk`, and may override :meth:`read_chunks` to batch,
    :meth:`estimate_cost` to model their costs and :meth:`aclose` to stop
    what they started. Construction must be cheap and do no I/O: start
    clusters, processes and clients lazily on first use.

    See Also
    --------
    hsds_backends._inline.InlineBackend : the reference implementation.
    """

    name: ClassVar[str]
    description: ClassVar[str] = ""
    url: ClassVar[str] = ""
    #: Capabilities known without configuration (used by ``hsds-backends backends``).
    static_capabilities: ClassVar[Capabilities] = Capabilities()
    #: Fixed per-request overhead and per-chunk time used by the default cost model.
    overhead_s: ClassVar[float] = 0.001
    per_chunk_s: ClassVar[float] = 0.004

    #: Extra seconds for the first request (process/cluster start, cold functions).
    cold_start_s: ClassVar[float] = 0.0
    #: Weight of the newest observation in the moving average of measured wave times.
    ewma_alpha: ClassVar[float] = 0.3

    def __init__(self, config: Mapping[str, Any] | None = None) -> None:
        self.config: Mapping[str, Any] = dict(config or {})
        self._closed = False
        self.counters = BackendCounters()
        self.measured_wave_s: float | None = None
        """Moving average of measured seconds per wave of tasks (``None`` until a request ran)."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}>"

    # ------------------------------------------------------------ description
    @property
    def capabilities(self) -> Capabilities:
        """What this instance can serve (may depend on config, e.g. worker count)."""
        return self.static_capabilities

    def decline_reason(self, request: ReadRequest) -> str | None:
        """Return why this backend cannot serve ``request``, or ``None`` if it can. No I/O."""
        caps = self.capabilities
        plan = request.plan
        if not caps.configured:
            return "not configured"
        if plan.kind == "hyperslab" and not caps.hyperslab:
            return "no hyperslab reads"
        if plan.kind == "points" and not caps.points:
            return "no point reads"
        if plan.kind == "query" and not caps.query:
            return "no queries"
        if plan.fields and not caps.fields:
            return "no field selection"
        if plan.meta.layout_class != "H5D_CHUNKED" and not caps.linked_chunks:
            return "no linked HDF5 chunks"
        if plan.meta.is_vlen and not caps.vlen:
            return "no variable-length types"
        return None

    def can_serve(self, request: ReadRequest) -> bool:
        """Return whether this backend can serve ``request``: cheap, no I/O, no side effects."""
        return self.decline_reason(request) is None

    @property
    def started(self) -> bool:
        """Whether the backend's resources are up (no cold start ahead). Remote backends override."""
        return True

    def wave_s(self) -> float:
        """Seconds per wave of ``max_concurrency`` tasks: measured average, else the declared ``per_chunk_s``."""
        return self.measured_wave_s if self.measured_wave_s is not None else self.per_chunk_s

    def observe(self, request: ReadRequest, seconds: float) -> None:
        """Fold a finished request's wall time into the moving average (called by the reader)."""
        n = request.num_chunks
        if n == 0:
            return
        waves = math.ceil(n / max(1, self.capabilities.max_concurrency))
        sample = max(0.0, seconds - self.overhead_s) / waves
        prev = self.measured_wave_s
        self.measured_wave_s = sample if prev is None else (1 - self.ewma_alpha) * prev + self.ewma_alpha * sample

    def estimate_cost(self, request: ReadRequest) -> CostEstimate:
        """Estimate wall time (and dollars) for ``request``.

        overhead + (cold start if not started) + waves × per-wave time, where a
        wave is ``max_concurrency`` tasks and the per-wave time is the moving
        average of measured requests once there are any.
        """
        n = request.num_chunks
        conc = max(1, self.capabilities.max_concurrency)
        waves = math.ceil(n / conc)
        cold = 0.0 if self.started else self.cold_start_s
        w = self.wave_s()
        secs = self.overhead_s + cold + waves * w
        src = "measured" if self.measured_wave_s is not None else "declared"
        detail = f"{self.overhead_s * 1e3:.1f} ms + {waves} wave(s) × {w * 1e3:.1f} ms ({src})"
        if cold:
            detail += f" + cold start {cold:.1f} s"
        return CostEstimate(secs, 0.0, detail)

    # ------------------------------------------------------------- execution
    @abstractmethod
    async def read_chunk(self, task: ChunkTask) -> ChunkResult:
        """Execute one chunk task and return its result.

        Called by :meth:`read_chunks`. Must raise the same error types the
        kernel raises (:mod:`hsds_backends.errors`) for bad tasks and bad
        chunks, so every backend fails the same way.
        """

    async def read_chunks(self, tasks: Sequence[ChunkTask]) -> AsyncIterator[tuple[int, ChunkResult]]:
        """Yield ``(i, result)`` for each of ``tasks`` as results complete.

        Runs at most ``capabilities.max_concurrency`` :meth:`read_chunk` calls
        at once. Override to batch tasks into fewer calls. On the first error
        the remaining tasks are cancelled and the error is raised.
        """
        limit = max(1, self.capabilities.max_concurrency)
        queue: asyncio.Queue[tuple[int, ChunkResult] | BaseException] = asyncio.Queue()
        it = iter(enumerate(tasks))

        async def worker() -> None:
            for i, t in it:
                try:
                    r = await self.read_chunk(t)
                except BaseException as exc:  # noqa: BLE001 - forwarded to the consumer
                    await queue.put(exc)
                    return
                await queue.put((i, r))

        workers = [asyncio.create_task(worker()) for _ in range(min(limit, len(tasks)))]
        try:
            for _ in range(len(tasks)):
                item = await queue.get()
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            for w in workers:
                w.cancel()
            await asyncio.gather(*workers, return_exceptions=True)

    async def execute(self, tasks: Sequence[ChunkTask]) -> list[ChunkResult]:
        """Run ``tasks`` and return their results in task order."""
        out: list[ChunkResult | None] = [None] * len(tasks)
        async for i, r in self.read_chunks(tasks):
            out[i] = r
        return out  # type: ignore[return-value]

    async def aclose(self) -> None:
        """Stop everything this backend started. Idempotent."""
        self._closed = True

    async def __aenter__(self) -> Backend:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
