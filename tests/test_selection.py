"""Tests for hsds_backends.selection: HSDS select strings, numpy indexing, points, chunk cuts.

Facts under test come from docs/hsds-format.md §1.3 (chunk cuts) and §5.1 (select strings).
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from hsds_backends.errors import HsdsBackendsError, SelectionError, SelectionValueError
from hsds_backends.selection import (
    Coords,
    DimCut,
    Hyperslab,
    Slice,
    check_points,
    dim_cuts,
    format_select,
    from_index,
    parse_select,
)

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def C(*v: int) -> Coords:
    return Coords(np.asarray(v, dtype=np.int64))


# --------------------------------------------------------------------------- parse_select


@pytest.mark.parametrize(
    ("text", "shape", "dims"),
    [
        # §4.2 verified DN select on chunk _1_2 of a (40,50)-chunked 100x200 arange
        ("[0:2,0:3]", (40, 50), (Slice(0, 2), Slice(0, 3))),
        # §5.1 verified on a DN
        ("[[1,3,5],2:4]", (100, 200), (C(1, 3, 5), Slice(2, 4))),
        ("[7,0:200:50]", (100, 200), (Slice(7, 8), Slice(0, 200, 50))),
        ("[0:100:40,199]", (100, 200), (Slice(0, 100, 40), Slice(199, 200))),
        # whitespace anywhere, outer brackets optional
        (" [ 0 : 10 : 2 , 5 , [ 1 , 3 , 7 ] ] ", (20, 10, 8), (Slice(0, 10, 2), Slice(5, 6), C(1, 3, 7))),
        ("0:10:2,5,[1,3,7]", (20, 10, 8), (Slice(0, 10, 2), Slice(5, 6), C(1, 3, 7))),
        ("\t0:2\n,\r0:3 ", (40, 50), (Slice(0, 2), Slice(0, 3))),
        # missing start / stop / step
        ("[:]", (40,), (Slice(0, 40),)),
        ("[:5]", (40,), (Slice(0, 5),)),
        ("[5:]", (40,), (Slice(5, 40),)),
        ("[::3]", (40,), (Slice(0, 40, 3),)),
        ("[1:9:]", (40,), (Slice(1, 9, 1),)),
        ("[::]", (40,), (Slice(0, 40, 1),)),
        # step larger than the range still selects the start
        ("[3:5:100]", (40,), (Slice(3, 5, 100),)),
        # coordinate list: duplicates and order are kept
        ("[[5,1,5]]", (40,), (C(5, 1, 5),)),
        ("[[1]]", (40,), (C(1),)),
        ("[[39]]", (40,), (C(39),)),
        ("[39]", (40,), (Slice(39, 40),)),
        ("[0:40]", (40,), (Slice(0, 40),)),
    ],
)
def test_parse_select_values(text: str, shape: tuple[int, ...], dims: tuple[Any, ...]) -> None:
    hs = parse_select(text, shape)
    assert hs.dims == dims
    assert hs.drop == (False,) * len(shape)  # HSDS 'n' keeps its dimension


def test_parse_select_n_keeps_dimension() -> None:
    hs = parse_select("[7,0:200:50]", (100, 200))
    assert hs.shape == (1, 4)
    assert hs.result_shape == (1, 4)


@pytest.mark.parametrize(
    ("text", "shape"),
    [("[0:10:3]", (40,)), ("[1:2,3:40:7]", (5, 40)), ("[[1,3,5],2:4]", (100, 200))],
)
def test_parse_select_shape_is_ceil(text: str, shape: tuple[int, ...]) -> None:
    # §5.1: result shape per dim = ceil((stop - start) / step); coords: their count
    hs = parse_select(text, shape)
    want = []
    for d in hs.dims:
        if isinstance(d, Slice):
            want.append(-(-(d.stop - d.start) // d.step))
        else:
            want.append(d.values.size)
    assert hs.shape == tuple(want)


@pytest.mark.parametrize("text", ["", "[]", "[0]", "0", ":", "[:]", "0:1", " [ ] "])
def test_parse_select_scalar(text: str) -> None:
    hs = parse_select(text, ())
    assert hs.dims == ()
    assert hs.shape == ()
    assert hs.result_shape == ()


@pytest.mark.parametrize("text", ["[1]", "x", "[0,0]", "[[0]]"])
def test_parse_select_scalar_rejects(text: str) -> None:
    with pytest.raises(SelectionError, match=re.escape(f"bad select {text!r}: the dataset is scalar")):
        parse_select(text, ())


@pytest.mark.parametrize(
    ("text", "shape", "message"),
    [
        # wrong rank, naming both ranks and the shape
        ("[1,2]", (40,), "2 dimension(s) given, the dataset has rank 1 (shape [40])"),
        ("[0:2]", (40, 50), "1 dimension(s) given, the dataset has rank 2 (shape [40, 50])"),
        ("[0:1,0:1,0:1]", (40, 50), "3 dimension(s) given, the dataset has rank 2"),
        ("", (40,), "empty; the dataset has rank 1 (shape [40])"),
        ("[]", (4, 5), "empty; the dataset has rank 2 (shape [4, 5])"),
        # out of range: the bad value is quoted
        ("[5:3]", (40,), "5:3 is out of range for dimension 0 (extent 40); need 0 ≤ start < stop ≤ 40"),
        ("[0:41]", (40,), "0:41 is out of range for dimension 0 (extent 40)"),
        ("[0:1,0:201]", (100, 200), "0:201 is out of range for dimension 1 (extent 200)"),
        ("[40:]", (40,), "40:40 is out of range for dimension 0 (extent 40)"),
        ("[3:3]", (40,), "3:3 is out of range"),
        ("[-1:5]", (40,), "-1:5 is out of range"),
        ("[40]", (40,), "index 40 is out of range for dimension 0 (extent 40)"),
        ("[-1]", (40,), "index -1 is out of range for dimension 0 (extent 40)"),
        ("[0,[1,50]]", (2, 40), "coordinate 50 is out of range for dimension 1 (extent 40)"),
        ("[[-2]]", (40,), "coordinate -2 is out of range for dimension 0 (extent 40)"),
        # steps
        ("[0:10:0]", (40,), "step 0 on dimension 0 (extent 40) must be ≥ 1"),
        ("[0:10:-2]", (40,), "step -2 on dimension 0 (extent 40) must be ≥ 1"),
        # malformed text names the bad piece
        ("[a]", (40,), "index 'a' is not an integer"),
        ("[1.5]", (40,), "index '1.5' is not an integer"),
        ("[x:3]", (40,), "start 'x' is not an integer"),
        ("[0:y]", (40,), "stop 'y' is not an integer"),
        ("[0:3:z]", (40,), "step 'z' is not an integer"),
        ("[[1,b]]", (40,), "coordinate 'b' is not an integer"),
        ("[[1,,2]]", (40,), "coordinate '' is not an integer"),
        ("[1:2:3:4]", (40,), "'1:2:3:4' on dimension 0 (extent 40) has too many ':'"),
        ("[[]]", (40,), "empty coordinate list on dimension 0 (extent 40)"),
        ("[[1,2]", (40,), "unbalanced '['"),
        ("[", (40,), "unbalanced '['"),
        ("]", (40,), "unbalanced ']'"),
        ("[]]", (40,), "unbalanced ']'"),
        ("[[[1]]]", (40,), "nested '[' inside a coordinate list"),
        ("[[1]x]", (40,), "coordinate list '[1]x' on dimension 0 (extent 40) is not closed with ']'"),
    ],
)
def test_parse_select_errors(text: str, shape: tuple[int, ...], message: str) -> None:
    with pytest.raises(SelectionError, match=re.escape(f"bad select {text!r}: ") + ".*" + re.escape(message)):
        parse_select(text, shape)


@pytest.mark.parametrize("bad", [5, None, b"[0:1]", ["0:1"]])
def test_parse_select_non_string(bad: Any) -> None:
    with pytest.raises(SelectionError, match=f"select must be a string like .*got {type(bad).__name__}"):
        parse_select(bad, (3,))


def test_selection_error_is_index_error_not_value_error() -> None:
    with pytest.raises(IndexError):
        parse_select("[9]", (3,))
    assert not issubclass(SelectionError, ValueError)
    assert issubclass(SelectionError, HsdsBackendsError)


@pytest.mark.parametrize(
    "text",
    ["[0:2,0:3]", "[[1,3,5],2:4]", "[7:8,0:200:50]", "[0:100:40,199:200]", "[[5,1,5],[0]]"],
)
def test_format_select_round_trip(text: str) -> None:
    hs = parse_select(text, (100, 200))
    assert hs.to_text() == text
    assert format_select(hs.dims) == text
    assert parse_select(hs.to_text(), (100, 200)).dims == hs.dims


def test_format_select_emits_step_only_when_above_one() -> None:
    # §5.1: the SN emits start:stop and adds :step only when step > 1
    assert format_select([Slice(0, 10, 1), Slice(2, 9, 3), C(4, 1)]) == "[0:10,2:9:3,[4,1]]"


# --------------------------------------------------------------------------- from_index


def test_from_index_ints_drop_dims() -> None:
    hs = from_index((1, 2), (4, 5))
    assert hs.dims == (Slice(1, 2), Slice(2, 3))
    assert hs.drop == (True, True)
    assert hs.shape == (1, 1)
    assert hs.result_shape == ()


def test_from_index_negative_ints() -> None:
    hs = from_index((-1, -5), (4, 5))
    assert hs.dims == (Slice(3, 4), Slice(0, 1))
    assert hs.drop == (True, True)


def test_from_index_numpy_ints() -> None:
    hs = from_index((np.int64(2), np.uint8(1)), (4, 5))
    assert hs.dims == (Slice(2, 3), Slice(1, 2))
    assert hs.result_shape == ()


def test_from_index_partial_key_fills_trailing_dims() -> None:
    hs = from_index(1, (4, 5, 6))
    assert hs.dims == (Slice(1, 2), Slice(0, 5), Slice(0, 6))
    assert hs.drop == (True, False, False)
    assert hs.result_shape == (5, 6)


@pytest.mark.parametrize(
    "key",
    [
        np.s_[2:9:3],
        np.s_[:],
        np.s_[-3:],
        np.s_[:-3],
        np.s_[5:2],  # empty
        np.s_[100:200],  # empty, clipped
        np.s_[-100:3],
        np.s_[::7],
        np.s_[3:3],
        np.s_[0:1000:1000],
    ],
)
def test_from_index_slices_match_numpy(key: slice) -> None:
    extent = 10
    hs = from_index(key, (extent,))
    (d,) = hs.dims
    assert isinstance(d, Slice)
    assert d.step >= 1 and 0 <= d.start <= d.stop
    got = np.arange(d.start, d.stop, d.step)
    np.testing.assert_array_equal(got, np.arange(extent)[key])
    assert hs.result_shape == np.arange(extent)[key].shape


def test_from_index_empty_slice_has_zero_count() -> None:
    hs = from_index(np.s_[5:2], (10,))
    assert hs.dims == (Slice(5, 5, 1),)
    assert hs.shape == (0,)


@pytest.mark.parametrize("key", [np.s_[::-1], np.s_[5:1:-2], np.s_[:, ::-1]])
def test_from_index_negative_step_refused(key: Any) -> None:
    with pytest.raises(
        SelectionValueError, match=r"has step -[12]; read with a step of 1 or more and reverse the result with \[::-1\]"
    ):
        from_index(key, (10, 10))


@pytest.mark.parametrize(
    ("key", "dims", "drop"),
    [
        ((Ellipsis,), (Slice(0, 4), Slice(0, 5), Slice(0, 6)), (False, False, False)),
        ((Ellipsis, 2), (Slice(0, 4), Slice(0, 5), Slice(2, 3)), (False, False, True)),
        ((1, Ellipsis), (Slice(1, 2), Slice(0, 5), Slice(0, 6)), (True, False, False)),
        ((1, Ellipsis, slice(1, 3)), (Slice(1, 2), Slice(0, 5), Slice(1, 3)), (True, False, False)),
        ((1, 2, Ellipsis, 3), (Slice(1, 2), Slice(2, 3), Slice(3, 4)), (True, True, True)),
    ],
)
def test_from_index_ellipsis(key: Any, dims: Any, drop: Any) -> None:
    hs = from_index(key, (4, 5, 6))
    assert hs.dims == dims
    assert hs.drop == drop
    assert hs.result_shape == np.zeros((4, 5, 6))[key].shape


def test_from_index_two_ellipses() -> None:
    with pytest.raises(SelectionError, match=re.escape("an index can only have a single ellipsis ('...')")):
        from_index((Ellipsis, 0, Ellipsis), (4, 5, 6))


def test_from_index_too_many_indices() -> None:
    with pytest.raises(SelectionError, match=r"too many indices for a dataset of rank 2 \(shape \[4, 5\]\)"):
        from_index((0, 0, 0), (4, 5))
    with pytest.raises(SelectionError, match="too many indices for a dataset of rank 1"):
        from_index((0, Ellipsis, 0, 0), (4,))


@pytest.mark.parametrize("key", [(), slice(None), Ellipsis])
def test_from_index_scalar(key: Any) -> None:
    hs = from_index(key, ())
    assert hs.dims == ()
    assert hs.result_shape == ()


def test_from_index_scalar_rejects_arrays() -> None:
    # found by fuzzing: `key in ((), (slice(None),))` compares numpy arrays → ambiguous-truth ValueError
    with pytest.raises(SelectionError, match="too many indices for a dataset of rank 0"):
        from_index((np.array([1, 2]), 0), ())


def test_from_index_scalar_rejects_int() -> None:
    with pytest.raises(SelectionError, match="too many indices for a dataset of rank 0"):
        from_index(0, ())


@pytest.mark.parametrize(
    ("key", "values"),
    [
        ([3, 1, 3], [3, 1, 3]),
        (np.array([0, 4], dtype=np.uint16), [0, 4]),
        ([-1, -5], [4, 0]),
        ((np.array([2]),), [2]),
        (range(1, 4), [1, 2, 3]),
    ],
)
def test_from_index_lists_and_arrays(key: Any, values: list[int]) -> None:
    hs = from_index(key, (5,))
    (d,) = hs.dims
    assert isinstance(d, Coords)
    assert d.values.dtype == np.int64
    assert d.values.tolist() == values
    assert hs.drop == (False,)
    assert hs.result_shape == (len(values),)


def test_from_index_mixed_coords_are_orthogonal() -> None:
    hs = from_index(([0, 2], 1, [3, 1]), (4, 5, 6))
    assert hs.dims == (C(0, 2), Slice(1, 2), C(3, 1))
    assert hs.result_shape == (2, 2)


def test_from_index_coordinate_out_of_range() -> None:
    with pytest.raises(SelectionError, match=r"coordinate 5 is out of range for dimension 0 \(extent 5\)"):
        from_index([1, 5], (5,))
    with pytest.raises(SelectionError, match=r"coordinate -1 is out of range for dimension 1 \(extent 3\)"):
        from_index((0, [-4]), (2, 3))


@pytest.mark.parametrize(("key", "shown"), [(5, 5), (-6, -6), (10**30, 10**30)])
def test_from_index_int_out_of_range(key: int, shown: int) -> None:
    with pytest.raises(SelectionError, match=rf"index {shown} is out of range for dimension 0 \(extent 5\)"):
        from_index(key, (5,))


@pytest.mark.parametrize("key", [np.array([True, False, True]), [True, False, True]])
def test_from_index_boolean_mask_refused(key: Any) -> None:
    with pytest.raises(
        SelectionError, match=re.escape("boolean mask on dimension 0 is not supported; pass np.nonzero(mask)[0]")
    ):
        from_index(key, (3,))


@pytest.mark.parametrize("key", [True, np.bool_(False)])
def test_from_index_boolean_scalar_refused(key: Any) -> None:
    with pytest.raises(SelectionError, match="boolean index .* on dimension 0 is not supported; use integer positions"):
        from_index(key, (3,))


@pytest.mark.parametrize("key", ["x", 1.5, None, {}, [[1]], [1.0, 2.0]])
def test_from_index_bad_types(key: Any) -> None:
    with pytest.raises(SelectionError, match="on dimension 0 must be an int, a slice or a 1-d list of ints"):
        from_index(key, (3,))


def test_from_index_empty_list_is_empty_selection() -> None:
    # numpy: np.arange(3)[[]] is an empty array; np.asarray([]) is float64, which must not matter
    hs = from_index([], (3,))
    assert hs.dims == (Coords(np.zeros(0, dtype=np.int64)),)
    assert hs.result_shape == (0,)


def test_from_index_ragged_list_is_selection_error() -> None:
    # numpy raises ValueError on ragged input; from_index must not leak it
    with pytest.raises(SelectionError, match="on dimension 0"):
        from_index([[1], [1, 2]], (3,))


def test_from_index_non_int_slice_bounds_is_selection_error() -> None:
    # slice.indices raises TypeError for 'a'; from_index must not leak it
    with pytest.raises(SelectionError, match="dimension 0"):
        from_index(slice("a", None), (3,))


def test_hyperslab_all() -> None:
    hs = Hyperslab.all((3, 4))
    assert hs.dims == (Slice(0, 3), Slice(0, 4))
    assert hs.drop == (False, False)
    assert hs.to_text() == "[0:3,0:4]"


def test_coords_equality_and_hash() -> None:
    assert C(1, 2) == C(1, 2)
    assert C(1, 2) != C(2, 1)
    assert C(1, 2) != Slice(1, 3)
    assert hash(C(1, 2)) == hash(C(1, 2))


@pytest.mark.parametrize(("s", "n"), [(Slice(0, 10, 3), 4), (Slice(5, 5), 0), (Slice(0, 1, 99), 1), (Slice(2, 9), 7)])
def test_slice_count(s: Slice, n: int) -> None:
    assert s.count == n == len(range(s.start, s.stop, s.step))


# --------------------------------------------------------------------------- check_points


def test_check_points_2d() -> None:
    out = check_points([[40, 100], [79, 149], [41, 101]], (100, 200))
    assert out.dtype == np.uint64
    assert out.flags.c_contiguous
    assert out.tolist() == [[40, 100], [79, 149], [41, 101]]


def test_check_points_1d_flat_list() -> None:
    out = check_points([3, 0, 3], (4,))
    assert out.shape == (3, 1)
    assert out.dtype == np.uint64
    assert out[:, 0].tolist() == [3, 0, 3]


@pytest.mark.parametrize("pts", [[], np.zeros((0, 2), dtype=np.int64)])
def test_check_points_empty(pts: Any) -> None:
    out = check_points(pts, (3, 4))
    assert out.shape == (0, 2)
    assert out.dtype == np.uint64


@pytest.mark.parametrize(
    ("pts", "shape", "message"),
    [
        ([[1, 5]], (5, 5), r"point \[1, 5\] \(row 0\) is out of range for shape \[5, 5\]"),
        ([[0, 0], [0, -1]], (5, 5), r"point \[0, -1\] \(row 1\) is out of range for shape \[5, 5\]"),
        ([[1, 2, 3]], (5, 5), r"points must have shape \(N, 2\) for a dataset of shape \[5, 5\], got \[1, 3\]"),
        ([1, 2], (5, 5), r"points must have shape \(N, 2\) for a dataset of shape \[5, 5\], got \[2\]"),
        ([1.5], (4,), "points must be integers, got dtype float64"),
        ([1, 2], (), r"a scalar dataset cannot be point-selected; read it with select '\[\]'"),
        ([3], (3,), r"point \[3\] \(row 0\) is out of range for shape \[3\]"),
    ],
)
def test_check_points_errors(pts: Any, shape: tuple[int, ...], message: str) -> None:
    with pytest.raises(SelectionError, match=message):
        check_points(pts, shape)


# --------------------------------------------------------------------------- dim_cuts


def test_dim_cuts_contiguous_example() -> None:
    # chunk size 40 on extent 100; select 30:90:1 → chunks 0,1,2
    cuts = dim_cuts(Slice(30, 90), 40)
    assert [c.index for c in cuts] == [0, 1, 2]
    assert [c.chunk for c in cuts] == [Slice(30, 40), Slice(0, 40), Slice(0, 10)]
    assert [c.out for c in cuts] == [slice(0, 10), slice(10, 50), slice(50, 60)]


def test_dim_cuts_stepped_example() -> None:
    # select 10:95:3 with chunk 40 (the verified h5pyd strided read d[10:95:3, ...], §7)
    cuts = dim_cuts(Slice(10, 95, 3), 40)
    assert [c.index for c in cuts] == [0, 1, 2]
    assert cuts[0].chunk == Slice(10, 38, 3)  # 10..37
    assert cuts[1].chunk == Slice(0, 40, 3)  # 40..79 (40 = 10 + 10*3)
    assert cuts[2].chunk == Slice(2, 15, 3)  # 82..94
    assert [c.out for c in cuts] == [slice(0, 10), slice(10, 24), slice(24, 29)]
    got = np.concatenate([c.index * 40 + np.arange(c.chunk.start, c.chunk.stop, c.chunk.step) for c in cuts])  # type: ignore[union-attr]
    np.testing.assert_array_equal(got, np.arange(10, 95, 3))


def test_dim_cuts_step_larger_than_chunk_skips_chunks() -> None:
    # §1.3: step > chunk extent visits only chunks holding a selected point
    cuts = dim_cuts(Slice(0, 200, 50), 40)
    assert [c.index for c in cuts] == [0, 1, 2, 3]  # 0, 50, 100, 150 → chunks 0,1,2,3
    cuts = dim_cuts(Slice(0, 200, 90), 40)
    assert [c.index for c in cuts] == [0, 2, 4]  # 0, 90, 180
    assert [c.chunk for c in cuts] == [Slice(0, 1, 90), Slice(10, 11, 90), Slice(20, 21, 90)]
    assert [c.out for c in cuts] == [slice(0, 1), slice(1, 2), slice(2, 3)]


def test_dim_cuts_empty() -> None:
    assert dim_cuts(Slice(5, 5), 4) == []
    assert dim_cuts(Coords(np.zeros(0, dtype=np.int64)), 4) == []


def test_dim_cuts_coords_group_by_chunk_keep_positions() -> None:
    cuts = dim_cuts(C(45, 3, 41, 3, 99), 40)
    assert [c.index for c in cuts] == [0, 1, 2]
    assert cuts[0].chunk == C(3, 3) and cuts[0].out.tolist() == [1, 3]  # type: ignore[union-attr]
    assert cuts[1].chunk == C(5, 1) and cuts[1].out.tolist() == [0, 2]  # type: ignore[union-attr]
    assert cuts[2].chunk == C(19) and cuts[2].out.tolist() == [4]  # type: ignore[union-attr]


def _reassemble(cuts: list[DimCut], c: int, count: int) -> tuple[np.ndarray, np.ndarray]:
    """Return (absolute coordinate per output position, times each position was written)."""
    out = np.full(count, -1, dtype=np.int64)
    hits = np.zeros(count, dtype=np.int64)
    for cut in cuts:
        if isinstance(cut.chunk, Slice):
            rel = np.arange(cut.chunk.start, cut.chunk.stop, cut.chunk.step)
        else:
            rel = cut.chunk.values
        assert rel.size > 0, "a cut must select something"
        assert (rel >= 0).all() and (rel < c).all(), "chunk-relative coordinates must lie inside the chunk"
        pos = np.arange(count)[cut.out] if isinstance(cut.out, slice) else cut.out
        assert len(pos) == rel.size
        out[pos] = cut.index * c + rel
        np.add.at(hits, pos, 1)
    return out, hits


@st.composite
def slice_case(draw: st.DrawFn) -> tuple[int, int, Slice]:
    extent = draw(st.integers(1, 300))
    c = draw(st.integers(1, 64))
    start = draw(st.integers(0, extent - 1))
    stop = draw(st.integers(start, extent))
    step = draw(st.integers(1, 120))
    return extent, c, Slice(start, stop, step)


@FAST
@given(slice_case())
def test_dim_cuts_slice_property(case: tuple[int, int, Slice]) -> None:
    extent, c, sl = case
    want = np.arange(extent)[sl.start : sl.stop : sl.step]
    cuts = dim_cuts(sl, c)
    got, hits = _reassemble(cuts, c, sl.count)
    np.testing.assert_array_equal(got, want)
    assert (hits == 1).all()
    idx = [cut.index for cut in cuts]
    assert idx == sorted(set(idx)), "chunks in ascending order, each once"
    assert set(idx) == set((want // c).tolist()), "exactly the chunks that hold a selected point (§1.3)"
    for cut in cuts:
        assert isinstance(cut.chunk, Slice) and cut.chunk.step == sl.step
        assert isinstance(cut.out, slice)
        # each chunk selection is a valid HSDS select against the chunk dims
        assert parse_select(format_select([cut.chunk]), (c,)).dims == (cut.chunk,)


@st.composite
def coords_case(draw: st.DrawFn) -> tuple[int, int, Coords]:
    extent = draw(st.integers(1, 300))
    c = draw(st.integers(1, 64))
    vals = draw(st.lists(st.integers(0, extent - 1), min_size=0, max_size=40))
    return extent, c, Coords(np.asarray(vals, dtype=np.int64))


@FAST
@given(coords_case())
def test_dim_cuts_coords_property(case: tuple[int, int, Coords]) -> None:
    extent, c, co = case
    want = np.arange(extent)[co.values]
    cuts = dim_cuts(co, c)
    got, hits = _reassemble(cuts, c, co.count)
    np.testing.assert_array_equal(got, want)
    assert (hits == 1).all()
    idx = [cut.index for cut in cuts]
    assert idx == sorted(set(idx))
    assert set(idx) == set((want // c).tolist())
    for cut in cuts:
        assert isinstance(cut.chunk, Coords)
        assert parse_select(format_select([cut.chunk]), (c,)).dims == (cut.chunk,)


@FAST
@given(
    st.lists(st.tuples(st.integers(1, 30), st.integers(1, 12)), min_size=1, max_size=3),
    st.data(),
)
def test_hyperslab_cuts_product_reproduces_numpy(dims: list[tuple[int, int]], data: st.DataObject) -> None:
    """The product of per-dim cuts, placed at their outputs, equals numpy indexing (outer)."""
    shape = tuple(e for e, _ in dims)
    chunks = tuple(c for _, c in dims)
    sel: list[Any] = []
    for e in shape:
        if data.draw(st.booleans()):
            start = data.draw(st.integers(0, e - 1))
            stop = data.draw(st.integers(start + 1, e))
            sel.append(Slice(start, stop, data.draw(st.integers(1, 7))))
        else:
            sel.append(C(*data.draw(st.lists(st.integers(0, e - 1), min_size=1, max_size=6))))
    hs = Hyperslab(tuple(sel))
    # round trip through the select string first
    hs = parse_select(hs.to_text(), shape)
    src = np.arange(int(np.prod(shape))).reshape(shape)
    out = np.full(hs.shape, -1)
    import itertools

    for combo in itertools.product(*(dim_cuts(d, c) for d, c in zip(hs.dims, chunks, strict=False))):
        origin = [cut.index * c for cut, c in zip(combo, chunks, strict=False)]
        chunk = np.zeros(chunks, dtype=src.dtype) - 7
        region = tuple(slice(o, min(o + c, e)) for o, c, e in zip(origin, chunks, shape, strict=False))
        part = src[region]
        chunk[tuple(slice(0, n) for n in part.shape)] = part
        rel = [
            np.arange(cut.chunk.start, cut.chunk.stop, cut.chunk.step)
            if isinstance(cut.chunk, Slice)
            else cut.chunk.values
            for cut in combo
        ]
        pos = [
            np.arange(hs.shape[i])[cut.out] if isinstance(cut.out, slice) else cut.out for i, cut in enumerate(combo)
        ]
        out[np.ix_(*pos)] = chunk[np.ix_(*rel)]
    idx = [np.arange(d.start, d.stop, d.step) if isinstance(d, Slice) else d.values for d in hs.dims]
    np.testing.assert_array_equal(out, src[np.ix_(*idx)])


# --------------------------------------------------------------------------- fuzzing

_SELECT_TOKENS = st.lists(
    st.sampled_from(list("[]:,-0123456789 \t") + ["x", "12", "٣", "\x00", "99999999999999999999999", "1e3", "+1"]),
    max_size=20,
).map("".join)


@FUZZ
@example("[[99999999999999999999999]]", [40])
@given(
    st.one_of(st.text(max_size=40), _SELECT_TOKENS),
    st.lists(st.integers(0, 50), min_size=0, max_size=3),
)
def test_fuzz_parse_select_only_raises_our_errors(text: str, shape: list[int]) -> None:
    try:
        hs = parse_select(text, shape)
    except HsdsBackendsError:
        return
    _assert_in_range(hs, shape, empty=False)  # success: a valid selection of the right rank, in range


_LEAF = st.one_of(
    st.integers(-(2**70), 2**70),
    st.integers(-20, 20),
    st.none(),
    st.booleans(),
    st.floats(allow_nan=True),
    st.text(max_size=3),
    st.just(Ellipsis),
    st.builds(
        slice,
        st.one_of(st.none(), st.integers(-20, 20)),
        st.one_of(st.none(), st.integers(-20, 20)),
        st.one_of(st.none(), st.integers(-5, 5)),
    ),
    st.builds(slice, st.one_of(st.text(max_size=2), st.floats()), st.none()),
    st.builds(lambda v: np.asarray(v), st.lists(st.integers(-20, 20), max_size=4)),
    st.builds(lambda v: np.asarray(v), st.lists(st.booleans(), max_size=4)),
)
_KEY = st.recursive(
    _LEAF,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.tuples(inner, inner), st.lists(inner, max_size=3).map(tuple)
    ),
    max_leaves=8,
)


@FUZZ
@example([[1], [1, 2]], [3])
@example(slice("a", None), [3])
@example((np.array([1, 2]), 0), [])
@given(_KEY, st.lists(st.integers(0, 12), min_size=0, max_size=3))
def test_fuzz_from_index_only_raises_our_errors(key: Any, shape: list[int]) -> None:
    try:
        hs = from_index(key, shape)
    except HsdsBackendsError:
        return
    _assert_in_range(hs, shape, empty=True)


def _assert_in_range(hs: Any, shape: list[int], *, empty: bool) -> None:
    """``hs`` has the rank of ``shape`` and selects only in-range elements (an empty slice only if ``empty``)."""
    assert len(hs.dims) == len(shape)
    for d, e in zip(hs.dims, shape, strict=False):
        if isinstance(d, Slice):
            assert 0 <= d.start <= d.stop <= e and d.step >= 1 and (empty or d.start < d.stop)
        else:
            assert ((d.values >= 0) & (d.values < e)).all()


def test_parse_select_huge_coordinate_is_selection_error() -> None:
    # found by fuzzing: int64 overflow must not leak OverflowError
    with pytest.raises(SelectionError, match="99999999999999999999999"):
        parse_select("[[99999999999999999999999]]", (40,))


def test_an_index_of_thousands_of_digits_is_refused_before_it_is_parsed() -> None:
    huge = "9" * 5000
    with pytest.raises(SelectionError, match=r"bad select '\[9{39}'… \(5,002 characters\): index '9{40}'… \(5,000 characters\) has 5000 digits; an index has at most 20"):
        parse_select(f"[{huge}]", (40,))
    with pytest.raises(SelectionError, match=r"is not an integer"):
        parse_select("[\u0661:3]", (40,))  # an Arabic-Indic digit is not an index digit
