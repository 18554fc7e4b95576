"""Our batch route: its wire format, the client's request and the DN's frames (docs/hsds-format.md §4 extended).

Request: ``POST /batch`` with a JSON body::

    {"dsets": ["<dataset wire JSON text>", ...],
     "tasks": [{<ChunkTask.to_wire() without dset_json>, "dset": <index into dsets>}, ...],
     "tag": "<request id>"}

Each dataset's trimmed JSON travels once per batch, not once per task, so the
DN needs no metadata lookup. ``tag`` names the client request the batch
belongs to; the DN's chunk cache uses it to resist scans (see
:class:`hsds_backends_containers._cache.ChunkCache`).

Bounds (docs/architecture.md §11): a DN reads at most ``dn_batch_bytes_limit`` bytes of
body and parses at most ``dn_batch_tasks_limit`` tasks per batch (413 otherwise, before
anything is allocated for them). The client keeps its batches under both defaults,
splitting a larger one into several requests (:func:`read_batch`).

Response: ``200 application/x-hsds-backends-frames``, a stream of frames in
completion order, one per task::

    <I index> <B status> <Q length> <Q fetched> <Q decoded>  then  length bytes

little-endian; ``index`` is the task's position in the request, ``status`` is
:data:`OK` (the selected bytes), :data:`MISSING` (the chunk does not exist,
empty payload) or :data:`ERROR` (payload: JSON of
:func:`hsds_backends.tasks.error_to_wire`). No base64 and no per-result JSON:
the client receives each payload straight into its own buffer. ``fetched``
and ``decoded`` are the stored and decoded bytes the DN handled for the task
(0 when the chunk came from its cache), for the request statistics.

The client's side is :func:`read_batch`; the DN's side is :func:`decode_batch`
and :func:`frame` (the service writes the frames).
"""

from __future__ import annotations

import asyncio
import json
import struct
from typing import TYPE_CHECKING, Any, Final

from hsds_backends.config import DEFAULT_CHUNK_BYTES_LIMIT
from hsds_backends.errors import BackendError, HsdsBackendsError, LimitError, TaskError
from hsds_backends.tasks import ChunkResult, ChunkTask, error_from_wire, error_to_wire

from ._client import Fatal, NodeUnreachable, answer_error, json_body, open_request

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Sequence

    from hsds_backends.security import Containment

    from ._client import NodeURL

__all__ = [
    "BATCH_BYTES_LIMIT",
    "BATCH_CONTENT_TYPE",
    "BATCH_PATH",
    "BATCH_TASKS_LIMIT",
    "ERROR",
    "FRAME",
    "FRAMES_CONTENT_TYPE",
    "MISSING",
    "OK",
    "SERVICE",
    "decode_batch",
    "encode_batch",
    "frame",
    "read_batch",
]

#: Frame header: task index, status, payload length, stored bytes fetched, bytes decoded.
FRAME: Final = struct.Struct("<IBQQQ")
OK: Final = 0
MISSING: Final = 1
ERROR: Final = 2

BATCH_PATH: Final = "/batch"
#: The one ``Content-Type`` a batch request may declare (a DN answers 415 to any other).
BATCH_CONTENT_TYPE: Final = "application/json"
FRAMES_CONTENT_TYPE: Final = "application/x-hsds-backends-frames"
#: What ``GET /info`` of our DN reports as ``service`` (how a client tells ours, which serve
#: the batch route, from HSDS's DNs).
SERVICE: Final = "hsds-backends-dn"

#: Default of config ``dn_batch_tasks_limit``: most tasks a DN accepts in one batch.
BATCH_TASKS_LIMIT: Final = 4096
#: Default of config ``dn_batch_bytes_limit``: the largest request body a DN reads (64 MiB).
BATCH_BYTES_LIMIT: Final = 64 * 1024 * 1024
#: JSON objects and lists a batch body may hold, per task of ``dn_batch_tasks_limit``: an
#: honest batch holds a few per task; a body of 64 MiB of ``{}`` would make 2 GiB of dicts.
_CONTAINERS_PER_TASK: Final = 64

_HEADERS: Final = {"Content-Type": BATCH_CONTENT_TYPE, "Accept": FRAMES_CONTENT_TYPE}


# ---------------------------------------------------------------------------- the format


def encode_batch(tasks: Sequence[ChunkTask], tag: str = "") -> bytes:
    """Return the JSON body of a batch request for ``tasks``."""
    texts: dict[int, int] = {}
    dsets: list[str] = []
    items: list[dict[str, Any]] = []
    for t in tasks:
        w = t.to_wire()
        del w["dset_json"]
        key = id(t.dset)
        idx = texts.get(key)
        if idx is None:
            idx = texts[key] = len(dsets)
            dsets.append(t.dset.wire_text())
        w["dset"] = idx
        items.append(w)
    return json.dumps({"dsets": dsets, "tasks": items, "tag": tag}, separators=(",", ":")).encode()


