"""HDF5's fletcher32 trailer: 4 bytes, little-endian, after the filtered chunk bytes.

The HDF5 pipeline applies fletcher32 last, over the compressed bytes, so chunks
of linked HDF5 files end in it; HSDS itself ignores the filter
(docs/hsds-format.md §3.3 table).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from numcodecs import Fletcher32

if TYPE_CHECKING:
    from ._common import Fail

__all__ = ["FLETCHER_BYTES", "strip_fletcher32"]

#: Length of the trailer.
FLETCHER_BYTES: Final = 4


def strip_fletcher32(buf: memoryview, where: str, fail: Fail) -> memoryview:
    """Verify the HDF5 fletcher32 trailer (4 bytes, little-endian) and return the bytes before it."""
    if len(buf) < FLETCHER_BYTES:
        fail(f"has {len(buf)} bytes, too short for its fletcher32 checksum")
    if len(buf) == FLETCHER_BYTES:
        # numcodecs indexes past an empty payload; HDF5's checksum of no bytes is 0.
        if any(buf):
            fail(f"fails its fletcher32 checksum ({where}): expected 0 for an empty payload")
    else:
        try:
            Fletcher32().decode(buf)  # checks; we slice ourselves to keep a plain memoryview
        except RuntimeError as exc:
            fail(f"fails its fletcher32 checksum ({where}): {exc}", exc)
    return buf[: len(buf) - FLETCHER_BYTES]
