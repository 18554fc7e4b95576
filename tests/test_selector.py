"""The selector's decisions, failover, hedging and per-request metrics."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest

import hsds_backends as hb
from hsds_backends import plugins
from hsds_backends.errors import BackendError, ChunkDecodeError, ConfigError, NoBackendError
from hsds_backends.kernel import run_task
from hsds_backends.model import Backend, Capabilities, CostEstimate, ReadRequest, current_stats
from hsds_backends.plan import plan_points
from hsds_backends.storage import PosixStorage, storage_from_config
from hsds_backends.tasks import ChunkResult, ChunkTask
from hsds_backends.writer import Writer

DOMAIN = "/home/sel/d.h5"
GRID = np.arange(64 * 64, dtype="<i4").reshape(64, 64)
TABLE = np.zeros(256, dtype=[("id", "<i8"), ("temp", "<f4")])
TABLE["id"] = np.arange(256)
TABLE["temp"] = np.arange(256) % 40


class _KernelBackend(Backend):
    """Runs the shared kernel in-process; subclasses declare costs and faults."""

    description: ClassVar[str] = "test backend"

    def __init__(self, config: Mapping[str, Any] | None = None) -> None:
        super().__init__(config)
        self.storage = storage_from_config(self.config)
        self.seen: list[str] = []

    @property
    def started(self) -> bool:
        return True  # in-process fakes have nothing to start, remote=True or not

    async def read_chunk(self, task: ChunkTask) -> ChunkResult:
        self.seen.append(task.chunk_id)
        return await run_task(task, self.storage)


class Local(_KernelBackend):
    name: ClassVar[str] = "local"
    static_capabilities: ClassVar[Capabilities] = Capabilities(max_concurrency=2)
    overhead_s: ClassVar[float] = 0.0002
    per_chunk_s: ClassVar[float] = 0.004


class Cluster(_KernelBackend):
    """Slow to start, wide: wins big reads."""

    name: ClassVar[str] = "cluster"
    static_capabilities: ClassVar[Capabilities] = Capabilities(max_concurrency=64, remote=True, query=False)
    overhead_s: ClassVar[float] = 0.05
    per_chunk_s: ClassVar[float] = 0.006


class Serverless(_KernelBackend):
    """Very wide, billed; declines when not configured."""

    name: ClassVar[str] = "lambda"
    overhead_s: ClassVar[float] = 0.03
    per_chunk_s: ClassVar[float] = 0.05

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities(max_concurrency=1000, remote=True, costs_money=True, configured=bool(self.config.get("aws_lambda_chunkread_function")))

    def estimate_cost(self, request: ReadRequest) -> CostEstimate:
        base = super().estimate_cost(request)
        return CostEstimate(base.seconds, 6e-6 * request.num_chunks, base.detail + ", $6e-6/chunk")


class Down(_KernelBackend):
    """Marked down: declines everything."""

    name: ClassVar[str] = "down"

    def decline_reason(self, request: ReadRequest) -> str | None:
        return "marked down after failed health checks"


class Failing(_KernelBackend):
    """Fails every task after its own retries, as a dead fleet would."""

    name: ClassVar[str] = "failing"
    static_capabilities: ClassVar[Capabilities] = Capabilities(max_concurrency=4)
    overhead_s: ClassVar[float] = 0.0
    per_chunk_s: ClassVar[float] = 0.0001  # looks fastest, so auto picks it

    async def read_chunk(self, task: ChunkTask) -> ChunkResult:
        self.seen.append(task.chunk_id)
        stats = current_stats.get()
        if stats is not None:
            stats.retries += 2
        raise BackendError(f"failing: all nodes down (chunk {task.chunk_id})")


class Straggler(_KernelBackend):
    """Answers every task fast except one, which takes far too long."""

    name: ClassVar[str] = "straggler"
    static_capabilities: ClassVar[Capabilities] = Capabilities(max_concurrency=16)
    overhead_s: ClassVar[float] = 0.0
    per_chunk_s: ClassVar[float] = 0.0001
    slow_chunk: ClassVar[str] = ""

    def __init__(self, config: Mapping[str, Any] | None = None) -> None:
        super().__init__(config)
        self.cancelled: list[str] = []

    async def read_chunk(self, task: ChunkTask) -> ChunkResult:
        self.seen.append(task.chunk_id)
        if task.chunk_id.endswith(type(self).slow_chunk):
            try:
                await asyncio.sleep(30)
            except asyncio.CancelledError:
                self.cancelled.append(task.chunk_id)
                raise
        await asyncio.sleep(0.01)
        return await run_task(task, self.storage)


CLASSES = [Local, Cluster, Serverless, Down, Failing, Straggler]


class _Plugin:
    def __init__(self, classes: Sequence[type[Backend]]) -> None:
        self.classes = list(classes)

    @hb.hookimpl
    def hsds_backends_backend_classes(self) -> list[type[Backend]]:
        return self.classes

    @hb.hookimpl
    def hsds_backends_make_backend(self, name: str, config: Mapping[str, Any]) -> Backend | None:
        for c in self.classes:
            if c.name == name:
                return c(config)
        return None


def _pm(*classes: type[Backend], block_inline: bool = True) -> Any:
    pm = plugins.build_plugin_manager(eps=(), blocked=["inline"] if block_inline else ())
    pm.register(_Plugin(classes), name="test-backends")
    pm.check_pending()
    return pm


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("sel")

    async def write() -> None:
        w = Writer(PosixStorage(root))
        await w.create_dataset(DOMAIN, "/grid", GRID, chunks=(8, 8))  # 64 chunks
        await w.create_dataset(DOMAIN, "/big", None, shape=(1000, 1000), dtype="<u1", chunks=(10, 100))  # 1000 chunks, all missing
        await w.create_dataset(DOMAIN, "/table", TABLE, chunks=(64,))

    asyncio.run(write())
    return root


def _decide(root: Path, pm: Any, dset: str, sel: Any = None, *, config: Mapping[str, Any] | None = None, points: Any = None, query: str | None = None, **kw: Any) -> tuple[str, str]:
    async def go() -> tuple[str, str]:
        async with hb.Reader({"root_dir": str(root), **(config or {})}, pm=pm) as reader:
            d = await (await reader.open(DOMAIN)).get(dset)
            from hsds_backends.plan import plan_points, plan_query

            if points is not None:
                plan = plan_points(d.meta, points)
            elif query is not None:
                plan = plan_query(d.meta, query)
            else:
                plan = d.plan(sel)
            b, reason = reader.choose(plan, **kw)
            return b.name, reason

    return asyncio.run(go())


# ------------------------------------------------------------------ decisions

DECISIONS = [
    # (case, dataset, selection, extra config, kind, expected backend, reason fragments)
    ("1 chunk", "/grid", np.s_[0:8, 0:8], {}, None, "local", ["auto: local fastest at 4.2 ms for 1 chunk", "others: cluster 56.0 ms"]),
    ("16 chunks", "/grid", np.s_[0:32, 0:32], {}, None, "local", ["auto: local fastest at 32.2 ms for 16 chunks", "8 wave(s) × 4.0 ms (declared)"]),
    ("1000 chunks", "/big", None, {}, None, "cluster", ["auto: cluster fastest at 146.0 ms for 1000 chunks", "16 wave(s) × 6.0 ms", "others: local 2.00 s"]),
    (
        "1000 chunks, lambda configured",
        "/big", None, {"aws_lambda_chunkread_function": "chunk_read"}, None, "lambda",
        ["auto: lambda fastest at 80.0 ms, $0.006000 for 1000 chunks", "others: cluster 146.0 ms, local 2.00 s"],
    ),
    ("points", "/grid", None, {}, "points", "local", ["auto: local fastest at", "for 2 chunks"]),
    ("query (cluster declines)", "/table", None, {}, "query", "local", ["auto: local fastest at 8.2 ms for 4 chunks", "only candidate"]),
]


@pytest.mark.parametrize(("case", "dset", "sel", "cfg", "kind", "expected", "fragments"), DECISIONS, ids=[d[0] for d in DECISIONS])
def test_selector_decisions(root: Path, case: str, dset: str, sel: Any, cfg: dict[str, Any], kind: Any, expected: str, fragments: list[str]) -> None:
    pm = _pm(Local, Cluster, Serverless, Down)
    name, reason = _decide(
        root, pm, dset, sel, config=cfg,
        points=[[0, 0], [63, 63]] if kind == "points" else None,
        query="temp > 3" if kind == "query" else None,
    )
    assert name == expected, reason
    for frag in fragments:
        assert frag in reason, (frag, reason)
    assert "down" not in reason.split("others:")[-1]  # a backend marked down is never a candidate


def test_budget_excludes_billed_backend(root: Path) -> None:
    pm = _pm(Local, Cluster, Serverless)
    name, reason = _decide(root, pm, "/big", config={"aws_lambda_chunkread_function": "f"}, budget_dollars=0.001)
    assert name == "cluster"
    assert "over budget $0.001: lambda" in reason
    with pytest.raises(NoBackendError, match=r"no backend fits the budget of \$0\.000001 for 1000 chunks; the cheapest is 'lambda' at \$0\.006000: raise the budget"):
        _decide(root, _pm(Serverless), "/big", config={"aws_lambda_chunkread_function": "f"}, budget_dollars=0.000001)


def test_no_candidate_lists_every_decline(root: Path) -> None:
    pm = _pm(Serverless, Down)
    with pytest.raises(NoBackendError, match=r"no backend can serve d-.* \(64 chunks\): 'down' declined \(marked down after failed health checks\); 'lambda' declined \(not configured\)"):
        _decide(root, pm, "/grid")


def test_explicit_and_config_precedence(root: Path) -> None:
    pm = _pm(Local, Cluster, Serverless)
    assert _decide(root, pm, "/grid", backend="cluster") == ("cluster", "asked for by the caller")
    assert _decide(root, pm, "/grid", config={"backend": "cluster"}) == ("cluster", "config backend=cluster")
    # the explicit argument beats the config; a named backend runs even if not configured for auto use
    assert _decide(root, pm, "/grid", config={"backend": "cluster"}, backend="lambda") == ("lambda", "asked for by the caller")
    with pytest.raises(NoBackendError, match=r"backend 'cluster' \(config backend=cluster\) cannot serve .*: no queries"):
        _decide(root, pm, "/table", config={"backend": "cluster"}, query="temp > 1")


HSDS2021 = [
    # nonstrict, function, chunks → expected
    (True, "chunk_read", "/big", "lambda", "hsds2021: lambda (nonstrict=True, function='chunk_read', 1000 chunks vs 4×2 DNs)"),
    (False, "chunk_read", "/big", "cluster", "hsds2021: containers not available (nonstrict=False"),
    (True, None, "/big", "cluster", "function=None"),
    (True, "chunk_read", "/grid", "lambda", "64 chunks vs 4×2 DNs"),
]


@pytest.mark.parametrize(("nonstrict", "fn", "dset", "expected", "fragment"), HSDS2021)
def test_hsds2021_policy(root: Path, nonstrict: bool, fn: Any, dset: str, expected: str, fragment: str) -> None:
    pm = _pm(Local, Cluster, Serverless)
    cfg = {"backend_policy": "hsds2021", "aws_lambda_chunkread_function": fn, "dn_count": 2, "aws_lambda_threshold": 4}
    name, reason = _decide(root, pm, dset, config=cfg, nonstrict=nonstrict)
    assert name == expected, reason
    assert fragment in reason


def test_hsds2021_threshold_counts_points(root: Path) -> None:
    pm = _pm(Local, Serverless)
    cfg = {"backend_policy": "hsds2021", "aws_lambda_chunkread_function": "f", "dn_count": 2, "aws_lambda_threshold": 4}
    pts = [[i % 64, (i * 7) % 64] for i in range(8)]
    name, reason = _decide(root, pm, "/grid", config=cfg, points=pts, nonstrict=True)
    assert (name, "8 points vs 4×2 DNs" in reason) == ("lambda", True)
    name, reason = _decide(root, pm, "/grid", config=cfg, points=pts[:7], nonstrict=True)
    assert name == "local" and "7 points vs 4×2 DNs" in reason


def test_unknown_policy_is_a_config_error(root: Path) -> None:
    with pytest.raises(ConfigError, match=r"unknown backend_policy 'fastest'; choose one of \['auto', 'hsds2021'\]"):
        _decide(root, _pm(Local), "/grid", config={"backend_policy": "fastest"})


# ------------------------------------------------------------------ measured latency and exploration


class Slowpoke(_KernelBackend):
    """Declared slow: explored after cheaper candidates."""

    name: ClassVar[str] = "slowpoke"
    overhead_s: ClassVar[float] = 0.0
    per_chunk_s: ClassVar[float] = 0.1


class ColdStart(_KernelBackend):
    """Starts on its first read (like embedded DNs): that read is not measured."""

    name: ClassVar[str] = "coldstart"
    static_capabilities: ClassVar[Capabilities] = Capabilities(max_concurrency=8, remote=True)
    overhead_s: ClassVar[float] = 0.001
    per_chunk_s: ClassVar[float] = 0.001
    cold_start_s: ClassVar[float] = 1.0

    def __init__(self, config: Mapping[str, Any] | None = None) -> None:
        super().__init__(config)
        self.up = False

    @property
    def started(self) -> bool:
        return self.up

    async def read_chunk(self, task: ChunkTask) -> ChunkResult:
        self.up = True
        return await super().read_chunk(task)


async def _open(reader: hb.Reader, dset: str = "/grid") -> Any:
    return await (await reader.open(DOMAIN)).get(dset)


def _run(root: Path, pm: Any, body: Any, **config: Any) -> Any:
    """Run ``await body(reader, dataset)`` in a fresh reader on /grid."""

    async def go() -> Any:
        async with hb.Reader({"root_dir": str(root), **config}, pm=pm) as reader:
            return await body(reader, await _open(reader))

    return asyncio.run(go())


ONE = np.s_[0:8, 0:8]  # 1 chunk of /grid
SIXTEEN = np.s_[0:32, 0:32]  # 16 chunks: bucket 5–16


def test_measurement_is_kept_per_plan_shape(root: Path) -> None:
    async def body(reader: hb.Reader, d: Any) -> None:
        local = reader.backend("local")  # max_concurrency 2
        one, sixteen = reader.request(d.plan(ONE)), reader.request(d.plan(SIXTEEN))
        points = reader.request(plan_points(d.meta, [[0, 0], [9, 9]]))
        assert (one.shape, sixteen.shape, points.shape) == (("hyperslab", 0), ("hyperslab", 2), ("points", 1))
        reader.ledger.observe(local, one, 0.5)
        e1, e16, ep = one.estimate(local), sixteen.estimate(local), points.estimate(local)
        assert (e1.seconds, e1.detail) == (0.5, "1 wave(s) × 500.0 ms (measured)")
        # nothing measured at 16 chunks: the nearest measured size of the kind, scaled by waves
        assert (e16.seconds, e16.detail) == (4.0, "8 wave(s) × 500.0 ms (measured at ~1 chunk)")
        assert ep.detail.endswith("(declared)")  # another kind never borrows a hyperslab figure
        reader.ledger.observe(local, sixteen, 0.08)
        assert sixteen.estimate(local).seconds == pytest.approx(0.08)
        assert sixteen.estimate(local).detail == "8 wave(s) × 10.0 ms (measured)"
        assert one.estimate(local).seconds == 0.5  # a big read does not pollute the one-chunk figure

    _run(root, _pm(Local), body)


def test_nearest_bucket_and_median_of_recent_readings() -> None:
    from hsds_backends._latency import LatencyTable

    t = LatencyTable(window=5)
    t.record(("query", 0), 0.010, 1)
    t.record(("query", 2), 0.002, 12)
    t.record(("hyperslab", 1), 9.0, 3)
    m = t.lookup(("query", 1))  # 2–4 chunks: buckets 0 and 2 are equally near; the larger wins
    assert m is not None and (m.key, m.wave_s, m.chunks, m.exact) == (("query", 2), 0.002, 12, False)
    m = t.lookup(("query", 5))
    assert m is not None and m.key == ("query", 2)
    assert t.lookup(("points", 1)) is None
    # a change of regime (a warmed cache) wins after three readings; one outlier is ignored
    key = ("hyperslab", 4)
    for s in (0.9, 0.9, 0.9, 0.3, 0.3):
        t.record(key, s, 200)
    assert t.lookup(key).wave_s == 0.9  # type: ignore[union-attr]
    t.record(key, 0.3, 200)
    assert t.lookup(key).wave_s == 0.3  # type: ignore[union-attr]
    t.record(key, 50.0, 200)  # a pause
    assert t.lookup(key).wave_s == 0.3  # type: ignore[union-attr]


def test_shape_buckets() -> None:
    from hsds_backends._latency import bucket_label, shape_key

    got = {n: shape_key("points", n)[1] for n in (0, 1, 2, 4, 5, 16, 17, 64, 65, 256, 257, 1024, 1025)}
    assert got == {0: 0, 1: 0, 2: 1, 4: 1, 5: 2, 16: 2, 17: 3, 64: 3, 65: 4, 256: 4, 257: 5, 1024: 5, 1025: 6}
    assert [bucket_label(b) for b in range(6)] == ["1 chunk", "2–4 chunks", "5–16 chunks", "17–64 chunks", "65–256 chunks", "257–1024 chunks"]


def test_cold_start_read_is_not_measured(root: Path) -> None:
    async def body(reader: hb.Reader, d: Any) -> tuple[Any, ...]:
        cold = reader.backend("coldstart")
        key = reader.request(d.plan(ONE)).shape
        first = reader.request(d.plan(ONE)).estimate(cold)
        await d.read(ONE, backend="coldstart")  # starts it: not a measurement
        after_start = (reader.ledger.latency(cold).measured(key), reader.ledger.latency(cold).attempts(key), reader.request(d.plan(ONE)).estimate(cold))
        await d.read(ONE, backend="coldstart")
        return first, after_start, reader.ledger.latency(cold).measured(key), reader.ledger.latency(cold).attempts(key)

    first, (measured1, attempts1, est1), measured2, attempts2 = _run(root, _pm(ColdStart), body)
    assert first.detail.endswith("+ cold start 1.0 s") and first.seconds > 1.0
    assert (measured1, attempts1) == (False, 1)
    assert est1.seconds == pytest.approx(0.002) and "cold start" not in est1.detail  # declared, now started
    assert (measured2, attempts2) == (True, 2)


def test_auto_picks_the_measured_fastest(root: Path) -> None:
    async def body(reader: hb.Reader, d: Any) -> list[str]:
        plan = d.plan(ONE)
        req = reader.request(plan)
        local, cluster = reader.backend("local"), reader.backend("cluster")
        out = [reader.choose(plan)[1]]  # fresh: declared figures, local wins
        reader.ledger.observe(local, req, 0.003)  # local measured; cluster unmeasured but started: explored
        out.append(reader.choose(plan)[1])
        reader.ledger.observe(cluster, req, 0.002)  # cluster measured faster than declared
        out.append(reader.choose(plan)[1])
        for _ in range(3):  # local got fast (a warm cache): the median follows after three readings
            reader.ledger.observe(local, req, 0.001)
        out.append(reader.choose(plan)[1])
        return out

    fresh, explore, measured, switched = _run(root, _pm(Local, Cluster), body)
    assert fresh.startswith("auto: local fastest at 4.2 ms for 1 chunk (0.2 ms + 1 wave(s) × 4.0 ms (declared))")
    assert explore.startswith("auto: exploring cluster: no measurement yet for hyperslab reads of 1 chunk; 56.0 ms for 1 chunk")
    assert "(50.0 ms + 1 wave(s) × 6.0 ms (declared)) vs local 3.0 ms; others: local 3.0 ms" in explore
    assert measured == "auto: cluster fastest at 2.0 ms for 1 chunk (1 wave(s) × 2.0 ms (measured)); others: local 3.0 ms"
    assert switched.startswith("auto: local fastest at 1.0 ms for 1 chunk (1 wave(s) × 1.0 ms (measured))")


def test_exploration_runs_unmeasured_candidates_cheapest_first(root: Path) -> None:
    async def body(reader: hb.Reader, d: Any) -> list[tuple[str, str]]:
        out = []
        for _ in range(4):
            res = await d.read_result(SIXTEEN)
            out.append((res.stats.backend, res.stats.reason))
            assert res.data.tobytes() == GRID[SIXTEEN].tobytes()
        return out

    runs = _run(root, _pm(Local, Cluster, Slowpoke), body)
    # a fresh reader's first choice is the lowest estimate; then each unmeasured candidate once, cheapest first
    assert [b for b, _ in runs[:3]] == ["local", "cluster", "slowpoke"]
    assert runs[0][1].startswith("auto: local fastest at 32.2 ms for 16 chunks")
    assert runs[1][1].startswith("auto: exploring cluster: no measurement yet for hyperslab reads of 5–16 chunks; 56.0 ms for 16 chunks (")
    assert runs[2][1].startswith("auto: exploring slowpoke: no measurement yet for hyperslab reads of 5–16 chunks; 1.60 s for 16 chunks (")
    assert runs[3][1].startswith(f"auto: {runs[3][0]} fastest at ") and "(measured)" in runs[3][1]


def test_an_unmeasured_best_is_run_rather_than_explored_around(root: Path) -> None:
    async def body(reader: hb.Reader, d: Any) -> list[str]:
        plan = d.plan(ONE)
        reader.ledger.observe(reader.backend("local"), reader.request(plan), 0.5)  # local measured slow
        first = reader.choose(plan)[1]  # cluster's declared 56 ms is best: run it, no exploring
        reader.ledger.observe(reader.backend("cluster"), reader.request(plan), 0.05)
        return [first, reader.choose(plan)[1]]

    first, second = _run(root, _pm(Local, Cluster, Slowpoke), body)
    assert first.startswith("auto: cluster fastest at 56.0 ms for 1 chunk"), first
    assert second.startswith("auto: exploring slowpoke: no measurement yet for hyperslab reads of 1 chunk; 100.0 ms"), second


def test_exploration_disabled_by_auto_explore_0(root: Path) -> None:
    async def body(reader: hb.Reader, d: Any) -> list[str]:
        return [(await d.read_result(SIXTEEN)).stats.reason for _ in range(3)]

    reasons = _run(root, _pm(Local, Cluster), body, auto_explore=0)
    assert all(r.startswith("auto: local fastest at ") for r in reasons), reasons
    assert "(measured)" in reasons[-1]


def test_no_exploration_of_backends_that_cost_money(root: Path) -> None:
    async def body(reader: hb.Reader, d: Any) -> tuple[str, str]:
        plan = d.plan(SIXTEEN)
        reader.ledger.observe(reader.backend("local"), reader.request(plan), 0.0001)
        solo = reader.choose(plan)[1]
        return solo, ""

    solo, _ = _run(root, _pm(Local, Serverless), body, aws_lambda_chunkread_function="f")
    assert solo.startswith("auto: local fastest at") and "others: lambda" in solo

    async def body2(reader: hb.Reader, d: Any) -> str:
        plan = d.plan(SIXTEEN)
        reader.ledger.observe(reader.backend("local"), reader.request(plan), 0.0001)
        return reader.choose(plan)[1]

    # lambda's estimate is below cluster's, but only the free one is explored
    reason = _run(root, _pm(Local, Cluster, Serverless), body2, aws_lambda_chunkread_function="f")
    assert reason.startswith("auto: exploring cluster:"), reason


def test_exploration_of_an_unstarted_backend_is_bounded_by_auto_explore(root: Path) -> None:
    async def body(reader: hb.Reader, d: Any) -> str:
        plan = d.plan(ONE)
        reader.ledger.observe(reader.backend("local"), reader.request(plan), 0.004)
        return reader.choose(plan)[1]

    # coldstart would need 1 s to start against local's 4 ms: not within 3x
    assert _run(root, _pm(Local, ColdStart), body).startswith("auto: local fastest at 4.0 ms")
    assert _run(root, _pm(Local, ColdStart), body, auto_explore=1000).startswith("auto: exploring coldstart:")


def test_exploration_gives_up_after_unmeasured_attempts(root: Path) -> None:
    from hsds_backends.selector import EXPLORE_ATTEMPTS

    async def body(reader: hb.Reader, d: Any) -> str:
        plan = d.plan(ONE)
        req = reader.request(plan)
        reader.ledger.observe(reader.backend("local"), req, 0.5)
        for _ in range(EXPLORE_ATTEMPTS):  # e.g. reads that failed over: ran, never measured
            reader.ledger.latency(reader.backend("cluster")).note_attempt(req.shape)
        return reader.choose(plan)[1]

    assert _run(root, _pm(Local, Cluster), body).startswith("auto: cluster fastest at 56.0 ms")


def test_reason_is_built_only_when_read(root: Path) -> None:
    from hsds_backends.model import Choice, RequestStats

    calls: list[int] = []

    def reason() -> str:
        calls.append(1)
        return "built"

    stats = RequestStats("local", reason)
    assert calls == []
    assert (stats.reason, stats.to_json()["reason"], stats.reason, calls) == ("built", "built", "built", [1])
    assert RequestStats().reason == "" and RequestStats("x", "text").reason == "text"
    choice = Choice(Local({}), lambda: "why")
    assert choice.reason == "why" and str(choice) == "local: why"
    est = CostEstimate(1.0, 0.0, lambda: "lazy detail")
    assert est.detail == "lazy detail" and CostEstimate(1.0).detail == ""

    async def body(reader: hb.Reader, d: Any) -> tuple[str, str]:
        res = await d.read_result(ONE)
        return res.stats.reason, reader.choose(d.plan(ONE))[1]

    got, explained = _run(root, _pm(Local), body)
    assert got.startswith("auto: local fastest at 4.2 ms for 1 chunk") and got.endswith("; only candidate")
    assert explained.startswith("auto: local fastest at") and "(measured)" in explained


def test_reader_sees_plugins_registered_later(root: Path) -> None:
    pm = _pm(Local)

    async def body(reader: hb.Reader, d: Any) -> tuple[list[str], list[str], str]:
        before = list(reader.backend_names())
        pm.register(_Plugin([Cluster]), name="late")
        return before, reader.backend_names(), reader.choose(d.plan(None))[0].name

    before, after, chosen = _run(root, pm, body)
    assert (before, after, chosen) == (["local"], ["cluster", "local"], "cluster")


def test_bad_auto_explore_is_a_config_error(root: Path) -> None:
    with pytest.raises(ConfigError, match=r"config key 'auto_explore': 'lots' is not a number >= 0; use e\.g\. 3"):
        _decide(root, _pm(Local, Cluster), "/grid", config={"auto_explore": "lots"})


# ------------------------------------------------------------------ failover


def test_failover_returns_right_bytes_and_says_so(root: Path) -> None:
    pm = _pm(Failing, Local)

    async def go() -> Any:
        async with hb.Reader({"root_dir": str(root)}, pm=pm) as reader:
            d = await (await reader.open(DOMAIN)).get("/grid")
            res = await d.read_result(np.s_[3:61:2, 5:50])
            return res, reader.counters("failing"), reader.counters("local"), reader.backend("local")

    res, failing, local_counters, local = asyncio.run(go())
    assert res.data.tobytes() == GRID[3:61:2, 5:50].tobytes()
    s = res.stats
    assert s.backend == "failing" and s.reason.startswith("auto: failing fastest")
    assert s.chunks == 56 and s.failovers == 56 and s.failover_to == ["local"]
    assert s.retries >= 2
    assert failing.failed == 56 and failing.in_flight == 0
    assert local_counters.tasks == 56 and local_counters.failed == 0
    assert len(local.seen) == 56


def test_no_failover_for_explicit_backend_unless_always(root: Path) -> None:
    pm = _pm(Failing, Local)

    async def go(cfg: dict[str, Any]) -> Any:
        async with hb.Reader({"root_dir": str(root), **cfg}, pm=pm) as reader:
            d = await (await reader.open(DOMAIN)).get("/grid")
            return await d.read_result(np.s_[0:16, 0:16], backend="failing")

    with pytest.raises(BackendError, match="failing: all nodes down"):
        asyncio.run(go({}))
    res = asyncio.run(go({"failover": "always"}))
    assert res.data.tobytes() == GRID[0:16, 0:16].tobytes() and res.stats.failovers == 4
    with pytest.raises(BackendError):
        asyncio.run(go({"failover": "never", "backend": "failing"}))


def test_data_errors_do_not_fail_over(root: Path, tmp_path: Path) -> None:
    pm = _pm(Local, Cluster)
    import shutil

    shutil.copytree(root, tmp_path / "copy")
    async def go() -> Any:
        async with hb.Reader({"root_dir": str(tmp_path / "copy")}, pm=pm) as reader:
            d = await (await reader.open(DOMAIN)).get("/grid")
            task = d.plan(np.s_[0:8, 0:8]).tasks[0]
            assert task.location is not None
            (tmp_path / "copy" / "hsdstest" / task.location.key).write_bytes(b"garbage!")
            try:
                return await d.read_result(np.s_[0:8, 0:8])
            finally:
                assert len(reader.backend("cluster").seen) == 0  # never re-run elsewhere

    with pytest.raises(ChunkDecodeError, match="decoded to 8 bytes, expected 256"):
        asyncio.run(go())


# ------------------------------------------------------------------ hedging


def test_hedged_straggler_right_bytes_loser_cancelled(root: Path) -> None:
    pm = _pm(Straggler, Local)

    async def go() -> Any:
        async with hb.Reader({"root_dir": str(root), "hedge_multiple": 3, "hedge_min_seconds": 0.05}, pm=pm) as reader:
            d = await (await reader.open(DOMAIN)).get("/grid")
            plan = d.plan(None)
            Straggler.slow_chunk = plan.tasks[5].chunk_id[-4:]
            t0 = asyncio.get_running_loop().time()
            res = await d.read_result(None)
            return res, asyncio.get_running_loop().time() - t0, reader.backend("straggler"), reader.backend("local"), plan.tasks[5].chunk_id

    res, took, strag, local, slow_id = asyncio.run(go())
    assert res.data.tobytes() == GRID.tobytes()
    s = res.stats
    assert s.backend == "straggler" and s.hedges >= 1 and s.hedges_won >= 1
    assert slow_id in local.seen
    assert slow_id in strag.cancelled  # the loser was cancelled when the request finished
    assert took < 10  # not the 30 s the straggler would take
    assert s.failovers == 0


def test_hedging_off_by_default(root: Path) -> None:
    pm = _pm(Local, Cluster)

    async def go() -> Any:
        async with hb.Reader({"root_dir": str(root)}, pm=pm) as reader:
            d = await (await reader.open(DOMAIN)).get("/grid")
            return await d.read_result(None)

    res = asyncio.run(go())
    assert res.data.tobytes() == GRID.tobytes() and res.stats.hedges == 0


# ------------------------------------------------------------------ metrics


def test_stats_report_bytes_and_gets(root: Path) -> None:
    async def go() -> Any:
        async with hb.Reader({"root_dir": str(root)}) as reader:
            d = await (await reader.open(DOMAIN)).get("/grid")
            a = await d.read_result(np.s_[0:16, 0:16])
            big = await (await reader.open(DOMAIN)).get("/big")
            b = await big.read_result(np.s_[0:20, 0:200])
            return a.stats, b.stats, reader.counters("inline")

    a, b, counters = asyncio.run(go())
    assert (a.chunks, a.s3_gets, a.bytes_fetched, a.bytes_decoded, a.bytes_returned, a.missing) == (4, 4, 4 * 256, 4 * 256, 4 * 256, 0)
    assert (b.chunks, b.missing, b.bytes_fetched, b.bytes_returned) == (4, 4, 0, 0)
    assert counters.requests == 2 and counters.tasks == 8 and counters.in_flight == 0
    j = a.to_json()
    assert set(j) >= {"backend", "reason", "chunks", "bytes_fetched", "bytes_decoded", "bytes_returned", "retries", "failovers", "hedges", "seconds", "gb_seconds", "dollars", "s3_gets"}


class Thresholded(_KernelBackend):
    """Refuses small requests through its estimate (as lambda's ``aws_lambda_threshold`` does)."""

    name: ClassVar[str] = "thresholded"

    def estimate_cost(self, request: ReadRequest) -> CostEstimate:
        return CostEstimate(math.inf, 0.0, f"{request.num_chunks} chunk(s) < threshold=4")


def test_a_backend_with_an_infinite_estimate_is_named_with_its_reason_not_inf(root: Path) -> None:
    async def body(reader: hb.Reader, d: Any) -> str:
        return str(reader.choose(d.plan(ONE))[1])

    reason = _run(root, _pm(Local, Thresholded), body, auto_explore=0)
    assert reason.startswith("auto: local fastest at ")
    assert reason.endswith("others: thresholded not used (1 chunk(s) < threshold=4)") and "inf" not in reason
