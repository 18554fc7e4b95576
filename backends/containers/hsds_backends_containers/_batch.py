"""Our batch route: its wire format, the client's request and the DN's frames (docs/hsds-format.md §4 extended).

Request: ``POST /batch`` with a JSON body::

    {"dsets": ["<dataset wire JSON text>", ...],
     "tasks": [{<ChunkTask.to_wire() without dset_json>, "dset": <index into dsets>}, ...],
     "tag": "<request id>"}

Each dataset's trimmed JSON travels once per batch, not once per task, so the
DN needs no metadata lookup. ``tag`` names the client request the batch
belongs to; the DN's chunk cache uses it to resist scans (see
:class:`hsds_backends_containers._cache.ChunkCache`).

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

from hsds_backends.errors import BackendError, HsdsBackendsError, TaskError
from hsds_backends.tasks import ChunkResult, ChunkTask, error_from_wire, error_to_wire

from ._client import Fatal, NodeUnreachable, answer_error, json_body, open_request

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from ._client import NodeURL

__all__ = [
    "BATCH_PATH",
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
FRAMES_CONTENT_TYPE: Final = "application/x-hsds-backends-frames"
#: What ``GET /info`` of our DN reports as ``service`` (how a client tells ours, which serve
#: the batch route, from HSDS's DNs).
SERVICE: Final = "hsds-backends-dn"

_HEADERS: Final = {"Content-Type": "application/json", "Accept": FRAMES_CONTENT_TYPE}


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


def decode_batch(body: bytes) -> tuple[list[ChunkTask], str]:
    """Parse a batch request body into tasks and the request tag.

    Raises
    ------
    TaskError
        The body is not a batch (status 400); the message says what is wrong.
    HsdsBackendsError
        A task is invalid (a bad bucket, key or dataset JSON), as
        :meth:`ChunkTask.from_wire` raises it.
    """
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise _bad(f"batch body is not valid JSON: {exc}") from exc
    if not isinstance(doc, dict) or not isinstance(doc.get("tasks"), list) or not isinstance(doc.get("dsets"), list):
        raise _bad('batch body must be a JSON object {"dsets": [...], "tasks": [...]}')
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
            tasks.append(ChunkTask.from_wire(d))
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

    Waits for ``room`` between frames: while it is clear (the caller is behind) no
    frame is taken, the connection pauses and the DN waits.

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
    body = encode_batch([tasks[i] for i in idxs], tag)
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
