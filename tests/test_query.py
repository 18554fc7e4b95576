"""Tests for hsds_backends.query: both HSDS query dialects, exactness, errors, round trips, fuzzing."""

from __future__ import annotations

import operator
import pickle
import re
import string
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hsds_backends.errors import FieldError, QueryError
from hsds_backends.query import MAX_NESTING, Query, parse_query

LE = np.dtype([("id", "<i8"), ("temp", "<f4"), ("station", "S8")])
BE = np.dtype([("id", ">i8"), ("temp", ">f4"), ("station", "S8")])
BIG = 2**63 - 1

ROWS = [
    (0, 0.5, b"AB"),
    (1, 1.5, b"CD"),
    (2, 2.5, b"AB"),
    (3, 20.0, b""),
    (4, 25.0, b"AB"),
    (5, float("nan"), b"ABCDEFGH"),
    (6, -3.0, b"\xc3\xa9"),
    (BIG, 21.0, b"AB"),
    (BIG - 1, float("inf"), b"CD"),
    (-(2**63), -float("inf"), b"AB"),
]
IDS = [r[0] for r in ROWS]

FAST = settings(deadline=None, max_examples=150, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(params=[LE, BE], ids=["little-endian", "big-endian"])
def rows(request: pytest.FixtureRequest) -> np.ndarray:
    return np.array(ROWS, dtype=request.param)


def mask_of(text: str, rows: np.ndarray) -> np.ndarray:
    return parse_query(text, rows.dtype).evaluate(rows)


# ----------------------------------------------------------------------------------------------
# Both dialects against a numpy oracle

DIALECT_CASES: list[tuple[list[str], Any]] = [
    (
        [
            "(temp > 20) & (station == b'AB')",
            "temp > 20 AND station == b'AB'",
            "temp > 20 & station == b'AB'",
            "temp>20&station==b'AB'",
            "20 < temp and b'AB' == station",
            '(20 < temp) & (station == "AB")',
            "temp > 2e1 And station == B'AB'",
        ],
        lambda r: (r["temp"] > 20) & (r["station"] == b"AB"),
    ),
    (
        ["(id < 0) | (temp >= 1.5)", "id < 0 OR temp >= 1.5", "id < 0 | temp >= 1.5", "id<0 or 1.5<=temp"],
        lambda r: (r["id"] < 0) | (r["temp"] >= 1.5),
    ),
    (
        ["~(id == 3)", "NOT id == 3", "not (id == 3)", "~ id == 3", "~~~(id == 3)", "NOT NOT NOT id == 3"],
        lambda r: ~(r["id"] == 3),
    ),
    (
        [
            "id > 1 | temp < 2 & station == b'AB'",
            "(id > 1) | ((temp < 2) & (station == b'AB'))",
            "id > 1 OR temp < 2 AND station == 'AB'",
            "id > 1 or (temp < 2 and station == b'AB')",
        ],
        lambda r: (r["id"] > 1) | ((r["temp"] < 2) & (r["station"] == b"AB")),
    ),
    (
        ["(id > 1 | temp < 2) & station == b'AB'", "((id > 1) | (temp < 2)) & (station == b'AB')"],
        lambda r: ((r["id"] > 1) | (r["temp"] < 2)) & (r["station"] == b"AB"),
    ),
    (
        ["NOT id > 1 AND temp < 2", "(~(id > 1)) & (temp < 2)", "~id > 1 & temp < 2"],
        lambda r: ~(r["id"] > 1) & (r["temp"] < 2),
    ),
    (["id > 2.5", "2.5 < id", "(id > 2.5)"], lambda r: r["id"] > 2.5),
    (["temp > id", "id < temp", "(temp > id)"], lambda r: r["temp"] > r["id"]),
    (["id == temp", "temp == id"], lambda r: r["id"] == r["temp"]),
    (["temp > -1.5e1", "temp > -15", "temp > - 15.0", "-15 < temp", "temp > -.15E2"], lambda r: r["temp"] > -15),
    (["temp <= 5.", "temp <= +5", "temp <= 5e0"], lambda r: r["temp"] <= 5),
    (["station > b'AB'", "station > 'AB'", 'station > "AB"'], lambda r: r["station"] > b"AB"),
    (["station == b''", "station == ''"], lambda r: r["station"] == b""),
    (["station == 'é'", "station == b'\\xc3\\xa9'", "station == '\\u00e9'"], lambda r: r["station"] == "é".encode()),
    (["station != b'ABCDEFGHIJ'"], lambda r: r["station"] != b"ABCDEFGHIJ"),
    (["station == station", "NOT station != station"], lambda r: np.ones(len(r), dtype=bool)),
    (["temp == temp", "~(temp != temp)"], lambda r: r["temp"] == r["temp"]),  # False for NaN
]


@pytest.mark.parametrize(("texts", "oracle"), DIALECT_CASES, ids=[c[0][0] for c in DIALECT_CASES])
def test_dialects_match_numpy_oracle(rows: np.ndarray, texts: list[str], oracle: Any) -> None:
    expected = oracle(rows)
    for text in texts:
        got = mask_of(text, rows)
        assert got.dtype == bool and got.shape == (len(rows),)
        np.testing.assert_array_equal(got, expected, err_msg=text)


def test_hand_computed_masks(rows: np.ndarray) -> None:
    # Integer field against a float: numpy semantics, 2.5 selects 3, 4, ...
    assert list(mask_of("id > 2.5", rows)) == [False, False, False, True, True, True, True, True, True, False]
    assert list(mask_of("temp > 20 & station == b'AB'", rows)) == [False] * 4 + [True, False, False, True] + [False] * 2
    assert list(mask_of("where station in (b'CD', 'é')", rows)) == [v in (b"CD", b"\xc3\xa9") for *_, v in ROWS]


def test_int64_comparisons_are_exact_near_2_63(rows: np.ndarray) -> None:
    # float64 cannot tell 2**63-1 from 2**63-2; an exact comparison can.
    assert list(mask_of(f"id == {BIG}", rows)) == [v == BIG for v in IDS]
    assert list(mask_of(f"id >= {BIG - 1}", rows)) == [v >= BIG - 1 for v in IDS]
    assert list(mask_of(f"id < {BIG}", rows)) == [v < BIG for v in IDS]
    assert list(mask_of(f"{BIG - 1} == id", rows)) == [v == BIG - 1 for v in IDS]
    assert list(mask_of(f"id == {-(2**63)}", rows)) == [v == -(2**63) for v in IDS]
    # constants beyond int64 decide every row without overflow
    assert mask_of(f"id < {2**64}", rows).all()
    assert not mask_of(f"id == {2**63}", rows).any()
    assert mask_of(f"id != {2**63}", rows).all()
    assert mask_of("id > -99999999999999999999999", rows).all()
    assert not mask_of("-99999999999999999999999 > id", rows).any()
    assert list(mask_of(f"where id in ({BIG}, {BIG - 1})", rows)) == [v in (BIG, BIG - 1) for v in IDS]


def test_other_numeric_types() -> None:
    dt = np.dtype([("u", ">u8"), ("flag", "?"), ("small", "<i1"), ("half", "<f2"), ("d", ">f8")])
    data = np.array(
        [(0, False, -128, 1.5, 0.1), (2**64 - 1, True, 127, 65504.0, -0.0), (2**63, True, 0, -1.0, 1e300)], dtype=dt
    )

    def ev(text: str) -> list[bool]:
        return parse_query(text, dt).evaluate(data).tolist()  # type: ignore[no-any-return]

    assert ev("u > -1") == [True] * 3
    assert ev(f"u == {2**64 - 1}") == [False, True, False]
    assert ev(f"u >= {2**63}") == [False, True, True]
    assert ev("u > small") == [True, True, True]
    assert ev("flag == 1") == [False, True, True]
    assert ev("flag > 0.5 AND small < 200") == [False, True, True]
    assert ev("small > -129 & small < 128") == [True] * 3
    assert ev("half < 1e10") == [True, True, True]
    assert ev("half > 70000") == [False] * 3
    assert ev(f"d > {10**400}") == [False] * 3
    assert ev("d == 0.1 | d == 0") == [True, True, False]
    assert ev("where flag in (1)") == [False, True, True]
    assert ev("where half in (1.5, 1e300)") == [True, False, False]
    with pytest.raises(QueryError, match=r"the value 2 at position 15 does not fit field 'flag' \(bool\)"):
        parse_query("where flag in (2)", dt)
    with pytest.raises(QueryError, match=r"the value -1 at position 12 does not fit field 'u'"):
        parse_query("where u in (-1)", dt)


def test_text_and_vlen_fields() -> None:
    vstr = np.dtype("O", metadata={"vlen": str})
    vbytes = np.dtype("O", metadata={"vlen": bytes})
    dt = np.dtype([("name", vstr), ("raw", vbytes), ("u", "<U4"), ("n", "<i4")])
    data = np.array([("é", b"x", "ab", 1), ("b", b"yy", "é", 2), ("", b"", "", 3)], dtype=dt)

    def ev(text: str) -> list[bool]:
        return parse_query(text, dt).evaluate(data).tolist()  # type: ignore[no-any-return]

    assert ev("name == 'é'") == [True, False, False]
    assert ev("name == b'\\xc3\\xa9'") == [True, False, False]
    assert ev("name > 'a'") == [True, True, False]
    assert ev("raw == 'yy' | raw == b''") == [False, True, True]
    assert ev("u == b'ab' OR u == 'é'") == [True, True, False]
    assert ev("u == name") == [False, False, True]
    assert ev("where name in ('b', b'')") == [False, True, True]
    assert ev("where raw in ('x')") == [True, False, False]
    assert ev("where u in ('ab', 'zz')") == [True, False, False]
    with pytest.raises(QueryError, match=r"cannot compare string field 'raw' .* with the number 3 at position 7"):
        parse_query("raw == 3", dt)
    with pytest.raises(QueryError, match=r"the bytes b'\\xff' at position 8 are not UTF-8"):
        parse_query("name == b'\\xff'", dt)
    holes = np.array([(None, None, "", 1)], dtype=dt)
    with pytest.raises(QueryError, match=r"cannot evaluate the comparison at position 5 on field 'name'"):
        parse_query("name < 'x'", dt).evaluate(holes)


def test_unsupported_field_types() -> None:
    dt = np.dtype([("v", "<f4", (3,)), ("sub", [("x", "<i4")]), ("op", "V4"), ("obj", "O"), ("id", "<i8")])
    for name, what in [
        ("v", "an array field"),
        ("sub", "a nested compound"),
        ("op", "an opaque"),
        ("obj", "a variable-length field that is not a string"),
    ]:
        with pytest.raises(QueryError, match=rf"field '{name}' at position 0 is {what}"):
            parse_query(f"{name} == 1", dt)
    assert parse_query("id > 1", dt).evaluate(np.zeros(2, dt)).tolist() == [False, False]


# ----------------------------------------------------------------------------------------------
# where ... in (...)


@pytest.mark.parametrize(
    ("text", "oracle"),
    [
        ("where station in (b'AB', 'CD')", lambda r: np.isin(r["station"], [b"AB", b"CD"])),
        ("WHERE station IN (b'AB',)", lambda r: r["station"] == b"AB"),
        ("where id in (1, 3, 2.0, 99)", lambda r: np.isin(r["id"], [1, 2, 3])),
        ("where temp in (0.5, 20, 1e300)", lambda r: np.isin(r["temp"], np.array([0.5, 20, np.inf], "f4"))),
        ("temp > 1 where station in (b'AB')", lambda r: (r["temp"] > 1) & (r["station"] == b"AB")),
        ("(temp > 1) & (id < 5) where id in (2, 4, 6)", lambda r: (r["temp"] > 1) & np.isin(r["id"], [2, 4])),
        (
            "temp > 1 OR id < 1 where id in (-1, 0, 1)",
            lambda r: ((r["temp"] > 1) | (r["id"] < 1)) & np.isin(r["id"], [-1, 0, 1]),
        ),
        ("where station in (b'ABCDEFGHIJ')", lambda r: np.zeros(len(r), bool)),
    ],
)
def test_where_in(rows: np.ndarray, text: str, oracle: Any) -> None:
    np.testing.assert_array_equal(mask_of(text, rows), oracle(rows))


def test_fields_in_first_use_order() -> None:
    q = parse_query("20 < temp & station == b'A' | temp > id where id in (1)", LE)
    assert q.fields == ("temp", "station", "id")
    assert parse_query("where station in (b'x')", LE).fields == ("station",)
    assert q.text == "20 < temp & station == b'A' | temp > id where id in (1)"


def test_empty_and_mismatched_rows() -> None:
    q = parse_query("temp > 1 & station == b'AB' where id in (1, 2)", LE)
    for dt in (LE, BE):
        out = q.evaluate(np.zeros(0, dtype=dt))
        assert out.shape == (0,) and out.dtype == bool
    # a query parsed for one byte order evaluates rows of the other
    be_rows = np.array(ROWS, dtype=BE)
    np.testing.assert_array_equal(q.evaluate(be_rows), q.evaluate(np.array(ROWS, dtype=LE)))
    with pytest.raises(QueryError, match=r"rows must be a 1-d structured numpy array, got 2-d"):
        q.evaluate(np.zeros((2, 2), dtype=LE))
    with pytest.raises(QueryError, match=r"rows must be a 1-d structured numpy array, got list"):
        q.evaluate([1, 2])  # type: ignore[arg-type]
    with pytest.raises(FieldError, match=r"the rows have no field 'station'; their fields are \['id', 'temp'\]"):
        q.evaluate(np.zeros(3, dtype=[("id", "<i8"), ("temp", "<f4")]))
    with pytest.raises(QueryError, match=r"cannot compare string field 'station' \(int64\)|field 'station'"):
        q.evaluate(np.zeros(3, dtype=[("id", "<i8"), ("temp", "<f4"), ("station", "<i8")]))
    with pytest.raises(QueryError, match=r"has no condition; build queries with parse_query"):
        Query("temp > 1", ("temp",))


# ----------------------------------------------------------------------------------------------
# Canonical text


@pytest.mark.parametrize(
    ("text", "wire"),
    [
        ("temp > 20 AND NOT station == 'AB'", "(temp > 20) & ~(station == b'AB')"),
        ("id > 1 | temp < 2 & station == b'AB'", "(id > 1) | ((temp < 2) & (station == b'AB'))"),
        ("(id > 1 & temp < 2) & (id < 3 & temp > -1)", "(id > 1) & (temp < 2) & (id < 3) & (temp > -1)"),
        ("~~(id > 1)", "(id > 1)"),
        ("NOT (id > 1 OR id < 0)", "~((id > 1) | (id < 0))"),
        ("20 < temp", "(20 < temp)"),
        ("temp > 1e999 or temp < -1E400", "(temp > 1e999) | (temp < -1e999)"),
        ("temp > .5e1", "(temp > 5.0)"),
        ('station == "it\'s"', '(station == b"it\'s")'),
        ("WHERE id IN (1, 2.0,)", "where id in (1, 2)"),
        ("temp>0 where station in ('é', \"x\")", "(temp > 0) where station in (b'\\xc3\\xa9', b'x')"),
    ],
)
def test_to_wire_canonical_form(text: str, wire: str) -> None:
    q = parse_query(text, LE)
    assert q.to_wire() == wire
    again = parse_query(q.to_wire(), LE)
    assert again.to_wire() == q.to_wire()
    assert again.fields == q.fields


def test_query_pickles_and_compares() -> None:
    q = parse_query("temp > 20 AND station == 'AB' where id in (1, 2)", BE)
    again = pickle.loads(pickle.dumps(q))
    assert again == q and hash(again) == hash(q)
    assert again.to_wire() == q.to_wire()
    assert "temp > 20" in repr(q) and "_expr" not in repr(q)


def test_long_text_is_shortened_in_messages() -> None:
    text = "id > 1 & " * 100 + "id >"
    with pytest.raises(
        QueryError, match=r"^bad query 'id > 1 & id.*'\.\.\. \(904 characters\): unexpected end of query at"
    ):
        parse_query(text, LE)


def test_to_wire_is_python_compatible_text() -> None:
    # The canonical form is the fully parenthesised master dialect, which HSDS evaluates with Python;
    # check the shape with Python's tokenizer (never with eval).
    import io
    import tokenize

    q = parse_query("temp > 2 and not station == '\\t\\'é\"' where id in (1)", LE)
    wire = q.to_wire()
    expr = wire.split(" where ")[0]
    toks = [t.string for t in tokenize.generate_tokens(io.StringIO(expr).readline) if t.string.strip()]
    assert toks == ["(", "temp", ">", "2", ")", "&", "~", "(", "station", "==", "b'\\t\\'\\xc3\\xa9\"'", ")"]


# ----------------------------------------------------------------------------------------------
# Errors: text is API


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("temp >> 3", r"^bad query 'temp >> 3': unexpected '>' at position 6; expected a field name"),
        ("", r"^bad query '': the query is empty"),
        ("   ", r"^bad query '   ': the query is empty"),
        ("(temp > 3", r"unexpected end of query at position 9; expected '\)' to close the '\(' at position 0"),
        ("((temp > 3) & (id < 2)", r"unexpected end of query at position 22; expected '\)' to close the '\(' at pos"),
        ("temp > 3)", r"unexpected '\)' at position 8; expected '&', '\|', AND, OR, WHERE or the end of the query"),
        ("temp > 3 id < 2", r"unexpected 'id' at position 9"),
        ("temp 3", r"unexpected '3' at position 5; expected a comparison operator"),
        ("temp", r"field 'temp' at position 0 is not a condition"),
        ("temp & id > 1", r"field 'temp' at position 0 is not a condition \(left of '&' at position 5\)"),
        ("id > 1 OR 3", r"the constant 3 at position 10 is not a condition"),
        ("NOT temp", r"field 'temp' at position 4 is not a condition \(after 'NOT' at position 0\)"),
        ("3", r"the constant 3 at position 0 is not a condition"),
        ("1 < 2", r"the comparison 1 < 2 at position 2 has no field"),
        ("temp == 'abc'", r"cannot compare numeric field 'temp' \(float32\) with the string 'abc' at position 8"),
        ("station > 3", r"cannot compare string field 'station' \(\|S8\) with the number 3 at position 10; quote"),
        ("station > id", r"cannot compare string field 'station' \(\|S8\) with numeric field 'id' \(int64\)"),
        ("(id > 1) == (id < 3)", r"the left side of '==' at position 9 is a condition"),
        ("temp = 3", r"unexpected '=' at position 5; use '==' to test equality"),
        ("temp ! 3", r"unexpected '!' at position 5; use '!='"),
        ("temp > 1 && id < 2", r"unexpected '&&' at position 9; use '&' or AND"),
        ("temp > 1 || id < 2", r"unexpected '\|\|' at position 9; use '\|' or OR"),
        ("temp $ 3", r"unexpected '\$' at position 5"),
        ("temp > 1.2.3", r"unexpected '\.' at position 10"),
        ("temp > 3abc", r"unexpected 'a' at position 8"),
        ("temp > 0x10", r"unexpected 'x' at position 8"),
        ("temp > 2**3", r"unexpected '\*' at position 8"),
        ("1 < temp < 3", r"unexpected '<' at position 9: chained comparisons are not supported"),
        ("temp > 'abc", r"unterminated string starting at position 7"),
        ("station == b'abc", r"unterminated bytes starting at position 11"),
        ("station == b'é'", r"non-ASCII character 'é' at position 13 in the bytes starting at position 11"),
        ("station == b'\\x4'", r"truncated \\x escape at position 13"),
        ("station == '\\N{DASH}'", r"\\N\{...\} escapes are not supported"),
        ("station == b'\\777'", r"octal escape '\\\\777' at position 13 is above"),
        ("temp > -'a'", r"unexpected \"'a'\" at position 8; expected a number after '-'"),
        ("temp > 3 where", r"unexpected end of query at position 14; expected a field name after WHERE"),
        ("where id (1)", r"unexpected '\(' at position 9; expected IN after 'where id'"),
        ("where id in 1", r"unexpected '1' at position 12; expected '\(' to start the list of values"),
        ("where id in ()", r"unexpected '\)' at position 13; expected a number or a quoted string"),
        ("where id in (1 2)", r"unexpected '2' at position 15; expected ',' or '\)' to close the '\(' at position 12"),
        ("where id in (id)", r"unexpected 'id' at position 13; expected a number or a quoted string"),
        ("where id in (1) id > 2", r"unexpected 'id' at position 16; expected the end of the query"),
        ("where id in (2.5)", r"the value 2.5 at position 13 does not fit field 'id' \(int64\)"),
        ("where id in (1e999)", r"the value 1e999 at position 13 does not fit field 'id'"),
        (f"where id in ({2**63})", r"does not fit field 'id' \(int64\); WHERE \.\.\. IN values for it must be whole"),
        ("where temp in (b'x')", r"cannot compare numeric field 'temp' \(float32\) with the string b'x'"),
        ("id > " + "9" * 5000, r"the integer at position 5 has too many digits \(5000\)"),
        ("__import__('os').system('ls')", r"unexpected '\.' at position 16"),
        ("id > 1 where id in (1) where id in (2)", r"unexpected 'where' at position 23"),
        (
            "(" * (MAX_NESTING + 1) + "id > 1" + ")" * (MAX_NESTING + 1),
            r"nested deeper than 100 levels at position 100",
        ),
    ],
)
def test_syntax_and_type_errors(text: str, message: str) -> None:
    with pytest.raises(QueryError, match=message):
        parse_query(text, LE)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "tmp > 3",
            (
                r"^bad query 'tmp > 3': unknown field 'tmp' at position 0; "
                r"this dataset's fields are \['id', 'temp', 'station'\]; did you mean 'temp'\?$"
            ),
        ),
        ("temp > 1 AND nope == 2", r"unknown field 'nope' at position 13; this dataset's fields are \['id'"),
        ("where stat in (b'x')", r"unknown field 'stat' at position 6; .*did you mean 'station'\?"),
        ("id > zzz", r"unknown field 'zzz' at position 5; this dataset's fields are \[.*\]$"),
    ],
)
def test_unknown_fields(text: str, message: str) -> None:
    with pytest.raises(FieldError, match=message) as info:
        parse_query(text, LE)
    assert isinstance(info.value, KeyError)  # FieldError mixes in KeyError


