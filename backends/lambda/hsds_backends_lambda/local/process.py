"""The local Lambda runtime in a child process (``python -m hsds_backends_lambda.local``).

The Invoke API server relays every result twice (worker → runtime → client). Run in the
reading process, that relaying shares the event loop (and the GIL) with receiving and
placing results; in a child process it runs on its own, as AWS's front end does.

Protocol with the child (a :class:`~hsds_backends._proc.ChildProcess`): the parent writes the
function spec as JSON on the child's stdin and closes it (the spec holds the function's
environment, credentials included, which must not appear on a command line), with the
runtime's token (made by the parent, so only it and the child know it: the control endpoints
need it, and invokes too with ``protect_invoke``) and the path of the child's log file (its
stderr, quoted when it fails to start); the child binds
127.0.0.1 on a free port and prints ``READY <url>``, or ``FAILED <error>`` and exits. It
serves until SIGTERM: from :meth:`RuntimeProcess.stop`, or from the kernel when the parent
dies (the shared parent-death signal); then it stops its environments and exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import signal
import sys
import tempfile
from dataclasses import asdict
from typing import Any, Final

from hsds_backends._proc import MALLOC_ENV, ChildProcess, ChildStartError
from hsds_backends.errors import BackendError

from .billing import Meter
from .environments import FunctionSpec
from .runtime import LocalLambdaRuntime

__all__ = ["RuntimeProcess", "main"]

_START_TIMEOUT_S: Final = 60.0
#: Seconds the child gets to stop its environments after SIGTERM before it is killed.
_STOP_GRACE_S: Final = 10.0
_READY: Final = "READY "
#: Signals that stop the child: SIGTERM (from stop(), or the parent-death signal) and SIGINT.
_STOP_SIGNALS: Final = (signal.SIGTERM, signal.SIGINT)
_FAILED: Final = "FAILED "


class RuntimeProcess:
    """A :class:`~hsds_backends_lambda.local.LocalLambdaRuntime` running in a child process.

    Parameters
    ----------
    spec
        The one function it runs.
    region
        Region in the function ARN and the workers' ``AWS_REGION``.
    protect_invoke
        Invokes need :attr:`token` as their access key id (see :class:`LocalLambdaRuntime`).
    """

    def __init__(self, spec: FunctionSpec, region: str = "us-east-1", *, protect_invoke: bool = False) -> None:
        self.spec = spec
        self.region = region
        self.protect_invoke = protect_invoke
        self.token = secrets.token_hex(32)
        """The runtime's token (see :attr:`LocalLambdaRuntime.token`), made here and sent to the child on its stdin."""
        self._child: ChildProcess | None = None
        self._url: str | None = None
        self._log_path: str | None = None

    def __repr__(self) -> str:
        return f"RuntimeProcess({self.spec.name!r}, url={self._url!r})"

    @property
    def url(self) -> str:
        if self._url is None:
            raise RuntimeError("RuntimeProcess is not running; await start() first")
        return self._url

    @property
    def pid(self) -> int | None:
        return self._child.pid if self._child is not None else None

    async def start(self) -> RuntimeProcess:
        """Start the child and wait until it serves; return ``self``.

        Raises
        ------
        BackendError
            The child failed or did not get ready within 60 s; the message says why.
        """
        if self._child is not None:
            return self
        fd, self._log_path = tempfile.mkstemp(prefix="hsds-lambda-runtime-", suffix=".log")
        os.close(fd)
        child = ChildProcess(
            [sys.executable, "-m", "hsds_backends_lambda.local"],
            env={**os.environ, **MALLOC_ENV},
            name="the local Lambda runtime process",
            ready_prefix=_READY,
            stdin_data=json.dumps(
                {"spec": asdict(self.spec), "region": self.region, "log": self._log_path, "token": self.token, "protect_invoke": self.protect_invoke}
            ).encode(),
            log_path=self._log_path,
        )
        self._child = child
        try:
            self._url = await child.astart(_START_TIMEOUT_S)
        except ChildStartError as exc:
            self._child = None
            self._forget_log()
            raise BackendError(f"the local Lambda runtime process did not start: {_reason(exc)}") from exc
        except BaseException:
            self._child = None
            self._forget_log()
            raise
        return self

    async def stop(self) -> None:
        """Stop the child (its workers with it). Idempotent."""
        child, self._child = self._child, None
        self._url = None
        if child is not None:
            await child.astop(_STOP_GRACE_S)
        self._forget_log()

    def _forget_log(self) -> None:
        path, self._log_path = self._log_path, None
        if path is not None:
            with contextlib.suppress(OSError):
                os.unlink(path)

    async def _control(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        import aiohttp

        headers = {"Authorization": f"Bearer {self.token}"}
        async with aiohttp.ClientSession() as s, s.request(method, self.url + path, json=body, headers=headers) as r:
            data = await r.json()
            if r.status != 200:
                raise BackendError(f"local Lambda runtime {self.url}: {method} {path} answered {r.status}: {data}", status=r.status)
            return data

    async def meter(self, name: str) -> Meter:
        """Return a snapshot of function ``name``'s billing meter."""
        data = await self._control("GET", f"/local/functions/{name}/meter")
        return Meter(**{k: v for k, v in data.items() if k in Meter.__dataclass_fields__})

    async def set_faults(self, name: str, **changes: Any) -> dict[str, Any]:
        """Change function ``name``'s fault script (see :class:`~hsds_backends_lambda.local.Faults`)."""
        result: dict[str, Any] = await self._control("POST", f"/local/functions/{name}/faults", changes)
        return result


def _reason(exc: ChildStartError) -> str:
    """The child's own ``FAILED`` line, else the start error (which quotes the child's output and log)."""
    text = str(exc)
    for line in reversed(text.splitlines()):
        if line.startswith(_FAILED):
            return line[len(_FAILED) :]
    return text


def main() -> None:
    """Child side: read the spec from stdin, serve, stop at SIGTERM (or SIGINT)."""
    try:
        cfg = json.loads(sys.stdin.buffer.read())
        spec = FunctionSpec(**cfg["spec"])
        rt = LocalLambdaRuntime(
            "127.0.0.1",
            0,
            region=str(cfg.get("region") or "us-east-1"),
            functions=[spec],
            token=str(cfg["token"]),
            protect_invoke=bool(cfg.get("protect_invoke")),
        )
    except Exception as exc:  # noqa: BLE001 - reported to the parent
        print(f"{_FAILED}{type(exc).__name__}: {exc}", flush=True)
        sys.exit(2)

    async def serve() -> int:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()

        def on_signal(signum: int, frame: object) -> None:
            # The parent-death signal comes again at each reparenting (once per thread of a
            # dying parent): after the first, ignore the rest, also once the loop is closed
            # (asyncio's own handlers would restore the default, which kills mid-shutdown).
            for s in _STOP_SIGNALS:
                signal.signal(s, signal.SIG_IGN)
            loop.call_soon_threadsafe(stop.set)

        for s in _STOP_SIGNALS:
            signal.signal(s, on_signal)
        try:
            async with rt:
                print(f"{_READY}{rt.url}", flush=True)
                await stop.wait()
        except Exception as exc:  # noqa: BLE001 - reported to the parent
            print(f"{_FAILED}{type(exc).__name__}: {exc}", flush=True)
            return 2
        if cfg.get("log"):  # served and stopped cleanly: nobody needs the log (a killed parent cannot remove it)
            with contextlib.suppress(OSError):
                os.unlink(str(cfg["log"]))
        return 0

    sys.exit(asyncio.run(serve()))
