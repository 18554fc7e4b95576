"""h5py is the oracle for the h5py-style read API.

The same data is written with h5py into a local HDF5 file and with our writer into HSDS storage
(posix, in a tmp dir); hypothesis generates selections and each comparison asserts that our result
equals h5py's -- type, dtype, shape and bytes -- or that both raise the same builtin exception class
(ours through a mixin: ``isinstance(ours, type(theirs))``), with a message of ours that says something.

Every generated comparison is counted in :data:`COUNTS` (key: the dataset or attribute type, prefixed
by what was compared). At module teardown the counts are printed and written as JSON to the path in
``$HSDS_ORACLE_COUNTS`` (if set); :func:`test_every_strategy_ran_enough_cases` fails when a strategy
that ran produced fewer cases than it should.

Deliberately excluded (see :func:`_whitelisted`): an index list with an element equal to the axis
extent, for which h5py raises ``OSError`` from the HDF5 library; we raise ``IndexError`` and that is
what is asserted instead.
"""

from __future__ import annotations

import asyncio
import collections
import copy
import json
import math
import os
import re
import string
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import hsds_backends as hb
from hsds_backends.dtypes import vlen_dtype
from hsds_backends.storage.posix import PosixStorage
from hsds_backends.writer import Writer

h5py = pytest.importorskip("h5py")

DOMAIN = "/home/test/oracle.h5"
ATTR_DOMAIN = "/home/test/oracle_attrs.h5"
HUGE = 2**40
CMPD = np.dtype([("id", "<i4"), ("temp", ">f8"), ("name", "S5")])
CMPD2 = np.dtype([("a", ">i2"), ("b", "<f4"), ("c", "S3")])

#: Generated comparisons, by what was compared and on which dataset / attribute type.
COUNTS: collections.Counter[str] = collections.Counter()
#: Minimum number of cases per counter key, registered by the tests that ran.
EXPECTED: dict[str, int] = {}
#: Counter keys whose comparison failed (their test fails; the minimum-count check leaves them out).
FAILED_KEYS: set[str] = set()
#: Datasets our writer could not give a maxshape (it did not take the parameter).

EXAMPLES = 60  # per dataset and per test; keeps the module well under a minute


def _expect(key: str, minimum: int, spec: Spec | None = None) -> None:
    """Register that ``key`` must reach ``minimum`` cases (3 for a scalar dataset: hypothesis exhausts its few keys)."""
    if spec is not None and not spec.shape:
        minimum = min(minimum, 3)
    EXPECTED[key] = max(EXPECTED.get(key, 0), minimum)


# ------------------------------------------------------------------------------------ datasets


@dataclass(frozen=True)
class Spec:
    """One dataset, written identically with both writers."""

    name: str
    dtype: np.dtype[Any]
    shape: tuple[int, ...]
    data: np.ndarray[Any, Any] | None
    chunks: tuple[int, ...]
    filters: list[Any] = field(default_factory=list)
    h5kw: dict[str, Any] = field(default_factory=dict)
    fillvalue: Any = None
    maxshape: tuple[int | None, ...] | None = None
    skip: tuple[tuple[int, ...], ...] = ()

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    @property
    def is_compound(self) -> bool:
        return self.dtype.names is not None

    @property
    def is_vlen(self) -> bool:
        return self.dtype.hasobject


def _f4_2d() -> np.ndarray[Any, Any]:
    return (np.arange(130, dtype="<f4").reshape(13, 10) * 0.5 - 3).astype("<f4")


def _be_f8() -> np.ndarray[Any, Any]:
    a = (np.arange(99, dtype=">f8").reshape(9, 11) - 40) / 3
    a[0, 0], a[8, 10], a[4, 4] = np.nan, np.inf, -0.0
    return a.astype(">f8")


def _cmpd(n: int, dt: np.dtype[Any]) -> np.ndarray[Any, Any]:
    a = np.zeros(n, dtype=dt)
    names = dt.names or ()
    a[names[0]] = np.arange(n) * 7 - 20
    a[names[1]] = np.arange(n) / 4 - 1
    a[names[2]] = [(b"r%dxyz" % i)[: dt[names[2]].itemsize] for i in range(n)]
    return a


def _strings() -> np.ndarray[Any, Any]:
    vals = [b"", b"a", b"seven77", b"x y", b"1234567"] + [b"s%d" % i for i in range(14)]
    return np.array(vals, dtype="S7")


