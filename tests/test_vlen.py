"""Tests for hsds_backends.vlen: variable-length element bytes (docs/hsds-format.md §3.2)."""

from __future__ import annotations

import struct
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hsds_backends import vlen_dtype
from hsds_backends.vlen import MAX_VLEN_ELEMENT, decode_vlen, encode_vlen

FAST = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
S = vlen_dtype(str)
B = vlen_dtype(bytes)
I4 = vlen_dtype("<i4")


def n(count: int) -> bytes:
    return struct.pack("<i", count)


def assert_obj_equal(a: np.ndarray, b: np.ndarray) -> None:
    assert a.shape == b.shape
    for x, y in zip(a.reshape(-1), b.reshape(-1), strict=False):
        if isinstance(x, np.ndarray):
            assert isinstance(y, np.ndarray)
            assert x.dtype == y.dtype
            np.testing.assert_array_equal(x, y)
        elif isinstance(x, tuple):
            assert_obj_equal(np.array(x + (None,), dtype=object)[:-1], np.array(y + (None,), dtype=object)[:-1])
        else:
            assert type(x) is type(y)
            assert x == y


# --------------------------------------------------------------------------- the verified example


def test_verified_string_example() -> None:
    # §3.2 verified: ["a","bc",""] → 01000000 61 02000000 6263 00000000
    raw = bytes.fromhex("010000006102000000626300000000")
    assert encode_vlen(np.array(["a", "bc", ""], dtype=S), S) == raw
    out = decode_vlen(raw, S, 3)
    assert out.dtype == S
    assert out.tolist() == ["a", "bc", ""]


def test_bytes_tag_gives_bytes() -> None:
    raw = n(1) + b"a" + n(2) + b"bc" + n(0)
    assert encode_vlen(np.array([b"a", b"bc", b""], dtype=B), B) == raw
    assert decode_vlen(raw, B, 3).tolist() == [b"a", b"bc", b""]


def test_utf8_count_is_bytes_not_characters() -> None:
    raw = encode_vlen(np.array(["é€"], dtype=S), S)
    assert raw == n(5) + "é€".encode()
    assert decode_vlen(raw, S, 1)[0] == "é€"


def test_unset_elements_encode_as_count_zero() -> None:
    # np.empty(object) holds None: HSDS writes count 0 for an unset element
    for dt in (S, B, I4):
        assert encode_vlen(np.empty(3, dtype=dt), dt) == n(0) * 3


def test_vlen_sequence_counts_bytes() -> None:
    # §3.2: for H5T_VLEN the count is bytes, not elements
    arr = np.empty(2, dtype=I4)
    arr[0] = np.array([1, 2, 3], dtype="<i4")
    arr[1] = np.array([], dtype="<i4")
    raw = encode_vlen(arr, I4)
    assert raw == n(12) + np.array([1, 2, 3], "<i4").tobytes() + n(0)
    out = decode_vlen(raw, I4, 2)
    np.testing.assert_array_equal(out[0], [1, 2, 3])
    assert out[0].dtype == np.dtype("<i4") and out[1].size == 0


def test_big_endian_vlen_base_is_stored_big_endian() -> None:
    dt = vlen_dtype(">i2")
    arr = np.empty(1, dtype=dt)
    arr[0] = np.array([1, 2], dtype=">i2")
    raw = encode_vlen(arr, dt)
    assert raw == n(4) + b"\x00\x01\x00\x02"  # the count stays little-endian
    out = decode_vlen(raw, dt, 1)
    assert out[0].dtype.str == ">i2" and out[0].tolist() == [1, 2]


def test_encode_lists_and_str_for_bytes() -> None:
    arr = np.empty(2, dtype=I4)
    arr[0] = [5, 6]
    arr[1] = None
    assert encode_vlen(arr, I4) == n(8) + np.array([5, 6], "<i4").tobytes() + n(0)
    b = np.empty(1, dtype=B)
    b[0] = "é"  # a str in a bytes-tagged array is written as UTF-8
    assert encode_vlen(b, B) == n(2) + "é".encode()


def test_multidimensional_arrays_are_c_order() -> None:
    arr = np.array([["a", "b"], ["c", "dd"]], dtype=S)
    raw = encode_vlen(arr, S)
    assert raw == n(1) + b"a" + n(1) + b"b" + n(1) + b"c" + n(2) + b"dd"
    assert decode_vlen(raw, S, 4).reshape(2, 2).tolist() == [["a", "b"], ["c", "dd"]]


def test_compound_with_vlen_members_field_by_field() -> None:
    # §3.2: compounds serialise field by field, fixed fields as raw bytes
    dt = np.dtype([("a", "<i2"), ("s", S), ("v", I4), ("f", ">f4")])
    arr = np.empty(2, dtype=dt)
    arr[0] = (1, "x", np.array([1, 2], "<i4"), 1.5)
    arr[1] = (-2, "", np.array([], "<i4"), -0.5)
    raw = encode_vlen(arr, dt)
    want = (
        np.int16(1).tobytes()
        + n(1)
        + b"x"
        + n(8)
        + np.array([1, 2], "<i4").tobytes()
        + np.array(1.5, ">f4").tobytes()
        + np.int16(-2).tobytes()
        + n(0)
        + n(0)
        + np.array(-0.5, ">f4").tobytes()
    )
    assert raw == want
    out = decode_vlen(raw, dt, 2)
    assert out.dtype == dt
    assert out[0]["a"] == 1 and out[0]["s"] == "x" and out[0]["v"].tolist() == [1, 2] and out[0]["f"] == 1.5
    assert out[1]["a"] == -2 and out[1]["s"] == "" and out[1]["v"].size == 0 and out[1]["f"] == -0.5


