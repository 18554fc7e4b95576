"""The execution contract every backend implements (docs/architecture.md §3).

:class:`Backend` is an async ABC (modelled on zarr's ``abc/store.py``): a backend
overrides :meth:`Backend.read_chunk`, :meth:`Backend.read_chunks`, or both; the one it
does not override is derived from the other. :meth:`Backend.aclose` and ``async with``
stop what it started. Hooks (:mod:`hsds_backends.hookspecs`) build and choose backends;
backends do the I/O. What the selector learns about backends (measured latency, running
counters) is kept by the selector's :class:`~hsds_backends._ledger.Ledger`, not here.
"""

from __future__ import annotations

import contextvars
import math
import os
from abc import ABC
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any, ClassVar, TypeAlias

from ._aio import map_unordered
from .errors import BackendError
from ._latency import ShapeKey, shape_key
from .config import option
from .storage.factory import storage_kind

if TYPE_CHECKING:
    from ._ledger import Ledger
    from .config import ConfigKey
    from .plan import ReadPlan
    from .tasks import ChunkResult, ChunkTask

#: ``sink(j, result)``: places task ``j``'s result into the output. Thread-safe; a backend
#: with :attr:`Capabilities.direct_placement` may call it from its worker threads.
Sink: TypeAlias = "Callable[[int, ChunkResult], object]"

