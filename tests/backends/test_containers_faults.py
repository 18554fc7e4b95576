"""Faults against real DN processes: a DN killed mid-read, 503s, a DN that never answers, tokens.

The DNs are the backend's embedded ``hsds-backends dn serve`` processes on unix
sockets, started with ``HSDS_BACKENDS_DN_FAULTS=1`` so that ``POST /faults`` can
make one of them slow, answer 503 or hang. Every read that is expected to
succeed is compared byte for byte with the numpy array it was written from;
every expected failure checks the error class, the node it names and the time
it took.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

pytest.importorskip("hsds_backends_containers")

import hsds_backends as hb  # noqa: E402
from hsds_backends.errors import BackendError, BackendTimeoutError  # noqa: E402
from hsds_backends.storage import PosixStorage  # noqa: E402
from hsds_backends.writer import Writer  # noqa: E402
from hsds_backends_containers._client import NodeURL, request  # noqa: E402
from hsds_backends_containers.backend import ContainersBackend  # noqa: E402

DOMAIN = "/home/faults/data.h5"
ARR = ((np.arange(480 * 400, dtype="<i4").reshape(480, 400) * 7) ^ 0x5A5A).astype("<i4")
CHUNKS = (40, 50)  # 12 x 8 = 96 chunks


@pytest.fixture(scope="module")
def storage_cfg(tmp_path_factory: pytest.TempPathFactory, runner: asyncio.Runner) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("faults")

    async def write() -> None:
        w = Writer(PosixStorage(root), "hsdstest")
        await w.create_dataset(DOMAIN, "/grid", ARR, chunks=CHUNKS, filters=["shuffle", "gzip"])

    runner.run(write())
    return {"root_dir": str(root), "bucket_name": "hsdstest"}


#: Client settings of the fault tests: one batch per DN in flight (deterministic counts), fast backoff.
FAST = {"max_tasks_per_node_per_request": 1, "dn_max_retries": 2, "dn_retry_backoff_exp": 0.01, "timeout": 1.0, "dn_probe_interval": 0.05}


@pytest.fixture(scope="module")
def group(storage_cfg: dict[str, Any], runner: asyncio.Runner) -> Iterator[ContainersBackend]:
    """Two embedded DNs with fault injection enabled."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HSDS_BACKENDS_DN_FAULTS", "1")
        be = ContainersBackend({**storage_cfg, **FAST, "dn_count": 2})
        runner.run(be.start())
    yield be
    runner.run(be.aclose())


@pytest.fixture
def dns(group: ContainersBackend, runner: asyncio.Runner) -> Iterator[ContainersBackend]:
    """The group with no faults set, before and after each test."""
    runner.run(_clear(group))
    yield group
    runner.run(_clear(group))


async def _fault(be: ContainersBackend, node: int, **fault: Any) -> None:
    url = NodeURL.parse(be.nodes[node]["url"])
    status, _, body = await request(url, "POST", "/faults", body=json.dumps(fault).encode(), headers={"Content-Type": "application/json"}, token=be.token)
    assert status == 200, bytes(body)


async def _clear(be: ContainersBackend) -> None:
    for n in be.nodes:
        if n["up"] and be._local is not None and be._local.nodes[n["number"]].alive:
            await _fault(be, n["number"])


def _read(be: Backend_t, runner: asyncio.Runner, cfg: dict[str, Any], sel: Any = None, **run: Any) -> np.ndarray[Any, Any]:
    async def go() -> np.ndarray[Any, Any]:
        async with hb.Reader(cfg) as reader:
            dset = await (await reader.open(DOMAIN)).get("/grid")
            res = await reader.run(dset.plan(sel), backend=be, **run)
            return res.data

    return runner.run(go())


Backend_t = ContainersBackend


def _on_node(be: ContainersBackend, node: int) -> int:
    """Chunks of the grid that HSDS's partitioning gives to DN ``node`` (docs/hsds-format.md §4.5)."""
    from hsds_backends.ids import chunk_id

    dset_id = _dset_id(be)
    return sum(be.node_for(chunk_id(dset_id, (i, j))) == node for i in range(12) for j in range(8))


_DSET: dict[str, str] = {}


def _dset_id(be: ContainersBackend) -> str:
    if "id" not in _DSET:
        cfg = {"root_dir": be.config["root_dir"], "bucket_name": "hsdstest"}

        async def go() -> str:
            async with hb.Reader(cfg) as reader:
                return str((await (await reader.open(DOMAIN)).get("/grid")).meta.id)

        _DSET["id"] = asyncio.run(go())
    return _DSET["id"]


# ----------------------------------------------------------------------------- 503


def test_503_is_retried_on_the_same_dn(dns: ContainersBackend, runner: asyncio.Runner, storage_cfg: dict[str, Any]) -> None:
    runner.run(_fault(dns, 0, status=503, count=1))
    out = _read(dns, runner, storage_cfg)
    assert out.tobytes() == ARR.tobytes()
    st = dns.last_stats
    assert st is not None and (st.retries, st.reroutes, st.node_failures) == (1, 0, 0)
    assert len(st.per_node) == 2


