"""Blosc-1 containers: header parsing, size checks and decoding (docs/hsds-format.md §3.3).

HSDS stores every compressed chunk as a numcodecs Blosc-1 container of the
chunk's byte string. The 16 header bytes are parsed here, and the sizes are
checked before c-blosc sees a container (c-blosc trusts the header).
:func:`decode_blocks` decodes a container block by block, all of it or only the
blocks a selection needs, on one thread or several: zlib blocks with libdeflate or
ISA-L, blosclz, LZ4 and Zstandard blocks with c-blosc's own decoders. Whatever it
does not handle goes to numcodecs whole.
"""

from __future__ import annotations

import os
import struct
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Final, NamedTuple

import numpy as np
from numcodecs import blosc as _blosc

from . import _cblosc
from . import inflate as _inflate

if TYPE_CHECKING:
    from collections.abc import Collection

    from ._common import Fail
    from .filters import FilterOps

__all__ = ["BLOSC_HEADER", "BloscHeader", "blocks_for", "decode_blocks", "decode_blosc", "parse_header", "size_problem"]

# Blosc-1 header: version, versionlz, flags, typesize, then little-endian uint32
# nbytes, blocksize, cbytes (16 bytes in all).
BLOSC_HEADER: Final = struct.Struct("<BBBBIII")
_BLOSC_MEMCPYED: Final = 0x02
_BLOSC_MAX_FORMAT: Final = 2  # docs/hsds-format.md §3.3: Blosc-1 containers have format version <= 2
_BLOSC_MAX_CODEC: Final = 4  # flags >> 5: blosclz, lz4(hc), snappy, zlib, zstd
_BLOSC_SHUFFLE_FLAG: Final = 0x01
_BLOSC_BITSHUFFLE_FLAG: Final = 0x04
_BLOSC_DONT_SPLIT: Final = 0x10
_BLOSC_MAX_SPLITS: Final = 16
_BLOSC_MIN_SPLIT: Final = 128
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
    buf: memoryview, header: BloscHeader, ops: FilterOps, nbytes: int | None, fail: Fail, threads: int = 1
) -> bytes | memoryview:
    """Blosc-decode a container whose header and length were checked."""
    if nbytes is not None and ops.shuffle != 2 and header.nbytes != nbytes:
        fail(
            f"holds a Blosc container of {header.nbytes} bytes, expected {nbytes}: the"
            " object is corrupt or belongs to another dataset"
        )
    if header.nbytes == 0:
        return b""  # c-blosc refuses to decompress an empty container
    if (header.flags >> 5) == _cblosc.ZLIB or threads > 1:  # c-blosc's own zlib is the slowest inflater here
        fast = decode_blocks(buf, header, threads=threads)
        if fast is not None:
            return fast
    try:
        plain: bytes = _blosc.decompress(buf)
    except (RuntimeError, ValueError) as exc:  # numcodecs raises RuntimeError for corrupt data
        fail(f"holds a corrupt Blosc container: {exc}", exc)
    return plain


