"""The workloads' selections and their numpy oracle answers, and the byte-for-byte check every result passes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from data import BenchData, Profile


@dataclass(frozen=True)
class Selections:
    """The selections of the workloads (numpy indices into the grid, points, query).

    Attributes
    ----------
    stepped, chunk : tuple of slice
        ``[::4, 1000:3000]`` and one whole chunk (chunk index (1, 1)).
    points : numpy.ndarray
        ``(n, 2)`` int64 coordinates.
    """

    stepped: tuple[slice, slice]
    chunk: tuple[slice, slice]
    points: np.ndarray[Any, Any]

    @classmethod
    def for_profile(cls, p: Profile) -> Selections:
        """Build the selections of profile ``p`` (points are deterministic)."""
        rng = np.random.default_rng(p.seed + 1)
        pts = rng.integers(0, p.grid_size, size=(p.n_points, 2), dtype=np.int64)
        c, n = p.grid_chunk, p.grid_size
        # numpy clips slices to the shape, TensorStore does not: store them clipped
        stepped = tuple(slice(*s.indices(n)) for s in np.s_[::4, 1000:3000])
        return cls(stepped, np.s_[c : 2 * c, c : 2 * c], pts)  # type: ignore[arg-type]


def expected_results(data: BenchData, sel: Selections) -> dict[str, np.ndarray[Any, Any]]:
    """Return the oracle answer of every workload.

    ``query`` (the rows matching ``temp > 20``, :data:`common.QUERY`) is the hsds-backends form
    (``index`` then the fields); ``query_rows`` the plain matching rows, as HSDS returns them.
    """
    from hsds_backends.tasks import query_dtype

    grid, table = data.grid, data.table
    idx = np.nonzero(table["temp"] > 20)[0]
    rows = np.empty(len(idx), dtype=query_dtype(table.dtype, None))
    rows["index"] = idx
    for f in table.dtype.names or ():
        rows[f] = table[f][idx]
    return {
        "full": grid,
        "stepped": grid[sel.stepped],
        "chunk": grid[sel.chunk],
        "points": grid[sel.points[:, 0], sel.points[:, 1]],
        "query": rows,
        "query_rows": table[idx],
    }


def identical(got: Any, exp: np.ndarray[Any, Any]) -> bool:
    """Return True when ``got`` has the dtype, shape and bytes of ``exp``."""
    a = np.asarray(got)
    return a.dtype == exp.dtype and a.shape == exp.shape and a.tobytes() == exp.tobytes()
