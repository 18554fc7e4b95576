"""A local Lambda runtime: the Invoke API in front, the Lambda Runtime API behind.

No existing tool runs a Python handler behind the real Invoke REST API without Docker
(aws-lambda.md, preamble). This module does, with the real AWS runtime interface client as the
worker: every execution environment is a ``python -m awslambdaric <module>.<handler>`` process
whose ``AWS_LAMBDA_RUNTIME_API`` points at its own loopback Runtime API listener here, so the
handler sees a real ``context`` and errors come back in the real shapes.

Front (what botocore/aiobotocore talk to, aws-lambda.md §1.1–1.3)::

    POST /2015-03-31/functions/{name}/invocations[?Qualifier=$LATEST]

- ``RequestResponse`` → 200 with the handler's JSON; a function error is 200 plus
  ``X-Amz-Function-Error: Unhandled`` and ``{"errorMessage","errorType","requestId","stackTrace"}``;
  ``Event`` → 202; ``DryRun`` → 204; ``X-Amz-Log-Type: Tail`` → ``X-Amz-Log-Result``
  (base64 of the last 4 KB of ``START``/output/``END``/``REPORT``).
- request > 6,291,456 B → 413 ``RequestEntityTooLargeException``; response > 6,291,556 B → 200 +
  ``Function.ResponseSizeTooLarge`` (the environment is reset); timeout → ``Sandbox.Timedout``
  (the worker is killed); a worker that dies → ``Runtime.ExitError``; an import failure →
  the runtime's init error (``Runtime.ImportModuleError``); no free environment and the
  function at its concurrency → 429 ``TooManyRequestsException`` with ``Reason``; unknown
  function or qualifier → 404 ``ResourceNotFoundException``; a body that is not JSON → 400.

Behind, per environment: ``GET /2018-06-01/runtime/invocation/next``,
``POST .../invocation/{id}/response``, ``POST .../invocation/{id}/error``,
``POST /2018-06-01/runtime/init/error``.

Environments are reused warm (one invocation at a time each, aws-lambda.md §1.4); a new one
is a cold start (its ``REPORT`` line has ``Init Duration``); idle ones are reclaimed after
``idle_timeout_s``. A :class:`Meter` per function counts invocations, errors, throttles,
cold starts and billed GB-s (with ``Max Memory Used`` from the worker's ``VmHWM``), and
:class:`Faults` scripts failures for tests: N×429, added latency, crashes, stragglers.
Control endpoints outside the AWS API: ``GET /local/functions``,
``GET|POST /local/functions/{name}/faults``, ``GET /local/functions/{name}/meter``.

Only loopback addresses can be bound: the server runs code for anyone who can reach it.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ipaddress
import json
import logging
import math
import os
import socket
import sys
import time
import uuid
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Final

from hsds_backends.errors import ConfigError

if TYPE_CHECKING:
    from aiohttp import web

__all__ = [
    "MAX_REQUEST_BYTES",
    "MAX_RESPONSE_BYTES",
    "DEFAULT_HANDLER",
    "FunctionSpec",
    "Faults",
    "Meter",
    "LocalLambdaRuntime",
]

log = logging.getLogger("hsds_backends_lambda.runtime")

#: Invoke request limit (aws-lambda.md §1.4).
MAX_REQUEST_BYTES: Final = 6_291_456
#: Invoke response limit (aws-lambda.md §1.4).
MAX_RESPONSE_BYTES: Final = 6_291_556
#: The handler of the installed package (no zip needed locally).
DEFAULT_HANDLER: Final = "hsds_backends_lambda.lambda_function.lambda_handler"
#: Lambda's init phase limit (aws-lambda.md §1.4).
INIT_TIMEOUT_S: Final = 10.0
_TAIL_BYTES: Final = 4096
_PASS_ENV: Final = ("PATH", "LANG", "LC_ALL", "HOME", "TMPDIR", "PYTHONPATH", "SYSTEMROOT", "VIRTUAL_ENV")


@dataclass
class FunctionSpec:
    """One function of the local runtime.

    Attributes
    ----------
    name
        Function name (what ``FunctionName`` resolves to; ARNs and ``:$LATEST`` work too).
    handler
        ``module.function`` given to ``python -m awslambdaric``.
    memory_mb
        Reported as ``AWS_LAMBDA_FUNCTION_MEMORY_SIZE`` and billed (not enforced).
    timeout_s
        Function timeout: past it the worker is killed and the caller gets ``Sandbox.Timedout``.
    env
        The function's environment variables (storage endpoint, credentials, ``LOG_LEVEL``).
    code_dir
        A folder put first on the worker's ``PYTHONPATH`` (an unpacked deployment zip), or
        ``None`` to run the installed packages.
    concurrency
        Reserved concurrency: at most this many environments; more invokes get 429.
    warm
        Environments started by :meth:`LocalLambdaRuntime.start` (no cold start for them).
    idle_timeout_s
        Idle environments older than this are stopped.
    python
        Interpreter of the workers (default: this one).
    """

    name: str = "chunk_read"
    handler: str = DEFAULT_HANDLER
    memory_mb: int = 1769
    timeout_s: float = 60.0
    env: dict[str, str] = field(default_factory=dict)
    code_dir: str | None = None
    concurrency: int = 4
    warm: int = 0
    idle_timeout_s: float = 600.0
    python: str = sys.executable


@dataclass
class Faults:
    """Failures to inject, consumed in order by the next invokes of one function.

    Attributes
    ----------
    throttle
        The next N invokes answer 429 ``TooManyRequestsException`` (``Reason``
        ``ConcurrentInvocationLimitExceeded``) without running.
    retry_after
        ``Retry-After`` seconds sent with injected 429s (0 = no header).
    latency_s
        Added before every invocation (counts towards the function timeout).
    crash
        The next N invocations kill their worker as it receives the event (``Runtime.ExitError``).
    straggle, straggle_s
        The next N invocations wait ``straggle_s`` before they run (counts towards the timeout,
        so ``straggle_s`` > ``timeout_s`` makes a ``Sandbox.Timedout``).
    """

    throttle: int = 0
    retry_after: float = 0.0
    latency_s: float = 0.0
    crash: int = 0
    straggle: int = 0
    straggle_s: float = 0.0

    def update(self, **changes: Any) -> None:
        for k, v in changes.items():
            if k not in self.__dataclass_fields__:
                raise ConfigError(f"unknown fault {k!r}; faults are {sorted(self.__dataclass_fields__)}")
            setattr(self, k, type(getattr(self, k))(v))


@dataclass
class Meter:
    """What a function would have been billed, and what happened to its invokes.

    ``gb_s`` counts billed duration × memory, plus the init phase of cold starts (billed for
    zip runtimes since 2025-08-01, aws-lambda.md §3).
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

    def dollars(self, price_gb_s: float = 0.0000166667, price_request: float = 0.20 / 1e6) -> float:
        """Return the would-be charge at the given prices (defaults: x86, us-east-1, aws-lambda.md §3)."""
        return self.gb_s * price_gb_s + self.invocations * price_request

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["dollars"] = self.dollars()
        return d