def test_503_is_retried_then_rerouted(dns: ContainersBackend, runner: asyncio.Runner, storage_cfg: dict[str, Any]) -> None:
    on0 = _on_node(dns, 0)
    runner.run(_fault(dns, 0, status=503, count=3))  # the first try and both retries fail
    out = _read(dns, runner, storage_cfg)
    assert out.tobytes() == ARR.tobytes()
    st = dns.last_stats
    assert st is not None
    assert st.retries == 2 and st.node_failures == 1 and st.reroutes == on0 > 0
    assert list(st.per_node.values()) == [96]  # all answered by DN 1
    assert [n["up"] for n in dns.nodes] == [False, True]
    # the down DN is probed before it gets work again; it answers, so it is used again
    time.sleep(0.06)
    out = _read(dns, runner, storage_cfg, np.s_[::3, 7:390:11])
    assert out.tobytes() == ARR[::3, 7:390:11].tobytes()
    assert dns.last_stats is not None and dns.last_stats.probes == 1 and len(dns.last_stats.per_node) == 2


def test_per_request_stats_reach_the_reader(dns: ContainersBackend, runner: asyncio.Runner, storage_cfg: dict[str, Any]) -> None:
    runner.run(_fault(dns, 1, status=503, count=1))

    async def go() -> Any:
        async with hb.Reader(storage_cfg) as reader:
            dset = await (await reader.open(DOMAIN)).get("/grid")
            return await dset.read_result(np.s_[:, :], backend=dns)

    res = runner.run(go())
    assert res.data.tobytes() == ARR.tobytes()
    # retries are a common figure of the request (RequestStats.retries); this read's one is the containers
    # backend's, and the backend's own figures reach the request under extra["containers"]
    st = dns.last_stats
    assert st is not None and st.retries == 1
    assert res.stats.retries == 1 and res.stats.extra["containers"]["retries"] == 1
    assert res.stats.extra["containers"]["requests"] == st.requests
    assert res.stats.bytes_decoded > 0 or res.stats.bytes_fetched == 0  # cached chunks report nothing decoded


# ----------------------------------------------------------------------------- a DN that never answers


def test_silent_dn_times_out_and_its_chunks_move(dns: ContainersBackend, runner: asyncio.Runner, storage_cfg: dict[str, Any]) -> None:
    on1 = _on_node(dns, 1)
    runner.run(_fault(dns, 1, hang=True))
    t0 = time.monotonic()
    out = _read(dns, runner, storage_cfg)
    took = time.monotonic() - t0
    assert out.tobytes() == ARR.tobytes()
    st = dns.last_stats
    assert st is not None and st.timeouts == 1 and st.reroutes == on1 and st.node_failures == 1
    assert 1.0 <= took < 4.0, took  # one timeout (1 s), then DN 0 reads the rest


def test_silent_only_dn_is_a_timeout_error_naming_it(dns: ContainersBackend, runner: asyncio.Runner, storage_cfg: dict[str, Any]) -> None:
    url = dns.nodes[0]["url"]
    # embedded DNs always have a token (generated when dn_token is not set)
    lone = ContainersBackend({**storage_cfg, **FAST, "dn_urls": [url], "timeout": 0.5, "dn_token": dns.token})
    runner.run(_fault(dns, 0, hang=True))
    t0 = time.monotonic()
    with pytest.raises(BackendTimeoutError, match=r"did not answer within 0.5 s") as info:
        _read(lone, runner, storage_cfg, np.s_[0:40, 0:50])
    took = time.monotonic() - t0
    assert url in str(info.value) and isinstance(info.value, TimeoutError)
    assert 0.5 <= took < 2.0, took
    # once the DN answers again it is probed and used
    runner.run(_fault(dns, 0))
    time.sleep(0.06)
    assert _read(lone, runner, storage_cfg, np.s_[0:40, 0:50]).tobytes() == ARR[0:40, 0:50].tobytes()
    runner.run(lone.aclose())


# ----------------------------------------------------------------------------- a DN killed mid-read


def test_dn_killed_mid_read(dns: ContainersBackend, runner: asyncio.Runner, storage_cfg: dict[str, Any]) -> None:
    assert dns._local is not None
    for k in (0, 1):
        runner.run(_fault(dns, k, delay_ms=25))  # ~48 chunks per DN at 25 ms, 4 at a time: ~0.3 s per DN
    victim = dns._local.nodes[0].proc
    assert victim is not None
    seen = []

    def progress(n: int) -> None:
        seen.append(n)
        if len(seen) == 6:  # the read is under way on both DNs
            os.kill(victim.pid, signal.SIGKILL)

    out = _read(dns, runner, storage_cfg, progress=progress)
    assert out.tobytes() == ARR.tobytes()
    assert victim.wait(5) == -signal.SIGKILL
    st = dns.last_stats
    assert st is not None and st.node_failures == 1 and 0 < st.reroutes < _on_node(dns, 0)
    dn0 = dns.nodes[0]["url"]
    assert 0 < st.per_node[dn0] < _on_node(dns, 0)  # DN 0 answered some chunks before it died

    # the dead DN's replacement is starting; until it answers a probe, DN 1 serves its chunks
    restart = dns._local.nodes[0].restarting
    assert restart is not None
    time.sleep(0.06)  # past the probe interval
    out = _read(dns, runner, storage_cfg, np.s_[100:300, 50:350])
    assert out.tobytes() == ARR[100:300, 50:350].tobytes()
    assert dns.last_stats is not None and dns.last_stats.probes == 1
    runner.run(asyncio.wait_for(asyncio.shield(restart), 30))
    assert dns._local.nodes[0].alive and dns._local.nodes[0].pid != victim.pid
    time.sleep(0.1)  # past the probe interval
    out = _read(dns, runner, storage_cfg)
    assert out.tobytes() == ARR.tobytes()
    assert dns.last_stats is not None and len(dns.last_stats.per_node) == 2 and all(n["up"] for n in dns.nodes)


