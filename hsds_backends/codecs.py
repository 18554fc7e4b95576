"""Decode (and encode) HSDS chunk bytes: Blosc containers, raw zlib, shuffle, bitshuffle.

HSDS reduces a dataset's filter list to one compressor plus one shuffle flag
(hsds-format.md §3.3, ``getFilterOps``) and stores each chunk as

* a **Blosc-1 container** (numcodecs) when a compressor is set -- for gzip the
  container's internal codec is zlib;
* a **raw zlib stream** for gzip chunks written before 2020-08 (legacy HSDS) and
  for chunks of linked HDF5 files (HDF5's deflate filter);
* the **plain bytes** otherwise (hsds-format.md §3.1, §3.2).

Bitshuffle chunks carry the HDF5 bitshuffle+LZ4 framing, optionally wrapped in
a Blosc container. This module turns any of those back into the raw chunk bytes
(:func:`decode_chunk`), and writes them the way HSDS does (:func:`encode_chunk`)
or the way the HDF5 filter pipeline does (:func:`encode_linked_chunk`).

Only numpy, numcodecs and lz4 are needed at run time; ``isal`` speeds up
inflate when installed. The ``bitshuffle`` package is deliberately not
imported (it pulls in h5py): the bit transpose is done with numpy.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, NamedTuple, NoReturn, TypeAlias

import lz4.block
import numpy as np
from numcodecs import Blosc, Fletcher32, Shuffle
from numcodecs import blosc as _blosc

from .errors import ChunkDecodeError, UnsupportedFilterError

if TYPE_CHECKING:
    from collections.abc import Iterable
    from types import ModuleType

_isal_zlib: ModuleType | None
try:  # isal inflates ~2x faster than zlib (4 MB float32 chunk: 9 vs 16 ms), same bytes
    from isal import isal_zlib as _isal_zlib
except ImportError:  # pragma: no cover - isal is optional
    _isal_zlib = None

__all__ = [
    "KNOWN_FILTERS",
    "SUPPORTED_FILTERS",
    "FilterOps",
    "decode_chunk",
    "encode_chunk",
    "encode_linked_chunk",
    "filter_ops",
]

Buffer: TypeAlias = bytes | bytearray | memoryview

#: HDF5 filter id -> HSDS filter name (hsds-format.md §2.4, ``FILTER_DEFS``).
KNOWN_FILTERS: Final[dict[int, str]] = {
    0: "none",
    1: "gzip",
    2: "shuffle",
    3: "fletcher32",
    4: "szip",
    5: "nbit",
    6: "scaleoffset",
    32000: "lzf",
    32001: "blosclz",
    32003: "snappy",
    32004: "lz4",
    32005: "lz4hc",
    32008: "bitshuffle",
    32015: "zstd",
}

#: The filter names this module decodes; quoted in :class:`UnsupportedFilterError` messages.
SUPPORTED_FILTERS: Final[tuple[str, ...]] = (
    "gzip/deflate",
    "blosclz",
    "lz4",
    "lz4hc",
    "zstd",
    "shuffle",
    "bitshuffle",
    "fletcher32",
    "nbit (no-op, HSDS-native only)",
    "scaleoffset (no-op, HSDS-native only)",
)

# HDF5 filter class string (H5Z_FILTER_<X>) -> HSDS name, hsds-format.md §2.4.
_CLASS_NAMES: Final[dict[str, str]] = {
    "H5Z_FILTER_NONE": "none",
    "H5Z_FILTER_DEFLATE": "gzip",
    "H5Z_FILTER_SHUFFLE": "shuffle",
    "H5Z_FILTER_FLETCHER32": "fletcher32",
    "H5Z_FILTER_SZIP": "szip",
    "H5Z_FILTER_NBIT": "nbit",
    "H5Z_FILTER_SCALEOFFSET": "scaleoffset",
    "H5Z_FILTER_LZF": "lzf",
    "H5Z_FILTER_BLOSC": "blosclz",
    "H5Z_FILTER_SNAPPY": "snappy",
    "H5Z_FILTER_LZ4": "lz4",
    "H5Z_FILTER_LZ4HC": "lz4hc",
    "H5Z_FILTER_BITSHUFFLE": "bitshuffle",
    "H5Z_FILTER_ZSTD": "zstd",
}
# Extra spellings accepted for names: `deflate` is HSDS's alias of gzip, and
# getSupportedFilters reports numcodecs' `zlib` as gzip (hsds-format.md §2.4).
_NAME_ALIASES: Final[dict[str, str]] = {"deflate": "gzip", "zlib": "gzip", "blosc": "blosclz"}
# Names HSDS counts as compression classes, in hsds-format.md §3.3's list; the first one in the
# filter list wins.
_COMPRESSION_NAMES: Final[frozenset[str]] = frozenset(
    {"gzip", "szip", "scaleoffset", "lzf", "blosclz", "snappy", "lz4", "lz4hc", "zstd"}
)
# Filters whose output nobody here can decode (HSDS rejects them at creation, hsds-format.md §2.4).
_UNDECODABLE: Final[frozenset[str]] = frozenset({"szip", "lzf", "snappy"})
# Filters HSDS accepts but never applies (hsds-format.md §3.3 table). In a linked HDF5 file the
# HDF5 library did apply them, so there they are undecodable.
_NOOP_NATIVE: Final[frozenset[str]] = frozenset({"nbit", "scaleoffset"})
_BLOSC_CNAMES: Final[frozenset[str]] = frozenset({"blosclz", "lz4", "lz4hc", "zstd"})

_DEFAULT_LEVEL: Final = 5

# Blosc-1 header: version, versionlz, flags, typesize, then little-endian uint32
# nbytes, blocksize, cbytes (16 bytes in all).
_BLOSC_HEADER: Final = struct.Struct("<BBBBIII")
_BLOSC_MEMCPYED: Final = 0x02
_BLOSC_MAX_FORMAT: Final = 2  # hsds-format.md §3.3: Blosc-1 containers have format version <= 2
_BLOSC_MAX_CODEC: Final = 4  # flags >> 5: blosclz, lz4(hc), snappy, zlib, zstd

# Bitshuffle/LZ4 HDF5 framing: big-endian uint64 total bytes + uint32 block bytes.
_BSHUF_HEADER: Final = struct.Struct(">QI")
_BSHUF_BLOCK_SIZE: Final = struct.Struct(">I")
_BSHUF_BLOCKED_MULT: Final = 8  # blocks hold a multiple of 8 elements
_BSHUF_TARGET_BLOCK_BYTES: Final = 8192
_BSHUF_MIN_BLOCK: Final = 128
_BSHUF_BATCH_BYTES: Final = 1 << 20  # bit-transpose this much at a time to bound memory

_FLETCHER_BYTES: Final = 4


@dataclass(frozen=True, slots=True)
class FilterOps:
    """What :func:`decode_chunk` must undo, reduced from a dataset's filter list.

    Build it with :func:`filter_ops`; hsds-format.md §3.3 (``getFilterOps``).

    Attributes
    ----------
    compressor : str or None
        ``'zlib'`` (for gzip/deflate), ``'blosclz'``, ``'lz4'``, ``'lz4hc'``,
        ``'zstd'``, or ``None``.
    level : int
        Compression level of the compressor filter (HSDS default 5).
    shuffle : int
        0 none, 1 byte shuffle, 2 bitshuffle; always 0 for variable-length types.
    fletcher32 : bool
        Whether the list holds the fletcher32 filter.
    unsupported : str or None
        Name of a filter whose output cannot be decoded (szip, lzf, snappy, an
        unknown user filter, nbit/scaleoffset in a linked HDF5 file), else ``None``.
        :func:`decode_chunk` raises :class:`UnsupportedFilterError` when it is set.
    """

    compressor: str | None = None
    level: int = _DEFAULT_LEVEL
    shuffle: int = 0
    fletcher32: bool = False
    unsupported: str | None = None


def _filter_name(item: object) -> str:
    """Return the HSDS name of one filter list item, or a description of an unknown one.

    Accepts the forms HSDS's ``getFilterItem`` normalises (hsds-format.md §2.4):
    an int id, a name, an ``H5Z_FILTER_*`` class string, or a dict with
    ``class``/``id``/``name``. Unknown filters come back as a name that is not
    in :data:`KNOWN_FILTERS`, so they end up unsupported.
    """
    if isinstance(item, bool):
        return repr(item)
    if isinstance(item, int):
        return KNOWN_FILTERS.get(item, f"filter id {item}")
    if isinstance(item, str):
        if item.upper().startswith("H5Z_FILTER_"):
            return _CLASS_NAMES.get(item.upper(), item)
        name = item.lower()
        return _NAME_ALIASES.get(name, name)
    if isinstance(item, dict):
        cls = item.get("class")
        if isinstance(cls, str) and cls.upper() != "H5Z_FILTER_USER":
            return _filter_name(cls)
        # H5Z_FILTER_USER (or no class): the name identifies it, else the id.
        given = item.get("name")
        if isinstance(given, str) and _filter_name(given) in KNOWN_FILTERS.values():
            return _filter_name(given)
        fid = item.get("id")
        if isinstance(fid, int) and not isinstance(fid, bool) and fid in KNOWN_FILTERS:
            return KNOWN_FILTERS[fid]
        if isinstance(given, str):
            return given
        return f"filter id {fid}" if fid is not None else repr(item)
    return repr(item)


def _filter_level(item: object) -> int:
    """Return the ``level`` of a filter dict, or the HSDS default 5."""
    level = item.get("level") if isinstance(item, dict) else None
    try:
        return int(level) if level is not None else _DEFAULT_LEVEL
    except (TypeError, ValueError):
        return _DEFAULT_LEVEL


def filter_ops(
    filters: Iterable[Any] | None, *, is_vlen: bool = False, linked: bool = False
) -> FilterOps:
    """Reduce an HSDS filter list to the operations a chunk read must undo.

    Follows HSDS's ``getFilterOps`` (hsds-format.md §3.3): the first
    compression-class filter in list order is the compressor (deflate becomes
    ``'zlib'``; scaleoffset counts as a compressor but does nothing), the
    shuffle and bitshuffle filters set ``shuffle`` to 1 or 2, and otherwise list
    order does not matter. Nothing is raised here: filters that cannot be
    decoded are recorded in ``unsupported`` and reported by :func:`decode_chunk`.

    Parameters
    ----------
    filters : iterable or None
        The dataset's ``creationProperties.filters``. Items may be dicts
        ``{"class", "id", "name", "level"}``, int filter ids, names
        (``"gzip"``, ``"deflate"``, ``"lz4"`` ...) or class strings
        (``"H5Z_FILTER_SHUFFLE"`` ...), as in hsds-format.md §2.4.
    is_vlen : bool, optional
        The type is variable-length: HSDS skips shuffling those (hsds-format.md §3.2).
    linked : bool, optional
        The chunks come from a linked HDF5 file (reference layouts, hsds-format.md §3.5).
        There nbit and scaleoffset really transformed the data, and since the
        filter list carries none of their parameters they are unsupported.

    Returns
    -------
    FilterOps
        The reduced operations.

    Examples
    --------
    >>> filter_ops([{"class": "H5Z_FILTER_DEFLATE", "id": 1, "name": "gzip", "level": 6}, 2])
    FilterOps(compressor='zlib', level=6, shuffle=1, fletcher32=False, unsupported=None)
    """
    compressor: str | None = None
    compressor_seen = False
    level = _DEFAULT_LEVEL
    shuffles: set[int] = set()
    fletcher = False
    unsupported: str | None = None
    for item in filters or ():
        name = _filter_name(item)
        if name == "none":
            continue
        if name == "shuffle":
            shuffles.add(1)
        elif name == "bitshuffle":
            shuffles.add(2)
        elif name == "fletcher32":
            fletcher = True
        elif name in _UNDECODABLE or name not in KNOWN_FILTERS.values():
            unsupported = unsupported or name
        elif name in _NOOP_NATIVE and linked:
            unsupported = unsupported or f"{name} (in a linked HDF5 file)"
        if name in _COMPRESSION_NAMES and not compressor_seen:
            compressor_seen = True
            level = _filter_level(item)
            if name == "gzip":
                compressor = "zlib"
            elif name in _BLOSC_CNAMES:
                compressor = name
            # scaleoffset (and the undecodable ones) leave compressor None: HSDS
            # skips decompression for scaleoffset (hsds-format.md §3.3 step 1).
    if len(shuffles) > 1:
        # Nothing says in which order the two ran; refuse rather than guess.
        unsupported = unsupported or "shuffle together with bitshuffle"
    shuffle = 0 if is_vlen or not shuffles else max(shuffles)
    if unsupported is not None:
        compressor = None
    return FilterOps(
        compressor=compressor,
        level=level,
        shuffle=shuffle,
        fletcher32=fletcher,
        unsupported=unsupported,
    )


# --------------------------------------------------------------------------- helpers


class _BloscHeader(NamedTuple):
    version: int
    flags: int
    typesize: int
    nbytes: int
    blocksize: int
    cbytes: int


def _blosc_header(buf: memoryview) -> _BloscHeader | None:
    """Return the Blosc-1 header of ``buf`` if it starts like one, else ``None``.

    hsds-format.md §3.3: a Blosc-1 container has format version <= 2 and a
    non-zero typesize; raw zlib starts with 0x78 so never matches. We parse the
    16 header bytes ourselves because numcodecs 0.16 made ``cbuffer_metainfo``
    and ``cbuffer_sizes`` private. Whether the sizes are consistent is
    :func:`_blosc_size_problem`'s question.
    """
    if len(buf) < _BLOSC_HEADER.size:
        return None
    version, _vlz, flags, typesize, nbytes, blocksize, cbytes = _BLOSC_HEADER.unpack_from(buf)
    if version > _BLOSC_MAX_FORMAT or typesize == 0 or (flags >> 5) > _BLOSC_MAX_CODEC:
        return None
    return _BloscHeader(version, flags, typesize, nbytes, blocksize, cbytes)


def _blosc_size_problem(header: _BloscHeader, length: int) -> str | None:
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
        if header.cbytes != header.nbytes + _BLOSC_HEADER.size:
            return (
                f"is an uncompressed Blosc container of {header.cbytes} bytes holding"
                f" {header.nbytes} bytes: the object is corrupt"
            )
    elif header.nbytes > 0 and header.blocksize == 0:
        return "is a Blosc container with block size 0: the object is corrupt"
    return None


def _fletcher32_strip(buf: memoryview, where: str, fail: _Fail) -> memoryview:
    """Verify the HDF5 fletcher32 trailer (4 bytes, little-endian) and return the bytes before it."""
    if len(buf) < _FLETCHER_BYTES:
        fail(f"has {len(buf)} bytes, too short for its fletcher32 checksum")
    if len(buf) == _FLETCHER_BYTES:
        # numcodecs indexes past an empty payload; HDF5's checksum of no bytes is 0.
        if any(buf):
            fail(f"fails its fletcher32 checksum ({where}): expected 0 for an empty payload")
    else:
        try:
            Fletcher32().decode(buf)  # checks; we slice ourselves to keep a plain memoryview
        except RuntimeError as exc:
            fail(f"fails its fletcher32 checksum ({where}): {exc}", exc)
    return buf[: len(buf) - _FLETCHER_BYTES]


def _zlib_module() -> ModuleType:
    return _isal_zlib if _isal_zlib is not None else zlib


def _inflate(buf: memoryview, fail: _Fail) -> tuple[bytes, bytes]:
    """Inflate a zlib-wrapped deflate stream; return (data, bytes after the stream).

    A decompress object is used (not ``zlib.decompress``) so both zlib and isal
    report trailing bytes the same way instead of ignoring (zlib) or rejecting
    (isal) them.
    """
    zmod = _zlib_module()
    try:
        dec = zmod.decompressobj()
        out = dec.decompress(buf)
    except zmod.error as exc:  # zlib.error or isal's IsalError
        fail(f"is neither a Blosc container nor a valid zlib stream: {exc}", exc)
    if not dec.eof:
        fail(f"holds a zlib stream that ends early after {len(buf)} bytes (truncated object)")
    return out, bytes(dec.unused_data)


def _unshuffle(buf: Buffer, itemsize: int) -> Buffer:
    """Undo HDF5's byte shuffle; trailing bytes (len % itemsize) stay as they are, as in HDF5."""
    if itemsize <= 1 or len(buf) < 2 * itemsize:
        return buf
    whole = len(buf) - len(buf) % itemsize
    mv = memoryview(buf)
    body = Shuffle(elementsize=itemsize).decode(mv[:whole])  # whole items: cannot fail
    out = np.asarray(body, dtype=np.uint8).tobytes()
    return out + bytes(mv[whole:]) if whole < len(buf) else out


