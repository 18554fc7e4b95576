"""Tests for hsds_backends.codecs: HSDS chunk encodings (docs/hsds-format.md §2.4, §3.1-§3.3)."""

from __future__ import annotations

import itertools
import re
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from numcodecs import Blosc, Fletcher32, Shuffle

from hsds_backends import codecs
from hsds_backends.codecs import (
    KNOWN_FILTERS,
    FilterOps,
    decode_chunk,
    encode_chunk,
    encode_linked_chunk,
    filter_ops,
)
from hsds_backends.codecs import bitshuffle as bshuf_codec
from hsds_backends.codecs import blosc as blosc_codec
from hsds_backends.codecs import inflate as inflate_codec
from hsds_backends.errors import ChunkDecodeError, UnsupportedFilterError

CID = "c-147ada2c-2ffb2839-39b5-e935ed-e55bf0_0_3"
KEY = "db/147ada2c-2ffb2839/d/39b5-e935ed-e55bf0/0_3"
NAMES_CHUNK = re.escape(f"chunk {CID} (key {KEY})")

COMPRESSORS = [None, "zlib", "blosclz", "lz4", "lz4hc", "zstd"]
ITEMSIZES = [1, 2, 4, 8]
FAST = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def sample(itemsize: int, count: int = 1003, seed: int = 0) -> bytes:
    """Compressible but non-trivial bytes: a noisy ramp of `count` items."""
    rng = np.random.default_rng(seed)
    base = np.arange(count, dtype=np.uint64) * 7 + rng.integers(0, 4, count, dtype=np.uint64)
    dtype = {1: "u1", 2: "<u2", 4: "<u4", 8: "<u8"}[itemsize]
    return base.astype(dtype).tobytes()


def decode(data: bytes | bytearray | memoryview, ops: FilterOps, itemsize: int, nbytes: int | None,
           linked: bool = False) -> bytes:
    return bytes(decode_chunk(data, ops, itemsize=itemsize, nbytes=nbytes, chunk_id=CID, key=KEY,
                              linked=linked))


def hdf5_shuffle(raw: bytes, itemsize: int) -> bytes:
    return bytes(np.asarray(Shuffle(elementsize=itemsize).encode(raw), dtype=np.uint8).tobytes())


def bshuf_framed(arr: np.ndarray, block: int) -> bytes:
    """The HDF5 bitshuffle+LZ4 framing, built with the bitshuffle package itself."""
    bitshuffle = pytest.importorskip("bitshuffle")
    body: bytes = bitshuffle.compress_lz4(arr, block).tobytes()
    return struct.pack(">QI", arr.nbytes, block * arr.itemsize) + body


# ----------------------------------------------------------------------------- filter_ops


def test_known_filters_match_hsds_filter_defs() -> None:
    assert KNOWN_FILTERS == {
        0: "none", 1: "gzip", 2: "shuffle", 3: "fletcher32", 4: "szip", 5: "nbit",
        6: "scaleoffset", 32000: "lzf", 32001: "blosclz", 32003: "snappy", 32004: "lz4",
        32005: "lz4hc", 32008: "bitshuffle", 32015: "zstd",
    }


@pytest.mark.parametrize(
    "filters",
    [
        [2, 1],
        ["shuffle", "gzip"],
        ["shuffle", "deflate"],
        ["H5Z_FILTER_SHUFFLE", "H5Z_FILTER_DEFLATE"],
        [{"class": "H5Z_FILTER_SHUFFLE", "id": 2, "name": "shuffle"},
         {"class": "H5Z_FILTER_DEFLATE", "id": 1, "name": "gzip"}],
        [{"id": 2}, {"name": "deflate"}],
        ["H5Z_FILTER_SHUFFLE", {"class": "H5Z_FILTER_DEFLATE", "id": 1}],
    ],
)
def test_filter_ops_normalises_every_item_form(filters: list[object]) -> None:
    expected = FilterOps(compressor="zlib", level=5, shuffle=1, fletcher32=False, unsupported=None)
    assert filter_ops(filters) == expected
    assert filter_ops(list(reversed(filters))) == expected


def test_filter_ops_stored_hsds_form_keeps_level() -> None:
    # The verified stored form of docs/hsds-format.md §2.4.
    stored = [{"class": "H5Z_FILTER_SHUFFLE", "id": 2, "name": "shuffle"},
              {"class": "H5Z_FILTER_DEFLATE", "id": 1, "name": "gzip", "level": 6}]
    assert filter_ops(stored) == FilterOps("zlib", 6, 1, False, None)


