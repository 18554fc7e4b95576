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
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import socket
import time
import uuid
from collections.abc import Callable
from typing import Any

from aiohttp import web

from hsds_backends._proc import loopback_socket

from ..wire import MAX_RESPONSE_BYTES
from .environments import Environment, Invocation, Stream, error_body

__all__ = ["RuntimeAPI"]


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

    async def start(self) -> None:
        """Set up the application (listeners come with :meth:`listen`)."""
        if self._runner is not None:
            return
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
    def _env_of(self, request: web.Request) -> Environment | None:
        sockname = request.transport.get_extra_info("sockname") if request.transport else None
        return self._envs.get(sockname[1]) if sockname else None

    def _pending(self, request: web.Request) -> tuple[Environment | None, Invocation | None]:
        env = self._env_of(request)
        inv = env.pending if env is not None else None
        if inv is None or inv.id != request.match_info["id"]:
            return env, None
        return env, inv

    async def _next(self, request: web.Request) -> web.StreamResponse:
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
            "Lambda-Runtime-Invoked-Function-Arn": self.arn(env.fn.spec.name),
            "Lambda-Runtime-Trace-Id": f"Root=1-{int(time.time()):08x}-{uuid.uuid4().hex[:24]};Parent={uuid.uuid4().hex[:16]};Sampled=0",
            "Content-Type": "application/json",
        }
        if inv.client_context:
            headers["Lambda-Runtime-Client-Context"] = base64.b64decode(inv.client_context).decode("utf-8", "replace")
        return web.Response(body=inv.payload, headers=headers)

    async def _response(self, request: web.Request) -> web.StreamResponse:
        env, inv = self._pending(request)
        if env is None or inv is None:
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
        env = self._env_of(request)
        body = await request.read()
        if env is not None:
            env.init_error = body
            env.init_ms = (time.perf_counter() - env.spawned) * 1e3
            env.ready.set()
        return web.json_response({"status": "OK"}, status=202)
