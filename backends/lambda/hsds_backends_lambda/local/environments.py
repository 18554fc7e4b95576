"""Functions and their execution environments in the local Lambda runtime.

An execution environment is one ``python -m awslambdaric <module>.<handler>`` process
(a :class:`~hsds_backends._proc.ChildProcess`) whose ``AWS_LAMBDA_RUNTIME_API`` points at
its own loopback Runtime API listener (:mod:`.runtime_api`), so the handler sees a real
``context`` and errors come back in the real shapes. Environments are reused warm, one
invocation at a time each (docs/aws-lambda.md §1.4); a new one is a cold start; idle ones are
reclaimed after ``idle_timeout_s``; one that crashed, timed out or answered too much is
replaced.

The worker's output (stdout and stderr) goes to a log file per environment; what it wrote
during an invocation becomes that invocation's log (the ``Tail`` log between ``START`` and
``END``). Its exit is noticed at once through a pidfd on the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

from hsds_backends._proc import ChildProcess

from .billing import Meter
from .faults import Faults

if TYPE_CHECKING:
    from .runtime_api import RuntimeAPI

__all__ = ["DEFAULT_HANDLER", "INIT_TIMEOUT_S", "Environment", "Function", "FunctionSpec", "Invocation", "Stream", "error_body"]

log = logging.getLogger("hsds_backends_lambda.local")

#: The handler of the installed package (no zip needed locally).
DEFAULT_HANDLER: Final = "hsds_backends_lambda.lambda_function.lambda_handler"
#: Lambda's init phase limit (docs/aws-lambda.md §1.4).
INIT_TIMEOUT_S: Final = 10.0
#: Variables of this process a worker inherits (the rest of its environment is the function's).
_PASS_ENV: Final = ("PATH", "LANG", "LC_ALL", "HOME", "TMPDIR", "PYTHONPATH", "SYSTEMROOT", "VIRTUAL_ENV")
#: A worker's log file is emptied between invocations once it holds this much.
_LOG_KEEP_BYTES: Final = 1 << 20
#: Seconds a stopped worker gets between SIGTERM and SIGKILL.
_STOP_GRACE_S: Final = 1.0


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


def error_body(error_type: str, message: str) -> bytes:
    """Return a function error payload as the service makes it (docs/aws-lambda.md §1.2)."""
    return json.dumps({"errorType": error_type, "errorMessage": message}).encode()


class Stream:
    """A worker's response body on its way through to the invoker (never buffered whole)."""

    __slots__ = ("content", "drained", "size")

    def __init__(self, content: Any, size: int) -> None:
        self.content = content
        self.size = size
        self.drained = asyncio.Event()

    def __len__(self) -> int:
        return self.size


class Invocation:
    """One invocation: its event, deadline and, once finished, ``(body, error type)``."""

    __slots__ = ("client_context", "crash", "deadline_ms", "future", "id", "payload", "received", "started", "streamable")

    def __init__(self, payload: bytes, deadline_ms: int, client_context: str | None, crash: bool, streamable: bool = False) -> None:
        self.streamable = streamable
        self.id = str(uuid.uuid4())
        self.payload = payload
        self.deadline_ms = deadline_ms
        self.client_context = client_context
        self.future: asyncio.Future[tuple[Any, str | None]] = asyncio.get_running_loop().create_future()
        self.crash = crash
        self.started = time.perf_counter()
        self.received = False

    def finish(self, body: bytes | Stream, error_type: str | None) -> None:
        """Set the outcome (the first one wins)."""
        if not self.future.done():
            self.future.set_result((body, error_type))


def _signame(n: int) -> str:
    try:
        sig = signal.Signals(n)
    except ValueError:
        return str(n)
    return {signal.SIGKILL: "killed", signal.SIGTERM: "terminated", signal.SIGSEGV: "segmentation fault"}.get(sig, sig.name)


