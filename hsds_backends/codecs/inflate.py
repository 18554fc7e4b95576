"""Inflate zlib streams: ISA-L when installed, else the standard library's zlib.

Raw zlib streams are gzip chunks written before 2020-08 (legacy HSDS) and chunks
of linked HDF5 files (HDF5's deflate filter), docs/hsds-format.md §3.3. The Blosc
fast path (:mod:`.blosc`) inflates its blocks with :func:`inflate_exact`: libdeflate
(:data:`libdeflate`) when installed, else ISA-L. Setting either module attribute to
``None`` turns that inflater off (the tests compare them all).
"""

from __future__ import annotations

import zlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from types import ModuleType

    from ._common import Fail

__all__ = ["inflate", "inflate_exact", "isal_zlib", "libdeflate", "zlib_module"]

isal_zlib: ModuleType | None
try:  # isal inflates ~2x faster than zlib (4 MB float32 chunk: 9 vs 16 ms), same bytes
    from isal import isal_zlib
except ImportError:  # pragma: no cover - isal is optional
    isal_zlib = None

libdeflate: ModuleType | None
try:  # libdeflate inflates a stream of known size ~1.4-2x faster than ISA-L (PyPI ``deflate``, a dependency)
    import deflate as libdeflate
except ImportError:  # pragma: no cover - a broken install: ISA-L, then c-blosc serve
    libdeflate = None


def inflate_exact(src: memoryview, size: int) -> bytes | bytearray | None:
    """Inflate one complete zlib stream that holds exactly ``size`` bytes; ``None`` when it does not.

    For streams whose extent and output size are both known (the blocks of a Blosc
    container, docs/hsds-format.md §3.3): libdeflate when installed (it needs the output
    size up front, and checks the stream's adler32), else ISA-L, else ``None`` (the caller's
    general path decodes it, and reports what is wrong). Corrupt data or another length also
    give ``None`` (libdeflate, like c-blosc, ignores bytes after the stream's end).
    """
    lib = libdeflate
    if lib is not None:
        try:
            out = lib.zlib_decompress(src, size)
        except Exception:  # noqa: BLE001 - DeflateError and friends: let the general path report it
            return None
        return out if len(out) == size else None
    isal = isal_zlib
    if isal is None:
        return None
    try:
        dec = isal.decompressobj()
        block = dec.decompress(src, size + 1)
    except Exception:  # noqa: BLE001 - let the general path decide and report
        return None
    return block if len(block) == size and dec.eof and not dec.unused_data else None


def zlib_module() -> ModuleType:
    """Return the zlib-compatible module that inflates: ISA-L's if installed, else :mod:`zlib`."""
    return isal_zlib if isal_zlib is not None else zlib


def inflate(buf: memoryview, fail: Fail, limit: int) -> tuple[bytes, bytes]:
    """Inflate a zlib-wrapped deflate stream of at most ``limit`` bytes; return (data, bytes after the stream).

    A decompress object is used (not ``zlib.decompress``) so both zlib and isal
    report trailing bytes the same way instead of ignoring (zlib) or rejecting
    (isal) them. Output stops one byte past ``limit``: a stream that would inflate
    further (corrupt, or a decompression bomb) fails without inflating the rest.
    """
    zmod = zlib_module()
    try:
        dec = zmod.decompressobj()
        out = dec.decompress(buf, limit + 1)
    except zmod.error as exc:  # zlib.error or isal's IsalError
        fail(f"is neither a Blosc container nor a valid zlib stream: {exc}", exc)
    if len(out) > limit:
        fail(f"inflates to more than the {limit} bytes it may hold (corrupt, or a decompression bomb); nothing more was inflated")
    if not dec.eof:
        fail(f"holds a zlib stream that ends early after {len(buf)} bytes (truncated object)")
    return out, bytes(dec.unused_data)
