"""zarr-python on the zarr copy of the grid (the query does not apply)."""

from __future__ import annotations

from typing import Any

from common import ZARR_NAME
from results import SystemRun
from systems.base import BenchContext, GridSystem, run_grid_system


class ZarrPython(GridSystem):
    """``zarr.open_array(...)[sel]``; points through ``vindex``."""

    name = ZARR_NAME
    requirement = "zarr"
    pip_spec = "zarr"

    def open(self) -> dict[str, str]:
        import zarr

        self.z: Any = zarr.open_array(str(self.ctx.data.zarr_path), mode="r")
        return {"zarr": zarr.__version__}

    def full(self) -> Any:
        return self.z[...]

    def stepped(self) -> Any:
        return self.z[self.ctx.sel.stepped]

    def chunk(self) -> Any:
        return self.z[self.ctx.sel.chunk]

    def points(self) -> Any:
        return self.z.vindex[self.rows, self.cols]


def bench_zarr(ctx: BenchContext) -> SystemRun:
    """Time the grid workloads with zarr-python on the zarr copy (query: not applicable)."""
    return run_grid_system(ZarrPython(ctx))
