"""Worker side of the ``dask`` backend: the code that runs inside dask workers.

:class:`WorkerState` is a :class:`distributed.WorkerPlugin` that the backend
registers once per client. In every worker process it keeps the open storages (one
per storage description and executor thread, each thread with its own event loop,
because an S3 or Azure client belongs to the loop that made it) and, when the client
sent them, the storage credentials (S3 keys, Azure's connection string): they reach a
worker once, inside the plugin, never inside a task.

:func:`run_batch` is the task function. It receives a batch of chunk tasks in their
JSON wire form (:meth:`hsds_backends.tasks.ChunkTask.to_wire`), refuses any task that
reads outside the allowed buckets or another object than its chunk
(:meth:`hsds_backends.security.Containment.check_task`, docs/architecture.md §11) before
fetching anything, runs the core kernel on each, one after another on the worker's
thread (:func:`hsds_backends.kernel.run_task_sync`; posix storage is read right there,
as ``inline`` reads it, other storages are fetched ahead, up to :data:`FETCH_AHEAD` at
once) and returns ``(header, payload)``:

- ``header``: JSON text, one entry per task in order: ``[nbytes, fetched, decoded]``
  for a result (its length, and the stored and decoded byte counts for the read's
  statistics), ``-1`` for a missing chunk (the client fills), or ``{"error": ...}``
  holding :func:`hsds_backends.tasks.error_to_wire` of the exception. A batch stops
  at its first error, as a read stops at its first failed chunk.
- ``payload``: one ``memoryview`` per result. distributed sends each memoryview as a
  raw frame, without pickling or joining, and hands the client memoryviews of its
  receive buffer, so chunk results cross the wire as bytes and are copied once on the
  client, into the output array.

This module imports the core and distributed only; the backend imports it lazily.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
from typing import TYPE_CHECKING, Any, Final

from distributed import WorkerPlugin, get_worker

from hsds_backends.kernel import fetch, run_task_sync
from hsds_backends.security import Containment
from hsds_backends.storage import storage_from_config
from hsds_backends.tasks import ChunkTask, error_to_wire

if TYPE_CHECKING:
    from hsds_backends.storage import Storage

__all__ = ["DELAY_ENV", "FETCH_AHEAD", "WorkerState", "run_batch"]

#: Test hook: seconds to sleep before each chunk on the worker (slow reads for the lost-worker test).
DELAY_ENV: Final = "HSDS_BACKENDS_DASK_TEST_DELAY"
#: Storage reads in flight per batch (overlaps S3 latency with decoding).
FETCH_AHEAD: Final = 8


class _Source:
    """What a batch reads from: an open storage, the buckets its tasks may read, the chunk size bound."""

    __slots__ = ("chunk_bytes_limit", "containment", "storage")

    def __init__(self, storage: Storage, containment: Containment, chunk_bytes_limit: int) -> None:
        self.storage = storage
        self.containment = containment
        self.chunk_bytes_limit = chunk_bytes_limit


class _ThreadState:
    """One executor thread's event loop and open storages."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.sources: dict[str, _Source] = {}

    def close(self) -> None:
        if self.loop.is_running():  # a batch still runs on it (the worker is closing mid-task): leave it
            return
        sources, self.sources = list(self.sources.values()), {}
        for src in sources:
            try:
                self.loop.run_until_complete(src.storage.aclose())
            except Exception:  # noqa: BLE001, S110 - closing is best effort at worker shutdown
                pass
        self.loop.close()


