"""The ``lambda`` backend: chunk tasks as invokes of the ``chunk_read`` function.

Tasks are batched (several per invoke, bounded by Lambda's 6 MB payload limits and by the
expected result size) and fanned out with at most ``aws_lambda_max_invoke`` invokes in flight
(:class:`~hsds_backends_lambda.client.InvokeClient`). With no ``aws_lambda_gateway``
configured, the backend starts the local Lambda runtime (:mod:`hsds_backends_lambda.local`)
on a free loopback port on first use, with the handler from the installed packages, and stops
it on :meth:`LambdaBackend.aclose`.

Results over the 6 MB response limit
------------------------------------
One 6,291,556-byte response holds about 6.2 MB of result in a raw answer, 4.5 MB in base64
(:mod:`hsds_backends_lambda.wire`). For a larger result we **split the task's selection**
rather than have the function write the result to S3 and return its key, because splitting

- keeps a read a read: the function needs no write permission, no scratch bucket, no
  lifecycle rule to delete orphans, and works the same on posix storage (local runtime);
- keeps retries idempotent (a retried S3-spill invoke would write again and bill a PUT);
- costs no extra round trip: an S3 spill adds a PUT in the function and a GET in the client
  (each tens of ms, docs/aws-lambda.md §3) to every large result, while a split runs its halves in parallel.

Fixed-size hyperslab and point results have a known size, so such tasks are split before
they are sent. Variable-length and query results are only known in the function: it answers
``413 ResultTooLarge`` for a result that does not fit (never ``Function.ResponseSizeTooLarge``,
which would reset the environment), and the client splits that task and re-sends it. Halves
are cut along the first dimension with more than one element (points: the point list;
queries: the row range), so their bytes concatenate in C order.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import time
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, ClassVar, Final

from hsds_backends._aio import ResultQueue, cancel_and_wait
from hsds_backends._proc import MALLOC_ENV
from hsds_backends.config import CORE_KEYS, ConfigKey, credentials_env, is_unset, option
from hsds_backends.errors import BackendError, ConfigError, TaskError
from hsds_backends.model import Backend, Capabilities, CostEstimate, ReadRequest, Sink, add_stats, default_workers
from hsds_backends.security import ANY_BUCKET, Containment
from hsds_backends.storage import storage_kind
from hsds_backends.selection import Coords, Slice, format_select, parse_select
from hsds_backends.tasks import ChunkResult, ChunkTask, error_from_wire, expected_result_bytes, field_dtype, query_dtype

from ._config import CONFIG_KEYS, DEFAULT_FUNCTION, DEFAULT_LOG_LEVEL
from .client import InvokeClient, InvokeRequestTooLarge, InvokeResponseTooLarge, InvokeStats, b64decode
from .wire import (
    ANSWERS,
    MAX_REQUEST_BYTES,
    MAX_RESPONSE_BYTES,
    PRICE_GB_S,
    RAW_RESULT_BUDGET,
    REQUEST_BUDGET,
    RESULT_BUDGET,
    RESULT_TOO_LARGE,
)

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Mapping, Sequence

    from .local import LocalLambdaRuntime, RuntimeProcess

__all__ = ["LambdaBackend", "expected_result_bytes", "reader_root", "split_task", "worker_env"]

def _setting(config: Mapping[str, Any], key: str) -> Any:
    """Key ``key`` of this backend's table, cast, for code without a backend (see :mod:`hsds_backends_lambda._config`)."""
    return option(config, key, CONFIG_KEYS[key])


def _loopback(url: str | None) -> bool:
    from urllib.parse import urlsplit

    host = urlsplit(url).hostname if url else None
    return host in ("127.0.0.1", "localhost", "::1")


