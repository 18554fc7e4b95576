"""The Lambda Runtime API the local runtime serves to its awslambdaric workers (the side behind).

Per environment, on its own loopback listener (so a request's local port says which
environment asks)::

    GET  /2018-06-01/runtime/invocation/next
    POST /2018-06-01/runtime/invocation/{id}/response
    POST /2018-06-01/runtime/invocation/{id}/error
    POST /2018-06-01/runtime/init/error

A response within Lambda's limit is streamed through to the invoker as it arrives; a larger
one becomes ``Function.ResponseSizeTooLarge`` and the environment is reset
(docs/aws-lambda.md §1.4).

Only the environment's own worker is served (docs/architecture.md §11)
----------------------------------------------------------------------
A loopback port is reachable by every local user: whoever asked for ``/next`` would get the
next event (the payload), and whoever posted a response would have it taken as the answer.
So each connection is checked once, before its first request is served: the socket at its
other end must belong to the environment's worker process (Linux: the connection's entry
in ``/proc/net/tcp`` gives that socket's inode, which must be one of
``/proc/<worker pid>/fd``). Anything else gets 403 and never a payload, and a response is
taken only from the environment that holds the invocation. The verdict is cached per
connection (a worker keeps one connection for all its requests), so a request costs a
dictionary look-up.

Why not a secret in ``AWS_LAMBDA_RUNTIME_API``: awslambdaric's C client would carry a path
prefix (``127.0.0.1:port/<secret>``), but its Python side posts init errors with
``http.client.HTTPConnection(AWS_LAMBDA_RUNTIME_API)``, which accepts only ``host:port``; a
secret there would turn every init error into a crash report.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import os
import socket
import sys
import time
import uuid
import weakref
from collections.abc import Callable
from typing import Any, Final

from aiohttp import web

from hsds_backends._proc import loopback_socket
from hsds_backends.errors import ConfigError

from ..wire import MAX_RESPONSE_BYTES
from .environments import Environment, Invocation, Stream, error_body

__all__ = ["RuntimeAPI", "peer_process_check"]

log = logging.getLogger("hsds_backends_lambda.local")

#: The kernel's table of this network namespace's IPv4 TCP sockets (Linux).
_PROC_TCP: Final = "/proc/net/tcp"


def _proc_address(host: str, port: int) -> bytes:
    """``host:port`` as ``/proc/net/tcp`` prints it (the address as a native-order hex word)."""
    return f"{int.from_bytes(socket.inet_aton(host), sys.byteorder):08X}:{port:04X}".encode()


def _peer_inode(peer: tuple[str, int], local: tuple[str, int]) -> int | None:
    """Return the inode of the socket at ``peer`` connected to ``local``, from ``/proc/net/tcp``."""
    try:
        want_local, want_remote = _proc_address(*peer), _proc_address(*local)
    except (OSError, ValueError):  # not IPv4: our listeners are 127.0.0.1 only
        return None
    try:
        with open(_PROC_TCP, "rb") as f:
            next(f, None)  # the header
            for line in f:
                # sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode ...
                parts = line.split()
                if len(parts) > 9 and parts[1] == want_local and parts[2] == want_remote:
                    return int(parts[9]) or None
    except OSError:
        return None
    return None


def _holds_socket(pid: int, inode: int) -> bool:
    """Return whether process ``pid`` has socket ``inode`` among its open files."""
    target = f"socket:[{inode}]"
    fds = f"/proc/{pid}/fd"
    try:
        names = os.listdir(fds)
    except OSError:
        return False
    for name in names:
        with contextlib.suppress(OSError):  # closed meanwhile
            if os.readlink(f"{fds}/{name}") == target:
                return True
    return False


def peer_process_check(peer: tuple[str, int], local: tuple[str, int], pid: int) -> bool:
    """Return whether the TCP connection from ``peer`` to our ``local`` address was opened by process ``pid``."""
    inode = _peer_inode(peer, local)
    return inode is not None and _holds_socket(pid, inode)


class RuntimeAPI:
    """The Runtime API of every environment of one local runtime.

    Parameters
    ----------
    arn
        Maps a function name to its ARN (``Lambda-Runtime-Invoked-Function-Arn``).
    """

    def __init__(self, arn: Callable[[str], str]) -> None:
        self.arn = arn
        self._runner: web.AppRunner | None = None
        self._envs: dict[int, Environment] = {}
        self._sites: dict[int, tuple[web.SockSite, socket.socket]] = {}
        # connections whose other end was checked to be their environment's worker
        self._trusted: weakref.WeakKeyDictionary[Any, Environment] = weakref.WeakKeyDictionary()

    async def start(self) -> None:
        """Set up the application (listeners come with :meth:`listen`).

        Raises
        ------
        ConfigError
            The host has no ``/proc/net/tcp`` (not Linux): workers' connections could not be
            told from other local users'.
        """
        if self._runner is not None:
            return
        if not os.path.exists(_PROC_TCP):
            raise ConfigError(
                f"the local Lambda runtime needs Linux ({_PROC_TCP}) to tell its workers' connections from other"
                " local users'; run it on Linux (or in a Linux container)"
            )
        app = web.Application(client_max_size=MAX_RESPONSE_BYTES * 16)
        app.router.add_get("/2018-06-01/runtime/invocation/next", self._next)
        app.router.add_post("/2018-06-01/runtime/invocation/{id}/response", self._response)
        app.router.add_post("/2018-06-01/runtime/invocation/{id}/error", self._error)
        app.router.add_post("/2018-06-01/runtime/init/error", self._init_error)
        runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=1.0)
        await runner.setup()
        self._runner = runner

    async def stop(self) -> None:
        """Close every listener. Idempotent."""
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()
        for _, sock in self._sites.values():
            sock.close()
        self._sites.clear()
        self._envs.clear()
        self._trusted.clear()

    async def listen(self, env: Environment) -> int:
        """Open a loopback listener for ``env``; return its port."""
        if self._runner is None:
            raise RuntimeError("the Runtime API is not started")
        sock = loopback_socket()
        port: int = sock.getsockname()[1]
        site = web.SockSite(self._runner, sock)
        try:
            await site.start()
        except BaseException:
            sock.close()
            raise
        self._envs[port] = env
        self._sites[port] = (site, sock)
        return port

    async def forget(self, env: Environment) -> None:
        """Close ``env``'s listener."""
        self._envs.pop(env.port, None)
        entry = self._sites.pop(env.port, None)
        if entry is not None:
            site, sock = entry
            with contextlib.suppress(Exception):
                await site.stop()
            sock.close()

    # ------------------------------------------------------------------ handlers
    def _env_of(self, request: web.Request) -> Environment:
        """Return the environment whose worker sent ``request``; raise 403 for anyone else."""
        transport = request.transport
        env = self._trusted.get(transport) if transport is not None else None
        if env is not None:
            return env  # this connection was checked: a dictionary look-up per request
        sockname = transport.get_extra_info("sockname") if transport is not None else None
        peer = transport.get_extra_info("peername") if transport is not None else None
        env = self._envs.get(sockname[1]) if sockname else None
        if env is not None and env.dead:  # stopping: its worker (or a process reusing its pid) gets nothing
            raise web.HTTPGone()
        pid = env.pid if env is not None else None
        if env is None or pid is None or not peer or not sockname or not peer_process_check((peer[0], peer[1]), (sockname[0], sockname[1]), pid):
            where = f"{peer[0]}:{peer[1]}" if peer else "an unknown address"
            log.warning("Runtime API: refused %s %s from %s (not the environment's worker)", request.method, request.path, where)
            raise web.HTTPForbidden(
                text=json.dumps(
                    {
                        "errorType": "AccessDenied",
                        "errorMessage": f"refused: the connection from {where} is not this environment's worker process;"
                        " a local Lambda environment's Runtime API serves only its own awslambdaric worker",
                    }
                ),
                content_type="application/json",
            )
        with contextlib.suppress(TypeError):  # a transport that takes no weak reference is checked per request
            self._trusted[transport] = env
        return env

    def _pending(self, request: web.Request) -> tuple[Environment, Invocation | None]:
        env = self._env_of(request)
        inv = env.pending
        if inv is None or inv.id != request.match_info["id"]:
            return env, None
        return env, inv

    async def _next(self, request: web.Request) -> web.StreamResponse:
        env = self._env_of(request)
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
            "Lambda-Runtime-Invoked-Function-Arn": self.arn(env.fn.spec.name),
            "Lambda-Runtime-Trace-Id": f"Root=1-{int(time.time()):08x}-{uuid.uuid4().hex[:24]};Parent={uuid.uuid4().hex[:16]};Sampled=0",
            "Content-Type": "application/json",
        }
        if inv.client_context:
            headers["Lambda-Runtime-Client-Context"] = base64.b64decode(inv.client_context).decode("utf-8", "replace")
        return web.Response(body=inv.payload, headers=headers)

    async def _response(self, request: web.Request) -> web.StreamResponse:
        env, inv = self._pending(request)
        if inv is None:
            return web.json_response({"errorType": "InvalidRequestID", "errorMessage": "unknown request id"}, status=400)
        size = request.content_length
        if size is not None and size <= MAX_RESPONSE_BYTES and inv.streamable:
            # hand the body through to the invoker chunk by chunk: no copy of it is kept here
            stream = Stream(request.content, size)
            inv.finish(stream, None)
            await stream.drained.wait()
            return web.json_response({"status": "OK"}, status=202)
        body: Any
        if size is not None and size > MAX_RESPONSE_BYTES:
            body = b""
        else:
            body = await request.read()
            size = len(body)
        if size > MAX_RESPONSE_BYTES:
            # Lambda resets an environment that produced an oversize response (docs/aws-lambda.md §1.4)
            inv.finish(
                error_body(
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
        _, inv = self._pending(request)
        if inv is None:
            return web.json_response({"errorType": "InvalidRequestID", "errorMessage": "unknown request id"}, status=400)
        body = await request.read()
        try:
            etype = json.loads(body).get("errorType") or "Unhandled"
        except ValueError:
            etype = request.headers.get("Lambda-Runtime-Function-Error-Type") or "Unhandled"
        inv.finish(body, str(etype))
        return web.json_response({"status": "OK"}, status=202)

    async def _init_error(self, request: web.Request) -> web.StreamResponse:
        env = self._env_of(request)
        body = await request.read()
        env.init_error = body
        env.init_ms = (time.perf_counter() - env.spawned) * 1e3
        env.ready.set()
        return web.json_response({"status": "OK"}, status=202)
