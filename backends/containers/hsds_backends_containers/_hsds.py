"""HSDS's DN read routes: the client's per-chunk requests and the DN's parsing of them (docs/hsds-format.md §4).

``GET /chunks/{chunk_id}`` reads a hyperslab or runs a query (docs/hsds-format.md §4.2):
query parameters ``bucket``, ``select`` (chunk-relative), ``fields`` (``a:b``), ``query``,
``Limit``, ``s3path``/``s3offset``/``s3size`` (``:``-separated lists with ``hyper_dims`` for a
hyper-chunk of ``H5D_CHUNKED_REF_INDIRECT``, docs/hsds-format.md §3.5). ``POST /chunks/{chunk_id}`` reads points
(docs/hsds-format.md §4.3): ``count`` and a body of ``count`` × rank uint64 absolute
coordinates (``application/octet-stream``), or a JSON body ``{"select": ..., "fields": ...}``
for selections too long for a URL (docs/hsds-format.md §4.4). The answer is the selected
bytes (``application/octet-stream``) or a 404 for a chunk that was never written.

- :func:`read_chunk`: the client's side, one request per chunk (a real HSDS DN, or ours
  with ``dn_protocol: hsds``).
- :func:`task_from_request`: the DN's side, an HSDS request as a
  :class:`~hsds_backends.tasks.ChunkTask` (the service loads the dataset JSON first);
  :func:`post_content_type`: the only bodies a DN takes on ``POST /chunks/{id}`` (what
  HSDS's SN sends; 415 otherwise).

No aiohttp here: the service turns the task's result into its answer.
"""

from __future__ import annotations

import json
import urllib.parse
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Final

import numpy as np

from hsds_backends.chunk_table import hyper_location, parse_int_list
from hsds_backends.config import DEFAULT_CHUNK_BYTES_LIMIT
from hsds_backends.dataset import ChunkLocation
from hsds_backends.errors import BackendError, TaskError
from hsds_backends.ids import chunk_key
from hsds_backends.kernel import process_chunk
from hsds_backends.selection import Slice, format_select
from hsds_backends.tasks import ChunkResult, ChunkTask, TaskKind, field_dtype, split_s3path

from ._client import Fatal, answer_error, json_body, request

if TYPE_CHECKING:
    from collections.abc import Sequence

    from hsds_backends.dataset import DatasetMeta

    from ._client import NodeURL

__all__ = ["JSON", "MAX_SELECT_IN_URL", "OCTETS", "post_content_type", "read_chunk", "task_from_request"]

#: HSDS's SN sends selects longer than half of ``http_max_url_length`` (512) in a JSON POST
#: (docs/hsds-format.md §4.4).
MAX_SELECT_IN_URL: Final = 256

JSON: Final = "application/json"
OCTETS: Final = "application/octet-stream"
#: JSON objects and lists a ``{"select": ..., "fields": ...}`` body may hold: it needs two.
_JSON_BODY_CONTAINERS: Final = 64


# ---------------------------------------------------------------------------- the client's side