@pytest.mark.parametrize(
    ("item", "name"),
    [(32001, "blosclz"), ("blosclz", "blosclz"), ("H5Z_FILTER_BLOSC", "blosclz"),
     (32004, "lz4"), ("LZ4", "lz4"), ("H5Z_FILTER_LZ4HC", "lz4hc"), (32015, "zstd"),
     ({"class": "H5Z_FILTER_USER", "id": 32004, "name": "lz4"}, "lz4"),
     ({"class": "H5Z_FILTER_USER", "id": 32015}, "zstd"),
     ({"class": "H5Z_FILTER_ZSTD", "id": 32015, "name": "zstd", "level": 3}, "zstd")],
)
def test_filter_ops_blosc_compressors(item: object, name: str) -> None:
    ops = filter_ops([item])
    assert (ops.compressor, ops.unsupported) == (name, None)


def test_filter_ops_all_orders_agree() -> None:
    filters = [3, {"class": "H5Z_FILTER_BITSHUFFLE", "id": 32008, "name": "bitshuffle"},
               "H5Z_FILTER_ZSTD", 5]
    results = {filter_ops(list(p)) for p in itertools.permutations(filters)}
    assert results == {FilterOps("zstd", 5, 2, True, None)}


def test_filter_ops_empty_and_none() -> None:
    assert filter_ops(None) == filter_ops([]) == filter_ops([0]) == FilterOps(None, 5, 0, False, None)


def test_filter_ops_vlen_forces_no_shuffle() -> None:
    assert filter_ops(["shuffle", "gzip"], is_vlen=True).shuffle == 0
    assert filter_ops(["bitshuffle"], is_vlen=True).shuffle == 0
    assert filter_ops(["gzip"], is_vlen=True).compressor == "zlib"


def test_filter_ops_nbit_scaleoffset_are_noops_for_hsds_native() -> None:
    assert filter_ops(["nbit", "scaleoffset"]) == FilterOps(None, 5, 0, False, None)
    assert filter_ops([5, 1]) == FilterOps("zlib", 5, 0, False, None)
    # HSDS counts scaleoffset as the compressor when it comes first, then skips it (§3.3).
    assert filter_ops([6, 1]).compressor is None
    assert filter_ops([1, 6]).compressor == "zlib"


@pytest.mark.parametrize("item", [5, 6, "H5Z_FILTER_SCALEOFFSET"])
def test_filter_ops_nbit_scaleoffset_unsupported_in_linked_files(item: object) -> None:
    ops = filter_ops([item, "gzip"], linked=True)
    assert ops.unsupported is not None
    assert ops.unsupported.split()[0] in ("nbit", "scaleoffset")


@pytest.mark.parametrize(
    ("item", "name"),
    [(32000, "lzf"), ("lzf", "lzf"), (4, "szip"), ("H5Z_FILTER_SZIP", "szip"), (32003, "snappy"),
     (307, "filter id 307"), ({"class": "H5Z_FILTER_USER", "id": 307, "name": "bzip2"}, "bzip2"),
     ("H5Z_FILTER_FOO", "H5Z_FILTER_FOO")],
)
def test_filter_ops_records_undecodable_filters(item: object, name: str) -> None:
    ops = filter_ops([2, item])  # recorded, not raised
    assert ops.unsupported == name


def test_filter_ops_shuffle_and_bitshuffle_together_is_refused() -> None:
    assert filter_ops([2, 32008]).unsupported == "shuffle together with bitshuffle"


# ----------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("itemsize", ITEMSIZES)
@pytest.mark.parametrize("shuffle", [0, 1, 2])
@pytest.mark.parametrize("compressor", COMPRESSORS)
def test_round_trip_hsds_native(compressor: str | None, shuffle: int, itemsize: int) -> None:
    raw = sample(itemsize)
    ops = FilterOps(compressor=compressor, shuffle=shuffle)
    stored = encode_chunk(raw, ops, itemsize=itemsize)
    if compressor is not None:
        assert stored[0] == 2  # a Blosc-1 container, §3.3
    assert decode(stored, ops, itemsize, len(raw)) == raw


@pytest.mark.parametrize("fletcher32", [False, True])
@pytest.mark.parametrize("itemsize", [1, 4, 8])
@pytest.mark.parametrize("shuffle", [0, 1, 2])
@pytest.mark.parametrize("compressor", COMPRESSORS)
def test_round_trip_linked_hdf5(compressor: str | None, shuffle: int, itemsize: int,
                                fletcher32: bool) -> None:
    raw = sample(itemsize, seed=1)
    ops = FilterOps(compressor=compressor, shuffle=shuffle, fletcher32=fletcher32)
    stored = encode_linked_chunk(raw, ops, itemsize)
    assert decode(stored, ops, itemsize, len(raw), linked=True) == raw


def test_round_trip_with_compound_itemsize() -> None:
    raw = np.arange(600, dtype="<i4").tobytes()  # 200 items of 12 bytes
    for shuffle in (1, 2):
        ops = FilterOps(compressor="zlib", shuffle=shuffle)
        assert decode(encode_chunk(raw, ops, itemsize=12), ops, 12, len(raw)) == raw
        assert decode(encode_linked_chunk(raw, ops, 12), ops, 12, len(raw), linked=True) == raw