@pytest.mark.parametrize("dtype", [np.dtype("<i4"), np.dtype("S8"), np.dtype(("<f4", (3,)))])
def test_needs_compound_dtype(dtype: np.dtype) -> None:
    with pytest.raises(
        QueryError, match="^" + re.escape(f"query needs a compound (table) dataset; this dataset's type is {dtype}")
    ):
        parse_query("id > 1", dtype)


def test_bad_arguments() -> None:
    with pytest.raises(QueryError, match=r"query must be a str, not bytes"):
        parse_query(b"id > 1", LE)  # type: ignore[arg-type]
    with pytest.raises(QueryError, match=r"is not a numpy dtype"):
        parse_query("id > 1", "no such dtype")


def test_nesting_limit_and_canonical_depth() -> None:
    q = parse_query("(" * MAX_NESTING + "id > 1" + ")" * MAX_NESTING, LE)
    assert q.to_wire() == "(id > 1)"
    # Alternating OR/AND needs few parentheses here but one per level in to_wire(): refused up front.
    deep = "".join(f"~(id > {i} & (temp < 3 | " for i in range(50)) + "id > 0" + "))" * 50
    with pytest.raises(QueryError, match=r"conditions nested deeper than 100 levels once written with full paren"):
        parse_query(deep, LE)
    ok = "".join(f"~(id > {i} & (temp < 3 | " for i in range(49)) + "id > 0" + "))" * 49
    q = parse_query(ok, LE)
    data = np.array(ROWS, dtype=LE)
    again = parse_query(q.to_wire(), LE)
    np.testing.assert_array_equal(again.evaluate(data), q.evaluate(data))
    long_chain = " & ".join(f"id != {i}" for i in range(3000))  # long but flat: no recursion
    assert parse_query(long_chain, LE).evaluate(data).tolist() == [v >= 3000 or v < 0 for v in IDS]
    many_nots = "~" * 5001 + "(id > 1)"
    np.testing.assert_array_equal(mask_of(many_nots, data), ~mask_of("id > 1", data))


