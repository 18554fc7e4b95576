"""The Invoke client: aiobotocore, bounded fan-out, retries, and per-request figures.

Facts it depends on (docs/aws-lambda.md):

- botocore's own retries do not read Lambda's ``Retry-After``, and its legacy mode retries a
  read timeout, running the handler twice (docs/aws-lambda.md §2); so botocore retries are off
  (``total_max_attempts=1``) and this client retries by itself: 429 and 5xx from the Invoke
  API, connection failures, and the environment failures ``Sandbox.Timedout``,
  ``Runtime.ExitError`` and ``Runtime.OutOfMemory`` (chunk reads are idempotent), with full
  jitter backoff (``uniform(0, min(cap, base·2^n))``) that waits at least ``Retry-After``.
- ``FunctionError`` is always checked: a sync invoke answers 200 for function errors
  (docs/aws-lambda.md §1.2).
- 413 is matched on the HTTP status, not the error code (docs/aws-lambda.md §1.3: the wire
  code differs from the model).
- ``read_timeout`` > the function timeout, and ``max_pool_connections`` ≥ invokes in flight:
  the default pool of 10 serialises a fan-out (docs/aws-lambda.md §2).
- Billed duration is only reported in the ``Tail`` log's ``REPORT`` line
  (docs/aws-lambda.md §1.2), so every invoke asks for ``LogType=Tail`` and the client parses
  it into GB-s and dollars.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import random
import re
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, Final

from hsds_backends._aws import open_client
from hsds_backends.errors import BackendError, BackendTimeoutError

from .wire import PRICE_GB_S, PRICE_REQUEST, is_raw_answer, parse_raw_answer

__all__ = [
    "RETRYABLE_FUNCTION_ERRORS",
    "FunctionFailed",
    "InvokeClient",
    "InvokeRequestTooLarge",
    "InvokeResponseTooLarge",
    "InvokeStats",
    "b64decode",
    "parse_answer",
]

log = logging.getLogger("hsds_backends_lambda.client")

#: Function errors caused by the environment, not by the task: retried (docs/aws-lambda.md §1.2).
RETRYABLE_FUNCTION_ERRORS: Final = frozenset({"Sandbox.Timedout", "Runtime.ExitError", "Runtime.OutOfMemory"})

try:  # SIMD base64: decoding results is the client's biggest cost after the network
    from pybase64 import b64decode as _pyb64decode

    def b64decode(data: Any) -> bytes:
        """Decode strict base64 (``str``, ``bytes`` or a ``memoryview``)."""
        return _pyb64decode(data, validate=True)

except ImportError:  # pragma: no cover - pybase64 is a dependency; keep working without it

    def b64decode(data: Any) -> bytes:
        """Decode strict base64 (``str``, ``bytes`` or a ``memoryview``)."""
        return base64.b64decode(bytes(data) if isinstance(data, memoryview) else data, validate=True)


def parse_answer(raw: bytes) -> Any:
    """Parse an answer: a raw one (:func:`parse_raw_answer`), or JSON, leaving each ``"body"`` string as a zero-copy ``memoryview`` of ``raw``.

    Bodies are base64 (no quotes, no backslashes), so they are cut out with ``bytes.find``
    and only the small rest is parsed as JSON: a 5 MB answer is not turned into a 5 MB
    Python string only to be decoded again. Anything unexpected (an escaped body, a count
    mismatch) falls back to :func:`json.loads`, which gives ``str`` bodies.
    """
    if is_raw_answer(raw):
        return parse_raw_answer(raw)
    spans: list[tuple[int, int]] = []
    pieces: list[bytes] = []
    pos = 0
    n = len(raw)
    while True:
        k = raw.find(b'"body":', pos)
        if k < 0:
            break
        j = k + 7
        while j < n and raw[j] in b" \t\n\r":
            j += 1
        if j >= n or raw[j] != 0x22:  # not a string value
            pos = j
            continue
        end = raw.find(b'"', j + 1)
        if end < 0 or raw.find(b"\\", j + 1, end) >= 0:
            return json.loads(raw)
        pieces.append(raw[pos : j + 1])
        spans.append((j + 1, end))
        pos = end
    if not spans:
        return json.loads(raw)
    pieces.append(raw[pos:])
    try:
        doc = json.loads(b"".join(pieces))
    except ValueError:
        return json.loads(raw)
    view = memoryview(raw)
    it = iter(spans)
    count = 0

    def walk(node: Any) -> None:
        nonlocal count
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "body" and value == "":
                    a, b = next(it)
                    node[key] = view[a:b]
                    count += 1
                else:
                    walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    try:
        walk(doc)
    except StopIteration:
        return json.loads(raw)
    if count != len(spans):
        return json.loads(raw)
    return doc


_BILLED = re.compile(r"Billed Duration: (\d+) ms")
_MEMORY = re.compile(r"Memory Size: (\d+) MB")
_INIT = re.compile(r"Init Duration: ([\d.]+) ms")


@dataclass
class InvokeStats:
    """Figures of one read (``LambdaBackend.last_stats``) or of a backend's life (``.stats``)."""

    tasks: int = 0
    """Chunk tasks asked for."""
    invokes: int = 0
    """Invoke calls sent, retries included."""
    in_flight: int = 0
    """Invokes outstanding right now."""
    max_in_flight: int = 0
    """Most invokes outstanding at once."""
    failed: int = 0
    """Invokes that failed (throttled, 5xx, connection error, environment failure, function error)."""
    retried: int = 0
    """Invokes sent again after a failure."""
    throttled: int = 0
    """429 answers."""
    split: int = 0
    """Batches or tasks split because a request or result was over Lambda's 6 MB limits."""
    billed_ms: int = 0
    """Billed duration from the REPORT lines (init included)."""
    gb_s: float = 0.0
    """Billed duration × memory."""
    dollars: float = 0.0
    """gb_s × price per GB-s + invokes × price per request."""
    request_bytes: int = 0
    response_bytes: int = 0
    seconds: float = 0.0
    """Wall time of the read."""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def add(self, other: InvokeStats) -> None:
        for k, v in asdict(other).items():
            if k == "max_in_flight":
                self.max_in_flight = max(self.max_in_flight, v)
            elif k != "in_flight":
                setattr(self, k, getattr(self, k) + v)


