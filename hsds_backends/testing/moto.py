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
        from hsds_backends._s3 import S3Storage
        async with S3Storage.from_config(s3_config) as storage:
            ...
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from typing import IO, Any, Final, Self

__all__ = ["DUMMY_ACCESS_KEY_ID", "DUMMY_SECRET_ACCESS_KEY", "MotoServer"]

#: Dummy credentials moto accepts; not secrets.
DUMMY_ACCESS_KEY_ID: Final = "testing"
DUMMY_SECRET_ACCESS_KEY: Final = "testing"

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
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def endpoint_url(self) -> str:
        if self._proc is None or self.port is None:
            raise RuntimeError("MotoServer is not running; use it as a context manager or call start()")
        return f"http://{self.host}:{self.port}"

    def __repr__(self) -> str:
        state = f"endpoint_url={self.endpoint_url!r}" if self._proc is not None else "stopped"
        return f"MotoServer({state})"

    def config(self) -> dict[str, Any]:
        """Return HSDS config keys that point :class:`~hsds_backends._s3.S3Storage` here."""
        return {
            "aws_s3_gateway": self.endpoint_url,
            "aws_region": self.region,
            "aws_access_key_id": DUMMY_ACCESS_KEY_ID,
            "aws_secret_access_key": DUMMY_SECRET_ACCESS_KEY,
        }

    def client_kwargs(self) -> dict[str, Any]:
        """Return keyword arguments for ``session.create_client("s3", **kwargs)``."""
        return {
            "endpoint_url": self.endpoint_url,
            "region_name": self.region,
            "aws_access_key_id": DUMMY_ACCESS_KEY_ID,
            "aws_secret_access_key": DUMMY_SECRET_ACCESS_KEY,
        }

    def log(self) -> str:
        """Return what the server has written to stdout/stderr so far."""
        if self._log is None:
            return ""
        self._log.flush()
        self._log.seek(0)
        data = self._log.read()
        self._log.seek(0, os.SEEK_END)
        return data.decode("utf-8", "replace")

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
            self._log = tempfile.TemporaryFile()  # noqa: SIM115 - lives as long as the server; stop() closes it
            env = dict(os.environ)
            env.setdefault("PYTHONUNBUFFERED", "1")
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", self.host, "-p", str(self.port)],
                stdin=subprocess.DEVNULL,
                stdout=self._log,
                stderr=subprocess.STDOUT,
                env=env,
            )
            if self._wait_ready():
                return self
            last_error = self.log()
            self.stop()
        raise RuntimeError(
            f"moto.server did not start on {self.host}:{self.port} within {self.startup_timeout}s;"
            f" is moto[server] installed? Server output:\n{last_error}"
        )

    def _wait_ready(self) -> bool:
        assert self._proc is not None
        deadline = time.monotonic() + self.startup_timeout
        delay = 0.02
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                return False  # exited: missing moto, or the port was taken meanwhile
            try:
                self._request("GET", "/moto-api/", timeout=1.0)
                return True
            except (OSError, urllib.error.URLError):
                time.sleep(delay)
                delay = min(delay * 2, 0.2)
        return False

    def stop(self) -> None:
        """Stop the server. Idempotent."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        if self._log is not None:
            with contextlib.suppress(OSError):
                self._log.close()
            self._log = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
