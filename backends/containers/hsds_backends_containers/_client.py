"""A small HTTP/1.0 client for DNs that receives result bytes in place.

Results are received by an :class:`asyncio.BufferedProtocol`, which hands the
kernel each result's own buffer (``recv_into``): a chunk's bytes are copied
once from the socket into the buffer the caller places into its output.
Nothing is read in small pieces and joined, decoded from base64 or copied
again; only frame headers and the HTTP head pass through a small staging
buffer.

- :func:`stream_batch` posts a batch (:mod:`._wire`) and yields its frames as
  they arrive.
- :func:`request` does one plain request (``GET /info``, HSDS-style
  ``GET``/``POST /chunks/{id}``); a body with ``Content-Length`` is received in
  place too.

Requests are HTTP/1.0, so a DN answers without chunked transfer encoding and
ends a streamed body by closing the connection (one connection per request;
on unix sockets and loopback that costs well under a millisecond). No
proxies, no redirects: DNs are internal services.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import urllib.parse
from collections import deque
from collections.abc import AsyncGenerator, Mapping
from dataclasses import dataclass
from typing import Any, Final

import numpy as np

from ._wire import BATCH_PATH, FRAME

__all__ = ["HttpStatusError", "NodeTimeout", "NodeURL", "NodeUnreachable", "request", "stream_batch"]

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
            if path.startswith("//"):
                path = path[2:]
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


class HttpStatusError(Exception):
    """The DN answered a batch with a non-200 status."""

    def __init__(self, status: int, body: bytes) -> None:
        self.status = status
        self.body = body
        super().__init__(f"HTTP {status}: {body[:300]!r}")

    def json(self) -> dict[str, Any] | None:
        return json_body(self.body)


def json_body(body: bytes | bytearray | memoryview) -> dict[str, Any] | None:
    """Return ``body`` parsed as a JSON object, or ``None``."""
    try:
        doc = json.loads(bytes(body))
    except (ValueError, UnicodeDecodeError):
        return None
    return doc if isinstance(doc, dict) else None


class _Protocol(asyncio.BufferedProtocol):
    """Parses one HTTP/1.0 response: the head, then frames (``frames=True`` and 200) or a body.

    Payloads (frame payloads, and bodies whose length is known) land in their
    own numpy buffers through ``recv_into``; an idle timer fails the response
    when nothing arrives for ``timeout`` seconds.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, timeout: float, *, frames: bool) -> None:
        self._loop = loop
        self._timeout = timeout
        self._want_frames = frames
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
        self.transport = transport  # type: ignore[assignment]

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
            if self._want_frames and self.status == 200:
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
        hs = FRAME.size
        while self._dest is None and self._end - self._start >= hs:
            j, status, n, fetched, decoded = FRAME.unpack_from(self._stage, self._start)
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


async def _open(
    url: NodeURL, method: str, target: str, body: bytes, headers: Mapping[str, str], token: str | None, timeout: float, *, frames: bool
) -> _Protocol:
    loop = asyncio.get_running_loop()
    proto = _Protocol(loop, timeout, frames=frames)
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
    lines += [f"{k}: {v}" for k, v in headers.items()]
    if body or method == "POST":
        lines.append(f"Content-Length: {len(body)}")
    if token:
        lines.append(f"Authorization: Bearer {token}")
    assert proto.transport is not None
    proto.transport.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
    if body:
        proto.transport.write(body)
    return proto


async def request(
    url: NodeURL,
    method: str,
    target: str,
    *,
    body: bytes = b"",
    headers: Mapping[str, str] | None = None,
    token: str | None = None,
    timeout: float = 30.0,
) -> tuple[int, dict[str, str], memoryview]:
    """Send one request; return ``(status, headers, body)``.

    Raises
    ------
    NodeUnreachable, NodeTimeout
        As :func:`stream_batch`.
    """
    proto = await _open(url, method, target, body, headers or {}, token, timeout, frames=False)
    try:
        await proto.wait_head()
        data = await proto.wait_body()
        return proto.status, proto.headers, data
    finally:
        proto.close()


async def stream_batch(
    url: NodeURL, body: bytes, *, expected: int, token: str | None, timeout: float
) -> AsyncGenerator[tuple[int, int, memoryview, int, int], None]:
    """POST a batch to ``url``; yield ``(index, status, payload, fetched, decoded)`` frames as they arrive.

    Raises
    ------
    NodeUnreachable
        Connection refused, reset or closed before ``expected`` frames, or a protocol violation.
    NodeTimeout
        Nothing arrived for ``timeout`` seconds (connecting included).
    HttpStatusError
        A non-200 answer (its body attached).
    """
    headers = {"Content-Type": "application/json", "Accept": "application/x-hsds-backends-frames"}
    proto = await _open(url, "POST", BATCH_PATH, body, headers, token, timeout, frames=True)
    try:
        await proto.wait_head()
        if proto.status != 200:
            raise HttpStatusError(proto.status, bytes(await proto.wait_body()))
        for got in range(expected):
            frame = await proto.next_frame()
            if frame is None:
                raise NodeUnreachable(f"the stream ended after {got} of {expected} results")
            yield frame
    finally:
        proto.close()