async def read_chunk(url: NodeURL, task: ChunkTask, *, token: str | None, timeout: float) -> ChunkResult:
    """Run ``task`` on an HSDS-style DN with one ``GET``/``POST /chunks/{id}`` (docs/hsds-format.md §4.2, §4.3).

    Raises
    ------
    Fatal
        The task cannot be expressed in HSDS's API (a query: HSDS 1.0.2 DNs return rows
        without their index; coordinate lists on several dimensions: HSDS zips them), or
        the DN answered with an error that ends the read.
    Retryable
        A 5xx answer.
    NodeUnreachable, NodeTimeout
        As :func:`hsds_backends_containers._client.request`.
    """
    cid = task.chunk_id
    meta = task.dset
    if task.kind == "query":
        raise Fatal(BackendError(
            f"chunk {cid}: DN {url} is a real HSDS DN; HSDS 1.0.2 DNs return query rows without their index. "
            "Run queries on hsds-backends DNs or another backend"
        ))
    if task.select and task.select.count("[") > 2:
        raise Fatal(BackendError(
            f"chunk {cid}: select {task.select!r} has coordinate lists on several dimensions; HSDS DNs zip them "
            "instead of taking their outer product. Use hsds-backends DNs or another backend"
        ))
    loc = task.location
    if loc is not None and loc.parts is not None and (task.kind == "points" or (task.select is not None and len(task.select) > MAX_SELECT_IN_URL)):
        # HSDS's POST /chunks takes one s3offset/s3size (docs/hsds-format.md §4.3): GET the whole hyper-chunk, cut it here
        whole = ChunkTask(cid, meta, loc, "hyperslab", format_select([Slice(0, c, 1) for c in meta.chunks]))
        res = await read_chunk(url, whole, token=token, timeout=timeout)
        if res.status != "ok":
            return ChunkResult(cid, res.status)
        chunk = np.frombuffer(res.data, dtype=f"V{meta.dtype.itemsize}").reshape(meta.chunks)
        return process_chunk(task, chunk, len(res.data))
    params: dict[str, Any] = {"bucket": meta.bucket}
    if loc is not None and loc.parts is not None:  # a hyper-chunk as HSDS's SN sends it (docs/hsds-format.md §4.2)
        params.update(
            s3path=f"{loc.bucket}/{loc.key}", s3offset=":".join(str(o) for o, _ in loc.parts),
            s3size=":".join(str(n) for _, n in loc.parts), hyper_dims=":".join(map(str, loc.hyper_dims or ())),
        )
    elif loc is not None and loc.linked:
        params.update(s3path=f"{loc.bucket}/{loc.key}", s3offset=loc.offset or 0, s3size=loc.size or 0)
    names = meta.dtype.names or ()
    reorder = None
    if task.fields:
        if len(task.fields) == len(names) and tuple(task.fields) != tuple(names):
            # HSDS projects only when fewer fields than the type's are named (docs/hsds-format.md §5.4): reorder here
            if meta.dtype.hasobject:
                raise Fatal(BackendError(f"chunk {cid}: reordering all fields of a variable-length compound needs hsds-backends DNs"))
            reorder = task.fields
        elif tuple(task.fields) != tuple(names):
            params["fields"] = ":".join(task.fields)
    headers: dict[str, str] = {}
    body = b""
    method = "GET"
    if task.kind == "points":
        assert task.points is not None
        method = "POST"
        params["count"] = task.num_points
        body = np.ascontiguousarray(task.points, dtype="<u8").tobytes()
        headers["Content-Type"] = OCTETS
    elif task.select is not None and len(task.select) > MAX_SELECT_IN_URL:
        method = "POST"
        body = json.dumps({"select": task.select}).encode()
        headers["Content-Type"] = JSON
    elif task.select is not None:
        params["select"] = task.select
    target = f"/chunks/{cid}?{urllib.parse.urlencode(params)}"
    status, _, data = await request(url, method, target, body=body, headers=headers, token=token, timeout=timeout)
    if status == 200:
        if reorder is not None:
            data = memoryview(_reorder(bytes(data), meta.dtype, reorder))
        return ChunkResult(cid, "ok", data)
    doc = json_body(data)
    if status == 404 and not (doc and doc.get("error_type")):
        return ChunkResult(cid, "missing")  # chunk not written: fill (docs/hsds-format.md §3.4)
    raise answer_error(url, status, data, cid, f"{method} /chunks")


def _reorder(data: bytes, dtype: Any, fields: Sequence[str]) -> bytes:
    rows = np.frombuffer(data, dtype=dtype)
    out = np.empty(rows.shape, dtype=field_dtype(dtype, tuple(fields)))
    for f in fields:
        out[f] = rows[f]
    return out.tobytes()


# ---------------------------------------------------------------------------- the DN's side


def post_content_type(content_type: str | None) -> str:
    """Return the media type of a ``POST /chunks/{id}`` body: :data:`OCTETS` (points) or :data:`JSON` (select).

    Raises
    ------
    TaskError
        Any other type, or none (status 415): HSDS's SN always declares one of the two
        (docs/hsds-format.md §4.3), and a web page can send ``text/plain`` without asking.
    """
    ctype = (content_type or "").split(";")[0].strip().lower()
    if ctype not in (OCTETS, JSON):
        raise TaskError(
            f"Content-Type {ctype or '(none)'!r} is not supported; use {OCTETS!r} (points) or {JSON!r} ({{'select': ...}})",
            status=415,
        )
    return ctype


