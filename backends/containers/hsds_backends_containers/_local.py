"""Embedded DNs: local ``hsds-backends dn serve`` processes started and stopped by the backend.

Each DN runs ``python -m hsds_backends_containers.cli serve`` on a unix socket in a private
temporary folder (mode 0700, socket 0600) or on a free 127.0.0.1 port, and prints
``READY <url>`` once it accepts requests. Its storage root is always passed explicitly
(the reader's own default, :func:`hsds_backends.storage.storage_from_config`: posix under
the current folder, when nothing is configured); it serves the backend's ``bucket_name``
or ``allowed_buckets`` only, and its bounds (``chunk_bytes_limit``,
``dn_batch_tasks_limit``, ``dn_batch_bytes_limit``) are the backend's. Each is a :class:`hsds_backends._proc.ChildProcess`:
it gets SIGTERM from the kernel when this process dies, however it dies (and shuts down
cleanly on it), and is stopped with a grace period, then SIGKILL. Storage settings go on the
command line; S3 credentials and the token go through the child's environment only
(``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``, ``HSDS_BACKENDS_DN_TOKEN``), never on a
command line or in a task.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import time
import weakref
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from hsds_backends._aio import cancel_and_wait, retrieve
from hsds_backends._proc import MALLOC_ENV, ChildProcess, ChildStartError
from hsds_backends.config import ENV_PREFIX, credentials_env
from hsds_backends.storage import storage_kind
from hsds_backends.errors import BackendError

from .service import TOKEN_ENV

__all__ = ["LocalNode", "LocalNodes"]

#: How often a replacement looks whether its dying predecessor has exited.
_REAP_POLL_S: Final = 0.01


@dataclass
class LocalNode:
    """One embedded DN: its process (the current one, after restarts) and URL."""

    number: int
    child: ChildProcess | None = None
    url: str = ""
    log_path: str = ""
    starts: int = 0
    restarting: asyncio.Task[None] | None = field(default=None, repr=False)

    @property
    def proc(self) -> subprocess.Popen[bytes] | None:
        """The current process."""
        return self.child.proc if self.child is not None else None

    @property
    def alive(self) -> bool:
        return self.child is not None and self.child.alive

    @property
    def pid(self) -> int | None:
        return self.child.pid if self.child is not None else None

    @property
    def restart_pending(self) -> bool:
        """Whether a replacement is being started on the running loop."""
        t = self.restarting
        return t is not None and not t.done() and t.get_loop() is asyncio.get_running_loop()


class LocalNodes:
    """Start, restart and stop ``count`` local DN processes.

    Parameters
    ----------
    count
        Number of DNs.
    config
        The backend config: storage keys (``root_dir``, or ``aws_s3_gateway``,
        ``aws_region`` and credentials), ``bucket_name``, ``allowed_buckets``.
    transport
        ``"unix"`` (sockets in a private temporary folder) or ``"tcp"`` (127.0.0.1, free ports).
    workers
        Decode threads per DN.
    cache_bytes
        Each DN's decoded-chunk cache (``chunk_mem_cache_size``).
    token
        Bearer token the DNs require (passed through the environment).
    start_timeout
        Seconds to wait for a DN to print ``READY``.
    limits
        Config keys of the DNs' bounds and their values (``chunk_bytes_limit``,
        ``dn_batch_tasks_limit``, ``dn_batch_bytes_limit``), passed through the environment.
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
        limits: Mapping[str, int] | None = None,
    ) -> None:
        if transport not in ("unix", "tcp"):
            raise BackendError(f"dn_transport {transport!r} is not valid; use 'unix' or 'tcp'")
        self.count, self.config, self.transport = count, config, transport
        # what every DN process is started with
        self.workers, self.cache_bytes, self.token, self.start_timeout = workers, cache_bytes, token, start_timeout
        self.limits = dict(limits or {})
        self.nodes = [LocalNode(i) for i in range(count)]
        self.run_dir = ""
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
        ]
        if self.transport == "unix":
            args += ["--socket", os.path.join(self.run_dir, f"dn_{node.number}.sock")]
        else:
            args += ["--host", "127.0.0.1", "--port", "0"]
        kind = storage_kind(cfg)
        if kind == "posix":
            args += ["--root-dir", os.path.abspath(str(cfg["root_dir"]))]
        elif kind == "s3":
            if cfg.get("aws_s3_gateway"):
                args += ["--s3-gateway", str(cfg["aws_s3_gateway"])]
            args += ["--region", str(cfg.get("aws_region") or "us-east-1")]
        elif kind == "azure":
            args += ["--azure"]  # the connection string goes in the environment (_env), never here
        else:
            # what the reader itself reads without a root (storage_from_config): posix under the cwd,
            # passed explicitly because a DN never defaults to its current folder
            args += ["--root-dir", os.getcwd()]
        if cfg.get("bucket_name"):
            args += ["--bucket", str(cfg["bucket_name"])]
        allowed = cfg.get("allowed_buckets")
        if allowed:
            args += ["--allowed-buckets", allowed if isinstance(allowed, str) else ",".join(str(b) for b in allowed)]
        return args

    def _env(self) -> dict[str, str]:
        if self._env_at_start is not None:  # a replacement DN gets exactly what the first one got
            return self._env_at_start
        env = dict(os.environ)
        env.update(credentials_env(self.config))
        env.pop(TOKEN_ENV, None)
        if self.token:
            env[TOKEN_ENV] = self.token
        for key, limit in self.limits.items():
            env[ENV_PREFIX + key.upper()] = str(limit)  # the backend's value wins over one inherited
        # one decode thread per worker: no nested thread pools fighting for the cores
        env.setdefault("OMP_NUM_THREADS", "1")
        for var, value in MALLOC_ENV.items():
            env.setdefault(var, value)  # settings the user made win
        self._env_at_start = env
        return env

    async def start(self) -> list[str]:
        """Start every DN and wait until all are ready; return their URLs in node order."""
        if not self.run_dir:
            self.run_dir = tempfile.mkdtemp(prefix="hsdsdn-", dir="/tmp" if os.path.isdir("/tmp") else None)
            # the processes stop themselves (ChildProcess); what is left on disk goes with this object
            self._finalizer = weakref.finalize(self, shutil.rmtree, self.run_dir, True)
        try:
            await asyncio.gather(*(self._start_one(n) for n in self.nodes))
        except BaseException:
            await self.stop()
            raise
        return self.urls

    async def _start_one(self, node: LocalNode) -> None:
        node.log_path = os.path.join(self.run_dir, f"dn_{node.number}.log")
        child = ChildProcess(self._args(node), env=self._env(), name=f"local DN {node.number}", log_path=node.log_path)
        node.child = child
        node.starts += 1
        t0 = time.monotonic()
        try:
            node.url = await child.astart(self.start_timeout)
        except ChildStartError as exc:
            hint = ""
            if time.monotonic() - t0 >= self.start_timeout:
                hint = f"\n(dn_start_timeout is {self.start_timeout:g} s; raise it if the DN is only slow to start)"
            raise BackendError(f"{exc}{hint}") from None

    def restart_in_background(self, number: int, grace: float = 0.0) -> asyncio.Task[None] | None:
        """Start a replacement for DN ``number`` if its process has exited (one restart at a time).

        ``grace``: seconds to wait for a dying process to exit first (its socket
        closes a moment before the process can be reaped). A process still alive
        after that is left alone.
        """
        node = self.nodes[number]
        if node.restart_pending:
            return node.restarting
        if node.alive and grace <= 0:
            return None
        node.restarting = task = asyncio.get_running_loop().create_task(self._restart(node, grace))
        task.add_done_callback(retrieve)  # a failed restart is retried by the next probe
        return task

    async def _restart(self, node: LocalNode, grace: float) -> None:
        deadline = time.monotonic() + grace
        while node.alive and time.monotonic() < deadline:
            await asyncio.sleep(_REAP_POLL_S)
        if node.alive:
            return
        if node.child is not None:
            node.child.kill()  # reap the dead process
        if self.transport == "tcp":
            node.url = ""  # the new process gets a new port
        await self._start_one(node)

    def pending_restarts(self) -> list[asyncio.Task[None]]:
        """Replacements being started on the running loop."""
        return [t for n in self.nodes if (t := n.restarting) is not None and n.restart_pending]

    async def stop(self, timeout: float = 3.0) -> None:
        """Stop every DN (SIGTERM, then SIGKILL after ``timeout``) and remove the folder."""
        await cancel_and_wait(self.pending_restarts(), timeout=timeout, what="DN restarts")
        children = [n.child for n in self.nodes if n.child is not None]
        await asyncio.gather(*(c.astop(grace=timeout) for c in children))
        if self.run_dir:
            shutil.rmtree(self.run_dir, ignore_errors=True)
        if self._finalizer is not None:
            self._finalizer.detach()
            self._finalizer = None
        self.run_dir = ""
