"""The HDF5 bitshuffle+LZ4 framing, decoded and written with numpy and lz4.

Layout (docs/hsds-format.md §3.3 step 2): a 12-byte header (big-endian uint64
total bytes, uint32 block size in bytes), then per block a big-endian uint32
compressed size and an LZ4 block of bit-transposed data. The ``bitshuffle``
package is deliberately not imported (it pulls in h5py): the bit transpose is
done with numpy, byte-identical to bitshuffle's.
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING, Any, Final

import lz4.block
import numpy as np
from numcodecs import blosc as _blosc

from ..errors import ChunkDecodeError

if TYPE_CHECKING:
    from ._common import Buffer, Fail

__all__ = ["bit_transpose", "bit_untranspose", "decode_bitshuffle", "default_block", "encode_bitshuffle"]

# Bitshuffle/LZ4 HDF5 framing: big-endian uint64 total bytes + uint32 block bytes.
_BSHUF_HEADER: Final = struct.Struct(">QI")
_BSHUF_BLOCK_SIZE: Final = struct.Struct(">I")
_BSHUF_BLOCKED_MULT: Final = 8  # blocks hold a multiple of 8 elements
_BSHUF_TARGET_BLOCK_BYTES: Final = 8192
_BSHUF_MIN_BLOCK: Final = 128
_BSHUF_BATCH_BYTES: Final = 1 << 20  # bit-transpose this much at a time to bound memory


def default_block(itemsize: int) -> int:
    """Bitshuffle's default block size in elements (8 KiB target, multiple of 8, >= 128)."""
    block = _BSHUF_TARGET_BLOCK_BYTES // itemsize
    block -= block % _BSHUF_BLOCKED_MULT
    return max(block, _BSHUF_MIN_BLOCK)


# Masks and shifts of the 8x8 bit-matrix transpose of a uint64 whose byte r is
# row r and bit c (LSB first) column c; the transpose is its own inverse.
_T8_STEPS: Final = tuple(
    (np.uint64(shift), np.uint64(mask))
    for shift, mask in ((7, 0x00AA00AA00AA00AA), (14, 0x0000CCCC0000CCCC), (28, 0x00000000F0F0F0F0))
)


