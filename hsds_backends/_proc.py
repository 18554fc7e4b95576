"""Child processes and loopback listeners, one copy for every backend and test server.

(docs/architecture.md §4 "shared machinery".)

- :class:`ChildProcess`: start a program, wait for its *ready line* on stdout (or for a
  check to pass), stop it with a grace period (SIGTERM, then SIGKILL), and make sure it
  never outlives this process.
- **One parent-death mechanism**: every child is started with Linux's
  ``PR_SET_PDEATHSIG`` = SIGTERM, so the kernel signals it the moment its parent dies,
  however the parent dies (SIGKILL included). Strictly, the kernel watches the *thread*
  that started the child: start children from a thread that lives as long as they should
  (an event loop's thread, the main thread), never from a short-lived worker thread. It works for programs we do not control
  (awslambdaric, moto, HSDS) as well as for ours, which handle SIGTERM by shutting down
  cleanly. A weakref finalizer and an ``atexit`` hook stop children of a parent that exits
  normally without closing them.
- :func:`loopback_socket`: a listening TCP socket on 127.0.0.1 (port 0: the kernel picks a
  free one), for servers that must not be reachable from other hosts.
- :data:`MALLOC_ENV`: the glibc malloc settings for processes that decode chunk after chunk.
"""

from __future__ import annotations

import asyncio
import atexit
import ctypes
import ctypes.util
import logging
import os
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import IO, Any, Final

__all__ = ["ChildProcess", "ChildStartError", "MALLOC_ENV", "loopback_socket", "parent_death_signal"]

log = logging.getLogger(__name__)

#: glibc malloc settings for processes that decode many chunk-sized buffers: keep freed
#: buffers in the heap instead of returning them to the kernel and faulting fresh pages in
#: for the next chunk (a first touch of a page is costly on small VMs).
MALLOC_ENV: Final[dict[str, str]] = {
    "MALLOC_MMAP_THRESHOLD_": str(32 * 1024 * 1024),
    "MALLOC_TRIM_THRESHOLD_": str(128 * 1024 * 1024),
}

_PR_SET_PDEATHSIG: Final = 1
_libc: Any = None
if sys.platform.startswith("linux"):
    try:
        _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        _prctl = _libc.prctl
    except (OSError, AttributeError):  # pragma: no cover - a libc without prctl
        _libc = None


def parent_death_signal() -> None:
    """In a freshly forked child: ask the kernel for SIGTERM when the parent dies.

    Used as ``preexec_fn``; a no-op where ``prctl`` is not available. It calls
    a function resolved before the fork and allocates nothing, so it is safe
    between fork and exec.
    """
    if _libc is not None:
        _prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


class ChildStartError(RuntimeError):
    """A child process exited or stayed silent before it was ready (the message holds its output)."""


_LIVE: weakref.WeakSet[ChildProcess] = weakref.WeakSet()


def _stop_all_at_exit() -> None:
    for child in list(_LIVE):
        child.stop(grace=1.0)


atexit.register(_stop_all_at_exit)


