"""The ``chunk_read`` Lambda function: the core kernel on one chunk task or a batch.

Entry point ``lambda_handler(event, context)`` (the zip's ``lambda_function.lambda_handler``
re-exports it, as HSDS's 2021 ``awslambda/chunkread/lambda_function.py`` did).

Payloads (JSON objects)
-----------------------
- **One task**: our :meth:`hsds_backends.tasks.ChunkTask.to_wire` form, or the 2021 HSDS
  payload (docs/hsds-format.md §6.3): ``chunk_id``, ``dset_json``, ``bucket``, ``select``,
  ``s3path``/``s3offset``/``s3size``, ``point_arr`` + ``num_points``, ``query``/``Limit``
  (``action`` and ``count`` are accepted and ignored, as in 2021).
- **A batch**: ``{"tasks": [task, ...]}``; keys given next to ``tasks`` (typically
  ``dset_json`` and ``bucket``, shared by every task of one read) are defaults for each task,
  so the dataset JSON crosses the wire once per invoke.
- ``{"ping": true}``: answers at once (measures per-invoke overhead); with
  ``HSDS_LAMBDA_DIAGNOSTICS=1`` it also names the files its modules were loaded from.

Answers
-------
One task: ``{"statusCode", "body", "chunk_id"}`` as HSDS did (docs/hsds-format.md §6.4): 200 with the selected
bytes in base64; 404 with an empty body when the chunk does not exist (the caller fills); an
error carries ``statusCode`` (400 bad payload, 403 bucket not allowed, a key that is not the
chunk's own, or access denied, 404 linked file missing, 500 undecodable chunk, storage failure
or no storage configured), ``error_type`` (the
:mod:`hsds_backends.errors` class) and ``message`` (which names the chunk). A 2021 query
payload (no ``kind`` key) gets ``body`` = ``{"index": [...], "value": [...]}`` as in 2021;
our own payloads get the packed rows in base64.

A batch: ``{"statusCode": 200, "results": [answer, ...]}`` in task order. Results that
would push the response over Lambda's 6,291,556-byte limit come back as
``{"statusCode": 413, "error_type": "ResultTooLarge", "nbytes": N}``: the caller re-sends them
in another invoke, splitting a task whose own result is too large (see ``backend.py``).

Raw answers
-----------
A batch with ``"answer": "raw"`` (what this package's client sends) is answered in binary
instead of base64 in JSON, which saves the encode, the decode and a quarter of the bytes on
the wire; the format is in :mod:`hsds_backends_lambda.wire`. A batch the function cannot
parse at all is still answered in JSON (``statusCode`` 400), so a caller checks the magic.

The handler never raises for a bad payload or a bad chunk; an exception escaping it would be a
bug and shows up to the caller as ``FunctionError: Unhandled``.

Environment
-----------
``AWS_S3_GATEWAY`` (S3 endpoint; unset = AWS), ``AWS_REGION`` (set by Lambda),
``ROOT_DIR`` (posix storage instead of S3: local runtime only; an absolute path), ``STORAGE``
(``s3``: S3 with the AWS credential chain, what the local runtime sets for ``storage: s3``),
``BUCKET_NAME`` (bucket for payloads without one), ``BUCKET_ALLOWLIST`` (comma-separated
buckets this function may read; unset = ``BUCKET_NAME`` only, ``*`` = any), ``LOG_LEVEL``
(``DEBUG``/``INFO``/``WARNING``/``ERROR``, default ``INFO``), ``HSDS_LAMBDA_THREADS`` (decode
threads, default: the vCPUs Lambda gives the function), ``HSDS_LAMBDA_MAX_RESPONSE``
(response byte limit, default 6,291,556). Credentials come from the standard AWS variables
(the function's role), never from payloads.

What it may read (docs/architecture.md §11)
-------------------------------------------
Payloads come from whoever may invoke the function, so every task is checked before anything
is fetched (:class:`hsds_backends.security.Containment`): its bucket must be allowed, and a
chunk of an ``H5D_CHUNKED`` dataset is read from its own chunk key only (a linked chunk: any
file of an allowed bucket). The storage is explicit: ``ROOT_DIR`` (an absolute folder) or S3
(``AWS_S3_GATEWAY``, or the role credentials Lambda sets); with neither, every invocation is
answered with a ``ConfigError`` instead of reading the current folder.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Final

try:  # SIMD base64, ~3x the standard library's speed (the protocol is base64 in JSON)
    from pybase64 import b64encode as _b64encode
except ImportError:  # pragma: no cover - pybase64 is a dependency; keep working without it
    from base64 import b64encode as _b64encode  # type: ignore[assignment]

from hsds_backends.errors import ConfigError, StorageError, TaskError
from hsds_backends.kernel import run_task
from hsds_backends.security import Containment
from hsds_backends.storage import Storage, storage_from_config
from hsds_backends.tasks import ChunkResult, ChunkTask, error_to_wire, query_dtype

from .wire import MAX_RESPONSE_BYTES, RAW_MAGIC, RESULT_TOO_LARGE, pack_raw_answer

if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = ["dumps_answer", "handle_event", "lambda_handler", "reset_state"]

log = logging.getLogger("hsds_backends_lambda")

#: Room kept for the JSON around the base64 bodies of a batch answer.
_ENVELOPE: Final = 256
_PER_RESULT: Final = 160


class _State:
    """What survives between warm invocations of one environment (docs/aws-lambda.md §1.4)."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = dict(env)
        storage_config = _storage_config(env)  # first: a refusal leaves no loop or threads behind
        self.default_bucket = env.get("BUCKET_NAME") or ""
        self.containment = Containment.of(
            env.get("BUCKET_ALLOWLIST") or "", default=self.default_bucket, setting="the function's BUCKET_ALLOWLIST (default: its BUCKET_NAME; '*': any)"
        )
        self.loop = asyncio.new_event_loop()
        self.threads = max(1, int(env.get("HSDS_LAMBDA_THREADS") or 0) or (os.cpu_count() or 1))
        self.pool = ThreadPoolExecutor(self.threads, thread_name_prefix="chunk-read")
        self.storage: Storage = storage_from_config(storage_config)
        self.max_response = int(env.get("HSDS_LAMBDA_MAX_RESPONSE") or MAX_RESPONSE_BYTES)
        self.invocations = 0
        #: ``HSDS_LAMBDA_DIAGNOSTICS=1``: a ping also reports where the modules were loaded from
        self.diagnostics = (env.get("HSDS_LAMBDA_DIAGNOSTICS") or "").lower() in ("1", "true", "yes", "on")

    def close(self) -> None:
        self.loop.run_until_complete(self.storage.aclose())
        self.loop.close()
        self.pool.shutdown(wait=False)


