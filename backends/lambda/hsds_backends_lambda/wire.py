"""AWS Lambda's limits and prices, and the raw (binary) batch answer format.

What both ends of an invoke agree on, in one place: the function (:mod:`.handler`), the
invoke client (:mod:`.client`), the backend's batching (:mod:`.backend`), the cost model
(:mod:`.cost`) and the local runtime (:mod:`.local`) import it. Standard library only: it
runs inside the function too.

Raw answers
-----------
A batch event with ``"answer": "raw"`` is answered in binary instead of base64 in JSON::

    RAW_MAGIC (8 bytes) | header length (4 bytes, little-endian unsigned) | JSON header | bodies

The header is ``{"statusCode": 200, "results": [...]}``: one result per task, in task order,
each as in a JSON answer but without ``body``, and with ``nbytes`` for a 200 result. The
bodies of the 200 results follow back to back, in task order. The Python runtime passes a
handler's ``bytes`` through unchanged (awslambdaric ``LambdaMarshaller.marshal_response``),
so this works on AWS as it does locally. A batch the function cannot parse at all is still
answered in JSON, so a reader checks the magic (:func:`is_raw_answer`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, Final

__all__ = [
    "ANSWERS",
    "MAX_REQUEST_BYTES",
    "MAX_RESPONSE_BYTES",
    "PRICE_GB_S",
    "PRICE_REQUEST",
    "RAW_MAGIC",
    "RAW_RESULT_BUDGET",
    "REQUEST_BUDGET",
    "RESULT_BUDGET",
    "RESULT_TOO_LARGE",
    "is_raw_answer",
    "pack_raw_answer",
    "parse_raw_answer",
]

# -- limits (docs/aws-lambda.md §1.4) ---------------------------------------------------------

#: Invoke request limit: a larger payload is refused with 413.
MAX_REQUEST_BYTES: Final = 6_291_456
#: Invoke response limit: a larger answer is ``Function.ResponseSizeTooLarge`` (and resets the environment).
MAX_RESPONSE_BYTES: Final = 6_291_556
#: Result bytes one raw (binary) answer can carry, with room for its JSON header.
RAW_RESULT_BUDGET: Final = MAX_RESPONSE_BYTES - 64 * 1024
#: Result bytes one base64 answer can carry: base64 makes 4 bytes of 3, and the JSON around them.
RESULT_BUDGET: Final = RAW_RESULT_BUDGET * 3 // 4
#: Request bytes one invoke may carry, with room for the JSON wrapper.
REQUEST_BUDGET: Final = MAX_REQUEST_BYTES - 16 * 1024

# -- prices, us-east-1 (docs/aws-lambda.md §3) -------------------------------------------------

#: Dollars per GB-s by architecture.
PRICE_GB_S: Final = {"x86_64": 0.0000166667, "arm64": 0.0000133334}
#: Dollars per request.
PRICE_REQUEST: Final = 0.20 / 1e6

# -- answers -----------------------------------------------------------------------------------

#: Answer encodings a batch may ask for (config ``aws_lambda_answer``): binary, or base64 in JSON (HSDS's 2021 form).
ANSWERS: Final = ("raw", "base64")
#: ``error_type`` of a result that did not fit in the answer (status 413, with its ``nbytes``): send it again, or split it.
RESULT_TOO_LARGE: Final = "ResultTooLarge"
#: First bytes of a raw answer.
RAW_MAGIC: Final = b"HSDSRAW1"
_PREAMBLE: Final = len(RAW_MAGIC) + 4


def is_raw_answer(answer: bytes | bytearray | memoryview) -> bool:
    """Return whether ``answer`` is a raw answer (else it is JSON)."""
    return answer[: len(RAW_MAGIC)] == RAW_MAGIC


def pack_raw_answer(header: dict[str, Any], bodies: Sequence[bytes | bytearray | memoryview]) -> bytes:
    """Return the raw answer of ``header`` (``{"statusCode": 200, "results": [...]}``) and the 200 results' ``bodies``."""
    head = json.dumps(header, separators=(",", ":")).encode()
    return b"".join([RAW_MAGIC, len(head).to_bytes(4, "little"), head, *bodies])  # the one copy of the bodies


def parse_raw_answer(raw: bytes | bytearray | memoryview) -> dict[str, Any]:
    """Parse a raw answer: each 200 result gets ``"data"``, a zero-copy ``memoryview`` of ``raw``.

    Raises
    ------
    ValueError
        The answer is cut short or its header does not match its bodies.
    """
    view = memoryview(raw)
    size = len(view)
    if size < _PREAMBLE:
        raise ValueError(f"raw answer of {size} bytes is shorter than its {_PREAMBLE}-byte preamble")
    hlen = int.from_bytes(view[len(RAW_MAGIC) : _PREAMBLE], "little")
    if _PREAMBLE + hlen > size:
        raise ValueError(f"raw answer of {size} bytes is cut short: its header alone is {hlen} bytes")
    doc = json.loads(view[_PREAMBLE : _PREAMBLE + hlen].tobytes())
    results = doc.get("results") if isinstance(doc, dict) else None
    if not isinstance(doc, dict) or not isinstance(results, list):
        raise ValueError(f"raw answer header has no results list: {str(doc)[:200]}")  # noqa: TRY004 - bad data, as the other checks
    pos = _PREAMBLE + hlen
    for r in results:
        if isinstance(r, dict) and r.get("statusCode") == 200:
            n = r.get("nbytes")
            if not isinstance(n, int) or n < 0 or pos + n > size:
                raise ValueError(f"raw answer: result {r.get('chunk_id')!r} claims {n!r} bytes at offset {pos} of {size}")
            r["data"] = view[pos : pos + n]
            pos += n
    if pos != size:
        raise ValueError(f"raw answer: {size - pos} bytes after the last result")
    return doc