def _bshuf_default_block(itemsize: int) -> int:
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


def _transpose_8x8(words: np.ndarray) -> np.ndarray:
    """Transpose the 8x8 bit matrix held in each little-endian uint64 of ``words`` (a new array)."""
    x = words
    for shift, mask in _T8_STEPS:
        t = (x ^ (x >> shift)) & mask
        x = x ^ t ^ (t << shift)
    return x


def _bit_transpose(raw: np.ndarray, nblocks: int, block: int, itemsize: int) -> np.ndarray:
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


def _bit_untranspose(tr: np.ndarray, nblocks: int, block: int, itemsize: int) -> np.ndarray:
    """Inverse of :func:`_bit_transpose`."""
    groups = block // _BSHUF_BLOCKED_MULT
    # (n, byte, bit, group) -> (n, group, byte, bit)
    x = tr.reshape(nblocks, itemsize, 8, groups).transpose(0, 3, 1, 2).copy()
    x = _transpose_8x8(x.view("<u8")).view(np.uint8).reshape(nblocks, groups, itemsize, 8)
    # (n, group, byte, element in group) -> (n, group, element in group, byte)
    return np.ascontiguousarray(x.transpose(0, 1, 3, 2)).reshape(-1)


def _bitshuffle_decode(
    buf: memoryview, itemsize: int, nbytes: int | None, fail: _Fail
) -> tuple[np.ndarray, int]:
    """Decode the bitshuffle+LZ4 HDF5 framing; return (raw bytes, bytes consumed).

    hsds-format.md §3.3 step 2: 12-byte header (big-endian uint64 total bytes,
    uint32 block size in bytes), then per block a big-endian uint32 compressed
    size and an LZ4 block of bit-transposed data. As in the bitshuffle library,
    the last block holds the remaining elements rounded down to a multiple of
    8, and the final ``n % 8`` elements follow uncompressed.
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
            out[done : done + k * want] = _bit_untranspose(scratch, k, nb, itemsize)
            done += k * want
    rest = total - done  # the last count % 8 elements, stored raw
    if len(buf) - pos < rest:
        fail("ends inside the bitshuffle tail (truncated object)")
    out[done:] = np.frombuffer(buf[pos : pos + rest], dtype=np.uint8)
    return out, pos + rest


def _bitshuffle_encode(raw: Buffer, itemsize: int) -> bytes:
    """Write the bitshuffle+LZ4 HDF5 framing (the inverse of :func:`_bitshuffle_decode`)."""
    data = np.frombuffer(raw, dtype=np.uint8)
    total = data.size
    if itemsize < 1 or total % itemsize:
        raise ChunkDecodeError(
            f"cannot bitshuffle {total} bytes with item size {itemsize}: not a whole number of items"
        )
    count = total // itemsize
    block = _bshuf_default_block(itemsize)
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
            tr = _bit_transpose(data[pos : pos + k * want], k, nb, itemsize)
            for b in range(k):
                comp = lz4.block.compress(tr[b * want : (b + 1) * want], store_size=False)
                parts += [_BSHUF_BLOCK_SIZE.pack(len(comp)), comp]
            pos += k * want
    parts.append(data[pos:].tobytes())
    return b"".join(parts)


class _Fail:
    """Raise :class:`ChunkDecodeError` messages that name the chunk and its key."""

    __slots__ = ("prefix",)

    def __init__(self, chunk_id: str, key: str) -> None:
        self.prefix = f"chunk {chunk_id} (key {key})"

    def __call__(self, what: str, exc: BaseException | None = None) -> NoReturn:
        raise ChunkDecodeError(f"{self.prefix} {what}") from exc


# --------------------------------------------------------------------------- decode


def decode_chunk(
    data: Buffer,
    ops: FilterOps,
    *,
    itemsize: int,
    nbytes: int | None,
    chunk_id: str,
    key: str,
    linked: bool = False,
) -> Buffer:
    """Return the raw, unfiltered bytes of one stored chunk.

    Implements the DN decode order of hsds-format.md §3.3, made strict (every
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
                            (hsds-format.md §3.3 "Bug")
       ===================  =============================  ==========================

       Bitshuffle (``ops.shuffle == 2``) is always undone: its 12-byte header
       and LZ4 blocks are decoded here with numpy and lz4.
    4. For fixed-size types the result must be ``nbytes`` long.

    Parameters
    ----------
    data : bytes, bytearray or memoryview
        The stored object (or the byte range of a linked HDF5 chunk).
    ops : FilterOps
        From :func:`filter_ops`.
    itemsize : int
        Bytes per element of the dataset type (for shuffle and bitshuffle).
    nbytes : int or None
        Expected decoded length (full chunk shape times itemsize, hsds-format.md §3.1), or
        ``None`` for variable-length types, which are not length-checked.
    chunk_id, key : str
        Chunk id and storage key, quoted in every error message.
    linked : bool, optional
        The bytes come from a linked HDF5 file (reference layouts, hsds-format.md §3.5).

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
    fail = _Fail(chunk_id, key)
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
    # bytes. HSDS itself ignores the filter (hsds-format.md §3.3 table).
    if ops.fletcher32 and linked:
        buf = _fletcher32_strip(buf, "linked HDF5 chunk", fail)
        out = buf
        checked = True
    may_trail = ops.fletcher32 and not checked

    header = _blosc_header(buf)
    if ops.compressor is not None:
        # hsds-format.md §3.3 decode step 1: Blosc container first, then raw zlib for gzip.
        if header is not None:
            if may_trail and header.cbytes + _FLETCHER_BYTES == len(buf):
                buf = _fletcher32_strip(buf, "after the Blosc container", fail)
            problem = _blosc_size_problem(header, len(buf))
            if problem:
                fail(problem)
            out = _blosc_decode(buf, header, ops, nbytes, fail)
        elif ops.compressor == "zlib":
            inflated, rest = _inflate(buf, fail)
            if rest:
                if not (may_trail and len(rest) == _FLETCHER_BYTES):
                    fail(f"has {len(rest)} stray bytes after its zlib stream (corrupt object)")
                _fletcher32_strip(buf, "after the zlib stream", fail)
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
        if may_trail and len(buf) == nbytes + _FLETCHER_BYTES:
            buf = _fletcher32_strip(buf, "after the uncompressed chunk", fail)
            out = buf
        elif header is not None and header.nbytes == nbytes:
            if may_trail and header.cbytes + _FLETCHER_BYTES == len(buf):
                buf = _fletcher32_strip(buf, "after the Blosc container", fail)
            if _blosc_size_problem(header, len(buf)) is None:
                out = _blosc_decode(buf, header, ops, nbytes, fail)

    # hsds-format.md §3.3 decode step 2: shuffle, per the table in the docstring.
    if ops.shuffle == 1 and undo_shuffle:
        out = _unshuffle(out, itemsize)
    elif ops.shuffle == 2 and not linked and nbytes is not None and len(out) == nbytes and (
        len(out) < 12 or int.from_bytes(memoryview(out).cast("B")[:8], "big") != nbytes
    ):
        pass  # hsds 1.0.2 accepts but ignores bitshuffle (its shuffle lookup misses it): chunks are stored plain
    elif ops.shuffle == 2:
        framed = memoryview(out).cast("B")
        plain, used = _bitshuffle_decode(framed, itemsize, nbytes, fail)
        extra = len(framed) - used
        if extra:
            if not (ops.compressor is None and may_trail and extra == _FLETCHER_BYTES):
                fail(f"has {extra} stray bytes after its bitshuffle blocks (corrupt object)")
            _fletcher32_strip(framed, "after the bitshuffle blocks", fail)
        out = plain.data

    # The decoded length must be the full chunk (hsds-format.md §3.1).
    if nbytes is not None and len(out) != nbytes:
        fail(
            f"decoded to {len(out)} bytes, expected {nbytes} (full chunk shape x item size"
            f" {itemsize}): the object is truncated or corrupt"
        )
    return out


def _blosc_decode(
    buf: memoryview, header: _BloscHeader, ops: FilterOps, nbytes: int | None, fail: _Fail
) -> bytes | bytearray:
    """Blosc-decode a container whose header and length were checked."""
    if nbytes is not None and ops.shuffle != 2 and header.nbytes != nbytes:
        fail(
            f"holds a Blosc container of {header.nbytes} bytes, expected {nbytes}: the"
            " object is corrupt or belongs to another dataset"
        )
    if header.nbytes == 0:
        return b""  # c-blosc refuses to decompress an empty container
    fast = _blosc_zlib_isal(buf, header)
    if fast is not None:
        return fast
    try:
        plain: bytes = _blosc.decompress(buf)
    except (RuntimeError, ValueError) as exc:  # numcodecs raises RuntimeError for corrupt data
        fail(f"holds a corrupt Blosc container: {exc}", exc)
    return plain


_BLOSC_ZLIB: Final = 3  # compressor code in the top 3 flag bits
_BLOSC_BITSHUFFLE_FLAG: Final = 0x04
_I32: Final = struct.Struct("<i")


def _blosc_zlib_isal(buf: memoryview, header: _BloscHeader) -> bytearray | None:
    """Decode a Blosc container of zlib blocks with ISA-L, block by block; ``None`` = not this fast path.

    HSDS compresses the chunk's byte string with Blosc (typesize 1, so one
    zlib stream per block and no real shuffle, hsds-format.md §3.3). c-blosc
    inflates those streams with its bundled zlib; ISA-L inflates the same
    streams about 1.5× faster. Layout (Blosc-1): 16-byte header, one int32
    start offset per block, then per block an int32 compressed size and the
    stream (stored raw when the size equals the block size). Anything
    unusual (other codecs, typesize > 1, bitshuffle, inconsistent offsets)
    returns ``None`` and numcodecs decodes it, raising for corrupt data.
    """
    if _isal_zlib is None or header.typesize != 1 or (header.flags >> 5) != _BLOSC_ZLIB:
        return None
    if header.flags & (_BLOSC_MEMCPYED | _BLOSC_BITSHUFFLE_FLAG) or header.blocksize <= 0:
        return None
    nbytes, bsize = header.nbytes, header.blocksize
    nblocks = -(-nbytes // bsize)
    first = _BLOSC_HEADER.size + 4 * nblocks
    if nblocks == 0 or first > len(buf):
        return None
    starts = np.frombuffer(buf, dtype="<i4", count=nblocks, offset=_BLOSC_HEADER.size)
    out = bytearray(nbytes)
    for i, start in enumerate(starts.tolist()):
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
        try:
            block = _isal_zlib.decompress(src)
        except Exception:  # noqa: BLE001 - let numcodecs decide and report
            return None
        if len(block) != size:
            return None
        out[i * bsize : i * bsize + size] = block
    return out


# --------------------------------------------------------------------------- encode


def _check_encodable(ops: FilterOps) -> None:
    if ops.unsupported is not None:
        raise UnsupportedFilterError(
            f"cannot encode chunks with the filter {ops.unsupported!r}; supported filters:"
            f" {', '.join(SUPPORTED_FILTERS)}"
        )


def encode_chunk(raw: Buffer, ops: FilterOps, *, itemsize: int) -> bytes:
    """Encode raw chunk bytes exactly as HSDS stores them.

    hsds-format.md §3.3 "Write side": the bitshuffle framing first if
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
        From :func:`filter_ops`.
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
        data = _bitshuffle_encode(raw, itemsize)
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
    ``H5D_CHUNKED_REF`` test data (hsds-format.md §3.5).

    Parameters
    ----------
    raw : bytes, bytearray or memoryview
        The chunk's raw bytes.
    ops : FilterOps
        From :func:`filter_ops`.
    itemsize : int
        Bytes per element (for shuffle and bitshuffle).

    Returns
    -------
    bytes
        The bytes an HDF5 file would hold for this chunk.

    Raises
    ------
    UnsupportedFilterError
        ``ops.unsupported`` is set.
    """
    _check_encodable(ops)
    data: Buffer = raw
    if ops.shuffle == 1 and itemsize > 1:
        whole = len(raw) - len(raw) % itemsize
        mv = memoryview(raw).cast("B")
        body = np.asarray(Shuffle(elementsize=itemsize).encode(mv[:whole]), dtype=np.uint8)
        data = body.tobytes() + bytes(mv[whole:])
    elif ops.shuffle == 2:
        data = _bitshuffle_encode(raw, itemsize)
    if ops.compressor == "zlib":
        data = zlib.compress(data, min(max(ops.level, 0), 9))
    elif ops.compressor is not None:
        codec = Blosc(cname=ops.compressor, clevel=min(max(ops.level, 0), 9), shuffle=Blosc.NOSHUFFLE)
        data = bytes(codec.encode(np.frombuffer(data, dtype=np.uint8)))
    if ops.fletcher32:
        data = bytes(Fletcher32().encode(np.frombuffer(data, dtype=np.uint8)))
    return bytes(data)
