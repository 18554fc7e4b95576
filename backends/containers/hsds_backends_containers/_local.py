"""Embedded DNs: local ``hsds-backends dn serve`` processes started and stopped by the backend.

Each DN runs ``python -m hsds_backends_containers.cli serve`` on a unix socket
in a private temporary folder (mode 0700, socket 0600) or on a free 127.0.0.1
port, and prints ``READY <url>`` once it accepts requests. Storage settings go
on the command line; S3 credentials and the token go through the child's
environment only (``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``,
``HSDS_BACKENDS_DN_TOKEN``), never on a command line or in a task. A DN stops
by itself when its parent process is gone.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import weakref
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import IO, Any

from hsds_backends.errors import BackendError

from .service import TOKEN_ENV

__all__ = ["LocalNode", "LocalNodes"]

_SECRET_ENV = {
    "aws_access_key_id": "AWS_ACCESS_KEY_ID",
    "aws_secret_access_key": "AWS_SECRET_ACCESS_KEY",
    "aws_session_token": "AWS_SESSION_TOKEN",
}


@dataclass
class LocalNode:
    """One embedded DN process."""

    number: int
    proc: subprocess.Popen[bytes] | None = None
    url: str = ""
    log_path: str = ""
    starts: int = 0
    restarting: asyncio.Task[None] | None = field(default=None, repr=False)

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None


def _kill_all(procs: list[subprocess.Popen[bytes]], run_dir: str) -> None:
    """Finalizer: kill what is left (a backend that was never closed)."""
    for p in procs:
        if p.poll() is None:
            try:
                p.kill()
            except OSError:
                pass
    shutil.rmtree(run_dir, ignore_errors=True)


class LocalNodes:
    """Start, restart and stop ``count`` local DN processes.

    Parameters
    ----------
    count
        Number of DNs.
    config
        The backend config: storage keys (``root_dir``, or ``aws_s3_gateway``,
        ``aws_region`` and credentials), ``bucket_name``, ``chunk_mem_cache_size``.
    transport
        ``"unix"`` (sockets in a private temporary folder) or ``"tcp"`` (127.0.0.1, free ports).
    workers
        Decode threads per DN.
    token
        Bearer token the DNs require (passed through the environment).
    start_timeout
        Seconds to wait for a DN to print ``READY``.
    """

    def __init__(
        self,
        count: int,
        config: Mapping[str, Any],
        *,
        transport: str = "unix",
        workers: int = 2,
        cache_bytes: int = 128 * 1024 * 1024,
        token: str | None = None,
        start_timeout: float = 30.0,
    ) -> None:
        if transport not in ("unix", "tcp"):
            raise BackendError(f"dn_transport {transport!r} is not valid; use 'unix' or 'tcp'")
        self.count = count
        self.config = config
        self.transport = transport
        self.workers = workers
        self.cache_bytes = cache_bytes
        self.token = token
        self.start_timeout = start_timeout
        self.nodes = [LocalNode(i) for i in range(count)]
        self.run_dir = ""
        self._procs: list[subprocess.Popen[bytes]] = []
        self._finalizer: weakref.finalize[Any, Any] | None = None
        self._env_at_start: dict[str, str] | None = None

    @property
    def urls(self) -> list[str]:
        return [n.url for n in self.nodes]

    def _args(self, node: LocalNode) -> list[str]:
        cfg = self.config
        args = [
            sys.executable, "-m", "hsds_backends_containers.cli", "serve",
            "--node-number", str(node.number), "--node-count", str(self.count),
            "--workers", str(self.workers), "--cache-size", str(self.cache_bytes),
            "--parent-pid", str(os.getpid()),
        ]
        if self.transport == "unix":
            args += ["--socket", os.path.join(self.run_dir, f"dn_{node.number}.sock")]
        else:
            args += ["--host", "127.0.0.1", "--port", "0"]
        if cfg.get("root_dir"):
            args += ["--root-dir", os.path.abspath(str(cfg["root_dir"]))]
        elif cfg.get("aws_s3_gateway") or cfg.get("storage") == "s3":
            if cfg.get("aws_s3_gateway"):
                args += ["--s3-gateway", str(cfg["aws_s3_gateway"])]
            args += ["--region", str(cfg.get("aws_region") or "us-east-1")]
        else:
            args += ["--root-dir", os.getcwd()]  # storage_from_config's default: posix under the cwd
        if cfg.get("bucket_name"):
            args += ["--bucket", str(cfg["bucket_name"])]
        return args

    def _env(self) -> dict[str, str]:
        if self._env_at_start is not None:  # a replacement DN gets exactly what the first one got
            return self._env_at_start
        env = dict(os.environ)
        for key, var in _SECRET_ENV.items():
            v = self.config.get(key)
            if v not in (None, "", "xxx"):
                env[var] = str(v)
        env.pop(TOKEN_ENV, None)
        if self.token:
            env[TOKEN_ENV] = self.token
        # one decode thread per worker: no nested thread pools fighting for the cores
        env.setdefault("OMP_NUM_THREADS", "1")
        # glibc: keep freed chunk-sized buffers in the heap instead of unmapping them and faulting
        # fresh pages in for the next chunk (~1 ms less per uncached 1 MiB chunk on the bench machine)
        env.setdefault("MALLOC_MMAP_THRESHOLD_", str(32 * 1024 * 1024))
        env.setdefault("MALLOC_TRIM_THRESHOLD_", str(128 * 1024 * 1024))
        self._env_at_start = env
        return env

    async def start(self) -> list[str]:
        """Start every DN and wait until all are ready; return their URLs in node order."""
        if not self.run_dir:
            self.run_dir = tempfile.mkdtemp(prefix="hsdsdn-", dir="/tmp" if os.path.isdir("/tmp") else None)
            self._finalizer = weakref.finalize(self, _kill_all, self._procs, self.run_dir)
        try:
            await asyncio.gather(*(self._start_one(n) for n in self.nodes))
        except BaseException:
            await self.stop()
            raise
        return self.urls

    async def _start_one(self, node: LocalNode) -> None:
        node.log_path = os.path.join(self.run_dir, f"dn_{node.number}.log")
        with open(node.log_path, "ab") as log:
            proc = subprocess.Popen(
                self._args(node),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=log,
                env=self._env(),
                start_new_session=True,  # a ^C in the terminal is ours to handle, not the DNs'
            )
        node.proc = proc
        node.starts += 1
        self._procs.append(proc)
        assert proc.stdout is not None
        t0 = time.monotonic()
        try:
            line = await asyncio.wait_for(asyncio.to_thread(_readline, proc.stdout), self.start_timeout)
        except TimeoutError:
            _terminate(proc)
            raise BackendError(
                f"local DN {node.number} did not start within {self.start_timeout:g} s; raise dn_start_timeout. "
                f"Its log ({node.log_path}):\n{_tail(node.log_path)}"
            ) from None
        finally:
            proc.stdout.close()  # a DN prints nothing after READY
        if not line.startswith("READY "):
            code = proc.wait(timeout=5) if proc.poll() is None else proc.returncode
            raise BackendError(
                f"local DN {node.number} failed to start (exit code {code}) after {time.monotonic() - t0:.1f} s. "
                f"Its log ({node.log_path}):\n{_tail(node.log_path)}"
            )
        node.url = line.split(" ", 1)[1].strip()

    def restart_in_background(self, number: int, grace: float = 0.0) -> asyncio.Task[None] | None:
        """Start a replacement for DN ``number`` if its process has exited (one restart at a time).

        ``grace``: seconds to wait for a dying process to exit first (its socket
        closes a moment before the process can be reaped). A process still alive
        after that is left alone.
        """
        node = self.nodes[number]
        loop = asyncio.get_running_loop()
        prev = node.restarting
        if prev is not None and not prev.done() and prev.get_loop() is loop:
            return prev
        if prev is not None and prev.done() and not prev.cancelled():
            prev.exception()  # a failed earlier restart: seen, try again
        if node.alive and grace <= 0:
            return None
        node.restarting = loop.create_task(self._restart(node, grace))
        return node.restarting

    async def _restart(self, node: LocalNode, grace: float) -> None:
        deadline = time.monotonic() + grace
        while node.alive and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        if node.alive:
            return
        if self.transport == "tcp":
            node.url = ""  # the new process gets a new port
        await self._start_one(node)

    async def stop(self, timeout: float = 3.0) -> None:
        """Stop every DN (SIGTERM, then SIGKILL after ``timeout``) and remove the folder."""
        loop = asyncio.get_running_loop()
        for n in self.nodes:
            if n.restarting is not None and not n.restarting.done() and n.restarting.get_loop() is loop:
                n.restarting.cancel()
        procs = [p for p in self._procs if p.poll() is None]
        for p in procs:
            try:
                p.send_signal(signal.SIGTERM)
            except OSError:
                pass
        deadline = time.monotonic() + timeout
        for p in procs:
            while p.poll() is None and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            if p.poll() is None:
                try:
                    p.kill()
                    p.wait(timeout=5)
                except (OSError, subprocess.TimeoutExpired):
                    pass
        self._procs.clear()
        if self.run_dir:
            shutil.rmtree(self.run_dir, ignore_errors=True)
        if self._finalizer is not None:
            self._finalizer.detach()
            self._finalizer = None
        self.run_dir = ""


def _readline(f: IO[bytes]) -> str:
    return f.readline().decode("utf-8", "replace")


def _terminate(proc: subprocess.Popen[bytes]) -> None:
    try:
        proc.kill()
        proc.wait(timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        pass


def _tail(path: str, n: int = 20) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return "".join(f.readlines()[-n:]) or "(empty)"
    except OSError:
        return "(no log)"
