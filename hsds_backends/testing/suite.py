"""The conformance suite every backend inherits (docs/architecture.md §9, after zarr's ``StoreTests``).

Subclass :class:`BackendTests`, set ``backend_cls``, optionally override the
class-scoped ``backend_config`` fixture (extra config keys, e.g. DN URLs) or
:meth:`BackendTests.make_backend`, and implement the abstract ``test_repr`` /
``test_capabilities``::

    class TestInline(BackendTests[InlineBackend]):
        backend_cls = InlineBackend

        @pytest.fixture(scope="class")
        @classmethod
        def backend_config(cls):
            return {"max_workers": 2}

        def test_repr(self, backend): ...
        def test_capabilities(self, backend): ...

Every read is checked against numpy oracles from
:func:`hsds_backends.testing.data.write_conformance_domain`, never against
another backend. The storage is parametrised by :attr:`BackendTests.storage_kinds`: ``posix``
(a temp folder), ``s3`` (moto server on 127.0.0.1, the ``moto_server`` fixture) and ``azure``
(Azurite on 127.0.0.1, the ``azurite_server`` fixture; marked ``azure``).

Tests run synchronously on a class-scoped :class:`asyncio.Runner`, so an
expensive backend (DN processes, a Dask cluster, a Lambda runtime) starts once
per storage kind, on one event loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Mapping
from typing import Any, ClassVar, Generic, TypeVar

import numpy as np
import pytest

from ..api import Reader
from ..errors import ChunkDecodeError, FieldError, QueryError, SelectionError
from ..model import Backend, Capabilities
from ..plan import plan_hyperslab
from ..selection import parse_select
from ..tasks import ChunkTask
from .data import CONFORMANCE_DOMAIN, ConformanceData
from .oracle import assert_same as _same
from .oracle import oracle_index as _oracle
from .oracle import query_rows as _rows

__all__ = ["BackendTests"]

B = TypeVar("B", bound=Backend)


HYPERSLABS: list[tuple[str, Any]] = [
    ("be_i4", np.s_[:, :]),
    ("be_i4", np.s_[3:90:7, 1:60:13]),
    ("be_i4", np.s_[19:21, 15:17]),
    ("be_i4", np.s_[::25, ::40]),
    ("be_i4", np.s_[5, :]),
    ("be_i4", np.s_[-1, -3]),
    ("f4_fill", np.s_[:, :]),
    ("f4_fill", np.s_[10:90:3, 31:33]),
    ("cube_u8", np.s_[:, :, :]),
    ("cube_u8", np.s_[1:19:4, ::7, 12:14]),
    ("f8_zstd", np.s_[::3, 5:60]),
    ("i2_bitshuffle", np.s_[:]),
    ("i2_bitshuffle", np.s_[61:250:2]),
    ("u8_bitshuffle_gzip", np.s_[::7]),
    ("partitioned", np.s_[:, :]),
    ("partitioned", np.s_[7:43:5, 2:49:9]),
    ("i4_1_0_2_style", np.s_[10:95:3, 7:180:5]),
    ("compound_nested", np.s_[:]),
    ("compound_nested", np.s_[5:37:4]),
    ("bool", np.s_[:]),
    ("opaque", np.s_[1:9]),
    ("f2", np.s_[:, :]),
    ("empty_fill", np.s_[:, 3:27]),
    ("table", np.s_[:]),
    ("table", np.s_[100:700:9]),
    ("vlen_str", np.s_[:]),
    ("vlen_str", np.s_[3:47:4]),
    ("vlen_bytes", np.s_[:]),
    ("vlen_ints", np.s_[2:19:3]),
    ("be_i4", np.s_[[0, 96, 20, 20, 5], 3:9]),
    ("be_i4", np.s_[[1, 50], [60, 0, 17]]),
    ("be_i4", np.s_[4:4, :]),
]

SELECT_STRINGS: list[tuple[str, str, Any]] = [
    ("be_i4", "[3:90:7, 1:60:13]", np.s_[3:90:7, 1:60:13]),
    ("be_i4", "[7, 0:61:50]", np.s_[7:8, 0:61:50]),
    ("be_i4", "[[1,3,5], 2:4]", np.s_[[1, 3, 5], 2:4]),
    ("cube_u8", "[:, 5, 1:40:3]", np.s_[:, 5:6, 1:40:3]),
    ("i4_1_0_2_style", "[0:100:40, 199]", np.s_[0:100:40, 199:200]),
]


class BackendTests(Generic[B]):
    """Tests every backend must pass. See the module docstring for how to subclass."""

    backend_cls: ClassVar[type[Backend]]
    #: Storage kinds to run against (:data:`hsds_backends.storage.STORAGE_KINDS`); a subclass may narrow it.
    storage_kinds: ClassVar[tuple[str, ...]] = ("posix", "s3", "azure")

    # ------------------------------------------------------------- fixtures
    @pytest.fixture(scope="class")
    @classmethod
    def backend_config(cls) -> Mapping[str, Any]:
        """Extra config keys for the backend under test; override with a class-scoped fixture."""
        return {}

    @pytest.fixture(scope="class")
    @classmethod
    def runner(cls) -> Iterator[asyncio.Runner]:
        with asyncio.Runner() as r:
            yield r

    def pytest_generate_tests(self, metafunc: pytest.Metafunc) -> None:
        """Run the class once per storage kind in :attr:`storage_kinds` (one backend per kind)."""
        if "storage_kind" in metafunc.fixturenames:
            kinds = [pytest.param(k, marks=pytest.mark.azure) if k == "azure" else k for k in self.storage_kinds]
            metafunc.parametrize("storage_kind", kinds, scope="class")

    @pytest.fixture(scope="class")
    @classmethod
    def storage_config(
        cls, storage_kind: str, request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
    ) -> Mapping[str, Any]:
        """Config keys of a fresh, empty bucket on the storage kind under test."""
        if storage_kind == "posix":
            return {"root_dir": str(tmp_path_factory.mktemp("conformance")), "bucket_name": "hsdstest"}
        bucket = f"conformance-{id(cls) % 100000}"
        if storage_kind == "azure":
            azurite = request.getfixturevalue("azurite_server")
            azurite.create_container(bucket)
            return {**azurite.config(), "bucket_name": bucket}
        moto = request.getfixturevalue("moto_server")
        from .fixtures import create_bucket

        create_bucket(moto.config(), bucket)
        return {**moto.config(), "bucket_name": bucket}

    @pytest.fixture(scope="class")
    @classmethod
    def conformance(cls, storage_config: Mapping[str, Any], runner: asyncio.Runner) -> ConformanceData:
        from ..storage import storage_from_config
        from .data import write_conformance_domain

        async def write() -> ConformanceData:
            st = storage_from_config(storage_config)
            try:
                return await write_conformance_domain(st, storage_config["bucket_name"])
            finally:
                await st.aclose()

        return runner.run(write())

    @pytest.fixture(scope="class")
    @classmethod
    def config(cls, storage_config: Mapping[str, Any], backend_config: Mapping[str, Any]) -> Mapping[str, Any]:
        return {**storage_config, **backend_config}

    @pytest.fixture(scope="class")
    @classmethod
    def reader_and_backend(cls, config: Mapping[str, Any], conformance: ConformanceData, runner: asyncio.Runner) -> Iterator[tuple[Reader, Backend]]:
        backend = cls.make_backend(config)

        async def make_reader() -> Reader:
            return Reader(config)

        reader = runner.run(make_reader())
        yield reader, backend
        runner.run(backend.aclose())
        runner.run(reader.aclose())

    @classmethod
    def make_backend(cls, config: Mapping[str, Any]) -> Backend:
        """Build the backend under test from ``config`` (override for special constructors)."""
        return cls.backend_cls(config)

    @pytest.fixture
    def backend(self, reader_and_backend: tuple[Reader, Backend]) -> Backend:
        return reader_and_backend[1]

    # -------------------------------------------------------------- helpers
    def _dset(self, rb: tuple[Reader, Backend], runner: asyncio.Runner, name: str) -> Any:
        reader, _ = rb

        async def get() -> Any:
            dom = await reader.open(CONFORMANCE_DOMAIN)
            return await dom.get(f"/{name}")

        return runner.run(get())

    def _read(self, rb: tuple[Reader, Backend], runner: asyncio.Runner, name: str, sel: Any = None, **kw: Any) -> np.ndarray[Any, Any]:
        dset = self._dset(rb, runner, name)
        return runner.run(dset.read(sel, backend=rb[1], **kw))

    def _require(self, backend: Backend, flag: str) -> None:
        if not getattr(backend.capabilities, flag):
            pytest.skip(f"{backend.name} does not declare {flag}")

    # ---------------------------------------------------------- declarations
    def test_repr(self, backend: Backend) -> None:
        raise NotImplementedError("each backend declares its repr")

    def test_capabilities(self, backend: Backend) -> None:
        raise NotImplementedError("each backend declares its capability flags")

    def test_name_is_the_plugin_name(self, backend: Backend) -> None:
        from ..plugins import get_plugin_manager, list_backends

        infos = {i.name: i for i in list_backends(get_plugin_manager())}
        assert backend.name in infos, f"{backend.name!r} is not an installed backend: {sorted(infos)}"
        assert infos[backend.name].plugin == backend.name
        assert isinstance(backend.capabilities, Capabilities)

    # ----------------------------------------------------------- hyperslabs
    @pytest.mark.parametrize(("name", "sel"), HYPERSLABS, ids=[f"{n}-{i}" for i, (n, _) in enumerate(HYPERSLABS)])
    def test_hyperslab(self, reader_and_backend: Any, runner: asyncio.Runner, conformance: ConformanceData, name: str, sel: Any) -> None:
        if name.startswith("vlen"):
            self._require(reader_and_backend[1], "vlen")
        _same(self._read(reader_and_backend, runner, name, sel), _oracle(conformance.arrays[name], sel))

    @pytest.mark.parametrize(("name", "text", "npsel"), SELECT_STRINGS)
    def test_select_string(self, reader_and_backend: Any, runner: asyncio.Runner, conformance: ConformanceData, name: str, text: str, npsel: Any) -> None:
        expected = conformance.arrays[name][npsel]
        _same(self._read(reader_and_backend, runner, name, text), expected)

    def test_scalar(self, reader_and_backend: Any, runner: asyncio.Runner, conformance: ConformanceData) -> None:
        out = self._read(reader_and_backend, runner, "scalar")
        _same(out, conformance.arrays["scalar"])

    def test_one_chunk_exactly(self, reader_and_backend: Any, runner: asyncio.Runner, conformance: ConformanceData) -> None:
        _same(self._read(reader_and_backend, runner, "be_i4", np.s_[20:40, 16:32]), conformance.arrays["be_i4"][20:40, 16:32])

    def test_missing_chunks_read_as_fill(self, reader_and_backend: Any, runner: asyncio.Runner, conformance: ConformanceData) -> None:
        out = self._read(reader_and_backend, runner, "f4_fill", np.s_[0:32, 0:32])
        assert (out == np.float32(-1.5)).all()
        out = self._read(reader_and_backend, runner, "empty_fill")
        assert (out == 42).all() and out.dtype == np.dtype("<i8")

    def test_fields(self, reader_and_backend: Any, runner: asyncio.Runner, conformance: ConformanceData) -> None:
        self._require(reader_and_backend[1], "fields")
        table = conformance.arrays["table"]
        out = self._read(reader_and_backend, runner, "table", np.s_[10:900:7], fields=["station", "id"])
        assert out.dtype.names == ("station", "id")
        assert out.dtype.itemsize == 16  # packed, in the order given
        _same(out["station"], table["station"][10:900:7])
        _same(out["id"], table["id"][10:900:7])
        nested = self._read(reader_and_backend, runner, "compound_nested", np.s_[:], fields=["v"])
        _same(nested["v"], conformance.arrays["compound_nested"]["v"])
        plain = self._read(reader_and_backend, runner, "compound_nested", np.s_[:], fields="v")  # one name: plain, as h5py
        _same(plain, conformance.arrays["compound_nested"]["v"])

    def test_unknown_field(self, reader_and_backend: Any, runner: asyncio.Runner) -> None:
        with pytest.raises(FieldError, match="unknown field 'nope'"):
            self._read(reader_and_backend, runner, "table", None, fields=["nope"])

    # --------------------------------------------------------------- points
    @pytest.mark.parametrize(
        "name", ["be_i4", "f4_fill", "cube_u8", "partitioned", "table", "linked_chunked", "linked_indirect", "linked_hyper", "vlen_str"]
    )
    def test_points(self, reader_and_backend: Any, runner: asyncio.Runner, conformance: ConformanceData, name: str) -> None:
        self._require(reader_and_backend[1], "points")
        if name.startswith("vlen"):
            self._require(reader_and_backend[1], "vlen")
        arr = conformance.arrays[name]
        rng = np.random.default_rng(len(name))
        pts = np.stack([rng.integers(0, s, 200) for s in arr.shape], axis=1)
        pts = np.concatenate([pts, pts[:5], np.zeros((1, arr.ndim), dtype=pts.dtype)])  # duplicates, origin
        dset = self._dset(reader_and_backend, runner, name)
        out = runner.run(dset.read_points(pts, backend=reader_and_backend[1]))
        _same(out, arr[tuple(pts.T)])

    def test_points_out_of_range(self, reader_and_backend: Any, runner: asyncio.Runner) -> None:
        dset = self._dset(reader_and_backend, runner, "be_i4")
        with pytest.raises(SelectionError, match=r"point \[97, 0\] \(row 1\) is out of range"):
            runner.run(dset.read_points([[0, 0], [97, 0]], backend=reader_and_backend[1]))

    # --------------------------------------------------------------- queries
    @pytest.mark.parametrize(
        ("expr", "sel", "limit", "fields"),
        [
            ("temp > 20", None, None, None),
            ("(temp > 20) & (station == b'ST03')", None, None, None),
            ("temp > 20 AND station == b'ST03' OR id < 0", None, None, ("temp", "id")),
            ("temp > 10", np.s_[5:990:3], None, None),
            ("temp > 10", np.s_[5:990:3], 17, ("station",)),
            ("temp > 50", None, None, None),
            ("id > 0 where station in (b'ST01', b'ST02')", None, 40, None),
        ],
    )
    def test_query(self, reader_and_backend: Any, runner: asyncio.Runner, conformance: ConformanceData, expr: str, sel: Any, limit: Any, fields: Any) -> None:
        self._require(reader_and_backend[1], "query")
        table = conformance.arrays["table"]
        rows = np.arange(len(table))
        if sel is not None:
            rows = rows[sel]
        t = table[rows]
        masks = {
            "temp > 20": t["temp"] > 20,
            "(temp > 20) & (station == b'ST03')": (t["temp"] > 20) & (t["station"] == b"ST03"),
            "temp > 20 AND station == b'ST03' OR id < 0": ((t["temp"] > 20) & (t["station"] == b"ST03")) | (t["id"] < 0),
            "temp > 10": t["temp"] > 10,
            "temp > 50": t["temp"] > 50,
            "id > 0 where station in (b'ST01', b'ST02')": (t["id"] > 0) & np.isin(t["station"], [b"ST01", b"ST02"]),
        }
        idx = rows[masks[expr]]
        if limit:
            idx = idx[:limit]
        dset = self._dset(reader_and_backend, runner, "table")
        out = runner.run(dset.query(expr, select=sel, limit=limit, fields=fields, backend=reader_and_backend[1]))
        _same(out, _rows(table, idx.astype(np.uint64), fields))

    def test_query_sees_fill_rows_of_missing_chunks(self, reader_and_backend: Any, runner: asyncio.Runner, conformance: ConformanceData) -> None:
        self._require(reader_and_backend[1], "query")
        dset = self._dset(reader_and_backend, runner, "table")
        out = runner.run(dset.query("temp == 99", backend=reader_and_backend[1]))
        assert out["index"].tolist() == list(range(3 * 128, 4 * 128))

    def test_bad_query(self, reader_and_backend: Any, runner: asyncio.Runner) -> None:
        dset = self._dset(reader_and_backend, runner, "table")
        with pytest.raises(QueryError, match="temp >> 3"):
            runner.run(dset.query("temp >> 3", backend=reader_and_backend[1]))

    # --------------------------------------------------------------- linked
    @pytest.mark.parametrize("name", ["linked_chunked", "linked_contig", "linked_indirect", "linked_hyper"])
    def test_linked(self, reader_and_backend: Any, runner: asyncio.Runner, conformance: ConformanceData, name: str) -> None:
        self._require(reader_and_backend[1], "linked_chunks")
        arr = conformance.arrays[name]
        _same(self._read(reader_and_backend, runner, name), arr)
        _same(self._read(reader_and_backend, runner, name, np.s_[3:57:4, 1:19:3]), arr[3:57:4, 1:19:3])

    # ------------------------------------------------------------ bad chunks
    @pytest.mark.parametrize("name", ["bad_corrupt", "bad_truncated", "bad_length"])
    def test_bad_chunk_raises_naming_chunk_and_key(self, reader_and_backend: Any, runner: asyncio.Runner, conformance: ConformanceData, name: str) -> None:
        cid, key = conformance.bad_keys[name]
        with pytest.raises(ChunkDecodeError) as info:
            self._read(reader_and_backend, runner, name)
        assert cid in str(info.value) and key in str(info.value)
        # the good chunks of the same dataset still read
        _same(self._read(reader_and_backend, runner, name, np.s_[0:50, 0:50]), conformance.arrays[name][0:50, 0:50])

    def test_bad_task_select(self, reader_and_backend: Any, runner: asyncio.Runner) -> None:
        dset = self._dset(reader_and_backend, runner, "be_i4")
        plan = plan_hyperslab(dset.meta, parse_select("[0:5,0:5]", dset.shape))
        t = plan.tasks[0]
        bad = ChunkTask(t.chunk_id, t.dset, t.location, "hyperslab", "[0:50,0:5]")
        with pytest.raises(SelectionError, match=r"0:50"):
            runner.run(reader_and_backend[1].read_chunk(bad))

    # ------------------------------------------------------------- lifecycle
    def test_many_chunks_in_one_request(self, reader_and_backend: Any, runner: asyncio.Runner, conformance: ConformanceData) -> None:
        out = self._read(reader_and_backend, runner, "cube_u8", np.s_[::1, ::1, ::1])
        _same(out, conformance.arrays["cube_u8"])

    def test_aclose_is_idempotent(self, config: Mapping[str, Any], runner: asyncio.Runner) -> None:
        b = self.make_backend(config)
        runner.run(b.aclose())
        runner.run(b.aclose())