def task_from_request(
    cid: str,
    index: Sequence[int],
    meta: DatasetMeta,
    bucket: str,
    params: Mapping[str, str],
    *,
    content_type: str | None = None,
    body: bytes | None = None,
    chunk_bytes_limit: int = DEFAULT_CHUNK_BYTES_LIMIT,
) -> ChunkTask:
    """Build the chunk task of an HSDS-style request (docs/hsds-format.md §4.2, §4.3).

    Parameters
    ----------
    cid, index
        The chunk id of the route and its (validated) chunk index.
    meta, bucket
        The dataset the chunk belongs to (loaded by the DN) and the request's bucket.
    params
        The query parameters.
    content_type, body
        A POST's ``Content-Type`` and body; ``body=None`` for a GET.
    chunk_bytes_limit
        Largest stored chunk a hyper-chunk's ``s3size`` may name (config ``chunk_bytes_limit``).

    Raises
    ------
    TaskError
        A bad request (status 400; an unsupported ``Content-Type``: 415), naming what is wrong.
    """
    if len(index) != len(meta.chunks):
        raise _bad(f"chunk id {cid!r} has {len(index)} indices; dataset {meta.id} has rank {len(meta.chunks)}")
    location = _location(params, bucket, cid, meta, chunk_bytes_limit)
    fields = [f for f in params["fields"].split(":") if f] if params.get("fields") else None
    select = params.get("select")
    points = None
    kind: TaskKind = "query" if params.get("query") else "hyperslab"
    if body is not None:
        if post_content_type(content_type) == OCTETS:
            points = _points(body, params.get("count"), max(meta.rank, 1))
            kind = "points"
        else:
            select, body_fields = _json_select(body)
            if body_fields is not None:
                if fields:
                    raise _bad("fields given both as a query parameter and in the JSON body; give one")
                fields = body_fields
    limit = None
    if params.get("Limit"):
        try:
            limit = int(params["Limit"])
        except ValueError as exc:
            raise _bad(f"Limit {params['Limit']!r} is not an integer") from exc
        if limit < 0:
            raise _bad(f"Limit {limit} must be >= 0 (0 = no limit)")
    return ChunkTask(
        cid, meta, location, kind,
        select=select, points=points, fields=tuple(fields) if fields else None,
        query=params.get("query") or None, limit=limit or None,
    )


def _location(params: Mapping[str, str], bucket: str, cid: str, meta: DatasetMeta, chunk_bytes_limit: int) -> ChunkLocation | None:
    if not params.get("s3path"):
        return ChunkLocation(bucket, chunk_key(cid))
    b, k = split_s3path(params["s3path"])
    if any(":" in params.get(p, "") for p in ("s3offset", "s3size")) or params.get("hyper_dims"):
        # a hyper-chunk: one offset and size per HDF5 chunk, and their shape (docs/hsds-format.md §3.5, §4.2)
        return hyper_location(
            meta, cid, b, k, parse_int_list(params.get("s3offset"), "s3offset", cid) or [],
            parse_int_list(params.get("s3size"), "s3size", cid) or [], parse_int_list(params.get("hyper_dims"), "hyper_dims", cid),
            chunk_bytes_limit=chunk_bytes_limit,
        )
    offset, size = _int_param(params, "s3offset"), _int_param(params, "s3size")
    if (offset is not None and offset < 0) or (size is not None and size < 0):
        raise _bad(f"chunk {cid}: s3offset {offset} / s3size {size} may not be negative")
    if not size:
        return None  # Σ size = 0: nothing stored for this chunk (docs/hsds-format.md §4.2 → 404)
    return ChunkLocation(b, k, offset or 0, size, True)


def _bad(msg: str) -> TaskError:
    return TaskError(msg, status=400)


def _int_param(params: Mapping[str, str], name: str) -> int | None:
    v = params.get(name)
    if v is None or v == "":
        return None
    try:
        return int(v)
    except ValueError as exc:
        raise _bad(f"{name} {v!r} is not an integer") from exc


def _points(body: bytes, count: str | None, rank: int) -> np.ndarray[Any, np.dtype[np.uint64]]:
    if count is None:
        raise _bad("a binary POST needs the 'count' query parameter (number of points, docs/hsds-format.md §4.3)")
    try:
        n = int(count)
    except ValueError as exc:
        raise _bad(f"count {count!r} is not an integer") from exc
    if n < 0 or len(body) != n * rank * 8:
        raise _bad(f"body has {len(body)} bytes; count={n} points of rank {rank} need {max(n, 0) * rank * 8} (uint64 coordinates)")
    return np.frombuffer(body, dtype="<u8").reshape(n, rank)


def _json_select(body: bytes) -> tuple[str | None, list[str] | None]:
    # bounded before parsing: a body of many tiny lists would cost many times its size
    if body.count(b"{") + body.count(b"[") > _JSON_BODY_CONTAINERS:
        raise _bad(f'a JSON POST body holds {{"select": "[...]", "fields": [...]}} only; this one has more than {_JSON_BODY_CONTAINERS} objects and lists')
    try:
        doc = json.loads(body) if body else {}
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise _bad(f"JSON body is not valid JSON: {exc}") from exc
    if not isinstance(doc, dict) or not isinstance(doc.get("select"), str):
        raise _bad('a JSON POST needs a body {"select": "[...]"} (docs/hsds-format.md §4.3)')
    fields = doc.get("fields")
    if isinstance(fields, str):
        fields = [f for f in fields.split(":") if f]
    if fields is not None and (not isinstance(fields, list) or not all(isinstance(f, str) for f in fields)):
        raise _bad(f"'fields' must be a list of names or 'a:b', got {fields!r}")
    return doc["select"], fields
