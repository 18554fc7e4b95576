"""The hsds-backends columns: every installed backend, then ``auto`` (the selector), through one ``Reader``.

1. Each backend's first read (a full read, explicit ``backend=name``) is its cold cell; it starts
   the backend (DN processes, the dask cluster, the Lambda runtime), which then stays up.
2. The warm workloads, one at a time, each timed for every backend (``backend=name``) and then
   ``auto`` (``backend=None``) (:func:`time_workload_major`). ``auto`` always reads after the
   backends, in the same reader: the selector has the latencies measured during their reads — as
   in an HSDS service that has been serving traffic — and every backend is up (DNs with warm chunk
   caches), for ``auto`` and the backends alike. Then the paired regret (:func:`paired_regret`).
3. Each backend's extras (containers: DN start-up and caches-off figures on separate DNs; lambda:
   invoke overhead, AWS model), then ``auto``'s choices and reasons.

Only ``auto``'s cold cell comes from a fresh reader (:func:`auto_cold`). Peak-memory figures are
measured afterwards, in fresh readers and processes (:mod:`systems.memory`).
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from common import AUTO, BUCKET, DOMAIN, QUERY, WORKLOADS_TIMED, echo, error_note
from data import BenchData
from results import Measurement, SystemRun
from systems.base import BenchContext
from systems.memory import measure_memory
from timing import time_best_async, time_paired_async, warm_up_async
from workloads import Selections, identical

if TYPE_CHECKING:
    from hsds_backends import AsyncDataset, Reader, ReadResult, ReadStats

#: One workload as a call: returns the awaitable of a :class:`hsds_backends.ReadResult`.
Op = Callable[[], Awaitable["ReadResult"]]


def reader_config(data: BenchData) -> dict[str, Any]:
    """Return the config of the benchmark's :class:`hsds_backends.Reader`.

    ``backend: auto`` so that reads without an explicit backend go to the selector, and
    ``dn_count`` = this machine's cores, which configures the embedded data nodes — the
    same number the ``containers`` backend starts by default — so that ``containers`` is an
    auto candidate (an embedded backend without ``dn_count``/``dn_urls`` is not configured
    for automatic use).
    """
    from hsds_backends.model import default_workers

    return {"root_dir": str(data.hsds_root), "bucket_name": BUCKET, "backend": AUTO, "dn_count": default_workers()}


class BackendColumn:
    """The workloads as reads of one backend on datasets of a shared :class:`hsds_backends.Reader`.

    Parameters
    ----------
    run : SystemRun
        The column the timings go to.
    grid, table : hsds_backends.AsyncDataset
        ``/grid`` and ``/table`` of the benchmark domain.
    sel : Selections
        The workloads' selections.
    backend : str or None
        Backend name; ``None`` lets the selector choose per request (``auto``).

    Each workload method returns the awaitable of the read, not a coroutine of its own, so a
    timed call is the read and nothing more.
    """

    def __init__(
        self, run: SystemRun, grid: AsyncDataset, table: AsyncDataset, sel: Selections, backend: str | None
    ) -> None:
        self.run = run
        self.grid, self.table, self.sel, self.backend = grid, table, sel, backend

    def full(self) -> Awaitable[ReadResult]:
        """Read the whole grid."""
        return self.grid.read_result(None, backend=self.backend)

    def stepped(self) -> Awaitable[ReadResult]:
        """Read ``[::4, 1000:3000]``."""
        return self.grid.read_result(self.sel.stepped, backend=self.backend)

    def chunk(self) -> Awaitable[ReadResult]:
        """Read one whole chunk."""
        return self.grid.read_result(self.sel.chunk, backend=self.backend)

    def points(self) -> Awaitable[ReadResult]:
        """Read the random points."""
        return self.grid.read_points_result(self.sel.points, backend=self.backend)

    def query(self) -> Awaitable[ReadResult]:
        """Read the rows matching the query (``index`` and the fields)."""
        return self.table.query_result(QUERY, backend=self.backend)

    def op(self, key: str) -> Op:
        """Return the method of workload ``key``."""
        fn: Op = getattr(self, key)
        return fn


async def time_cold(column: BackendColumn, expected: dict[str, np.ndarray[Any, Any]]) -> None:
    """Time the backend's first full read into the ``full_cold`` cell (it starts DNs, clusters, runtimes)."""
    try:
        t = time.perf_counter()
        res = await column.full()
        column.run.cells["full_cold"] = Measurement(time.perf_counter() - t, identical(res.data, expected["full"]))
    except Exception as exc:  # noqa: BLE001
        column.run.cells["full_cold"] = Measurement(ok=False, note=error_note(exc))


