"""``dask.array.from_zarr`` on a 2-worker distributed cluster (the query does not apply).

The comparison the ``dask`` backend's speed target is stated against: a LocalCluster of 2 process
workers (one thread each, like the backend's embedded cluster on 2 cores), the zarr copy read on
the workers and the result shipped to this process.
"""

from __future__ import annotations

import contextlib
from typing import Any

from common import DASK_ARRAY_NAME, dist_version
from results import SystemRun
from systems.base import BenchContext, GridSystem, run_grid_system


class DaskArray(GridSystem):
    """``da.from_zarr(...)[sel].compute(scheduler=client)``; points through ``vindex``."""

    name = DASK_ARRAY_NAME
    requirement = "dask[distributed]"
    pip_spec = "'dask[distributed]'"

    def __init__(self, ctx: BenchContext) -> None:
        super().__init__(ctx)
        self._stack = contextlib.ExitStack()

    def open(self) -> dict[str, str]:
        import dask.array as da
        from distributed import Client, LocalCluster

        versions = {"dask": dist_version("dask")}
        cluster = self._stack.enter_context(
            # two single-threaded process workers on loopback, no dashboard: the dask backend's setup
            LocalCluster(  # type: ignore[no-untyped-call]
                n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                dashboard_address="127.0.0.1:0", scheduler_kwargs={"dashboard": False},
            )
        )
        self.client: Any = self._stack.enter_context(Client(cluster, set_as_default=False))  # type: ignore[no-untyped-call]
        self.arr: Any = da.from_zarr(str(self.ctx.data.zarr_path))  # type: ignore[no-untyped-call]
        return versions

    def close(self) -> None:
        self._stack.close()

    def full(self) -> Any:
        return self.arr.compute(scheduler=self.client)

    def stepped(self) -> Any:
        return self.arr[self.ctx.sel.stepped].compute(scheduler=self.client)

    def chunk(self) -> Any:
        return self.arr[self.ctx.sel.chunk].compute(scheduler=self.client)

    def points(self) -> Any:
        return self.arr.vindex[self.rows, self.cols].compute(scheduler=self.client)


def bench_dask_array(ctx: BenchContext) -> SystemRun:
    """Time the grid workloads with ``dask.array.from_zarr`` on a 2-worker distributed cluster (query: n/a)."""
    return run_grid_system(DaskArray(ctx))