__all__ = [
    "Backend",
    "Capabilities",
    "CostEstimate",
    "ReadRequest",
    "RequestStats",
    "Choice",
    "ShapeKey",
    "Sink",
    "add_stats",
    "current_stats",
    "default_workers",
    "waves",
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
    serverless: bool = False
    """Whether tasks run on a function service (Lambda, billed or its local runtime): the
    backend HSDS's 2021 rule sends big requests to."""
    configured: bool = True
    """Whether the backend has what it needs to run (endpoints, functions)."""
    direct_placement: bool = False
    """``read_chunks(tasks, sink=...)`` calls the thread-safe :data:`Sink` from its worker
    threads, so results are copied into the output there (in parallel) rather than on the
    event loop. The backend still yields ``(j, result)`` for every task, but once ``sink``
    has taken a result its ``data`` may be empty or released (the sink copies what it keeps,
    so a backend may reuse the buffer behind it). Without this flag the caller places what
    is yielded and ``sink`` is ignored."""
    data_nodes: int = 0
    """HSDS data nodes the backend fans chunk requests out over, partitioned as HSDS does
    (0: not a data-node backend). HSDS's 2021 rule compares requests with this count."""
    storage_kinds: frozenset[str] | None = None
    """Storage services the backend's workers read (:data:`hsds_backends.storage.STORAGE_KINDS`
    names), ``None``: every one the core reads. A reader whose storage is another kind is
    declined (:meth:`Backend.decline_reason`): ``lambda``'s function reads S3 (and posix, on
    its local runtime), never Azure."""


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
    extra: dict[str, dict[str, int | float]] = field(default_factory=dict)
    """Backend-specific figures, by backend name (``extra["lambda"]["invokes"]``)."""

    def add(self, backend: str, *, retries: int = 0, gb_seconds: float = 0.0, dollars: float = 0.0, **figures: int | float) -> None:
        """Add a backend's figures for this request: the common ones, and its own (and its retries) under ``extra[backend]``.

        The one way backends report (see :func:`add_stats`); figures add up over the
        calls a request makes (failover, hedging, split batches).
        """
        self.retries += retries
        self.gb_seconds += gb_seconds
        self.dollars += dollars
        if retries:  # also per backend: with failover or hedging, whose retries they were
            figures = {"retries": retries, **figures}
        if figures:
            box = self.extra.setdefault(backend, {})
            for key, value in figures.items():
                box[key] = box.get(key, 0) + value

    def to_json(self) -> dict[str, Any]:
        from dataclasses import asdict

        return asdict(self)


#: The stats of the request being executed (set by the reader around a request).
current_stats: contextvars.ContextVar[RequestStats | None] = contextvars.ContextVar("hsds_backends_stats", default=None)


def add_stats(backend: str, *, retries: int = 0, gb_seconds: float = 0.0, dollars: float = 0.0, **figures: int | float) -> None:
    """Add figures to the current request's :class:`RequestStats` (nothing outside a request).

    Backends call this from the task that runs their ``read_chunks`` (the reader sets
    :data:`current_stats` there); see :meth:`RequestStats.add`.
    """
    stats = current_stats.get()
    if stats is not None:
        stats.add(backend, retries=retries, gb_seconds=gb_seconds, dollars=dollars, **figures)


def waves(num_chunks: int, concurrency: int) -> int:
    """Return how many rounds of ``concurrency`` tasks ``num_chunks`` tasks take (at least 0)."""
    return math.ceil(num_chunks / max(1, concurrency))


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
    ledger: Ledger | None = field(default=None, repr=False, compare=False)
    """The selector's measurements (the reader's); ``None``: declared estimates only."""

    def estimate(self, backend: Backend) -> CostEstimate:
        """Return ``backend``'s cost estimate for this request.

        Through the ``hsds_backends_estimate_cost`` hook when a plugin implements it, else
        the ledger's (measured latency over the declared model), else the declared model.
        """
        if self.estimator is not None:
            return self.estimator(backend)
        if self.ledger is not None:
            return self.ledger.estimate(backend, self)
        return backend.estimate_cost(self)

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
    ``description`` and ``url``; declare their config keys in :attr:`config_keys`;
    override :meth:`read_chunk` (one task) or :meth:`read_chunks` (many, batched,
    streamed) or both — the other is derived — and may override :attr:`capabilities`,
    :meth:`estimate_cost` (the *declared* cost model; the selector replaces its time by
    measured latency once there is some), :attr:`started` when they start something on
    first use, and :meth:`aclose` to stop what they started. Construction must be cheap
    and do no I/O: start clusters, processes and clients lazily on first use.

    A class that is itself abstract (a base for other backends) is declared with
    ``class Base(Backend, abstract=True)``; any other subclass that overrides neither
    ``read_chunk`` nor ``read_chunks`` is refused when the class is created.

    See Also
    --------
    hsds_backends._inline.InlineBackend : the reference implementation.
    """

    name: ClassVar[str]
    description: ClassVar[str] = ""
    url: ClassVar[str] = ""
    #: Config keys this backend reads, with default and caster (collected by :func:`hsds_backends.config.known_keys`).
    config_keys: ClassVar[Mapping[str, ConfigKey]] = {}
    #: Capabilities known without configuration (used by ``hsds-backends backends``).
    static_capabilities: ClassVar[Capabilities] = Capabilities()
    #: Fixed per-request overhead and per-wave time of the declared cost model (:meth:`estimate_cost`).
    overhead_s: ClassVar[float] = 0.001
    per_chunk_s: ClassVar[float] = 0.004
    #: Extra seconds for the first request (process/cluster start, cold functions).
    cold_start_s: ClassVar[float] = 0.0

    def __init_subclass__(cls, *, abstract: bool = False, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if not abstract and cls.read_chunk is Backend.read_chunk and cls.read_chunks is Backend.read_chunks:
            raise TypeError(
                f"backend class {cls.__module__}.{cls.__name__} must override read_chunk(task) or read_chunks(tasks, *, sink=None) "
                "(or be declared abstract: class Base(Backend, abstract=True))"
            )

    def __init__(self, config: Mapping[str, Any] | None = None) -> None:
        self.config: Mapping[str, Any] = dict(config or {})
        self._closed = False
        self._placement_pool: ThreadPoolExecutor | None = None

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}>"

    def option(self, key: str) -> Any:
        """Return config ``key`` of this backend's :attr:`config_keys`, resolved and cast (:func:`hsds_backends.config.option`)."""
        return option(self.config, key, self.config_keys[key])

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
        if caps.storage_kinds is not None:
            kind = storage_kind(self.config) or "posix"
            if kind not in caps.storage_kinds:
                return (
                    f"it reads {' and '.join(sorted(caps.storage_kinds))} storage only, and this reader's storage is {kind}:"
                    " choose a backend that reads it"
                )
        return None

    def can_serve(self, request: ReadRequest) -> bool:
        """Return whether this backend can serve ``request``: cheap, no I/O, no side effects."""
        return self.decline_reason(request) is None

    @property
    def started(self) -> bool:
        """Whether the backend's resources are up (no cold start ahead).

        By default an in-process backend is always started and a remote one never;
        a backend that starts something on first use overrides this (``containers``:
        its DNs are up; ``dask``: the client is connected; ``lambda``: its client or
        local runtime is up). The selector adds ``cold_start_s`` while not started,
        and the reader does not record the latency of a read that began unstarted.
        """
        return not self.capabilities.remote

    def estimate_cost(self, request: ReadRequest) -> CostEstimate:
        """Return the *declared* estimate of wall time (and dollars) for ``request``.

        overhead + (cold start if not started) + waves × ``per_chunk_s``,
        where a wave is ``max_concurrency`` tasks. Override to model a
        backend's costs (dollars, payload batching, transfer); return an
        infinite time to refuse a request. The selector's ledger applies
        measured latency on top of this
        (:meth:`hsds_backends._ledger.Ledger.estimate`).
        """
        n = waves(request.num_chunks, self.capabilities.max_concurrency)
        cold = 0.0 if self.started else self.cold_start_s
        secs = self.overhead_s + cold + n * self.per_chunk_s

        def detail() -> str:
            text = f"{self.overhead_s * 1e3:.1f} ms + {n} wave(s) × {self.per_chunk_s * 1e3:.1f} ms (declared)"
            return text + (f" + cold start {cold:.1f} s" if cold else "")

        return CostEstimate(secs, 0.0, detail)

    # ------------------------------------------------------------- execution
    async def read_chunk(self, task: ChunkTask) -> ChunkResult:
        """Execute one chunk task and return its result.

        Derived from :meth:`read_chunks` unless overridden. Must raise the same
        error types the kernel raises (:mod:`hsds_backends.errors`) for bad tasks
        and bad chunks, so every backend fails the same way. The hedging of
        stragglers calls this for one task at a time.
        """
        results = self.read_chunks([task])
        try:
            async for _, result in results:
                return result
        finally:
            if isinstance(results, AsyncGenerator):  # stop whatever it still runs
                await results.aclose()
        raise BackendError(f"backend {self.name!r} returned no result for chunk {task.chunk_id}")

    async def read_chunks(self, tasks: Sequence[ChunkTask], *, sink: Sink | None = None) -> AsyncIterator[tuple[int, ChunkResult]]:
        """Yield ``(i, result)`` for each of ``tasks`` as results complete.

        Derived from :meth:`read_chunk` unless overridden: at most
        ``capabilities.max_concurrency`` calls at once. Override to batch tasks
        into fewer calls. On the first error the remaining tasks are cancelled
        and the error is raised.

        Parameters
        ----------
        tasks
            The chunk tasks, in plan order.
        sink
            With :attr:`Capabilities.direct_placement`, the backend may place a
            result by calling ``sink(i, result)`` from its worker threads before it
            yields ``(i, result)``; without that flag it is ignored (the caller
            places what is yielded).
        """
        async for item in map_unordered(self.read_chunk, tasks, self.capabilities.max_concurrency):
            yield item

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
