"""Finding 9 (DN part): ``/batch`` is bounded in bytes, tasks and coroutines.

A body over ``dn_batch_bytes_limit`` is a 413 from its ``Content-Length`` before a byte of
it is read, or as soon as a streamed (chunked) body passes the limit; a batch over
``dn_batch_tasks_limit`` tasks, or with more JSON objects than so many tasks need, is a
413 before its tasks are built; a batch of thousands of tasks runs on a bounded number of
coroutines. The client splits a batch larger than the DNs' default bounds, so honest reads
are unchanged.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

pytest.importorskip("hsds_backends_containers")

from _dn_harness import CHUNK0, DN, batch, clean_env, json_message, serving, start_dn, write_one_dataset  # noqa: E402

import hsds_backends as hb  # noqa: E402
import hsds_backends_containers._batch as batch_mod  # noqa: E402
from hsds_backends._proc import loopback_socket  # noqa: E402
from hsds_backends.ids import chunk_id  # noqa: E402
from hsds_backends.storage import PosixStorage  # noqa: E402
from hsds_backends_containers.backend import ContainersBackend  # noqa: E402
from hsds_backends_containers.service import DataNode  # noqa: E402

JSON = {"Content-Type": "application/json"}
ARR = np.arange(100_000, dtype="<i4") * 3
MB = 1024


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return write_one_dataset(tmp_path_factory.mktemp("root"), "/home/b/data.h5", "/v", ARR, (10_000,))


@pytest.fixture(scope="module")
def dn(data: dict[str, Any]) -> Iterator[DN]:
    yield from serving("--root-dir", data["root"])


def _raw(dn: DN, head: bytes, body_parts: list[bytes], timeout: float = 10.0) -> tuple[int, bytes, float, bytes]:
    """Send ``head`` then ``body_parts`` on a raw connection, stopping when the DN answers.

    Returns the status, the answer's body, the seconds it took and its headers.
    """
    t0 = time.monotonic()
    with socket.create_connection((dn.host, dn.port), timeout=timeout) as s:
        s.sendall(head)
        s.setblocking(False)
        answer = b""

        def take() -> None:
            nonlocal answer
            try:
                answer += s.recv(65536)
            except (BlockingIOError, ConnectionResetError):
                pass

        for part in body_parts:
            take()
            if answer:
                break  # the DN answered already: stop sending
            try:
                s.sendall(part)
            except (BlockingIOError, BrokenPipeError, ConnectionResetError):
                break
        s.setblocking(True)
        while b"\r\n\r\n" not in answer or len(answer.split(b"\r\n\r\n", 1)[1]) < _length(answer):
            got = s.recv(65536)
            if not got:
                break
            answer += got
    took = time.monotonic() - t0
    headers, _, body = answer.partition(b"\r\n\r\n")
    return int(headers.split(b" ", 2)[1]), body, took, headers


def _length(answer: bytes) -> int:
    for line in answer.split(b"\r\n\r\n", 1)[0].split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return int(line.split(b":")[1])
    return 1 << 30


def test_content_length_over_the_limit_is_refused_unread(dn: DN) -> None:
    """Finding 9: Content-Length 512 MiB on /batch → 413 at once, with no body sent and no memory taken."""
    before = dn.proc_status_kb("VmHWM")
    head = (
        f"POST /batch HTTP/1.1\r\nHost: {dn.loopback_host}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {512 * 1024 * 1024}\r\n\r\n"
    ).encode()
    status, body, took, headers = _raw(dn, head, [])
    assert status == 413 and took < 2.0
    assert b"Connection: close" in headers
    assert json_message(body) == (
        "request body of 536870912 bytes on /batch exceeds dn_batch_bytes_limit (67108864 bytes); "
        "send fewer tasks or points per request, or raise config dn_batch_bytes_limit"
    )
    assert dn.proc_status_kb("VmHWM") - before < 20 * MB


def test_streamed_body_over_the_limit_is_cut_off(data: dict[str, Any]) -> None:
    """Finding 9: a chunked body is read only up to dn_batch_bytes_limit (here 1m from the environment), then a 413."""
    node = start_dn("--root-dir", data["root"], env=clean_env(HSDS_BACKENDS_DN_BATCH_BYTES_LIMIT="1m"))
    try:
        head = f"POST /batch HTTP/1.1\r\nHost: {node.loopback_host}\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n".encode()
        piece = b" " * 65536
        parts = [b"%x\r\n%s\r\n" % (len(piece), piece)] * 40 + [b"0\r\n\r\n"]  # 2.5 MiB
        status, body, _, _ = _raw(node, head, parts)
        assert status == 413
        assert json_message(body) == (
            "request body of more than 1048576 bytes on /batch exceeds dn_batch_bytes_limit (1048576 bytes); "
            "send fewer tasks or points per request, or raise config dn_batch_bytes_limit"
        )
        # the same bound holds on POST /chunks (a points body)
        status, _, raw = node.request("POST", f"/chunks/{CHUNK0}?bucket=hsdstest&count=200000", body=b"\x00" * (1600000),
                                      headers={"Content-Type": "application/octet-stream"})
        assert status == 413 and "exceeds dn_batch_bytes_limit (1048576 bytes)" in json_message(raw)
    finally:
        node.stop()


def test_too_many_tasks_or_json_objects_are_refused(dn: DN, data: dict[str, Any]) -> None:
    """Finding 9: 4097 tasks (default dn_batch_tasks_limit 4096) and a body of 300,000 '{}' are 413s before any task is built."""
    meta = data["meta"]
    task = {"chunk_id": chunk_id(meta.id, (0,)), "bucket": "hsdstest", "select": "[0:1]"}
    status, _, raw = dn.request("POST", "/batch", body=batch(meta.wire_text(), *[task] * 4097), headers=JSON)
    assert status == 413
    assert json_message(raw) == (
        "batch holds 4097 tasks, more than dn_batch_tasks_limit (4096); "
        "send fewer tasks per batch (client dn_batch_size) or raise config dn_batch_tasks_limit"
    )
    status, _, raw = dn.request("POST", "/batch", body=batch(meta.wire_text(), *[task] * 4096), headers=JSON)
    assert status == 200  # the limit itself is fine
    bomb = b'{"dsets": [], "tasks": [' + b",".join([b"{}"] * 300_000) + b"]}"
    before = dn.proc_status_kb("VmHWM")
    status, _, raw = dn.request("POST", "/batch", body=bomb, headers=JSON)
    assert status == 413
    assert json_message(raw) == (
        "batch body holds up to 300003 JSON objects and lists, more than 64 per task of dn_batch_tasks_limit (4096); "
        "send fewer tasks or raise config dn_batch_tasks_limit"
    )
    assert dn.proc_status_kb("VmHWM") - before < 20 * MB
    status, _, raw = dn.request("POST", "/batch", body=b"[" * 200_000 + b"]" * 200_000, headers=JSON)
    assert status in (400, 413) and "Traceback" not in raw.decode()


def test_a_big_batch_runs_on_a_bounded_number_of_coroutines(data: dict[str, Any]) -> None:
    """Finding 9: 3000 tasks in one batch never make more than 2 x workers coroutines (it used to be one per task)."""
    meta = data["meta"]
    task = {"chunk_id": chunk_id(meta.id, (2,)), "bucket": "hsdstest", "select": "[5:9]"}
    body = batch(meta.wire_text(), *[task] * 3000)

    async def go() -> tuple[int, int, bytes]:
        node = DataNode(PosixStorage(data["root"]), workers=2, default_bucket="hsdstest", faults=True)
        node.faults.delay_ms = 0.2  # tasks stay in flight a little
        from aiohttp import web

        runner = web.AppRunner(node.app(), access_log=None)
        await runner.setup()
        sock = loopback_socket(0)
        site = web.SockSite(runner, sock)
        await site.start()
        port = sock.getsockname()[1]
        base = len(asyncio.all_tasks())
        peak = 0
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(f"POST /batch HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
            answer = asyncio.ensure_future(reader.read())
            while not answer.done():
                peak = max(peak, len(asyncio.all_tasks()))
                await asyncio.sleep(0.001)
            writer.close()
            return base, peak, answer.result()
        finally:
            await runner.cleanup()

    base, peak, answer = asyncio.run(go())
    assert answer.startswith(b"HTTP/1.1 200") or answer.startswith(b"HTTP/1.0 200"), answer[:200]
    frames_bytes = answer.split(b"\r\n\r\n", 1)[1]
    assert frames_bytes.count(ARR[20005:20009].tobytes()) == 3000
    # the test's own tasks, the server's request handler, and the batch's 2 x 2 runners
    assert peak - base <= 4 + 4, (base, peak)


def test_the_client_splits_batches_over_the_dn_bounds(data: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    """Finding 9: a points read whose batch body would pass the DNs' byte bound goes as several requests, same answer."""
    from hsds_backends.errors import LimitError

    pts = np.random.default_rng(7).integers(0, ARR.size, 20_000)  # 10 chunks of ~2000 points: ~21 KB of base64 each
    be = ContainersBackend({"root_dir": data["root"], "dn_count": 1, "dn_batch_bytes_limit": "32k"})

    async def go() -> tuple[np.ndarray[Any, Any], list[dict[str, Any]]]:
        async with hb.Reader({"root_dir": data["root"]}) as reader:
            dset = await (await reader.open("/home/b/data.h5")).get("/v")
            try:
                info = await be.info()
                # the client keeps batches under the default bound (64 MiB): this DN's 32 KiB refuses the batch
                with pytest.raises(LimitError, match=r"request body of \d+ bytes on /batch exceeds dn_batch_bytes_limit \(32768 bytes\)"):
                    await dset.read(pts, backend=be)
                # a client whose bound is the DN's splits the batch
                monkeypatch.setattr(batch_mod, "BATCH_BYTES_LIMIT", 32 * 1024)
                return await dset.read(pts, backend=be), info
            finally:
                await be.aclose()

    out, info = asyncio.run(go())
    assert info[0]["limits"] == {"chunk_bytes_limit": 256 * 1024**2, "dn_batch_tasks_limit": 4096, "dn_batch_bytes_limit": 32 * 1024}
    assert out.tobytes() == ARR[pts].tobytes()
