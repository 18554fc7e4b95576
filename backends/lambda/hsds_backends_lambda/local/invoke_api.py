"""The Invoke API the local runtime serves to clients (the side in front), and its control endpoints.

What botocore and aiobotocore talk to (docs/aws-lambda.md §1.1–1.3)::

    POST /2015-03-31/functions/{name}/invocations[?Qualifier=$LATEST]

- ``RequestResponse`` → 200 with the handler's JSON; a function error is 200 plus
  ``X-Amz-Function-Error: Unhandled`` and ``{"errorMessage","errorType","requestId","stackTrace"}``;
  ``Event`` → 202; ``DryRun`` → 204; ``X-Amz-Log-Type: Tail`` → ``X-Amz-Log-Result``
  (base64 of the last 4 KB of ``START``/output/``END``/``REPORT``).
- request > 6,291,456 B → 413 ``RequestEntityTooLargeException``; no free environment and the
  function at its concurrency → 429 ``TooManyRequestsException`` with ``Reason``; unknown
  function or qualifier → 404 ``ResourceNotFoundException``; a body that is not JSON → 400.

Control endpoints outside the AWS API: ``GET /local/functions``,
``GET|POST /local/functions/{name}/faults``, ``GET /local/functions/{name}/meter``.

Who may call (docs/architecture.md §11)
---------------------------------------
The runtime binds loopback only, so only local users reach it. Every request must be
addressed to loopback (its ``Host`` header: a web page that rebinds its own name to
127.0.0.1 still sends that name), else 403. The control endpoints need the runtime's token
(:attr:`LocalLambdaRuntime.token`, generated per runtime and handed over out of band) as
``Authorization: Bearer <token>``, else 401. Invokes are open to local users unless the
runtime is started with ``protect_invoke``: then an invoke must be signed with the token as
its access key id (what botocore sends in ``Authorization: AWS4-HMAC-SHA256
Credential=<key id>/...``) or carry it as a bearer token, else 403. The embedded runtime of the
``lambda`` backend always protects its invokes.
"""

from __future__ import annotations

import base64
import hmac
import json
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from typing import TYPE_CHECKING, Any, Final

from aiohttp import web

from hsds_backends.errors import ConfigError
from hsds_backends.security import host_allowed

from ..wire import MAX_REQUEST_BYTES
from .environments import Stream

if TYPE_CHECKING:
    from .environments import Function
    from .runtime import LocalLambdaRuntime

__all__ = ["InvokeAPI"]

#: Bytes of the ``Tail`` log returned (docs/aws-lambda.md §1.2: the last 4 KB).
_TAIL_BYTES: Final = 4096
#: Where botocore's SigV4 ``Authorization`` header names the access key id.
_CREDENTIAL: Final = "Credential="


def presented_token(authorization: str | None) -> str:
    """Return the token an ``Authorization`` header carries: a bearer token, or a SigV4 access key id ("" if none)."""
    if not authorization:
        return ""
    if authorization.startswith("Bearer "):
        return authorization[7:].strip()
    i = authorization.find(_CREDENTIAL)
    if i < 0:
        return ""
    i += len(_CREDENTIAL)
    j = authorization.find("/", i)
    return authorization[i:j] if j > i else ""


def _same(presented: str, token: str) -> bool:
    return bool(presented) and hmac.compare_digest(presented.encode(), token.encode())


def _aws_error(status: int, code: str, message: str, extra: dict[str, Any] | None = None, headers: dict[str, str] | None = None) -> web.Response:
    """Return an Invoke API error as the service sends it (docs/aws-lambda.md §2: status, ``x-amzn-ErrorType``, ``message``)."""
    body = {"Type": "User", "message": message, **(extra or {})}
    return web.json_response(
        body,
        status=status,
        headers={"x-amzn-ErrorType": code, "x-amzn-RequestId": str(uuid.uuid4()), **(headers or {})},
    )