def test_hsds_shuffle_only_chunk_is_stored_and_read_unshuffled() -> None:
    # docs/hsds-format.md §3.3 "Bug": HSDS writes shuffle-only chunks unshuffled.
    raw = sample(4)
    ops = filter_ops(["shuffle"])
    assert encode_chunk(raw, ops, itemsize=4) == raw
    assert decode(raw, ops, 4, len(raw)) == raw


def test_linked_shuffle_only_chunk_is_unshuffled() -> None:
    raw = sample(4)
    assert decode(hdf5_shuffle(raw, 4), filter_ops(["shuffle"]), 4, len(raw), linked=True) == raw


def test_linked_blosc_after_hdf5_shuffle_is_unshuffled() -> None:
    # In an HDF5 pipeline [shuffle, blosc] the shuffle really ran before blosc.
    raw = sample(4)
    stored = bytes(Blosc(cname="lz4", shuffle=Blosc.SHUFFLE).encode(hdf5_shuffle(raw, 4)))
    ops = filter_ops(["shuffle", "lz4"])
    assert decode(stored, ops, 4, len(raw), linked=True) == raw


def test_unshuffle_keeps_trailing_partial_item_like_hdf5() -> None:
    raw = sample(1, 41)  # 41 bytes, itemsize 4: one byte left over
    stored = zlib.compress(hdf5_shuffle(raw[:40], 4) + raw[40:])
    assert decode(stored, filter_ops(["shuffle", "gzip"]), 4, None) == raw


def test_nothing_to_undo_returns_the_input_object() -> None:
    raw = sample(4)
    assert decode_chunk(raw, filter_ops([]), itemsize=4, nbytes=len(raw), chunk_id=CID,
                        key=KEY) is raw


@pytest.mark.parametrize("wrap", [bytes, bytearray, memoryview])
def test_decode_accepts_any_buffer(wrap: type) -> None:
    raw = sample(2)
    ops = filter_ops(["gzip", "shuffle"])
    stored = encode_chunk(raw, ops, itemsize=2)
    assert decode(wrap(stored), ops, 2, len(raw)) == raw


def test_decode_counts_bytes_of_typed_memoryviews() -> None:
    arr = np.arange(64, dtype="<u4")
    raw = arr.tobytes()
    assert decode(memoryview(arr.data), filter_ops([]), 4, len(raw)) == raw
    assert decode(np.frombuffer(hdf5_shuffle(raw, 4), "<u4").data, filter_ops([2]), 4, len(raw),
                  linked=True) == raw


# ----------------------------------------------------------------------------- Blosc and zlib


def test_hsds_gzip_shuffle_chunk_has_the_verified_blosc_header() -> None:
    # docs/hsds-format.md §3.3: a 40x50 '<i4' gzip+shuffle chunk starts 02 01 61 01
    # (format 2, versionlz 1, flags 0x61 = zlib codec | byte shuffle, typesize 1),
    # nbytes = blocksize = 8000, then a zlib stream 78 9c. numcodecs 0.16 writes the
    # same header; only cbytes differs (2831 here, 2865 in the reference: other
    # zlib/c-blosc builds), so cbytes is only checked against the object length.
    raw = np.arange(2000, dtype="<i4").reshape(40, 50).tobytes()
    ops = filter_ops([{"class": "H5Z_FILTER_SHUFFLE", "id": 2, "name": "shuffle"},
                      {"class": "H5Z_FILTER_DEFLATE", "id": 1, "name": "gzip", "level": 6}])
    stored = encode_chunk(raw, ops, itemsize=4)
    assert stored[:4] == bytes([0x02, 0x01, 0x61, 0x01])
    nbytes, blocksize, cbytes = struct.unpack_from("<III", stored, 4)
    assert (nbytes, blocksize, cbytes) == (8000, 8000, len(stored))
    assert stored[24:26] == b"\x78\x9c"
    assert decode(stored, ops, 4, 8000) == raw
    # without shuffle the flags are 0x60
    assert encode_chunk(raw, filter_ops(["gzip"]), itemsize=4)[:4] == bytes([2, 1, 0x60, 1])


@pytest.mark.parametrize("blosc_shuffle", [Blosc.NOSHUFFLE, Blosc.SHUFFLE, Blosc.BITSHUFFLE])
@pytest.mark.parametrize("cname", ["blosclz", "lz4", "lz4hc", "zlib", "zstd"])
def test_blosc_containers_of_every_codec_decode_like_numcodecs(cname: str, blosc_shuffle: int) -> None:
    # Typesize-4 containers too (the reference drops one into the store, §3.3).
    arr = np.frombuffer(sample(4, 3000), dtype="<u4")
    stored = bytes(Blosc(cname=cname, clevel=5, shuffle=blosc_shuffle).encode(arr))
    expected = bytes(Blosc().decode(stored))
    assert expected == arr.tobytes()
    for ops in (filter_ops(["gzip"]), filter_ops([cname if cname != "zlib" else "gzip", "shuffle"])):
        assert decode(stored, ops, 4, arr.nbytes) == expected


