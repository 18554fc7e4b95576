"""The write side: raw chunk bytes encoded as HSDS stores them, or as HDF5 files hold them.

Used by the writer and by tests that build linked-HDF5 data; a read never
calls this module.
"""

from __future__ import annotations

import zlib
from typing import TYPE_CHECKING

import numpy as np
from numcodecs import Blosc, Fletcher32

from ..errors import UnsupportedFilterError
from .bitshuffle import encode_bitshuffle
from .filters import SUPPORTED_FILTERS
from .shuffle import shuffle

if TYPE_CHECKING:
    from ._common import Buffer
    from .filters import FilterOps

__all__ = ["encode_chunk", "encode_linked_chunk"]


def _check_encodable(ops: FilterOps) -> None:
    if ops.unsupported is not None:
        raise UnsupportedFilterError(
            f"cannot encode chunks with the filter {ops.unsupported!r}; supported filters:"
            f" {', '.join(SUPPORTED_FILTERS)}"
        )


def encode_chunk(raw: Buffer, ops: FilterOps, *, itemsize: int) -> bytes:
    """Encode raw chunk bytes exactly as HSDS stores them.

    docs/hsds-format.md §3.3 "Write side": the bitshuffle framing first if
    ``ops.shuffle == 2``; then, if a compressor is set, a numcodecs Blosc
    container of the byte string (typesize 1; internal codec ``zlib`` for
    gzip, Blosc's shuffle flag set for byte shuffle). Without a compressor the
    bytes are stored as they are -- shuffle-only chunks stay unshuffled, as in
    HSDS. No fletcher32 trailer is written (HSDS ignores the filter).

    Parameters
    ----------
    raw : bytes, bytearray or memoryview
        The chunk's raw bytes.
    ops : FilterOps
        From :func:`~hsds_backends.codecs.filter_ops`.
    itemsize : int
        Bytes per element (for bitshuffle).

    Returns
    -------
    bytes
        The object to store.

    Raises
    ------
    UnsupportedFilterError
        ``ops.unsupported`` is set.
    """
    _check_encodable(ops)
    data: Buffer = raw
    if ops.shuffle == 2:
        data = encode_bitshuffle(raw, itemsize)
    if ops.compressor is None:
        return bytes(data)
    codec = Blosc(
        cname=ops.compressor,
        clevel=min(max(ops.level, 0), 9),
        shuffle=Blosc.SHUFFLE if ops.shuffle == 1 else Blosc.NOSHUFFLE,
    )
    return bytes(codec.encode(np.frombuffer(data, dtype=np.uint8)))


def encode_linked_chunk(raw: Buffer, ops: FilterOps, itemsize: int) -> bytes:
    """Encode raw chunk bytes as the HDF5 filter pipeline does (for linked HDF5 files).

    Byte shuffle (or the bitshuffle framing), then the compressor -- a zlib
    stream for gzip, as HDF5's deflate filter writes; a Blosc container for the
    Blosc codecs, as the HDF5 blosc filter writes -- then the 4-byte
    little-endian fletcher32 checksum if ``ops.fletcher32``. Used to build
    ``H5D_CHUNKED_REF`` test data (docs/hsds-format.md §3.5).

    Takes the arguments of :func:`encode_chunk` (``itemsize`` also drives the byte
    shuffle here) and returns the bytes an HDF5 file would hold for this chunk; raises
    :class:`UnsupportedFilterError` likewise.
    """
    _check_encodable(ops)
    data: Buffer = raw
    if ops.shuffle == 1 and itemsize > 1:
        data = shuffle(raw, itemsize)
    elif ops.shuffle == 2:
        data = encode_bitshuffle(raw, itemsize)
    if ops.compressor == "zlib":
        data = zlib.compress(data, min(max(ops.level, 0), 9))
    elif ops.compressor is not None:
        codec = Blosc(cname=ops.compressor, clevel=min(max(ops.level, 0), 9), shuffle=Blosc.NOSHUFFLE)
        data = bytes(codec.encode(np.frombuffer(data, dtype=np.uint8)))
    if ops.fletcher32:
        data = bytes(Fletcher32().encode(np.frombuffer(data, dtype=np.uint8)))
    return bytes(data)