def decode_batch(
    body: bytes | bytearray,
    *,
    tasks_limit: int = BATCH_TASKS_LIMIT,
    chunk_bytes_limit: int = DEFAULT_CHUNK_BYTES_LIMIT,
    containment: Containment | None = None,
) -> tuple[list[ChunkTask], str]:
    """Parse a batch request body into tasks and the request tag.

    Parameters
    ----------
    body
        The request body (already bounded by ``dn_batch_bytes_limit``).
    tasks_limit
        Most tasks accepted (config ``dn_batch_tasks_limit``).
    chunk_bytes_limit
        Largest chunk a task's dataset JSON may declare (config ``chunk_bytes_limit``).
    containment
        What the tasks may read (a DN's allowed buckets); each task is checked as it is
        parsed, so a batch that names one foreign object is refused whole, before any read.

    Raises
    ------
    TaskError
        The body is not a batch (status 400); the message says what is wrong.
    LimitError
        Too many tasks, or more JSON objects and lists than so many tasks need, or a
        dataset whose chunks exceed ``chunk_bytes_limit`` (status 413), refused before
        the tasks are built.
    StoragePathError
        A task reads outside ``containment`` (status 403).
    HsdsBackendsError
        A task is invalid (a bad bucket, key or dataset JSON), as
        :meth:`ChunkTask.from_wire` raises it.
    """
    # counted at C speed before parsing: each JSON object or list becomes a Python object of
    # 50+ bytes, so a body of tiny containers would cost many times its size (braces inside
    # strings count too: this is an upper bound)
    containers = body.count(b"{") + body.count(b"[")
    if containers > _CONTAINERS_PER_TASK * tasks_limit:
        raise LimitError(
            f"batch body holds up to {containers} JSON objects and lists, more than {_CONTAINERS_PER_TASK} "
            f"per task of dn_batch_tasks_limit ({tasks_limit}); send fewer tasks or raise config dn_batch_tasks_limit"
        )
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise _bad(f"batch body is not valid JSON: {exc}") from exc
    if not isinstance(doc, dict) or not isinstance(doc.get("tasks"), list) or not isinstance(doc.get("dsets"), list):
        raise _bad('batch body must be a JSON object {"dsets": [...], "tasks": [...]}')
    if len(doc["tasks"]) > tasks_limit:
        raise LimitError(
            f"batch holds {len(doc['tasks'])} tasks, more than dn_batch_tasks_limit ({tasks_limit}); "
            "send fewer tasks per batch (client dn_batch_size) or raise config dn_batch_tasks_limit"
        )
    dsets = doc["dsets"]
    if not all(isinstance(d, (str, dict)) for d in dsets):
        raise _bad("batch 'dsets' must hold dataset JSON objects or their text")
    tag = doc.get("tag") or ""
    if not isinstance(tag, str):
        raise _bad(f"batch 'tag' must be a string, got {tag!r}")
    tasks: list[ChunkTask] = []
    for n, item in enumerate(doc["tasks"]):
        if not isinstance(item, dict):
            raise _bad(f"batch task {n} must be a JSON object, got {type(item).__name__}")
        d = dict(item)
        ref = d.pop("dset", None)
        if "dset_json" not in d:
            if not isinstance(ref, int) or isinstance(ref, bool) or not 0 <= ref < len(dsets):
                raise _bad(f"batch task {n} has 'dset' {ref!r}; it must index 'dsets' (0..{len(dsets) - 1})")
            d["dset_json"] = dsets[ref]
        try:
            task = ChunkTask.from_wire(d, chunk_bytes_limit=chunk_bytes_limit)
            if containment is not None:
                if "key" in d or "s3path" in d:
                    containment.check_task(task)
                elif task.location is not None:
                    # from_wire made the key from the chunk id: only the bucket is left to check (a set lookup)
                    containment.check_bucket(task.location.bucket, what=f"chunk {task.chunk_id}: bucket")
            tasks.append(task)
        except HsdsBackendsError as exc:
            cid = d.get("chunk_id")
            if isinstance(cid, str) and cid not in str(exc):
                exc.args = (f"chunk {cid}: {exc}", *exc.args[1:])
            raise
    return tasks, tag


def _bad(msg: str) -> TaskError:
    return TaskError(msg, status=400)


# ---------------------------------------------------------------------------- the DN's side