def split_task(task: ChunkTask) -> list[ChunkTask]:
    """Split ``task`` into two whose results, concatenated, are ``task``'s result.

    Raises
    ------
    BackendError
        The task selects a single element (nothing left to split).
    """
    if task.kind == "points":
        pts = task.points
        if pts is None or len(pts) < 2:
            raise BackendError(f"chunk {task.chunk_id}: the result of one point does not fit in a Lambda response")
        h = len(pts) // 2
        return [replace(task, points=pts[:h]), replace(task, points=pts[h:])]
    sel = parse_select(task.select, task.dset.chunks) if task.select else None
    dims = list(sel.dims) if sel is not None else [Slice(0, c, 1) for c in task.dset.chunks]
    for d, dim in enumerate(dims):
        if task.kind == "query" and d > 0:
            break
        if dim.count < 2:
            continue
        if isinstance(dim, Coords):
            h = dim.count // 2
            halves: list[Slice | Coords] = [Coords(dim.values[:h]), Coords(dim.values[h:])]
        else:
            mid = dim.start + (dim.count // 2) * dim.step
            halves = [Slice(dim.start, mid, dim.step), Slice(mid, dim.stop, dim.step)]
        # cutting the first dim with > 1 element keeps C order: every dim before it has one element
        return [replace(task, select=format_select([*dims[:d], half, *dims[d + 1 :]])) for half in halves]
    raise BackendError(f"chunk {task.chunk_id}: the result of one element does not fit in a Lambda response ({MAX_RESPONSE_BYTES} bytes)")


#: What the ``chunk_read`` function reads: S3, and posix folders on the local runtime (never Azure).
STORAGE_KINDS: Final = frozenset({"posix", "s3"})
AZURE_REFUSAL: Final = (
    "the chunk_read function reads S3 (and, on the local runtime, a posix folder) only, not Azure Blob storage"
    " (azure_connection_string): read Azure with the inline, containers or dask backend"
)


def worker_env(config: Mapping[str, Any], workers: int = 1, *, root_dir: str | None = None) -> dict[str, str]:
    """Return the function environment that reads the storage ``config`` describes.

    ``root_dir`` (the argument, else config ``root_dir``) → ``ROOT_DIR`` (posix, local runtime
    only, made absolute); else ``AWS_S3_GATEWAY`` and the credential keys as
    ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``/``AWS_SESSION_TOKEN`` (the worker
    processes' environment; payloads never carry credentials). Also ``BUCKET_NAME``,
    ``BUCKET_ALLOWLIST`` (config ``allowed_buckets``; empty: ``bucket_name`` only),
    ``LOG_LEVEL`` (config ``log_level``, default ``WARNING``) and ``HSDS_LAMBDA_THREADS`` (the
    cores shared among ``workers`` environments), and the glibc malloc settings of
    :data:`hsds_backends._proc.MALLOC_ENV`.

    Raises
    ------
    ConfigError
        Neither a root folder nor S3 (``aws_s3_gateway`` or ``storage: s3``) is configured:
        the function never serves a folder nobody named (docs/architecture.md §11); or the
        storage is Azure Blob, which the function does not read (:data:`AZURE_REFUSAL`).
    """
    bucket = str(option(config, "bucket_name", CORE_KEYS["bucket_name"]) or "")
    allowed = Containment.of(option(config, "allowed_buckets", CORE_KEYS["allowed_buckets"]) or (), default=bucket)
    env: dict[str, str] = {
        "LOG_LEVEL": str(_setting(config, "log_level") or DEFAULT_LOG_LEVEL),
        "BUCKET_NAME": bucket,
        "BUCKET_ALLOWLIST": ANY_BUCKET if allowed.buckets is None else ",".join(sorted(allowed.buckets)),
    }
    env.update(MALLOC_ENV)
    env["HSDS_LAMBDA_THREADS"] = str(max(1, default_workers() // max(1, workers)))
    root = root_dir or config.get("root_dir")
    if root:
        env["ROOT_DIR"] = os.path.abspath(str(root))
        return env
    kind = storage_kind(config)
    if kind == "azure":
        raise ConfigError(AZURE_REFUSAL)
    if kind != "s3":
        raise ConfigError(
            "the local Lambda runtime needs its storage named: set root_dir (a posix folder) or"
            " aws_s3_gateway (S3); it does not serve the current folder by default"
        )
    env["STORAGE"] = "s3"  # S3 even with no endpoint or keys here: the AWS credential chain
    if config.get("aws_s3_gateway"):
        env["AWS_S3_GATEWAY"] = str(config["aws_s3_gateway"])
    env.update((k, v) for k, v in credentials_env(config).items() if k.startswith("AWS_"))  # S3's only
    return env


def reader_root(config: Mapping[str, Any]) -> str | None:
    """Return the posix root a reader with ``config`` reads (:func:`hsds_backends.storage.storage_kind`'s rule), or ``None`` for S3 or Azure.

    The embedded runtime's workers read exactly what the reader that owns the backend reads,
    so the backend names that root to them explicitly.
    """
    kind = storage_kind(config)
    if kind == "posix":
        return os.path.abspath(str(config["root_dir"]))
    return os.getcwd() if kind is None else None


class _Node:
    """A task, or a part of a split task, on its way through invokes."""

    __slots__ = ("done", "expected", "index", "parent", "parts", "slot", "task")

    def __init__(self, task: ChunkTask, index: int, parent: _Node | None = None, slot: int = 0) -> None:
        self.task = task
        self.index = index
        self.parent = parent
        self.slot = slot
        self.parts: list[ChunkResult | None] = []
        self.done = 0
        self.expected = expected_result_bytes(task)


class _Lease:
    """One answer buffer from ``pool``, taken only when an answer arrives (so at most one per invoke in flight)."""

    __slots__ = ("buf", "pool")

    def __init__(self, pool: list[bytearray]) -> None:
        self.pool = pool
        self.buf: bytearray | None = None

    def get(self) -> bytearray:
        if self.buf is None:
            self.buf = self.pool.pop() if self.pool else bytearray(MAX_RESPONSE_BYTES + 4096)
        return self.buf

    def end(self, reusable: bool) -> None:
        """Give the buffer back when nothing refers to its bytes any more (``reusable``)."""
        if self.buf is not None and reusable:
            self.pool.append(self.buf)
        self.buf = None


@dataclass
class _Run:
    """One :meth:`LambdaBackend.read_chunks` call: where results go, and its figures."""

    out: ResultQueue[tuple[int, ChunkResult]]
    stats: InvokeStats
    sink: Sink | None = None


class LambdaBackend(Backend):
    """Run chunk tasks in the ``chunk_read`` Lambda function.

    Parameters
    ----------
    config
        Reads the keys of :attr:`config_keys` (:mod:`hsds_backends_lambda._config`):
        ``aws_lambda_chunkread_function`` (default ``chunk_read``), ``aws_lambda_gateway``
        (unset: an embedded local runtime), ``aws_lambda_max_invoke`` (invokes in flight),
        ``aws_lambda_threshold`` (auto selection: fewer chunks never pick Lambda), the
        function's settings and prices, batching, retries, the embedded runtime's environments
        and process, the answer form; and the core's ``aws_region``, credential and storage
        keys. Storage keys (``root_dir``, ``aws_s3_gateway``, …) go to the embedded runtime's
        workers as environment variables, never in payloads.
    runtime
        A local runtime already running, to talk to instead of starting one (tests).

    See Also
    --------
    hsds_backends._inline.InlineBackend : the reference implementation.
    """

    name: ClassVar[str] = "lambda"
    config_keys: ClassVar[Mapping[str, ConfigKey]] = CONFIG_KEYS
    description: ClassVar[str] = "the chunk_read AWS Lambda function (or an embedded local Lambda runtime)"
    url: ClassVar[str] = "https://github.com/hsds-backends/hsds-backends/tree/main/backends/lambda"
    static_capabilities: ClassVar[Capabilities] = Capabilities(
        max_request_bytes=MAX_REQUEST_BYTES,
        max_response_bytes=MAX_RESPONSE_BYTES,
        max_concurrency=1000,
        remote=True,
        costs_money=True,
        serverless=True,
        storage_kinds=STORAGE_KINDS,
    )
    overhead_s: ClassVar[float] = 0.03
    per_chunk_s: ClassVar[float] = 0.05

    def __init__(self, config: Mapping[str, Any] | None = None, *, runtime: LocalLambdaRuntime | None = None) -> None:
        super().__init__(config)
        self.function = str(self.option("aws_lambda_chunkread_function") or DEFAULT_FUNCTION)
        self.gateway: str | None = self.option("aws_lambda_gateway") or None
        self.embedded = self.gateway is None and runtime is None
        self.max_invoke: int = self.option("aws_lambda_max_invoke")
        self.threshold: int = self.option("aws_lambda_threshold")
        self.timeout_s: float = self.option("aws_lambda_timeout")
        self.memory_mb: int = self.option("aws_lambda_memory_mb")
        self.arch: str = self.option("aws_lambda_arch")
        price: float | None = self.option("aws_lambda_price_gb_s")
        self.price_gb_s: float = price if price is not None else PRICE_GB_S.get(self.arch, PRICE_GB_S["x86_64"])
        self.price_request: float = self.option("aws_lambda_price_request")
        self.batch_tasks: int = max(1, self.option("aws_lambda_batch_tasks"))
        self.max_attempts: int = self.option("aws_lambda_max_attempts")
        self.retry_base: float = self.option("aws_lambda_retry_base")
        workers: int | None = self.option("aws_lambda_local_workers")
        # one environment more than cores: while one sends its answer, the others keep the cores decoding
        self.local_workers: int = workers if workers is not None else min(4, default_workers() + 1)
        self.answer: str = self.option("aws_lambda_answer")
        if self.answer not in ANSWERS:
            raise ConfigError(f"aws_lambda_answer={self.answer!r} is not one of {', '.join(ANSWERS)}; use raw (binary results) or base64")
        self.raw = self.answer == "raw"
        budget: int | None = self.option("aws_lambda_result_bytes")
        self.result_budget: int = budget if budget is not None else (RAW_RESULT_BUDGET if self.raw else RESULT_BUDGET)
        self.local_process: bool = self.option("aws_lambda_local_process")
        self._buffers: list[bytearray] = []
        """Answer buffers for reads with direct placement, reused across invokes (see :meth:`_send_inner`)."""
        self._runtime: LocalLambdaRuntime | RuntimeProcess | None = runtime
        self._own_runtime = runtime is None and self.embedded
        self._client: InvokeClient | None = None
        self._lock: asyncio.Lock | None = None
        self._lock_loop: asyncio.AbstractEventLoop | None = None
        self.stats = InvokeStats()
        """Figures summed over every read of this backend."""
        self.last_stats = InvokeStats()
        """Figures of the most recent read (:meth:`read_chunks` call)."""

    def __repr__(self) -> str:
        return f"<LambdaBackend {self.name!r}>"

    @property
    def in_flight_cap(self) -> int:
        """Invokes in flight: ``aws_lambda_max_invoke``, or the embedded runtime's environments."""
        return min(self.max_invoke, self.local_workers) if self.embedded else self.max_invoke

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities(
            max_request_bytes=MAX_REQUEST_BYTES,
            max_response_bytes=MAX_RESPONSE_BYTES,
            max_concurrency=self.in_flight_cap,
            remote=True,
            costs_money=not self.embedded,
            serverless=True,
            direct_placement=True,
            storage_kinds=STORAGE_KINDS,
        )

    @property
    def started(self) -> bool:
        """Whether the invoke client is up (and the embedded local runtime, if this backend runs one).

        Lambda is remote, so the default would be "never started"; once its client is up a read
        starts nothing, and the reader records what the read took (the selector's measured
        latency).
        """
        return self._client is not None and (self._runtime is not None or not self.embedded)

    @property
    def runtime(self) -> LocalLambdaRuntime | RuntimeProcess | None:
        """The local runtime this backend talks to (embedded or given), if any.

        The embedded one is a :class:`~hsds_backends_lambda.local.RuntimeProcess` (a child
        process) unless ``aws_lambda_local_process`` is false.
        """
        return self._runtime

    @property
    def endpoint_url(self) -> str | None:
        if self.gateway:
            return self.gateway
        return self._runtime.url if self._runtime is not None else None

    # ------------------------------------------------------------------ cost
    def estimate_cost(self, request: ReadRequest) -> CostEstimate:
        n = request.num_chunks
        if n < self.threshold:
            return CostEstimate(math.inf, 0.0, f"{n} chunk(s) < aws_lambda_threshold={self.threshold}")
        if self.embedded:
            start = 0.0 if self._runtime is not None else 0.6
            waves = math.ceil(n / max(1, self.local_workers))
            secs = start + 0.002 * math.ceil(n / self.batch_tasks) + waves * 0.006
            return CostEstimate(secs, 0.0, f"local runtime: {start:.1f} s start + {n} chunks over {self.local_workers} workers")
        from .cost import AwsLambdaModel

        plan = request.plan
        meta = plan.meta
        raw = n * meta.chunk_nbytes
        est = AwsLambdaModel.from_config(self.config, memory_mb=self.memory_mb, arch=self.arch, price_gb_s=self.price_gb_s).estimate(
            chunks=n, stored_bytes=raw // 2, raw_bytes=raw, result_bytes=plan.nbytes or raw
        )
        return CostEstimate(est.seconds, est.dollars, f"AWS model: {est.detail}")

    # ------------------------------------------------------------------ lifecycle
    def worker_env(self) -> dict[str, str]:
        """Environment of the embedded runtime's workers: storage and credentials (never payloads)."""
        return worker_env(self.config, self.local_workers, root_dir=reader_root(self.config))

    async def client(self) -> InvokeClient:
        """Return the invoke client, starting the embedded local runtime first if this backend runs one.

        The client belongs to the running event loop; called from another loop, it is made
        anew. A call after :meth:`aclose` starts everything again.

        Raises
        ------
        BackendError
            The embedded local runtime did not start.
        """
        if self._closed:
            self._closed = False  # a read after aclose reopens lazily, as S3Storage does
        loop = asyncio.get_running_loop()
        client = self._client
        if client is not None and client.loop in (None, loop):
            return client
        if self._lock is None or self._lock_loop is not loop:
            self._lock, self._lock_loop = asyncio.Lock(), loop
        async with self._lock:
            client = self._client
            if client is not None and client.loop in (None, loop):
                return client
            if self.embedded and self._runtime is None:
                self._runtime = await self._start_runtime()
            self._client = client = self._make_client()
            return client

    async def _start_runtime(self) -> LocalLambdaRuntime | RuntimeProcess:
        from .local import FunctionSpec, LocalLambdaRuntime, RuntimeProcess

        spec = FunctionSpec(
            self.function,
            env=self.worker_env(),
            memory_mb=self.memory_mb,
            timeout_s=self.timeout_s,
            concurrency=self.local_workers,
            warm=self.local_workers,
        )
        region = str(self.config.get("aws_region") or "us-east-1")
        rt: LocalLambdaRuntime | RuntimeProcess
        # only this backend knows the token: other local users can neither invoke the function
        # (which reads with this reader's storage and credentials) nor script its faults
        if self.local_process:
            rt = RuntimeProcess(spec, region, protect_invoke=True)
        else:
            rt = LocalLambdaRuntime(region=region, protect_invoke=True)
            rt.add_function(spec)
        await rt.start()
        return rt

    def _make_client(self) -> InvokeClient:
        cfg = self.config
        creds: tuple[str | None, str | None, str | None]
        if self._runtime is not None and not self.gateway:
            endpoint: str | None = self._runtime.url
            creds = (self._runtime.token, "local", None)  # the runtime's token as the key id: what a protected one checks
        else:
            endpoint = self.gateway
            key, secret = cfg.get("aws_access_key_id"), cfg.get("aws_secret_access_key")
            if not is_unset(key) and not is_unset(secret):
                creds = (key, secret, cfg.get("aws_session_token"))
            elif _loopback(endpoint):
                creds = ("local", "local", None)  # a local runtime checks no signature
            else:
                creds = (None, None, None)  # the AWS credential chain
        return InvokeClient(
            self.function,
            endpoint,
            region=str(cfg.get("aws_region") or "us-east-1"),
            credentials=creds,
            max_in_flight=self.in_flight_cap,
            function_timeout_s=self.timeout_s,
            max_attempts=self.max_attempts,
            backoff_base_s=self.retry_base,
            memory_mb=self.memory_mb,
            price_gb_s=self.price_gb_s,
            price_request=self.price_request,
        )

    async def aclose(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()
        if self._own_runtime and self._runtime is not None:
            rt, self._runtime = self._runtime, None
            await rt.stop()
        await super().aclose()

    # ------------------------------------------------------------------ execution
    async def read_chunks(self, tasks: Sequence[ChunkTask], *, sink: Sink | None = None) -> AsyncIterator[tuple[int, ChunkResult]]:
        """Yield ``(i, result)`` as batches complete; the first error cancels the rest and is raised.

        With ``sink`` (direct placement), each answer's results are handed to ``sink(i, result)``
        on a worker thread before they are yielded, so copying them into the output overlaps
        with receiving the next answers on the event loop.
        """
        t0 = time.perf_counter()
        stats = InvokeStats(tasks=len(tasks))
        self.last_stats = stats
        client = await self.client()
        run = _Run(ResultQueue(), stats, sink)
        nodes: list[_Node] = []
        for i, t in enumerate(tasks):
            nodes.extend(self._presplit(_Node(t, i)))
        jobs = [asyncio.create_task(self._send(client, run, batch)) for batch in self._batches(nodes, len(nodes))]
        try:
            async for item in run.out.drain(len(tasks)):
                yield item
        finally:
            await cancel_and_wait(jobs, what="lambda invokes")
            stats.seconds = time.perf_counter() - t0
            self.stats.add(stats)
            _report(stats)

    def _presplit(self, node: _Node) -> list[_Node]:
        """Split a task whose known result size is over the budget before sending it."""
        if node.expected <= self.result_budget or node.task.kind == "query" or field_dtype(node.task.dset.dtype, node.task.fields).hasobject:
            return [node]  # query and variable-length sizes are bounds or guesses: the function reports the real one
        out: list[_Node] = []
        node.parts = [None, None]
        for slot, part in enumerate(split_task(node.task)):
            out.extend(self._presplit(_Node(part, -1, node, slot)))
        return out

    def _batches(self, nodes: list[_Node], total: int) -> list[list[_Node]]:
        per = max(1, min(self.batch_tasks, math.ceil(total / (2 * self.in_flight_cap))))
        batches: list[list[_Node]] = []
        cur: list[_Node] = []
        size = 0
        for n in nodes:
            if cur and (len(cur) >= per or size + n.expected > self.result_budget):
                batches.append(cur)
                cur, size = [], 0
            cur.append(n)
            size += n.expected
        if cur:
            batches.append(cur)
        return batches

    def _batched(self, nodes: list[_Node]) -> bool:
        """Whether ``nodes`` go as a batch event (raw answers need one), not the 2021 single-task form."""
        return self.raw or len(nodes) > 1

    def _payload(self, nodes: list[_Node]) -> bytes:
        if not self._batched(nodes):  # the 2021 single-task form
            return json.dumps(nodes[0].task.to_wire(), separators=(",", ":")).encode()
        first = nodes[0].task.dset
        shared: dict[str, Any] = {"answer": "raw"} if self.raw else {}
        if all(n.task.dset is first for n in nodes):
            shared.update({"dset_json": first.wire_json(), "bucket": first.bucket})
        wires = []
        for n in nodes:
            w = n.task.to_wire()
            if "dset_json" in shared:
                del w["dset_json"], w["bucket"]
            wires.append(w)
        return json.dumps({**shared, "tasks": wires}, separators=(",", ":")).encode()

    @staticmethod
    def _complete(node: _Node, res: ChunkResult) -> tuple[int, ChunkResult] | None:
        """Return ``(task index, result)`` once ``node``'s task is whole (split tasks: all parts in)."""
        if node.parent is not None and isinstance(res.data, memoryview):  # parts outlive their answer's buffer
            res = replace(res, data=res.data.tobytes())
        while node.parent is not None:
            parent = node.parent
            parent.parts[node.slot] = res
            parent.done += 1
            if parent.done < len(parent.parts):
                return None
            res = _combine(parent.task, parent.parts)
            node = parent
        return node.index, res

    async def _deliver(self, run: _Run, items: list[tuple[int, ChunkResult]], *, pooled: bool = False) -> bool:
        """Place ``items`` through the sink (on a worker thread), then hand them to the consumer.

        ``pooled``: the results' bytes live in a reused answer buffer. The sink copies what it
        keeps (:meth:`hsds_backends.plan.Assembler.add` does), and the views are then released
        so that a late reader through them fails loudly instead of seeing the next answer's
        bytes. Returns ``False`` if a view could not be released (something still holds it):
        then the buffer must not be reused.
        """
        released = True
        if run.sink is not None and items:
            sink = run.sink

            def place() -> None:
                for i, r in items:
                    sink(i, r)

            await asyncio.get_running_loop().run_in_executor(self.placement_pool(), place)
            if pooled:
                for _, r in items:
                    if isinstance(r.data, memoryview):
                        try:
                            r.data.release()
                        except BufferError:
                            released = False
        for item in items:
            run.out.put(item)
        return released

    async def _send(self, client: InvokeClient, run: _Run, nodes: list[_Node]) -> None:
        try:
            await self._send_inner(client, run, nodes)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # noqa: BLE001 - forwarded to the consumer
            run.out.fail(exc)

    async def _send_inner(self, client: InvokeClient, run: _Run, nodes: list[_Node]) -> None:
        payload = self._payload(nodes)
        what = nodes[0].task.chunk_id if len(nodes) == 1 else f"{len(nodes)} chunks from {nodes[0].task.chunk_id}"
        if len(payload) > REQUEST_BUDGET and (len(nodes) > 1 or nodes[0].task.kind == "points"):
            await self._split_and_send(client, run, nodes)
            return
        # results are placed before they are yielded, so their answer's buffer can be reused
        lease = _Lease(self._buffers) if run.sink is not None and self.raw else None
        reusable = False
        try:
            reusable = await self._answer(client, run, nodes, payload, what, lease)
        finally:
            if lease is not None:
                lease.end(reusable)

    async def _answer(self, client: InvokeClient, run: _Run, nodes: list[_Node], payload: bytes, what: str, lease: _Lease | None) -> bool:
        """Invoke once for ``nodes`` and deliver the results; return whether the leased buffer may be reused."""
        try:
            answer = await client.invoke(payload, run.stats, what=what, into=lease.get if lease is not None else None)
        except (InvokeRequestTooLarge, InvokeResponseTooLarge):
            await self._split_and_send(client, run, nodes)
            return True
        if not self._batched(nodes):
            results = [answer]
        else:
            got = answer.get("results") if isinstance(answer, dict) else None
            if not isinstance(got, list) or len(got) != len(nodes):
                if isinstance(answer, dict) and answer.get("statusCode", 200) != 200:
                    raise BackendError(f"lambda {self.function!r} rejected a batch: {answer.get('message') or answer}")
                raise BackendError(f"lambda {self.function!r} answered a batch of {len(nodes)} tasks with {str(answer)[:200]}")
            results = got
        again: list[_Node] = []
        done: list[tuple[int, ChunkResult]] = []
        for node, r in zip(nodes, results, strict=True):
            if isinstance(r, dict) and r.get("statusCode") == 413 and r.get("error_type") == RESULT_TOO_LARGE:
                node.expected = int(r.get("nbytes") or node.expected)
                if len(nodes) == 1 or node.expected > self.result_budget:
                    run.stats.split += 1
                    await self._send_split(client, run, node)
                else:
                    again.append(node)
                continue
            item = self._complete(node, _result(r, node.task.chunk_id))
            if item is not None:
                done.append(item)
        reusable = await self._deliver(run, done, pooled=lease is not None)
        if again:
            await asyncio.gather(*(self._send_inner(client, run, b) for b in self._batches(again, len(again))))
        return reusable

    async def _split_and_send(self, client: InvokeClient, run: _Run, nodes: list[_Node]) -> None:
        run.stats.split += 1
        if len(nodes) > 1:
            h = len(nodes) // 2
            await asyncio.gather(self._send_inner(client, run, nodes[:h]), self._send_inner(client, run, nodes[h:]))
        else:
            await self._send_split(client, run, nodes[0])

    async def _send_split(self, client: InvokeClient, run: _Run, node: _Node) -> None:
        node.parts = [None, None]
        node.done = 0
        children = [_Node(p, -1, node, slot) for slot, p in enumerate(split_task(node.task))]
        await asyncio.gather(*(self._send_inner(client, run, [c]) for c in children))


def _report(stats: InvokeStats) -> None:
    """Add this read's figures to the reader's per-request stats (:func:`hsds_backends.model.add_stats`)."""
    figures = {k: getattr(stats, k) for k in ("invokes", "max_in_flight", "failed", "throttled", "split", "billed_ms", "request_bytes", "response_bytes")}
    add_stats(LambdaBackend.name, retries=stats.retried, gb_seconds=stats.gb_s, dollars=stats.dollars, **figures)


def _result(d: Any, chunk_id: str) -> ChunkResult:
    """``ChunkResult.from_wire`` for answers from :func:`~hsds_backends_lambda.client.parse_answer` (memoryview bodies)."""
    if not isinstance(d, dict):
        raise TaskError(f"chunk {chunk_id}: the function answered {str(d)[:200]!r}, not a chunk result")
    status = d.get("statusCode")
    cid = d.get("chunk_id") or chunk_id
    if status == 200:
        sizes = {k: v for k in ("fetched", "decoded") if isinstance(v := d.get(k), int)}
        if "data" in d:  # a raw answer: the bytes themselves
            return ChunkResult(cid, "ok", d["data"], **sizes)
        body = d.get("body")
        if isinstance(body, str):
            return ChunkResult.from_wire(d, chunk_id)
        try:
            return ChunkResult(cid, "ok", b64decode(body if body is not None else b""), **sizes)
        except (ValueError, TypeError) as exc:
            raise TaskError(f"chunk {cid}: result body is not valid base64: {exc}") from exc
    if status == 404 and not d.get("error_type"):  # a bare 404: the chunk was never written, fill (docs/hsds-format.md §6.4)
        return ChunkResult(cid, "missing")
    raise error_from_wire(d, cid)


def _combine(task: ChunkTask, slots: list[ChunkResult | None]) -> ChunkResult:
    parts = [p for p in slots if p is not None]
    if len(parts) != len(slots):  # called once every part is in: a missing one is a bug, not data
        raise BackendError(f"chunk {task.chunk_id}: {len(slots) - len(parts)} of {len(slots)} split parts never arrived")
    if any(p.status == "missing" for p in parts):
        return ChunkResult(task.chunk_id, "missing")
    data = b"".join(bytes(p.data) for p in parts)
    if task.kind == "query" and task.limit:
        qdt = query_dtype(task.dset.dtype, task.fields)
        if not qdt.hasobject:
            data = data[: task.limit * qdt.itemsize]
    return ChunkResult(task.chunk_id, "ok", data)

