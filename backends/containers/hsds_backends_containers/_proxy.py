"""Pass-through of HTTP requests to an upstream service (a real HSDS node), unchanged.

The HSDS front (docs/architecture.md §12) forwards everything it does not serve itself —
writes, metadata, dirty chunks, fallbacks — to the DN behind it, and ``hsds serve`` puts
the service node behind a loopback TCP listener the same way. :class:`Upstream` owns one
connection pool to one upstream (``http://host:port`` or a unix socket) and
:meth:`Upstream.forward` sends a request there and streams the answer back:

- method, path, query string and body are sent as received; the body is read first
  (bounded), so it arrives with its ``Content-Length`` (HSDS's DN compares the bytes it
  read with that header) and can be sent again;
- headers pass through except the hop-by-hop ones (RFC 9110 §7.6.1) and ``Host``, which
  names the upstream;
- the answer's status, reason, headers and bytes come back as they are (no decompression),
  streamed piece by piece.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from typing import Final

import aiohttp
from aiohttp import web
from multidict import CIMultiDict

from ._client import NodeURL

__all__ = ["HOP_BY_HOP", "Upstream", "UpstreamError", "read_body"]

#: Headers that describe one connection, not the message (RFC 9110 §7.6.1), plus those the
#: client library sets itself.
HOP_BY_HOP: Final = frozenset(
    h.lower()
    for h in (
        "Connection", "Keep-Alive", "Proxy-Authenticate", "Proxy-Authorization", "TE", "Trailer",
        "Transfer-Encoding", "Upgrade", "Host", "Content-Length",
    )
)
_PIECE: Final = 256 * 1024


class UpstreamError(ConnectionError):
    """The upstream could not be reached or broke off its answer."""


def _entity_too_large(size: int, limit: int, more: bool) -> Exception:
    return web.HTTPRequestEntityTooLarge(max_size=limit, actual_size=size)


async def read_body(
    request: web.BaseRequest, limit: int, too_big: Callable[[int, int, bool], Exception] = _entity_too_large
) -> bytes | None:
    """Read ``request``'s body (``None`` if it has none), refusing one over ``limit`` bytes before reading it.

    ``too_big(size, limit, more)`` makes the error raised: ``size`` is the declared length, or
    with ``more`` the bytes received when a streamed body passed the limit.

    Raises
    ------
    web.HTTPRequestEntityTooLarge
        By default: the body is larger than ``limit`` (declared, or as it streams in).
    """
    if not request.body_exists:
        return None
    declared = request.content_length
    if declared is not None and declared > limit:
        raise too_big(declared, limit, False)
    body = bytearray()
    async for piece in request.content.iter_any():  # no Content-Length: stop as soon as it is too much
        if len(body) + len(piece) > limit:
            raise too_big(len(body) + len(piece), limit, True)
        body += piece
    return bytes(body)


class Upstream:
    """A connection pool to one upstream HTTP service.

    Parameters
    ----------
    url
        ``http://host:port``, ``http+unix://%2Fpath.sock`` or ``unix:/path.sock``.
    timeout
        Seconds without a byte from the upstream before a forwarded request fails
        (``None``: wait as long as the client does).
    """

    def __init__(self, url: str, *, timeout: float | None = None) -> None:
        self.url = NodeURL.parse(url)
        self.timeout = timeout
        self._session: aiohttp.ClientSession | None = None
        self._base = "http://localhost" if self.url.unix else f"{self.url.scheme}://{self.url.host}:{self.url.port}"
        self._base += self.url.prefix

    def session(self) -> aiohttp.ClientSession:
        """Return the pool (made on first use, on the running loop)."""
        if self._session is None or self._session.closed:
            if self.url.unix:
                connector: aiohttp.BaseConnector = aiohttp.UnixConnector(path=self.url.path, limit=0)
            else:
                connector = aiohttp.TCPConnector(limit=0)
            self._session = aiohttp.ClientSession(
                connector=connector, auto_decompress=False,
                timeout=aiohttp.ClientTimeout(total=None, sock_read=self.timeout, sock_connect=self.timeout),
            )
        return self._session

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def get(self, target: str, *, headers: Mapping[str, str] | None = None) -> tuple[int, bytes]:
        """``GET target`` (path and query) on the upstream; return status and body."""
        try:
            async with self.session().get(self._base + target, headers=headers, allow_redirects=False) as resp:
                return resp.status, await resp.read()
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
            raise UpstreamError(f"upstream {self.url} did not answer GET {target.split('?')[0]}: {type(exc).__name__}: {exc}") from exc

    async def forward(self, request: web.BaseRequest, body: bytes | None) -> web.StreamResponse:
        """Send ``request`` (with ``body``, already read) upstream and stream the answer back to its client.

        Raises
        ------
        UpstreamError
            The upstream could not be reached, or broke off before its answer began (after
            that, the client's connection is closed mid-answer, as the upstream's was).
        """
        headers = CIMultiDict((k, v) for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP)
        url = self._base + request.rel_url.raw_path_qs
        try:
            up = await self.session().request(
                request.method, url, headers=headers, data=body if body is not None else None,
                allow_redirects=False, skip_auto_headers=("Content-Type", "Accept-Encoding", "User-Agent", "Accept"),
            )
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
            raise UpstreamError(f"upstream {self.url} did not answer {request.method} {request.path}: {type(exc).__name__}: {exc}") from exc
        try:
            resp = web.StreamResponse(status=up.status, reason=up.reason)
            for k, v in up.headers.items():
                if k.lower() not in HOP_BY_HOP:
                    resp.headers.add(k, v)
            if up.content_length is not None:
                resp.content_length = up.content_length
            await resp.prepare(request)
            async for piece in up.content.iter_chunked(_PIECE):
                await resp.write(piece)
            await resp.write_eof()
            return resp
        finally:
            up.release()