SPECS: list[Spec] = [
    Spec(
        "f4_2d",
        np.dtype("<f4"),
        (13, 10),
        _f4_2d(),
        (4, 4),
        ["shuffle", ("gzip", 4)],
        {"compression": "gzip", "compression_opts": 4, "shuffle": True},
        maxshape=(None, 10),
    ),
    Spec(
        "i8_1d",
        np.dtype("<i8"),
        (37,),
        np.arange(37, dtype="<i8") * 3 - 50,
        (8,),
        [],
        {},
        fillvalue=-1,
        maxshape=(None,),
        skip=((1,), (4,)),
    ),
    Spec(
        "be_i4_3d",
        np.dtype(">i4"),
        (7, 6, 5),
        (np.arange(210, dtype=">i4").reshape(7, 6, 5) * -3 + 7).astype(">i4"),
        (3, 4, 2),
        [("gzip", 6)],
        {"compression": "gzip", "compression_opts": 6},
        skip=((0, 1, 0), (2, 0, 2)),
    ),
    Spec("be_f8_2d", np.dtype(">f8"), (9, 11), _be_f8(), (4, 3), [], {}, fillvalue=2.5, skip=((0, 1), (2, 3))),
    Spec(
        "u2_1d",
        np.dtype("<u2"),
        (50,),
        (np.arange(50, dtype="<u2") * 1311).astype("<u2"),
        (16,),
        ["fletcher32"],
        {"fletcher32": True},
        maxshape=(64,),
    ),
    Spec(
        "cmpd_1d",
        CMPD,
        (23,),
        _cmpd(23, CMPD),
        (5,),
        [],
        {},
        fillvalue=np.array((-1, 9.5, b"none"), dtype=CMPD),
        skip=((2,),),
    ),
    Spec(
        "cmpd_2d",
        CMPD2,
        (6, 5),
        _cmpd(30, CMPD2).reshape(6, 5),
        (4, 4),
        ["shuffle", ("gzip", 1)],
        {"compression": "gzip", "compression_opts": 1, "shuffle": True},
    ),
    Spec("s7_1d", np.dtype("S7"), (19,), _strings(), (4,), [], {}, fillvalue=np.bytes_(b"fill"), skip=((3,),)),
    Spec("bool_2d", np.dtype("bool"), (8, 9), (np.arange(72).reshape(8, 9) % 3 == 0), (3, 4)),
    Spec("fill_f4", np.dtype("<f4"), (10, 10), None, (4, 4), fillvalue=7.5),
    Spec("fill_i2_zero", np.dtype("<i2"), (5, 7), None, (2, 3)),
    Spec("scalar_f8", np.dtype("<f8"), (), np.array(3.25, dtype="<f8"), ()),
    Spec("scalar_fill_be_i4", np.dtype(">i4"), (), None, (), fillvalue=42),
    Spec("empty_i4", np.dtype("<i4"), (0,), None, (4,), maxshape=(None,)),
    Spec("vstr_1d", vlen_dtype(str), (7,), None, (3,)),
]
VSTR_VALUES = ["", "a", "bé", "ünïcödé", "x" * 9, "z", "€"]
BY_NAME = {s.name: s for s in SPECS}
READABLE = [s.name for s in SPECS]  # variable-length strings too: bytes from d[key], as h5py
COMPOUND = [s.name for s in SPECS if s.is_compound]
STRINGS = ["s7_1d", "vstr_1d"]


def _chunk_region(spec: Spec, index: tuple[int, ...]) -> tuple[slice, ...]:
    return tuple(slice(i * c, min((i + 1) * c, n)) for i, c, n in zip(index, spec.chunks, spec.shape, strict=True))


async def _write_ours(root: Path) -> None:
    w = Writer(PosixStorage(root), "hsdstest")
    await w.create_domain(DOMAIN)
    for s in SPECS:
        kw: dict[str, Any] = {"chunks": s.chunks or None, "filters": s.filters, "fillvalue": s.fillvalue}
        if s.skip:
            skipped = set(s.skip)
            kw["skip_chunk"] = lambda i, skipped=skipped: i in skipped
        data: Any = s.data
        if s.name == "vstr_1d":
            data = np.empty(len(VSTR_VALUES), dtype=s.dtype)
            data[:] = VSTR_VALUES
        if data is None:
            kw.update(shape=s.shape, dtype=s.dtype)
        if s.maxshape is not None:
            kw["maxshape"] = s.maxshape
        await w.create_dataset(DOMAIN, f"/{s.name}", data, **kw)


def _write_h5py(path: Path) -> None:
    with h5py.File(path, "w") as f:
        for s in SPECS:
            kw: dict[str, Any] = dict(s.h5kw)
            if s.chunks and s.shape:
                kw["chunks"] = s.chunks
            if s.maxshape is not None:
                kw["maxshape"] = s.maxshape
            if s.fillvalue is not None:
                kw["fillvalue"] = s.fillvalue
            if s.name == "vstr_1d":
                f.create_dataset(
                    s.name, data=np.array(VSTR_VALUES, dtype=object), dtype=h5py.string_dtype(), chunks=s.chunks
                )
                continue
            d = f.create_dataset(s.name, shape=s.shape, dtype=s.dtype, **kw)
            if s.data is None:
                continue  # nothing written: every chunk reads as fill
            if not s.shape:
                d[()] = s.data
                continue
            grid = tuple(math.ceil(n / c) for n, c in zip(s.shape, s.chunks, strict=True))
            for index in np.ndindex(*grid):  # write chunk by chunk, leaving the skipped ones unallocated
                if index not in s.skip:
                    region = _chunk_region(s, index)
                    d[region] = s.data[region]


@dataclass
class Env:
    dom: Any
    h5: Any
    root: Path


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    root = tmp_path_factory.mktemp("oracle")
    asyncio.run(_write_ours(root))
    _write_h5py(root / "oracle.h5")
    with h5py.File(root / "oracle.h5", "r") as f, hb.open_domain(DOMAIN, root_dir=str(root)) as dom:
        yield Env(dom, f, root)


@pytest.fixture(scope="module", autouse=True)
def _report_counts() -> Iterator[None]:
    yield
    path = os.environ.get("HSDS_ORACLE_COUNTS")
    if path:
        Path(path).write_text(json.dumps(dict(sorted(COUNTS.items())), indent=1))
    print(
        f"\nh5py-oracle cases: {sum(COUNTS.values())} total; "
        + ", ".join(f"{k}={v}" for k, v in sorted(COUNTS.items()))
    )


# ------------------------------------------------------------------------------- comparisons

_SPECIFIC = re.compile(
    r"\d|'|\"|index|indic|slice|step|field|select|axis|dim|ellipsis|list|bool|mask|shape|dtype|contiguous|scalar|chunk|broadcast|range|order",
    re.IGNORECASE,
)


def _check_message(exc: BaseException, what: str) -> None:
    msg = str(exc).strip()
    assert msg, f"{what}: our {type(exc).__name__} has an empty message"
    assert _SPECIFIC.search(msg), f"{what}: our message {msg!r} names nothing specific (a value, index, field, axis...)"


