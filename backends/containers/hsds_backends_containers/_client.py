"""A small HTTP/1.0 client for DNs that receives result bytes in place, and how DN answers are sorted.

Results are received by an :class:`asyncio.BufferedProtocol`, which hands the
kernel each result's own buffer (``recv_into``): a chunk's bytes are copied
once from the socket into the buffer the caller places into its output.
Nothing is read in small pieces and joined, decoded from base64 or copied
again; only frame headers and the HTTP head pass through a small staging
buffer.

- :func:`open_request` sends one request and returns its :class:`Response`,
  whose body is either one payload (``Content-Length`` known: received in
  place) or a stream of length-prefixed frames (the batch route,
  :mod:`._batch`).
- :func:`request` does one plain request (``GET /info``, HSDS-style
  ``GET``/``POST /chunks/{id}``) and returns its whole answer.
- :class:`Fatal`, :class:`Retryable` and :func:`answer_error` sort a DN's
  non-success answer for the scheduler (retry, or end the read).

Requests are HTTP/1.0, so a DN answers without chunked transfer encoding and
ends a streamed body by closing the connection (one connection per request;
on unix sockets and loopback that costs well under a millisecond). No
proxies, no redirects: DNs are internal services.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import struct
import urllib.parse
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, cast

import numpy as np

from hsds_backends.errors import BackendError, TaskError
from hsds_backends.tasks import error_from_wire

__all__ = [
    "Fatal",
    "NodeTimeout",
    "NodeURL",
    "NodeUnreachable",
    "Response",
    "Retryable",
    "answer_error",
    "json_body",
    "open_request",
    "request",
]

_STAGING: Final = 256 * 1024
_MAX_HEAD: Final = 64 * 1024
#: Received but not yet taken frame bytes per connection above which reading pauses (the
#: caller normally takes each frame at once; it stops taking them only to apply backpressure).
_HIGH_WATER: Final = 1024 * 1024


@dataclass(frozen=True)
class NodeURL:
    """A DN address: ``http://host:port[/prefix]``, ``https://…``, ``http+unix://%2Fpath.sock`` or ``unix:/path.sock``."""

    text: str
    scheme: str
    host: str = "localhost"
    port: int = 80
    path: str = ""
    """Unix socket path (unix URLs)."""
    prefix: str = ""
    """Path prefix of every route (``http://host/dn1`` → ``/dn1``)."""

    @classmethod
    def parse(cls, text: str) -> NodeURL:
        """Parse a DN URL; raise ``ValueError`` naming the accepted forms."""
        t = str(text).strip()
        if t.startswith("http+unix://"):
            rest = t[len("http+unix://") :]
            host, _, prefix = rest.partition("/")
            path = urllib.parse.unquote(host)
            if path:
                return cls(t, "unix", path=path, prefix=_prefix(prefix))
        elif t.startswith("unix:"):
            path = t[len("unix:") :]
            path = path.removeprefix("//")
            if path:
                return cls(t, "unix", path=path)
        else:
            u = urllib.parse.urlsplit(t)
            if u.scheme in ("http", "https") and u.hostname:
                try:
                    port = u.port or (443 if u.scheme == "https" else 80)
                except ValueError:
                    port = -1
                if port > 0:
                    return cls(t, u.scheme, u.hostname, port, prefix=_prefix(u.path))
        raise ValueError(
            f"DN URL {text!r} is not valid; use http://host:port, https://host:port, "
            "http+unix://%2Fpath%2Fdn.sock or unix:/path/dn.sock"
        )

    @property
    def unix(self) -> bool:
        return self.scheme == "unix"

    def __str__(self) -> str:
        return self.text


def _prefix(p: str) -> str:
    p = p.strip("/")
    return f"/{p}" if p else ""


class NodeUnreachable(ConnectionError):
    """The DN refused, reset or closed the connection (or broke the protocol)."""


class NodeTimeout(TimeoutError):
    """The DN sent nothing for the timeout (connecting included)."""


