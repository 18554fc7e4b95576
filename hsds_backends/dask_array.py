"""Dask arrays over HSDS datasets: what :meth:`hsds_backends.api.Dataset.to_dask` returns.

:func:`to_dask` builds a :class:`dask.array.Array` whose blocks are whole dataset chunks
(or, with ``chunks``, whole groups of them). The graph holds data only, never a live
:class:`~hsds_backends.api.Reader`, storage or event loop:

- one key holds a :class:`BlockSpec`: the configuration with its secrets removed, the
  bucket, the dataset's JSON and the reader class (pickled by reference);
- each block key is ``(read_block, spec_key, slices)``: the block's place in the dataset.

So the same graph runs on dask's threaded scheduler and on a ``distributed`` cluster.
Whoever runs a block task calls :func:`read_block`, which rebuilds a small reader from the
configuration — one per process and configuration, cached, driven by one event loop
thread per process — and reads the block's hyperslab with ``backend="inline"``. The
``inline`` backend is named, not left to the selector: the dask worker (or the threaded
scheduler's thread) *is* already the parallelism, and the selector could otherwise pick a
remote backend, or the ``dask`` backend, which would start a cluster inside the cluster.

Credentials never travel in the graph (docs/architecture.md §11). In the process that
built the graph (the threaded scheduler), the full configuration is remembered in a
process-local table and used by :func:`read_block`. A worker of another process reads
them from its environment (the standard ``AWS_*`` variables, ``~/.aws`` or an instance
role), as the ``dask`` backend's workers do: start the workers with
``env=hsds_backends.config.credentials_env(config)`` (``LocalCluster``) or give them
their own credentials.

This module imports dask only inside :func:`to_dask`: the core stays dask-free at import
time (``tests/test_plugins.py``).
"""

from __future__ import annotations

import asyncio
import atexit
import hmac
import json
import os
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

import numpy as np

from .config import SECRET_KEYS, Config
from .dataset import DatasetMeta
from .errors import SelectionError
from .plan import plan_hyperslab
from .selection import Hyperslab, Slice

if TYPE_CHECKING:
    import dask.array

    from .api import Reader

__all__ = ["BlockSpec", "block_reads", "block_shape", "read_block", "reset_block_reads", "to_dask"]

#: Words that make a config key secret (as :mod:`hsds_backends.config` redacts them).
_SECRET_WORDS: Final = ("secret", "password", "token")


@dataclass(frozen=True)
class BlockSpec:
    """What a block task needs to read: data only, picklable, without secrets.

    Attributes
    ----------
    config
        The configuration with every secret key removed.
    token
        A stable text form of ``config`` and of a keyed digest of its secrets: the key of
        the process's reader cache.
    bucket
        The dataset's bucket.
    dataset_json
        The dataset's JSON as stored (with its ``id``).
    reader_class
        The reader class to rebuild on a worker (a module-level class, pickled by name).
    """

    config: dict[str, Any]
    token: str
    bucket: str
    dataset_json: dict[str, Any]
    reader_class: type[Reader]


# ------------------------------------------------------------------ per-process state

_lock = threading.Lock()
#: Full configurations (with secrets) of graphs built in this process, by token.
_full_configs: dict[str, dict[str, Any]] = {}
_reads = [0]
#: Key of the secrets' digest in reader-cache tokens (never leaves this process).
_SALT: Final = os.urandom(32)


def block_reads() -> int:
    """Return how many blocks :func:`read_block` has read in this process (for tests and diagnostics)."""
    with _lock:
        return _reads[0]


def reset_block_reads() -> None:
    """Set this process's block-read counter (:func:`block_reads`) back to zero."""
    with _lock:
        _reads[0] = 0