def _same_value(ours: Any, theirs: Any, what: str) -> None:
    """Type, dtype, shape and bytes equal (element-wise for object arrays)."""
    assert type(ours) is type(theirs), (
        f"{what}: {type(ours).__name__} of shape {np.shape(ours)}"
        f" vs h5py's {type(theirs).__name__} of shape {np.shape(theirs)}"
    )
    if isinstance(theirs, (np.ndarray, np.generic)):
        assert ours.dtype == theirs.dtype, f"{what}: dtype {ours.dtype} vs h5py's {theirs.dtype}"
        assert np.shape(ours) == np.shape(theirs), f"{what}: shape {np.shape(ours)} vs h5py's {np.shape(theirs)}"
        if theirs.dtype.hasobject:
            assert [type(x) for x in np.ravel(ours)] == [type(x) for x in np.ravel(theirs)], f"{what}: element types"
            assert np.ravel(ours).tolist() == np.ravel(theirs).tolist(), f"{what}: values {ours!r} vs h5py's {theirs!r}"
        else:
            assert np.asarray(ours).tobytes() == np.asarray(theirs).tobytes(), (
                f"{what}: values {ours!r} vs h5py's {theirs!r}"
            )
    else:
        assert ours == theirs, f"{what}: {ours!r} vs h5py's {theirs!r}"


def _outcome(fn: Callable[[], Any]) -> tuple[bool, Any]:
    try:
        return True, fn()
    except Exception as exc:  # noqa: BLE001 - the oracle compares whatever is raised
        return False, exc


def _compare(what: str, ours: Callable[[], Any], theirs: Callable[[], Any], *, whitelisted: bool = False) -> bool:
    """Run both; assert the same value or the same exception class. Returns True when h5py raised."""
    t_ok, t = _outcome(theirs)
    o_ok, o = _outcome(ours)
    if not t_ok:
        if isinstance(t, OSError) and whitelisted:
            COUNTS["whitelisted:list_element_equals_extent"] += 1
            assert not o_ok and isinstance(o, IndexError), (
                f"{what}: expected our IndexError (h5py: OSError {t}); got {o!r}"
            )
            _check_message(o, what)
            return True
        assert isinstance(t, (IndexError, TypeError, ValueError)), (
            f"{what}: h5py raised {type(t).__name__}: {t}; extend the oracle"
        )
        if o_ok:
            raise AssertionError(f"{what}: h5py raised {type(t).__name__}({t}); we returned {o!r}")
        if not isinstance(o, type(t)):
            raise AssertionError(
                f"{what}: h5py raised {type(t).__name__}({t}); we raised {type(o).__name__}({o})"
            ) from o
        _check_message(o, what)
        return True
    if not o_ok:
        raise AssertionError(f"{what}: h5py returned {t!r}; we raised {type(o).__name__}({o})") from o
    _same_value(o, t, what)
    return False


# ---------------------------------------------------------------------------------- strategies

_STEPS = st.sampled_from([None, None, None, 1, 1, 2, 3, 5, -1, 0])


def _bound(n: int) -> st.SearchStrategy[int | None]:
    return st.one_of(st.none(), st.integers(-n - 3, n + 3), st.sampled_from([HUGE, -HUGE]))


def _int(n: int) -> st.SearchStrategy[Any]:
    ints = st.one_of(st.integers(-n - 2, n + 1), st.sampled_from([HUGE, -HUGE]))
    return st.one_of(ints, ints.map(np.int64))


def _slice(n: int) -> st.SearchStrategy[slice]:
    return st.builds(slice, _bound(n), _bound(n), _STEPS)


def _index_list(n: int) -> st.SearchStrategy[Any]:
    valid = st.lists(st.integers(0, n - 1), unique=True, max_size=min(n, 6)).map(sorted) if n > 0 else st.just([])
    wild = st.lists(st.integers(-2, n + 1), min_size=1, max_size=5)  # unsorted, duplicated, negative, out of range
    lists = st.one_of(valid, valid, wild)
    return st.one_of(lists, lists.map(lambda xs: np.array(xs, dtype=np.int64)))


def _bool_axis(n: int) -> st.SearchStrategy[Any]:
    length = st.sampled_from([n, n, n, max(n - 1, 0), n + 1])
    bools = length.flatmap(lambda k: st.lists(st.booleans(), min_size=k, max_size=k))
    return st.one_of(bools.map(lambda b: np.array(b, dtype=bool)), bools)  # numpy array or a Python list of bools


_ODD = st.sampled_from([None, np.newaxis, 1.5, np.float64(0.0), np.bool_(True), np.bool_(False), True, False])
_KINDS = ["int"] * 6 + ["slice"] * 8 + ["list"] * 3 + ["bool"] * 2 + ["ellipsis", "odd"]


def _component(n: int) -> st.SearchStrategy[Any]:
    def of(kind: str) -> st.SearchStrategy[Any]:
        return {
            "int": lambda: _int(n),
            "slice": lambda: _slice(n),
            "list": lambda: _index_list(n),
            "bool": lambda: _bool_axis(n),
            "ellipsis": lambda: st.just(Ellipsis),
            "odd": lambda: _ODD,
        }[kind]()

    return st.sampled_from(_KINDS).flatmap(of)


def _mask(shape: tuple[int, ...]) -> st.SearchStrategy[np.ndarray[Any, Any]]:
    size = math.prod(shape)
    return st.lists(st.booleans(), min_size=size, max_size=size).map(lambda b: np.array(b, dtype=bool).reshape(shape))


