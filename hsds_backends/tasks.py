"""Chunk tasks and chunk results: plain, JSON-serialisable data (docs/architecture.md §7).

A :class:`ChunkTask` holds everything one chunk read needs: the trimmed dataset
JSON (type, chunk dims, filters, fill value), the chunk id, where its bytes
live, and what to cut out of it: a chunk-relative HSDS ``select``, absolute
point coordinates, ``fields``, and a ``query`` with ``Limit``. Its wire form
(:meth:`ChunkTask.to_wire`) uses the key names of the 2021 HSDS Lambda payload
(docs/hsds-format.md §6.3) so one encoding serves Lambda, DNs and Dask alike.

A :class:`ChunkResult` is the selected bytes in C order (fixed-size types raw,
variable-length types in §3.2 form, query rows as a packed compound whose first
field is the absolute row index), or ``missing`` when the chunk does not exist
and the caller fills.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Literal

import numpy as np

from . import errors as _errors
from .config import DEFAULT_CHUNK_BYTES_LIMIT
from .chunk_table import hyper_location, parse_int_list, pending_error
from .dataset import ChunkLocation, DatasetMeta
from .errors import FieldError, HsdsBackendsError, TaskError
from .ids import chunk_key
from .selection import parse_select

__all__ = [
    "ChunkTask",
    "ChunkResult",
    "TaskKind",
    "field_dtype",
    "query_dtype",
    "error_to_wire",
    "error_from_wire",
    "expected_result_bytes",
    "split_s3path",
]

#: Bytes per element assumed for variable-length results, whose size is known only once read.
VLEN_GUESS_BYTES = 64

TaskKind = Literal["hyperslab", "points", "query"]


def field_dtype(dtype: np.dtype[Any], fields: tuple[str, ...] | None) -> np.dtype[Any]:
    """Return the packed compound of ``fields`` in the order given (§5.4), or ``dtype`` if no fields."""
    if not fields:
        return dtype
    if dtype.names is None:
        raise FieldError(f"fields {list(fields)!r} given, but the dataset type {dtype} is not a compound; drop --fields")
    seen: set[str] = set()
    names, formats, offsets = [], [], []
    off = 0
    for f in fields:
        if f not in dtype.names:
            raise FieldError(f"unknown field {f!r}; the dataset's fields are {list(dtype.names)!r}")
        if f in seen:
            raise FieldError(f"field {f!r} is named twice in {list(fields)!r}")
        seen.add(f)
        dt = dtype.fields[f][0]  # type: ignore[index]
        names.append(f)
        formats.append(dt)
        offsets.append(off)
        off += dt.itemsize
    return np.dtype({"names": names, "formats": formats, "offsets": offsets, "itemsize": off})


def query_dtype(dtype: np.dtype[Any], fields: tuple[str, ...] | None) -> np.dtype[Any]:
    """Return the row dtype of query results: ``index`` (uint64) then the selected fields (§5.3).

    The index field is renamed ``_index``, ``__index``, … if a field is called ``index``.
    """
    sub = field_dtype(dtype, fields or tuple(dtype.names or ()))
    name = "index"
    while name in (sub.names or ()):
        name = "_" + name
    names = [name, *sub.names]  # type: ignore[misc]
    formats = [np.dtype("<u8")] + [sub.fields[n][0] for n in sub.names]  # type: ignore[index,union-attr]
    offsets = [0] + [8 + sub.fields[n][1] for n in sub.names]  # type: ignore[index,union-attr]
    return np.dtype({"names": names, "formats": formats, "offsets": offsets, "itemsize": 8 + sub.itemsize})


@lru_cache(maxsize=256)
def _meta_from_text(text: str, bucket: str, chunk_bytes_limit: int) -> DatasetMeta:
    return DatasetMeta.from_json(json.loads(text), bucket, chunk_bytes_limit=chunk_bytes_limit)


@dataclass(frozen=True, eq=False)
class ChunkTask:
    """One chunk read: where the bytes are and what to cut out of them.

    Build tasks with :func:`hsds_backends.plan.plan_read`; execute them with
    :func:`hsds_backends.kernel.run_task`.
    """

    chunk_id: str
    dset: DatasetMeta = field(repr=False)
    location: ChunkLocation | None
    kind: TaskKind = "hyperslab"
    select: str | None = None
    points: np.ndarray[Any, np.dtype[np.uint64]] | None = field(default=None, repr=False)
    fields: tuple[str, ...] | None = None
    query: str | None = None
    limit: int | None = None

    @property
    def num_points(self) -> int:
        return 0 if self.points is None else int(self.points.shape[0])

    def to_wire(self) -> dict[str, Any]:
        """Return the JSON-serialisable payload (2021 Lambda key names, §6.3)."""
        d: dict[str, Any] = {
            "chunk_id": self.chunk_id,
            "dset_json": self.dset.wire_json(),
            "bucket": self.dset.bucket,
            "kind": self.kind,
        }
        loc = self.location
        if loc is None:
            d["s3size"] = 0
        elif loc.pending:
            raise pending_error(self.chunk_id)
        elif loc.linked:
            d["s3path"] = f"{loc.bucket}/{loc.key}"
            if loc.parts is not None:  # a hyper-chunk: one offset and size per HDF5 chunk (docs/hsds-format.md §3.5)
                d["s3offset"] = [off for off, _ in loc.parts]
                d["s3size"] = [size for _, size in loc.parts]
                d["hyper_dims"] = list(loc.hyper_dims or ())
            else:
                d["s3offset"] = loc.offset
                d["s3size"] = loc.size
        elif loc.bucket != self.dset.bucket or loc.key != chunk_key(self.chunk_id):
            d["key"] = loc.key
        if self.select is not None:
            d["select"] = self.select
        if self.points is not None:
            d["point_arr"] = base64.b64encode(np.ascontiguousarray(self.points, dtype="<u8").tobytes()).decode()
            d["num_points"] = self.num_points
        if self.fields:
            d["fields"] = list(self.fields)
        if self.query is not None:
            d["query"] = self.query
        if self.limit:
            d["Limit"] = int(self.limit)
        return d

    @classmethod
    def from_wire(cls, d: dict[str, Any], *, chunk_bytes_limit: int = DEFAULT_CHUNK_BYTES_LIMIT) -> ChunkTask:
        """Parse a payload made by :meth:`to_wire` (or the 2021 HSDS Lambda payload, §6.3).

        ``chunk_bytes_limit`` bounds the chunks its dataset JSON may declare (config
        ``chunk_bytes_limit``): a service refuses a larger one before allocating it.

        Raises
        ------
        TaskError
            A key is missing or has the wrong type; the message names it.
        LimitError
            The dataset's chunks exceed ``chunk_bytes_limit``.
        """
        from .storage import check_bucket, check_key

        if not isinstance(d, dict):
            raise _bad(f"chunk task must be a JSON object, got {type(d).__name__}")
        try:
            cid = d["chunk_id"]
            dset_json = d["dset_json"]
            bucket = d.get("bucket") or ""
        except KeyError as exc:
            raise _bad(f"chunk task is missing {exc.args[0]!r}") from exc
        if not isinstance(cid, str):
            raise _bad(f"chunk_id must be a string, got {cid!r}")
        if bucket:
            bucket = check_bucket(bucket)
        if isinstance(dset_json, str):
            try:
                meta = _meta_from_text(dset_json, bucket, chunk_bytes_limit)  # cached: parsed once per dataset, not per task
            except json.JSONDecodeError as exc:
                raise _bad(f"dset_json is not valid JSON: {exc}") from exc
        else:
            meta = _meta_from_text(json.dumps(dset_json, sort_keys=True, separators=(",", ":")), bucket, chunk_bytes_limit)
        location: ChunkLocation | None
        if "s3path" in d:
            b, k = split_s3path(d["s3path"])
            raw_off, raw_size = d.get("s3offset"), d.get("s3size")
            if _is_list(raw_off) or _is_list(raw_size) or "hyper_dims" in d:
                location = hyper_location(
                    meta, cid, b, k, parse_int_list(raw_off, "s3offset", cid) or [], parse_int_list(raw_size, "s3size", cid) or [],
                    parse_int_list(d.get("hyper_dims"), "hyper_dims", cid), chunk_bytes_limit=chunk_bytes_limit,
                )
            else:
                offset, size = _int_or_none(raw_off, "s3offset"), _int_or_none(raw_size, "s3size")
                if (size is not None and size < 0) or (offset is not None and offset < 0):
                    raise _bad(f"s3offset {offset} / s3size {size} may not be negative")
                location = None if not size else ChunkLocation(b, k, offset or 0, size, True)
        elif d.get("s3size") == 0:
            location = None
        else:
            if not bucket:
                raise _bad("chunk task has no 'bucket'")
            key = d.get("key") or chunk_key(cid)
            location = ChunkLocation(bucket, check_key(key))
        points = None
        if "point_arr" in d:
            try:
                raw = base64.b64decode(d["point_arr"], validate=True)
            except (ValueError, TypeError) as exc:
                raise _bad(f"point_arr is not valid base64: {exc}") from exc
            rank = max(meta.rank, 1)
            if len(raw) % (8 * rank):
                raise _bad(f"point_arr holds {len(raw)} bytes, not a whole number of rank-{rank} uint64 points")
            points = np.frombuffer(raw, dtype="<u8").reshape(-1, rank)
            n = _int_or_none(d.get("num_points"), "num_points")
            if n is not None and n != points.shape[0]:
                raise _bad(f"num_points {n} does not match point_arr ({points.shape[0]} points)")
        kind: TaskKind = d.get("kind") or ("points" if points is not None else "query" if d.get("query") else "hyperslab")
        if kind not in ("hyperslab", "points", "query"):
            raise _bad(f"kind {kind!r} must be 'hyperslab', 'points' or 'query'")
        if kind == "points" and points is None:
            raise _bad("a points task needs 'point_arr'")
        fields = d.get("fields")
        if isinstance(fields, str):
            fields = fields.split(":") if fields else None
        if fields is not None and (not isinstance(fields, list) or not all(isinstance(f, str) for f in fields)):
            raise _bad(f"fields must be a list of names or 'a:b', got {fields!r}")
        select = d.get("select")
        if select is not None and not isinstance(select, str):
            raise _bad(f"select must be a string like '[0:10,5]', got {select!r}")
        query = d.get("query")
        if query is not None and not isinstance(query, str):
            raise _bad(f"query must be a string, got {query!r}")
        return cls(
            chunk_id=cid,
            dset=meta,
            location=location,
            kind=kind,
            select=select,
            points=points,
            fields=tuple(fields) if fields else None,
            query=query,
            limit=_limit(d.get("Limit", d.get("limit"))),
        )


def _is_list(v: Any) -> bool:
    """A hyper-chunk's offsets or sizes: a JSON list or HSDS's ``a:b:c`` text (docs/hsds-format.md §4.2)."""
    return isinstance(v, list) or (isinstance(v, str) and ":" in v)


def _int_or_none(v: Any, name: str) -> int | None:
    if v is None:
        return None
    try:
        return int(v)
    except (TypeError, ValueError) as exc:
        raise _bad(f"{name} must be an integer, got {v!r}") from exc


def split_s3path(s3path: Any) -> tuple[str, str]:
    """Split an ``s3path`` (``bucket/key``, ``s3://bucket/key`` or ``file://bucket/key``) into a checked (bucket, key).

    Raises
    ------
    TaskError
        (status 400) the value has no ``/``; :class:`StoragePathError` for an unsafe bucket or key.
    """
    from .storage import check_bucket, check_key

    path = str(s3path)
    for prefix in ("s3://", "file://"):
        if path.startswith(prefix):
            path = path[len(prefix) :]
    if "/" not in path:
        raise _bad(f"s3path {s3path!r} must be 'bucket/key' or 's3://bucket/key'")
    b, k = path.split("/", 1)
    return check_bucket(b), check_key(k)


def _limit(v: Any) -> int | None:
    n = _int_or_none(v, "Limit")
    if n is not None and n < 0:
        raise _bad(f"Limit must be a non-negative integer (0 = no limit), got {v!r}")
    return n or None


def _bad(msg: str) -> TaskError:
    return TaskError(msg, status=400)


@dataclass(frozen=True, slots=True)
class ChunkResult:
    """The outcome of one chunk task.

    ``status`` is ``"ok"`` (``data`` holds the selected bytes) or ``"missing"``
    (the chunk does not exist; the caller fills with the fill value).
    """

    chunk_id: str
    status: Literal["ok", "missing"]
    data: bytes | bytearray | memoryview = b""
    fetched: int = 0
    """Stored bytes read from storage for this task (0 if unknown or missing)."""
    decoded: int = 0
    """Bytes after decoding the chunk (0 if unknown or missing)."""

    def to_wire(self) -> dict[str, Any]:
        """Return the Lambda-style answer ``{"statusCode", "body"}`` (§6.4), body base64."""
        if self.status == "missing":
            return {"statusCode": 404, "chunk_id": self.chunk_id, "body": ""}
        return {
            "statusCode": 200,
            "chunk_id": self.chunk_id,
            "body": base64.b64encode(self.data).decode(),
            "fetched": self.fetched,
            "decoded": self.decoded,
        }

    @classmethod
    def from_wire(cls, d: dict[str, Any], chunk_id: str | None = None) -> ChunkResult:
        """Parse :meth:`to_wire` output; a non-200/404 status re-raises the remote error."""
        status = d.get("statusCode")
        cid = d.get("chunk_id") or chunk_id or ""
        if status == 404 and not d.get("error_type"):  # a bare 404 = chunk not written = fill (§6.4)
            return cls(cid, "missing")
        if status == 200:
            try:
                body = base64.b64decode(d.get("body") or "", validate=True)
            except (ValueError, TypeError) as exc:
                raise TaskError(f"chunk {cid}: result body is not valid base64: {exc}") from exc
            return cls(cid, "ok", body, int(d.get("fetched") or 0), int(d.get("decoded") or 0))
        raise error_from_wire(d, cid)


# ----------------------------------------------------------------- errors on the wire

_STATUS = {
    "SelectionError": 400,
    "QueryError": 400,
    "FieldError": 400,
    "TaskError": 400,
    "StoragePathError": 400,
    "DatasetJsonError": 400,
    "TypeJsonError": 400,
    "NotFoundError": 404,
    "ChunkDecodeError": 500,
    "UnsupportedFilterError": 500,
    "StorageError": 500,
}


def error_to_wire(exc: BaseException, chunk_id: str | None = None) -> dict[str, Any]:
    """Return ``{"statusCode", "error_type", "message", "chunk_id"}`` for an exception."""
    ours = isinstance(exc, HsdsBackendsError)
    name = type(exc).__name__ if ours else "TaskError"
    # an exception that is not ours is an internal failure of the executor: 500, not a client error
    status = ((exc.status if isinstance(exc, HsdsBackendsError) else None) or _STATUS.get(name, 500)) if ours else 500
    msg = str(exc) if isinstance(exc, HsdsBackendsError) else f"{type(exc).__name__}: {exc}"
    return {"statusCode": int(status), "error_type": name, "message": msg, "chunk_id": chunk_id}


def error_from_wire(d: dict[str, Any], chunk_id: str | None = None) -> HsdsBackendsError:
    """Rebuild the exception a remote executor reported, with the class ``inline`` would raise."""
    name = d.get("error_type") or "TaskError"
    msg = d.get("message") or d.get("errorMessage") or f"chunk task failed with status {d.get('statusCode')}"
    cid = d.get("chunk_id") or chunk_id
    if cid and cid not in msg:
        msg = f"chunk {cid}: {msg}"
    cls = getattr(_errors, name, None)
    if not (isinstance(cls, type) and issubclass(cls, HsdsBackendsError)):
        cls = TaskError
    code = d.get("statusCode")
    return cls(msg, status=int(code) if isinstance(code, int) and not isinstance(code, bool) else None)


def expected_result_bytes(task: ChunkTask) -> int:
    """Return the bytes ``task``'s result will have (an upper bound for queries, a guess for vlen).

    Backends size their batches and in-flight windows by it (Lambda's response budget, dask's
    gathers).
    """
    meta = task.dset
    if task.kind == "query":
        n = parse_select(task.select, meta.chunks).shape[0] if task.select else meta.chunks[0]
        if task.limit:
            n = min(n, task.limit)
        qdt = query_dtype(meta.dtype, task.fields)
        return n * (qdt.itemsize if not qdt.hasobject else VLEN_GUESS_BYTES)
    if task.kind == "points":
        n = task.num_points
    else:
        shape = parse_select(task.select, meta.chunks).shape if task.select else meta.chunks
        n = 1
        for d in shape:
            n *= d
    dt = field_dtype(meta.dtype, task.fields)
    return n * (dt.itemsize if not dt.hasobject else VLEN_GUESS_BYTES)
