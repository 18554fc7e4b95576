"""The block decompressors of numcodecs' bundled c-blosc, called one Blosc block at a time (docs/hsds-format.md §3.3).

A Blosc-1 block (or split) compressed with blosclz, LZ4/LZ4HC or Zstandard is handed to
the very C function c-blosc itself would call for it, found in numcodecs' ``blosc``
extension module: ``blosclz_decompress``, ``LZ4_decompress_safe`` and ``ZSTD_decompress``.
All three are bounds-checked decoders (they take the input length and the output capacity),
write straight into the output, and run without the GIL (ctypes lets go of it). numcodecs
offers no per-block call since 0.16 (``decompress_partial`` was removed), and blosclz has
no other Python binding.

A numcodecs build that does not export a symbol simply turns that codec's block path off
(:func:`decompressor` answers ``None``) and whole-container decoding serves, as before.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable
from typing import Final

from numcodecs import blosc as _blosc

__all__ = ["BLOSCLZ", "LZ4", "SNAPPY", "ZLIB", "ZSTD", "decompressor"]

# The compressor code of a Blosc-1 header (flags >> 5); the codecs module uses these too.
BLOSCLZ: Final = 0
LZ4: Final = 1  # LZ4 and LZ4HC share the LZ4 block format
SNAPPY: Final = 2
ZLIB: Final = 3
ZSTD: Final = 4

# decompress(src, src_len, dst, dst_capacity) -> bytes written, or anything else on failure
Decompress = Callable[[int, int, int, int], int]


def _load() -> dict[int, Decompress]:
    try:
        lib = ctypes.CDLL(_blosc.__file__)
    except OSError:  # pragma: no cover - numcodecs not loadable as a shared object here
        return {}
    found: dict[int, Decompress] = {}
    c_int, c_size, c_void = ctypes.c_int, ctypes.c_size_t, ctypes.c_void_p
    blosclz = getattr(lib, "blosclz_decompress", None)
    if blosclz is not None:  # int blosclz_decompress(const void* input, int length, void* output, int maxout)
        blosclz.argtypes, blosclz.restype = [c_void, c_int, c_void, c_int], c_int

        def _blosclz(src: int, n: int, dst: int, cap: int) -> int:
            return int(blosclz(src, n, dst, cap))

        found[BLOSCLZ] = _blosclz
    lz4 = getattr(lib, "LZ4_decompress_safe", None)
    if lz4 is not None:  # int LZ4_decompress_safe(const char* src, char* dst, int compressedSize, int dstCapacity)
        lz4.argtypes, lz4.restype = [c_void, c_void, c_int, c_int], c_int

        def _lz4(src: int, n: int, dst: int, cap: int) -> int:
            return int(lz4(src, dst, n, cap))

        found[LZ4] = _lz4
    zstd = getattr(lib, "ZSTD_decompress", None)
    if zstd is not None:  # size_t ZSTD_decompress(void* dst, size_t dstCapacity, const void* src, size_t compressedSize)
        zstd.argtypes, zstd.restype = [c_void, c_size, c_void, c_size], c_size

        def _zstd(src: int, n: int, dst: int, cap: int) -> int:
            return int(zstd(dst, cap, src, n))  # an error code is a huge size_t, never the block size

        found[ZSTD] = _zstd
    return found


_FOUND: Final = _load()


def decompressor(code: int) -> Decompress | None:
    """The block decompressor for Blosc compressor ``code``, or ``None`` (zlib has its own inflaters; snappy is not built)."""
    return _FOUND.get(code)