def _transpose_8x8(words: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """Transpose the 8x8 bit matrix held in each little-endian uint64 of ``words`` (a new array)."""
    x = words
    for shift, mask in _T8_STEPS:
        t = (x ^ (x >> shift)) & mask
        x = x ^ t ^ (t << shift)
    return x


def bit_transpose(raw: np.ndarray[Any, Any], nblocks: int, block: int, itemsize: int) -> np.ndarray[Any, Any]:
    """Bitshuffle ``nblocks`` blocks of ``block`` elements (bitshuffle's ``trans_bit_elem``).

    Output of one block: for each byte position j of an element, for each bit
    k (LSB first), one row of ``block`` bits (bit i = element i, LSB first).
    Groups of 8 elements are transposed as 8x8 bit matrices in uint64s, which
    is much faster than ``np.unpackbits``/``np.packbits``.
    """
    groups = block // _BSHUF_BLOCKED_MULT
    # (n, group, element in group, byte) -> (n, group, byte, element in group)
    x = raw.reshape(nblocks, groups, 8, itemsize).transpose(0, 1, 3, 2).copy()
    x = _transpose_8x8(x.view("<u8")).view(np.uint8).reshape(nblocks, groups, itemsize, 8)
    # (n, group, byte, bit) -> (n, byte, bit, group)
    return np.ascontiguousarray(x.transpose(0, 2, 3, 1)).reshape(-1)


def bit_untranspose(tr: np.ndarray[Any, Any], nblocks: int, block: int, itemsize: int) -> np.ndarray[Any, Any]:
    """Inverse of :func:`bit_transpose`."""
    groups = block // _BSHUF_BLOCKED_MULT
    # (n, byte, bit, group) -> (n, group, byte, bit)
    x = tr.reshape(nblocks, itemsize, 8, groups).transpose(0, 3, 1, 2).copy()
    x = _transpose_8x8(x.view("<u8")).view(np.uint8).reshape(nblocks, groups, itemsize, 8)
    # (n, group, byte, element in group) -> (n, group, element in group, byte)
    return np.ascontiguousarray(x.transpose(0, 1, 3, 2)).reshape(-1)


def decode_bitshuffle(
    buf: memoryview, itemsize: int, nbytes: int | None, fail: Fail
) -> tuple[np.ndarray[Any, Any], int]:
    """Decode the bitshuffle+LZ4 HDF5 framing; return (raw bytes, bytes consumed).

    docs/hsds-format.md §3.3 step 2. As in the bitshuffle library, the last
    block holds the remaining elements rounded down to a multiple of 8, and the
    final ``n % 8`` elements follow uncompressed.
    """
    if len(buf) < _BSHUF_HEADER.size:
        fail(f"has {len(buf)} bytes, too short for the 12-byte bitshuffle header")
    total, block_bytes = _BSHUF_HEADER.unpack_from(buf)
    if nbytes is not None and total != nbytes:
        fail(f"has a bitshuffle header for {total} bytes, expected {nbytes}")
    if itemsize < 1 or total % itemsize:
        fail(f"has a bitshuffle header for {total} bytes, not a multiple of the item size {itemsize}")
    if block_bytes == 0 or block_bytes % (itemsize * _BSHUF_BLOCKED_MULT):
        fail(
            f"has a bitshuffle block size of {block_bytes} bytes, not a positive multiple of"
            f" 8 items of {itemsize} bytes"
        )
    if total > _blosc.MAX_BUFFERSIZE:
        fail(f"has a bitshuffle header for {total} bytes, more than any chunk can hold")
    count = total // itemsize
    block = block_bytes // itemsize
    tail = count % block
    tail -= tail % _BSHUF_BLOCKED_MULT
    out = np.empty(total, dtype=np.uint8)
    pos = _BSHUF_HEADER.size
    done = 0  # bytes of `out` filled
    index = 0  # block number, for messages
    for nb, nblocks in ((block, count // block), (tail, 1 if tail else 0)):
        want = nb * itemsize
        step = max(1, _BSHUF_BATCH_BYTES // want) if nblocks else 1
        for first in range(0, nblocks, step):
            # Batches keep the bit transpose vectorised yet bounded in memory.
            k = min(step, nblocks - first)
            scratch = np.empty(k * want, dtype=np.uint8)
            for b in range(k):
                if pos + _BSHUF_BLOCK_SIZE.size > len(buf):
                    fail(f"ends inside bitshuffle block {index} (truncated object)")
                (csize,) = _BSHUF_BLOCK_SIZE.unpack_from(buf, pos)
                pos += _BSHUF_BLOCK_SIZE.size
                if csize > len(buf) - pos:
                    fail(f"ends inside bitshuffle block {index} (truncated object)")
                try:
                    plain = lz4.block.decompress(buf[pos : pos + csize], uncompressed_size=want)
                except lz4.block.LZ4BlockError as exc:
                    fail(f"holds a corrupt LZ4 block in bitshuffle block {index}: {exc}", exc)
                if len(plain) != want:
                    fail(
                        f"holds bitshuffle block {index} of {len(plain)} bytes, expected {want}"
                        " (corrupt object)"
                    )
                scratch[b * want : (b + 1) * want] = np.frombuffer(plain, dtype=np.uint8)
                pos += csize
                index += 1
            out[done : done + k * want] = bit_untranspose(scratch, k, nb, itemsize)
            done += k * want
    rest = total - done  # the last count % 8 elements, stored raw
    if len(buf) - pos < rest:
        fail("ends inside the bitshuffle tail (truncated object)")
    out[done:] = np.frombuffer(buf[pos : pos + rest], dtype=np.uint8)
    return out, pos + rest


def encode_bitshuffle(raw: Buffer, itemsize: int) -> bytes:
    """Write the bitshuffle+LZ4 HDF5 framing (the inverse of :func:`decode_bitshuffle`)."""
    data = np.frombuffer(raw, dtype=np.uint8)
    total = data.size
    if itemsize < 1 or total % itemsize:
        raise ChunkDecodeError(
            f"cannot bitshuffle {total} bytes with item size {itemsize}: not a whole number of items"
        )
    count = total // itemsize
    block = default_block(itemsize)
    parts = [_BSHUF_HEADER.pack(total, block * itemsize)]
    tail = count % block
    tail -= tail % _BSHUF_BLOCKED_MULT
    nfull = count // block
    pos = 0
    for nb, nblocks in ((block, nfull), (tail, 1 if tail else 0)):
        if not nblocks:
            continue
        want = nb * itemsize
        step = max(1, _BSHUF_BATCH_BYTES // want)
        for first in range(0, nblocks, step):
            k = min(step, nblocks - first)
            tr = bit_transpose(data[pos : pos + k * want], k, nb, itemsize)
            for b in range(k):
                comp = lz4.block.compress(tr[b * want : (b + 1) * want], store_size=False)
                parts += [_BSHUF_BLOCK_SIZE.pack(len(comp)), comp]
            pos += k * want
    parts.append(data[pos:].tobytes())
    return b"".join(parts)
