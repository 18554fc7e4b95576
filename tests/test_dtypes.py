"""Tests for hsds_backends.dtypes: HSDS type JSON <-> numpy dtypes (docs/hsds-format.md §2.2)."""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from hsds_backends import vlen_dtype
from hsds_backends.dtypes import PREDEFINED, dtype_from_type_json, has_vlen, type_json_from_dtype, vlen_of
from hsds_backends.errors import HsdsBackendsError, TypeJsonError

I32LE = {"class": "H5T_INTEGER", "base": "H5T_STD_I32LE"}
FAST = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def same(a: np.dtype[Any], b: np.dtype[Any]) -> None:
    """Exact equality incl. byte order, layout and the vlen/enum tags."""
    assert a == b
    assert a.str == b.str
    assert a.itemsize == b.itemsize
    assert (a.metadata or {}) == (b.metadata or {})
    if a.names is not None:
        assert a.names == b.names
        for n in a.names:
            assert a.fields[n][1] == b.fields[n][1]  # offsets
            same(a.fields[n][0], b.fields[n][0])


# --------------------------------------------------------------------------- integers / floats


@pytest.mark.parametrize("name", PREDEFINED)
def test_predefined_names(name: str) -> None:
    m = re.match(r"H5T_(STD_([IU])|IEEE_F)(\d+)(LE|BE)$", name)
    assert m
    bits, order = int(m.group(3)), m.group(4)
    kind = (m.group(2) or "f").lower()
    want = np.dtype(("<" if order == "LE" else ">") + kind + str(bits // 8))
    # a bare predefined name is accepted wherever a type is expected (§2.2 getBaseTypeJson)
    same(dtype_from_type_json(name), want)
    cls = "H5T_FLOAT" if kind == "f" else "H5T_INTEGER"
    same(dtype_from_type_json({"class": cls, "base": name}), want)
    # nested base object form
    same(dtype_from_type_json({"class": cls, "base": {"class": cls, "base": name}}), want)
    # and back: 1-byte types are named LE whatever the numpy byte order
    tj = type_json_from_dtype(want)
    assert tj["class"] == cls
    assert tj["base"] == (name if bits > 8 else name.replace("BE", "LE"))
    same(dtype_from_type_json(tj), want)


def test_predefined_list_is_complete() -> None:
    assert len(PREDEFINED) == 2 * 4 * 2 + 3 * 2
    assert "H5T_STD_I32LE" in PREDEFINED and "H5T_IEEE_F16BE" in PREDEFINED


@pytest.mark.parametrize(
    ("type_json", "dtype_str"),
    [
        ({"class": "H5T_INTEGER", "base": "H5T_STD_I32LE"}, "<i4"),
        ({"class": "H5T_INTEGER", "base": "H5T_STD_U16BE"}, ">u2"),
        ({"class": "H5T_INTEGER", "base": "H5T_STD_I16BE"}, ">i2"),
        ({"class": "H5T_INTEGER", "base": "H5T_STD_U64LE"}, "<u8"),
        ({"class": "H5T_FLOAT", "base": "H5T_IEEE_F16LE"}, "<f2"),
        ({"class": "H5T_FLOAT", "base": "H5T_IEEE_F32BE"}, ">f4"),
        ({"class": "H5T_FLOAT", "base": "H5T_IEEE_F64LE"}, "<f8"),
    ],
)
def test_numeric_table(type_json: dict[str, Any], dtype_str: str) -> None:
    dt = dtype_from_type_json(type_json)
    assert dt.str == dtype_str
    assert type_json_from_dtype(dt) == type_json


def test_big_endian_bytes_are_big_endian() -> None:
    # §2.2 verified: H5T_STD_I16BE values 0..4 stored as 00 00 00 01 … 00 04
    dt = dtype_from_type_json({"class": "H5T_INTEGER", "base": "H5T_STD_I16BE"})
    assert np.arange(5, dtype=dt).tobytes() == bytes.fromhex("0000 0001 0002 0003 0004")


def test_native_byte_order_is_named_explicitly() -> None:
    tj = type_json_from_dtype(np.dtype("=i4"))
    assert tj["base"] == ("H5T_STD_I32LE" if np.little_endian else "H5T_STD_I32BE")


# --------------------------------------------------------------------------- strings


@pytest.mark.parametrize("charset", ["H5T_CSET_ASCII", "H5T_CSET_UTF8"])
@pytest.mark.parametrize("pad", ["H5T_STR_NULLPAD", "H5T_STR_NULLTERM", "H5T_STR_SPACEPAD"])
def test_fixed_string_is_bytes_for_both_charsets(charset: str, pad: str) -> None:
    dt = dtype_from_type_json({"class": "H5T_STRING", "charSet": charset, "length": 7, "strPad": pad})
    same(dt, np.dtype("S7"))


def test_fixed_string_round_trip() -> None:
    tj = type_json_from_dtype(np.dtype("S5"))
    assert tj == {"class": "H5T_STRING", "charSet": "H5T_CSET_ASCII", "length": 5, "strPad": "H5T_STR_NULLPAD"}
    same(dtype_from_type_json(tj), np.dtype("S5"))


@pytest.mark.parametrize(("charset", "tag"), [("H5T_CSET_UTF8", str), ("H5T_CSET_ASCII", bytes)])
def test_variable_string(charset: str, tag: type) -> None:
    tj = {"class": "H5T_STRING", "charSet": charset, "length": "H5T_VARIABLE", "strPad": "H5T_STR_NULLTERM"}
    dt = dtype_from_type_json(tj)
    assert dt.kind == "O"
    assert vlen_of(dt) is tag
    assert has_vlen(dt)
    assert type_json_from_dtype(dt) == tj
    same(dt, vlen_dtype(tag))


def test_variable_string_default_charset_is_bytes() -> None:
    assert vlen_of(dtype_from_type_json({"class": "H5T_STRING", "length": "H5T_VARIABLE"})) is bytes


# --------------------------------------------------------------------------- vlen / opaque / array


@pytest.mark.parametrize("base", ["<i4", ">i2", "<f8", "u1"])
def test_vlen_sequence(base: str) -> None:
    dt = vlen_dtype(base)
    tj = type_json_from_dtype(dt)
    assert tj["class"] == "H5T_VLEN"
    back = dtype_from_type_json(tj)
    assert back.kind == "O"
    same(vlen_of(back), np.dtype(base))
    assert has_vlen(back)


def test_vlen_from_bare_base_name() -> None:
    dt = dtype_from_type_json({"class": "H5T_VLEN", "base": "H5T_STD_I16BE"})
    assert vlen_of(dt).str == ">i2"


def test_non_vlen_helpers() -> None:
    assert vlen_of(np.dtype("<i4")) is None
    assert vlen_of(np.dtype("O")) is None
    assert not has_vlen(np.dtype([("a", "<i4")]))
    assert has_vlen(np.dtype([("a", "<i4"), ("s", vlen_dtype(str))]))


@pytest.mark.parametrize("size", [1, 7, 16])
def test_opaque(size: int) -> None:
    dt = dtype_from_type_json({"class": "H5T_OPAQUE", "size": size})
    same(dt, np.dtype(f"V{size}"))
    assert type_json_from_dtype(dt) == {"class": "H5T_OPAQUE", "size": size}


@pytest.mark.parametrize(
    ("type_json", "want"),
    [
        ({"class": "H5T_ARRAY", "dims": [2, 3], "base": "H5T_STD_I16LE"}, np.dtype(("<i2", (2, 3)))),
        (
            {"class": "H5T_ARRAY", "dims": [4], "base": {"class": "H5T_FLOAT", "base": "H5T_IEEE_F64BE"}},
            np.dtype((">f8", (4,))),
        ),
        (
            {
                "class": "H5T_ARRAY",
                "dims": [2],
                "base": {"class": "H5T_STRING", "length": 3, "charSet": "H5T_CSET_ASCII"},
            },
            np.dtype(("S3", (2,))),
        ),
    ],
)
def test_array(type_json: dict[str, Any], want: np.dtype[Any]) -> None:
    dt = dtype_from_type_json(type_json)
    same(dt, want)
    assert dt.itemsize == want.subdtype[0].itemsize * int(np.prod(want.subdtype[1]))  # base × Π dims
    back = type_json_from_dtype(dt)
    assert back["class"] == "H5T_ARRAY" and back["dims"] == list(want.subdtype[1])
    same(dtype_from_type_json(back), want)


def test_array_of_array() -> None:
    tj = {"class": "H5T_ARRAY", "dims": [3], "base": {"class": "H5T_ARRAY", "dims": [2], "base": I32LE}}
    dt = dtype_from_type_json(tj)
    assert dt.itemsize == 24
    assert np.zeros(4, dtype=dt).shape == (4, 3, 2)  # numpy folds the dims on use
    assert np.zeros(4, dtype=dt).dtype.str == "<i4"
    assert dtype_from_type_json(type_json_from_dtype(dt)) == dt


def test_array_of_vlen_refused() -> None:
    with pytest.raises(TypeJsonError, match="array types of variable-length members are not supported"):
        dtype_from_type_json(
            {"class": "H5T_ARRAY", "dims": [2], "base": {"class": "H5T_STRING", "length": "H5T_VARIABLE"}}
        )


# --------------------------------------------------------------------------- enum


def test_enum_keeps_base_and_mapping() -> None:
    tj = {
        "class": "H5T_ENUM",
        "base": {"class": "H5T_INTEGER", "base": "H5T_STD_I16BE"},
        "mapping": {"RED": 0, "GREEN": 1, "BLUE": 7},
    }
    dt = dtype_from_type_json(tj)
    assert dt.str == ">i2"
    assert dt.metadata == {"enum": {"RED": 0, "GREEN": 1, "BLUE": 7}}
    assert type_json_from_dtype(dt) == tj


@pytest.mark.parametrize("base", [{"class": "H5T_INTEGER", "base": "H5T_STD_I8LE"}, "H5T_STD_I8LE", "H5T_STD_I8BE"])
def test_enum_true_false_int8_is_bool(base: Any) -> None:
    # §2.2 exception: int8 base with exactly TRUE/FALSE → numpy bool
    dt = dtype_from_type_json({"class": "H5T_ENUM", "base": base, "mapping": {"FALSE": 0, "TRUE": 1}})
    same(dt, np.dtype(bool))


@pytest.mark.parametrize(
    ("base", "mapping", "str_"),
    [
        ("H5T_STD_U8LE", {"FALSE": 0, "TRUE": 1}, "|u1"),  # not int8
        ("H5T_STD_I16LE", {"FALSE": 0, "TRUE": 1}, "<i2"),
        ("H5T_STD_I8LE", {"FALSE": 0, "TRUE": 1, "MAYBE": 2}, "|i1"),  # not exactly TRUE/FALSE
        ("H5T_STD_I8LE", {"false": 0, "true": 1}, "|i1"),  # case matters
    ],
)
def test_enum_bool_exception_is_narrow(base: str, mapping: dict[str, int], str_: str) -> None:
    dt = dtype_from_type_json({"class": "H5T_ENUM", "base": base, "mapping": mapping})
    assert dt.kind != "b"
    assert dt.str == str_
    assert dt.metadata == {"enum": mapping}


def test_bool_dtype_writes_true_false_enum() -> None:
    tj = type_json_from_dtype(np.dtype(bool))
    assert tj == {
        "class": "H5T_ENUM",
        "base": {"class": "H5T_INTEGER", "base": "H5T_STD_I8LE"},
        "mapping": {"FALSE": 0, "TRUE": 1},
    }
    same(dtype_from_type_json(tj), np.dtype(bool))
    assert np.array([True, False]).tobytes() == b"\x01\x00"


# --------------------------------------------------------------------------- reference


@pytest.mark.parametrize("base", ["H5T_STD_REF_OBJ", "H5T_STD_REF_DSETREG"])
def test_reference_is_s48(base: str) -> None:
    same(dtype_from_type_json({"class": "H5T_REFERENCE", "base": base}), np.dtype("S48"))


def test_reference_with_length() -> None:
    same(dtype_from_type_json({"class": "H5T_REFERENCE", "base": "H5T_STD_REF_OBJ", "length": 60}), np.dtype("S60"))


# --------------------------------------------------------------------------- compound


def test_compound_is_packed_in_field_order() -> None:
    tj = {
        "class": "H5T_COMPOUND",
        "fields": [
            {"name": "b", "type": "H5T_STD_U8LE"},
            {"name": "a", "type": {"class": "H5T_FLOAT", "base": "H5T_IEEE_F64BE"}},
            {"name": "s", "type": {"class": "H5T_STRING", "length": 3, "charSet": "H5T_CSET_ASCII"}},
        ],
    }
    dt = dtype_from_type_json(tj)
    assert dt.names == ("b", "a", "s")
    assert [dt.fields[n][1] for n in dt.names] == [0, 1, 9]  # no alignment padding
    assert dt.itemsize == 12
    assert dt.fields["a"][0].str == ">f8"
    assert type_json_from_dtype(dt)["fields"][1] == {
        "name": "a",
        "type": {"class": "H5T_FLOAT", "base": "H5T_IEEE_F64BE"},
    }
    same(dtype_from_type_json(type_json_from_dtype(dt)), dt)


def test_padded_numpy_compound_is_written_packed() -> None:
    padded = np.dtype({"names": ["a", "b"], "formats": ["u1", "<f8"], "offsets": [0, 8], "itemsize": 16})
    back = dtype_from_type_json(type_json_from_dtype(padded))
    assert back.names == ("a", "b")
    assert back.itemsize == 9
    assert back.fields["b"][1] == 1


def test_nested_compound_with_vlen_and_array() -> None:
    inner = np.dtype([("x", "<i2"), ("y", ">f4")])
    dt = np.dtype(
        [("id", "<i8"), ("pos", inner), ("name", vlen_dtype(str)), ("v", vlen_dtype("<i4")), ("m", ("<f4", (2, 2)))]
    )
    tj = type_json_from_dtype(dt)
    assert [f["name"] for f in tj["fields"]] == ["id", "pos", "name", "v", "m"]
    assert tj["fields"][2]["type"]["length"] == "H5T_VARIABLE"
    assert tj["fields"][3]["type"]["class"] == "H5T_VLEN"
    back = dtype_from_type_json(tj)
    assert back.names == dt.names
    assert vlen_of(back.fields["name"][0]) is str  # tag survives inside compounds
    assert vlen_of(back.fields["v"][0]) == np.dtype("<i4")
    assert back.fields["pos"][0] == inner
    assert back.fields["m"][0] == np.dtype(("<f4", (2, 2)))
    assert has_vlen(back)


def test_compound_non_ascii_name_refused() -> None:
    with pytest.raises(TypeJsonError, match="compound field name 'é' must be an ASCII string"):
        dtype_from_type_json({"class": "H5T_COMPOUND", "fields": [{"name": "é", "type": I32LE}]})


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("type_json", "message"),
    [
        ({"class": "H5T_FOO"}, "unknown type class 'H5T_FOO'; expected one of H5T_INTEGER, H5T_FLOAT"),
        ({}, "unknown type class None"),
        ([], r"type JSON must be an object or a predefined name, got \[\]"),
        (None, "type JSON must be an object or a predefined name, got None"),
        (32, "type JSON must be an object or a predefined name, got 32"),
        ("H5T_STD_I128LE", r"unknown base type 'H5T_STD_I128LE'; expected an integer 'H5T_STD_\[IU\]"),
        ("H5T_IEEE_F80LE", "unknown base type 'H5T_IEEE_F80LE'"),
        ("h5t_std_i32le", "unknown base type 'h5t_std_i32le'"),
        ({"class": "H5T_INTEGER"}, "of class 'H5T_INTEGER' is missing key 'base'"),
        ({"class": "H5T_INTEGER", "base": "H5T_STD_X32LE"}, "unknown base type 'H5T_STD_X32LE'"),
        ({"class": "H5T_INTEGER", "base": 5}, "is malformed"),
        ({"class": "H5T_STRING", "length": 0}, "string type length 0 must be a positive integer or 'H5T_VARIABLE'"),
        ({"class": "H5T_STRING"}, "string type length None must be a positive integer"),
        ({"class": "H5T_STRING", "length": "7"}, "string type length '7' must be a positive integer"),
        ({"class": "H5T_VLEN"}, "missing key 'base'"),
        ({"class": "H5T_OPAQUE"}, "missing key 'size'"),
        ({"class": "H5T_ARRAY", "base": I32LE}, "missing key 'dims'"),
        ({"class": "H5T_ARRAY", "dims": 5, "base": I32LE}, "is malformed"),
        ({"class": "H5T_COMPOUND"}, "missing key 'fields'"),
        ({"class": "H5T_COMPOUND", "fields": [{"name": "a"}]}, "missing key 'type'"),
        ({"class": "H5T_COMPOUND", "fields": [5]}, "is malformed"),
        ({"class": "H5T_ENUM", "mapping": {"A": 1}}, "missing key 'base'"),
    ],
)
def test_type_json_errors(type_json: Any, message: str) -> None:
    with pytest.raises(TypeJsonError, match=message):
        dtype_from_type_json(type_json)


@pytest.mark.parametrize(
    "type_json",
    [
        {"class": "H5T_ARRAY", "dims": ["a"], "base": I32LE},
        {"class": "H5T_ARRAY", "dims": [-1], "base": I32LE},
        {"class": "H5T_OPAQUE", "size": "x"},
        {"class": "H5T_REFERENCE", "length": "x"},
        {"class": "H5T_COMPOUND", "fields": [{"name": "a", "type": I32LE}, {"name": "a", "type": I32LE}]},
    ],
)
def test_type_json_value_errors_are_type_json_errors(type_json: Any) -> None:
    # int("a"), negative dims and duplicate field names raise ValueError inside numpy;
    # the public contract is TypeJsonError (never a bare ValueError, docs/architecture.md §8)
    with pytest.raises(TypeJsonError, match="type JSON .* is malformed"):
        dtype_from_type_json(type_json)


@pytest.mark.parametrize(
    ("dtype", "message"),
    [
        (np.dtype("c16"), "dtype complex128 cannot be stored in HSDS"),
        (np.dtype("U3"), "dtype <U3 cannot be stored in HSDS"),
        (np.dtype("M8[s]"), r"dtype datetime64\[s\] cannot be stored in HSDS"),
        (np.dtype("O"), r"object dtypes need metadata \{'vlen': bytes\|str\|dtype\}; use hsds_backends.vlen_dtype\(\)"),
        (np.dtype([("a", "c8")]), "dtype complex64 cannot be stored"),
    ],
)
def test_type_json_from_dtype_errors(dtype: np.dtype[Any], message: str) -> None:
    with pytest.raises(TypeJsonError, match=message):
        type_json_from_dtype(dtype)


def test_type_json_error_is_ours_not_value_error() -> None:
    assert issubclass(TypeJsonError, HsdsBackendsError)
    assert not issubclass(TypeJsonError, ValueError)


# --------------------------------------------------------------------------- property: round trip


_SCALARS = st.sampled_from(
    [
        "<i1",
        "u1",
        "<i2",
        ">i2",
        "<u4",
        ">u4",
        "<i8",
        ">u8",
        "<f2",
        ">f2",
        "<f4",
        ">f4",
        "<f8",
        ">f8",
        "S1",
        "S9",
        "V3",
        "?",
    ]
)


def _dtypes() -> st.SearchStrategy[np.dtype[Any]]:
    base = _SCALARS.map(np.dtype)
    arrays = st.tuples(_SCALARS.filter(lambda s: s != "?"), st.lists(st.integers(1, 3), min_size=1, max_size=2)).map(
        lambda t: np.dtype((t[0], tuple(t[1])))
    )
    vlens = st.one_of(
        st.just(vlen_dtype(str)),
        st.just(vlen_dtype(bytes)),
        _SCALARS.filter(lambda s: s not in ("?",) and not s.startswith(("S", "V"))).map(vlen_dtype),
    )
    leaf = st.one_of(base, arrays, vlens)

    def compound(children: st.SearchStrategy[np.dtype[Any]]) -> st.SearchStrategy[np.dtype[Any]]:
        return st.lists(children, min_size=1, max_size=4).map(
            lambda fs: np.dtype([(f"f{i}", f) for i, f in enumerate(fs)])
        )

    return st.recursive(leaf, compound, max_leaves=6)


@FAST
@given(_dtypes())
def test_round_trip_property(dt: np.dtype[Any]) -> None:
    tj = type_json_from_dtype(dt)
    back = dtype_from_type_json(tj)
    assert back == dt
    assert back.itemsize == dt.itemsize  # packed already, so unchanged
    assert type_json_from_dtype(back) == tj
    assert has_vlen(back) == has_vlen(dt)


@FAST
@example({"class": "H5T_OPAQUE", "size": "x"})
@given(
    st.recursive(
        st.one_of(
            st.none(),
            st.integers(),
            st.text(max_size=12),
            st.sampled_from(PREDEFINED + ("H5T_VARIABLE", "H5T_INTEGER", "H5T_COMPOUND")),
        ),
        lambda inner: st.one_of(
            st.lists(inner, max_size=3),
            st.dictionaries(
                st.sampled_from(
                    ["class", "base", "length", "size", "dims", "fields", "name", "type", "mapping", "charSet"]
                ),
                inner,
                max_size=4,
            ),
        ),
        max_leaves=10,
    )
)
def test_fuzz_type_json_only_raises_type_json_error(tj: Any) -> None:
    try:
        dt = dtype_from_type_json(tj)
    except TypeJsonError:
        return
    assert isinstance(dt, np.dtype)
