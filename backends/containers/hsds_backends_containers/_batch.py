"""The batch route's wire format (our extension of HSDS's DN API, hsds-format.md §4).

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
"""

from __future__ import annotations

import json
import struct
from typing import TYPE_CHECKING, Any, Final

from hsds_backends.errors import HsdsBackendsError, TaskError
from hsds_backends.tasks import ChunkTask

if TYPE_CHECKING:
    from collections.abc import Sequence

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
]

#: Frame header: task index, status, payload length, stored bytes fetched, bytes decoded.
FRAME: Final = struct.Struct("<IBQQQ")
OK: Final = 0
MISSING: Final = 1
ERROR: Final = 2

BATCH_PATH: Final = "/batch"
FRAMES_CONTENT_TYPE: Final = "application/x-hsds-backends-frames"
#: What ``GET /info`` of our DN reports as ``service`` (how a client tells ours from HSDS's DNs).
SERVICE: Final = "hsds-backends-dn"


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
    err = TaskError(msg)
    err.status = 400  # type: ignore[attr-defined]
    return err
