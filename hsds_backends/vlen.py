"""Variable-length element encoding (docs/hsds-format.md §3.2).

Elements are concatenated in C order; each variable-length value is a 4-byte
little-endian int32 byte count followed by that many bytes (UTF-8 for ``str``,
raw base-type bytes for ``H5T_VLEN``). Compounds with vlen members serialise
field by field, fixed fields as raw bytes.
"""

from __future__ import annotations

import struct
from typing import Any

import numpy as np

from .dtypes import vlen_of

__all__ = ["decode_vlen", "encode_vlen", "MAX_VLEN_ELEMENT"]

#: §3.2: counts must be 0…1,000,000.
MAX_VLEN_ELEMENT = 1_000_000

_COUNT = struct.Struct("<i")


class _VlenFormatError(Exception):
    pass


def _decoder(dt: np.dtype[Any]) -> Any:
    vlen = vlen_of(dt)
    if vlen is not None:
        if vlen is str:

            def dec_str(buf: memoryview, pos: int) -> tuple[Any, int]:
                n, pos = _count(buf, pos)
                return bytes(buf[pos : pos + n]).decode("utf-8"), pos + n

            return dec_str
        if vlen is bytes:

            def dec_bytes(buf: memoryview, pos: int) -> tuple[Any, int]:
                n, pos = _count(buf, pos)
                return bytes(buf[pos : pos + n]), pos + n

            return dec_bytes
        base = np.dtype(vlen)

        def dec_seq(buf: memoryview, pos: int) -> tuple[Any, int]:
            n, pos = _count(buf, pos)
            if n % base.itemsize:
                raise _VlenFormatError(f"vlen byte count {n} is not a multiple of the base item size {base.itemsize}")
            return np.frombuffer(bytes(buf[pos : pos + n]), dtype=base), pos + n

        return dec_seq
    if dt.names is not None:
        subs = [_decoder(dt.fields[n][0]) for n in dt.names]  # type: ignore[index]

        def dec_compound(buf: memoryview, pos: int) -> tuple[Any, int]:
            vals = []
            for sub in subs:
                v, pos = sub(buf, pos)
                vals.append(v)
            return tuple(vals), pos

        return dec_compound
    size = dt.itemsize

    def dec_fixed(buf: memoryview, pos: int) -> tuple[Any, int]:
        if pos + size > len(buf):
            raise _VlenFormatError("fixed-size member runs past the end of the data")
        return np.frombuffer(buf[pos : pos + size], dtype=dt)[0], pos + size

    return dec_fixed


def _count(buf: memoryview, pos: int) -> tuple[int, int]:
    if pos + 4 > len(buf):
        raise _VlenFormatError(f"byte count at offset {pos} runs past the end of the data ({len(buf)} bytes)")
    (n,) = _COUNT.unpack_from(buf, pos)
    if not 0 <= n <= MAX_VLEN_ELEMENT:
        raise _VlenFormatError(f"byte count {n} at offset {pos} is outside 0…{MAX_VLEN_ELEMENT}")
    if pos + 4 + n > len(buf):
        raise _VlenFormatError(f"element of {n} bytes at offset {pos} runs past the end of the data ({len(buf)} bytes)")
    return n, pos + 4


def decode_vlen(data: bytes | bytearray | memoryview, dtype: np.dtype[Any], count: int) -> np.ndarray[Any, Any]:
    """Parse ``count`` elements of ``dtype`` from ``data`` into a 1-d object/structured array.

    Raises
    ------
    ValueError
        The data is truncated, has trailing bytes, or a count out of range.
        Callers wrap this in :class:`~hsds_backends.errors.ChunkDecodeError`.
    """
    buf = memoryview(data).cast("B")
    dec = _decoder(dtype)
    out = np.empty(count, dtype=dtype)
    pos = 0
    try:
        for i in range(count):
            v, pos = dec(buf, pos)
            out[i] = v
    except _VlenFormatError as exc:
        raise ValueError(f"element {i}: {exc}") from exc
    if pos != len(buf):
        raise ValueError(f"{len(buf) - pos} trailing bytes after {count} elements")
    return out


def _encoder(dt: np.dtype[Any]) -> Any:
    vlen = vlen_of(dt)
    if vlen is not None:
        if vlen is str:
            return lambda v: _pack(("" if v is None else str(v)).encode("utf-8"))
        if vlen is bytes:
            return lambda v: _pack(b"" if v is None else (v.encode("utf-8") if isinstance(v, str) else bytes(v)))
        base = np.dtype(vlen)
        return lambda v: _pack(b"" if v is None else np.asarray(v, dtype=base).tobytes())
    if dt.names is not None:
        subs = [_encoder(dt.fields[n][0]) for n in dt.names]  # type: ignore[index]
        return lambda v: b"".join(s(x) for s, x in zip(subs, v, strict=True))
    return lambda v: np.asarray(v, dtype=dt).tobytes()


def _pack(b: bytes) -> bytes:
    return _COUNT.pack(len(b)) + b


def encode_vlen(arr: np.ndarray[Any, Any], dtype: np.dtype[Any]) -> bytes:
    """Serialise ``arr`` (any shape, C order) of ``dtype`` as §3.2 vlen bytes."""
    enc = _encoder(dtype)
    flat = np.asarray(arr, dtype=dtype).reshape(-1)
    return b"".join(enc(v) for v in flat)
