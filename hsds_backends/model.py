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
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any, ClassVar

from ._latency import DEFAULT_WINDOW, LatencyTable, ShapeKey, shape_key

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
    "LatencyTable",
    "ShapeKey",
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
    the event loop. The backend still yields ``(j, result)`` for every task, but once ``sink``
    has taken a result its ``data`` may be empty or released (the sink copies what it keeps, so a
    backend may reuse the buffer behind it)."""


class LazyText:
    """A ``str`` attribute that may be given as a function and is built on first read.

    A data descriptor, so as a dataclass field's default it makes the field
    accept ``str | Callable[[], str]`` and always read as ``str`` (``asdict``
    and ``repr`` included).
    """

    __slots__ = ("_attr",)

    def __init__(self) -> None:
        self._attr = ""

    def __set_name__(self, owner: type, name: str) -> None:
        self._attr = "_lazy_" + name

    def __get__(self, obj: object | None, objtype: type | None = None) -> str:
        if obj is None:
            return ""  # the class-level default, as dataclasses asks for it
        value = obj.__dict__.get(self._attr, "")
        if not isinstance(value, str):
            value = obj.__dict__[self._attr] = str(value())
        return str(value)

    def __set__(self, obj: object, value: str | Callable[[], str]) -> None:
        obj.__dict__[self._attr] = value


@dataclass
class RequestStats:
    """Figures for one read request (exposed on :class:`~hsds_backends.api.ReadResult` and by ``--stats``).

    The reader fills the generic fields; a backend adds its own through
    :data:`current_stats` (retries, invokes, billed GB-s, dollars).
    """

    backend: str = ""
    """Backend that ran the request (the first one, if tasks failed over)."""
    reason: LazyText = LazyText()
    """Why the selector chose it (one line). Reads as a ``str``; may be set to a function
    returning it, which is called on first read (most requests never read it)."""
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


@dataclass(frozen=True)
class CostEstimate:
    """A backend's estimate for running a plan."""

    seconds: float
    """Expected wall time."""
    dollars: float = 0.0
    """Expected charge (0 for local backends)."""
    detail: LazyText = LazyText()
    """One line saying how the figure was reached. Reads as a ``str``; may be given as a
    function returning it, called on first read (the selector estimates every candidate on
    every request, and the details are only read for the reason)."""


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
        return self.estimator(backend) if self.estimator is not None else backend.estimate(self)

    @property
    def kind(self) -> str:
        return self.plan.kind

    @property
    def num_chunks(self) -> int:
        return self.plan.num_chunks

    @cached_property
    def shape(self) -> ShapeKey:
        """The key measured latency is kept under: ``(kind, size bucket of num_chunks)`` (:func:`shape_key`)."""
        return shape_key(self.plan.kind, self.plan.num_chunks)


class Choice:
    """The selector's answer: which backend, why (one line) and, if known, its estimate.

    Parameters
    ----------
    backend
        The backend that runs the request.
    reason
        The one-line reason, or a function returning it: the text is built
        on first access of :attr:`reason` only (most requests never read it).
    estimate
        The chosen backend's estimate, when the policy computed it (saves
        estimating twice).
    named
        Whether the backend was named by the caller or the config rather than
        chosen by a policy (then there is no failover under ``failover: auto``).
    """

    __slots__ = ("backend", "_reason", "estimate", "named")

    def __init__(
        self, backend: Backend, reason: str | Callable[[], str], estimate: CostEstimate | None = None, *, named: bool = False
    ) -> None:
        self.backend = backend
        self._reason = reason
        self.estimate = estimate
        self.named = named

    @property
    def reason(self) -> str:
        """The one-line reason (built now if it was given as a function)."""
        r = self._reason
        if not isinstance(r, str):
            r = self._reason = r()
        return r

    def __str__(self) -> str:
        return f"{self.backend.name}: {self.reason}"

    def __repr__(self) -> str:
        return f"Choice({self.backend!r}, {self.reason!r})"