@st.composite
def h5keys(
    draw: st.DrawFn, shape: tuple[int, ...], names: tuple[str, ...] | None = None, allow_names: bool = True
) -> Any:
    """An h5py index for a dataset of ``shape``: valid most of the time, wrong in every way h5py rejects."""
    ndim = len(shape)
    form = draw(st.sampled_from(["tuple"] * 6 + ["single", "single", "empty", "ellipsis", "mask"]))
    if form == "empty":
        return ()
    if form == "ellipsis":
        return Ellipsis
    if form == "mask":
        return draw(_mask(shape)) if ndim else np.bool_(draw(st.booleans()))
    if form == "single":
        if allow_names and names and draw(st.integers(0, 3)) == 0:
            return draw(st.sampled_from([*names, "nope"]))
        return draw(_component(shape[0] if ndim else 3))
    count = draw(st.sampled_from([*range(ndim + 1)] * 3 + [ndim + 1]))  # too many indices now and then
    comps: list[Any] = [draw(_component(shape[i] if i < ndim else 3)) for i in range(count)]
    if draw(st.integers(0, 4)) == 0:
        comps.insert(draw(st.integers(0, len(comps))), Ellipsis)
    if allow_names:
        pool = [*names, "nope"] if names else ["temp"]
        n_names = draw(st.sampled_from([0, 0, 0, 1, 1, 2] if names else [0, 0, 0, 0, 0, 0, 0, 1]))
        for _ in range(n_names):
            comps.insert(draw(st.integers(0, len(comps))), draw(st.sampled_from(pool)))
    return tuple(comps)


@st.composite
def valid_h5keys(draw: st.DrawFn, shape: tuple[int, ...], names: tuple[str, ...] | None = None) -> Any:
    """An index h5py accepts: in-range ints, slices of positive step, at most one sorted list or boolean array,
    at most one Ellipsis, distinct valid field names. Keeps value bugs apart from which-error-first differences."""
    ndim = len(shape)
    if ndim and draw(st.integers(0, 9)) == 0:
        return draw(_mask(shape))
    count = draw(st.integers(0, ndim))
    fancy_axis = draw(st.integers(0, count - 1)) if count and draw(st.integers(0, 3)) == 0 else None
    comps: list[Any] = []
    for axis in range(count):
        n = shape[axis]
        if axis == fancy_axis:
            if n and draw(st.booleans()):
                comps.append(draw(st.lists(st.integers(0, n - 1), unique=True, max_size=min(n, 6)).map(sorted)))
            else:
                comps.append(np.array(draw(st.lists(st.booleans(), min_size=n, max_size=n)), dtype=bool))
            continue
        ints = [st.integers(-n, n - 1), st.integers(-n, n - 1).map(np.int64)] if n else []
        bound = st.one_of(st.none(), st.integers(-n - 3, n + 3), st.just(HUGE))
        comps.append(draw(st.one_of(*ints, st.builds(slice, bound, bound, st.sampled_from([None, 1, 2, 3, 7])))))
    if draw(st.integers(0, 3)) == 0:
        comps.insert(draw(st.integers(0, len(comps))), Ellipsis)
    if names and draw(st.integers(0, 2)) == 0:
        k = draw(st.sampled_from([1, 1, 1, 2, len(names)]))
        for name in draw(st.lists(st.sampled_from(names), unique=True, min_size=k, max_size=k)):
            comps.insert(draw(st.integers(0, len(comps))), name)
    if len(comps) == 1 and draw(st.booleans()):
        return comps[0]
    return tuple(comps)


def _axes_of(key: Any, ndim: int) -> list[tuple[int, Any]]:
    """(axis, component) of each index component, with Ellipsis and field names taken out."""
    comps = [k for k in (key if isinstance(key, tuple) else (key,)) if not isinstance(k, str)]
    if any(k is Ellipsis for k in comps):
        at = next(i for i, k in enumerate(comps) if k is Ellipsis)
        before, after = comps[:at], [k for k in comps[at + 1 :] if k is not Ellipsis]
        return list(enumerate(before)) + [(ndim - len(after) + i, k) for i, k in enumerate(after)]
    return list(enumerate(comps))


def _whitelisted(key: Any, shape: tuple[int, ...]) -> bool:
    """An index list holding the axis extent itself: h5py lets the HDF5 library raise OSError; we raise IndexError."""
    for axis, comp in _axes_of(key, len(shape)):
        is_list = isinstance(comp, (list, np.ndarray)) and np.asarray(comp).dtype.kind in "iu"
        if is_list and 0 <= axis < len(shape) and shape[axis] in np.asarray(comp).tolist():
            return True
    return False


def _read_case(what: str, spec: Spec, ours: Callable[[], Any], theirs: Callable[[], Any], key: Any) -> None:
    COUNTS[what] += 1
    try:
        raised = _compare(what, ours, theirs, whitelisted=_whitelisted(key, spec.shape))
    except AssertionError:
        FAILED_KEYS.add(what)
        raise
    COUNTS[f"{what}:{'error' if raised else 'value'}"] += 1


SETTINGS = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


# -------------------------------------------------------------------------------------- tests


GETITEM_CASES = (
    [(n, "any") for n in READABLE] + [(n, "valid") for n in READABLE] + [(n, "asstr") for n in STRINGS]
)


