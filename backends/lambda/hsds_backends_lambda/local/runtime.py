"""The local Lambda runtime: the Invoke API in front, the Lambda Runtime API behind.

No existing tool runs a Python handler behind the real Invoke REST API without Docker
(docs/aws-lambda.md, Preamble). This one does, with the real AWS runtime interface client as
the worker: :mod:`.invoke_api` (front), :mod:`.runtime_api` (behind), :mod:`.environments`
(the awslambdaric processes), :mod:`.faults` and :mod:`.billing`. This module ties them
together and runs invocations: function timeouts (the worker is killed, ``Sandbox.Timedout``),
the init phase's own limit, and the ``START``/``END``/``REPORT`` log.

Only loopback addresses can be bound: the server runs code for anyone who can reach it. On
a shared host the other local users can reach loopback too, so (docs/architecture.md §11):
each environment's Runtime API serves only that environment's worker process
(:mod:`.runtime_api`), the control endpoints need the runtime's :attr:`~LocalLambdaRuntime.token`,
every request must be addressed to loopback, and invokes can be made to need the token too
(``protect_invoke``; :mod:`.invoke_api`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import shutil
import tempfile
import time
from collections.abc import Coroutine
from typing import Any, Self

from hsds_backends._proc import loopback_socket
from hsds_backends.errors import ConfigError
from hsds_backends.security import is_loopback

from .billing import Meter, peak_memory_mb, report_line
from .environments import INIT_TIMEOUT_S, Environment, Function, FunctionSpec, Invocation, Stream, error_body
from .faults import Faults
from .invoke_api import InvokeAPI
from .runtime_api import RuntimeAPI

__all__ = ["LocalLambdaRuntime"]

log = logging.getLogger("hsds_backends_lambda.local")

#: Seconds between sweeps for idle environments.
_REAP_EVERY_S = 5.0


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
    token
        The token the control endpoints (``/local/*``) need; default: a new random one. Hand
        it to clients out of band (a pipe, a 0600 file), never on a command line.
    protect_invoke
        Invokes need the token too (as the SigV4 access key id, or a bearer token); off by
        default, so any loopback client (``aws lambda invoke``, boto3) works.

    Examples
    --------
    >>> async with LocalLambdaRuntime(functions=[FunctionSpec("chunk_read", env={"ROOT_DIR": "/data", "BUCKET_NAME": "hsdstest"})]) as rt:
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
        token: str | None = None,
        protect_invoke: bool = False,
    ) -> None:
        _check_loopback(host)
        if token is not None and not token.strip():
            raise ConfigError("the local Lambda runtime's token is empty; pass a non-empty token or none (a random one is made)")
        self.token = token.strip() if token else secrets.token_hex(32)
        """What the control endpoints (and, with :attr:`protect_invoke`, invokes) need."""
        self.protect_invoke = protect_invoke
        self.host = host
        self.port = port
        self.region = region
        self.account = account
        self.functions: dict[str, Function] = {}
        """The functions served, by name."""
        for spec in functions or ():
            self.add_function(spec)
        self._runtime_api = RuntimeAPI(self.arn)
        self._runner: Any = None
        self._log_dir: str | None = None
        self._reaper: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[Any]] = set()

    def __repr__(self) -> str:  # never the token
        where = self.url if self._runner is not None else "stopped"
        return f"LocalLambdaRuntime({where}, functions={sorted(self.functions)})"

    # ------------------------------------------------------------------ management
    @property
    def url(self) -> str:
        """``http://127.0.0.1:<port>``: the ``aws_lambda_gateway`` (endpoint URL) of this runtime."""
        if self._runner is None:
            raise RuntimeError("LocalLambdaRuntime is not running; use 'async with' or await start()")
        return f"http://{self.host}:{self.port}"

    def add_function(self, spec: FunctionSpec) -> None:
        """Serve ``spec`` (replacing a function of the same name).

        Raises
        ------
        ConfigError
            ``spec.concurrency`` is below 1.
        """
        if spec.concurrency < 1:
            raise ConfigError(f"function {spec.name!r}: concurrency must be >= 1, got {spec.concurrency}")
        self.functions[spec.name] = Function(spec)

    def faults(self, name: str) -> Faults:
        """Return the fault script of function ``name`` (mutate it to inject failures)."""
        return self.function(name).faults

    def meter(self, name: str) -> Meter:
        """Return the billing meter of function ``name``."""
        return self.function(name).meter

    def environments(self, name: str) -> int:
        """Return how many environments of ``name`` are alive."""
        return self.function(name).alive()

    def function(self, name: str) -> Function:
        """Return function ``name``.

        Raises
        ------
        ConfigError
            No function of that name.
        """
        try:
            return self.functions[name]
        except KeyError:
            raise ConfigError(f"unknown function {name!r}; functions: {sorted(self.functions)}") from None

    def arn(self, name: str) -> str:
        """Return the ARN of function ``name`` in this runtime's region and account."""
        return f"arn:aws:lambda:{self.region}:{self.account}:function:{name}"

    async def start(self) -> Self:
        """Bind the Invoke API, start the warm environments; return ``self``."""
        from aiohttp import web

        if self._runner is not None:
            return self
        self._log_dir = tempfile.mkdtemp(prefix="hsds-lambda-envs-")
        await self._runtime_api.start()
        runner = web.AppRunner(InvokeAPI(self).app(), access_log=None, handle_signals=False, shutdown_timeout=1.0)
        await runner.setup()
        sock = loopback_socket(self.port, host=self.host)
        self.port = sock.getsockname()[1]
        await web.SockSite(runner, sock).start()
        self._runner = runner
        self._reaper = asyncio.create_task(self._reap())
        await asyncio.gather(*(self.prewarm(name, fn.spec.warm) for name, fn in self.functions.items()))
        log.info("local Lambda runtime on %s: %s", self.url, sorted(self.functions))
        return self

    async def prewarm(self, name: str, n: int) -> None:
        """Start environments of ``name`` until ``n`` are alive (capped by its concurrency)."""
        fn = self.function(name)
        want = min(n, fn.spec.concurrency) - fn.alive()
        envs = [await fn.spawn(self._runtime_api, self.region, self._logs()) for _ in range(max(0, want))]
        await asyncio.gather(*(asyncio.wait_for(e.ready.wait(), INIT_TIMEOUT_S) for e in envs), return_exceptions=True)

    async def stop(self) -> None:
        """Stop every environment and close the listeners. Idempotent."""
        if self._reaper is not None:
            self._reaper.cancel()
            await asyncio.gather(self._reaper, return_exceptions=True)
            self._reaper = None
        for t in list(self._background):
            t.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        for fn in self.functions.values():
            await fn.stop(self._runtime_api)
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()
        await self._runtime_api.stop()
        log_dir, self._log_dir = self._log_dir, None
        if log_dir is not None:
            shutil.rmtree(log_dir, ignore_errors=True)

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def _logs(self) -> str:
        if self._log_dir is None:
            raise RuntimeError("LocalLambdaRuntime is not running; use 'async with' or await start()")
        return self._log_dir

    async def background_done(self) -> None:
        """Wait until every ``Event`` invocation running in the background has finished."""
        while self._background:
            await asyncio.gather(*self._background, return_exceptions=True)

    def in_background(self, coro: Coroutine[Any, Any, Any]) -> None:
        """Run ``coro`` as a task that :meth:`stop` cancels (``Event`` invocations)."""
        task = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _reap(self) -> None:
        while True:
            await asyncio.sleep(_REAP_EVERY_S)
            now = time.monotonic()
            for fn in self.functions.values():
                await fn.reap(self._runtime_api, now)

    # ------------------------------------------------------------------ invocations
    async def acquire(self, fn: Function) -> Environment | None:
        """Take an environment of ``fn`` for one invocation (``None``: at its concurrency, throttle)."""
        return await fn.acquire(self._runtime_api, self.region, self._logs())

    async def run(self, name: str, payload: bytes, *, client_context: str | None = None) -> tuple[bytes, str | None, str]:
        """Invoke ``name`` with ``payload`` (no HTTP, no throttling); return ``(body, error_type, tail log)``."""
        fn = self.function(name)
        while (env := await self.acquire(fn)) is None:
            await asyncio.sleep(0.02)
        body, error_type, tail = await self.execute(fn, env, payload, client_context)
        assert not isinstance(body, Stream)  # only streamable invocations stream
        return body, error_type, tail

    async def execute(
        self, fn: Function, env: Environment, payload: bytes, client_context: str | None, *, stream: bool = False
    ) -> tuple[bytes | Stream, str | None, str]:
        """Run one invocation in ``env`` (taken with :meth:`acquire`, released here); return ``(body, error_type, tail log)``.

        With ``stream``, a successful body may come as a :class:`Stream` to pass on (the
        worker's request stays open until it is drained).
        """
        spec = fn.spec
        crash = fn.faults.take_crash()
        delay = fn.faults.take_delay()
        t0 = time.perf_counter()
        inv = Invocation(payload, int(time.time() * 1000 + spec.timeout_s * 1000), client_context, crash, stream)
        env.read_output()  # whatever came before belongs to no invocation
        env.pending = inv
        fn.meter.invocations += 1
        fn.meter.request_bytes += len(payload)
        cold = not env.init_reported
        try:
            if not env.ready.is_set():  # the init phase has its own 10 s limit, outside the function timeout
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(env.ready.wait(), INIT_TIMEOUT_S)
                if not env.ready.is_set():
                    env.init_error = error_body("Runtime.Unknown", f"init did not finish within {INIT_TIMEOUT_S:.0f} s")
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
            billed = fn.meter.bill(duration_ms, spec.memory_mb)
            init_ms = None
            if cold and env.init_ms is not None:
                env.init_reported = True
                init_ms = env.init_ms
                fn.meter.bill_init(init_ms, spec.memory_mb)
            report = report_line(
                inv.id, duration_ms, billed, spec.memory_mb, peak_memory_mb(env.pid), init_ms, error_type == "Sandbox.Timedout"
            )
            tail = f"START RequestId: {inv.id} Version: $LATEST\n" + env.read_output() + f"END RequestId: {inv.id}\n" + report + "\n"
            log.debug("%s %s in %.1f ms (%s)", spec.name, inv.id, (time.perf_counter() - t0) * 1e3, error_type or "ok")
            return body, error_type, tail
        finally:
            await fn.release(env, self._runtime_api)

    async def _deliver(self, env: Environment, inv: Invocation, delay: float) -> None:
        if delay > 0:
            await asyncio.sleep(delay)
        if env.init_error is not None:
            inv.finish(env.init_error, json.loads(env.init_error).get("errorType") or "Runtime.Unknown")
            env.kill()
            return
        if env.dead:
            inv.finish(error_body("Runtime.ExitError", f"RequestId: {inv.id} Error: Runtime exited with error"), "Runtime.ExitError")
            return
        await env.queue.put(inv)
        await asyncio.shield(inv.future)


def _check_loopback(host: str) -> None:
    if not is_loopback(host):
        raise ConfigError(
            f"the local Lambda runtime binds loopback addresses only, not {host!r}: it runs code for anyone who can"
            " reach it; use 127.0.0.1 (or ::1)"
        )