# ----------------------------------------------------------------------------------------------
# Property tests: random queries in both dialects against a numpy oracle, and to_wire round trips

OPS = {"<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge, "==": operator.eq, "!=": operator.ne}
FLIP = {"<": ">", "<=": ">=", ">": "<", ">=": "<=", "==": "==", "!=": "!="}

ID_INTS = st.one_of(st.integers(-4, 8), st.sampled_from([BIG, BIG - 1, -(2**63), -(2**63) + 1, 2**63, 2**64, -(2**70)]))
ID_FLOATS = st.sampled_from([2.5, -0.5, 3.0, 9.2e18, -1e30, 1e300])
TEMP_NUMS = st.one_of(st.sampled_from([0.1, 1.5, 2.5, -2.5, 0.0, -0.0, 20.0, 1e30, 1e300]), st.integers(-4, 30))
STATION_BYTES = st.sampled_from([b"", b"AB", b"CD", b"ABC", b"ABCDEFGH", b"ABCDEFGHIJ", b"\x00", b"\xff\x01", b"'\""])
STATION_STRS = st.sampled_from(["AB", "é", "it's", 'a"b', "", "tab\there"])
LITERALS = {"id": st.one_of(ID_INTS, ID_FLOATS), "temp": TEMP_NUMS, "station": st.one_of(STATION_BYTES, STATION_STRS)}
WHERE_VALUES = {
    "id": st.one_of(st.integers(-4, 8), st.sampled_from([BIG, -(2**63), 3.0])),
    "temp": st.sampled_from([0.1, 1.5, 2.5, 20, 21, -3, 1e300]),
    "station": st.one_of(STATION_BYTES, STATION_STRS),
}


@st.composite
def comparisons(draw: st.DrawFn) -> tuple[Any, ...]:
    """A field compared with a constant (either side), or two comparable fields."""
    op = draw(st.sampled_from(list(OPS)))
    if draw(st.booleans()):
        f = draw(st.sampled_from(["id", "temp", "station"]))
        return ("cmp", f, op, draw(LITERALS[f]), draw(st.booleans()))
    a, b = draw(
        st.sampled_from([("id", "temp"), ("temp", "id"), ("id", "id"), ("station", "station"), ("temp", "temp")])
    )
    return ("cmp2", a, op, b)


conditions = st.recursive(
    comparisons(),
    lambda kids: st.one_of(
        st.tuples(st.just("not"), kids),
        st.tuples(st.just("and"), st.lists(kids, min_size=2, max_size=3)),
        st.tuples(st.just("or"), st.lists(kids, min_size=2, max_size=3)),
    ),
    max_leaves=8,
)


def oracle(node: tuple[Any, ...], rows: np.ndarray) -> np.ndarray:
    kind = node[0]
    if kind == "cmp":
        _, f, op, lit, swap = node
        value = lit.encode() if isinstance(lit, str) else lit
        with np.errstate(all="ignore"):
            if swap:
                return np.asarray(OPS[FLIP[op]](value, rows[f]))
            return np.asarray(OPS[op](rows[f], value))
    if kind == "cmp2":
        _, a, op, b = node
        return np.asarray(OPS[op](rows[a], rows[b]))
    if kind == "not":
        return ~oracle(node[1], rows)
    parts = [oracle(child, rows) for child in node[1]]
    out = parts[0]
    for p in parts[1:]:
        out = (out & p) if kind == "and" else (out | p)
    return out


def render_literal(value: Any, data: st.DataObject) -> str:
    if isinstance(value, bytes):
        text = repr(value)
        return data.draw(st.sampled_from([text, "B" + text[1:]]))
    if isinstance(value, str):
        forms = [repr(value)]
        if '"' not in value and "\\" not in value and "\t" not in value:
            forms.append(f'"{value}"')
        return data.draw(st.sampled_from(forms))
    if isinstance(value, float):
        return data.draw(st.sampled_from([repr(value), repr(value).upper()]))
    if value < 0:
        return data.draw(st.sampled_from([str(value), f"- {-value}"]))
    return data.draw(st.sampled_from([str(value), f"+{value}"]))


def render_master(node: tuple[Any, ...], data: st.DataObject) -> str:
    """numpy style as HSDS master evaluates it: every comparison and group parenthesised."""
    kind = node[0]
    sp = data.draw(st.sampled_from(["", " "]))
    if kind == "cmp":
        _, f, op, lit, swap = node
        lit_text = render_literal(lit, data)
        return f"({lit_text}{sp}{FLIP[op]}{sp}{f})" if swap else f"({f}{sp}{op}{sp}{lit_text})"
    if kind == "cmp2":
        return f"({node[1]}{sp}{node[2]}{sp}{node[3]})"
    if kind == "not":
        return "~" + render_master(node[1], data)
    sep = f"{sp}&{sp}" if kind == "and" else f"{sp}|{sp}"
    return "(" + sep.join(render_master(c, data) for c in node[1]) + ")"


PREC = {"or": 1, "and": 2, "not": 3, "cmp": 4, "cmp2": 4}


def render_sn(node: tuple[Any, ...], data: st.DataObject, parent: int = 0) -> str:
    """SN / 1.0.2 style: keywords in any case or bare &/|/~, parentheses only where precedence needs them."""
    kind = node[0]
    if kind == "cmp":
        _, f, op, lit, swap = node
        lit_text = render_literal(lit, data)
        text = f"{lit_text} {FLIP[op]} {f}" if swap else f"{f} {op} {lit_text}"
    elif kind == "cmp2":
        text = f"{node[1]} {node[2]} {node[3]}"
    elif kind == "not":
        word = data.draw(st.sampled_from(["NOT ", "not ", "Not ", "~", "~ "]))
        text = word + render_sn(node[1], data, PREC["not"])
    else:
        words = ["AND", "and", "&"] if kind == "and" else ["OR", "or", "|"]
        text = ""
        for i, child in enumerate(node[1]):
            if i:
                text += f" {data.draw(st.sampled_from(words))} "
            text += render_sn(child, data, PREC[kind] + 1)  # +1: a nested chain of the same kind gets parens
    if PREC[kind] < parent or (kind in ("cmp", "cmp2") and data.draw(st.booleans())):
        text = f"({text})"
    return text


def render_where(data: st.DataObject) -> tuple[str, Any]:
    f = data.draw(st.sampled_from(["id", "temp", "station"]))
    values = data.draw(st.lists(WHERE_VALUES[f], min_size=1, max_size=4))
    trailing = data.draw(st.sampled_from(["", ","]))
    where = data.draw(st.sampled_from(["where", "WHERE", "Where"]))
    in_ = data.draw(st.sampled_from(["in", "IN"]))
    text = f"{where} {f} {in_} (" + ", ".join(render_literal(v, data) for v in values) + trailing + ")"

    def mask(rows: np.ndarray) -> np.ndarray:
        col = rows[f]
        if f == "station":
            vals = np.array([v.encode() if isinstance(v, str) else v for v in values], dtype="S")
        else:
            with np.errstate(over="ignore"):
                vals = np.array([int(v) if f == "id" else v for v in values], dtype=col.dtype.newbyteorder("="))
        return np.isin(col, vals)

    return text, mask


row_values = st.tuples(
    st.one_of(st.integers(-5, 10), st.sampled_from([BIG, BIG - 1, -(2**63), 3])),
    st.one_of(st.floats(width=32), st.sampled_from([0.1, 1.5, 2.5, 20.0, 21.0, -3.0])),
    st.one_of(STATION_BYTES.filter(lambda b: len(b) <= 8), st.binary(max_size=8)),
)


@FAST
@given(
    node=st.one_of(st.none(), conditions),
    with_where=st.booleans(),
    data_rows=st.lists(row_values, max_size=12),
    dtype=st.sampled_from([LE, BE]),
    data=st.data(),
)
def test_random_queries_both_dialects_and_round_trip(
    node: Any, with_where: bool, data_rows: list[Any], dtype: np.dtype, data: st.DataObject
) -> None:
    if node is None and not with_where:
        with_where = True
    rows = np.array(data_rows, dtype=dtype)
    expected = np.ones(len(rows), dtype=bool) if node is None else oracle(node, rows)
    where_text = ""
    if with_where:
        where_text, where_mask = render_where(data)
        expected = expected & where_mask(rows)
    texts = []
    if node is not None:
        texts = [render_master(node, data), render_sn(node, data)]
    else:
        texts = [""]
    for expr_text in texts:
        text = f"{expr_text} {where_text}".strip()
        q = parse_query(text, LE)
        got = q.evaluate(rows)
        np.testing.assert_array_equal(got, expected, err_msg=text)
        wire = q.to_wire()
        again = parse_query(wire, dtype)
        assert again.fields == q.fields
        assert again.to_wire() == wire
        np.testing.assert_array_equal(again.evaluate(rows), expected, err_msg=wire)


# ----------------------------------------------------------------------------------------------
# Fuzz: anything at all either parses or raises our errors

FUZZ_DTYPE = np.dtype([("a", "<i8"), ("b", ">f4"), ("c", "S4"), ("id", "<u2"), ("ANDx", "?")])
FUZZ_ROWS = np.array(
    [(0, 0.0, b"", 0, False), (-(2**63), float("nan"), b"abc", 65535, True), (3, 1e30, b"\xff", 2, True)],
    dtype=FUZZ_DTYPE,
)
GRAMMARISH = "()&|<>=! abc0123.'\"bANDOR"
TOKENS = [
    "a", "b", "c", "id", "ANDx", "zz", "(", ")", "&", "|", "~", "AND", "or", "Not", "where", "IN", ",", "<", "<=",
    ">", ">=", "==", "!=", "=", "!", "1", "-2", "+", "-", "2.5", "1e400", ".5", "9" * 30, "'x'", "b'x'", '"y"',
    "b'\\xff'", "'\\u00e9'", "'", "b'", "\\", "é", "\x00",
]  # fmt: skip


def check_fuzz(text: str) -> None:
    try:
        q = parse_query(text, FUZZ_DTYPE)
    except (QueryError, FieldError):
        return
    mask = q.evaluate(FUZZ_ROWS)
    assert mask.shape == (len(FUZZ_ROWS),) and mask.dtype == bool
    wire = q.to_wire()
    again = parse_query(wire, FUZZ_DTYPE)
    assert again.to_wire() == wire and again.fields == q.fields
    np.testing.assert_array_equal(again.evaluate(FUZZ_ROWS), mask)


@FAST
@given(st.text())
def test_fuzz_any_text(text: str) -> None:
    check_fuzz(text)


@settings(deadline=None, max_examples=400)
@given(st.text(alphabet=GRAMMARISH, max_size=40))
def test_fuzz_grammarish_text(text: str) -> None:
    check_fuzz(text)


@settings(deadline=None, max_examples=400)
@given(st.lists(st.sampled_from(TOKENS), max_size=16), st.sampled_from([" ", ""]))
def test_fuzz_token_soup(tokens: list[str], sep: str) -> None:
    check_fuzz(sep.join(tokens))


@FAST
@given(st.integers(0, 3 * MAX_NESTING), st.sampled_from(["(", "~(", "NOT (", "(a > 1 | "]))
def test_fuzz_nesting_never_recursion_error(depth: int, opener: str) -> None:
    check_fuzz(opener * depth + "a > 1" + ")" * depth)
    check_fuzz(opener * depth)


def test_printable_ascii_alone() -> None:
    for ch in string.printable:
        check_fuzz(ch)
        check_fuzz(f"a > 1 {ch}")