class Fatal(Exception):
    """Wraps an error that ends the read (no retry, no reroute)."""

    def __init__(self, exc: BaseException) -> None:
        super().__init__(str(exc))
        self.exc = exc


class Retryable(Exception):
    """The DN answered with a 5xx/503: worth retrying there."""


def json_body(body: bytes | bytearray | memoryview) -> dict[str, Any] | None:
    """Return ``body`` parsed as a JSON object, or ``None``."""
    try:
        doc = json.loads(bytes(body))
    except (ValueError, UnicodeDecodeError):
        return None
    return doc if isinstance(doc, dict) else None


def answer_error(url: NodeURL, status: int, body: bytes | bytearray | memoryview, cid: str, route: str) -> Exception:
    """Sort a DN's non-success answer: :class:`Retryable` (5xx), or :class:`Fatal` with the DN's message.

    An answer carrying our JSON error body (``error_type``) is the error the kernel
    raised there, rebuilt with the class ``inline`` raises (even a 5xx: a corrupt
    chunk is not worth another try).
    """
    doc = json_body(body)
    typed = bool(doc and doc.get("error_type"))
    if status >= 500 and not typed:
        return Retryable(f"HTTP {status} from {route}")
    if status == 401:
        return Fatal(BackendError(
            f"DN {url} answered 401 (unauthorized): {(doc or {}).get('message', '')}; set dn_token to the DNs' token"
        ))
    if doc and typed:
        return Fatal(error_from_wire(doc, cid))
    text = bytes(body[:300]).decode("utf-8", "replace").strip()
    return Fatal(TaskError(f"chunk {cid}: DN {url} answered {status} to {route}: {text}", status=status))