@dataclass(eq=False)
class ChildProcess:
    """One child process with a ready handshake and a bounded stop.

    Parameters
    ----------
    argv
        Program and arguments (never secrets: they show in ``ps``; pass those in ``env``
        or ``stdin_data``).
    env
        The child's whole environment (default: ours, when it starts).
    name
        How messages name the child (``"local DN 0"``).
    ready_prefix
        The child is ready when it prints a line starting with this on stdout; the rest of
        the line is returned by :meth:`start`. ``None``: ready as soon as it runs (use
        :meth:`wait_until` for a readiness check of your own).
    stdin_data
        Bytes written to the child's stdin, which is then closed (a spec, credentials).
    log_path
        File that receives the child's stderr (and stdout after the ready line); default:
        discarded. Its tail is quoted when the child fails to start.
    new_session
        Start the child in its own session, so a ^C in the terminal is ours to handle.
    cwd
        Working folder of the child.
    """

    argv: Sequence[str]
    env: Mapping[str, str] | None = None
    name: str = "child process"
    ready_prefix: str | None = "READY "
    stdin_data: bytes | None = field(default=None, repr=False)
    log_path: str | None = None
    new_session: bool = True
    cwd: str | None = None
    proc: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)
    _finalizer: weakref.finalize[Any, ChildProcess] | None = field(default=None, init=False, repr=False)

    def __repr__(self) -> str:
        return f"<ChildProcess {self.name!r} pid={self.pid}>"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def returncode(self) -> int | None:
        return self.proc.poll() if self.proc is not None else None

    # ---------------------------------------------------------------- start
    def spawn(self) -> None:
        """Start the process (no waiting); see :meth:`start`."""
        if self.proc is not None and self.proc.poll() is None:
            raise RuntimeError(f"{self.name} is already running (pid {self.proc.pid})")
        err: IO[bytes] | int = subprocess.DEVNULL
        if self.log_path:
            err = open(self.log_path, "ab")  # noqa: SIM115 - the child holds it; we close our copy below
        try:
            self.proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.PIPE if self.stdin_data is not None else subprocess.DEVNULL,
                stdout=subprocess.PIPE if self.ready_prefix is not None else err,
                stderr=err,
                env=dict(os.environ if self.env is None else self.env),
                cwd=self.cwd,
                start_new_session=self.new_session,
                preexec_fn=parent_death_signal,  # noqa: PLW1509 - allocation-free, see parent_death_signal
            )
        finally:
            if not isinstance(err, int):
                err.close()
        _LIVE.add(self)
        self._finalizer = weakref.finalize(self, _kill, self.proc)
        if self.stdin_data is not None:
            assert self.proc.stdin is not None
            try:
                self.proc.stdin.write(self.stdin_data)
                self.proc.stdin.close()
            except BrokenPipeError:
                pass  # it died at once: the ready wait reports why

    def start(self, timeout: float = 30.0) -> str:
        """Start the process and wait for its ready line; return the rest of that line.

        Raises
        ------
        ChildStartError
            The child exited first, printed something else, or stayed silent for
            ``timeout`` seconds (then it is killed); the message quotes its log tail.
        """
        self.spawn()
        if self.ready_prefix is None:
            return ""
        try:
            return self._read_ready(timeout)
        except BaseException:
            self.kill()
            raise

    async def astart(self, timeout: float = 30.0) -> str:
        """:meth:`start` without blocking the event loop (the wait runs in a thread)."""
        self.spawn()
        if self.ready_prefix is None:
            return ""
        try:
            return await asyncio.to_thread(self._read_ready, timeout)
        except BaseException:
            self.kill()
            raise

    def _read_ready(self, timeout: float) -> str:
        assert self.proc is not None and self.proc.stdout is not None and self.ready_prefix is not None
        out = self.proc.stdout
        seen: list[str] = []
        deadline = time.monotonic() + timeout
        buf = b""
        with selectors.DefaultSelector() as sel:
            sel.register(out, selectors.EVENT_READ)
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise ChildStartError(f"{self.name} did not get ready within {timeout:g} s{self._quote(seen)}")
                if not sel.select(left):
                    continue
                data = os.read(out.fileno(), 65536)
                if not data:
                    code = self._wait_exit(5.0)
                    raise ChildStartError(f"{self.name} exited (code {code}) before it was ready{self._quote(seen)}")
                buf += data
                while b"\n" in buf:
                    raw, buf = buf.split(b"\n", 1)
                    line = raw.decode("utf-8", "replace").rstrip("\r")
                    if line.startswith(self.ready_prefix):
                        self._after_ready(out)
                        return line[len(self.ready_prefix) :].strip()
                    seen.append(line)

    def _after_ready(self, out: IO[bytes]) -> None:
        """Keep reading stdout after the ready line, so a chatty child never blocks on a full pipe.

        The thread holds the pipe and the log path, not ``self``, so a ChildProcess that is
        dropped without being stopped is still collected (and its finalizer kills the child).
        """
        threading.Thread(target=_pump, args=(out, self.log_path), name=f"{self.name} stdout", daemon=True).start()

    def _wait_exit(self, timeout: float) -> int | None:
        assert self.proc is not None
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def _quote(self, lines: list[str]) -> str:
        text = "\n".join(lines[-20:])
        tail = self.log_tail()
        parts = [p for p in (text, tail) if p]
        return (":\n" + "\n".join(parts)) if parts else " (no output)"

    def log_tail(self, n: int = 20) -> str:
        """Return the last ``n`` lines of the child's log file ('' without one)."""
        if not self.log_path:
            return ""
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as f:
                return "".join(f.readlines()[-n:]).rstrip()
        except OSError:
            return ""

    def wait_until(self, check: Callable[[], bool], timeout: float, *, interval: float = 0.05) -> None:
        """Poll ``check()`` until it returns true; raise :class:`ChildStartError` if the child exits or time runs out."""
        deadline = time.monotonic() + timeout
        while True:
            if self.proc is not None and self.proc.poll() is not None:
                raise ChildStartError(f"{self.name} exited (code {self.proc.returncode}) before it was ready{self._quote([])}")
            try:
                if check():
                    return
            except OSError:
                pass
            if time.monotonic() >= deadline:
                self.kill()
                raise ChildStartError(f"{self.name} did not get ready within {timeout:g} s{self._quote([])}")
            time.sleep(interval)

    # ----------------------------------------------------------------- stop
    def send_signal(self, sig: int) -> None:
        """Send ``sig`` to the child (nothing if it has exited)."""
        if self.proc is not None and self.proc.poll() is None:
            try:
                self.proc.send_signal(sig)
            except OSError:
                pass

    def stop(self, grace: float = 3.0, *, sig: int | Sequence[int] = signal.SIGTERM) -> int | None:
        """Send ``sig`` (SIGTERM), wait up to ``grace`` seconds, then SIGKILL; return the exit code.

        ``sig`` may be a sequence (``(SIGINT, SIGTERM)``): each is sent in turn, ``grace``
        seconds apart, before SIGKILL.
        """
        proc = self.proc
        if proc is None:
            return None
        for s in (sig,) if isinstance(sig, int) else sig:
            if proc.poll() is not None:
                break
            self.send_signal(s)
            try:
                proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                pass
        self.kill()
        return proc.poll()

    async def astop(self, grace: float = 3.0, *, sig: int | Sequence[int] = signal.SIGTERM) -> int | None:
        """:meth:`stop` without blocking the event loop (the waits run in a thread)."""
        return await asyncio.to_thread(self.stop, grace, sig=sig)

    def kill(self) -> None:
        """SIGKILL the child and reap it."""
        if self.proc is not None:
            _kill(self.proc)
        self._done()

    def _done(self) -> None:
        _LIVE.discard(self)
        if self._finalizer is not None:
            self._finalizer.detach()
            self._finalizer = None


def _pump(out: IO[bytes], log_path: str | None) -> None:
    sink = open(log_path, "ab") if log_path else None  # noqa: SIM115 - closed below
    try:
        while chunk := out.read1(65536) if hasattr(out, "read1") else out.read(65536):
            if sink is not None:
                sink.write(chunk)
                sink.flush()
    except (OSError, ValueError):
        pass
    finally:
        if sink is not None:
            sink.close()
        out.close()


def _kill(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        try:
            proc.kill()
            proc.wait(timeout=5)
        except (OSError, subprocess.TimeoutExpired):
            pass


def loopback_socket(port: int = 0, *, host: str = "127.0.0.1", backlog: int = 128) -> socket.socket:
    """Return a listening TCP socket on ``host`` (loopback by default; port 0: any free port).

    The caller owns it (``sock.getsockname()[1]`` is the port; hand it to aiohttp's
    ``SockSite`` or ``web.run_app(sock=...)``). Binding and listening here, before the
    port is announced, leaves no window in which another local user could take it.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(backlog)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock
