"""Tests for hsds_backends.storage.s3.S3Storage against a real moto HTTP server on loopback."""

from __future__ import annotations

import asyncio
import http.server
import pickle
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hsds_backends.errors import ConfigError, StorageError, StoragePathError
from hsds_backends.storage import S3Storage, storage_from_config
from hsds_backends.testing.moto import MotoServer

pytest.importorskip("aiobotocore")

BUCKET = "hsdstest"
DATA = bytes(range(256)) * 4  # 1024 bytes


@pytest.fixture(scope="module")
def moto() -> Iterator[MotoServer]:
    pytest.importorskip("moto.server")
    with MotoServer() as server:

        async def setup() -> None:
            from aiobotocore.session import get_session

            async with get_session().create_client("s3", **server.client_kwargs()) as client:
                await client.create_bucket(Bucket=BUCKET)
                await client.put_object(Bucket=BUCKET, Key="db/d-1/0_0", Body=DATA)

        asyncio.run(setup())
        yield server


@pytest.fixture
def cfg(moto: MotoServer) -> dict[str, Any]:
    return moto.config()


# -- reads and writes -------------------------------------------------------------------------


@pytest.mark.s3
@pytest.mark.asyncio
async def test_get_whole_and_ranges(cfg: dict[str, Any]) -> None:
    async with S3Storage.from_config(cfg) as s3:
        assert await s3.get(BUCKET, "db/d-1/0_0") == DATA
        assert await s3.get(BUCKET, "/db/d-1/0_0") == DATA  # leading '/' stripped (§1.2)
        assert await s3.get("s3://" + BUCKET, "db/d-1/0_0") == DATA
        assert await s3.get(BUCKET, "db/d-1/0_0", offset=10, size=5) == DATA[10:15]
        assert await s3.get(BUCKET, "db/d-1/0_0", offset=1000) == DATA[1000:]  # to the end
        assert await s3.get(BUCKET, "db/d-1/0_0", size=3) == DATA[:3]
        assert await s3.get(BUCKET, "db/d-1/0_0", offset=1020, size=100) == DATA[1020:]
        assert await s3.get(BUCKET, "db/d-1/0_0", offset=5000, size=10) == b""  # past the end
        assert await s3.get(BUCKET, "db/d-1/0_0", offset=3, size=0) == b""


@pytest.mark.s3
@pytest.mark.asyncio
async def test_missing_key_and_bucket_read_as_none(cfg: dict[str, Any]) -> None:
    async with S3Storage.from_config(cfg) as s3:
        assert await s3.get(BUCKET, "db/d-1/9_9") is None
        assert await s3.get(BUCKET, "db/d-1/9_9", offset=0, size=8) is None
        assert await s3.get(BUCKET, "db/d-1/9_9", size=0) is None
        assert await s3.get("no-such-bucket", "db/d-1/0_0") is None
        assert await s3.exists("no-such-bucket", "db/d-1/0_0") is False


@pytest.mark.s3
@pytest.mark.asyncio
async def test_put_then_get_and_exists(cfg: dict[str, Any]) -> None:
    async with S3Storage.from_config(cfg) as s3:
        assert await s3.exists(BUCKET, "db/d-2/.dataset.json") is False
        await s3.put(BUCKET, "db/d-2/.dataset.json", b'{"id": "d-2"}')
        assert await s3.exists(BUCKET, "db/d-2/.dataset.json") is True
        assert await s3.get(BUCKET, "db/d-2/.dataset.json") == b'{"id": "d-2"}'
        await s3.put(BUCKET, "db/d-2/.dataset.json", memoryview(b"xy"))
        assert await s3.get(BUCKET, "db/d-2/.dataset.json") == b"xy"


@pytest.mark.s3
@pytest.mark.asyncio
async def test_put_to_missing_bucket_raises(cfg: dict[str, Any]) -> None:
    async with S3Storage.from_config(cfg) as s3:
        with pytest.raises(StorageError, match=r"cannot write s3://no-such-bucket/k .*NoSuchBucket"):
            await s3.put("no-such-bucket", "k", b"x")


@pytest.mark.s3
@pytest.mark.asyncio
async def test_storage_from_config_opens_s3(cfg: dict[str, Any]) -> None:
    storage = storage_from_config(cfg)
    assert isinstance(storage, S3Storage) and storage.kind == "s3"
    async with storage:
        assert await storage.get(BUCKET, "db/d-1/0_0", offset=0, size=4) == DATA[:4]


# -- path checks happen before any network I/O ------------------------------------------------


BAD_BUCKETS = ["", "..", "a/b", "s3://", "bad bucket", "bucket\\x", "../etc"]
BAD_KEYS = ["", "/", "../x", "a/../../b", "a/./b", "a\\b", "a\x00b"]


@pytest.mark.asyncio
@pytest.mark.parametrize("bucket", BAD_BUCKETS)
async def test_bad_bucket_rejected_without_io(bucket: str) -> None:
    s3 = NoNetworkS3()
    for call in (s3.get(bucket, "k"), s3.exists(bucket, "k"), s3.put(bucket, "k", b"")):
        with pytest.raises(StoragePathError, match="bucket"):
            await call
    assert s3._client is None


@pytest.mark.asyncio
@pytest.mark.parametrize("key", BAD_KEYS)
async def test_bad_key_rejected_without_io(key: str) -> None:
    s3 = NoNetworkS3()
    for call in (s3.get(BUCKET, key), s3.exists(BUCKET, key), s3.put(BUCKET, key, b"")):
        with pytest.raises(StoragePathError, match="key"):
            await call
    assert s3._client is None


class NoNetworkS3(S3Storage):
    """An S3Storage that fails the test if it ever tries to open a client."""

    def __init__(self) -> None:
        super().__init__("http://127.0.0.1:9", access_key_id="testing", secret_access_key="testing")

    async def _get_client(self) -> Any:
        raise AssertionError("network I/O attempted")


@pytest.mark.asyncio
async def test_negative_range_rejected() -> None:
    with pytest.raises(StorageError, match="invalid byte range"):
        await NoNetworkS3().get(BUCKET, "k", offset=-1, size=2)


# -- errors from the server -------------------------------------------------------------------


class _ErrorHandler(http.server.BaseHTTPRequestHandler):
    """Answers like S3 would: 403 AccessDenied for keys starting 'denied', else 400 InvalidArgument."""

    protocol_version = "HTTP/1.1"  # so put_object's "Expect: 100-continue" gets its answer

    def _answer(self, body: bool) -> None:
        if "/denied" in self.path:
            status, code = 403, "AccessDenied"
        else:
            status, code = 400, "InvalidArgument"
        payload = (
            f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code><Message>{code}</Message></Error>'
        ).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if body:
            self.wfile.write(payload)

    def do_GET(self) -> None:
        self._answer(True)

    def do_PUT(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self._answer(True)

    def do_HEAD(self) -> None:
        self._answer(False)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def error_endpoint() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _ErrorHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.asyncio
async def test_access_denied_says_check_credentials(error_endpoint: str) -> None:
    async with S3Storage(error_endpoint, access_key_id="testing", secret_access_key="testing") as s3:
        with pytest.raises(StorageError, match=r"access denied to s3://hsdstest/denied/k .*check credentials"):
            await s3.get(BUCKET, "denied/k")
        with pytest.raises(StorageError, match=r"access denied to s3://hsdstest/denied/k"):
            await s3.exists(BUCKET, "denied/k")
        with pytest.raises(StorageError, match=r"access denied to s3://hsdstest/denied/k"):
            await s3.put(BUCKET, "denied/k", b"x")


@pytest.mark.asyncio
async def test_other_errors_name_bucket_and_key(error_endpoint: str) -> None:
    async with S3Storage(error_endpoint, access_key_id="testing", secret_access_key="testing") as s3:
        with pytest.raises(StorageError, match=r"cannot read s3://hsdstest/other/k at http://127\.0\.0\.1:\d+"):
            await s3.get(BUCKET, "other/k")


# -- config, secrets, lifecycle ---------------------------------------------------------------


def test_to_config_has_no_secrets() -> None:
    s3 = S3Storage.from_config(
        {
            "aws_s3_gateway": "http://127.0.0.1:9000",
            "aws_region": "eu-west-1",
            "aws_access_key_id": "AKIDEXAMPLE",
            "aws_secret_access_key": "supersecretvalue",
            "aws_session_token": "sessiontokenvalue",
        }
    )
    out = s3.to_config()
    assert out["aws_s3_gateway"] == "http://127.0.0.1:9000"
    assert out["aws_region"] == "eu-west-1"
    text = repr(out) + repr(s3)
    for secret in ("AKIDEXAMPLE", "supersecretvalue", "sessiontokenvalue"):
        assert secret not in text
    assert not any("secret" in k or "token" in k or "access_key" in k for k in out)
    again = S3Storage.from_config(out)  # reopens elsewhere with the AWS credential chain
    assert again.to_config() == out
    with pytest.raises(TypeError, match="cannot be pickled"):
        pickle.dumps(s3)


def test_from_config_defaults_and_xxx_means_unset() -> None:
    s3 = S3Storage.from_config({"aws_access_key_id": "xxx", "aws_secret_access_key": "xxx"})
    assert s3.endpoint_url is None
    assert s3.region == "us-east-1"
    assert s3._S3Storage__credentials == (None, None, None)  # type: ignore[attr-defined]


def test_partial_credentials_rejected() -> None:
    with pytest.raises(ConfigError, match="secret_access_key is not set"):
        S3Storage.from_config({"aws_access_key_id": "AKID", "aws_secret_access_key": "xxx"})
    with pytest.raises(ConfigError, match="access_key_id is not set"):
        S3Storage(secret_access_key="s")


@pytest.mark.s3
@pytest.mark.asyncio
async def test_close_twice_and_before_use(cfg: dict[str, Any]) -> None:
    s3 = S3Storage.from_config(cfg)
    await s3.aclose()  # never opened
    assert await s3.exists(BUCKET, "db/d-1/0_0")
    await s3.aclose()
    await s3.aclose()
    assert await s3.get(BUCKET, "db/d-1/0_0", offset=0, size=1) == DATA[:1]  # reopens lazily
    await s3.aclose()


@pytest.mark.s3
@pytest.mark.asyncio
async def test_one_client_reused_under_concurrency(cfg: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    from aiobotocore.session import AioSession

    created = []
    original = AioSession.create_client

    def counting(self: AioSession, *args: Any, **kwargs: Any) -> Any:
        created.append(args)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(AioSession, "create_client", counting)
    async with S3Storage.from_config(cfg) as s3:
        results = await asyncio.gather(*(s3.get(BUCKET, "db/d-1/0_0", offset=i, size=1) for i in range(20)))
        assert results == [DATA[i : i + 1] for i in range(20)]
        first = s3._client
        await s3.exists(BUCKET, "db/d-1/0_0")
        assert s3._client is first
    assert len(created) == 1


@pytest.mark.s3
def test_used_from_two_event_loops(cfg: dict[str, Any]) -> None:
    s3 = S3Storage.from_config(cfg)

    async def read() -> bytes | None:
        return await s3.get(BUCKET, "db/d-1/0_0", offset=0, size=2)

    assert asyncio.run(read()) == DATA[:2]
    assert asyncio.run(read()) == DATA[:2]  # new loop: the client is recreated on it
    asyncio.run(s3.aclose())
    asyncio.run(s3.aclose())


@pytest.mark.s3
def test_moto_server_helpers(moto: MotoServer) -> None:
    assert moto.endpoint_url.startswith("http://127.0.0.1:")
    assert moto.config()["aws_access_key_id"] == "testing"
    with pytest.raises(RuntimeError, match="not running"):
        _ = MotoServer().endpoint_url
    # a second, private server: reset() empties it and stop() is idempotent
    with MotoServer() as other:
        assert other.endpoint_url != moto.endpoint_url
        assert "MotoServer(endpoint_url=" in repr(other)

        async def roundtrip() -> tuple[bytes | None, bytes | None]:
            from aiobotocore.session import get_session

            async with get_session().create_client("s3", **other.client_kwargs()) as client:
                await client.create_bucket(Bucket="scratch")
            async with S3Storage.from_config(other.config()) as s3:
                await s3.put("scratch", "k", b"v")
                before = await s3.get("scratch", "k")
                other.reset()
                return before, await s3.get("scratch", "k")

        assert asyncio.run(roundtrip()) == (b"v", None)
        other.stop()
        other.stop()
    assert repr(other) == "MotoServer(stopped)"


# -- no cloud SDK at import time --------------------------------------------------------------


def test_import_does_not_load_aiobotocore() -> None:
    code = (
        "import sys\n"
        "import hsds_backends, hsds_backends.storage, hsds_backends.config, hsds_backends.storage.s3\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('aiobotocore', 'botocore', 'boto3'))\n"
        "assert not bad, bad\n"
    )
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run(
        [sys.executable, "-c", code], check=False, cwd=root, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
