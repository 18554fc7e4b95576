"""The Python API: open a domain, get a dataset, read a selection, points or a query.

Async::

    async with Reader(config) as reader:
        dom = await reader.open("/home/user/file.h5")
        dset = await dom.get("/g1/temperature")
        block = await dset.read("[0:100:4, 5]")        # HSDS select string
        block = await dset.read(np.s_[0:100:4, 5])     # numpy-style index
        values = await dset.read_points([[1, 2], [3, 4]])
        rows = await dset.query("(temp > 20) & (id < 5)", limit=10)

Sync (a private event loop runs in a background thread)::

    with open_domain("/home/user/file.h5", root_dir="data") as dom:
        block = dom["/g1/temperature"][0:100:4, 5]
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import threading
import time
from collections.abc import Callable, Coroutine, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from .config import CORE_KEYS, load_config, option
from .dataset import DatasetMeta
from .codecs.filters import filter_list
from .dtypes import vlen_of
from .errors import DatasetJsonError, DatasetNotFoundError, DomainNotFoundError, HsdsBackendsError, NotFoundError, SelectionTypeError
from .h5py_index import H5Index, check_fields, iter_chunk_slices, parse_h5py_index
from .chunk_table import check_table, locations_from_rows, table_points
from .ids import chunk_index, domain_key, object_key
from .execute import Execution, ResultSink
from .attrs import AttributeManager
from .groups import AsyncGroup, ExternalLink, Group, Link
from ._ledger import BackendCounters, Ledger
from .model import Backend, Choice, ReadRequest, RequestStats, current_stats
from .plan import Assembler, ReadLimits, ReadPlan, plan_hyperslab, plan_points, plan_query
from .plugins import backend_names, get_plugin_manager, make_backend
from .security import Containment
from .selection import Hyperslab, Slice, from_index, parse_select
from .selector import candidates_for, estimate, only_core_implements, rank, select_backend
from .storage import Storage, check_bucket, storage_from_config

if TYPE_CHECKING:
    import dask.array
    import pluggy

__all__ = ["Reader", "AsyncDomain", "AsyncDataset", "ReadResult", "ReadStats", "open_domain", "Domain", "Dataset", "to_selection", "AsyncGroup", "Group", "ExternalLink"]

T = TypeVar("T")
log = logging.getLogger(__name__)


#: Per-request figures; kept as a name for callers of 0.1.
ReadStats = RequestStats


@dataclass
class ReadResult:
    """An assembled answer with its statistics."""

    data: np.ndarray[Any, Any]
    stats: RequestStats = field(default_factory=RequestStats)


def to_selection(selection: Any, shape: Sequence[int]) -> Hyperslab:
    """Turn ``None``, an HSDS select string, a :class:`Hyperslab` or a numpy-style index into a hyperslab."""
    if selection is None:
        return Hyperslab.all(shape)
    if isinstance(selection, Hyperslab):
        return selection
    if isinstance(selection, str):
        return parse_select(selection, shape)
    return from_index(selection, shape)


class Reader:
    """Owns the config, storage, plugin manager and backends used by reads.

    Parameters
    ----------
    config
        A mapping of config keys (see :func:`hsds_backends.config.load_config`);
        ``None`` loads ``config.yml`` and the environment.
    storage
        An open :class:`Storage`; default: opened from ``config``.
    pm
        A plugin manager; default: the process-wide one.
    """

    def __init__(
        self,
        config: Mapping[str, Any] | None = None,
        *,
        storage: Storage | None = None,
        pm: pluggy.PluginManager | None = None,
    ) -> None:
        self.config: Mapping[str, Any] = load_config() if config is None else config
        self.storage = storage if storage is not None else storage_from_config(self.config)
        self._own_storage = storage is None
        self.pm = pm or get_plugin_manager()
        self.limits = ReadLimits.from_config(self.config)
        """Bounds on each read (config ``read_chunks_limit``, ``read_bytes_limit``)."""
        self.chunk_bytes_limit: int = option(self.config, "chunk_bytes_limit", CORE_KEYS["chunk_bytes_limit"])
        self.ledger = Ledger()
        """The selector's measurements of this reader's backends (latency per plan shape, counters)."""
        self._backends: dict[str, Backend] = {}
        self._names: tuple[tuple[object, ...], list[str]] = ((), [])

    def __repr__(self) -> str:
        return f"Reader(storage={self.storage!r}, backends={sorted(self._backends)})"

    # -------------------------------------------------------------- backends
    def backend(self, name: str) -> Backend:
        """Return backend ``name``, building it on first use (in-process backends may share our storage)."""
        b = self._backends.get(name)
        if b is None:
            b = self._backends[name] = make_backend(name, self.config, self.pm, storage=self.storage)
        return b

    def counters(self, name: str) -> BackendCounters:
        """Return the running counters of backend ``name`` in this reader (requests, tasks, failures)."""
        return self.ledger.counters(self.backend(name))

    def backend_names(self) -> list[str]:
        """Return the installed backends' names, sorted (recomputed only when the plugins change)."""
        impls = tuple(self.pm.hook.hsds_backends_backend_classes.get_hookimpls())
        if impls != self._names[0]:
            self._names = (impls, backend_names(self.pm))
        return self._names[1]

    def request(self, plan: ReadPlan, *, nonstrict: bool = False, budget_dollars: float | None = None) -> ReadRequest:
        """Wrap ``plan`` as a :class:`ReadRequest` whose estimates go through the ``estimate_cost`` hook.

        When no plugin implements that hook, the request asks each backend's
        :meth:`Backend.estimate` directly, as the core's implementation would.
        """
        if only_core_implements(self.pm, "hsds_backends_estimate_cost"):
            return ReadRequest(plan, nonstrict, budget_dollars, ledger=self.ledger)
        holder: list[ReadRequest] = []
        req = ReadRequest(plan, nonstrict, budget_dollars, estimator=lambda b: estimate(self.pm, b, holder[0]), ledger=self.ledger)
        holder.append(req)
        return req

    def choose(
        self, plan: ReadPlan, *, backend: str | Backend | None = None, nonstrict: bool = False, budget_dollars: float | None = None
    ) -> tuple[Backend, str]:
        """Return the backend that would run ``plan`` and the one-line reason (no I/O)."""
        choice = self._choose(self.request(plan, nonstrict=nonstrict, budget_dollars=budget_dollars), backend)
        return choice.backend, choice.reason

    def _choose(self, request: ReadRequest, backend: str | Backend | None) -> Choice:
        return select_backend(
            request, explicit=backend, config=self.config, pm=self.pm, get_backend=self.backend, names=self.backend_names()
        )

    def _others(self, request: ReadRequest, chosen: Backend) -> list[Backend]:
        """Other backends that can serve ``request``, fastest estimate first."""
        cands, _ = candidates_for(request, self.backend_names(), self.backend)
        return rank(request, [b for b in cands if b is not chosen])

    def decide(
        self, plan: ReadPlan, *, backend: str | Backend | None = None, nonstrict: bool = False, budget_dollars: float | None = None
    ) -> Choice:
        """Return the selector's :class:`Choice` for ``plan`` (backend, lazy reason, estimate; no I/O).

        A service that makes one decision for several plans (the HSDS front: one per client
        request) passes it back to :meth:`execute` as ``choice``.
        """
        return self._choose(self.request(plan, nonstrict=nonstrict, budget_dollars=budget_dollars), backend)

    async def run(
        self,
        plan: ReadPlan,
        *,
        backend: str | Backend | None = None,
        nonstrict: bool = False,
        budget_dollars: float | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> ReadResult:
        """Execute ``plan`` on the chosen backend and assemble the answer.

        Failover (config ``failover``: ``auto`` = only for backends the selector
        chose, ``always``, ``never``) re-runs tasks of a failed backend on the
        next-best one; hedging (config ``hedge_multiple`` > 0) duplicates
        stragglers on the next-best backend. See :mod:`hsds_backends.execute`.

        The wall time of a request that ran entirely on its backend, which
        was already started, is recorded in the backend's measured latency
        (:meth:`Ledger.observe <hsds_backends._ledger.Ledger.observe>`) for the selector's next estimates; a read
        that cold-started the backend is not (cold start is modelled by
        ``cold_start_s``), nor one that failed over or whose hedge won.
        """
        asm = Assembler(plan)
        stats = await self.execute(plan, asm, backend=backend, nonstrict=nonstrict, budget_dollars=budget_dollars, progress=progress)
        t0 = time.perf_counter()
        data = asm.result()
        stats.seconds += time.perf_counter() - t0
        return ReadResult(data, stats)

    async def execute(
        self,
        plan: ReadPlan,
        sink: ResultSink,
        *,
        backend: str | Backend | None = None,
        nonstrict: bool = False,
        budget_dollars: float | None = None,
        progress: Callable[[int], None] | None = None,
        choice: Choice | None = None,
    ) -> RequestStats:
        """Run ``plan``'s tasks on the chosen backend (or ``choice``'s), handing each result to ``sink``.

        What :meth:`run` does without assembling: selection, failover, hedging and the
        ledger's measurements are the same. ``sink.add(i, result)`` is called once per task
        (:class:`~hsds_backends.execute.ResultSink`); a sink with ``filled`` and
        ``bytes_returned`` counters (an :class:`~hsds_backends.plan.Assembler`) has them
        copied into the returned stats.

        Raises
        ------
        HsdsBackendsError
            The last backend's error when no backend could finish the tasks; the tasks
            ``sink`` received before are complete.
        """
        located_s = 0.0
        if plan.meta.layout_class == "H5D_CHUNKED_REF_INDIRECT":
            t_loc = time.perf_counter()
            await self.locate(plan, backend=backend if backend is not None else (choice.backend if choice is not None else None))
            located_s = time.perf_counter() - t_loc  # reported, not measured as the backend's latency (it may have started it)
        t0 = time.perf_counter()
        request = self.request(plan, nonstrict=nonstrict, budget_dollars=budget_dollars)
        if choice is None:
            choice = self._choose(request, backend)
        b = choice.backend
        est = choice.estimate if choice.estimate is not None else request.estimate(b)
        started = b.started
        # the reason is built only if someone reads it (selection runs on every read)
        chosen = choice
        stats = RequestStats(b.name, lambda: chosen.reason, plan.kind, plan.num_chunks, estimate_seconds=est.seconds, estimate_dollars=est.dollars)
        mode = str(self.config.get("failover") or "auto").lower()
        allow_failover = mode == "always" or (mode == "auto" and not choice.named)
        ex = Execution(
            plan,
            sink,
            stats,
            fallbacks=(lambda chosen: self._others(request, chosen)) if allow_failover else (lambda chosen: []),
            hedge_backend=lambda chosen: next(iter(self._others(request, chosen)), None),
            hedge_multiple=float(self.config.get("hedge_multiple") or 0.0),
            hedge_min_seconds=float(self.config.get("hedge_min_seconds") or 0.05),
            progress=progress,
            ledger=self.ledger,
        )
        token = current_stats.set(stats)
        try:
            if plan.tasks:
                self.ledger.latency(b).note_attempt(request.shape)
                await ex.run(b)
        finally:
            current_stats.reset(token)
        stats.missing = getattr(sink, "filled", 0)
        stats.bytes_returned = getattr(sink, "bytes_returned", 0)
        stats.seconds = time.perf_counter() - t0
        if plan.tasks and started and not stats.failovers and not stats.hedges_won:
            self.ledger.observe(b, request, stats.seconds)
        stats.seconds += located_s
        if log.isEnabledFor(logging.INFO):  # to_json copies every field: not for nothing on each request
            log.info("read %s: %s", plan.meta.id, stats.to_json())
        return stats

    async def locate(self, plan: ReadPlan, *, backend: str | Backend | None = None) -> None:
        """Look up where the chunks of an ``H5D_CHUNKED_REF_INDIRECT`` plan are, in place (docs/hsds-format.md §3.5).

        Their locations are rows of the dataset's chunk table, another HSDS dataset: one
        point read of it through this reader (on ``backend``, else the selector's choice)
        gives every pending task its byte range(s) in the linked file. :meth:`execute` calls
        this; tasks located already are left alone.

        Raises
        ------
        DatasetJsonError
            The chunk table is missing or unusable, or an entry is malformed (naming the
            chunk and the value).
        LimitError
            An entry's size is over ``chunk_bytes_limit``.
        StoragePathError
            An entry names a file outside the allowed buckets (config ``allowed_buckets``,
            default ``bucket_name``), as a DN or the Lambda function would refuse it.
        """
        pending = [i for i, t in enumerate(plan.tasks) if t.location is not None and t.location.pending]
        if not pending:
            return
        meta = plan.meta
        table = await self.dataset_meta(meta.bucket, str(meta.chunk_table_id), what="chunk table", of=f" of dataset {meta.id}")
        check_table(meta, table)
        cids = [plan.tasks[i].chunk_id for i in pending]
        indices = [chunk_index(c) for c in cids]
        points = table_points(meta, indices, table.data_shape)
        rows = (await self.run(plan_points(table, points, limits=self.limits), backend=backend)).data
        located = locations_from_rows(meta, cids, indices, rows, chunk_bytes_limit=self.chunk_bytes_limit)
        containment = Containment.from_config(self.config)
        for i, loc in zip(pending, located, strict=True):
            plan.tasks[i] = task = replace(plan.tasks[i], location=loc)
            # a table is data: the files it names must be in allowed buckets here too, as on every service
            containment.check_task(task)

    async def dataset_meta(self, bucket: str, dset_id: str, *, what: str = "dataset", of: str = "") -> DatasetMeta:
        """Return the dataset ``dset_id`` of ``bucket`` (its JSON, parsed), wherever it is linked.

        ``what`` and ``of`` name it in messages: ``"{what} {dset_id}{of}"``.

        Raises
        ------
        DatasetJsonError
            ``dset_id`` is not a dataset id.
        DatasetNotFoundError
            No such dataset in the bucket.
        """
        try:
            key = object_key(dset_id)
        except HsdsBackendsError as exc:
            raise DatasetJsonError(f"{what} {dset_id!r}{of} is not a dataset id: {exc}") from None
        if not dset_id.startswith("d-"):
            raise DatasetJsonError(f"{what} {dset_id!r}{of} is not a dataset id (d-…)")
        j = await self._get_json(bucket, key)
        if not isinstance(j, dict):
            raise DatasetNotFoundError(f"{what} {dset_id}{of} is missing from bucket {bucket!r}")
        j.setdefault("id", dset_id)
        return DatasetMeta.from_json(j, bucket, chunk_bytes_limit=self.chunk_bytes_limit)

    # --------------------------------------------------------------- domains
    async def open(self, domain: str, bucket: str | None = None) -> AsyncDomain:
        """Open a domain: read its ``.domain.json`` and root group (docs/hsds-format.md §1.2)."""
        b = check_bucket(bucket or str(self.config.get("bucket_name") or "hsdstest"))
        key = domain_key(domain)
        djson = await self._get_json(b, key)
        if djson is None:
            raise DomainNotFoundError(
                f"domain {domain!r} not found in bucket {b!r} (no object {key!r} in {self.storage!r}); "
                "check the domain path, --bucket and --root-dir"
            )
        root = djson.get("root")
        if not root:
            raise DomainNotFoundError(f"{domain!r} in bucket {b!r} is a folder, not a domain; open a domain inside it")
        return AsyncDomain(self, domain, b, djson, root)

    async def _get_json(self, bucket: str, key: str) -> Any:
        raw = await self.storage.get(bucket, key)
        if raw is None:
            return None
        try:
            return json.loads(raw)
        except ValueError as exc:
            raise DatasetJsonError(f"object {key!r} in bucket {bucket!r} is not valid JSON: {exc}") from exc

    async def aclose(self) -> None:
        """Close every backend this reader built, then the storage it opened."""
        backends, self._backends = list(self._backends.values()), {}
        for b in backends:
            await b.aclose()
        if self._own_storage:
            await self.storage.aclose()

    async def __aenter__(self) -> Reader:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


def _links(group_json: Mapping[str, Any]) -> dict[str, Any]:
    links = group_json.get("links") or {}
    if isinstance(links, list):  # older layouts keep a list of link objects with a title
        return {str(lk.get("title")): lk for lk in links if isinstance(lk, dict)}
    return dict(links)


class AsyncDomain:
    """An open domain; :meth:`get` resolves a link path to a dataset."""

    def __init__(self, reader: Reader, domain: str, bucket: str, domain_json: Mapping[str, Any], root_id: str) -> None:
        self.reader = reader
        self.domain = domain
        self.bucket = bucket
        self.json = domain_json
        self.root_id = root_id

    def __repr__(self) -> str:
        return f"<AsyncDomain {self.domain!r} bucket={self.bucket!r}>"

    async def _obj(self, obj_id: str, dataset: str | None = None) -> dict[str, Any]:
        """Return object ``obj_id``'s JSON (``dataset``: the path it was reached by, for messages)."""
        j = await self.reader._get_json(self.bucket, object_key(obj_id))
        if j is None:
            if dataset is not None:
                raise DatasetNotFoundError(f"dataset {dataset!r} ({obj_id}) is missing from bucket {self.bucket!r}")
            raise NotFoundError(f"object {obj_id} of domain {self.domain!r} is missing from bucket {self.bucket!r}")
        if not isinstance(j, dict):
            raise DatasetJsonError(f"object {obj_id} of domain {self.domain!r} is not a JSON object (got {type(j).__name__})")
        return j

    async def resolve(self, h5path: str) -> str:
        """Return the object id at ``h5path`` (hard and soft links; a ``d-…`` id passes through)."""
        if h5path.startswith(("d-", "g-")):
            return h5path
        obj_id = self.root_id
        parts = [p for p in h5path.split("/") if p]
        hops = 0
        i = 0
        while i < len(parts):
            name = parts[i]
            group = await self._obj(obj_id)
            links = _links(group)
            link = links.get(name)
            where = "/" + "/".join(parts[:i])
            if link is None:
                raise DatasetNotFoundError(
                    f"no link {name!r} in group {where!r} of domain {self.domain!r}; links there: {sorted(links)[:20]}"
                )
            cls = link.get("class", "H5L_TYPE_HARD")
            if cls == "H5L_TYPE_HARD":
                obj_id = link["id"]
                i += 1
            elif cls == "H5L_TYPE_SOFT":
                hops += 1
                if hops > 32:
                    raise DatasetNotFoundError(f"too many soft links resolving {h5path!r} in domain {self.domain!r}")
                target = link.get("h5path", "")
                rest = [p for p in target.split("/") if p]
                parts = (rest if target.startswith("/") else parts[:i] + rest) + parts[i + 1 :]
                obj_id, i = self.root_id, 0
            else:
                raise DatasetNotFoundError(
                    f"link {name!r} in {where!r} is {cls} (e.g. an external link); only hard and soft links can be read"
                )
        return obj_id

    async def get(self, h5path: str) -> AsyncDataset:
        """Return the dataset at ``h5path`` (or a dataset id)."""
        obj_id = await self.resolve(h5path)
        if not obj_id.startswith("d-"):
            raise DatasetNotFoundError(f"{h5path!r} in domain {self.domain!r} is not a dataset (id {obj_id})")
        return await self._dataset(obj_id, h5path)

    async def _dataset(self, obj_id: str, h5path: str) -> AsyncDataset:
        j = dict(await self._obj(obj_id, h5path))
        j.setdefault("id", obj_id)
        return AsyncDataset(self, DatasetMeta.from_json(j, self.bucket, chunk_bytes_limit=self.reader.chunk_bytes_limit), h5path)

    # ------------------------------------------------ groups (hsds_backends.groups)
    async def root(self) -> AsyncGroup:
        """Return the root group (docs/hsds-format.md §2: links and attributes inline)."""
        return AsyncGroup(self, self.root_id, "/", await self._obj(self.root_id))

    async def group(self, h5path: str = "/") -> AsyncGroup:
        """Return the group at ``h5path`` (soft links followed)."""
        obj = await self.get_object(h5path)
        if not isinstance(obj, AsyncGroup):
            what = "an external link" if isinstance(obj, ExternalLink) else "a dataset"
            raise NotFoundError(f"{h5path!r} in domain {self.domain!r} is {what}, not a group; give a group path")
        return obj

    async def get_object(self, h5path: str) -> AsyncGroup | AsyncDataset | ExternalLink:
        """Return the group, dataset or (unfollowed) external link at ``h5path``."""
        return await (await self.root()).get_object(h5path)

    async def attributes(self) -> AttributeManager:
        """Return the root group's attributes (the domain's ``attrs``)."""
        return (await self.root()).attrs

    async def keys(self) -> list[str]:
        """Return the root group's link names, sorted."""
        return (await self.root()).keys()

    async def values(self) -> list[AsyncGroup | AsyncDataset | ExternalLink]:
        """Return the root group's members, in :meth:`keys` order."""
        return await (await self.root()).values()

    async def items(self) -> list[tuple[str, AsyncGroup | AsyncDataset | ExternalLink]]:
        """Return ``(name, member)`` pairs of the root group, in :meth:`keys` order."""
        return await (await self.root()).items()

    async def contains(self, h5path: str) -> bool:
        """Return whether the last link of ``h5path`` exists (as h5py's ``in``)."""
        return await (await self.root()).contains(h5path)

    async def walk(self) -> list[tuple[str, Link, AsyncGroup | AsyncDataset | None]]:
        """Every link of the domain, depth first (see :meth:`AsyncGroup.walk`)."""
        return await (await self.root()).walk()

    async def path_of(self, obj_id: str) -> str | None:
        """Return an absolute path of object ``obj_id`` (e.g. a reference attribute's target), or ``None``."""
        if obj_id == self.root_id:
            return "/"
        for rel, link, _obj in await self.walk():
            if getattr(link, "id", None) == obj_id:
                return "/" + rel
        return None

    async def visit(self, func: Callable[[str], T | None]) -> T | None:
        """Call ``func(name)`` on each object of the domain (see :meth:`AsyncGroup.visititems`)."""
        return await (await self.root()).visit(func)

    async def visititems(self, func: Callable[[str, AsyncGroup | AsyncDataset], T | None]) -> T | None:
        """Call ``func(name, object)`` on each object of the domain, as h5py does."""
        return await (await self.root()).visititems(func)


def _single_field(fields: Sequence[str] | str | None) -> str | None:
    """The field name when ``fields`` names one field as a plain string (h5py's rule for a plain result)."""
    if isinstance(fields, str) and "," not in fields and ":" not in fields and fields.strip():
        return fields.strip()
    return None


def _plain_field(result: ReadResult, fields: Sequence[str] | str | None) -> ReadResult:
    """With one field named as a string, the result's data is that field as a plain array."""
    name = _single_field(fields)
    if name is not None and result.data.dtype.names is not None:
        result.data = result.data[name].copy()  # C order; np.ascontiguousarray would make a 0-d result 1-d
    return result


def _has_vlen_str(dt: np.dtype[Any]) -> bool:
    if dt.names is None:
        return vlen_of(dt) is str
    return any(_has_vlen_str(dt.fields[n][0]) for n in dt.names)  # type: ignore[index]


def _vlen_str_to_bytes(data: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """h5py gives variable-length strings as UTF-8 ``bytes`` (``asstr()`` decodes them); ``read()`` gives ``str``."""
    if data.dtype.names is not None:
        out = data.copy()
        for n in data.dtype.names:
            if _has_vlen_str(data.dtype.fields[n][0]):
                out[n] = _vlen_str_to_bytes(data[n])
        return out
    out = np.empty(data.shape, dtype=data.dtype)
    for i, v in enumerate(data.flat):
        out.flat[i] = v.encode("utf-8") if isinstance(v, str) else v
    return out


#: A full-shape mask is read as its bounding box when at least 1/_MASK_DENSITY of the box is
#: selected (one hyperslab read), else as points (one request per element's chunk).
_MASK_DENSITY = 8


class _DatasetInfo:
    """What a dataset's metadata says, for the async and the sync dataset alike (h5py's read-only properties)."""

    meta: DatasetMeta

    @property
    def shape(self) -> tuple[int, ...]:
        return self.meta.shape

    @property
    def dtype(self) -> np.dtype[Any]:
        return self.meta.dtype

    @property
    def chunks(self) -> tuple[int, ...] | None:
        """The chunk shape; ``None`` for a scalar dataset, as h5py reports (HSDS stores it as one chunk)."""
        return self.meta.chunks if self.meta.shape else None

    @property
    def fillvalue(self) -> Any:
        """The fill value; variable-length strings as ``bytes``, as h5py gives them."""
        value = self.meta.fill_element[()]
        return value.encode("utf-8") if isinstance(value, str) and vlen_of(self.meta.dtype) is str else value

    @property
    def ndim(self) -> int:
        return len(self.meta.shape)

    @property
    def size(self) -> int:
        """Number of elements (1 for a scalar dataset)."""
        return math.prod(self.meta.shape)

    @property
    def nbytes(self) -> int:
        """Bytes the whole dataset takes in memory: ``size * dtype.itemsize``."""
        return self.size * self.meta.dtype.itemsize

    @property
    def maxshape(self) -> tuple[int | None, ...]:
        """The extents the dataset may grow to, ``None`` for unlimited (HSDS ``maxdims`` 0; docs/hsds-format.md §2.2)."""
        shape_json = self.meta.source_json.get("shape")
        maxdims = shape_json.get("maxdims") if isinstance(shape_json, dict) else None
        if not isinstance(maxdims, list) or len(maxdims) != len(self.meta.shape):
            return self.meta.shape
        return tuple(None if m in (0, "H5S_UNLIMITED") or not isinstance(m, int) else int(m) for m in maxdims)

    @property
    def compression(self) -> str | None:
        """``'gzip'``, ``'lzf'`` or ``'szip'`` when the filter list has one (as h5py reports), else ``None``."""
        for name, _level in filter_list(self.meta.filters):
            if name in ("gzip", "lzf", "szip"):
                return name
        return None

    @property
    def compression_opts(self) -> int | None:
        """The gzip level (HSDS's default 5 when the filter gives none), else ``None``."""
        for name, level in filter_list(self.meta.filters):
            if name == "gzip":
                return level
        return None

    @property
    def shuffle(self) -> bool:
        """Whether the byte-shuffle filter is applied."""
        return any(name == "shuffle" for name, _level in filter_list(self.meta.filters))

    @property
    def fletcher32(self) -> bool:
        """Whether chunks carry a fletcher32 checksum."""
        return any(name == "fletcher32" for name, _level in filter_list(self.meta.filters))

    @property
    def attrs(self) -> AttributeManager:
        """The dataset's attributes (a read-only mapping; docs/hsds-format.md §2)."""
        return AttributeManager(self.meta.source_json.get("attributes"), f"dataset {self._h5path()!r}")

    @property
    def name(self) -> str:
        """The path the dataset was opened by (its id when it was opened by id)."""
        return self._h5path()

    def _h5path(self) -> str:
        return self.meta.id

    def __len__(self) -> int:
        """The extent of the first dimension; ``TypeError`` for a scalar dataset, as in h5py."""
        if not self.meta.shape:
            raise TypeError(f"dataset {self._h5path()!r} is scalar and has no len(); read it with d[()]")
        return self.meta.shape[0]

    def iter_chunks(self, sel: Any = None) -> Iterator[tuple[slice, ...]]:
        """Yield, in C order, the part of ``sel`` that lies in each chunk, as a tuple of slices (h5py's ``iter_chunks``).

        ``sel`` is ``None`` (the whole dataset) or one int or slice per dimension
        (``np.s_[0:10, 5]``); an int stands for one element, a slice's step is ignored.
        """
        return iter_chunk_slices(self.meta.shape, self.meta.chunks, sel)

    def asstr(self, encoding: str | None = None, errors: str = "strict") -> AsStrView:
        """A view whose ``[key]`` decodes string data to ``str`` (h5py's ``asstr``); only for string types."""
        if self.meta.dtype.kind != "S" and vlen_of(self.meta.dtype) not in (str, bytes):
            raise TypeError(
                f"asstr() needs a string dataset; dataset {self._h5path()!r} has type {self.meta.dtype}"
            )
        return AsStrView(self, encoding or "utf-8", errors)


class AsyncDataset(_DatasetInfo):
    """A dataset of an open domain."""

    def __init__(self, domain: AsyncDomain, meta: DatasetMeta, h5path: str) -> None:
        self.domain = domain
        self.meta = meta
        self.h5path = h5path

    def __repr__(self) -> str:
        return f"<AsyncDataset {self.h5path!r} shape={self.shape} dtype={self.dtype} chunks={self.chunks}>"

    def _h5path(self) -> str:
        return self.h5path if self.h5path.startswith(("d-", "/")) else "/" + self.h5path

    def plan(self, selection: Any = None, *, fields: Sequence[str] | str | None = None) -> ReadPlan:
        return plan_hyperslab(self.meta, to_selection(selection, self.shape), fields, limits=self.domain.reader.limits)

    async def read_result(self, selection: Any = None, *, fields: Sequence[str] | str | None = None, **run: Any) -> ReadResult:
        """Read a hyperslab and return it with statistics. ``run`` goes to :meth:`Reader.run`.

        ``fields``: one field name (a ``str``) gives a plain array of that field's type, as
        h5py's ``dset.fields('temp')[sel]`` does; a list of names (or ``"a,b"``) a structured
        array of those fields.
        """
        return _plain_field(await self.domain.reader.run(self.plan(selection, fields=fields), **run), fields)

    async def read(self, selection: Any = None, *, fields: Sequence[str] | str | None = None, **run: Any) -> np.ndarray[Any, Any]:
        """Read a hyperslab: ``None`` (all), an HSDS select string, or a numpy-style index."""
        return (await self.read_result(selection, fields=fields, **run)).data

    async def getitem(self, key: Any, *, fields: str | Sequence[str] | None = None, **run: Any) -> Any:
        """Read ``key`` with h5py 3.x's indexing rules; what ``Dataset[key]`` does (docs/api.md §2).

        Integers drop their axis, a full-shape boolean mask gives a 1-D result, field
        names may be mixed in, and a 0-d result comes back as a numpy scalar. Wrong
        input raises the builtin class h5py raises (through :class:`SelectionError`,
        :class:`SelectionTypeError`, :class:`SelectionValueError`, :class:`FieldError`).
        """
        idx = parse_h5py_index(key, self.shape, self.dtype)
        return await self._read_index(idx, idx.fields if fields is None else (fields if isinstance(fields, str) else list(fields)), **run)

    async def _read_index(self, idx: H5Index, names: str | list[str] | None, **run: Any) -> Any:
        """Read a parsed h5py index: variable-length strings as ``bytes``, a 0-d result as a numpy scalar."""
        if idx.mask is not None:
            data = await self._read_mask(idx.mask, names, **run)
        else:
            data = await self.read(idx.selection, fields=names, **run)
        if _has_vlen_str(data.dtype):
            data = _vlen_str_to_bytes(data)
        return data if data.ndim or idx.ellipsis_only else data[()]

    async def _read_mask(self, mask: np.ndarray[Any, Any], fields: str | list[str] | None, **run: Any) -> np.ndarray[Any, Any]:
        """The elements where ``mask`` is true, in C order: the bounding box when they fill it densely, else points."""
        where = np.nonzero(mask)
        n = int(where[0].size)
        if n == 0:
            empty = Hyperslab(tuple(Slice(0, 0, 1) for _ in self.shape), (False,) * len(self.shape))
            return (await self.read(empty, fields=fields, **run)).reshape(0)
        box = tuple(slice(int(w.min()), int(w.max()) + 1) for w in where)
        if n * _MASK_DENSITY >= math.prod(b.stop - b.start for b in box):
            block = await self.read(box, fields=fields, **run)
            return np.ascontiguousarray(block[mask[box]])
        return await self.read_points(np.stack(where, axis=1), fields=fields, **run)

    async def read_direct(self, dest: np.ndarray[Any, Any], source_sel: Any = None, dest_sel: Any = None, **run: Any) -> None:
        """Read ``source_sel`` (h5py indexing) into ``dest[dest_sel]`` of an existing array, as h5py's ``read_direct``.

        ``dest`` must be a C-contiguous, writable numpy array; the data is cast to its
        dtype and broadcast to the destination's selected shape, as numpy assignment does.
        """
        idx = parse_h5py_index(() if source_sel is None else source_sel, self.shape, self.dtype)  # h5py checks it first
        if not isinstance(dest, np.ndarray):
            raise TypeError(f"read_direct needs a numpy array to read into, got {type(dest).__name__}")
        if not (dest.flags.c_contiguous and dest.flags.writeable):
            raise TypeError("read_direct's destination must be C-contiguous and writable (np.ascontiguousarray(dest))")
        data = await self._read_index(idx, idx.fields, **run)
        target = () if dest_sel is None else dest_sel
        try:
            dest[target] = data
        except ValueError as exc:
            raise SelectionTypeError(
                f"cannot broadcast the source selection's shape {list(np.shape(data))} to the destination "
                f"selection's shape {list(np.shape(dest[target]))}"
            ) from exc

    async def read_points_result(self, points: Any, *, fields: Sequence[str] | str | None = None, **run: Any) -> ReadResult:
        plan = plan_points(self.meta, points, fields, limits=self.domain.reader.limits)
        return _plain_field(await self.domain.reader.run(plan, **run), fields)

    async def read_points(self, points: Any, *, fields: Sequence[str] | str | None = None, **run: Any) -> np.ndarray[Any, Any]:
        """Read the values at (N, rank) absolute coordinates, in the order given."""
        return (await self.read_points_result(points, fields=fields, **run)).data

    async def query_result(
        self, expr: str, *, select: Any = None, limit: int | None = None, fields: Sequence[str] | str | None = None, **run: Any
    ) -> ReadResult:
        sel = None if select is None else to_selection(select, self.shape)
        return await self.domain.reader.run(plan_query(self.meta, expr, sel, limit, fields, limits=self.domain.reader.limits), **run)

    async def query(
        self, expr: str, *, select: Any = None, limit: int | None = None, fields: Sequence[str] | str | None = None, **run: Any
    ) -> np.ndarray[Any, Any]:
        """Return matching rows as a structured array whose first field is the absolute ``index``."""
        return (await self.query_result(expr, select=select, limit=limit, fields=fields, **run)).data

    def to_dask(self, chunks: Any = None) -> dask.array.Array:
        """Return a :class:`dask.array.Array` over this dataset, one block per chunk (or group of chunks).

        Parameters
        ----------
        chunks
            ``None`` (one block per dataset chunk), or block extents that are multiples of
            the dataset's chunk shape (``-1``/``None`` per axis: the whole axis). See
            :mod:`hsds_backends.dask_array`.

        Returns
        -------
        dask.array.Array
            Its graph holds the configuration (without secrets) and the dataset JSON; each
            block is read by a reader rebuilt where the task runs, on the ``inline`` backend.
        """
        from .dask_array import to_dask

        return to_dask(self.meta, self.domain.reader.config, Reader, chunks)


# ---------------------------------------------------------------- sync facade


class _LoopThread:
    """A private event loop in a daemon thread, so sync callers can drive async objects."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="hsds-backends-loop", daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        if _in_loop(self.loop):
            raise RuntimeError("sync hsds_backends API called from its own event loop; use the async API")
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    def stop(self) -> None:
        if self.loop.is_running():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(timeout=10)
        self.loop.close()


def _in_loop(loop: asyncio.AbstractEventLoop) -> bool:
    try:
        return asyncio.get_running_loop() is loop
    except RuntimeError:
        return False


def open_domain(
    domain: str,
    *,
    config: Mapping[str, Any] | str | None = None,
    bucket: str | None = None,
    root_dir: str | None = None,
    backend: str | None = None,
    **overrides: Any,
) -> Domain:
    """Open a domain for synchronous reads.

    Parameters
    ----------
    domain
        Domain path such as ``/home/user/file.h5``.
    config
        A config mapping, or a path to ``config.yml``; default: ``config.yml``
        lookup and environment (:func:`hsds_backends.config.load_config`).
    bucket, root_dir, backend, **overrides
        Config keys that win over the file and the environment.
    """
    ov = dict(overrides)
    if bucket is not None:
        ov["bucket_name"] = bucket
    if root_dir is not None:
        ov["root_dir"] = root_dir
    if backend is not None:
        ov["backend"] = backend
    if config is None or isinstance(config, str):
        cfg: Mapping[str, Any] = load_config(config, overrides=ov)
    else:
        cfg = {**config, **ov}
    lt = _LoopThread()
    try:

        async def _open() -> tuple[Reader, AsyncDomain]:
            r = Reader(cfg)
            try:
                return r, await r.open(domain)
            except BaseException:
                await r.aclose()
                raise

        reader, adom = lt.run(_open())
    except BaseException:
        lt.stop()
        raise
    return Domain(lt, reader, adom)


class Domain:
    """A domain opened by :func:`open_domain`: an h5py-like read-only root group.

    ``dom[path]`` gives a :class:`Dataset`, a :class:`~hsds_backends.groups.Group` or an
    :class:`~hsds_backends.groups.ExternalLink`; :meth:`dataset` only datasets.
    """

    def __init__(self, lt: _LoopThread, reader: Reader, adom: AsyncDomain) -> None:
        self._lt = lt
        self.reader = reader
        self._adom = adom

    def __repr__(self) -> str:
        return f"<Domain {self._adom.domain!r} bucket={self._adom.bucket!r}>"

    def dataset(self, h5path: str) -> Dataset:
        """Return the dataset at ``h5path`` (``DatasetNotFoundError`` when it is a group or missing)."""
        return Dataset(self, self._lt.run(self._adom.get(h5path)))

    def __getitem__(self, h5path: str) -> Any:
        """The group, dataset or (unfollowed) external link at ``h5path``, as ``h5py.File[path]``."""
        return self.root[h5path]

    def get(self, h5path: str, default: Any = None, *, getlink: bool = False) -> Any:
        """``self[h5path]``, or ``default`` when nothing is there (h5py's ``Group.get``)."""
        return self.root.get(h5path, default, getlink=getlink)

    # ------------------------------------------------ groups (hsds_backends.groups)
    def _wrap(self, obj: Any) -> Any:
        """The sync view of what an async group returned: a Group, a Dataset, or a link (or a default) as is."""
        if isinstance(obj, AsyncGroup):
            return Group(self, obj)
        if isinstance(obj, AsyncDataset):
            return Dataset(self, obj)
        return obj

    @property
    def root(self) -> Group:
        """The root group, an h5py-like read-only mapping (``root["g"]`` gives groups too)."""
        return Group(self, self._lt.run(self._adom.root()))

    def group(self, h5path: str = "/") -> Group:
        """Return the group at ``h5path`` (soft links followed)."""
        return Group(self, self._lt.run(self._adom.group(h5path)))

    def get_object(self, h5path: str) -> Group | Dataset | ExternalLink:
        """Return the group, dataset or (unfollowed) external link at ``h5path``."""
        return self[h5path]  # type: ignore[no-any-return]

    @property
    def attrs(self) -> AttributeManager:
        """The root group's attributes."""
        return self.root.attrs

    def keys(self) -> list[str]:
        """Return the root group's link names, sorted."""
        return self.root.async_group.keys()

    def values(self) -> list[Any]:
        """Return the root group's members (groups, datasets, external links), in :meth:`keys` order."""
        return list(self.root.values())

    def items(self) -> list[tuple[str, Any]]:
        """Return ``(name, member)`` pairs of the root group, in :meth:`keys` order."""
        return list(self.root.items())

    def __contains__(self, h5path: object) -> bool:
        return h5path in self.root

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys())

    def __len__(self) -> int:
        return len(self.root)

    def walk(self) -> list[tuple[str, Link, Any]]:
        """Every link of the domain, depth first (see :meth:`hsds_backends.groups.AsyncGroup.walk`)."""
        return self.root.walk()

    def path_of(self, obj_id: str) -> str | None:
        """Return an absolute path of object ``obj_id`` (e.g. a reference attribute's target), or ``None``."""
        return self._lt.run(self._adom.path_of(obj_id))

    def visit(self, func: Callable[[str], T | None]) -> T | None:
        """Call ``func(name)`` on each object of the domain, as h5py does."""
        return self.root.visit(func)

    def visititems(self, func: Callable[[str, Any], T | None]) -> T | None:
        """Call ``func(name, object)`` on each object of the domain, as h5py does."""
        return self.root.visititems(func)

    def close(self) -> None:
        if self._lt.loop.is_closed():
            return
        try:
            self._lt.run(self.reader.aclose())
        finally:
            self._lt.stop()

    def __enter__(self) -> Domain:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _FieldsView:
    """What :meth:`Dataset.fields` returns: ``view[key]`` reads ``key`` (h5py indexing) of the chosen fields."""

    def __init__(self, dataset: Dataset, names: str | Sequence[str]) -> None:
        self._names: str | list[str] = names if isinstance(names, str) else list(names)
        self.dtype: np.dtype[Any] = check_fields(self._names, dataset.dtype)  # what a read gives
        self._dataset = dataset

    def __getitem__(self, key: Any) -> Any:
        ds = self._dataset
        return ds._domain._lt.run(ds.async_dataset.getitem(key, fields=self._names))


class AsStrView:
    """What :meth:`Dataset.asstr` returns: ``view[key]`` reads ``key`` and decodes strings to ``str``."""

    def __init__(self, dataset: Any, encoding: str, errors: str) -> None:
        self._dataset = dataset
        self.encoding = encoding
        self.errors = errors

    @property
    def dtype(self) -> np.dtype[Any]:
        return np.dtype(object)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self._dataset.shape)

    def __len__(self) -> int:
        return len(self._dataset)

    def _decode(self, v: Any) -> str:
        return v.decode(self.encoding, self.errors) if isinstance(v, (bytes, np.bytes_)) else str(v)

    def __getitem__(self, key: Any) -> Any:
        data = self._dataset[key]
        if not isinstance(data, np.ndarray):
            return self._decode(data)
        out = np.empty(data.shape, dtype=object)
        for i, v in enumerate(data.flat):
            out.flat[i] = self._decode(v)
        return out


class Dataset(_DatasetInfo):
    """Synchronous view of an :class:`AsyncDataset`; ``d[...]`` reads a numpy-style index."""

    def __init__(self, domain: Domain, adset: AsyncDataset) -> None:
        self._domain = domain
        self.async_dataset = adset
        self.meta = adset.meta

    def __repr__(self) -> str:
        return repr(self.async_dataset).replace("AsyncDataset", "Dataset")

    def _h5path(self) -> str:
        return self.async_dataset._h5path()

    def __getitem__(self, key: Any) -> Any:
        """Read ``key`` exactly as h5py 3.x indexes a dataset (see :meth:`AsyncDataset.getitem`).

        ``d['temp']`` and ``d[0:10, 'temp']`` give a plain array of the field; a list of
        names (``d[['id', 'temp']]``) a structured one.
        """
        return self._domain._lt.run(self.async_dataset.getitem(key))

    def __iter__(self) -> Iterator[Any]:
        """Yield ``d[i]`` along the first dimension (``TypeError`` for a scalar dataset), as h5py does."""
        for i in range(len(self)):
            yield self[i]

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray[Any, Any]:
        """``np.asarray(d)`` reads the whole dataset."""
        data = np.asarray(self.read())
        return data if dtype is None else data.astype(dtype)

    def read_direct(self, dest: np.ndarray[Any, Any], source_sel: Any = None, dest_sel: Any = None, **run: Any) -> None:
        """Read ``source_sel`` into ``dest[dest_sel]``; see :meth:`AsyncDataset.read_direct`."""
        self._domain._lt.run(self.async_dataset.read_direct(dest, source_sel, dest_sel, **run))

    def fields(self, names: str | Sequence[str]) -> _FieldsView:
        """Return a view reading only ``names`` (h5py's ``dset.fields``): ``d.fields('temp')[0:10]``.

        One name (a ``str``) reads a plain array of that field's type; a list, a structured one.
        """
        return _FieldsView(self, names)

    def read(self, selection: Any = None, *, fields: Sequence[str] | str | None = None, **run: Any) -> np.ndarray[Any, Any]:
        return self._domain._lt.run(self.async_dataset.read(selection, fields=fields, **run))

    def read_result(self, selection: Any = None, *, fields: Sequence[str] | str | None = None, **run: Any) -> ReadResult:
        return self._domain._lt.run(self.async_dataset.read_result(selection, fields=fields, **run))

    def read_points(self, points: Any, *, fields: Sequence[str] | str | None = None, **run: Any) -> np.ndarray[Any, Any]:
        return self._domain._lt.run(self.async_dataset.read_points(points, fields=fields, **run))

    def query(self, expr: str, *, select: Any = None, limit: int | None = None, fields: Sequence[str] | str | None = None, **run: Any) -> np.ndarray[Any, Any]:
        return self._domain._lt.run(self.async_dataset.query(expr, select=select, limit=limit, fields=fields, **run))

    def to_dask(self, chunks: Any = None) -> dask.array.Array:
        """Return a :class:`dask.array.Array` over this dataset; see :meth:`AsyncDataset.to_dask`."""
        return self.async_dataset.to_dask(chunks)