class Response(asyncio.BufferedProtocol):
    """Parses one HTTP/1.0 response: the head, then frames (``frame`` given and 200) or a body.

    Payloads (frame payloads, and bodies whose length is known) land in their
    own numpy buffers through ``recv_into``; an idle timer fails the response
    when nothing arrives for ``timeout`` seconds. A frame is a header of the
    struct ``frame`` (fields: index, status, payload length, then two figures)
    followed by the payload.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, timeout: float, *, frame: struct.Struct | None) -> None:
        self._loop = loop
        self._timeout = timeout
        self._frame_header = frame
        self._stage = bytearray(_STAGING)
        self._view = memoryview(self._stage)
        self._start = 0  # unparsed bytes are _stage[_start:_end]
        self._end = 0
        self.head_done = False
        self.status = 0
        self.headers: dict[str, str] = {}
        self._mode = "head"  # head | frames | sized | until_eof | done
        self._raw = bytearray()  # until_eof body
        self._dest: memoryview | None = None  # where the current payload is received in place
        self._filled = 0
        self._frame: tuple[int, int, int, int] = (0, 0, 0, 0)
        self.frames: deque[tuple[int, int, memoryview, int, int]] = deque()
        self._queued = 0  # payload bytes in ``frames``; reading pauses above _HIGH_WATER
        self._paused = False
        self.body: memoryview | None = None
        self._eof = False
        self._exc: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._last = loop.time()
        self._timer: asyncio.TimerHandle | None = loop.call_later(timeout, self._check_idle)
        self.transport: asyncio.Transport | None = None

    # -- asyncio callbacks
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast("asyncio.Transport", transport)  # a stream connection's transport

    def get_buffer(self, sizehint: int) -> memoryview:
        if self._dest is not None:
            return self._dest[self._filled :]
        if self._end == len(self._stage):
            self._compact()
            if self._end == len(self._stage):  # only possible with a huge response head
                self._fail(NodeUnreachable("HTTP response head too large"))
                self._start = self._end = 0
        return self._view[self._end :]

    def buffer_updated(self, nbytes: int) -> None:
        self._last = self._loop.time()
        if self._dest is not None:
            self._filled += nbytes
            if self._filled == len(self._dest):
                self._payload_done()
            return
        self._end += nbytes
        try:
            self._parse()
        except NodeUnreachable as exc:
            self._fail(exc)

    def eof_received(self) -> bool:
        self._eof = True
        if self._mode == "until_eof":
            self.body = memoryview(self._raw)
            self._mode = "done"
        self._wake()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.eof_received()
        if exc is not None and self._exc is None and self._mode != "done":
            self._exc = NodeUnreachable(f"connection lost: {exc}")
        self._cancel_timer()

    # -- parsing
    def _compact(self) -> None:
        if self._start:
            n = self._end - self._start
            self._stage[:n] = self._stage[self._start : self._end]
            self._start, self._end = 0, n

    def _parse(self) -> None:
        if self._mode == "head":
            i = self._stage.find(b"\r\n\r\n", self._start, self._end)
            if i < 0:
                if self._end - self._start > _MAX_HEAD:
                    raise NodeUnreachable("HTTP response head too large")
                return
            self._read_head(bytes(self._stage[self._start : i]))
            self._start = i + 4
            self.head_done = True
            if self._frame_header is not None and self.status == 200:
                self._mode = "frames"
            elif "content-length" in self.headers:
                try:
                    n = int(self.headers["content-length"])
                except ValueError as exc:
                    raise NodeUnreachable(f"bad Content-Length {self.headers['content-length']!r}") from exc
                self._mode = "sized"
                self._receive(n, (0, 0, 0, 0))
            else:
                self._mode = "until_eof"
            self._wake()
        if self._mode == "until_eof":
            self._raw += self._view[self._start : self._end]
            self._start = self._end = 0
            return
        if self._mode != "frames":
            if self._end > self._start and self._dest is None:
                raise NodeUnreachable("the DN sent more bytes than its Content-Length")
            return
        header = self._frame_header
        assert header is not None
        hs = header.size
        while self._dest is None and self._end - self._start >= hs:
            j, status, n, fetched, decoded = header.unpack_from(self._stage, self._start)
            self._start += hs
            self._receive(n, (j, status, fetched, decoded))
        if self._dest is None:
            self._compact()

    def _receive(self, n: int, frame: tuple[int, int, int, int]) -> None:
        """Start a payload of ``n`` bytes: take what is staged, receive the rest in place."""
        dest = memoryview(np.empty(n, dtype=np.uint8).data)
        have = min(n, self._end - self._start)
        if have:
            dest[:have] = self._view[self._start : self._start + have]
            self._start += have
        self._frame = frame
        if have == n:
            self._dest, self._filled = dest, n
            self._payload_done()
        else:  # everything staged went into dest: the rest comes straight from the socket
            self._dest, self._filled = dest, have
            self._start = self._end = 0

    def _payload_done(self) -> None:
        dest = self._dest
        assert dest is not None
        self._dest = None
        if self._mode == "frames":
            j, status, fetched, decoded = self._frame
            self.frames.append((j, status, dest, fetched, decoded))
            self._queued += len(dest)
            if self._queued > _HIGH_WATER and not self._paused and self.transport is not None:
                self._paused = True  # the caller is behind: let the DN wait instead of buffering here
                self.transport.pause_reading()
        else:
            self.body = dest
            self._mode = "done"
        self._wake()

    def _read_head(self, head: bytes) -> None:
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/"):
            raise NodeUnreachable(f"not an HTTP response: {lines[0][:80]!r}")
        try:
            self.status = int(parts[1])
        except ValueError as exc:
            raise NodeUnreachable(f"bad HTTP status line {lines[0][:80]!r}") from exc
        for line in lines[1:]:
            k, _, v = line.partition(":")
            self.headers[k.strip().lower()] = v.strip()
        if self.headers.get("transfer-encoding", "").lower() == "chunked":
            raise NodeUnreachable("the DN answered an HTTP/1.0 request with chunked encoding (a proxy in between?)")

    # -- waiting
    def _fail(self, exc: BaseException) -> None:
        if self._exc is None:
            self._exc = exc
        if self.transport is not None:
            self.transport.abort()
        self._wake()

    def _wake(self) -> None:
        w = self._waiter
        if w is not None and not w.done():
            w.set_result(None)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _check_idle(self) -> None:
        idle = self._loop.time() - self._last
        if idle >= self._timeout:
            self._timer = None
            self._fail(NodeTimeout(f"no answer for {self._timeout:g} s"))
        else:
            self._timer = self._loop.call_later(self._timeout - idle, self._check_idle)

    async def _wait(self) -> None:
        self._waiter = self._loop.create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None

    async def wait_head(self) -> None:
        while not self.head_done:
            if self._exc is not None:
                raise self._exc
            if self._eof:
                raise NodeUnreachable("the connection closed before an HTTP response")
            await self._wait()

    async def wait_body(self) -> memoryview:
        while self._mode != "done":
            if self._exc is not None:
                raise self._exc
            if self._eof:
                raise NodeUnreachable("the connection closed in the middle of the response body")
            await self._wait()
        assert self.body is not None
        return self.body

    async def next_frame(self) -> tuple[int, int, memoryview, int, int] | None:
        while True:
            if self.frames:
                frame = self.frames.popleft()
                self._queued -= len(frame[2])
                if self._paused and self._queued < _HIGH_WATER // 4 and self.transport is not None:
                    self._paused = False
                    self.transport.resume_reading()
                return frame
            if self._exc is not None:
                raise self._exc
            if self._eof:
                if self._dest is not None or self._end > self._start:
                    raise NodeUnreachable("the stream ended in the middle of a result")
                return None
            await self._wait()

    def close(self) -> None:
        self._cancel_timer()
        if self.transport is not None:
            self.transport.close()


async def open_request(
    url: NodeURL,
    method: str,
    target: str,
    *,
    body: bytes = b"",
    headers: Mapping[str, str] | None = None,
    token: str | None = None,
    timeout: float = 30.0,
    frame: struct.Struct | None = None,
) -> Response:
    """Connect to ``url`` and send one request; return the :class:`Response` being received.

    The caller waits on it (:meth:`Response.wait_head`, then :meth:`Response.wait_body`
    or :meth:`Response.next_frame`) and closes it.

    Raises
    ------
    NodeUnreachable
        Connection refused or reset.
    NodeTimeout
        No connection within ``timeout`` seconds.
    """
    loop = asyncio.get_running_loop()
    proto = Response(loop, timeout, frame=frame)
    try:
        async with asyncio.timeout(timeout):
            if url.unix:
                await loop.create_unix_connection(lambda: proto, url.path)
            else:
                ctx = ssl.create_default_context() if url.scheme == "https" else None
                await loop.create_connection(lambda: proto, url.host, url.port, ssl=ctx)
    except TimeoutError as exc:
        proto.close()
        raise NodeTimeout(f"could not connect within {timeout:g} s") from exc
    except OSError as exc:
        proto.close()
        raise NodeUnreachable(f"cannot connect: {exc}") from exc
    lines = [f"{method} {url.prefix}{target} HTTP/1.0", f"Host: {'localhost' if url.unix else url.host}"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    if body or method == "POST":
        lines.append(f"Content-Length: {len(body)}")
    if token:
        lines.append(f"Authorization: Bearer {token}")
    assert proto.transport is not None
    proto.transport.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
    if body:
        proto.transport.write(body)
    return proto


async def request(url: NodeURL, method: str, target: str, **options: Any) -> tuple[int, dict[str, str], memoryview]:
    """Send one request; return ``(status, headers, body)``.

    ``options`` are those of :func:`open_request` (``body``, ``headers``, ``token``,
    ``timeout``; not ``frame``: the whole body is read).

    Raises
    ------
    NodeUnreachable
        Connection refused, reset or closed before the whole answer, or a protocol violation.
    NodeTimeout
        Nothing arrived for ``timeout`` seconds (connecting included).
    """
    proto = await open_request(url, method, target, **options)
    try:
        await proto.wait_head()
        data = await proto.wait_body()
        return proto.status, proto.headers, data
    finally:
        proto.close()