#: Variables that say the function reads S3: an endpoint, or the role credentials Lambda sets.
_S3_MARKERS: Final = ("AWS_S3_GATEWAY", "AWS_ACCESS_KEY_ID", "AWS_CONTAINER_CREDENTIALS_FULL_URI")


def _storage_config(env: Mapping[str, str]) -> dict[str, Any]:
    """Storage settings from the function's environment; never the current folder.

    Raises
    ------
    ConfigError
        ``ROOT_DIR`` is relative or not a folder, or neither ``ROOT_DIR`` nor S3 is configured.
    """
    root = env.get("ROOT_DIR")
    if root:
        # a relative root would resolve against the worker's current folder (docs/architecture.md §11)
        if not os.path.isabs(root):
            raise ConfigError(f"ROOT_DIR {root!r} is not an absolute path; set ROOT_DIR to the storage folder's absolute path")
        if not os.path.isdir(root):
            raise ConfigError(f"ROOT_DIR {root!r} is not a folder; set ROOT_DIR to an existing storage folder")
        return {"root_dir": root}
    if env.get("STORAGE") == "azure" or (env.get("AZURE_CONNECTION_STRING") and not env.get("STORAGE") and not env.get("AWS_S3_GATEWAY")):
        raise ConfigError(
            "this function reads S3 (and, on the local runtime, a posix ROOT_DIR) only, not Azure Blob storage"
            " (STORAGE=azure / AZURE_CONNECTION_STRING): read Azure with the inline, containers or dask backend"
        )
    if env.get("STORAGE") != "s3" and not any(env.get(k) for k in _S3_MARKERS):
        raise ConfigError(
            "this function has no storage configured: set ROOT_DIR (an absolute posix folder, local runtime only)"
            " or AWS_S3_GATEWAY / STORAGE=s3 (S3; on AWS the function's role credentials are enough)"
        )
    return {
        "storage": "s3",
        "aws_s3_gateway": env.get("AWS_S3_GATEWAY") or None,
        "aws_region": env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or "us-east-1",
        # credentials: the AWS chain (AWS_ACCESS_KEY_ID/... that Lambda sets from the role)
    }


_state: _State | None = None


def _get_state() -> _State:
    global _state
    if _state is None:
        level = (os.environ.get("LOG_LEVEL") or "INFO").upper()
        log.setLevel(getattr(logging, "WARNING" if level == "WARN" else level, logging.INFO))
        _state = _State(os.environ)
    return _state


def reset_state() -> None:
    """Forget the warm state (storage client, loop, threads); tests and env changes use it."""
    global _state
    if _state is not None:
        _state.close()
    _state = None


