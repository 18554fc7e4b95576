"""The core's shared machinery: the async helpers (_aio) and child processes (_proc)."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from hsds_backends._aio import ResultQueue, cancel_and_wait, map_unordered, wait_bounded
from hsds_backends._proc import ChildProcess, ChildStartError, loopback_socket

# ----------------------------------------------------------------------------- _aio


async def test_result_queue_drains_count_then_raises_the_first_error() -> None:
    q: ResultQueue[int] = ResultQueue()
    for i in range(3):
        q.put(i)
    assert [x async for x in q.drain(3)] == [0, 1, 2]
    q.put(7)
    q.fail(ValueError("first"))
    q.fail(KeyError("second"))  # only the first error is kept
    assert q.failed
    got = []
    with pytest.raises(ValueError, match="first"):
        async for x in q.drain(3):
            got.append(x)
    assert got == [7]


async def test_result_queue_accepts_results_from_threads() -> None:
    q: ResultQueue[int] = ResultQueue()
    q.bind()
    loop = asyncio.get_running_loop()
    await asyncio.gather(*(loop.run_in_executor(None, q.put_threadsafe, i) for i in range(5)))
    assert sorted([x async for x in q.drain(5)]) == [0, 1, 2, 3, 4]


async def test_cancel_and_wait_retrieves_every_outcome_and_is_bounded(caplog: pytest.LogCaptureFixture) -> None:
    async def fails() -> None:
        raise RuntimeError("finished beside the one that failed")

    async def sleeps() -> None:
        await asyncio.sleep(10)

    async def stubborn() -> None:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            await asyncio.sleep(0.3)  # a remote cancel whose answer is slow

    done = asyncio.ensure_future(fails())
    await asyncio.sleep(0)
    assert await cancel_and_wait([done, asyncio.ensure_future(sleeps())], timeout=1.0)
    slow = asyncio.ensure_future(stubborn())
    await asyncio.sleep(0)
    t0 = time.perf_counter()
    assert not await cancel_and_wait([slow], timeout=0.05, what="batch(es)")
    assert time.perf_counter() - t0 < 0.25
    assert "1 batch(es) did not stop within" in caplog.text
    await asyncio.sleep(0.4)  # it finishes in the background, its outcome retrieved (no warning at GC)
    assert slow.done()


async def test_wait_bounded_does_not_cancel() -> None:
    fut = asyncio.ensure_future(asyncio.sleep(0.2, result=5))
    assert not await wait_bounded(fut, 0.01)
    assert not fut.cancelled()
    assert await fut == 5


async def test_map_unordered_bounds_concurrency_and_cancels_on_error() -> None:
    running = most = 0
    cancelled: list[int] = []

    async def work(i: int) -> int:
        nonlocal running, most
        running += 1
        most = max(most, running)
        try:
            await asyncio.sleep(0.01 if i != 5 else 0.0)
            if i == 5:
                raise KeyError(i)
            return i * i
        except asyncio.CancelledError:
            cancelled.append(i)
            raise
        finally:
            running -= 1

    got = dict([x async for x in map_unordered(work, list(range(5)), 2)])
    assert got == {i: i * i for i in range(5)} and most == 2
    with pytest.raises(KeyError):
        async for _ in map_unordered(work, list(range(20)), 4):
            pass
    assert running == 0 and cancelled  # the calls still running were cancelled and awaited


# ----------------------------------------------------------------------------- _proc

_SERVER = textwrap.dedent(
    """
    import signal, sys, time
    signal.signal(signal.SIGTERM, lambda *a: (print("bye", file=sys.stderr, flush=True), sys.exit(3)))
    print("starting", flush=True)
    print("READY http://127.0.0.1:1234", flush=True)
    while True:
        time.sleep(0.05)
    """
)


def test_child_process_ready_line_and_graceful_stop(tmp_path: Path) -> None:
    log = tmp_path / "child.log"
    child = ChildProcess([sys.executable, "-c", _SERVER], name="test server", log_path=str(log))
    assert child.start(timeout=20) == "http://127.0.0.1:1234"
    assert child.alive and child.pid
    assert child.stop(grace=5) == 3  # its SIGTERM handler ran
    assert "bye" in log.read_text() and not child.alive


async def test_child_process_start_failures_name_the_child_and_quote_its_output(tmp_path: Path) -> None:
    dies = ChildProcess([sys.executable, "-c", "print('no such bucket', flush=True); raise SystemExit(2)"], name="local DN 0")
    with pytest.raises(ChildStartError, match=r"(?s)local DN 0 exited \(code 2\) before it was ready:\nno such bucket"):
        await dies.astart(timeout=20)
    silent = ChildProcess([sys.executable, "-c", "import time; time.sleep(30)"], name="quiet one")
    t0 = time.monotonic()
    with pytest.raises(ChildStartError, match=r"quiet one did not get ready within 0.5 s \(no output\)"):
        silent.start(timeout=0.5)
    assert time.monotonic() - t0 < 5 and not silent.alive  # killed, not left behind


def test_child_process_stop_escalates_to_sigkill() -> None:
    code = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('READY x', flush=True); time.sleep(30)"
    child = ChildProcess([sys.executable, "-c", code], name="deaf")
    child.start(timeout=20)
    t0 = time.monotonic()
    assert child.stop(grace=0.3) == -signal.SIGKILL
    assert time.monotonic() - t0 < 3


def test_children_die_with_their_parent(tmp_path: Path) -> None:
    """The one parent-death mechanism: a SIGKILLed parent's child gets SIGTERM from the kernel."""
    parent_code = textwrap.dedent(
        f"""
        import sys, time
        from hsds_backends._proc import ChildProcess
        c = ChildProcess([sys.executable, "-c", {_SERVER!r}], name="grandchild")
        c.start(timeout=20)
        print(c.pid, flush=True)
        time.sleep(60)
        """
    )
    parent = subprocess.Popen([sys.executable, "-c", parent_code], stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout is not None
        pid = int(parent.stdout.readline())
        os.kill(pid, 0)  # alive
        parent.kill()
        parent.wait(5)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.05)
        else:
            os.kill(pid, signal.SIGKILL)
            pytest.fail(f"child {pid} outlived its SIGKILLed parent")
    finally:
        parent.kill()


def test_loopback_socket_binds_loopback_only() -> None:
    sock = loopback_socket()
    try:
        host, port = sock.getsockname()[:2]
        assert host == "127.0.0.1" and port > 0
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            pass
    finally:
        sock.close()