@pytest.mark.parametrize(("name", "mode"), GETITEM_CASES, ids=[f"{n}-{m}" for n, m in GETITEM_CASES])
@SETTINGS
@given(data=st.data())
def test_getitem_equals_h5py(env: Env, name: str, mode: str, data: st.DataObject) -> None:
    """``d[key]`` for generated keys: value, dtype, shape and type, or the same exception class.

    ``mode``: ``any`` keys; ``valid``, only keys h5py accepts (so a wrong value is not hidden behind
    an error-precedence difference); ``asstr``, ``d.asstr()[key]`` on string datasets.
    """
    spec = BY_NAME[name]
    what = name if mode == "any" else f"{mode}:{name}"
    _expect(what, EXAMPLES // 2, spec)
    if mode == "valid":
        keys = valid_h5keys(spec.shape, spec.dtype.names)
    else:
        keys = h5keys(spec.shape, None if mode == "asstr" else spec.dtype.names, allow_names=mode != "asstr")
    key = data.draw(keys, label="key")
    d, h = env.dom[f"/{name}"], env.h5[name]
    if mode == "asstr":
        _read_case(what, spec, lambda: d.asstr()[copy.deepcopy(key)], lambda: h.asstr()[copy.deepcopy(key)], key)
    else:
        _read_case(what, spec, lambda: d[copy.deepcopy(key)], lambda: h[copy.deepcopy(key)], key)


@pytest.mark.parametrize("name", COMPOUND)
@SETTINGS
@given(data=st.data())
def test_fields_equal_h5py(env: Env, name: str, data: st.DataObject) -> None:
    """``d.fields('x')[key]`` (plain) and ``d.fields([...])[key]`` (structured), unknown names included."""
    spec = BY_NAME[name]
    _expect(f"fields:{name}", EXAMPLES // 2, spec)
    names = list(spec.dtype.names or ())
    one = st.sampled_from([*names, "nope"])
    several = st.lists(st.sampled_from([*names, "nope"]), min_size=1, max_size=3)
    sel = data.draw(st.one_of(one, one, several, several.map(tuple)), label="names")
    key = data.draw(h5keys(spec.shape, None, allow_names=False), label="key")
    d, h = env.dom[f"/{name}"], env.h5[name]
    _read_case(
        f"fields:{name}",
        spec,
        lambda: d.fields(sel)[copy.deepcopy(key)],
        lambda: h.fields(sel)[copy.deepcopy(key)],
        key,
    )


def test_list_of_field_names_reads_what_h5py_gives_for_the_tuple_form(env: Env) -> None:
    """``d[['id', 'temp']]``: h5py 3.16 refuses a list of names (TypeError); we read it as numpy does,
    deliberately (docs/api.md §4) — the same as h5py's ``d['id', 'temp']``."""
    d, h = env.dom["/cmpd_1d"], env.h5["cmpd_1d"]
    for ours_key, h5py_key in (
        (["id", "temp"], ("id", "temp")),
        (["temp"], None),
        ((slice(0, 3), ["id", "temp"]), (slice(0, 3), "id", "temp")),
    ):
        with pytest.raises((TypeError, ValueError)):  # a list as an index list, or one index too many
            h[ours_key]
        got = d[ours_key]
        want = h[h5py_key] if h5py_key is not None else h.fields(["temp"])[()]
        assert got.dtype == want.dtype and got.shape == want.shape and got.tobytes() == want.tobytes(), ours_key
        COUNTS["cmpd_1d:list_of_names"] += 1


def test_np_s_and_known_keys_equal_h5py(env: Env) -> None:
    """A fixed set of np.s_ objects and the rules listed in h5py's docs, on every readable dataset."""
    fixed: list[Any] = [
        np.s_[...],
        np.s_[()],
        np.s_[0],
        np.s_[-1],
        np.s_[1:3],
        np.s_[::2],
        np.s_[..., 0],
        np.s_[0, ...],
        np.s_[-2:],
        np.s_[1:100000],
        np.s_[5:2],
        np.s_[::-1],
        np.s_[::0],
        np.s_[..., ...],
        np.s_[[0, 1]],
        np.s_[[1, 0]],
        np.s_[[0, 0]],
        np.s_[[]],
        np.s_[None],
        np.s_[1.0],
        np.s_[True],
        np.s_[False],
        np.s_[np.bool_(True)],
        np.s_[0, 0, 0, 0],
        np.s_[[0], [0]],
        np.s_[-(10**6)],
        np.s_[10**6],
    ]
    wrong: list[str] = []
    for name in READABLE:
        spec = BY_NAME[name]
        d, h = env.dom[f"/{name}"], env.h5[name]
        keys = list(fixed)
        names = spec.dtype.names
        if names:  # one field (plain result), several (structured), each with ints that drop every axis
            ints = (0,) * len(spec.shape)
            keys += [
                names[0],
                (*ints, names[0]),
                (*ints, names[2]),
                (..., names[1]),
                (*ints, names[0], names[1]),
                (slice(1, 3), names[1]),
                (names[0], names[0]),
                (0, "nope"),
            ]
        elif spec.shape:
            keys += [(0, "temp"), ("temp", ...)]
        if spec.shape:
            keys.append(np.zeros(spec.shape, dtype=bool))
            keys.append(np.arange(spec.size).reshape(spec.shape) % 3 == 1)
        for key in keys:
            try:
                _read_case(f"{name}:np.s_", spec, lambda d=d, key=key: d[key], lambda h=h, key=key: h[key], key)
            except AssertionError as exc:
                wrong.append(f"{key!r}: {str(exc).splitlines()[0]}")
    assert not wrong, f"{len(wrong)} keys differ from h5py:\n" + "\n".join(wrong)


def _dest(shape: tuple[int, ...], dt: np.dtype[Any], contiguous: bool) -> np.ndarray[Any, Any]:
    """A fresh destination: zeros (structured, strings) or 99s, C-contiguous or every other element of a wider array."""

    def make(s: tuple[int, ...]) -> np.ndarray[Any, Any]:
        return np.zeros(s, dtype=dt) if dt.names or dt.kind == "S" else np.full(s, 99, dtype=dt)

    if contiguous or not shape:
        return make(shape)
    return make((*shape[:-1], shape[-1] * 2))[..., ::2]


@st.composite
def read_direct_cases(draw: st.DrawFn, spec: Spec) -> tuple[Any, Any, tuple[int, ...], np.dtype[Any], bool]:
    """(source_sel, dest_sel, dest shape, dest dtype, C-contiguous): slices, a destination of the selected shape,
    a larger one with a dest_sel, one of the wrong shape, or one that is not C-contiguous."""
    shape = spec.shape
    src: Any = None
    if shape and draw(st.integers(0, 3)):
        src = tuple(
            slice(
                draw(st.one_of(st.none(), st.integers(-n - 1, n + 1))),
                draw(st.one_of(st.none(), st.integers(-n - 1, n + 2))),
                draw(st.sampled_from([None, None, 1, 2, 3, -1])),
            )
            for n in shape[: draw(st.integers(1, len(shape)))]
        )
    try:
        sel_shape = np.empty(shape, dtype=bool)[src if src is not None else ()].shape
    except (IndexError, ValueError):
        sel_shape = shape
    kinds: list[Any] = [spec.dtype, spec.dtype.newbyteorder()] if spec.dtype.kind in "iufb" else [spec.dtype]
    if spec.dtype.kind in "iuf":
        kinds.append(np.dtype("<f8"))
    dt = np.dtype(draw(st.sampled_from(kinds)))
    mode = draw(st.sampled_from(["exact", "exact", "larger", "larger", "mismatch", "noncontiguous"]))
    dest_sel: Any = None
    if mode == "larger" and sel_shape:
        extra = [draw(st.integers(0, 2)) for _ in sel_shape]
        offs = [draw(st.integers(0, e)) for e in extra]
        dest_shape = tuple(n + e for n, e in zip(sel_shape, extra, strict=True))
        dest_sel = tuple(slice(o, o + n) for o, n in zip(offs, sel_shape, strict=True))
    elif mode == "mismatch":
        dest_shape = (*sel_shape[:-1], max(sel_shape[-1] + draw(st.sampled_from([-1, 1, 2])), 0)) if sel_shape else (2,)
    else:
        dest_shape = sel_shape
    return src, dest_sel, dest_shape, dt, mode != "noncontiguous"


@pytest.mark.parametrize("name", READABLE)
@settings(max_examples=EXAMPLES // 2, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_read_direct_equals_h5py(env: Env, name: str, data: st.DataObject) -> None:
    """``read_direct(dest, source_sel, dest_sel)``: the destination's bytes afterwards, or the same exception class."""
    spec = BY_NAME[name]
    _expect(f"read_direct:{name}", EXAMPLES // 4, spec)
    src, dsel, shape, dt, contiguous = data.draw(read_direct_cases(spec), label="case")
    ours_dest, their_dest = _dest(shape, dt, contiguous), _dest(shape, dt, contiguous)
    note(f"dest {dt} {shape} c_contiguous={ours_dest.flags.c_contiguous}")
    d, h = env.dom[f"/{name}"], env.h5[name]

    def ours() -> np.ndarray[Any, Any]:
        d.read_direct(ours_dest, copy.deepcopy(src), copy.deepcopy(dsel))
        return ours_dest

    def theirs() -> np.ndarray[Any, Any]:
        h.read_direct(their_dest, copy.deepcopy(src), copy.deepcopy(dsel))
        if spec.shape == ():
            # h5py writes a scalar dataset's value into the first element of the destination
            # selection only; we broadcast it as numpy assignment does (docs/api.md §4), so where
            # h5py accepts the call, numpy is the oracle for the bytes.
            their_dest[() if dsel is None else dsel] = h[()]
            COUNTS["read_direct:scalar_broadcast_as_numpy"] += 1
        return their_dest

    _read_case(f"read_direct:{name}", spec, ours, theirs, src)


def test_read_direct_errors(env: Env) -> None:
    """A non C-contiguous destination and a destination of the wrong shape: TypeError, as h5py."""
    d, h = env.dom["/i8_1d"], env.h5["i8_1d"]
    cases: list[tuple[tuple[int, ...], bool, Any, Any]] = [
        ((37,), False, None, None),
        ((10,), True, None, None),
        ((37,), True, np.s_[0:5], np.s_[0:4]),
        ((37, 2), False, None, None),
    ]
    for shape, contiguous, s, ds in cases:
        a, b = _dest(shape, np.dtype("<f8"), contiguous), _dest(shape, np.dtype("<f8"), contiguous)
        raised = _compare(
            f"read_direct into {shape} contiguous={contiguous} {s} {ds}",
            lambda a=a, s=s, ds=ds: d.read_direct(a, s, ds),
            lambda b=b, s=s, ds=ds: h.read_direct(b, s, ds),
        )
        assert raised, "h5py accepted a destination it should refuse"
        COUNTS["read_direct:errors"] += 1


@pytest.mark.parametrize("name", [s.name for s in SPECS])
def test_len_equals_h5py(env: Env, name: str) -> None:
    d, h = env.dom[f"/{name}"], env.h5[name]
    _compare(f"len({name})", lambda: len(d), lambda: len(h))
    COUNTS["len"] += 1


@st.composite
def chunk_sels(draw: st.DrawFn, shape: tuple[int, ...]) -> Any:
    if not shape or draw(st.integers(0, 4)) == 0:
        return draw(st.sampled_from([None, slice(0, 1), 0]))
    sel = tuple(
        draw(
            st.one_of(
                st.builds(
                    slice,
                    st.one_of(st.none(), st.integers(-1, n)),
                    st.one_of(st.none(), st.integers(0, n + 1)),
                    st.sampled_from([None, None, 1, 2]),
                ),
                st.integers(0, max(n - 1, 0)),
            )
        )
        for n in shape[: draw(st.sampled_from([len(shape)] * 4 + [max(len(shape) - 1, 1), len(shape) + 1]))]
    )
    return sel[0] if len(sel) == 1 and draw(st.booleans()) else sel


@pytest.mark.parametrize("name", [s.name for s in SPECS])
@settings(max_examples=EXAMPLES // 2, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_iter_chunks_equals_h5py(env: Env, name: str, data: st.DataObject) -> None:
    """``list(d.iter_chunks(sel))``: the same slice tuples (or the same exception class)."""
    spec = BY_NAME[name]
    _expect(f"iter_chunks:{name}", EXAMPLES // 4, spec)
    sel = data.draw(chunk_sels(spec.shape), label="sel")
    d, h = env.dom[f"/{name}"], env.h5[name]
    _read_case(f"iter_chunks:{name}", spec, lambda: list(d.iter_chunks(sel)), lambda: list(h.iter_chunks(sel)), None)


PROPS = [
    "shape",
    "dtype",
    "ndim",
    "size",
    "nbytes",
    "chunks",
    "fillvalue",
    "compression",
    "compression_opts",
    "shuffle",
    "fletcher32",
    "maxshape",
    "name",
]


@pytest.mark.parametrize("name", [s.name for s in SPECS])
def test_properties_equal_h5py(env: Env, name: str) -> None:
    """Every property in :data:`PROPS` at once; the message lists each that differs."""
    d, h = env.dom[f"/{name}"], env.h5[name]
    wrong: list[str] = []
    for prop in PROPS:
        try:
            _compare(f"{name}.{prop}", lambda prop=prop: getattr(d, prop), lambda prop=prop: getattr(h, prop))
        except AssertionError as exc:
            wrong.append(str(exc))
        COUNTS[f"props:{name}"] += 1
    assert not wrong, "\n".join(wrong)


def test_asstr_refused_on_numbers(env: Env) -> None:
    _compare("asstr on <f4", lambda: env.dom["/f4_2d"].asstr()[0], lambda: env.h5["f4_2d"].asstr()[0])
    COUNTS["asstr:numbers"] += 1


# --------------------------------------------------------------------------------- attributes

NUM_DTYPES = [
    "i1",
    "<i2",
    ">i2",
    "<i4",
    ">i4",
    "<i8",
    ">i8",
    "u1",
    "<u2",
    ">u4",
    "<u8",
    ">u8",
    "<f4",
    ">f4",
    "<f8",
    ">f8",
]
ATTR_SHAPES = st.sampled_from([(), (), (1,), (3,), (2, 2)])
_ASCII = string.ascii_letters + string.digits + " _-"
ENUM = np.dtype("u1", metadata={"enum": {"RED": 0, "GREEN": 1, "BLUE": 2}})


def _numbers(dt: np.dtype[Any]) -> st.SearchStrategy[Any]:
    if dt.kind == "f":
        return st.one_of(st.floats(width=dt.itemsize * 8, allow_nan=False), st.just(float("nan")))
    return hnp.from_dtype(dt)


def _obj_array(values: list[Any], shape: tuple[int, ...]) -> np.ndarray[Any, Any]:
    out = np.empty(len(values), dtype=object)
    for i, v in enumerate(values):
        out[i] = v
    return out.reshape(shape)


ATTR_KINDS = [
    "num_le",
    "num_be",
    "num_1byte",
    "fixed",
    "vstr",
    "vbytes",
    "compound",
    "array",
    "bool",
    "enum",
    "vlen_num",
]


@st.composite
def attr_cases(draw: st.DrawFn, kind: str) -> tuple[str, Any, Any, Any]:
    """(type name, value, our dtype, h5py dtype) of an attribute of type ``kind``."""
    shape: tuple[int, ...] = draw(ATTR_SHAPES)
    size = math.prod(shape)
    if kind.startswith("num"):
        order = {"num_le": "<", "num_be": ">", "num_1byte": "|"}[kind]
        dt = np.dtype(draw(st.sampled_from([t for t in NUM_DTYPES if np.dtype(t).str[0] == order])))
        value = np.array(draw(st.lists(_numbers(dt), min_size=size, max_size=size)), dtype=dt).reshape(shape)
        return kind, value, None, None
    if kind == "fixed":
        n = draw(st.integers(1, 8))
        vals = draw(st.lists(st.text(_ASCII, max_size=n).map(str.encode), min_size=size, max_size=size))
        return "fixed", np.array(vals, dtype=f"S{n}").reshape(shape), None, None
    if kind in ("vstr", "vbytes"):
        text = (
            st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=6)
            if kind == "vstr"
            else st.text(_ASCII, max_size=6)
        )
        vals = draw(st.lists(text, min_size=size, max_size=size))
        value: Any = vals[0] if not shape else _obj_array(vals, shape)
        if kind == "vstr":
            return kind, value, vlen_dtype(str), h5py.string_dtype()
        ours_v = value.encode() if isinstance(value, str) else _obj_array([v.encode() for v in vals], shape)
        return kind, ours_v, vlen_dtype(bytes), h5py.string_dtype("ascii")
    if kind == "compound":
        e1, e2 = draw(st.sampled_from("<>")), draw(st.sampled_from("<>"))
        dt = np.dtype([("id", f"{e1}i4"), ("temp", f"{e2}f8"), ("name", "S5")])
        row = st.tuples(
            hnp.from_dtype(np.dtype("i4")), st.floats(allow_nan=False), st.text(_ASCII, max_size=5).map(str.encode)
        )
        return (
            "compound",
            np.array(draw(st.lists(row, min_size=size, max_size=size)), dtype=dt).reshape(shape),
            None,
            None,
        )
    if kind == "array":
        base = np.dtype(draw(st.sampled_from(["<i2", ">f4", "<u8", ">i8"])))
        sub = draw(st.sampled_from([(2,), (2, 3)]))
        n = size * math.prod(sub)
        vals = np.array(draw(st.lists(_numbers(base), min_size=n, max_size=n)), dtype=base).reshape(shape + sub)
        adt = np.dtype((base, sub))
        return "array", vals, adt, adt
    if kind == "bool":
        return (
            "bool",
            np.array(draw(st.lists(st.booleans(), min_size=size, max_size=size)), dtype=bool).reshape(shape),
            None,
            None,
        )
    if kind == "enum":
        vals = np.array(draw(st.lists(st.integers(0, 2), min_size=size, max_size=size)), dtype="u1").reshape(shape)
        return "enum", vals, ENUM, h5py.enum_dtype(dict(ENUM.metadata["enum"]), basetype="u1")  # type: ignore[index]
    assert kind == "vlen_num", kind
    n_items = draw(st.integers(1, 3))
    # little-endian bases only: h5py 3.16 reads a vlen of a big-endian base as native ints without swapping
    # (it writes [1] and reads back [16777216]), so it is no oracle there
    base = np.dtype(draw(st.sampled_from(["<i2", "<i4", "<f8"])))
    items = [np.array(draw(st.lists(_numbers(base), max_size=4)), dtype=base) for _ in range(n_items)]
    return "vlen_num", _obj_array(items, (n_items,)), vlen_dtype(base), h5py.vlen_dtype(base)


def _same_attr(ours: Any, theirs: Any, what: str) -> None:
    assert type(ours) is type(theirs), (
        f"{what}: {type(ours).__name__} of shape {np.shape(ours)}"
        f" vs h5py's {type(theirs).__name__} of shape {np.shape(theirs)}"
    )
    if isinstance(theirs, (np.ndarray, np.generic)):
        assert ours.dtype == theirs.dtype and np.shape(ours) == np.shape(theirs), (
            f"{what}: {ours.dtype} {np.shape(ours)} vs {theirs.dtype} {np.shape(theirs)}"
        )
        for tag in ("vlen", "enum"):
            assert (ours.dtype.metadata or {}).get(tag) == (theirs.dtype.metadata or {}).get(tag), (
                f"{what}: dtype metadata {tag}"
            )
        if theirs.dtype.hasobject:
            assert len(np.ravel(ours)) == len(np.ravel(theirs)), what
            for x, y in zip(np.ravel(ours), np.ravel(theirs), strict=True):
                assert type(x) is type(y), f"{what}: element {x!r} vs h5py's {y!r}"
                if isinstance(y, np.ndarray):  # a vlen sequence: dtype and bytes (NaN-safe)
                    assert x.dtype == y.dtype and x.tobytes() == y.tobytes(), f"{what}: element {x!r} vs h5py's {y!r}"
                else:
                    assert x == y, f"{what}: element {x!r} vs h5py's {y!r}"
        else:
            assert np.asarray(ours).tobytes() == np.asarray(theirs).tobytes(), f"{what}: {ours!r} vs h5py's {theirs!r}"
    else:
        assert ours == theirs, f"{what}: {ours!r} vs h5py's {theirs!r}"


@pytest.fixture(scope="module")
def attr_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("oracle_attrs")
    asyncio.run(Writer(PosixStorage(root), "hsdstest").create_domain(ATTR_DOMAIN))
    h5py.File(root / "attrs.h5", "w").close()
    return root


_ATTR_SEQ = iter(range(10**9))


@pytest.mark.parametrize("kind", ATTR_KINDS)
@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data(), on_dataset=st.booleans())
def test_attributes_equal_h5py(attr_root: Path, kind: str, data: st.DataObject, on_dataset: bool) -> None:
    """Generated attributes of every type, on the root group and on a dataset, written by both and read back."""
    _expect(f"attrs:{kind}", 8)
    case = data.draw(attr_cases(kind), label="attribute")
    _, value, ours_dt, h5_dt = case
    group = f"/g{next(_ATTR_SEQ)}"  # a fresh object per example: one failed write cannot leak into the next
    path = f"{group}/d" if on_dataset else group
    asyncio.run(_set_attr(attr_root, group, path, "attr", value, ours_dt))
    with h5py.File(attr_root / "attrs.h5", "a") as f:
        g = f.create_group(group)
        if on_dataset:
            g.create_dataset("d", data=np.arange(4, dtype="<i4"))
        f[path].attrs.create("attr", value if kind != "vbytes" else _ascii_text(value), dtype=h5_dt)
    with h5py.File(attr_root / "attrs.h5", "r") as f, hb.open_domain(ATTR_DOMAIN, root_dir=str(attr_root)) as dom:
        obj = dom[path] if on_dataset else dom.root[group]
        COUNTS[f"attrs:{kind}"] += 1
        try:
            _same_attr(obj.attrs["attr"], f[path].attrs["attr"], f"attribute ({kind}) on {path}: {value!r}")
            assert sorted(obj.attrs) == sorted(f[path].attrs), f"attribute names on {path}"
        except AssertionError:
            FAILED_KEYS.add(f"attrs:{kind}")
            raise


def _ascii_text(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode()
    return _obj_array([v.decode() for v in np.ravel(value)], value.shape)


async def _set_attr(root: Path, group: str, path: str, name: str, value: Any, dtype: Any) -> None:
    w = Writer(PosixStorage(root), "hsdstest")
    await w.create_group(ATTR_DOMAIN, group)
    if path != group:
        await w.create_dataset(ATTR_DOMAIN, path, np.arange(4, dtype="<i4"))
    await w.set_attribute(ATTR_DOMAIN, path, name, value, dtype)


# ------------------------------------------------------------------------------------ counts


def test_every_strategy_ran_enough_cases() -> None:
    """Each generated comparison that ran reached its minimum (a strategy that stopped generating fails)."""
    short = {k: (COUNTS[k], n) for k, n in EXPECTED.items() if COUNTS[k] < n and k not in FAILED_KEYS}
    assert not short, f"too few h5py-oracle cases (got, wanted): {short}"
    errors = sum(v for k, v in COUNTS.items() if k.endswith(":error"))
    values = sum(v for k, v in COUNTS.items() if k.endswith(":value"))
    if any(not k.startswith("attrs:") for k in EXPECTED):  # the index tests ran
        assert errors >= 20 and values >= 20, f"generated keys are lopsided: {values} values, {errors} errors"
