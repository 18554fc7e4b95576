"""Blosc-1 containers: header parsing, size checks and decoding (docs/hsds-format.md §3.3).

HSDS stores every compressed chunk as a numcodecs Blosc-1 container of the
chunk's byte string. The 16 header bytes are parsed here, and the sizes are
checked before c-blosc sees a container (c-blosc trusts the header). Containers
of zlib blocks are inflated block by block with ISA-L when it is installed
(:func:`decode_zlib_blocks`); everything else goes to numcodecs.
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING, Any, Final, NamedTuple

import numpy as np
from numcodecs import blosc as _blosc

from . import inflate as _inflate

if TYPE_CHECKING:
    from collections.abc import Collection

    from ._common import Fail
    from .filters import FilterOps

__all__ = ["BLOSC_HEADER", "BloscHeader", "blocks_for", "decode_blosc", "decode_zlib_blocks", "parse_header", "size_problem"]

# Blosc-1 header: version, versionlz, flags, typesize, then little-endian uint32
# nbytes, blocksize, cbytes (16 bytes in all).
BLOSC_HEADER: Final = struct.Struct("<BBBBIII")
_BLOSC_MEMCPYED: Final = 0x02
_BLOSC_MAX_FORMAT: Final = 2  # docs/hsds-format.md §3.3: Blosc-1 containers have format version <= 2
_BLOSC_MAX_CODEC: Final = 4  # flags >> 5: blosclz, lz4(hc), snappy, zlib, zstd
_BLOSC_ZLIB: Final = 3  # compressor code in the top 3 flag bits
_BLOSC_BITSHUFFLE_FLAG: Final = 0x04
_I32: Final = struct.Struct("<i")


class BloscHeader(NamedTuple):
    """The fields of a Blosc-1 header that decoding needs."""

    version: int
    flags: int
    typesize: int
    nbytes: int
    blocksize: int
    cbytes: int


def parse_header(buf: memoryview) -> BloscHeader | None:
    """Return the Blosc-1 header of ``buf`` if it starts like one, else ``None``.

    docs/hsds-format.md §3.3: a Blosc-1 container has format version <= 2 and a
    non-zero typesize; raw zlib starts with 0x78 so never matches. We parse the
    16 header bytes ourselves because numcodecs 0.16 made ``cbuffer_metainfo``
    and ``cbuffer_sizes`` private. Whether the sizes are consistent is
    :func:`size_problem`'s question.
    """
    if len(buf) < BLOSC_HEADER.size:
        return None
    version, _vlz, flags, typesize, nbytes, blocksize, cbytes = BLOSC_HEADER.unpack_from(buf)
    if version > _BLOSC_MAX_FORMAT or typesize == 0 or (flags >> 5) > _BLOSC_MAX_CODEC:
        return None
    return BloscHeader(version, flags, typesize, nbytes, blocksize, cbytes)


def size_problem(header: BloscHeader, length: int) -> str | None:
    """Say what is wrong with a Blosc header's sizes for an object of ``length`` bytes, if anything.

    c-blosc trusts the header (it is never told the real buffer length), so a
    container is only handed to it when ``cbytes`` is the object length and
    the other sizes are consistent; otherwise it may read out of bounds.
    """
    if header.cbytes != length:
        return (
            f"is a Blosc container of {header.cbytes} bytes but the object has {length} bytes:"
            " the object is truncated or corrupt"
        )
    if header.nbytes > _blosc.MAX_BUFFERSIZE:
        return f"is a Blosc container claiming {header.nbytes} bytes: the object is corrupt"
    if header.flags & _BLOSC_MEMCPYED:
        if header.cbytes != header.nbytes + BLOSC_HEADER.size:
            return (
                f"is an uncompressed Blosc container of {header.cbytes} bytes holding"
                f" {header.nbytes} bytes: the object is corrupt"
            )
    elif header.nbytes > 0 and header.blocksize == 0:
        return "is a Blosc container with block size 0: the object is corrupt"
    return None


def decode_blosc(
    buf: memoryview, header: BloscHeader, ops: FilterOps, nbytes: int | None, fail: Fail
) -> bytes | memoryview:
    """Blosc-decode a container whose header and length were checked."""
    if nbytes is not None and ops.shuffle != 2 and header.nbytes != nbytes:
        fail(
            f"holds a Blosc container of {header.nbytes} bytes, expected {nbytes}: the"
            " object is corrupt or belongs to another dataset"
        )
    if header.nbytes == 0:
        return b""  # c-blosc refuses to decompress an empty container
    fast = decode_zlib_blocks(buf, header)
    if fast is not None:
        return fast
    try:
        plain: bytes = _blosc.decompress(buf)
    except (RuntimeError, ValueError) as exc:  # numcodecs raises RuntimeError for corrupt data
        fail(f"holds a corrupt Blosc container: {exc}", exc)
    return plain


def decode_zlib_blocks(buf: memoryview, header: BloscHeader, wanted: Collection[int] | None = None) -> memoryview | None:
    """Decode a Blosc container of zlib blocks with libdeflate or ISA-L, block by block; ``None`` = not this fast path.

    HSDS compresses the chunk's byte string with Blosc (typesize 1, so one
    zlib stream per block and no real shuffle, docs/hsds-format.md §3.3). c-blosc
    inflates those streams with its bundled zlib; ISA-L inflates the same
    streams about 1.5× faster, libdeflate (which needs each block's size, and the
    header gives it) about 2× faster again. Layout (Blosc-1): 16-byte header, one int32
    start offset per block, then per block an int32 compressed size and the
    stream (stored raw when the size equals the block size). Anything
    unusual (other codecs, typesize > 1, bitshuffle, inconsistent offsets)
    returns ``None`` and numcodecs decodes it, raising for corrupt data.

    ``wanted``: decode only these blocks (block *i* holds output bytes ``[i·blocksize,
    (i+1)·blocksize)``); the other bytes of the result are left as allocated and mean
    nothing. Each block decoded is decoded whole and checked (its adler32), never cut short.
    """
    if (_inflate.libdeflate is None and _inflate.isal_zlib is None) or header.typesize != 1 or (header.flags >> 5) != _BLOSC_ZLIB:
        return None  # looked up per chunk: turning an inflater off in inflate turns it off here too
    if header.flags & (_BLOSC_MEMCPYED | _BLOSC_BITSHUFFLE_FLAG) or header.blocksize <= 0:
        return None
    nbytes, bsize = header.nbytes, header.blocksize
    nblocks = -(-nbytes // bsize)
    first = BLOSC_HEADER.size + 4 * nblocks
    if nblocks == 0 or first > len(buf):
        return None
    starts = np.frombuffer(buf, dtype="<i4", count=nblocks, offset=BLOSC_HEADER.size).tolist()
    out = np.empty(nbytes, dtype=np.uint8).data  # not zeroed: every byte that counts is written below
    for i in sorted(wanted) if wanted is not None else range(nblocks):
        if not 0 <= i < nblocks:
            return None
        start = starts[i]
        size = min(bsize, nbytes - i * bsize)
        if not first <= start <= len(buf) - 4:
            return None
        (csize,) = _I32.unpack_from(buf, start)
        end = start + 4 + csize
        if csize <= 0 or end > len(buf):
            return None
        src = buf[start + 4 : end]
        if csize == size:
            out[i * bsize : i * bsize + size] = src
            continue
        block = _inflate.inflate_exact(src, size)
        if block is None:
            return None  # numcodecs decides and reports
        out[i * bsize : i * bsize + size] = block
    return out


def blocks_for(header: BloscHeader, intervals: np.ndarray[Any, Any]) -> list[int]:
    """The blocks holding any byte of ``intervals`` (an (n, 2) array of ``[lo, hi)`` output byte ranges)."""
    bsize = header.blocksize
    lo = intervals[:, 0] // bsize
    hi = (intervals[:, 1] - 1) // bsize
    if bool((hi - lo <= 1).all()):  # points and short runs: their first and last blocks are all
        return sorted(set(lo.tolist()) | set(hi.tolist()))
    out: set[int] = set()
    for a, b in zip(lo.tolist(), hi.tolist(), strict=True):
        out.update(range(a, b + 1))
    return sorted(out)