def test_blosc_container_without_compressor_filter_is_decoded() -> None:
    raw = sample(8)
    stored = bytes(Blosc(cname="zstd").encode(raw))
    assert decode(stored, filter_ops([]), 8, len(raw)) == raw


def test_legacy_raw_zlib_of_shuffled_bytes() -> None:
    # Pre-2020 HSDS wrote zlib(shuffle(bytes)) for gzip+shuffle (§3.3).
    raw = sample(4)
    stored = zlib.compress(hdf5_shuffle(raw, 4), 6)
    assert stored[0] == 0x78
    assert decode(stored, filter_ops(["gzip", "shuffle"]), 4, len(raw)) == raw
    assert decode(zlib.compress(raw), filter_ops(["deflate"]), 4, len(raw)) == raw


def test_isal_and_zlib_inflate_identically(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("isal")
    raw = sample(8, 5000)
    stored = zlib.compress(raw, 9)
    ops = filter_ops(["gzip"])
    assert inflate_codec.isal_zlib is not None
    with_isal = decode(stored, ops, 8, len(raw))
    monkeypatch.setattr(inflate_codec, "isal_zlib", None)
    with_zlib = decode(stored, ops, 8, len(raw))
    assert with_isal == with_zlib == zlib.decompress(stored) == raw


@FAST
@given(
    data=st.binary(min_size=0, max_size=5000).map(lambda b: b * 40),
    level=st.integers(1, 9),
    blocksize=st.sampled_from([0, 65536, 131072]),  # c-blosc makes zlib blocks at least 64 KiB
)
def test_blosc_zlib_blocks_decode_identically_with_libdeflate_isal_and_cblosc(data: bytes, level: int, blocksize: int) -> None:
    """HSDS's gzip chunks (Blosc, zlib blocks, typesize 1): the fast inflaters give c-blosc's bytes."""
    pytest.importorskip("deflate")
    stored = bytes(Blosc(cname="zlib", clevel=level, shuffle=Blosc.NOSHUFFLE, blocksize=blocksize).encode(data))
    ops = filter_ops(["gzip"])
    results = []
    header = blosc_codec.parse_header(memoryview(stored))
    for libdeflate, isal in [(True, True), (False, True), (False, False)]:
        with pytest.MonkeyPatch.context() as mp:
            if not libdeflate:
                mp.setattr(inflate_codec, "libdeflate", None)
            if not isal:
                mp.setattr(inflate_codec, "isal_zlib", None)
            results.append(bytes(decode(stored, ops, 1, len(data))))
            if header is not None and data and not header.flags & 0x02:  # the fast path itself, not c-blosc filling in
                fast = blosc_codec.decode_blocks(memoryview(stored), header)
                assert (fast is not None) == (libdeflate or isal) and (fast is None or bytes(fast) == data)
    assert results == [data] * 3


@pytest.mark.parametrize("inflater", ["libdeflate", "isal", "c-blosc"])
def test_a_corrupt_blosc_zlib_block_raises_naming_the_chunk(monkeypatch: pytest.MonkeyPatch, inflater: str) -> None:
    if inflater != "libdeflate":
        monkeypatch.setattr(inflate_codec, "libdeflate", None)
    if inflater == "c-blosc":
        monkeypatch.setattr(inflate_codec, "isal_zlib", None)
    raw = sample(4, 200_000)
    stored = bytearray(Blosc(cname="zlib", clevel=4, shuffle=Blosc.NOSHUFFLE, blocksize=65536).encode(raw))
    stored[len(stored) // 2] ^= 0xFF  # inside a block's deflate stream
    with pytest.raises(ChunkDecodeError, match=NAMES_CHUNK + " holds a corrupt Blosc container"):
        decode(stored, filter_ops(["gzip"]), 4, len(raw))


@pytest.mark.parametrize("use_isal", [True, False])
def test_corrupt_zlib_raises_with_either_inflater(monkeypatch: pytest.MonkeyPatch,
                                                  use_isal: bool) -> None:
    if not use_isal:
        monkeypatch.setattr(inflate_codec, "isal_zlib", None)
    raw = sample(4)
    stored = bytearray(zlib.compress(raw))
    stored[len(stored) // 2] ^= 0xFF
    with pytest.raises(ChunkDecodeError, match=NAMES_CHUNK) as info:
        decode(stored, filter_ops(["gzip"]), 4, len(raw))
    assert info.value.__cause__ is not None or "truncated" in str(info.value)


def test_vlen_chunk_is_not_length_checked() -> None:
    raw = b"\x01\x00\x00\x00a\x02\x00\x00\x00bc\x00\x00\x00\x00"  # §3.2 example
    ops = filter_ops(["gzip", "shuffle"], is_vlen=True)
    assert decode(encode_chunk(raw, ops, itemsize=1), ops, 1, None) == raw
    assert decode(raw, filter_ops([], is_vlen=True), 1, None) == raw


# ----------------------------------------------------------------------------- bitshuffle


@FAST
@given(
    itemsize=st.sampled_from(ITEMSIZES),
    count=st.integers(0, 2500),
    block=st.sampled_from([0, 8, 64, 256]),
    seed=st.integers(0, 2**32 - 1),
)
def test_bitshuffle_matches_the_bitshuffle_package(itemsize: int, count: int, block: int,
                                                   seed: int) -> None:
    bitshuffle = pytest.importorskip("bitshuffle")
    rng = np.random.default_rng(seed)
    dtype = {1: "u1", 2: "<u2", 4: "<u4", 8: "<u8"}[itemsize]
    arr = (rng.integers(0, 2**(8 * itemsize) - 1, count, dtype=np.uint64, endpoint=True)
           >> np.uint64(rng.integers(0, 8 * itemsize))).astype(dtype)
    block = block or bshuf_codec.default_block(itemsize)
    ops = filter_ops(["bitshuffle"])
    # their encoding -> our decoder
    assert decode(bshuf_framed(arr, block), ops, itemsize, arr.nbytes) == arr.tobytes()
    # our encoding -> their decoder (LZ4 builds differ, so the bytes may too)
    ours = encode_chunk(arr.tobytes(), ops, itemsize=itemsize)
    default = bshuf_codec.default_block(itemsize)
    assert ours[:12] == struct.pack(">QI", arr.nbytes, default * itemsize)
    theirs = bitshuffle.decompress_lz4(np.frombuffer(ours[12:], np.uint8), arr.shape, arr.dtype,
                                       default)
    assert theirs.tobytes() == arr.tobytes()
    # the bit transpose itself is byte-identical to bitshuffle's
    whole = count - count % 8
    if whole:
        mine = bshuf_codec.bit_transpose(np.frombuffer(arr[:whole].tobytes(), np.uint8), 1, whole,
                                     itemsize)
        assert mine.tobytes() == bitshuffle.bitshuffle(arr[:whole], whole).tobytes()


def test_bitshuffle_inside_blosc_as_hsds_writes_it() -> None:
    raw = sample(4, 5003)
    ops = filter_ops(["bitshuffle", "zstd"])
    stored = encode_chunk(raw, ops, itemsize=4)
    assert stored[0] == 2  # Blosc around the framing (§3.3 table)
    assert decode(stored, ops, 4, len(raw)) == raw


def test_bitshuffle_header_must_match_nbytes() -> None:
    arr = np.arange(100, dtype="<u4")
    stored = bshuf_framed(arr, 64)
    with pytest.raises(ChunkDecodeError, match=NAMES_CHUNK + r".*bitshuffle header for 400 bytes, expected 800"):
        decode(stored, filter_ops(["bitshuffle"]), 4, 800)


@pytest.mark.parametrize("cut", [0, 5, 12, 15, 40, -1])
def test_truncated_bitshuffle_raises(cut: int) -> None:
    arr = np.arange(1003, dtype="<u4")
    stored = bshuf_framed(arr, 256)
    with pytest.raises(ChunkDecodeError, match=NAMES_CHUNK):
        decode(stored[:cut], filter_ops(["bitshuffle"]), 4, arr.nbytes)


def test_corrupt_bitshuffle_block_size_raises() -> None:
    arr = np.arange(1003, dtype="<u4")
    stored = bytearray(bshuf_framed(arr, 256))
    stored[8:12] = struct.pack(">I", 1001)  # not a multiple of 8 items
    with pytest.raises(ChunkDecodeError, match=NAMES_CHUNK + ".*block size"):
        decode(stored, filter_ops(["bitshuffle"]), 4, arr.nbytes)
    stored = bytearray(bshuf_framed(arr, 256))
    stored[12:16] = struct.pack(">I", 3)  # compressed size of block 0
    with pytest.raises(ChunkDecodeError, match=NAMES_CHUNK + ".*block 0"):
        decode(stored, filter_ops(["bitshuffle"]), 4, arr.nbytes)


# ----------------------------------------------------------------------------- fletcher32


def test_linked_fletcher32_is_verified_and_stripped() -> None:
    raw = sample(4)
    ops = filter_ops(["shuffle", "gzip", "fletcher32"])
    stored = encode_linked_chunk(raw, ops, 4)
    body = encode_linked_chunk(raw, filter_ops(["shuffle", "gzip"]), 4)
    assert stored[:-4] == body and len(stored) == len(body) + 4
    assert decode(stored, ops, 4, len(raw), linked=True) == raw


@pytest.mark.parametrize("filters", [["fletcher32"], ["gzip", "fletcher32"], ["lz4", "fletcher32"]])
def test_corrupt_fletcher32_raises(filters: list[str]) -> None:
    raw = sample(4)
    ops = filter_ops(filters)
    stored = bytearray(encode_linked_chunk(raw, ops, 4))
    stored[-1] ^= 0x01
    with pytest.raises(ChunkDecodeError, match=NAMES_CHUNK + ".*fletcher32"):
        decode(stored, ops, 4, len(raw), linked=True)
    with pytest.raises(ChunkDecodeError, match=NAMES_CHUNK + ".*fletcher32"):
        decode(stored, ops, 4, len(raw), linked=False)


def test_linked_chunk_too_short_for_fletcher32() -> None:
    with pytest.raises(ChunkDecodeError, match=NAMES_CHUNK + ".*too short"):
        decode(b"ab", filter_ops(["fletcher32"]), 1, 2, linked=True)


def test_fletcher32_of_an_empty_payload_is_zero() -> None:
    # numcodecs' Fletcher32 cannot take an empty payload; HDF5's checksum of nothing is 0.
    assert decode(b"\0\0\0\0", filter_ops(["fletcher32"]), 1, 0, linked=True) == b""
    with pytest.raises(ChunkDecodeError, match=NAMES_CHUNK + ".*fletcher32"):
        decode(b"\0\0\1\0", filter_ops(["fletcher32"]), 1, 0, linked=True)


def with_fletcher32(body: bytes) -> bytes:
    return bytes(Fletcher32().encode(np.frombuffer(body, np.uint8)))


@pytest.mark.parametrize(
    ("filters", "legacy_zlib"),
    [(["fletcher32"], False), (["gzip", "fletcher32"], False), (["zstd", "fletcher32"], False),
     (["bitshuffle", "fletcher32"], False), (["gzip", "shuffle", "fletcher32"], False),
     (["gzip", "fletcher32"], True), (["gzip", "shuffle", "fletcher32"], True)],
)
def test_native_chunk_with_trailer_is_detected(filters: list[str], legacy_zlib: bool) -> None:
    raw = sample(4)
    ops = filter_ops(filters)
    if legacy_zlib:
        body = zlib.compress(hdf5_shuffle(raw, 4) if ops.shuffle else raw)
    else:
        body = encode_chunk(raw, ops, itemsize=4)
        # HSDS writes no trailer: the chunk decodes as it is
        assert decode(body, ops, 4, len(raw)) == raw
    # a trailer where the layout leaves exactly 4 bytes is verified and stripped
    assert decode(with_fletcher32(body), ops, 4, len(raw)) == raw
    damaged = bytearray(with_fletcher32(body))
    damaged[-2] ^= 0x10
    with pytest.raises(ChunkDecodeError, match=NAMES_CHUNK + ".*fletcher32"):
        decode(damaged, ops, 4, len(raw))


def test_native_fletcher32_without_trailer_rejects_four_stray_bytes_when_not_set() -> None:
    raw = sample(4)
    stored = zlib.compress(raw) + b"abcd"
    decode(stored[:-4], filter_ops(["gzip"]), 4, len(raw))
    with pytest.raises(ChunkDecodeError, match=NAMES_CHUNK + ".*stray bytes"):
        decode(stored, filter_ops(["gzip"]), 4, len(raw))


# ----------------------------------------------------------------------------- corrupt data


@pytest.mark.parametrize("cut", [0, 3, 15, 16, 20, 100, -1])
@pytest.mark.parametrize("compressor", ["zlib", "lz4", "zstd"])
def test_truncated_blosc_raises(compressor: str, cut: int) -> None:
    raw = sample(4)
    ops = FilterOps(compressor=compressor, shuffle=1)
    stored = encode_chunk(raw, ops, itemsize=4)
    with pytest.raises(ChunkDecodeError, match=NAMES_CHUNK):
        decode(stored[:cut], ops, 4, len(raw))


@pytest.mark.parametrize("cut", [0, 1, 2, 10, -4, -1])
def test_truncated_zlib_raises(cut: int) -> None:
    raw = sample(4)
    stored = zlib.compress(raw)
    with pytest.raises(ChunkDecodeError, match=NAMES_CHUNK):
        decode(stored[:cut], filter_ops(["gzip"]), 4, len(raw))


def test_corrupt_blosc_header_raises() -> None:
    raw = sample(4)
    ops = FilterOps(compressor="lz4", level=0)  # clevel 0: Blosc stores the bytes (memcpyed flag)
    assert encode_chunk(raw, ops, itemsize=4)[2] & 0x02
    for edit, message in [((12, len(raw) + 100), "Blosc container of"),  # cbytes
                          ((4, len(raw) - 4), "uncompressed Blosc container"),  # nbytes
                          ((4, 2**31), "claiming")]:
        stored = bytearray(encode_chunk(raw, ops, itemsize=4))
        stored[edit[0] : edit[0] + 4] = struct.pack("<I", edit[1])
        with pytest.raises(ChunkDecodeError, match=NAMES_CHUNK + ".*" + message):
            decode(stored, ops, 4, len(raw))
    stored = bytearray(encode_chunk(raw, ops, itemsize=4))
    stored[0] = 7  # unknown Blosc format: lz4 chunks must be Blosc containers
    with pytest.raises(ChunkDecodeError, match=NAMES_CHUNK + ".*not a Blosc container"):
        decode(stored, ops, 4, len(raw))


def test_corrupt_blosc_body_raises_chained() -> None:
    raw = sample(4)
    ops = filter_ops(["zlib"])
    stored = bytearray(encode_chunk(raw, ops, itemsize=4))
    stored[30:40] = b"\xff" * 10  # inside the internal zlib stream
    with pytest.raises(ChunkDecodeError, match=NAMES_CHUNK + ".*corrupt Blosc") as info:
        decode(stored, ops, 4, len(raw))
    assert info.value.__cause__ is not None


@pytest.mark.parametrize(
    ("stored", "filters"),
    [(sample(4)[:-4], []),
     (sample(4) + b"\0" * 8, []),
     (bytes(Blosc(cname="lz4").encode(sample(4)[:-4])), ["lz4"]),
     (zlib.compress(sample(4)[:-4]), ["gzip"])],
)
def test_wrong_decoded_length_raises(stored: bytes, filters: list[str]) -> None:
    nbytes = len(sample(4))
    with pytest.raises(ChunkDecodeError, match=NAMES_CHUNK + f".*{nbytes}.*corrupt"):
        decode(stored, filter_ops(filters), 4, nbytes)


def _valid_encodings() -> list[tuple[bytes, FilterOps, bool]]:
    raw = sample(4, 600)
    out = []
    for comp, shuf in itertools.product(COMPRESSORS, [0, 1, 2]):
        ops = FilterOps(compressor=comp, shuffle=shuf, fletcher32=comp == "zlib")
        out.append((encode_chunk(raw, ops, itemsize=4), ops, False))
        out.append((encode_linked_chunk(raw, ops, 4), ops, True))
    return out


ENCODINGS = _valid_encodings()


@FAST
@given(
    which=st.integers(0, len(ENCODINGS) - 1),
    edits=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), min_size=1, max_size=3),
    cut=st.one_of(st.none(), st.integers(0, 10**6)),
)
def test_damaged_chunks_raise_chunk_decode_error_or_decode_to_full_length(
    which: int, edits: list[tuple[int, int]], cut: int | None
) -> None:
    # Blosc and LZ4 carry no checksum, so some damage goes unnoticed; what must
    # hold is: no other exception type, no crash, never a result of the wrong size.
    stored, ops, linked = ENCODINGS[which]
    data = bytearray(stored)
    for pos, value in edits:
        data[pos % len(data)] = value
    if cut is not None:
        data = data[: cut % (len(data) + 1)]
    nbytes = 2400
    try:
        out = decode(data, ops, 4, nbytes, linked=linked)
    except ChunkDecodeError as exc:
        assert f"chunk {CID} (key {KEY})" in str(exc)
    else:
        assert len(out) == nbytes


@pytest.mark.parametrize("compressor", ["lz4", "zstd", "blosclz"])
def test_non_blosc_data_for_blosc_compressor_raises(compressor: str) -> None:
    raw = sample(4)
    with pytest.raises(ChunkDecodeError, match=NAMES_CHUNK + f".*not a Blosc container.*{compressor}"):
        decode(zlib.compress(raw), filter_ops([compressor]), 4, len(raw))


# ----------------------------------------------------------------------------- unsupported


@pytest.mark.parametrize(("filters", "name"), [([32000], "lzf"), (["szip"], "szip"),
                                               ([2, "H5Z_FILTER_SNAPPY"], "snappy"),
                                               ([{"class": "H5Z_FILTER_USER", "id": 307}], "filter id 307")])
def test_unsupported_filter_raises_at_decode(filters: list[object], name: str) -> None:
    ops = filter_ops(filters)
    with pytest.raises(UnsupportedFilterError, match=NAMES_CHUNK + f".*{name!r}.*supported filters: gzip"):
        decode(b"anything", ops, 4, 8)
    with pytest.raises(UnsupportedFilterError, match=repr(name)):
        encode_chunk(b"\0" * 8, ops, itemsize=4)


def test_unsupported_filter_error_is_a_chunk_decode_error() -> None:
    assert issubclass(UnsupportedFilterError, ChunkDecodeError)
    with pytest.raises(ChunkDecodeError):
        decode(b"", filter_ops([6], linked=True), 4, 0, linked=True)


# ----------------------------------------------------------------------------- real HDF5 chunks


@pytest.mark.parametrize(
    ("kwargs", "filters"),
    [({"compression": "gzip", "shuffle": True, "fletcher32": True}, [2, 1, 3]),
     ({"compression": "gzip"}, [1]),
     ({"shuffle": True}, [2]),
     ({"fletcher32": True}, [3])],
)
def test_chunks_written_by_hdf5_decode_as_linked(tmp_path: Path, kwargs: dict[str, bool | str],
                                                 filters: list[int]) -> None:
    # HDF5 runs the pipeline in this order: shuffle, deflate, fletcher32.
    h5py = pytest.importorskip("h5py")
    data = np.arange(40 * 50, dtype="<i4").reshape(40, 50) * 3 - 1000
    path = str(tmp_path / "f.h5")
    with h5py.File(path, "w") as f:
        dset = f.create_dataset("x", data=data, chunks=(20, 25), **kwargs)
        plist = dset.id.get_create_plist()
        assert [plist.get_filter(i)[0] for i in range(plist.get_nfilters())] == filters
        mask, chunk = dset.id.read_direct_chunk((20, 25))
    assert mask == 0
    ops = filter_ops(filters, linked=True)
    out = decode(chunk, ops, 4, 20 * 25 * 4, linked=True)
    assert np.array_equal(np.frombuffer(out, "<i4").reshape(20, 25), data[20:, 25:])


# ---------------------------------------------------------------- ISA-L fast path for Blosc/zlib frames


@settings(max_examples=60, deadline=None)
@given(
    data=st.binary(min_size=0, max_size=300_000),
    level=st.integers(1, 9),
    shuffle=st.sampled_from([0, 1]),
    blocksize=st.sampled_from([0, 65536, 131072]),  # c-blosc makes zlib blocks at least 64 KiB
    repeat=st.integers(1, 50),
)
def test_blosc_zlib_isal_fast_path_is_byte_identical(data: bytes, level: int, shuffle: int, blocksize: int, repeat: int) -> None:
    pytest.importorskip("isal")
    raw = (data * repeat)[:400_000]
    enc = Blosc(cname="zlib", clevel=level, shuffle=shuffle, blocksize=blocksize).encode(raw)
    header = blosc_codec.parse_header(memoryview(enc))
    assert header is not None
    fast = blosc_codec.decode_blocks(memoryview(enc), header)
    if header.flags & 0x02:  # stored uncompressed: not this path
        assert fast is None
    else:
        assert fast is not None and bytes(fast) == raw
    ops = codecs.filter_ops([{"class": "H5Z_FILTER_DEFLATE", "id": 1, "name": "gzip", "level": level}])
    assert bytes(codecs.decode_chunk(enc, ops, itemsize=1, nbytes=len(raw), chunk_id="c", key="k")) == raw


def test_blosc_zlib_isal_corrupt_stream_falls_back_and_raises() -> None:
    pytest.importorskip("isal")
    raw = np.arange(300_000, dtype="<i4").tobytes()
    enc = bytearray(Blosc(cname="zlib", clevel=4, shuffle=1).encode(raw))
    header = blosc_codec.parse_header(memoryview(enc))
    assert header is not None and header.typesize == 1  # HSDS frames: the chunk as a byte string
    enc[200:240] = bytes(40)  # damage the first zlib stream
    assert blosc_codec.decode_blocks(memoryview(bytes(enc)), blosc_codec.parse_header(memoryview(bytes(enc)))) is None
    ops = codecs.filter_ops(["gzip"])
    with pytest.raises(ChunkDecodeError, match=r"chunk c-x \(key k/0_0\)"):
        codecs.decode_chunk(bytes(enc), ops, itemsize=4, nbytes=len(raw), chunk_id="c-x", key="k/0_0")


def test_libdeflate_releases_the_gil_while_it_inflates() -> None:
    """Threads decode chunks in parallel only if the inflater lets go of the GIL (deflate >= 0.9 does)."""
    import threading
    import time

    pytest.importorskip("deflate")
    raw = np.random.default_rng(3).integers(0, 4, 64 << 20, dtype=np.uint8).tobytes()  # 64 MiB, slow to inflate
    stream = memoryview(zlib.compress(raw, 1))
    ticks = 0
    done = threading.Event()

    def spin() -> None:
        nonlocal ticks
        while not done.is_set():
            ticks += 1

    t = threading.Thread(target=spin)
    t.start()
    try:
        time.sleep(0.01)
        before = ticks
        t0 = time.perf_counter()
        assert inflate_codec.inflate_exact(stream, len(raw)) == raw
        spent = time.perf_counter() - t0
        during = ticks - before
    finally:
        done.set()
        t.join()
    assert spent > 0.02 and during > 10_000, (spent, during)  # the other thread ran while libdeflate worked