class InvokeAPI:
    """The front of one :class:`~hsds_backends_lambda.local.LocalLambdaRuntime`."""

    def __init__(self, runtime: LocalLambdaRuntime) -> None:
        self.runtime = runtime

    def app(self) -> web.Application:
        """Return the aiohttp application of the Invoke API and the control endpoints."""
        app = web.Application(client_max_size=MAX_REQUEST_BYTES * 4, middlewares=[self._guard])
        app.router.add_post("/2015-03-31/functions/{name}/invocations", self._invoke)
        app.router.add_get("/local/functions", self._list)
        app.router.add_get("/local/functions/{name}/faults", self._get_faults)
        app.router.add_post("/local/functions/{name}/faults", self._set_faults)
        app.router.add_get("/local/functions/{name}/meter", self._get_meter)
        return app

    @web.middleware
    async def _guard(self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
        """Refuse foreign ``Host`` headers, control calls without the token and, if protected, invokes without it."""
        host = request.headers.get("Host")
        if not host_allowed(host):
            return _aws_error(
                403,
                "AccessDeniedException",
                f"Host {host!r} is not a loopback name; the local Lambda runtime answers only requests addressed to"
                " 127.0.0.1, ::1 or localhost",
            )
        rt = self.runtime
        if request.path.startswith("/local/"):
            if not _same(presented_token(request.headers.get("Authorization")), rt.token):
                return _aws_error(
                    401,
                    "UnauthorizedException",
                    f"{request.method} {request.path} needs the local runtime's token: send 'Authorization: Bearer <token>'"
                    " (LocalLambdaRuntime.token; serve-local writes it to its --token-file)",
                )
        elif rt.protect_invoke and not _same(presented_token(request.headers.get("Authorization")), rt.token):
            return _aws_error(
                403,
                "UnrecognizedClientException",
                "this local Lambda runtime takes invokes signed with its token as the access key id"
                " (or 'Authorization: Bearer <token>'); the lambda backend that started it does so",
            )
        return await handler(request)

    def resolve(self, raw: str, qualifier: str | None) -> tuple[Function | None, str]:
        """Return the function a ``FunctionName`` (name, ARN or partial ARN, each with ``:qualifier``) names, and its ARN."""
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
        fn = self.runtime.functions.get(name)
        shown = self.runtime.arn(name) + (f":{qualifier}" if qualifier else "")
        if fn is None or qualifier not in (None, "", "$LATEST"):
            return None, shown
        return fn, shown

    async def _invoke(self, request: web.Request) -> web.StreamResponse:
        rt = self.runtime
        fn, arn = self.resolve(request.match_info["name"], request.query.get("Qualifier"))
        if fn is None:
            return _aws_error(404, "ResourceNotFoundException", f"Function not found: {arn}")
        too_big = f"Request must be smaller than {MAX_REQUEST_BYTES} bytes for the InvokeFunction operation"
        if request.content_length is not None and request.content_length > MAX_REQUEST_BYTES:
            return _aws_error(413, "RequestEntityTooLargeException", too_big)
        payload = await request.read()
        if len(payload) > MAX_REQUEST_BYTES:
            return _aws_error(413, "RequestEntityTooLargeException", too_big)
        if not payload:
            payload = b"{}"
        try:
            json.loads(payload)
        except ValueError as exc:
            return _aws_error(400, "InvalidRequestContentException", f"Could not parse request body into json: {exc}")
        itype = request.headers.get("X-Amz-Invocation-Type") or "RequestResponse"
        if itype not in ("RequestResponse", "Event", "DryRun"):
            return _aws_error(400, "InvalidParameterValueException", f"Unsupported invocation type {itype!r}")
        if itype == "DryRun":
            return web.Response(status=204, headers={"x-amzn-RequestId": str(uuid.uuid4())})
        faults = fn.faults
        if faults.take_throttle():
            fn.meter.throttles += 1
            hdr = {"Retry-After": f"{faults.retry_after:g}"} if faults.retry_after else None
            return _aws_error(429, "TooManyRequestsException", "Rate Exceeded.", {"Reason": "ConcurrentInvocationLimitExceeded"}, hdr)
        client_context = request.headers.get("X-Amz-Client-Context")
        if itype == "Event":
            rt.in_background(rt.run(fn.spec.name, payload, client_context=client_context))
            return web.Response(status=202, headers={"x-amzn-RequestId": str(uuid.uuid4())})
        env = await rt.acquire(fn)
        if env is None:
            fn.meter.throttles += 1
            return _aws_error(
                429,
                "TooManyRequestsException",
                "Rate Exceeded.",
                {"Reason": "ReservedFunctionConcurrentInvocationLimitExceeded"},
                {"Retry-After": "1"},
            )
        body, error_type, tail = await rt.execute(fn, env, payload, client_context, stream=True)
        headers = {
            "Content-Type": "application/json",
            "X-Amz-Executed-Version": "$LATEST",
            "x-amzn-RequestId": str(uuid.uuid4()),
        }
        if error_type is not None:
            headers["X-Amz-Function-Error"] = "Unhandled"
        if request.headers.get("X-Amz-Log-Type") == "Tail":
            headers["X-Amz-Log-Result"] = base64.b64encode(tail.encode("utf-8")[-_TAIL_BYTES:]).decode()
        if not isinstance(body, Stream):
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
    def _not_found(self, request: web.Request) -> web.Response:
        return _aws_error(404, "ResourceNotFoundException", f"Function not found: {self.runtime.arn(request.match_info['name'])}")

    async def _list(self, request: web.Request) -> web.StreamResponse:
        return web.json_response(
            {
                name: {
                    "spec": {k: v for k, v in asdict(fn.spec).items() if k != "env"},
                    "environments": fn.alive(),
                    "meter": fn.meter.to_json(),
                    "faults": asdict(fn.faults),
                }
                for name, fn in self.runtime.functions.items()
            }
        )

    async def _get_faults(self, request: web.Request) -> web.StreamResponse:
        fn = self.runtime.functions.get(request.match_info["name"])
        if fn is None:
            return self._not_found(request)
        return web.json_response(asdict(fn.faults))

    async def _set_faults(self, request: web.Request) -> web.StreamResponse:
        fn = self.runtime.functions.get(request.match_info["name"])
        if fn is None:
            return self._not_found(request)
        try:
            fn.faults.update(**(await request.json()))
        except (ValueError, TypeError, ConfigError) as exc:
            return _aws_error(400, "InvalidParameterValueException", str(exc))
        return web.json_response(asdict(fn.faults))

    async def _get_meter(self, request: web.Request) -> web.StreamResponse:
        fn = self.runtime.functions.get(request.match_info["name"])
        if fn is None:
            return self._not_found(request)
        return web.json_response(fn.meter.to_json())