# ----------------------------------------------------------------------------- tokens


@pytest.fixture(scope="module")
def guarded(storage_cfg: dict[str, Any], runner: asyncio.Runner) -> Iterator[ContainersBackend]:
    be = ContainersBackend({**storage_cfg, "dn_count": 1, "dn_token": "s3cret-token", "timeout": 5})
    runner.run(be.start())
    yield be
    runner.run(be.aclose())


def test_token_is_required_on_every_route(guarded: ContainersBackend, runner: asyncio.Runner, storage_cfg: dict[str, Any]) -> None:
    url = NodeURL.parse(guarded.nodes[0]["url"])
    cid = f"c-{_dset_id(guarded)[2:]}_0_0"
    for method, target, token in [
        ("GET", f"/chunks/{cid}?bucket=hsdstest", None),
        ("POST", "/batch", None),
        ("POST", f"/chunks/{cid}?bucket=hsdstest&count=0", "s3cret-tokenX"),
    ]:
        status, headers, body = runner.run(request(url, method, target, token=token, body=b"{}" if method == "POST" else b""))
        assert status == 401, (method, target, status)
        assert headers.get("www-authenticate", "").startswith("Bearer")
        assert "bearer token" in json.loads(bytes(body))["message"]
    # /info without the token (a health check) says only that this is a DN
    for token in (None, "wrong"):
        status, _, body = runner.run(request(url, "GET", "/info", token=token))
        assert status == 200 and json.loads(bytes(body)) == {"service": "hsds-backends-dn", "state": "READY"}
    status, _, body = runner.run(request(url, "GET", "/info", token="s3cret-token"))
    assert status == 200 and json.loads(bytes(body))["service"] == "hsds-backends-dn"
    assert json.loads(bytes(body))["node_count"] == 1
    # the backend that started the DN has the token: reads work
    assert _read(guarded, runner, storage_cfg, np.s_[40:80, 0:400]).tobytes() == ARR[40:80, 0:400].tobytes()


def test_wrong_token_is_a_401_error(guarded: ContainersBackend, runner: asyncio.Runner, storage_cfg: dict[str, Any]) -> None:
    url = guarded.nodes[0]["url"]
    wrong = ContainersBackend({**storage_cfg, "dn_urls": [url], "dn_token": "nope"})
    with pytest.raises(BackendError, match=r"answered 401 .*set dn_token") as info:
        _read(wrong, runner, storage_cfg, np.s_[0:10, 0:10])
    assert url in str(info.value)
    right = ContainersBackend({**storage_cfg, "dn_urls": [url], "dn_token": "s3cret-token"})
    assert _read(right, runner, storage_cfg, np.s_[::7, ::9]).tobytes() == ARR[::7, ::9].tobytes()
    runner.run(wrong.aclose())
    runner.run(right.aclose())


# ----------------------------------------------------------------------------- memory


def test_results_the_caller_has_not_taken_are_bounded(
    dns: ContainersBackend, runner: asyncio.Runner, storage_cfg: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A slow consumer makes the DN streams wait instead of piling results up in the client."""
    import hsds_backends_containers._scheduler as scheduler_mod

    cap = 20_000  # bytes; a chunk result is 8000 bytes
    monkeypatch.setattr(scheduler_mod, "_BACKLOG", cap)
    peak = [0]
    orig = scheduler_mod.Fanout.taken

    def taken(self: Any, res: Any) -> None:
        peak[0] = max(peak[0], self.backlog)
        orig(self, res)

    monkeypatch.setattr(scheduler_mod.Fanout, "taken", taken)

    async def go() -> np.ndarray[Any, Any]:
        async with hb.Reader(storage_cfg) as reader:
            dset = await (await reader.open(DOMAIN)).get("/grid")
            plan = dset.plan(None)
            out = np.zeros(ARR.shape, dtype="<i4")
            async for i, res in dns.read_chunks(plan.tasks):
                await asyncio.sleep(0.002)  # a slow consumer
                out[plan.placements[i]] = np.frombuffer(res.data, dtype="<i4").reshape(CHUNKS)
            return out

    assert runner.run(go()).tobytes() == ARR.tobytes()
    # at most one more frame per in-flight request (one per DN here) beyond the cap
    assert cap < peak[0] <= cap + 2 * 8000, peak[0]