def lambda_handler(event: Any, context: Any = None) -> bytes:
    """Run the chunk task(s) in ``event`` and return the HSDS-style answer (see the module doc).

    The answer is returned already serialised (JSON bytes, which awslambdaric passes through
    unchanged): base64 bodies go in as bytes, never as Python strings.
    """
    try:
        state = _get_state()
    except ConfigError as exc:  # no usable storage: answer why, on every invocation, rather than guess one
        return dumps_answer(_error(exc, _chunk_id_of(event)))
    return dumps_answer(handle_event(event, state))


def _pieces(d: dict[str, Any], out: list[bytes]) -> None:
    body = d.get("body")
    if not isinstance(body, (bytes, bytearray)):
        out.append(json.dumps(d, separators=(",", ":")).encode())
        return
    rest = {k: v for k, v in d.items() if k != "body"}
    out.append(json.dumps(rest, separators=(",", ":")).encode()[:-1] + (b',"body":"' if rest else b'"body":"'))
    out.append(bytes(body) if isinstance(body, bytearray) else body)  # copied once, by the final join
    out.append(b'"}')


def dumps_answer(answer: dict[str, Any]) -> bytes:
    """Serialise an answer of :func:`handle_event` to bytes: JSON (bodies may be base64 bytes), or a raw answer."""
    raw = answer.pop("_raw", None)
    if raw is not None:
        return pack_raw_answer(answer, raw)
    out: list[bytes] = []
    results = answer.get("results")
    if not isinstance(results, list):
        _pieces(answer, out)
        return b"".join(out)
    rest = {k: v for k, v in answer.items() if k != "results"}
    out.append(json.dumps(rest, separators=(",", ":")).encode()[:-1] + b',"results":[')
    for i, r in enumerate(results):
        if i:
            out.append(b",")
        _pieces(r, out)
    out.append(b"]}")
    return b"".join(out)


def _ok(res: ChunkResult) -> dict[str, Any]:
    """``ChunkResult.to_wire`` with the base64 body kept as bytes."""
    if res.status == "missing":
        return {"statusCode": 404, "chunk_id": res.chunk_id, "body": ""}
    return {"statusCode": 200, "chunk_id": res.chunk_id, "body": _b64encode(res.data), "fetched": res.fetched, "decoded": res.decoded}


def handle_event(event: Any, state: _State) -> dict[str, Any]:
    """Answer one event with ``state``'s storage (no exception escapes)."""
    t0 = time.perf_counter()
    state.invocations += 1
    if not isinstance(event, dict):
        return _error(TaskError(f"the event must be a JSON object (a chunk task or {{'tasks': [...]}}), got {type(event).__name__}", status=400), None)
    if event.get("ping"):
        pong: dict[str, Any] = {"statusCode": 200, "body": "", "pong": True, "invocations": state.invocations}
        if state.diagnostics:  # install paths only when the operator asked for them (they map the host)
            import sys

            pong["modules"] = {m: getattr(sys.modules.get(m), "__file__", None) for m in ("hsds_backends", "numpy", "numcodecs")}
        return pong
    if "tasks" in event:
        answer = _batch(event, state)
    else:
        answer = _single(event, state)
    log.debug("answered in %.1f ms", (time.perf_counter() - t0) * 1e3)
    return answer


# ----------------------------------------------------------------------------- parsing


def _parse(d: Any, state: _State, shared: Mapping[str, Any] | None = None) -> ChunkTask:
    if not isinstance(d, dict):
        raise TaskError(f"a chunk task must be a JSON object, got {type(d).__name__}: {str(d)[:80]!r}", status=400)
    if shared:
        d = {**shared, **d}
    if not d.get("bucket") and state.default_bucket and "s3path" not in d:
        d = {**d, "bucket": state.default_bucket}
    task = ChunkTask.from_wire(d)
    # before any fetch: an allowed bucket, and a chunk's own key (docs/architecture.md §11)
    state.containment.check_task(task)
    return task


def _error(exc: BaseException, chunk_id: str | None) -> dict[str, Any]:
    """The answer for ``exc``: the status it carries, else 403 for a denied access, else its class's."""
    d = error_to_wire(exc, chunk_id)
    if isinstance(exc, StorageError) and not exc.status and str(exc).startswith("access denied"):
        d["statusCode"] = 403  # docs/hsds-format.md §6.4: AccessDenied/401/403 answer 403
    d["body"] = d["message"]
    if d["statusCode"] >= 500:
        log.warning("chunk %s: %s", chunk_id, d["message"])
    return d


def _chunk_id_of(d: Any) -> str | None:
    return d.get("chunk_id") if isinstance(d, dict) and isinstance(d.get("chunk_id"), str) else None


# ----------------------------------------------------------------------------- running


async def _run_one(task: ChunkTask, state: _State) -> ChunkResult:
    # no copy of whole-chunk results: the answer is assembled (copied) once from the decoded chunks;
    # one decode thread: decoding right here (no executor) saves a thread hop per chunk
    return await run_task(task, state.storage, executor=None if state.threads == 1 else state.pool, copy=False)


