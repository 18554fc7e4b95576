"""Equivalence: every installed backend returns byte-identical results (``pytest -k equivalence``).

Hypothesis generates datasets (dtypes incl. big-endian, compound, fixed and
variable-length strings; ranks 0–4; ragged chunk shapes; each filter; fill
values; missing chunks) and selections (stepped hyperslabs with coordinate
lists, points, queries with ``Limit``, field subsets), writes them with our
writer (posix, S3 through moto server, Azure Blob through Azurite), reads each
through **every** installed backend that reads the storage (lambda does not read
Azure) and asserts the results equal the numpy oracle — and therefore each other —
byte for byte.

``HSDS_BACKENDS_EQUIVALENCE_EXAMPLES`` sets the examples per test (default 25;
the deep profile is e.g. 500). The run prints how many examples each backend
checked.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections import Counter
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import hsds_backends as hb
from hsds_backends.plugins import backend_names, list_backends
from hsds_backends.storage import storage_from_config
from hsds_backends.testing.oracle import assert_same, oracle_index, query_rows
from hsds_backends.writer import Writer

EXAMPLES = int(os.environ.get("HSDS_BACKENDS_EQUIVALENCE_EXAMPLES", "25"))
SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture],
    derandomize=os.environ.get("CI") is not None,
)

#: examples checked, by (backend, storage kind); printed at the end of the run (conftest).
COUNTS: Counter[tuple[str, str]] = Counter()

FIXED_DTYPES = [
    np.dtype("<i1"), np.dtype(">i2"), np.dtype("<u4"), np.dtype(">i8"), np.dtype("<f2"), np.dtype("<f4"), np.dtype(">f8"),
    np.dtype("S5"), np.dtype(bool), np.dtype([("a", ">i4"), ("b", "<f8"), ("s", "S3")]),
]
VLEN = [hb.vlen_dtype(str), hb.vlen_dtype(bytes)]
FILTERS: list[list[Any]] = [[], ["gzip"], ["shuffle", ("gzip", 4)], ["lz4"], [("zstd", 2)], ["blosclz"], ["bitshuffle"], ["fletcher32", "gzip"], ["shuffle"]]


# ------------------------------------------------------------------ strategies


@st.composite
def datasets(draw: st.DrawFn, *, max_rank: int = 4) -> dict[str, Any]:
    """A dataset: array, chunks, filters, fill value, chunks left unwritten."""
    rank = draw(st.integers(0, max_rank))
    budget = {0: 1, 1: 300, 2: 40, 3: 12, 4: 6}[rank]
    shape = tuple(draw(st.integers(1, budget)) for _ in range(rank))
    chunks = tuple(draw(st.integers(1, s)) for s in shape) if rank else ()
    vlen = draw(st.booleans()) if rank and rank <= 2 else False
    if vlen:
        dt = draw(st.sampled_from(VLEN))
        n = int(np.prod(shape))
        alphabet = st.characters(codec="utf-8", exclude_categories=("Cs",))
        values = draw(st.lists(st.text(alphabet, max_size=12), min_size=n, max_size=n))
        arr = np.empty(shape, dtype=dt)
        flat = arr.reshape(-1)
        for i, v in enumerate(values):
            flat[i] = v if dt.metadata["vlen"] is str else v.encode("utf-8")
        filters = draw(st.sampled_from([[], ["gzip"], ["lz4"]]))
        fill = None
    else:
        dt = draw(st.sampled_from(FIXED_DTYPES))
        elements = None
        if dt.kind == "f":
            elements = st.floats(-1e3, 1e3, width=dt.itemsize * 8, allow_nan=False)
        arr = draw(hnp.arrays(dt, shape, elements=elements))
        filters = draw(st.sampled_from(FILTERS))
        fill = draw(st.none() | hnp.from_dtype(dt, allow_nan=False)) if dt.names is None else draw(st.none() | hnp.arrays(dt, ()))
    grid = [-(-s // c) for s, c in zip(shape, chunks, strict=True)] if rank else [1]
    nchunks = int(np.prod(grid))
    missing = draw(st.sets(st.integers(0, nchunks - 1), max_size=max(0, nchunks - 1)))
    return {"arr": arr, "chunks": chunks or None, "filters": filters, "fill": fill, "missing": missing, "grid": grid}


@st.composite
def hyperslabs(draw: st.DrawFn, shape: tuple[int, ...]) -> tuple[Any, ...]:
    key: list[Any] = []
    lists = 0
    for s in shape:
        kind = draw(st.sampled_from(["slice", "slice", "int", "list"] if lists < 2 else ["slice", "int"]))
        if kind == "int":
            key.append(draw(st.integers(-s, s - 1)))
        elif kind == "list":
            lists += 1
            key.append(draw(st.lists(st.integers(0, s - 1), min_size=1, max_size=6)))
        else:
            start = draw(st.integers(0, s))
            stop = draw(st.integers(start, s))
            step = draw(st.integers(1, max(1, s)))
            key.append(slice(start, stop, step))
    return tuple(key)


# ------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module", params=["posix", "s3", pytest.param("azure", marks=pytest.mark.azure)])
def env(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, runner: asyncio.Runner) -> Iterator[dict[str, Any]]:
    """A storage config, a writer and one reader whose backends serve every example.

    The backends are every installed one that reads this storage kind
    (``Capabilities.storage_kinds``: ``lambda`` does not read Azure, and declines it).
    """
    if request.param == "posix":
        cfg: dict[str, Any] = {"root_dir": str(tmp_path_factory.mktemp("equivalence")), "bucket_name": "hsdstest"}
    elif request.param == "azure":
        azurite = request.getfixturevalue("azurite_server")
        azurite.create_container("equivalence")
        cfg = {**azurite.config(), "bucket_name": "equivalence"}
    else:
        from hsds_backends.testing.fixtures import create_bucket

        moto = request.getfixturevalue("moto_server")
        cfg = {**moto.config(), "bucket_name": "equivalence"}
        create_bucket(cfg, "equivalence")
    names = [
        i.name for i in list_backends()
        if i.capabilities.storage_kinds is None or request.param in i.capabilities.storage_kinds
    ]
    assert set(backend_names()) - set(names) <= {"lambda"}  # only the function declines a storage kind

    async def setup() -> tuple[Any, hb.Reader]:
        return storage_from_config(cfg), hb.Reader(cfg)

    storage, reader = runner.run(setup())
    yield {"kind": request.param, "config": cfg, "writer": Writer(storage, cfg["bucket_name"]), "reader": reader, "names": names}

    async def teardown() -> None:
        await reader.aclose()
        await storage.aclose()

    runner.run(teardown())


def _write(runner: asyncio.Runner, env: Mapping[str, Any], ds: dict[str, Any]) -> tuple[str, np.ndarray[Any, Any]]:
    """Write ``ds`` into a fresh domain; return (domain, oracle with fill where chunks are missing)."""
    arr = ds["arr"]
    domain = f"/home/eq/{uuid.uuid4().hex[:12]}.h5"
    grid = ds["grid"]
    missing_idx = {tuple(int(x) for x in np.unravel_index(m, grid)) for m in ds["missing"]}

    async def go() -> Any:
        return await env["writer"].create_dataset(
            domain, "/d", arr, chunks=ds["chunks"], filters=ds["filters"], fillvalue=ds["fill"],
            skip_chunk=lambda i: tuple(i) in missing_idx,
        )

    meta = runner.run(go())
    expected = np.array(arr, copy=True)
    view = expected.reshape(meta.data_shape)
    fe = meta.fill_element
    for index in missing_idx:
        region = tuple(slice(i * c, (i + 1) * c) for i, c in zip(index, meta.chunks, strict=True))
        if expected.dtype.hasobject and expected.dtype.names is None:
            for pos in np.ndindex(view[region].shape):
                view[region][pos] = fe[()]
        else:
            view[region] = fe
    return domain, expected


def _each_backend(runner: asyncio.Runner, env: Mapping[str, Any], domain: str, call: Any) -> dict[str, np.ndarray[Any, Any]]:
    async def go() -> dict[str, np.ndarray[Any, Any]]:
        dset = await (await env["reader"].open(domain)).get("/d")
        return {name: await call(dset, name) for name in env["names"]}

    out = runner.run(go())
    for name in out:
        COUNTS[(name, env["kind"])] += 1
    return out


# ------------------------------------------------------------------ properties


@SETTINGS
@given(ds=datasets(), data=st.data())
def test_equivalence_hyperslabs(runner: asyncio.Runner, env: dict[str, Any], ds: dict[str, Any], data: st.DataObject) -> None:
    domain, expected = _write(runner, env, ds)
    key = data.draw(hyperslabs(expected.shape)) if expected.ndim else ()
    fields = None
    if expected.dtype.names and data.draw(st.booleans()):
        fields = data.draw(st.permutations(list(expected.dtype.names)).flatmap(lambda p: st.integers(1, len(p)).map(lambda k: p[:k])))
    want = oracle_index(expected, key) if key != () else expected
    if fields:
        want = _project(want, fields)
    results = _each_backend(runner, env, domain, lambda d, name: d.read(key if key != () else None, fields=fields, backend=name))
    for name, got in results.items():
        try:
            assert_same(got, want)
        except AssertionError as exc:
            raise AssertionError(f"backend {name!r} ({env['kind']}) differs from the oracle for {key!r}: {exc}") from exc


@SETTINGS
@given(ds=datasets(max_rank=3).filter(lambda d: d["arr"].ndim >= 1), data=st.data())
def test_equivalence_points(runner: asyncio.Runner, env: dict[str, Any], ds: dict[str, Any], data: st.DataObject) -> None:
    domain, expected = _write(runner, env, ds)
    n = data.draw(st.integers(0, 40))
    pts = np.array([[data.draw(st.integers(0, s - 1)) for s in expected.shape] for _ in range(n)], dtype=np.int64).reshape(n, expected.ndim)
    want = expected[tuple(pts.T)] if n else expected.reshape(-1)[:0]
    results = _each_backend(runner, env, domain, lambda d, name: d.read_points(pts, backend=name))
    for name, got in results.items():
        try:
            assert_same(got, want)
        except AssertionError as exc:
            raise AssertionError(f"backend {name!r} ({env['kind']}) differs from the oracle for points {pts.tolist()}: {exc}") from exc


TABLE = np.dtype([("id", "<i8"), ("temp", ">f4"), ("code", "S2"), ("flag", "u1")])


@st.composite
def tables(draw: st.DrawFn) -> dict[str, Any]:
    n = draw(st.integers(1, 400))
    rows = np.zeros(n, dtype=TABLE)
    rows["id"] = np.arange(n) * draw(st.integers(-3, 3))
    rows["temp"] = draw(hnp.arrays(np.dtype(">f4"), n, elements=st.floats(-50, 50, width=32)))
    rows["code"] = draw(hnp.arrays(np.dtype("S2"), n, elements=st.sampled_from([b"AA", b"AB", b"BB", b""])))
    rows["flag"] = draw(hnp.arrays(np.dtype("u1"), n))
    chunks = (draw(st.integers(1, n)),)
    grid = [-(-n // chunks[0])]
    missing = draw(st.sets(st.integers(0, grid[0] - 1), max_size=max(0, grid[0] - 1)))
    fill = draw(st.none() | st.just(np.array((7, 99.0, b"ZZ", 1), dtype=TABLE)))
    filters = draw(st.sampled_from(FILTERS))
    return {"arr": rows, "chunks": chunks, "filters": filters, "fill": fill, "missing": missing, "grid": grid}


QUERIES = {
    "temp > 10": lambda t: t["temp"] > 10,
    "(temp > 0) & (code == b'AB')": lambda t: (t["temp"] > 0) & (t["code"] == b"AB"),
    "temp < -20 OR flag > 200": lambda t: (t["temp"] < -20) | (t["flag"] > 200),
    "id >= 0 AND NOT code == b''": lambda t: (t["id"] >= 0) & ~(t["code"] == b""),
    "flag > 10 where code in (b'AA', b'BB')": lambda t: (t["flag"] > 10) & np.isin(t["code"], [b"AA", b"BB"]),
}


@SETTINGS
@given(ds=tables(), data=st.data())
def test_equivalence_queries(runner: asyncio.Runner, env: dict[str, Any], ds: dict[str, Any], data: st.DataObject) -> None:
    domain, table = _write(runner, env, ds)
    expr = data.draw(st.sampled_from(sorted(QUERIES)))
    n = len(table)
    start = data.draw(st.integers(0, n - 1))
    stop = data.draw(st.integers(start + 1, n))
    step = data.draw(st.integers(1, 7))
    limit = data.draw(st.none() | st.integers(1, 50))
    fields = data.draw(st.none() | st.sampled_from([("temp",), ("code", "id"), ("flag", "temp", "id")]))
    rows = np.arange(start, stop, step)
    idx = rows[QUERIES[expr](table[rows])]
    if limit:
        idx = idx[:limit]
    want = query_rows(table, idx.astype(np.uint64), fields)
    results = _each_backend(
        runner, env, domain, lambda d, name: d.query(expr, select=np.s_[start:stop:step], limit=limit, fields=fields, backend=name)
    )
    for name, got in results.items():
        try:
            assert_same(got, want)
        except AssertionError as exc:
            raise AssertionError(f"backend {name!r} ({env['kind']}) differs for {expr!r} [{start}:{stop}:{step}] Limit={limit}: {exc}") from exc


def _project(arr: np.ndarray[Any, Any], fields: Any) -> np.ndarray[Any, Any]:
    from hsds_backends.tasks import field_dtype

    out = np.empty(arr.shape, dtype=field_dtype(arr.dtype, tuple(fields)))
    for f in fields:
        out[f] = arr[f]
    return out


LINKED_FILTERS: list[list[Any]] = [[], ["gzip"], ["shuffle", ("gzip", 2)], ["shuffle", "gzip", "fletcher32"], ["fletcher32"]]


@st.composite
def indirect(draw: st.DrawFn) -> dict[str, Any]:
    """An ``H5D_CHUNKED_REF_INDIRECT`` dataset: HDF5 chunks of ``hyper`` elements, ``factors`` of them per HSDS chunk."""
    rank = draw(st.integers(1, 3))
    hyper = tuple(draw(st.integers(1, 5)) for _ in range(rank))
    factors = tuple(draw(st.integers(1, 3)) for _ in range(rank))
    chunks = tuple(h * f for h, f in zip(hyper, factors, strict=True))
    shape = tuple(draw(st.integers(1, 2 * c + 1)) for c in chunks)
    dt = draw(st.sampled_from([np.dtype("<i4"), np.dtype(">f8"), np.dtype("u1"), np.dtype([("a", ">i2"), ("b", "<f4")])]))
    arr = draw(hnp.arrays(dt, shape, elements=None if dt.names else hnp.from_dtype(dt, allow_nan=False)))
    grid = [-(-s // h) for s, h in zip(shape, hyper, strict=True)]
    skipped = draw(st.sets(st.tuples(*(st.integers(0, g - 1) for g in grid)), max_size=3))
    fill = draw(st.none() | (hnp.arrays(dt, ()) if dt.names else hnp.from_dtype(dt, allow_nan=False)))
    return {"arr": arr, "chunks": chunks, "hyper": hyper, "skipped": skipped, "filters": draw(st.sampled_from(LINKED_FILTERS)),
            "file_in_table": draw(st.booleans()), "fill": fill}


@SETTINGS
@given(ds=indirect(), data=st.data())
def test_equivalence_indirect(runner: asyncio.Runner, env: dict[str, Any], ds: dict[str, Any], data: st.DataObject) -> None:
    """Chunk locations from a chunk table, hyper-chunks included: every backend reads what numpy holds (docs/hsds-format.md §3.5)."""
    arr, hyper = ds["arr"], ds["hyper"]
    domain = f"/home/eq/{uuid.uuid4().hex[:12]}.h5"

    async def go() -> Any:
        return await env["writer"].create_linked_dataset(
            domain, "/d", arr, file_key=f"linked/{uuid.uuid4().hex[:12]}.h5", layout="H5D_CHUNKED_REF_INDIRECT",
            chunks=ds["chunks"], hyper_dims=hyper, filters=ds["filters"], skip_chunk=lambda i: tuple(i) in ds["skipped"],
            file_in_table=ds["file_in_table"], fillvalue=ds["fill"],
        )

    meta = runner.run(go())
    expected = np.array(arr, copy=True)
    for i in ds["skipped"]:
        expected[tuple(slice(j * h, (j + 1) * h) for j, h in zip(i, hyper, strict=True))] = meta.fill_element.view(arr.dtype)
    key = data.draw(hyperslabs(expected.shape))
    fields = data.draw(st.none() | st.sampled_from([["b"], ["b", "a"]])) if arr.dtype.names else None
    want = oracle_index(expected, key)
    if fields:
        want = _project(want, fields)
    results = _each_backend(runner, env, domain, lambda d, name: d.read(key, fields=fields, backend=name))
    points = data.draw(hnp.arrays(np.int64, (data.draw(st.integers(1, 12)), expected.ndim), elements=st.integers(0, 10**6)))
    points %= np.asarray(expected.shape, dtype=np.int64)
    got_points = _each_backend(runner, env, domain, lambda d, name: d.read_points(points, backend=name))
    for name, got in results.items():
        try:
            assert_same(got, want)
            assert_same(got_points[name], expected[tuple(points.T)])
        except AssertionError as exc:
            raise AssertionError(f"backend {name!r} ({env['kind']}) differs from the oracle for {key!r} / points: {exc}") from exc


def test_equivalence_every_backend_checked(env: dict[str, Any]) -> None:
    """Runs after the properties of this storage kind: every installed backend checked examples."""
    for name in env["names"]:
        assert COUNTS[(name, env["kind"])] > 0, f"backend {name!r} checked no example on {env['kind']}"