async def time_workload_major(
    columns: Sequence[BackendColumn], expected: dict[str, np.ndarray[Any, Any]], repeat: int
) -> dict[str, dict[str, list[ReadStats]]]:
    """Fill each column's cells, one workload at a time: every column in turn, best of ``repeat`` after a warm-up.

    Workload-major order — all columns do the full read, then all do the stepped read, … — in the
    given order (the backends, then ``auto``): ``auto``'s first read of a workload follows every
    backend's, and the runs compared in one row are seconds apart, not a minute, so a shared
    machine's slow and fast moments fall less on one column. Each column's own runs stay back to
    back: its warm-up (one call, repeated for at least :data:`timing.WARMUP_S`), then ``repeat``
    timed calls. The first warm-up result is checked against the oracle. Returns, per column and
    workload, the request statistics of every call, warm-up first.
    """
    seen: dict[str, dict[str, list[ReadStats]]] = {c.run.name: {} for c in columns}
    for key in WORKLOADS_TIMED:
        for column in columns:
            stats = seen[column.run.name].setdefault(key, [])
            op = column.op(key)

            async def fn(op: Op = op, stats: list[ReadStats] = stats) -> Any:
                res = await op()
                stats.append(res.stats)
                return res.data

            try:
                ok = await warm_up_async(fn, functools.partial(identical, exp=expected[key]))
                column.run.cells[key] = Measurement(await time_best_async(fn, repeat), ok)
            except Exception as exc:  # noqa: BLE001 - record and go on with the others
                column.run.cells[key] = Measurement(ok=False, note=error_note(exc))
    return seen


async def paired_regret(columns: Sequence[BackendColumn], repeat: int) -> str:
    """Return the selector regret measured in pairs: ``auto`` and the fastest backend alternating.

    The table's cells are each column's best over its own run of calls; two such runs of the
    *same* backend seconds apart differ by up to ~20% on this machine for reads of a few to a few
    tens of ms, which swamps a 10% target. Here, per workload, ``auto`` and the backend with the
    fastest cell read alternately (which one goes first alternates too, the backend first), at
    least :data:`timing.PAIRED_ROUNDS` rounds and until each side has 0.5 s of calls; the regret is
    the ratio of their best calls. Both sides then see the same moments of the machine.
    """
    by_name = {c.run.name: c for c in columns}
    parts = []
    for key in WORKLOADS_TIMED:
        timed = [
            (sec, name)
            for name, c in by_name.items()
            if name != AUTO and (m := c.run.cells.get(key)) is not None and (sec := m.seconds) and m.ok
        ]
        if not timed or AUTO not in by_name:
            continue
        best_name = min(timed)[1]
        best_s, auto_s, rounds = await time_paired_async(by_name[best_name].op(key), by_name[AUTO].op(key), repeat)
        parts.append(f"{key} {auto_s / best_s:.2f} (vs {best_name}, {rounds} rounds)")
    return "selector regret, paired (auto and the fastest backend alternating; target <= 1.1): " + ", ".join(parts)


async def extras(name: str, reader: Reader, column: BackendColumn, ctx: BenchContext) -> list[str]:
    """Return the backend's own extra notes.

    containers: DN start-up and caches-off figures on separate DNs; lambda: invoke overhead and the
    AWS model. Both come from the backend packages.
    """
    grid, table, sel = column.grid, column.table, column.sel
    if name == "containers":  # DN start-up, cold-cache reads from running DNs, cache figures
        try:
            from hsds_backends_containers.bench import bench_extras as dn_extras  # type: ignore[import-not-found, unused-ignore]

            return list(await dn_extras(reader, grid, sel.chunk, ctx.expected, ctx.repeat))
        except Exception as exc:  # noqa: BLE001
            return [f"containers extras failed: {type(exc).__name__}: {exc}"]
    if name == "lambda":  # per-invoke overhead and the AWS cost/latency model (hsds_backends_lambda.bench)
        try:
            from hsds_backends_lambda.bench import bench_extras  # type: ignore[import-not-found, unused-ignore]

            return list(await bench_extras(reader, grid, table, sel, ctx.expected, ctx.data.hsds_root, BUCKET, QUERY))
        except Exception as exc:  # noqa: BLE001
            return [f"lambda extras failed: {type(exc).__name__}: {exc}"]
    return []


def auto_notes(seen: dict[str, list[ReadStats]]) -> list[str]:
    """Return one line per workload: which backends auto ran, and the last run's choice and reason."""
    notes = []
    for key, stats in seen.items():
        counts: dict[str, int] = {}
        for st in stats:
            counts[st.backend] = counts.get(st.backend, 0) + 1
        ran = ", ".join(f"{b} ×{n}" for b, n in counts.items()) + f" (of {len(stats)} reads, warm-up included)"
        last = stats[-1]
        notes.append(
            f"auto {key}: ran {ran}; last: {last.backend} in {last.seconds * 1e3:.1f} ms "
            f"(estimated {last.estimate_seconds * 1e3:.1f} ms) — {last.reason}"
        )
    return notes