class WorkerState(WorkerPlugin):  # type: ignore[misc]
    """Per-worker state of one dask backend: open storages and, optionally, storage credentials.

    Parameters
    ----------
    name
        Plugin name, unique per backend instance (tasks name the plugin they need).
    credentials
        ``aws_access_key_id``/``aws_secret_access_key``/``aws_session_token`` (or
        ``azure_connection_string``) to add to every storage description on the worker, or
        ``None`` to use the worker's own (AWS credential chain: environment, ``~/.aws``,
        instance role; Azure: ``AZURE_CONNECTION_STRING``).
    """

    def __init__(self, name: str, credentials: dict[str, str] | None = None) -> None:
        self.name = name
        self._credentials = dict(credentials) if credentials else None
        self._setup_runtime()

    def _setup_runtime(self) -> None:
        self._local = threading.local()
        self._threads: list[_ThreadState] = []
        self._lock = threading.Lock()

    def __repr__(self) -> str:  # never show the credentials
        return f"<WorkerState {self.name!r} credentials={'sent' if self._credentials else 'worker chain'}>"

    def __getstate__(self) -> dict[str, Any]:
        return {"name": self.name, "_credentials": self._credentials}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.name = state["name"]
        self._credentials = state["_credentials"]
        self._setup_runtime()

    # ------------------------------------------------------------- plugin hooks
    def setup(self, worker: Any) -> None:
        pass

    async def teardown(self, worker: Any) -> None:
        with self._lock:
            threads, self._threads = self._threads, []
        for ts in threads:
            # each loop is idle now; run it in a thread of its own, since this one runs the worker's loop
            await asyncio.to_thread(ts.close)

    # ----------------------------------------------------------------- batches
    def _thread_state(self) -> _ThreadState:
        ts: _ThreadState | None = getattr(self._local, "state", None)
        if ts is None:
            ts = _ThreadState()
            self._local.state = ts
            with self._lock:
                self._threads.append(ts)
        return ts

    def _source(self, ts: _ThreadState, storage_text: str) -> _Source:
        src = ts.sources.get(storage_text)
        if src is None:
            desc = json.loads(storage_text)
            cfg = dict(desc["storage"])
            if self._credentials:
                cfg.update(self._credentials)
            buckets = desc["allowed_buckets"]
            containment = Containment(None if buckets is None else frozenset(buckets))
            src = ts.sources[storage_text] = _Source(
                storage_from_config(cfg), containment, int(desc["chunk_bytes_limit"])
            )
        return src

    def run_batch(self, storage_text: str, tasks_text: str) -> tuple[str, list[memoryview]]:
        """Run the kernel over one batch; see the module docstring for the answer's form."""
        ts = self._thread_state()
        wires = json.loads(tasks_text)
        try:
            source = self._source(ts, storage_text)
        except Exception as exc:  # noqa: BLE001 - reported like any chunk failure (a bad storage config)
            cid = wires[0].get("chunk_id") if wires and isinstance(wires[0], dict) else None
            return json.dumps([{"error": error_to_wire(exc, cid)}]), []
        entries, parts = ts.loop.run_until_complete(_execute(source, wires, _test_delay()))
        return json.dumps(entries, separators=(",", ":")), [memoryview(p) for p in parts]


def _test_delay() -> float:
    try:
        return float(os.environ.get(DELAY_ENV) or 0)
    except ValueError:
        return 0.0


async def _execute(
    source: _Source, wires: list[Any], delay: float
) -> tuple[list[Any], list[bytes | bytearray | memoryview]]:
    entries: list[Any] = []
    parts: list[bytes | bytearray | memoryview] = []
    tasks: list[ChunkTask] = []
    bad: dict[str, Any] | None = None
    storage = source.storage
    for w in wires:
        try:
            task = ChunkTask.from_wire(w, chunk_bytes_limit=source.chunk_bytes_limit)
            # before any fetch: a task built from a crafted dataset JSON reads only what it may
            source.containment.check_task(task)
        except Exception as exc:  # noqa: BLE001 - a malformed or refused task fails like a bad chunk, in its place
            bad = {"error": error_to_wire(exc, w.get("chunk_id") if isinstance(w, dict) else None)}
            break
        tasks.append(task)
    read = storage.sync_reader()  # posix: read in this thread, just before each decode (no fetch-ahead needed)
    sem = asyncio.Semaphore(FETCH_AHEAD)

    async def get(t: ChunkTask) -> bytes | None:
        async with sem:
            return await fetch(t, storage)

    fetches = [] if read is not None else [asyncio.ensure_future(get(t)) for t in tasks]
    try:
        for k, t in enumerate(tasks):
            try:
                data = None if read is not None else await fetches[k]
                if delay:
                    time.sleep(delay)  # noqa: ASYNC251 - stands in for decoding, which blocks this loop too
                res = run_task_sync(t, read, data)
            except Exception as exc:  # noqa: BLE001 - sent back as data, rebuilt client-side
                entries.append({"error": error_to_wire(exc, t.chunk_id)})
                return entries, parts
            if res.status == "missing":
                entries.append(-1)
            else:
                entries.append([len(res.data), res.fetched, res.decoded])
                parts.append(res.data)
    finally:
        for f in fetches:
            f.cancel()
        await asyncio.gather(*fetches, return_exceptions=True)
    if bad is not None:
        entries.append(bad)
    return entries, parts


def run_batch(plugin_name: str, storage_text: str, tasks_text: str) -> tuple[str, list[memoryview]]:
    """Task function: run a batch of chunk tasks on this worker (see the module docstring).

    Parameters
    ----------
    plugin_name
        Name of the backend's :class:`WorkerState` plugin on this worker.
    storage_text
        JSON object: ``storage`` (:meth:`hsds_backends.storage.Storage.to_config`, never a
        secret), ``allowed_buckets`` (a list, or ``null`` for any bucket) and
        ``chunk_bytes_limit`` (config keys of the same names).
    tasks_text
        JSON list of chunk tasks in wire form.

    Raises
    ------
    RuntimeError
        The plugin is not registered on this worker (then ``retries`` reruns the
        batch, possibly on another worker).
    """
    worker = get_worker()
    state = worker.plugins.get(plugin_name)
    if not isinstance(state, WorkerState):
        raise RuntimeError(  # noqa: TRY004 - a missing plugin, not a caller's type error
            f"dask worker {worker.address} has no hsds-backends plugin {plugin_name!r}; "
            "the client registers it on connect, so the worker joined without it; retry the read"
        )
    return state.run_batch(storage_text, tasks_text)