class InvokeRequestTooLarge(BackendError):
    """The Invoke API answered 413: the payload is over 6,291,456 bytes."""


class InvokeResponseTooLarge(BackendError):
    """The function's answer was over 6,291,556 bytes (``Function.ResponseSizeTooLarge``)."""


class FunctionFailed(BackendError):
    """The function reported an error that retrying will not fix (or retries ran out)."""

    def __init__(self, message: str, error_type: str = "") -> None:
        super().__init__(message)
        self.error_type = error_type


class InvokeClient:
    """Invoke one function with at most ``max_in_flight`` calls outstanding.

    Parameters
    ----------
    function
        Function name or ARN (``aws_lambda_chunkread_function``).
    endpoint_url
        ``aws_lambda_gateway``: ``None`` for AWS, or a URL (the local runtime).
    region, credentials
        Signing region and ``(key id, secret, session token)``; ``None`` uses the AWS chain.
    max_in_flight
        Invokes outstanding at once (``aws_lambda_max_invoke``); also the connection pool size.
    function_timeout_s
        The function's timeout; the read timeout is this plus ``timeout_margin_s``.
    max_attempts, backoff_base_s, backoff_cap_s
        Retry policy (see the module docstring).
    memory_mb, price_gb_s, price_request
        Used when a reply has no REPORT line, and to price GB-s.
    """

    def __init__(
        self,
        function: str,
        endpoint_url: str | None = None,
        *,
        region: str = "us-east-1",
        credentials: tuple[str | None, str | None, str | None] | None = None,
        max_in_flight: int = 1000,
        function_timeout_s: float = 60.0,
        timeout_margin_s: float = 30.0,
        connect_timeout_s: float = 5.0,
        max_attempts: int = 8,
        backoff_base_s: float = 0.05,
        backoff_cap_s: float = 5.0,
        memory_mb: int = 1769,
        price_gb_s: float = PRICE_GB_S["x86_64"],
        price_request: float = PRICE_REQUEST,
        log_tail: bool = True,
    ) -> None:
        self.function = function
        self.endpoint_url = endpoint_url
        self.region = region
        self._credentials = credentials or (None, None, None)
        self.max_in_flight = max(1, int(max_in_flight))
        self.read_timeout_s = function_timeout_s + timeout_margin_s
        self.connect_timeout_s = connect_timeout_s
        self.max_attempts = max(1, int(max_attempts))
        self.backoff_base_s = backoff_base_s
        self.backoff_cap_s = backoff_cap_s
        self.memory_mb = memory_mb
        self.price_gb_s = price_gb_s
        self.price_request = price_request
        self.log_tail = log_tail
        self._client: Any = None
        self._stack: contextlib.AsyncExitStack | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sem: asyncio.Semaphore | None = None
        self._in_flight = 0

    def __repr__(self) -> str:
        return f"InvokeClient({self.function!r}, endpoint_url={self.endpoint_url or 'AWS'!r}, max_in_flight={self.max_in_flight})"

    @property
    def loop(self) -> asyncio.AbstractEventLoop | None:
        """The event loop the aiobotocore client lives on (``None`` before the first invoke, or after :meth:`aclose`)."""
        return self._loop

    async def _get(self) -> tuple[Any, asyncio.Semaphore]:
        loop = asyncio.get_running_loop()
        if self._client is not None and self._loop is loop:
            assert self._sem is not None
            return self._client, self._sem
        if self._stack is not None and self._loop is loop:
            await self._stack.aclose()
        stack, self._client = await open_client(
            "lambda",
            region=self.region,
            endpoint_url=self.endpoint_url,
            credentials=self._credentials,
            max_pool_connections=self.max_in_flight,
            read_timeout=self.read_timeout_s,
            connect_timeout=self.connect_timeout_s,
            retries={"mode": "standard", "total_max_attempts": 1},
        )
        self._stack, self._loop = stack, loop
        self._sem = asyncio.Semaphore(self.max_in_flight)
        return self._client, self._sem

    async def aclose(self) -> None:
        stack, self._stack, self._client = self._stack, None, None
        if stack is not None and self._loop is asyncio.get_running_loop():
            await stack.aclose()
        self._loop = None

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        delay = random.uniform(0, min(self.backoff_cap_s, self.backoff_base_s * 2**attempt))
        if retry_after is not None:
            delay = max(delay, retry_after)
        return delay

    async def invoke(
        self, payload: bytes, stats: InvokeStats, *, what: str = "", into: Callable[[], bytearray] | None = None
    ) -> Any:
        """Invoke the function with ``payload`` and return its answer (:func:`parse_answer`).

        With ``into``, a successful answer is received into the buffer ``into()`` returns
        (called once the answer is on its way) when it fits: no fresh allocation per answer.
        The parsed answer then refers to that buffer's bytes.

        Raises
        ------
        InvokeRequestTooLarge
            413 from the Invoke API.
        InvokeResponseTooLarge
            ``Function.ResponseSizeTooLarge``.
        FunctionFailed
            A function error that is not an environment failure, or retries ran out.
        BackendError
            Any other failure after the retries (``BackendTimeoutError`` for timeouts).
        """
        from botocore.exceptions import BotoCoreError, ClientError

        client, sem = await self._get()
        last = ""
        for attempt in range(self.max_attempts):
            if attempt:
                stats.retried += 1
            retry_after: float | None = None
            resp: Any = None
            body: bytes | memoryview = b""
            async with sem:
                self._in_flight += 1
                stats.in_flight = self._in_flight
                stats.max_in_flight = max(stats.max_in_flight, self._in_flight)
                stats.invokes += 1
                stats.request_bytes += len(payload)
                t0 = time.perf_counter()
                try:
                    kwargs: dict[str, Any] = {"FunctionName": self.function, "Payload": payload}
                    if self.log_tail:
                        kwargs["LogType"] = "Tail"
                    resp = await client.invoke(**kwargs)
                    body = await _read_payload(resp, into if not resp.get("FunctionError") else None)
                except ClientError as exc:
                    resp = None
                    stats.failed += 1
                    status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
                    err = exc.response.get("Error", {})
                    code, msg = err.get("Code", "?"), err.get("Message", "")
                    if status == 413:  # matched on the status: the wire code differs from the model (docs/aws-lambda.md §1.3)
                        raise InvokeRequestTooLarge(
                            f"lambda {self.function!r}: request of {len(payload)} bytes refused (413 {code}): {msg}", status=status
                        ) from exc
                    if status != 429 and status < 500:
                        hint = "; check aws_lambda_chunkread_function and that the function is deployed" if status == 404 else ""
                        raise BackendError(
                            f"lambda {self.function!r} at {self.endpoint_url or 'AWS'}: invoke failed with HTTP {status} {code}: {msg}{hint}",
                            status=status or None,
                        ) from exc
                    if status == 429:
                        stats.throttled += 1
                    retry_after = _retry_after(exc.response)
                    last = f"HTTP {status} {code} {exc.response.get('Reason') or ''}: {msg}".replace("  ", " ")
                except (BotoCoreError, OSError, TimeoutError) as exc:
                    resp = None
                    stats.failed += 1
                    last = f"{type(exc).__name__}: {exc}"
                finally:
                    self._in_flight -= 1
                    stats.in_flight = self._in_flight
                if resp is not None:
                    self._bill(resp, stats, time.perf_counter() - t0)
            if resp is None:
                await asyncio.sleep(self._backoff(attempt, retry_after))
                continue
            stats.response_bytes += len(body)
            if not resp.get("FunctionError"):
                try:
                    if isinstance(body, memoryview):  # received into a reused buffer
                        # a raw answer is parsed where it lies; JSON answers are parsed from bytes
                        return parse_raw_answer(body) if is_raw_answer(body) else parse_answer(body.tobytes())
                    return parse_answer(body)
                except ValueError as exc:
                    raise BackendError(f"lambda {self.function!r} answered with an unreadable payload ({exc}): {bytes(body[:200])!r}") from exc
            stats.failed += 1
            text = bytes(body)  # an error payload is never received into a buffer: no copy
            try:
                err = json.loads(text)
            except ValueError:
                err = {"errorType": "Unknown", "errorMessage": text[:300].decode("utf-8", "replace")}
            etype = str(err.get("errorType") or "Unhandled")
            emsg = str(err.get("errorMessage") or "")
            if etype == "Function.ResponseSizeTooLarge":
                raise InvokeResponseTooLarge(f"lambda {self.function!r}: {emsg}")
            if etype not in RETRYABLE_FUNCTION_ERRORS:
                raise FunctionFailed(f"lambda {self.function!r} failed{(' on ' + what) if what else ''}: {etype}: {emsg}", etype)
            last = f"{etype}: {emsg}"
            log.info("lambda %s %s: %s (attempt %d), retrying", self.function, what, last, attempt + 1)
            await asyncio.sleep(self._backoff(attempt, None))
        cls = BackendTimeoutError if "Timedout" in last or "Timeout" in last else FunctionFailed
        raise cls(f"lambda {self.function!r}{(' ' + what) if what else ''}: gave up after {self.max_attempts} attempts; last error: {last}")

    def _bill(self, resp: Any, stats: InvokeStats, wall: float) -> None:
        text = ""
        if resp.get("LogResult"):
            with contextlib.suppress(ValueError):
                text = base64.b64decode(resp["LogResult"]).decode("utf-8", "replace")
        m = _BILLED.search(text)
        billed = int(m.group(1)) if m else max(1, round(wall * 1000))
        mm = _MEMORY.search(text)
        mem = int(mm.group(1)) if mm else self.memory_mb
        mi = _INIT.search(text)
        if mi:  # INIT is billed for zip runtimes since 2025-08-01 (docs/aws-lambda.md §3)
            billed += round(float(mi.group(1)))
        gbs = billed / 1000 * mem / 1024
        stats.billed_ms += billed
        stats.gb_s += gbs
        stats.dollars += gbs * self.price_gb_s + self.price_request