class Environment:
    """One execution environment: an awslambdaric process and its Runtime API listener.

    Parameters
    ----------
    fn
        The function it runs.
    number
        Its number within the function (for names and log files).
    log_dir
        Folder of its log file.
    """

    def __init__(self, fn: Function, number: int, log_dir: str) -> None:
        self.fn = fn
        self.number = number
        self.child: ChildProcess | None = None
        self.port = 0
        self.ready = asyncio.Event()
        self.init_error: bytes | None = None
        self.queue: asyncio.Queue[Invocation] = asyncio.Queue(maxsize=1)
        self.pending: Invocation | None = None
        self.dead = False
        self.gone = asyncio.Event()
        self.busy = False
        self.spawned = time.perf_counter()
        self.init_ms: float | None = None
        self.init_reported = False
        self.last_used = time.monotonic()
        self.log_path = os.path.join(log_dir, f"{fn.spec.name}-{number}.log")
        self._log_fd: int | None = None
        self._log_pos = 0
        self._pidfd: int | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def __repr__(self) -> str:
        return f"<env {self.fn.spec.name}#{self.number} pid={self.pid} port={self.port}>"

    @property
    def pid(self) -> int | None:
        return self.child.pid if self.child is not None else None

    async def start(self, api: RuntimeAPI, region: str) -> None:
        """Listen for this environment's Runtime API, then start its worker (no waiting for init)."""
        spec = self.fn.spec
        self.port = await api.listen(self)
        env = {k: os.environ[k] for k in _PASS_ENV if k in os.environ}
        env.update(
            {
                "AWS_LAMBDA_RUNTIME_API": f"127.0.0.1:{self.port}",
                "AWS_LAMBDA_FUNCTION_NAME": spec.name,
                "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
                "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(spec.memory_mb),
                "AWS_LAMBDA_LOG_GROUP_NAME": f"/aws/lambda/{spec.name}",
                "AWS_LAMBDA_LOG_STREAM_NAME": time.strftime("%Y/%m/%d/[$LATEST]") + uuid.uuid4().hex,
                "AWS_REGION": region,
                "AWS_DEFAULT_REGION": region,
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
        self.child = ChildProcess(
            [spec.python, "-m", "awslambdaric", spec.handler],
            env=env,
            name=f"Lambda environment {spec.name}#{self.number}",
            ready_prefix=None,  # ready when it asks the Runtime API for its first event
            log_path=self.log_path,
            cwd=spec.code_dir or os.getcwd(),
        )
        self.child.spawn()
        self._log_fd = os.open(self.log_path, os.O_RDONLY)
        self._watch_exit()

    # ------------------------------------------------------------------ exit
    def _watch_exit(self) -> None:
        assert self.child is not None and self.child.pid is not None
        self._loop = loop = asyncio.get_running_loop()
        try:
            fd = os.pidfd_open(self.child.pid)
        except (AttributeError, OSError):  # no pidfd (old kernel, not Linux): a thread waits instead
            proc = self.child.proc
            assert proc is not None

            def wait() -> None:
                with contextlib.suppress(Exception):
                    proc.wait()
                with contextlib.suppress(RuntimeError):  # the loop closed first
                    loop.call_soon_threadsafe(self._exited)

            threading.Thread(target=wait, name=f"{self!r} exit", daemon=True).start()
            return
        self._pidfd = fd
        loop.add_reader(fd, self._exited)

    def _unwatch(self) -> None:
        fd, self._pidfd = self._pidfd, None
        if fd is not None:
            if self._loop is not None and not self._loop.is_closed():
                self._loop.remove_reader(fd)
            os.close(fd)

    def _exited(self) -> None:
        """The worker exited: fail its invocation (``Runtime.ExitError``) or its init."""
        self._unwatch()
        rc = self.child.returncode if self.child is not None else None
        self.dead = True
        self.gone.set()
        reason = f"signal: {_signame(-rc)}" if rc is not None and rc < 0 else f"exit status {rc}"
        inv = self.pending
        if inv is not None and not inv.future.done():
            self.fn.meter.crashes += 1
            inv.finish(error_body("Runtime.ExitError", f"RequestId: {inv.id} Error: Runtime exited with error: {reason}"), "Runtime.ExitError")
        if not self.ready.is_set():
            if self.init_error is None:
                tail = self.child.log_tail() if self.child is not None else ""
                self.init_error = error_body("Runtime.ExitError", f"Runtime exited during init with error: {reason}. Output: {tail[-1000:]}")
            self.ready.set()

    # ------------------------------------------------------------------ output
    def read_output(self) -> str:
        """Return what the worker wrote since the last call (stdout and stderr)."""
        fd = self._log_fd
        if fd is None:
            return ""
        chunks = []
        while data := os.pread(fd, 1 << 16, self._log_pos):
            self._log_pos += len(data)
            chunks.append(data)
        if not chunks:
            return ""
        text = b"".join(chunks).decode("utf-8", "replace")
        if log.isEnabledFor(logging.DEBUG):
            for line in text.splitlines():
                log.debug("%r: %s", self, line)
        if self._log_pos > _LOG_KEEP_BYTES and self.pending is None:
            # between invocations the worker writes nothing: empty the file (it appends, so
            # its next write lands at the start)
            with contextlib.suppress(OSError):
                os.truncate(self.log_path, 0)
                self._log_pos = 0
        return text

    # ------------------------------------------------------------------ stop
    def kill(self) -> None:
        """SIGKILL the worker now (timeouts, crashes, oversize answers: Lambda replaces the environment)."""
        if self.child is not None:
            self.child.send_signal(signal.SIGKILL)
        self.dead = True
        self.gone.set()

    async def stop(self, api: RuntimeAPI) -> None:
        """Stop the worker (SIGTERM, then SIGKILL) and close its listener and log."""
        self.dead = True
        self.gone.set()
        if self.child is not None:
            await self.child.astop(_STOP_GRACE_S)
        self._unwatch()
        await api.forget(self)
        fd, self._log_fd = self._log_fd, None
        if fd is not None:
            os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(self.log_path)


class Function:
    """A function of the local runtime: its spec, environments, fault script and meter."""

    def __init__(self, spec: FunctionSpec) -> None:
        self.spec = spec
        self.envs: list[Environment] = []
        self.faults = Faults()
        self.meter = Meter()
        self.numbers = 0
        self._lock = asyncio.Lock()

    def alive(self) -> int:
        """Return how many environments are alive."""
        return sum(1 for e in self.envs if not e.dead)

    async def spawn(self, api: RuntimeAPI, region: str, log_dir: str) -> Environment:
        """Start one more environment (its init goes on in the background)."""
        self.numbers += 1
        env = Environment(self, self.numbers, log_dir)
        self.envs.append(env)
        env.busy = True
        try:
            await env.start(api, region)
        finally:
            env.busy = False
        return env

    async def acquire(self, api: RuntimeAPI, region: str, log_dir: str) -> Environment | None:
        """Take an idle environment (warm first), else start one (a cold start); ``None`` at the concurrency cap."""
        async with self._lock:
            self.envs = [e for e in self.envs if not (e.dead and not e.busy)]
            for e in self.envs:
                if not e.busy and not e.dead and e.ready.is_set():
                    e.busy = True
                    return e
            for e in self.envs:  # a pre-warmed environment still initialising
                if not e.busy and not e.dead:
                    e.busy = True
                    return e
            if len(self.envs) >= self.spec.concurrency:
                return None
            self.meter.cold_starts += 1
            env = await self.spawn(api, region, log_dir)
            env.busy = True
            return env

    async def release(self, env: Environment, api: RuntimeAPI) -> None:
        """Give ``env`` back after an invocation; a dead one is stopped and dropped."""
        env.last_used = time.monotonic()
        env.pending = None
        if env.dead:
            await env.stop(api)
            self.envs = [e for e in self.envs if e is not env]
        env.busy = False

    async def reap(self, api: RuntimeAPI, now: float) -> None:
        """Stop idle environments older than ``idle_timeout_s``, and dead ones."""
        for e in list(self.envs):
            if not e.busy and (e.dead or now - e.last_used > self.spec.idle_timeout_s):
                e.busy = True
                await e.stop(api)
                self.envs = [x for x in self.envs if x is not e]

    async def stop(self, api: RuntimeAPI) -> None:
        """Stop every environment."""
        envs, self.envs = self.envs, []
        await asyncio.gather(*(e.stop(api) for e in envs), return_exceptions=True)
