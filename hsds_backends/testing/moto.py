"""A local S3 stand-in for tests: ``moto.server`` in a subprocess on loopback.

Requires ``moto[server]`` (a test dependency only). Nothing here touches global state: no
environment variables are set in this process and no botocore patching happens, so the code
under test talks real HTTP to a real server, exactly as it would to minio or AWS.

Example pytest fixtures::

    import pytest
    from hsds_backends.testing.moto import MotoServer

    @pytest.fixture(scope="module")
    def moto_server():
        with MotoServer() as server:
            yield server

    @pytest.fixture
    def s3_config(moto_server):
        moto_server.reset()          # every test starts with no buckets
        return moto_server.config()  # {"aws_s3_gateway": ..., "aws_region": ..., keys...}

    @pytest.mark.asyncio
    async def test_roundtrip(s3_config):
        from hsds_backends.storage import S3Storage
        async with S3Storage.from_config(s3_config) as storage:
            ...
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import tempfile
import urllib.error
import urllib.request
from typing import Any, Final, Self

from .._proc import ChildProcess, ChildStartError

__all__ = ["DUMMY_ACCESS_KEY_ID", "DUMMY_SECRET_ACCESS_KEY", "MotoServer"]

#: Dummy credentials moto accepts; not secrets.
DUMMY_ACCESS_KEY_ID: Final = "testing"
DUMMY_SECRET_ACCESS_KEY: Final = "testing"
#: The same, under the names of both config keys and client arguments.
_DUMMY_KEYS: Final = {"aws_access_key_id": DUMMY_ACCESS_KEY_ID, "aws_secret_access_key": DUMMY_SECRET_ACCESS_KEY}

# Loopback requests must never go through a proxy from the environment.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class MotoServer:
    """Run ``python -m moto.server -H 127.0.0.1 -p <free port>`` for the life of a ``with`` block.

    Parameters
    ----------
    host
        Interface to bind; loopback by default.
    port
        Port, or ``None`` for a free one.
    region
        Region reported by :meth:`config`.
    startup_timeout
        Seconds to wait for the server to answer before giving up.

    Attributes
    ----------
    endpoint_url
        ``http://host:port`` once started.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int | None = None,
        *,
        region: str = "us-east-1",
        startup_timeout: float = 30.0,
    ) -> None:
        self.host = host
        self.port = port
        self.region = region
        self.startup_timeout = startup_timeout
        self._proc: ChildProcess | None = None
        self._log_path: str | None = None

    @property
    def endpoint_url(self) -> str:
        if self._proc is None or self.port is None:
            raise RuntimeError("MotoServer is not running; use it as a context manager or call start()")
        return f"http://{self.host}:{self.port}"

    def __repr__(self) -> str:
        state = f"endpoint_url={self.endpoint_url!r}" if self._proc is not None else "stopped"
        return f"MotoServer({state})"

    def config(self) -> dict[str, Any]:
        """Return HSDS config keys that point :class:`~hsds_backends.storage.S3Storage` here."""
        return {"aws_s3_gateway": self.endpoint_url, "aws_region": self.region, **_DUMMY_KEYS}

    def client_kwargs(self) -> dict[str, Any]:
        """Return keyword arguments for ``session.create_client("s3", **kwargs)``."""
        return {"endpoint_url": self.endpoint_url, "region_name": self.region, **_DUMMY_KEYS}

    def log(self) -> str:
        """Return what the server has written to stdout/stderr so far."""
        if self._log_path is None:
            return ""
        try:
            with open(self._log_path, encoding="utf-8", errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def _request(self, method: str, path: str, timeout: float = 2.0) -> int:
        req = urllib.request.Request(self.endpoint_url + path, method=method, data=b"" if method == "POST" else None)
        try:
            with _OPENER.open(req, timeout=timeout) as resp:
                return int(resp.status)
        except urllib.error.HTTPError as exc:
            return int(exc.code)

    def reset(self) -> None:
        """Delete every bucket and object (moto's ``POST /moto-api/reset``)."""
        status = self._request("POST", "/moto-api/reset")
        if status != 200:
            raise RuntimeError(f"moto reset at {self.endpoint_url} answered HTTP {status}")

    def start(self) -> Self:
        """Start the server and wait until it answers. Returns ``self``."""
        if self._proc is not None:
            return self
        fixed_port = self.port is not None
        last_error = ""
        for _attempt in range(1 if fixed_port else 3):
            if not fixed_port:
                self.port = _free_port(self.host)
            fd, self._log_path = tempfile.mkstemp(prefix="moto-", suffix=".log")
            os.close(fd)
            env = dict(os.environ)
            env.setdefault("PYTHONUNBUFFERED", "1")
            self._proc = ChildProcess(
                [sys.executable, "-m", "moto.server", "-H", self.host, "-p", str(self.port)],
                env=env,
                name=f"moto.server on {self.host}:{self.port}",
                ready_prefix=None,
                log_path=self._log_path,
            )
            self._proc.start()
            try:
                self._proc.wait_until(lambda: self._request("GET", "/moto-api/", timeout=1.0) > 0, self.startup_timeout)
                return self
            except ChildStartError:  # exited (missing moto, or the port was taken meanwhile) or silent
                last_error = self.log()
                self.stop()
        raise RuntimeError(
            f"moto.server did not start on {self.host}:{self.port} within {self.startup_timeout}s;"
            f" is moto[server] installed? Server output:\n{last_error}"
        )

    def stop(self) -> None:
        """Stop the server. Idempotent."""
        proc, self._proc = self._proc, None
        if proc is not None:
            proc.stop(grace=5.0)
        if self._log_path is not None:
            with contextlib.suppress(OSError):
                os.unlink(self._log_path)
            self._log_path = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