async def _read_payload(resp: Any, into: Callable[[], bytearray] | None) -> bytes | memoryview:
    """Read an Invoke reply's payload, into the buffer ``into()`` gives when its declared length fits."""
    stream = resp["Payload"]
    try:
        length = int(resp["ResponseMetadata"]["HTTPHeaders"]["content-length"])
    except (KeyError, TypeError, ValueError):
        length = -1
    buf = into() if into is not None and 0 <= length and hasattr(stream, "readinto") else None
    if buf is None or length > len(buf):
        data: bytes = await stream.read()
        return data
    view = memoryview(buf)[:length]
    pos = 0
    import aiohttp

    content = getattr(getattr(stream, "raw_stream", None), "content", None)  # the aiohttp StreamReader
    if content is not None and hasattr(content, "readany"):
        # chunk by chunk as received: one copy, where StreamingBody.readinto joins then copies
        try:
            while pos < length:
                chunk = await content.readany()
                if not chunk:
                    break
                if pos + len(chunk) > length:
                    raise OSError(f"the Invoke reply is longer than its declared {length} bytes")
                view[pos : pos + len(chunk)] = chunk
                pos += len(chunk)
        except (TimeoutError, aiohttp.ClientError) as exc:  # retried like any transport failure
            raise OSError(f"the Invoke reply broke off after {pos} of its {length} bytes: {type(exc).__name__}: {exc}") from exc
    else:
        while pos < length:
            n = await stream.readinto(view[pos:])
            if n == 0:
                break
            pos += n
    if pos != length:
        raise OSError(f"the Invoke reply ended after {pos} of its {length} bytes")
    return view


def _retry_after(response: dict[str, Any]) -> float | None:
    raw = response.get("retryAfterSeconds") or response.get("ResponseMetadata", {}).get("HTTPHeaders", {}).get("retry-after")
    if raw in (None, ""):
        return None
    try:
        return max(0.0, float(raw))
    except (TypeError, ValueError):
        return None