def _b64len(n: int) -> int:
    return 4 * ((n + 2) // 3)


def _single(event: dict[str, Any], state: _State) -> dict[str, Any]:
    cid = _chunk_id_of(event)
    try:
        task = _parse(event, state)
        res = state.loop.run_until_complete(_run_one(task, state))
    except Exception as exc:  # noqa: BLE001 - every failure becomes an answer
        return _error(exc, cid)
    if res.status == "ok" and _b64len(len(res.data)) + _ENVELOPE > state.max_response:
        return _too_large(res.chunk_id, len(res.data), state)
    if res.status == "ok" and task.kind == "query" and "kind" not in event:
        return {"statusCode": 200, "chunk_id": res.chunk_id, "body": _query_json(task, res.data)}
    return _ok(res)


def _too_large(cid: str, nbytes: int, state: _State) -> dict[str, Any]:
    return {
        "statusCode": 413,
        "error_type": RESULT_TOO_LARGE,
        "chunk_id": cid,
        "nbytes": nbytes,
        "message": (
            f"chunk {cid}: the result of {nbytes} bytes ({_b64len(nbytes)} in base64) does not fit in the"
            f" {state.max_response}-byte Lambda response; split the selection"
        ),
        "body": "",
    }


def _batch(event: dict[str, Any], state: _State) -> dict[str, Any]:
    raw = event["tasks"]
    if not isinstance(raw, list):
        return _error(TaskError(f"'tasks' must be a list of chunk tasks, got {type(raw).__name__}", status=400), None)
    shared = {k: v for k, v in event.items() if k not in ("tasks", "answer")}
    parsed: list[ChunkTask | dict[str, Any]] = []
    for d in raw:
        try:
            parsed.append(_parse(d, state, shared))
        except Exception as exc:  # noqa: BLE001
            parsed.append(_error(exc, _chunk_id_of(d)))

    async def run_all() -> list[ChunkResult | BaseException | dict[str, Any]]:
        async def one(p: ChunkTask | dict[str, Any]) -> ChunkResult | BaseException | dict[str, Any]:
            if isinstance(p, dict):
                return p
            try:
                return await _run_one(p, state)
            except Exception as exc:  # noqa: BLE001
                return exc

        return list(await asyncio.gather(*(one(p) for p in parsed)))

    outcomes = state.loop.run_until_complete(run_all())
    raw = event.get("answer") == "raw"
    budget = state.max_response - _ENVELOPE - (len(RAW_MAGIC) + 4 if raw else 0)
    results: list[dict[str, Any]] = []
    bodies: list[bytes | bytearray | memoryview] = []
    for p, out in zip(parsed, outcomes, strict=True):
        cid = p.chunk_id if isinstance(p, ChunkTask) else p.get("chunk_id")
        if isinstance(out, dict):
            results.append(out)
        elif isinstance(out, BaseException):
            results.append(_error(out, cid))
        elif out.status == "ok" and (len(out.data) if raw else _b64len(len(out.data))) + _PER_RESULT > budget:
            results.append(_too_large(out.chunk_id, len(out.data), state))
        elif raw and out.status == "ok":
            results.append({"statusCode": 200, "chunk_id": out.chunk_id, "nbytes": len(out.data), "fetched": out.fetched, "decoded": out.decoded})
            bodies.append(out.data)
            budget -= len(out.data)
        else:
            results.append(_ok(out))
        if raw:
            results[-1].pop("body", None)
            budget -= _PER_RESULT + len(results[-1].get("message") or "")
        else:
            budget -= _PER_RESULT + len(results[-1].get("body") or "")
    answer: dict[str, Any] = {"statusCode": 200, "results": results}
    if raw:
        answer["_raw"] = bodies
    return answer


# ----------------------------------------------------------------------------- 2021 query form


def _jsonable(v: Any) -> Any:
    if isinstance(v, bytes):
        return v.decode("utf-8", "replace")
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if hasattr(v, "tolist"):
        return _jsonable(v.tolist())
    return v


def _query_json(task: ChunkTask, data: bytes | bytearray | memoryview) -> str:
    """Return the 2021 query body ``{"index": [...], "value": [...]}`` (docs/hsds-format.md §6.4)."""
    import numpy as np

    qdt = query_dtype(task.dset.dtype, task.fields)
    if qdt.hasobject:  # variable-length fields have no 2021 form: keep the packed rows
        return base64.b64encode(bytes(data)).decode()
    rows = np.frombuffer(bytes(data), dtype=qdt)
    names = qdt.names or ()
    return json.dumps({"index": rows[names[0]].tolist(), "value": [_jsonable(list(r)[1:]) for r in rows.tolist()]})
