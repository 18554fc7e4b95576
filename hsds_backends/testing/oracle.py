"""numpy oracles: what a read must return, computed without any backend."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..tasks import query_dtype

__all__ = ["assert_same", "oracle_index", "query_rows"]


def assert_same(actual: np.ndarray[Any, Any], expected: np.ndarray[Any, Any]) -> None:
    """Assert byte identity (dtype, shape, bytes; element-wise for object arrays)."""
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    assert actual.dtype == expected.dtype, (actual.dtype, expected.dtype)
    if expected.dtype.hasobject and expected.dtype.names is not None:
        for name in expected.dtype.names:
            assert_same(actual[name], expected[name])
        return
    if expected.dtype.hasobject:
        for a, e in zip(actual.reshape(-1), expected.reshape(-1), strict=True):
            if isinstance(e, np.ndarray):
                assert isinstance(a, np.ndarray) and a.dtype == e.dtype and a.tobytes() == e.tobytes()
            else:
                assert type(a) is type(e) and a == e, (a, e)
    else:
        assert actual.tobytes() == expected.tobytes()


def oracle_index(arr: np.ndarray[Any, Any], sel: Any) -> np.ndarray[Any, Any]:
    """numpy indexing, except that coordinate lists index orthogonally (outer product, ints drop), as we do.

    numpy's mixed advanced indexing (``a[0, :, [1, 2]]``) would move or zip dims instead.
    """
    if isinstance(sel, tuple) and any(isinstance(k, list) for k in sel):
        arrays = [np.asarray(k) if isinstance(k, list) else np.atleast_1d(np.arange(arr.shape[d])[k]) for d, k in enumerate(sel)]
        out: np.ndarray[Any, Any] = arr[np.ix_(*arrays)]
        drop = tuple(d for d, k in enumerate(sel) if isinstance(k, (int, np.integer)))
        return out.reshape([n for d, n in enumerate(out.shape) if d not in drop]) if drop else out
    res = arr[sel]
    if not isinstance(res, np.ndarray):  # a single element: keep the dtype (object stays object)
        out0 = np.empty((), dtype=arr.dtype)
        out0[()] = res
        return out0
    return res


def query_rows(table: np.ndarray[Any, Any], idx: np.ndarray[Any, Any], fields: tuple[str, ...] | None = None) -> np.ndarray[Any, Any]:
    qdt = query_dtype(table.dtype, fields)
    out = np.empty(len(idx), dtype=qdt)
    out[qdt.names[0]] = idx  # type: ignore[index]
    for f in qdt.names[1:]:  # type: ignore[index]
        out[f] = table[f][idx]
    return out