def decode_blocks(
    buf: memoryview, header: BloscHeader, wanted: Collection[int] | None = None, threads: int = 1
) -> memoryview | None:
    """Decode a Blosc-1 container block by block, on ``threads`` threads; ``None`` = not this path.

    docs/hsds-format.md §3.3 "Blosc-1 blocks": after the 16-byte header come one int32
    start offset per block, then the blocks. Block *i* holds output bytes
    ``[i·blocksize, (i+1)·blocksize)`` (the last one may be shorter). A block is one or
    ``typesize`` splits, each an int32 compressed size and its stream (stored raw when
    the size equals the split's size), and with the byte-shuffle flag its splits hold the
    block's bytes transposed by item. Streams are decoded with libdeflate or ISA-L for zlib
    (both check the stream's adler32) and with c-blosc's own block decoders for blosclz,
    LZ4 and Zstandard (:mod:`._cblosc`). Anything this does not handle (bitshuffle, a stored
    container, snappy, an inflater not installed) or cannot verify (an offset or size out of
    bounds, a stream that does not decode to exactly its size) gives ``None``, and c-blosc
    decodes the whole container and reports what is wrong.

    ``wanted``: decode only these blocks; the other bytes of the result are left as
    allocated and mean nothing. Each block decoded is decoded whole, never cut short.
    ``threads`` > 1 splits the blocks among that many threads (the caller's included): a
    read of few chunks then uses every core on each.
    """
    code = header.flags >> 5
    if header.flags & (_BLOSC_MEMCPYED | _BLOSC_BITSHUFFLE_FLAG) or header.blocksize <= 0:
        return None
    decompress = None
    if code == _cblosc.ZLIB:
        if _inflate.libdeflate is None and _inflate.isal_zlib is None:
            return None  # looked up per chunk: turning an inflater off in inflate turns it off here too
    else:
        decompress = _cblosc.decompressor(code)
        if decompress is None:
            return None
    nbytes, bsize, typesize = header.nbytes, header.blocksize, header.typesize
    nblocks = -(-nbytes // bsize)
    first = BLOSC_HEADER.size + 4 * nblocks
    if nblocks == 0 or first > len(buf):
        return None
    blocks = sorted(wanted) if wanted is not None else list(range(nblocks))
    if blocks and not 0 <= blocks[0] <= blocks[-1] < nblocks:
        return None
    src = np.frombuffer(buf, dtype=np.uint8)
    out = np.empty(nbytes, dtype=np.uint8)  # not zeroed: every byte that counts is written below
    job = _BlockJob(
        buf=buf,
        src=src,
        out=out,
        starts=np.frombuffer(buf, dtype="<i4", count=nblocks, offset=BLOSC_HEADER.size).tolist(),
        first=first,
        nbytes=nbytes,
        bsize=bsize,
        typesize=typesize,
        shuffled=bool(header.flags & _BLOSC_SHUFFLE_FLAG) and typesize > 1,
        # c-blosc splits a full block into typesize streams unless the header says not to, and
        # only for typesize <= 16 and at least 128 items per block (as it has since before the flag)
        split=not header.flags & _BLOSC_DONT_SPLIT and typesize <= _BLOSC_MAX_SPLITS and bsize // typesize >= _BLOSC_MIN_SPLIT,
        decompress=decompress,
    )
    ok = _run_blocks(job, blocks, threads)
    return out.data if ok else None


class _BlockJob(NamedTuple):
    buf: memoryview
    src: np.ndarray[Any, Any]
    out: np.ndarray[Any, Any]
    starts: list[int]
    first: int
    nbytes: int
    bsize: int
    typesize: int
    shuffled: bool
    split: bool
    decompress: _cblosc.Decompress | None  # None: zlib, inflated by :mod:`.inflate`


def _run_blocks(job: _BlockJob, blocks: list[int], threads: int) -> bool:
    """Decode ``blocks`` of ``job``, spread over ``threads`` threads (this one included)."""
    groups = min(threads, len(blocks), len(blocks) * job.bsize // _MIN_BYTES_PER_THREAD)
    if groups <= 1:
        return _decode_some(job, blocks)
    per = -(-len(blocks) // groups)
    parts = [blocks[k : k + per] for k in range(0, len(blocks), per)]
    pool = _block_pool()
    futures = [pool.submit(_decode_some, job, part) for part in parts[1:]]
    ok = _decode_some(job, parts[0])
    return all([f.result() for f in futures]) and ok


def _decode_some(job: _BlockJob, blocks: list[int]) -> bool:
    # the largest block is min(blocksize, nbytes): a crafted header's blocksize allocates nothing
    scratch = np.empty(min(job.bsize, job.nbytes), dtype=np.uint8) if job.shuffled else None
    return all(_decode_block(job, i, scratch) for i in blocks)


def _decode_block(job: _BlockJob, i: int, scratch: np.ndarray[Any, Any] | None) -> bool:
    """Decode block ``i`` of ``job`` into its place in ``job.out``; ``False`` when it cannot be verified."""
    buf, bsize = job.buf, job.bsize
    lo = i * bsize
    size = min(bsize, job.nbytes - lo)
    nsplits = job.typesize if job.split and size == bsize else 1  # a short last block is never split
    if size % nsplits:
        return False
    neb = size // nsplits
    target = scratch[:size] if scratch is not None else job.out[lo : lo + size]
    pos = job.starts[i]
    if pos < job.first:
        return False
    for j in range(nsplits):
        if pos > len(buf) - 4:
            return False
        (csize,) = _I32.unpack_from(buf, pos)
        pos += 4
        if csize <= 0 or pos + csize > len(buf):
            return False
        dst = target[j * neb : (j + 1) * neb]
        if csize == neb:
            dst[:] = job.src[pos : pos + csize]
        elif job.decompress is None:  # zlib
            block = _inflate.inflate_exact(buf[pos : pos + csize], neb)
            if block is None:
                return False
            dst[:] = np.frombuffer(block, dtype=np.uint8)
        elif job.decompress(job.src.ctypes.data + pos, csize, dst.ctypes.data, neb) != neb:
            return False
        pos += csize
    if scratch is not None:  # undo the byte shuffle within the block; a tail of < typesize bytes is stored as is
        ts = job.typesize
        whole = size - size % ts
        n = whole // ts
        block_out = job.out[lo : lo + size]
        block_out[:whole].reshape(n, ts)[...] = scratch[:whole].reshape(ts, n).T
        block_out[whole:] = scratch[whole:size]
    return True


_MIN_BYTES_PER_THREAD: Final = 128 << 10  # less than this per thread and the hand-off costs more than it saves
_POOL: tuple[int, ThreadPoolExecutor] | None = None
_POOL_LOCK = threading.Lock()


def _block_pool() -> ThreadPoolExecutor:
    """The process's block-decoding threads (made again after a fork: threads do not survive one)."""
    global _POOL
    with _POOL_LOCK:
        if _POOL is None or _POOL[0] != os.getpid():
            _POOL = (os.getpid(), ThreadPoolExecutor(max_workers=os.cpu_count() or 1, thread_name_prefix="blosc-blocks"))
        return _POOL[1]


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