class _Stream:
    """A worker's response body on its way through to the invoker (never buffered whole)."""

    __slots__ = ("content", "size", "drained")

    def __init__(self, content: Any, size: int) -> None:
        self.content = content
        self.size = size
        self.drained = asyncio.Event()

    def __len__(self) -> int:
        return self.size


class _Invocation:
    __slots__ = ("id", "payload", "deadline_ms", "client_context", "future", "log", "crash", "started", "received", "streamable")

    def __init__(self, payload: bytes, deadline_ms: int, client_context: str | None, crash: bool, streamable: bool = False) -> None:
        self.streamable = streamable
        self.id = str(uuid.uuid4())
        self.payload = payload
        self.deadline_ms = deadline_ms
        self.client_context = client_context
        self.future: asyncio.Future[tuple[Any, str | None]] = asyncio.get_running_loop().create_future()
        self.log: list[str] = []
        self.crash = crash
        self.started = time.perf_counter()
        self.received = False

    def finish(self, body: bytes | _Stream, error_type: str | None) -> None:
        if not self.future.done():
            self.future.set_result((body, error_type))


def _error_body(error_type: str, message: str) -> bytes:
    return json.dumps({"errorType": error_type, "errorMessage": message}).encode()


class _Env:
    """One execution environment: an awslambdaric process and its Runtime API listener."""

    def __init__(self, fn: _Function, number: int) -> None:
        self.fn = fn
        self.number = number
        self.proc: asyncio.subprocess.Process | None = None
        self.sock: socket.socket | None = None
        self.site: Any = None
        self.port = 0
        self.ready = asyncio.Event()
        self.init_error: bytes | None = None
        self.queue: asyncio.Queue[_Invocation] = asyncio.Queue(maxsize=1)
        self.pending: _Invocation | None = None
        self.dead = False
        self.gone = asyncio.Event()
        self.busy = False
        self.spawned = time.perf_counter()
        self.init_ms: float | None = None
        self.init_reported = False
        self.last_used = time.monotonic()
        self.init_log: list[str] = []
        self._tasks: list[asyncio.Task[None]] = []

    def __repr__(self) -> str:
        return f"<env {self.fn.spec.name}#{self.number} pid={self.proc.pid if self.proc else None} port={self.port}>"

    async def start(self, runtime: LocalLambdaRuntime) -> None:
        from aiohttp import web

        spec = self.fn.spec
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        assert runtime._rt_runner is not None
        self.site = web.SockSite(runtime._rt_runner, self.sock)
        await self.site.start()
        runtime._envs_by_port[self.port] = self
        env = {k: os.environ[k] for k in _PASS_ENV if k in os.environ}
        env.update(
            {
                "AWS_LAMBDA_RUNTIME_API": f"127.0.0.1:{self.port}",
                "AWS_LAMBDA_FUNCTION_NAME": spec.name,
                "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
                "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(spec.memory_mb),
                "AWS_LAMBDA_LOG_GROUP_NAME": f"/aws/lambda/{spec.name}",
                "AWS_LAMBDA_LOG_STREAM_NAME": time.strftime("%Y/%m/%d/[$LATEST]") + uuid.uuid4().hex,
                "AWS_REGION": runtime.region,
                "AWS_DEFAULT_REGION": runtime.region,
                "AWS_EXECUTION_ENV": f"AWS_Lambda_python{sys.version_info.major}.{sys.version_info.minor}",
                "_HANDLER": spec.handler,
                "TZ": ":UTC",
                "PYTHONUNBUFFERED": "1",
                "PYTHONDONTWRITEBYTECODE": "1",
            }
        )
        env.update(spec.env)
        if spec.code_dir:
            env["LAMBDA_TASK_ROOT"] = spec.code_dir
            env["PYTHONPATH"] = os.pathsep.join(p for p in (spec.code_dir, os.environ.get("PYTHONPATH", "")) if p)
        self.spawned = time.perf_counter()
        self.proc = await asyncio.create_subprocess_exec(
            spec.python,
            "-m",
            "awslambdaric",
            spec.handler,
            env=env,
            cwd=spec.code_dir or os.getcwd(),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            limit=1 << 20,
        )
        self._tasks = [asyncio.create_task(self._read_output()), asyncio.create_task(self._watch())]

    async def _read_output(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        while True:
            try:
                line = await self.proc.stdout.readline()
            except ValueError:  # a line longer than the reader's limit
                line = await self.proc.stdout.read(1 << 16)
            if not line:
                return
            text = line.decode("utf-8", "replace")
            inv = self.pending
            (inv.log if inv is not None else self.init_log).append(text)
            if log.isEnabledFor(logging.DEBUG):
                log.debug("%r: %s", self, text.rstrip())

    async def _watch(self) -> None:
        assert self.proc is not None
        rc = await self.proc.wait()
        self.dead = True
        self.gone.set()
        reason = f"signal: {_signame(-rc)}" if rc < 0 else f"exit status {rc}"
        inv = self.pending
        if inv is not None and not inv.future.done():
            self.fn.meter.crashes += 1
            inv.finish(_error_body("Runtime.ExitError", f"RequestId: {inv.id} Error: Runtime exited with error: {reason}"), "Runtime.ExitError")
        if not self.ready.is_set():
            if self.init_error is None:
                tail = "".join(self.init_log)[-1000:]
                self.init_error = _error_body("Runtime.ExitError", f"Runtime exited during init with error: {reason}. Output: {tail}")
            self.ready.set()

    def kill(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
        self.dead = True
        self.gone.set()

    async def stop(self, runtime: LocalLambdaRuntime) -> None:
        self.kill()
        if self.proc is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.proc.wait(), 5)
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        runtime._envs_by_port.pop(self.port, None)
        if self.site is not None:
            with contextlib.suppress(Exception):
                await self.site.stop()
        if self.sock is not None:
            self.sock.close()

    def max_memory_mb(self) -> int:
        if self.proc is None:
            return 0
        try:
            with open(f"/proc/{self.proc.pid}/status") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        return int(line.split()[1]) // 1024
        except OSError:
            pass
        return 0


def _signame(n: int) -> str:
    import signal

    try:
        return {signal.SIGKILL: "killed", signal.SIGTERM: "terminated", signal.SIGSEGV: "segmentation fault"}.get(
            signal.Signals(n), signal.Signals(n).name
        )
    except ValueError:
        return str(n)


class _Function:
    def __init__(self, spec: FunctionSpec) -> None:
        self.spec = spec
        self.envs: list[_Env] = []
        self.faults = Faults()
        self.meter = Meter()
        self.numbers = 0


class LocalLambdaRuntime:
    """The local Lambda runtime (see the module docstring).

    Parameters
    ----------
    host, port
        Where the Invoke API listens; loopback only; port 0 picks a free one.
    region, account
        Used in ARNs and worker environments.
    functions
        Functions to serve (more can be added with :meth:`add_function`).

    Examples
    --------
    >>> async with LocalLambdaRuntime(functions=[FunctionSpec("chunk_read", env={"ROOT_DIR": "data"})]) as rt:
    ...     url = rt.url  # aws_lambda_gateway
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        region: str = "us-east-1",
        account: str = "000000000000",
        functions: list[FunctionSpec] | None = None,
    ) -> None:
        _check_loopback(host)
        self.host = host
        self.port = port
        self.region = region
        self.account = account
        self._functions: dict[str, _Function] = {}
        for spec in functions or ():
            self.add_function(spec)
        self._envs_by_port: dict[int, _Env] = {}
        self._runner: Any = None
        self._rt_runner: Any = None
        self._reaper: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[Any]] = set()
        self._lock: asyncio.Lock | None = None

    def __repr__(self) -> str:
        where = self.url if self._runner is not None else "stopped"
        return f"LocalLambdaRuntime({where}, functions={sorted(self._functions)})"

    # ------------------------------------------------------------------ management
    @property
    def url(self) -> str:
        """``http://127.0.0.1:<port>``: the ``aws_lambda_gateway`` (endpoint URL) of this runtime."""
        if self._runner is None:
            raise RuntimeError("LocalLambdaRuntime is not running; use 'async with' or await start()")
        return f"http://{self.host}:{self.port}"

    def add_function(self, spec: FunctionSpec) -> None:
        if spec.concurrency < 1:
            raise ConfigError(f"function {spec.name!r}: concurrency must be >= 1, got {spec.concurrency}")
        self._functions[spec.name] = _Function(spec)

    def faults(self, name: str) -> Faults:
        """Return the fault script of function ``name`` (mutate it to inject failures)."""
        return self._function(name).faults

    def meter(self, name: str) -> Meter:
        """Return the billing meter of function ``name``."""
        return self._function(name).meter

    def environments(self, name: str) -> int:
        """Return how many environments of ``name`` are alive."""
        return sum(1 for e in self._function(name).envs if not e.dead)

    def _function(self, name: str) -> _Function:
        try:
            return self._functions[name]
        except KeyError:
            raise ConfigError(f"unknown function {name!r}; functions: {sorted(self._functions)}") from None

    async def start(self) -> LocalLambdaRuntime:
        """Bind the Invoke API, start the warm environments; return ``self``."""
        from aiohttp import web

        if self._runner is not None:
            return self
        app = web.Application(client_max_size=MAX_REQUEST_BYTES * 4)
        app.router.add_post("/2015-03-31/functions/{name}/invocations", self._invoke)
        app.router.add_get("/local/functions", self._list)
        app.router.add_get("/local/functions/{name}/faults", self._get_faults)
        app.router.add_post("/local/functions/{name}/faults", self._set_faults)
        app.router.add_get("/local/functions/{name}/meter", self._get_meter)
        rt = web.Application(client_max_size=MAX_RESPONSE_BYTES * 16)
        rt.router.add_get("/2018-06-01/runtime/invocation/next", self._next)
        rt.router.add_post("/2018-06-01/runtime/invocation/{id}/response", self._response)
        rt.router.add_post("/2018-06-01/runtime/invocation/{id}/error", self._error)
        rt.router.add_post("/2018-06-01/runtime/init/error", self._init_error)
        self._rt_runner = web.AppRunner(rt, access_log=None, handle_signals=False, shutdown_timeout=1.0)
        await self._rt_runner.setup()
        runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=1.0)
        await runner.setup()
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self.port))
        self.port = sock.getsockname()[1]
        await web.SockSite(runner, sock).start()
        self._runner = runner
        self._lock = asyncio.Lock()
        self._reaper = asyncio.create_task(self._reap())
        await asyncio.gather(*(self.prewarm(fn.spec.name, fn.spec.warm) for fn in self._functions.values()))
        log.info("local Lambda runtime on %s: %s", self.url, sorted(self._functions))
        return self

    async def prewarm(self, name: str, n: int) -> None:
        """Start environments of ``name`` until ``n`` are alive (capped by its concurrency)."""
        fn = self._function(name)
        want = min(n, fn.spec.concurrency) - sum(1 for e in fn.envs if not e.dead)
        envs = [await self._spawn(fn) for _ in range(max(0, want))]
        await asyncio.gather(*(asyncio.wait_for(e.ready.wait(), INIT_TIMEOUT_S) for e in envs), return_exceptions=True)

    async def stop(self) -> None:
        """Kill every environment and close the listeners. Idempotent."""
        if self._reaper is not None:
            self._reaper.cancel()
            await asyncio.gather(self._reaper, return_exceptions=True)
            self._reaper = None
        for t in list(self._background):
            t.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        for fn in self._functions.values():
            envs, fn.envs = fn.envs, []
            await asyncio.gather(*(e.stop(self) for e in envs), return_exceptions=True)
        for attr in ("_runner", "_rt_runner"):
            r = getattr(self, attr)
            if r is not None:
                await r.cleanup()
                setattr(self, attr, None)

    async def __aenter__(self) -> LocalLambdaRuntime:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # ------------------------------------------------------------------ environments
    async def _spawn(self, fn: _Function) -> _Env:
        fn.numbers += 1
        env = _Env(fn, fn.numbers)
        fn.envs.append(env)
        env.busy = True
        try:
            await env.start(self)
        finally:
            env.busy = False
        return env

    async def _acquire(self, fn: _Function) -> _Env | None:
        assert self._lock is not None
        async with self._lock:
            fn.envs = [e for e in fn.envs if not (e.dead and not e.busy)]
            for e in fn.envs:
                if not e.busy and not e.dead and e.ready.is_set():
                    e.busy = True
                    return e
            for e in fn.envs:  # a pre-warmed environment still initialising
                if not e.busy and not e.dead:
                    e.busy = True
                    return e
            if len(fn.envs) >= fn.spec.concurrency:
                return None
            fn.meter.cold_starts += 1
            env = await self._spawn(fn)
            env.busy = True
            return env

    async def _release(self, env: _Env) -> None:
        env.last_used = time.monotonic()
        env.pending = None
        if env.dead:
            await env.stop(self)
            env.fn.envs = [e for e in env.fn.envs if e is not env]
        env.busy = False

    async def _reap(self) -> None:
        while True:
            await asyncio.sleep(5)
            now = time.monotonic()
            for fn in self._functions.values():
                for e in list(fn.envs):
                    if not e.busy and (e.dead or now - e.last_used > fn.spec.idle_timeout_s):
                        e.busy = True
                        await e.stop(self)
                        fn.envs = [x for x in fn.envs if x is not e]

    async def run(self, name: str, payload: bytes, *, client_context: str | None = None) -> tuple[bytes, str | None, str]:
        """Invoke ``name`` with ``payload`` (no HTTP, no throttling); return ``(body, error_type, tail log)``."""
        fn = self._function(name)
        while (env := await self._acquire(fn)) is None:
            await asyncio.sleep(0.02)
        return await self._execute(fn, env, payload, client_context)

    async def _execute(
        self, fn: _Function, env: _Env, payload: bytes, client_context: str | None, *, stream: bool = False
    ) -> tuple[Any, str | None, str]:
        spec = fn.spec
        faults = fn.faults
        crash = faults.crash > 0
        if crash:
            faults.crash -= 1
        delay = faults.latency_s
        if faults.straggle > 0:
            faults.straggle -= 1
            delay += faults.straggle_s
        t0 = time.perf_counter()
        inv = _Invocation(payload, int(time.time() * 1000 + spec.timeout_s * 1000), client_context, crash, stream)
        env.pending = inv
        fn.meter.invocations += 1
        fn.meter.request_bytes += len(payload)
        cold = not env.init_reported
        try:
            if not env.ready.is_set():  # the init phase has its own 10 s limit, outside the function timeout
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(env.ready.wait(), INIT_TIMEOUT_S)
                if not env.ready.is_set():
                    env.init_error = _error_body("Runtime.Unknown", f"init did not finish within {INIT_TIMEOUT_S:.0f} s")
                inv.started = time.perf_counter()
                inv.deadline_ms = int(time.time() * 1000 + spec.timeout_s * 1000)
            try:
                await asyncio.wait_for(self._deliver(env, inv, delay), spec.timeout_s)
            except TimeoutError:
                env.kill()
                fn.meter.timeouts += 1
                inv.finish(
                    json.dumps(
                        {"errorType": "Sandbox.Timedout", "errorMessage": f"RequestId: {inv.id} Error: Task timed out after {spec.timeout_s:.2f} seconds"}
                    ).encode(),
                    "Sandbox.Timedout",
                )
            body, error_type = inv.future.result()
            duration_ms = (time.perf_counter() - inv.started) * 1e3
            if error_type is not None:
                fn.meter.errors += 1
            else:
                fn.meter.response_bytes += len(body)
            billed = max(1, math.ceil(duration_ms))
            fn.meter.billed_ms += billed
            fn.meter.gb_s += billed / 1000 * spec.memory_mb / 1024
            report = (
                f"REPORT RequestId: {inv.id}\tDuration: {duration_ms:.2f} ms\tBilled Duration: {billed} ms\t"
                f"Memory Size: {spec.memory_mb} MB\tMax Memory Used: {env.max_memory_mb()} MB\t"
            )
            if cold and env.init_ms is not None:
                env.init_reported = True
                fn.meter.init_ms += env.init_ms
                fn.meter.gb_s += env.init_ms / 1000 * spec.memory_mb / 1024
                report += f"Init Duration: {env.init_ms:.2f} ms\t"
            if error_type == "Sandbox.Timedout":
                report += "Status: timeout"
            await asyncio.sleep(0)  # let the output reader catch up with the worker's last lines
            tail = f"START RequestId: {inv.id} Version: $LATEST\n" + "".join(inv.log) + f"END RequestId: {inv.id}\n" + report + "\n"
            log.debug("%s %s in %.1f ms (%s)", spec.name, inv.id, (time.perf_counter() - t0) * 1e3, error_type or "ok")
            return body, error_type, tail
        finally:
            await self._release(env)

    async def _deliver(self, env: _Env, inv: _Invocation, delay: float) -> None:
        if delay > 0:
            await asyncio.sleep(delay)
        if env.init_error is not None:
            inv.finish(env.init_error, json.loads(env.init_error).get("errorType") or "Runtime.Unknown")
            env.kill()
            return
        if env.dead:
            inv.finish(_error_body("Runtime.ExitError", f"RequestId: {inv.id} Error: Runtime exited with error"), "Runtime.ExitError")
            return
        await env.queue.put(inv)
        await asyncio.shield(inv.future)

    # ------------------------------------------------------------------ Runtime API (behind)
    def _env_of(self, request: web.Request) -> _Env | None:
        sockname = request.transport.get_extra_info("sockname") if request.transport else None
        return self._envs_by_port.get(sockname[1]) if sockname else None

    async def _next(self, request: web.Request) -> web.StreamResponse:
        from aiohttp import web

        env = self._env_of(request)
        if env is None:
            return web.json_response({"errorType": "InvalidRequest", "errorMessage": "unknown environment"}, status=400)
        if not env.ready.is_set():
            env.init_ms = (time.perf_counter() - env.spawned) * 1e3
            env.ready.set()
        # a worker that dies while polling leaves this handler waiting: wake it (else shutdown hangs)
        get = asyncio.ensure_future(env.queue.get())
        gone = asyncio.ensure_future(env.gone.wait())
        try:
            await asyncio.wait({get, gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            gone.cancel()
            if not get.done():
                get.cancel()
        if get.cancelled() or not get.done():
            raise web.HTTPGone()
        inv = get.result()
        inv.received = True
        if inv.crash:  # fault: the worker dies as it receives the event (like an OOM kill)
            env.kill()
            raise web.HTTPServiceUnavailable()
        headers = {
            "Lambda-Runtime-Aws-Request-Id": inv.id,
            "Lambda-Runtime-Deadline-Ms": str(inv.deadline_ms),
            "Lambda-Runtime-Invoked-Function-Arn": self._arn(env.fn.spec.name),
            "Lambda-Runtime-Trace-Id": f"Root=1-{int(time.time()):08x}-{uuid.uuid4().hex[:24]};Parent={uuid.uuid4().hex[:16]};Sampled=0",
            "Content-Type": "application/json",
        }
        if inv.client_context:
            headers["Lambda-Runtime-Client-Context"] = base64.b64decode(inv.client_context).decode("utf-8", "replace")
        return web.Response(body=inv.payload, headers=headers)

    def _pending(self, request: web.Request) -> tuple[_Env | None, _Invocation | None]:
        env = self._env_of(request)
        inv = env.pending if env is not None else None
        if inv is None or inv.id != request.match_info["id"]:
            return env, None
        return env, inv

    async def _response(self, request: web.Request) -> web.StreamResponse:
        from aiohttp import web

        env, inv = self._pending(request)
        if env is None or inv is None:
            return web.json_response({"errorType": "InvalidRequestID", "errorMessage": "unknown request id"}, status=400)
        size = request.content_length
        if size is not None and size <= MAX_RESPONSE_BYTES and inv.streamable:
            # hand the body through to the invoker chunk by chunk: no copy of it is kept here
            stream = _Stream(request.content, size)
            inv.finish(stream, None)
            await stream.drained.wait()
            return web.json_response({"status": "OK"}, status=202)
        if size is not None and size > MAX_RESPONSE_BYTES:
            body = b""
        else:
            body = await request.read()
            size = len(body)
        if size > MAX_RESPONSE_BYTES:
            # Lambda resets an environment that produced an oversize response (aws-lambda.md §1.4)
            inv.finish(
                _error_body(
                    "Function.ResponseSizeTooLarge",
                    f"Response payload size ({size} bytes) exceeded maximum allowed payload size ({MAX_RESPONSE_BYTES} bytes).",
                ),
                "Function.ResponseSizeTooLarge",
            )
            env.kill()
            return web.json_response({"errorType": "RequestEntityTooLarge", "errorMessage": "response too large"}, status=413)
        inv.finish(body, None)
        return web.json_response({"status": "OK"}, status=202)

    async def _error(self, request: web.Request) -> web.StreamResponse:
        from aiohttp import web

        env, inv = self._pending(request)
        if env is None or inv is None:
            return web.json_response({"errorType": "InvalidRequestID", "errorMessage": "unknown request id"}, status=400)
        body = await request.read()
        try:
            etype = json.loads(body).get("errorType") or "Unhandled"
        except ValueError:
            etype = request.headers.get("Lambda-Runtime-Function-Error-Type") or "Unhandled"
        inv.finish(body, str(etype))
        return web.json_response({"status": "OK"}, status=202)

    async def _init_error(self, request: web.Request) -> web.StreamResponse:
        from aiohttp import web

        env = self._env_of(request)
        body = await request.read()
        if env is not None:
            env.init_error = body
            env.init_ms = (time.perf_counter() - env.spawned) * 1e3
            env.ready.set()
        return web.json_response({"status": "OK"}, status=202)

    # ------------------------------------------------------------------ Invoke API (front)
    def _arn(self, name: str) -> str:
        return f"arn:aws:lambda:{self.region}:{self.account}:function:{name}"

    def _resolve(self, raw: str, qualifier: str | None) -> tuple[_Function | None, str]:
        name = raw
        if name.startswith("arn:"):
            parts = name.split(":")
            # arn:aws:lambda:region:account:function:name[:qualifier]
            name = parts[6] if len(parts) > 6 else ""
            if len(parts) > 7:
                qualifier = qualifier or parts[7]
        elif name.count(":") >= 2:  # partial ARN account:function:name[:qualifier]
            parts = name.split(":")
            name = parts[2]
            if len(parts) > 3:
                qualifier = qualifier or parts[3]
        elif ":" in name:
            name, q = name.split(":", 1)
            qualifier = qualifier or q
        fn = self._functions.get(name)
        shown = self._arn(name) + (f":{qualifier}" if qualifier else "")
        if fn is None or qualifier not in (None, "", "$LATEST"):
            return None, shown
        return fn, shown

    @staticmethod
    def _aws_error(status: int, code: str, message: str, extra: dict[str, Any] | None = None, headers: dict[str, str] | None = None) -> web.Response:
        from aiohttp import web

        body = {"Type": "User", "message": message, **(extra or {})}
        return web.json_response(
            body,
            status=status,
            headers={"x-amzn-ErrorType": code, "x-amzn-RequestId": str(uuid.uuid4()), **(headers or {})},
        )

    async def _invoke(self, request: web.Request) -> web.StreamResponse:
        from aiohttp import web

        fn, arn = self._resolve(request.match_info["name"], request.query.get("Qualifier"))
        if fn is None:
            return self._aws_error(404, "ResourceNotFoundException", f"Function not found: {arn}")
        too_big = (
            f"Request must be smaller than {MAX_REQUEST_BYTES} bytes for the InvokeFunction operation"
        )
        if request.content_length is not None and request.content_length > MAX_REQUEST_BYTES:
            return self._aws_error(413, "RequestEntityTooLargeException", too_big)
        payload = await request.read()
        if len(payload) > MAX_REQUEST_BYTES:
            return self._aws_error(413, "RequestEntityTooLargeException", too_big)
        if not payload:
            payload = b"{}"
        try:
            json.loads(payload)
        except ValueError as exc:
            return self._aws_error(400, "InvalidRequestContentException", f"Could not parse request body into json: {exc}")
        itype = request.headers.get("X-Amz-Invocation-Type") or "RequestResponse"
        if itype not in ("RequestResponse", "Event", "DryRun"):
            return self._aws_error(400, "InvalidParameterValueException", f"Unsupported invocation type {itype!r}")
        if itype == "DryRun":
            return web.Response(status=204, headers={"x-amzn-RequestId": str(uuid.uuid4())})
        faults = fn.faults
        if faults.throttle > 0:
            faults.throttle -= 1
            fn.meter.throttles += 1
            hdr = {"Retry-After": f"{faults.retry_after:g}"} if faults.retry_after else None
            return self._aws_error(429, "TooManyRequestsException", "Rate Exceeded.", {"Reason": "ConcurrentInvocationLimitExceeded"}, hdr)
        client_context = request.headers.get("X-Amz-Client-Context")
        if itype == "Event":
            task = asyncio.create_task(self.run(fn.spec.name, payload, client_context=client_context))
            self._background.add(task)
            task.add_done_callback(self._background.discard)
            return web.Response(status=202, headers={"x-amzn-RequestId": str(uuid.uuid4())})
        env = await self._acquire(fn)
        if env is None:
            fn.meter.throttles += 1
            return self._aws_error(
                429,
                "TooManyRequestsException",
                "Rate Exceeded.",
                {"Reason": "ReservedFunctionConcurrentInvocationLimitExceeded"},
                {"Retry-After": "1"},
            )
        body, error_type, tail = await self._execute(fn, env, payload, client_context, stream=True)
        headers = {
            "Content-Type": "application/json",
            "X-Amz-Executed-Version": "$LATEST",
            "x-amzn-RequestId": str(uuid.uuid4()),
        }
        if error_type is not None:
            headers["X-Amz-Function-Error"] = "Unhandled"
        if request.headers.get("X-Amz-Log-Type") == "Tail":
            headers["X-Amz-Log-Result"] = base64.b64encode(tail.encode("utf-8")[-_TAIL_BYTES:]).decode()
        if not isinstance(body, _Stream):
            return web.Response(body=body, status=200, headers=headers)
        resp = web.StreamResponse(status=200, headers=headers)
        resp.content_length = body.size
        try:
            await resp.prepare(request)
            while chunk := await body.content.readany():
                await resp.write(chunk)
        finally:
            body.drained.set()
        await resp.write_eof()
        return resp

    # ------------------------------------------------------------------ control (not AWS)
    async def _list(self, request: web.Request) -> web.StreamResponse:
        from aiohttp import web

        return web.json_response(
            {
                name: {
                    "spec": {k: v for k, v in asdict(fn.spec).items() if k != "env"},
                    "environments": sum(1 for e in fn.envs if not e.dead),
                    "meter": fn.meter.to_json(),
                    "faults": asdict(fn.faults),
                }
                for name, fn in self._functions.items()
            }
        )

    async def _get_faults(self, request: web.Request) -> web.StreamResponse:
        from aiohttp import web

        fn = self._functions.get(request.match_info["name"])
        if fn is None:
            return self._aws_error(404, "ResourceNotFoundException", f"Function not found: {self._arn(request.match_info['name'])}")
        return web.json_response(asdict(fn.faults))

    async def _set_faults(self, request: web.Request) -> web.StreamResponse:
        from aiohttp import web

        fn = self._functions.get(request.match_info["name"])
        if fn is None:
            return self._aws_error(404, "ResourceNotFoundException", f"Function not found: {self._arn(request.match_info['name'])}")
        try:
            fn.faults.update(**(await request.json()))
        except (ValueError, TypeError, ConfigError) as exc:
            return self._aws_error(400, "InvalidParameterValueException", str(exc))
        return web.json_response(asdict(fn.faults))

    async def _get_meter(self, request: web.Request) -> web.StreamResponse:
        from aiohttp import web

        fn = self._functions.get(request.match_info["name"])
        if fn is None:
            return self._aws_error(404, "ResourceNotFoundException", f"Function not found: {self._arn(request.match_info['name'])}")
        return web.json_response(fn.meter.to_json())


def _check_loopback(host: str) -> None:
    if host == "localhost":
        return
    try:
        ok = ipaddress.ip_address(host).is_loopback
    except ValueError:
        ok = False
    if not ok:
        raise ConfigError(
            f"the local Lambda runtime binds loopback addresses only, not {host!r}: it runs code for anyone who can"
            " reach it; use 127.0.0.1 (or ::1)"
        )