def test_nested_compound_with_vlen() -> None:
    inner = np.dtype([("k", "u1"), ("name", S)])
    dt = np.dtype([("id", "<i4"), ("inner", inner)])
    arr = np.empty(1, dtype=dt)
    arr[0] = (7, (3, "hey"))
    raw = encode_vlen(arr, dt)
    assert raw == np.int32(7).tobytes() + b"\x03" + n(3) + b"hey"
    out = decode_vlen(raw, dt, 1)
    assert out[0]["id"] == 7 and out[0]["inner"]["k"] == 3 and out[0]["inner"]["name"] == "hey"


def test_zero_elements() -> None:
    assert encode_vlen(np.empty(0, dtype=S), S) == b""
    assert decode_vlen(b"", S, 0).shape == (0,)


def test_max_element_is_allowed() -> None:
    assert MAX_VLEN_ELEMENT == 1_000_000
    raw = n(MAX_VLEN_ELEMENT) + bytes(MAX_VLEN_ELEMENT)
    out = decode_vlen(raw, B, 1)
    assert len(out[0]) == MAX_VLEN_ELEMENT


def test_memoryview_and_bytearray_input() -> None:
    raw = n(2) + b"hi"
    assert decode_vlen(memoryview(raw), S, 1)[0] == "hi"
    assert decode_vlen(bytearray(raw), S, 1)[0] == "hi"


# --------------------------------------------------------------------------- malformed data


@pytest.mark.parametrize(
    ("raw", "dt", "count", "message"),
    [
        (n(1), S, 1, r"element 0: element of 1 bytes at offset 0 runs past the end of the data \(4 bytes\)"),
        (n(1) + b"ab", S, 1, "1 trailing bytes after 1 elements"),
        (n(0) + b"\x00", S, 1, "1 trailing bytes after 1 elements"),
        (n(-1), S, 1, "element 0: byte count -1 at offset 0 is outside 0…1000000"),
        (n(MAX_VLEN_ELEMENT + 1), B, 1, "element 0: byte count 1000001 at offset 0 is outside 0…1000000"),
        (b"\x01\x00", S, 1, r"element 0: byte count at offset 0 runs past the end of the data \(2 bytes\)"),
        (n(0), S, 2, r"element 1: byte count at offset 4 runs past the end of the data \(4 bytes\)"),
        (n(3) + b"abc", I4, 1, "element 0: vlen byte count 3 is not a multiple of the base item size 4"),
        (b"\x01", np.dtype([("a", "<i2"), ("s", S)]), 1, "element 0: fixed-size member runs past the end of the data"),
        (b"", S, 1, "element 0: byte count at offset 0 runs past the end"),
    ],
)
def test_malformed(raw: bytes, dt: np.dtype[Any], count: int, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        decode_vlen(raw, dt, count)


def test_invalid_utf8_is_value_error() -> None:
    with pytest.raises(ValueError, match="utf-8"):
        decode_vlen(n(2) + b"\xff\xfe", S, 1)


# --------------------------------------------------------------------------- properties


@FAST
@given(st.lists(st.text(max_size=20), max_size=30))
def test_round_trip_str(values: list[str]) -> None:
    arr = np.empty(len(values), dtype=S)
    arr[:] = values
    raw = encode_vlen(arr, S)
    assert len(raw) == sum(4 + len(v.encode()) for v in values)
    assert decode_vlen(raw, S, len(values)).tolist() == values


@FAST
@given(st.lists(st.binary(max_size=20), max_size=30))
def test_round_trip_bytes(values: list[bytes]) -> None:
    arr = np.empty(len(values), dtype=B)
    for i, v in enumerate(values):
        arr[i] = v
    assert decode_vlen(encode_vlen(arr, B), B, len(values)).tolist() == values


@FAST
@given(
    st.sampled_from(["<i4", ">i8", "<f8", "u1", ">u2"]),
    st.lists(st.lists(st.integers(0, 100), max_size=8), max_size=12),
)
def test_round_trip_sequences(base: str, values: list[list[int]]) -> None:
    dt = vlen_dtype(base)
    arr = np.empty(len(values), dtype=dt)
    for i, v in enumerate(values):
        arr[i] = np.array(v, dtype=base)
    out = decode_vlen(encode_vlen(arr, dt), dt, len(values))
    assert_obj_equal(out, arr)


@FAST
@given(
    st.lists(
        st.tuples(
            st.integers(-(2**15), 2**15 - 1),
            st.text(max_size=6),
            st.binary(max_size=6),
            st.lists(st.integers(-5, 5), max_size=4),
        ),
        max_size=10,
    )
)
def test_round_trip_compound(rows: list[tuple[int, str, bytes, list[int]]]) -> None:
    dt = np.dtype([("i", ">i2"), ("s", S), ("b", B), ("v", vlen_dtype("<i8"))])
    arr = np.empty(len(rows), dtype=dt)
    for k, (i, s, b, v) in enumerate(rows):
        arr[k] = (i, s, b, np.array(v, dtype="<i8"))
    out = decode_vlen(encode_vlen(arr, dt), dt, len(rows))
    for k, (i, s, b, v) in enumerate(rows):
        assert out[k]["i"] == i and out[k]["s"] == s and out[k]["b"] == b
        assert out[k]["v"].tolist() == v


@FAST
@given(st.binary(max_size=64), st.integers(0, 5))
def test_fuzz_decode_only_value_error(raw: bytes, count: int) -> None:
    dt = np.dtype([("a", "<i2"), ("s", S), ("v", I4)])
    try:
        out = decode_vlen(raw, dt, count)
    except ValueError:
        return
    assert out.shape == (count,)
    assert encode_vlen(out, dt) == raw  # a successful parse consumed exactly the input
