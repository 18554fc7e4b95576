"""TensorStore (``zarr3`` driver) on the zarr copy of the grid (the query does not apply)."""

from __future__ import annotations

from typing import Any

from common import TS_NAME, dist_version
from results import SystemRun
from systems.base import BenchContext, GridSystem, run_grid_system


class TensorStoreZarr3(GridSystem):
    """``arr[sel].read().result()``; points through ``vindex``."""

    name = TS_NAME
    requirement = "tensorstore"
    pip_spec = "tensorstore"

    def open(self) -> dict[str, str]:
        import tensorstore as ts

        spec = {"driver": "zarr3", "kvstore": {"driver": "file", "path": str(self.ctx.data.zarr_path)}}
        self.arr: Any = ts.open(spec, read=True).result()
        return {"tensorstore": dist_version("tensorstore")}

    def full(self) -> Any:
        return self.arr.read().result()

    def stepped(self) -> Any:
        return self.arr[self.ctx.sel.stepped].read().result()

    def chunk(self) -> Any:
        return self.arr[self.ctx.sel.chunk].read().result()

    def points(self) -> Any:
        return self.arr.vindex[self.rows, self.cols].read().result()


def bench_tensorstore(ctx: BenchContext) -> SystemRun:
    """Time the grid workloads with TensorStore (``zarr3`` driver) on the zarr copy (query: n/a)."""
    return run_grid_system(TensorStoreZarr3(ctx))
