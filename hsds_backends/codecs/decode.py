"""The read pipeline: stored chunk bytes back to the raw chunk bytes (docs/hsds-format.md §3.3).

:func:`decode_chunk` recognises the stored form (Blosc container, raw zlib
stream, plain bytes, bitshuffle framing, fletcher32 trailer) and undoes it with
the codec modules of this package, raising for anything it cannot verify.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from ..config import DEFAULT_CHUNK_BYTES_LIMIT
from ..errors import UnsupportedFilterError
from ._common import Buffer, Fail
from .bitshuffle import decode_bitshuffle
from .blosc import blocks_for, decode_blocks, decode_blosc, parse_header, size_problem
from .filters import SUPPORTED_FILTERS
from .fletcher32 import FLETCHER_BYTES, strip_fletcher32
from .inflate import inflate
from .shuffle import unshuffle

if TYPE_CHECKING:
    from .filters import FilterOps

__all__ = ["decode_chunk", "decode_chunk_part"]


def decode_chunk(
    data: Buffer,
    ops: FilterOps,
    *,
    itemsize: int,
    nbytes: int | None,
    chunk_id: str,
    key: str,
    linked: bool = False,
    threads: int = 1,
) -> Buffer:
    """Return the raw, unfiltered bytes of one stored chunk.

    Implements the DN decode order of docs/hsds-format.md §3.3, made strict (every
    failure raises, nothing is returned that was not verified where it can be)
    and liberal in what it recognises:

    0. ``ops.unsupported`` set: raise :class:`UnsupportedFilterError`.
    1. fletcher32: chunks of linked HDF5 files end in HDF5's 4-byte
       little-endian checksum, verified and stripped. HSDS-native chunks carry
       none (HSDS ignores the filter), but a trailer is recognised and verified
       when the layout leaves exactly 4 extra bytes: uncompressed length
       ``nbytes + 4``, Blosc ``cbytes + 4``, 4 bytes after a zlib stream, 4
       bytes after the bitshuffle framing.
    2. Compressor set: a Blosc-1 container (format version <= 2, sane header,
       ``cbytes`` equal to the object length) is Blosc-decoded, whatever its
       internal codec; else for zlib the data is inflated as a zlib stream
       (isal when installed, else zlib); else the chunk is corrupt. No
       compressor, fixed-size type, length not ``nbytes``: a Blosc container of
       ``nbytes`` bytes is decoded anyway.
    3. Byte shuffle (``ops.shuffle == 1``) is undone according to how the
       chunk was written:

       ===================  =============================  ==========================
       chunk form           HSDS-native (``linked=False``)  linked HDF5 (``linked=True``)
       ===================  =============================  ==========================
       Blosc container      keep: HSDS's Blosc shuffle     unshuffle: HDF5 ran the
                            ran with typesize 1 (no-op)    shuffle filter before blosc
       raw zlib stream      unshuffle: pre-2020 HSDS       unshuffle
                            shuffled, then zlib'd
       no compressor        keep: HSDS stores shuffle-     unshuffle
                            only chunks unshuffled
                            (docs/hsds-format.md §3.3
                            "Bug")
       ===================  =============================  ==========================

       Bitshuffle (``ops.shuffle == 2``) is always undone: its 12-byte header
       and LZ4 blocks are decoded here with numpy and lz4.
    4. For fixed-size types the result must be ``nbytes`` long.

    Parameters
    ----------
    data : bytes, bytearray or memoryview
        The stored object (or the byte range of a linked HDF5 chunk).
    ops : FilterOps
        From :func:`~hsds_backends.codecs.filter_ops`.
    itemsize : int
        Bytes per element of the dataset type (for shuffle and bitshuffle).
    nbytes : int or None
        Expected decoded length (full chunk shape times itemsize, docs/hsds-format.md §3.1), or
        ``None`` for variable-length types, which are not length-checked.
    chunk_id, key : str
        Chunk id and storage key, quoted in every error message.
    linked : bool, optional
        The bytes come from a linked HDF5 file (reference layouts, docs/hsds-format.md §3.5).
    threads : int, optional
        Decode a Blosc container's blocks on this many threads (the caller's included).

    Returns
    -------
    bytes, bytearray or memoryview
        The raw chunk bytes; ``data`` itself when there was nothing to undo.

    Raises
    ------
    UnsupportedFilterError
        ``ops.unsupported`` names a filter we cannot decode.
    ChunkDecodeError
        The bytes are truncated or corrupt, fail their checksum, or decode to
        the wrong length. Errors of zlib, Blosc and LZ4 are chained.
    """
    fail = Fail(chunk_id, key)
    if ops.unsupported is not None:
        raise UnsupportedFilterError(
            f"{fail.prefix} uses the filter {ops.unsupported!r}, which hsds-backends cannot"
            f" decode; supported filters: {', '.join(SUPPORTED_FILTERS)}. Rewrite the dataset"
            " with a supported filter (for example gzip)."
        )
    buf = memoryview(data).cast("B")
    out: Buffer = buf if isinstance(data, memoryview) else data  # len() must count bytes
    checked = False  # fletcher32 trailer handled
    undo_shuffle = linked  # see the table in the docstring
    # Fletcher32 first: the HDF5 pipeline applies it last, over the compressed
    # bytes. HSDS itself ignores the filter (docs/hsds-format.md §3.3 table).
    if ops.fletcher32 and linked:
        buf = strip_fletcher32(buf, "linked HDF5 chunk", fail)
        out = buf
        checked = True
    may_trail = ops.fletcher32 and not checked

    header = parse_header(buf)
    if ops.compressor is not None:
        # docs/hsds-format.md §3.3 decode step 1: Blosc container first, then raw zlib for gzip.
        if header is not None:
            if may_trail and header.cbytes + FLETCHER_BYTES == len(buf):
                buf = strip_fletcher32(buf, "after the Blosc container", fail)
            problem = size_problem(header, len(buf))
            if problem:
                fail(problem)
            if header.nbytes > _output_bound(nbytes):  # checked before decode_blosc allocates it
                fail(f"holds a Blosc container of {header.nbytes} bytes, more than the {_output_bound(nbytes)} it may hold")
            out = decode_blosc(buf, header, ops, nbytes, fail, threads)
        elif ops.compressor == "zlib":
            inflated, rest = inflate(buf, fail, _output_bound(nbytes))
            if rest:
                if not (may_trail and len(rest) == FLETCHER_BYTES):
                    fail(f"has {len(rest)} stray bytes after its zlib stream (corrupt object)")
                strip_fletcher32(buf, "after the zlib stream", fail)
            out = inflated
            undo_shuffle = True  # legacy HSDS gzip chunks were shuffled, then zlib'd
        else:
            fail(
                f"is not a Blosc container, as {ops.compressor!r} chunks must be"
                f" (first bytes {bytes(buf[:4]).hex(' ')}); the object is corrupt"
            )
    elif nbytes is not None and ops.shuffle != 2 and len(buf) != nbytes:
        # No compressor: the plain bytes, maybe with a trailer, or (be liberal)
        # a Blosc container holding exactly nbytes.
        if may_trail and len(buf) == nbytes + FLETCHER_BYTES:
            buf = strip_fletcher32(buf, "after the uncompressed chunk", fail)
            out = buf
        elif header is not None and header.nbytes == nbytes:
            if may_trail and header.cbytes + FLETCHER_BYTES == len(buf):
                buf = strip_fletcher32(buf, "after the Blosc container", fail)
            if size_problem(header, len(buf)) is None:
                out = decode_blosc(buf, header, ops, nbytes, fail, threads)

    # docs/hsds-format.md §3.3 decode step 2: shuffle, per the table in the docstring.
    if ops.shuffle == 1 and undo_shuffle:
        out = unshuffle(out, itemsize)
    elif ops.shuffle == 2 and not linked and nbytes is not None and len(out) == nbytes and (
        len(out) < 12 or int.from_bytes(memoryview(out).cast("B")[:8], "big") != nbytes
    ):
        pass  # hsds 1.0.2 accepts but ignores bitshuffle (its shuffle lookup misses it): chunks are stored plain
    elif ops.shuffle == 2:
        framed = memoryview(out).cast("B")
        plain, used = decode_bitshuffle(framed, itemsize, nbytes, fail)
        extra = len(framed) - used
        if extra:
            if not (ops.compressor is None and may_trail and extra == FLETCHER_BYTES):
                fail(f"has {extra} stray bytes after its bitshuffle blocks (corrupt object)")
            strip_fletcher32(framed, "after the bitshuffle blocks", fail)
        out = plain.data

    # The decoded length must be the full chunk (docs/hsds-format.md §3.1).
    if nbytes is not None and len(out) != nbytes:
        fail(
            f"decoded to {len(out)} bytes, expected {nbytes} (full chunk shape x item size"
            f" {itemsize}): the object is truncated or corrupt"
        )
    return out


def _output_bound(nbytes: int | None) -> int:
    """The most bytes a chunk's stored form may decode to before unshuffling.

    ``nbytes`` (the chunk's size) plus room for bitshuffle framing (a 12-byte header,
    4 bytes per block, LZ4's worst case of 1/255 growth); for variable-length types,
    whose size is not known, the default ``chunk_bytes_limit``.
    """
    bound = nbytes if nbytes is not None else DEFAULT_CHUNK_BYTES_LIMIT
    return bound + bound // 64 + 4096


def decode_chunk_part(
    data: Buffer,
    ops: FilterOps,
    *,
    nbytes: int,
    intervals: np.ndarray[Any, Any],
    linked: bool = False,
    threads: int = 1,
) -> Buffer | None:
    """Decode only the Blosc blocks that hold ``intervals`` of a chunk's raw bytes, or ``None``.

    ``intervals`` is an (n, 2) int64 array of ``[lo, hi)`` byte ranges of the raw chunk
    (``nbytes`` long). A Blosc-1 container is independent blocks, each a contiguous range of
    the chunk's bytes, byte-shuffled (if at all) within the block (docs/hsds-format.md §3.3):
    this decodes the blocks that hold any byte of ``intervals`` and no other, on ``threads``
    threads; the result is ``nbytes`` long and only those bytes mean something. Each decoded
    block is decoded whole and checked as far as its codec allows (zlib's adler32).

    Any internal codec with a block decoder (zlib, blosclz, LZ4, Zstandard), with or without
    byte shuffle, any typesize. ``None`` whenever this does not apply or does not pay, and the
    caller decodes the whole chunk with :func:`decode_chunk` (which reports any problem): not
    a Blosc container, a filter to undo over the whole chunk (bitshuffle, fletcher32, linked
    HDF5's shuffle, which runs before Blosc), the sizes not as expected, every block needed,
    or a block that does not decode.
    """
    if ops.unsupported is not None or ops.compressor is None or ops.shuffle == 2 or ops.fletcher32 or linked:
        return None
    buf = memoryview(data).cast("B")
    header = parse_header(buf)
    if header is None or header.nbytes != nbytes or header.blocksize <= 0 or size_problem(header, len(buf)):
        return None
    wanted = blocks_for(header, intervals)
    if len(wanted) >= -(-nbytes // header.blocksize):
        return None  # every block: the whole decode is the same work
    return decode_blocks(buf, header, wanted, threads)
