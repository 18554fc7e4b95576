"""HDF5's byte shuffle filter (docs/hsds-format.md §3.3): numcodecs' Shuffle over whole items."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from numcodecs import Shuffle

if TYPE_CHECKING:
    from ._common import Buffer

__all__ = ["shuffle", "unshuffle"]


def unshuffle(buf: Buffer, itemsize: int) -> Buffer:
    """Undo HDF5's byte shuffle; trailing bytes (len % itemsize) stay as they are, as in HDF5."""
    if itemsize <= 1 or len(buf) < 2 * itemsize:
        return buf
    whole = len(buf) - len(buf) % itemsize
    mv = memoryview(buf)
    body = Shuffle(elementsize=itemsize).decode(mv[:whole])  # whole items: cannot fail
    out = np.asarray(body, dtype=np.uint8).tobytes()
    return out + bytes(mv[whole:]) if whole < len(buf) else out


def shuffle(raw: Buffer, itemsize: int) -> bytes:
    """Apply HDF5's byte shuffle (as the HDF5 filter pipeline writes it); trailing bytes stay as they are."""
    whole = len(raw) - len(raw) % itemsize
    mv = memoryview(raw).cast("B")
    body = np.asarray(Shuffle(elementsize=itemsize).encode(mv[:whole]), dtype=np.uint8)
    return body.tobytes() + bytes(mv[whole:])
