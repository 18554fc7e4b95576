"""The embedded local Lambda runtime in a child process.

The Invoke API server relays every result twice (worker → runtime → client). Run in the
reading process, that relaying shares the event loop (and the GIL) with receiving and
placing results; in a child process it runs on its own, as AWS's front end does. This module
starts that child (``python -m hsds_backends_lambda._process``) and talks to it.

Protocol with the child: the parent writes one JSON line on the child's stdin (the function
spec, with its environment, so credentials never appear on a command line), the child answers
one JSON line on stdout (``{"url": ...}`` or ``{"error": ...}``) and serves until its stdin
reaches end-of-file (the parent closed it, or died) or it gets SIGTERM. The child binds
127.0.0.1 on a free port.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
from dataclasses import asdict
from typing import Any, Final

from hsds_backends.errors import BackendError

from .runtime import FunctionSpec, Meter

__all__ = ["RuntimeProcess", "MALLOC_ENV"]

#: glibc malloc settings for processes that churn through multi-megabyte buffers: keep freed
#: memory for reuse instead of returning each buffer to the kernel and faulting fresh pages in
#: for the next (on virtual machines a first touch of a page is costly; measured here: joining
#: 6 MB answers 5-6x faster). Applied to the local runtime and its workers only.
MALLOC_ENV: Final = {"MALLOC_MMAP_THRESHOLD_": str(64 << 20), "MALLOC_TRIM_THRESHOLD_": str(256 << 20)}
_START_TIMEOUT_S: Final = 60.0


class RuntimeProcess:
    """A :class:`~hsds_backends_lambda.runtime.LocalLambdaRuntime` running in a child process.

    Parameters
    ----------
    spec
        The one function it runs.
    region
        Region in the function ARN and the workers' ``AWS_REGION``.
    """

    def __init__(self, spec: FunctionSpec, region: str = "us-east-1") -> None:
        self.spec = spec
        self.region = region
        self._proc: asyncio.subprocess.Process | None = None
        self._url: str | None = None

    def __repr__(self) -> str:
        return f"RuntimeProcess({self.spec.name!r}, url={self._url!r})"

    @property
    def url(self) -> str:
        if self._url is None:
            raise RuntimeError("RuntimeProcess is not running; await start() first")
        return self._url

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    async def start(self) -> RuntimeProcess:
        """Start the child and wait until it serves; return ``self``."""
        if self._proc is not None:
            return self
        env = {**os.environ, **MALLOC_ENV}
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "hsds_backends_lambda._process",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            env=env,
        )
        self._proc = proc
        assert proc.stdin is not None and proc.stdout is not None
        spec = asdict(self.spec)
        proc.stdin.write(json.dumps({"spec": spec, "region": self.region}).encode() + b"\n")
        await proc.stdin.drain()
        try:
            line = await asyncio.wait_for(proc.stdout.readline(), _START_TIMEOUT_S)
        except TimeoutError:
            line = b""
        try:
            answer = json.loads(line) if line else {"error": f"no answer within {_START_TIMEOUT_S:.0f} s"}
        except ValueError:
            answer = {"error": f"unexpected output {line[:200]!r}"}
        if "url" not in answer:
            await self.stop()
            raise BackendError(f"the local Lambda runtime process did not start: {answer.get('error')}")
        self._url = str(answer["url"])
        return self

    async def stop(self) -> None:
        """Stop the child (its workers with it). Idempotent."""
        proc, self._proc = self._proc, None
        self._url = None
        if proc is None:
            return
        if proc.stdin is not None:
            proc.stdin.close()
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), 10.0)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()

    async def _control(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        import aiohttp

        async with aiohttp.ClientSession() as s, s.request(method, self.url + path, json=body) as r:
            data = await r.json()
            if r.status != 200:
                raise BackendError(f"local Lambda runtime {self.url}: {method} {path} answered {r.status}: {data}")
            return data

    async def meter(self, name: str) -> Meter:
        """Return a snapshot of function ``name``'s billing meter."""
        data = await self._control("GET", f"/local/functions/{name}/meter")
        return Meter(**{k: v for k, v in data.items() if k in Meter.__dataclass_fields__})

    async def set_faults(self, name: str, **changes: Any) -> dict[str, Any]:
        """Change function ``name``'s fault script (see :class:`~hsds_backends_lambda.runtime.Faults`)."""
        result: dict[str, Any] = await self._control("POST", f"/local/functions/{name}/faults", changes)
        return result


def main() -> None:
    """Child side: read the spec, serve, stop at end-of-file on stdin or SIGTERM."""
    from .runtime import LocalLambdaRuntime

    line = sys.stdin.buffer.readline()
    try:
        cfg = json.loads(line)
        spec = FunctionSpec(**cfg["spec"])
        rt = LocalLambdaRuntime("127.0.0.1", 0, region=str(cfg.get("region") or "us-east-1"), functions=[spec])
    except Exception as exc:  # noqa: BLE001 - reported to the parent
        print(json.dumps({"error": f"{type(exc).__name__}: {exc}"}), flush=True)
        sys.exit(2)

    async def serve() -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        loop.add_signal_handler(signal.SIGINT, stop.set)
        reader = asyncio.StreamReader()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)

        async def watch_parent() -> None:
            while await reader.read(4096):
                pass
            stop.set()

        watcher = asyncio.create_task(watch_parent())
        try:
            async with rt:
                print(json.dumps({"url": rt.url}), flush=True)
                await stop.wait()
        except Exception as exc:  # noqa: BLE001 - reported to the parent
            print(json.dumps({"error": f"{type(exc).__name__}: {exc}"}), flush=True)
        finally:
            watcher.cancel()

    asyncio.run(serve())


if __name__ == "__main__":
    main()
