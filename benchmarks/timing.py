"""How long to time: best of N with an autorange floor, the warm-up floor, paired alternation.

Standard library only: ``h5pyd_client.py`` imports :func:`more_runs` in HSDS's own virtualenv, so
every system, HSDS included, follows one rule for how many calls are timed.
"""

from __future__ import annotations

import math
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

T = TypeVar("T")

#: Shortest warm-up of an hsds-backends system before its timed calls of a workload: one call,
#: repeated until this long has passed. What the previous system leaves running for a few
#: milliseconds (the dask scheduler and workers settling after a gather) otherwise lands on the
#: next system's timed calls of a short workload: one chunk read +15-30% after dask.
WARMUP_S = 0.2

#: Timed calls go on past ``--repeat`` until they add up to this long (at most ``MAX_RUNS``), as
#: ``timeit``'s autorange does: a read of a few milliseconds is then the best of dozens of calls,
#: not of three, for every system alike, and the machine's noise no longer decides the ratios.
MIN_TIMED_S = 0.5
MAX_RUNS = 100

#: Rounds of the paired measurement (at least; short reads go on until ``MIN_TIMED_S`` each side).
PAIRED_ROUNDS = 10


def more_runs(done: int, timed_s: float, repeat: int) -> bool:
    """Whether to time another call after ``done`` calls that took ``timed_s`` in all."""
    return done < repeat or (timed_s < MIN_TIMED_S and done < MAX_RUNS)


def time_best(fn: Callable[[], T], repeat: int, *, result: T | None = None) -> tuple[float, T]:
    """Return the best of ``repeat`` (or more, see :func:`more_runs`) timed calls of ``fn`` and the warm-up's result.

    Parameters
    ----------
    fn : callable
        The workload.
    repeat : int
        Timed calls, at least.
    result : object, optional
        The result of a call already made (it then serves as the warm-up); default: one
        untimed warm-up call is made first.
    """
    if result is None:
        result = fn()
    best, total, n = math.inf, 0.0, 0
    while more_runs(n, total, repeat):
        t = time.perf_counter()
        fn()
        dt = time.perf_counter() - t
        best, total, n = min(best, dt), total + dt, n + 1
    return best, result


async def warm_up_async(fn: Callable[[], Awaitable[T]], check: Callable[[T], bool]) -> bool:
    """Call ``fn`` once and again until :data:`WARMUP_S` has passed; return ``check`` of the first call's result.

    The first result is checked and dropped before the other calls, so a large answer is not held
    through them.
    """
    warm_until = time.perf_counter() + WARMUP_S
    first = await fn()
    ok = check(first)
    del first
    while time.perf_counter() < warm_until:  # outlast what the previous system left running
        await fn()
    return ok


async def time_best_async(fn: Callable[[], Awaitable[Any]], repeat: int) -> float:
    """Return the best of ``repeat`` (or more, see :func:`more_runs`) timed, back-to-back awaits of ``fn``."""
    best, total, n = math.inf, 0.0, 0
    while more_runs(n, total, repeat):
        t = time.perf_counter()
        await fn()
        dt = time.perf_counter() - t
        best, total, n = min(best, dt), total + dt, n + 1
    return best


async def time_paired_async(
    first: Callable[[], Awaitable[Any]], second: Callable[[], Awaitable[Any]], repeat: int
) -> tuple[float, float, int]:
    """Time ``first`` and ``second`` alternately; return the best call of each and the number of rounds.

    Round 0 runs ``first`` then ``second``, round 1 the other way round, and so on, for at least
    :data:`PAIRED_ROUNDS` rounds and until each side has :func:`more_runs`'s worth of calls. Both
    sides then see the same moments of the machine, so the ratio of their best calls measures the
    two calls rather than the machine's slow and fast spells.
    """
    sides: tuple[list[float], list[float]] = ([], [])
    fns = (first, second)
    rnd = 0
    while rnd < PAIRED_ROUNDS or any(more_runs(len(t), sum(t), repeat) for t in sides):
        order = (1, 0) if rnd % 2 else (0, 1)
        for i in order:
            t0 = time.perf_counter()
            await fns[i]()
            sides[i].append(time.perf_counter() - t0)
        rnd += 1
    return min(sides[0]), min(sides[1]), rnd