def frame(j: int, res: ChunkResult | BaseException, cid: str) -> tuple[bytes, bytes | bytearray | memoryview]:
    """Return the frame header and payload answering task ``j`` (chunk ``cid``) with ``res``.

    The two are written separately: the payload goes to the socket as it is, never
    concatenated.
    """
    if isinstance(res, BaseException):
        payload: bytes | bytearray | memoryview = json.dumps(error_to_wire(res, cid)).encode()
        return FRAME.pack(j, ERROR, len(payload), 0, 0), payload
    if res.status == "missing":
        return FRAME.pack(j, MISSING, 0, 0, 0), b""
    return FRAME.pack(j, OK, len(res.data), res.fetched, res.decoded), res.data


# ---------------------------------------------------------------------------- the client's side


async def read_batch(
    url: NodeURL,
    tasks: Sequence[ChunkTask],
    idxs: Sequence[int],
    *,
    tag: str,
    token: str | None,
    timeout: float,
    deliver: Callable[[int, ChunkResult], None],
    room: asyncio.Event,
) -> None:
    """Send ``tasks[i] for i in idxs`` to one of our DNs as one batch; ``deliver(i, result)`` as frames arrive.

    A batch over the DNs' default bounds (:data:`BATCH_TASKS_LIMIT` tasks,
    :data:`BATCH_BYTES_LIMIT` bytes of body: a read of millions of points) goes as several
    requests, one after the other. Waits for ``room`` between frames: while it is clear
    (the caller is behind) no frame is taken, the connection pauses and the DN waits.

    Raises
    ------
    Fatal
        The read must end: a per-task error (rebuilt with the class ``inline``
        raises), a 4xx, a DN without the batch route, a broken answer.
    Retryable
        A 5xx answer.
    NodeUnreachable, NodeTimeout
        The DN refused, reset or cut the connection, or sent nothing for ``timeout`` seconds.
    """
    for part, body in _bodies(tasks, idxs, tag):
        await _read_part(url, tasks, part, body, token=token, timeout=timeout, deliver=deliver, room=room)


def _bodies(tasks: Sequence[ChunkTask], idxs: Sequence[int], tag: str) -> Iterator[tuple[Sequence[int], bytes]]:
    """Yield ``(idxs, body)`` requests within the DNs' default bounds, each body made when it is due."""
    if len(idxs) > BATCH_TASKS_LIMIT:
        for k in range(0, len(idxs), BATCH_TASKS_LIMIT):
            yield from _bodies(tasks, idxs[k : k + BATCH_TASKS_LIMIT], tag)
        return
    body = encode_batch([tasks[i] for i in idxs], tag)
    if len(body) <= BATCH_BYTES_LIMIT or len(idxs) == 1:
        yield idxs, body  # one task too big alone: the DN's 413 names the key that raises its bound
        return
    del body
    mid = len(idxs) // 2
    yield from _bodies(tasks, idxs[:mid], tag)
    yield from _bodies(tasks, idxs[mid:], tag)


async def _read_part(
    url: NodeURL,
    tasks: Sequence[ChunkTask],
    idxs: Sequence[int],
    body: bytes,
    *,
    token: str | None,
    timeout: float,
    deliver: Callable[[int, ChunkResult], None],
    room: asyncio.Event,
) -> None:
    """One batch request of :func:`read_batch`."""
    resp = await open_request(
        url, "POST", BATCH_PATH, body=body, headers=_HEADERS, token=token, timeout=timeout, frame=FRAME
    )
    try:
        await resp.wait_head()
        if resp.status != 200:
            raise _answer_error(url, resp.status, bytes(await resp.wait_body()), tasks[idxs[0]].chunk_id)
        n = len(idxs)
        for got in range(n):
            f = await resp.next_frame()
            if f is None:
                raise NodeUnreachable(f"the stream ended after {got} of {n} results")
            j, status, payload, fetched, decoded = f
            if j >= n:
                raise Fatal(BackendError(f"DN {url} answered task {j} of a batch of {n}"))
            i = idxs[j]
            cid = tasks[i].chunk_id
            if status == ERROR:
                doc = json_body(payload) or {"message": bytes(payload[:300]).decode("utf-8", "replace")}
                raise Fatal(error_from_wire(doc, cid))
            if status == MISSING:
                deliver(i, ChunkResult(cid, "missing"))
            else:
                deliver(i, ChunkResult(cid, "ok", payload, fetched, decoded))
            if not room.is_set():
                await room.wait()  # stop taking frames: the connection pauses, the DN waits
    finally:
        resp.close()  # close the connection now, whatever happened


def _answer_error(url: NodeURL, status: int, body: bytes, cid: str) -> Exception:
    doc = json_body(body)
    if status == 404 and not (doc and doc.get("error_type")):
        return Fatal(BackendError(f"DN {url} has no /batch route (a real HSDS DN?); set dn_protocol: hsds"))
    return answer_error(url, status, body, cid, BATCH_PATH)