async def _bench_async(names: Sequence[str], with_auto: bool, ctx: BenchContext) -> list[SystemRun]:
    """Steps 1-3 of the module docstring, in one :class:`hsds_backends.Reader`."""
    from hsds_backends import Reader

    runs = [SystemRun(n, ours=True) for n in names]
    auto = SystemRun(AUTO, ours=True) if with_auto else None
    async with Reader(reader_config(ctx.data)) as reader:
        dom = await reader.open(DOMAIN)
        grid, table = await dom.get("/grid"), await dom.get("/table")
        columns = [BackendColumn(run, grid, table, ctx.sel, run.name) for run in runs]
        for column in columns:
            echo(f"starting hsds-backends backend {column.run.name!r} (its cold read) ...")
            await time_cold(column, ctx.expected)
        timed = [*columns, *([BackendColumn(auto, grid, table, ctx.sel, None)] if auto is not None else [])]
        echo(f"timing {', '.join(c.run.name for c in timed)}, workload by workload ...")
        seen = await time_workload_major(timed, ctx.expected, ctx.repeat)
        if auto is not None:
            auto.notes.append(await paired_regret(timed, ctx.repeat))
        for column in columns:
            column.run.notes.extend(await extras(column.run.name, reader, column, ctx))
        if auto is not None:
            auto.notes.extend(auto_notes(seen[AUTO]))  # after the timed runs: no formatting inside them
    return [*runs, *([auto] if auto is not None else [])]


async def auto_cold(data: BenchData, expected: dict[str, np.ndarray[Any, Any]]) -> tuple[Measurement, str]:
    """Return auto's cold cell: the first full read of a fresh reader (nothing measured, nothing started)."""
    from hsds_backends import Reader

    async with Reader(reader_config(data)) as reader:
        grid = await (await reader.open(DOMAIN)).get("/grid")
        t = time.perf_counter()
        res = await grid.read_result(None)
        m = Measurement(time.perf_counter() - t, identical(res.data, expected["full"]))
        return m, f"auto full_cold (a fresh reader): {res.stats.backend} — {res.stats.reason}"


def regret_note(systems: list[SystemRun]) -> None:
    """Add the selector's regret (auto's time / the fastest backend's) per workload to the auto column."""
    auto = next((s for s in systems if s.name == AUTO), None)
    ours = [s for s in systems if s.ours and s.name != AUTO]
    if auto is None or not ours:
        return
    parts = []
    for key, m in auto.cells.items():
        times = [(sec, s.name) for s in ours if (c := s.cells.get(key)) is not None and (sec := c.seconds)]
        if m.seconds and times:
            best, who = min(times)
            parts.append(f"{key} {m.seconds / best:.2f} (best {who})")
    if parts:
        auto.notes.append("selector regret (auto / fastest backend, target <= 1.1): " + ", ".join(parts))


def bench_backends(names: Sequence[str], ctx: BenchContext, *, with_auto: bool = True) -> list[SystemRun]:
    """Time the workloads of backends ``names`` (then ``auto``) through one async :class:`hsds_backends.Reader`.

    Parameters
    ----------
    names : sequence of str
        Installed backend names, timed in this order.
    ctx : BenchContext
        Data set, selections, oracle answers and ``repeat``.
    with_auto : bool
        Also time ``auto`` (the selector) after the backends, in the same reader.

    Returns
    -------
    list of SystemRun
        One per backend (one cell per workload, plus peak-memory figures of the full read in
        ``info``, measured afterwards in fresh readers and a fresh process), then ``auto``.
    """
    try:
        runs = asyncio.run(_bench_async(names, with_auto, ctx))
    except Exception as exc:  # noqa: BLE001
        error = f"{type(exc).__name__}: {exc}"
        return [SystemRun(n, ours=True, error=error) for n in [*names, *([AUTO] if with_auto else [])]]
    for run in runs:
        if run.name == AUTO:
            if not run.error:
                try:
                    run.cells["full_cold"], note = asyncio.run(auto_cold(ctx.data, ctx.expected))
                    run.notes.insert(0, note)
                except Exception as exc:  # noqa: BLE001
                    run.cells["full_cold"] = Measurement(ok=False, note=error_note(exc))
            continue
        if run.error:
            continue
        echo(f"measuring the memory of a full read on {run.name!r} ...")
        try:
            run.info["memory"] = measure_memory(ctx.data, run.name)
        except Exception as exc:  # noqa: BLE001
            run.notes.append(f"memory measurement failed: {type(exc).__name__}: {exc}")
    return runs