class _Runtime:
    """This process's event loop thread and its readers, one per (reader class, configuration)."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.readers: dict[tuple[str, str], Reader] = {}
        self.thread = threading.Thread(target=self.loop.run_forever, name="hsds-backends-dask-array", daemon=True)
        self.thread.start()

    def reader(self, spec: BlockSpec) -> Reader:
        cls = spec.reader_class
        key = (f"{cls.__module__}.{cls.__qualname__}", spec.token)
        with _lock:
            r = self.readers.get(key)
            if r is None:
                config = _full_configs.get(spec.token, spec.config)
                # built on the loop's thread: a storage client belongs to the loop that made it
                r = self.readers[key] = asyncio.run_coroutine_threadsafe(_build(cls, config), self.loop).result()
        return r


    def close(self) -> None:
        """Close every reader (their storages), then stop the loop: at process exit."""
        readers, self.readers = list(self.readers.values()), {}
        if self.loop.is_running():
            for r in readers:
                try:
                    asyncio.run_coroutine_threadsafe(r.aclose(), self.loop).result(timeout=10)
                except Exception:  # noqa: BLE001 - best effort at exit
                    pass
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(timeout=10)


async def _build(cls: type[Reader], config: Mapping[str, Any]) -> Reader:
    return cls(dict(config))


_runtime: _Runtime | None = None


def _get_runtime() -> _Runtime:
    global _runtime
    with _lock:
        if _runtime is None:
            _runtime = _Runtime()
            atexit.register(_runtime.close)
        return _runtime


def _forget_runtime() -> None:
    # a forked child has none of its parent's threads: its first block builds a new runtime
    global _runtime, _lock
    _runtime = None
    _lock = threading.Lock()


os.register_at_fork(after_in_child=_forget_runtime)


# ------------------------------------------------------------------ the block task


def read_block(spec: BlockSpec, index: tuple[slice, ...]) -> np.ndarray[Any, Any]:
    """Read one block: the hyperslab ``index`` (a ``slice(start, stop)`` per axis) of the dataset.

    Runs where dask runs the task. The reader is rebuilt from ``spec`` once per process
    and configuration; the read runs on the ``inline`` backend (the caller is already
    the parallelism, see the module docstring).

    Parameters
    ----------
    spec
        The graph's :class:`BlockSpec`.
    index
        The block's place in the dataset; ``()`` for a scalar dataset.

    Returns
    -------
    numpy.ndarray
        The block, of the dataset's dtype (its byte order included).
    """
    with _lock:
        _reads[0] += 1
    rt = _get_runtime()
    reader = rt.reader(spec)
    meta = DatasetMeta.from_json(dict(spec.dataset_json), spec.bucket, chunk_bytes_limit=reader.chunk_bytes_limit)
    shape = tuple(s.stop - s.start for s in index)
    if any(n == 0 for n in shape):
        return np.empty(shape, dtype=meta.dtype)
    sel = Hyperslab(tuple(Slice(s.start, s.stop, 1) for s in index), (False,) * len(index))
    plan = plan_hyperslab(meta, sel, None, limits=reader.limits)
    result = asyncio.run_coroutine_threadsafe(reader.run(plan, backend="inline"), rt.loop).result()
    return result.data


# ------------------------------------------------------------------ building the array


def _plain_config(config: Mapping[str, Any]) -> dict[str, Any]:
    return config.to_dict() if isinstance(config, Config) else dict(config)


def _is_secret(key: str) -> bool:
    return key in SECRET_KEYS or any(w in key.lower() for w in _SECRET_WORDS)


def block_shape(shape: Sequence[int], chunk_shape: Sequence[int], chunks: Any = None) -> tuple[int, ...]:
    """Return the dask block shape for ``chunks``, checked against the dataset's chunk shape.

    Parameters
    ----------
    shape
        The dataset's shape.
    chunk_shape
        The dataset's chunk shape.
    chunks
        ``None`` (one block per dataset chunk); an ``int`` (the same block extent on every
        axis); or one entry per axis: an ``int``, or ``-1`` / ``None`` for the whole axis.
        Every extent must be a positive multiple of the chunk extent on its axis (or cover
        the whole axis), so that each block is a whole group of chunks.

    Raises
    ------
    SelectionError
        ``chunks`` is not a whole number of dataset chunks on some axis.
    """
    ndim = len(shape)
    if ndim == 0:
        if chunks not in (None, (), -1):
            raise SelectionError(f"chunks={chunks!r} for a scalar dataset; give chunks=None")
        return ()
    if chunks is None:
        return tuple(int(c) for c in chunk_shape)
    if isinstance(chunks, (int, np.integer)) and not isinstance(chunks, bool):
        entries: list[Any] = [int(chunks)] * ndim
    elif isinstance(chunks, (tuple, list)):
        entries = list(chunks)
    else:
        raise SelectionError(
            f"chunks={chunks!r} is not supported; give None (one block per dataset chunk), an int, "
            f"or one int per axis that is a multiple of the chunk shape {tuple(chunk_shape)}"
        )
    if len(entries) != ndim:
        raise SelectionError(f"chunks={chunks!r} has {len(entries)} entries; the dataset has {ndim} axes (shape {tuple(shape)})")
    out: list[int] = []
    for axis, (e, n, c) in enumerate(zip(entries, shape, chunk_shape, strict=True)):
        if e is None or (isinstance(e, (int, np.integer)) and not isinstance(e, bool) and int(e) == -1):
            out.append(max(int(n), 1))
            continue
        if not isinstance(e, (int, np.integer)) or isinstance(e, bool) or int(e) <= 0:
            raise SelectionError(
                f"chunks={chunks!r}: entry {e!r} on axis {axis} is not a positive int (or -1/None for the whole axis)"
            )
        e = int(e)
        if e % int(c) and e < int(n):
            raise SelectionError(
                f"chunks={chunks!r}: {e} on axis {axis} is not a multiple of the dataset's chunk extent {c} "
                f"(chunk shape {tuple(chunk_shape)}); blocks must be whole dataset chunks, e.g. {int(c) * max(e // int(c), 1)}"
            )
        out.append(e)
    return tuple(out)


def _axis_chunks(n: int, b: int) -> tuple[int, ...]:
    if n == 0:
        return (0,)
    full, rest = divmod(n, b)
    return (b,) * full + ((rest,) if rest else ())


def to_dask(
    meta: DatasetMeta, config: Mapping[str, Any], reader_class: type[Reader], chunks: Any = None
) -> dask.array.Array:
    """Return a dask array over the dataset ``meta``, read with a reader built from ``config``.

    Parameters
    ----------
    meta
        The dataset (its JSON, :attr:`DatasetMeta.source_json`, goes into the graph).
    config
        The reader's configuration; secret keys stay out of the graph.
    reader_class
        The class that block tasks build their reader with (:class:`~hsds_backends.api.Reader`).
    chunks
        The block shape, see :func:`block_shape`.

    Returns
    -------
    dask.array.Array
        Blocks are whole dataset chunks (or groups of them); computing reads them through
        :func:`read_block`.

    Raises
    ------
    SelectionError
        ``chunks`` is not a whole number of dataset chunks.
    """
    import dask.array as da
    from dask.base import tokenize
    from dask.highlevelgraph import HighLevelGraph

    bshape = block_shape(meta.shape, meta.chunks, chunks)
    full = _plain_config(config)
    plain = {k: v for k, v in full.items() if not _is_secret(k)}
    secrets = {k: v for k, v in full.items() if _is_secret(k) and v is not None}
    # configurations that differ only in their secrets get different readers; the tag is a
    # keyed digest (a key of this process only), so the graph says nothing about the secrets
    tag = hmac.new(_SALT, json.dumps(secrets, sort_keys=True, default=str).encode(), "sha256").hexdigest()[:16] if secrets else ""
    token = json.dumps({"config": plain, "secrets": tag}, sort_keys=True, default=str)
    dataset_json = dict(meta.source_json)
    dataset_json.setdefault("id", meta.id)
    spec = BlockSpec(plain, token, meta.bucket, dataset_json, reader_class)
    with _lock:
        _full_configs[token] = full
    tok = tokenize(token, meta.bucket, json.dumps(dataset_json, sort_keys=True, default=str), bshape)
    name = f"hsds-{meta.id}-{tok}"
    spec_key = f"hsds-spec-{tok}"
    axes = tuple(_axis_chunks(int(n), b) for n, b in zip(meta.shape, bshape, strict=True))
    dsk: dict[Any, Any] = {spec_key: spec}
    for block in np.ndindex(*(len(a) for a in axes)):
        index = []
        for ax, i in enumerate(block):
            start = sum(axes[ax][:i])
            index.append(slice(start, start + axes[ax][i]))
        dsk[(name, *block)] = (read_block, spec_key, tuple(index))
    graph = HighLevelGraph.from_collections(name, dsk, dependencies=())
    array_cls: Any = da.Array  # dask's constructor is untyped
    out: dask.array.Array = array_cls(graph, name, axes, dtype=meta.dtype, meta=np.empty((0,) * len(axes), dtype=meta.dtype))
    return out
