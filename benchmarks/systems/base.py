"""The common interface of a system: what it is given (:class:`BenchContext`), and the in-process grid readers.

Every system module exposes one entry point that takes a :class:`BenchContext` and returns its
column(s) as :class:`results.SystemRun`. The systems that read the zarr copy in this process
(zarr-python, TensorStore, dask.array) are a :class:`GridSystem`: ``open``, ``close`` and one
method per workload, named as in :data:`common.WORKLOADS_TIMED`, run by :func:`run_grid_system`.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from common import error_note
from data import BenchData
from results import Measurement, SystemRun
from timing import time_best
from workloads import Selections, identical


@dataclass(frozen=True)
class BenchContext:
    """What every system is given.

    Attributes
    ----------
    data : BenchData
        The generated data set (paths and oracle arrays).
    sel : Selections
        The workloads' selections.
    expected : dict
        Workload key -> oracle answer (:func:`workloads.expected_results`).
    repeat : int
        Timed calls per workload, at least (``--repeat``).
    """

    data: BenchData
    sel: Selections
    expected: dict[str, np.ndarray[Any, Any]]
    repeat: int


def timed_cells(
    run: SystemRun,
    ops: dict[str, Callable[[], Any]],
    expected: dict[str, np.ndarray[Any, Any]],
    repeat: int,
) -> None:
    """Fill ``run.cells`` by timing each of ``ops`` in turn (best of ``repeat`` or more after a warm-up).

    ``full`` also gets the ``full_cold`` cell: its first call, which then serves as its warm-up.
    """
    for key, fn in ops.items():
        try:
            first = None
            if key == "full":
                t = time.perf_counter()
                first = fn()
                run.cells["full_cold"] = Measurement(time.perf_counter() - t, identical(first, expected["full"]))
            best, res = time_best(fn, repeat, result=first)
            run.cells[key] = Measurement(best, identical(res, expected[key]))
            del first, res
        except Exception as exc:  # noqa: BLE001 - record and go on with the next workload
            run.cells[key] = Measurement(note=error_note(exc))


class GridSystem(ABC):
    """A reader of the zarr copy of the grid, timed call by call in this process.

    Subclasses set the class attributes, import their library in :meth:`open` (an
    ``ImportError`` there leaves the column out with an install hint) and define one method per
    workload of :attr:`workloads`; the query does not apply to an array store.
    """

    #: Column title.
    name: ClassVar[str]
    #: What is missing when the import fails, and the argument of ``pip install`` that adds it.
    requirement: ClassVar[str]
    pip_spec: ClassVar[str]
    #: The workloads this system runs, in order; the others are shown as not applicable.
    workloads: ClassVar[tuple[str, ...]] = ("full", "stepped", "chunk", "points")

    def __init__(self, ctx: BenchContext) -> None:
        self.ctx = ctx
        self.rows, self.cols = ctx.sel.points[:, 0], ctx.sel.points[:, 1]

    @abstractmethod
    def open(self) -> dict[str, str]:
        """Import the library and open the array; return the versions to report."""

    def close(self) -> None:  # noqa: B027 - optional: most systems start nothing to stop
        """Release what :meth:`open` started (nothing by default)."""

    @abstractmethod
    def full(self) -> Any:
        """Read the whole grid."""

    @abstractmethod
    def stepped(self) -> Any:
        """Read ``[::4, 1000:3000]``."""

    @abstractmethod
    def chunk(self) -> Any:
        """Read one whole chunk."""

    @abstractmethod
    def points(self) -> Any:
        """Read the random points."""


def run_grid_system(system: GridSystem) -> SystemRun:
    """Open ``system``, time its workloads (:func:`timed_cells`), close it; return its column."""
    run = SystemRun(system.name)
    try:
        try:
            run.info["versions"] = system.open()
        except ImportError as exc:
            run.error = f"{system.requirement} not installed ({exc}); pip install {system.pip_spec}"
            return run
        ops: dict[str, Callable[[], Any]] = {key: getattr(system, key) for key in system.workloads}
        timed_cells(run, ops, system.ctx.expected, system.ctx.repeat)
    finally:
        system.close()  # also after a failed open: what it started before failing
    run.cells["query"] = Measurement(note="n/a")
    return run