class Backend(ABC):
    """Execute chunk tasks. Subclass it in a plugin and return it from ``hsds_backends_make_backend``.

    Subclasses set ``name`` (= entry-point name = registered plugin name),
    ``description`` and ``url``, implement :attr:`capabilities` and
    :meth:`read_chunk`, and may override :meth:`read_chunks` to batch,
    :meth:`estimate_cost` to model their costs (the *declared* estimate;
    :meth:`estimate` replaces its time by measured latency once there is
    some), :attr:`started` when they start something on first use, and
    :meth:`aclose` to stop what they started. Construction must be cheap and
    do no I/O: start clusters, processes and clients lazily on first use.

    See Also
    --------
    hsds_backends._inline.InlineBackend : the reference implementation.
    """

    name: ClassVar[str]
    description: ClassVar[str] = ""
    url: ClassVar[str] = ""
    #: Capabilities known without configuration (used by ``hsds-backends backends``).
    static_capabilities: ClassVar[Capabilities] = Capabilities()
    #: Fixed per-request overhead and per-wave time of the declared cost model (:meth:`estimate_cost`).
    overhead_s: ClassVar[float] = 0.001
    per_chunk_s: ClassVar[float] = 0.004

    #: Extra seconds for the first request (process/cluster start, cold functions).
    cold_start_s: ClassVar[float] = 0.0
    #: Readings of measured latency kept per plan shape (their median is used; see :class:`LatencyTable`).
    latency_window: ClassVar[int] = DEFAULT_WINDOW

    def __init__(self, config: Mapping[str, Any] | None = None) -> None:
        self.config: Mapping[str, Any] = dict(config or {})
        self._closed = False
        self.counters = BackendCounters()
        self.latency = LatencyTable(self.latency_window)
        """Measured seconds per wave of tasks, per plan shape (filled by :meth:`observe`)."""
        self._placement_pool: ThreadPoolExecutor | None = None

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
        """Whether the backend's resources are up (no cold start ahead).

        By default an in-process backend is always started and a remote one
        once it has served a request in this process (its first request may
        have started a runtime, a cluster, connections). Backends that know
        better override it (``containers``: its DNs are up; ``dask``: the
        client is connected). The selector adds ``cold_start_s`` while not
        started, and the reader does not record the latency of a read that
        began unstarted.
        """
        return self.counters.requests > 0 or not self.capabilities.remote

    def _waves(self, num_chunks: int) -> int:
        return math.ceil(num_chunks / max(1, self.capabilities.max_concurrency))

    def observe(self, request: ReadRequest, seconds: float) -> None:
        """Record a finished request's wall time under its plan shape.

        Called by the reader after a request ran entirely on this backend
        from an already started state (no cold start, no failover, no hedge
        won elsewhere), so the figure is what this backend costs for that
        shape. Stored per wave of ``max_concurrency`` tasks — the whole wall
        time, fixed overhead included, so that the estimate for the same plan
        is the time measured — which makes requests of different sizes within
        one size bucket comparable.
        """
        n = request.num_chunks
        if n == 0:
            return
        self.latency.record(request.shape, seconds / self._waves(n), n)

    def estimate_cost(self, request: ReadRequest) -> CostEstimate:
        """Return the *declared* estimate of wall time (and dollars) for ``request``.

        overhead + (cold start if not started) + waves × ``per_chunk_s``,
        where a wave is ``max_concurrency`` tasks. Override to model a
        backend's costs (dollars, payload batching, transfer); return an
        infinite time to refuse a request. Measured latency is applied on
        top of this by :meth:`estimate`.
        """
        waves = self._waves(request.num_chunks)
        cold = 0.0 if self.started else self.cold_start_s
        secs = self.overhead_s + cold + waves * self.per_chunk_s

        def detail() -> str:
            text = f"{self.overhead_s * 1e3:.1f} ms + {waves} wave(s) × {self.per_chunk_s * 1e3:.1f} ms (declared)"
            return text + (f" + cold start {cold:.1f} s" if cold else "")

        return CostEstimate(secs, 0.0, detail)

    def estimate(self, request: ReadRequest) -> CostEstimate:
        """Return the estimate the selector uses: measured latency where there is some, else declared.

        Starts from :meth:`estimate_cost` (which keeps its dollars, and its
        refusal when infinite). When this backend has served requests of
        the same shape (:attr:`ReadRequest.shape`), the time is waves × the
        median measured seconds per wave ("measured"); else, when it has
        served the same kind at another size, that bucket's figure scaled by
        waves ("measured at ~N chunks"); else the declared figure stands.
        Cold start (``cold_start_s``) is added while not :attr:`started`.
        Called by the core's ``hsds_backends_estimate_cost`` implementation.
        """
        declared = self.estimate_cost(request)
        m = self.latency.lookup(request.shape)
        n = request.num_chunks
        if m is None or n == 0 or not math.isfinite(declared.seconds):
            return declared
        waves = self._waves(n)
        cold = 0.0 if self.started else self.cold_start_s

        def detail() -> str:
            src = "measured" if m.exact else f"measured at ~{m.chunks} chunk{'s' if m.chunks != 1 else ''}"
            text = f"{waves} wave(s) × {m.wave_s * 1e3:.1f} ms ({src})"
            return text + (f" + cold start {cold:.1f} s" if cold else "")

        return CostEstimate(cold + waves * m.wave_s, declared.dollars, detail)

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

    def placement_pool(self) -> ThreadPoolExecutor:
        """Threads on which a direct-placement backend calls ``sink`` (one per core).

        Started on first use, stopped by :meth:`aclose`; for backends whose results arrive on
        the event loop (see :attr:`Capabilities.direct_placement`).
        """
        if self._placement_pool is None:
            self._placement_pool = ThreadPoolExecutor(default_workers(), thread_name_prefix=f"hsds-{self.name}-place")
        return self._placement_pool

    async def aclose(self) -> None:
        """Stop everything this backend started. Idempotent."""
        pool, self._placement_pool = self._placement_pool, None
        if pool is not None:
            pool.shutdown(wait=False)
        self._closed = True

    async def __aenter__(self) -> Backend:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
