"""``Dataset.to_dask``: dask arrays whose blocks are whole dataset chunks (hsds_backends.dask_array)."""

from __future__ import annotations

import asyncio
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import hsds_backends as hb
from hsds_backends import dask_array
from hsds_backends.storage import PosixStorage
from hsds_backends.writer import Writer

da = pytest.importorskip("dask.array")

DOMAIN = "/home/test/dask.h5"
COMPOUND = np.dtype([("id", ">i8"), ("temp", "<f4"), ("station", "S6")])


def _compound() -> np.ndarray[Any, Any]:
    t = np.zeros((37, 5), dtype=COMPOUND)
    t["id"] = np.arange(t.size).reshape(t.shape)
    t["temp"] = (np.arange(t.size) % 41).reshape(t.shape).astype("<f4") / 3
    t["station"] = [[b"S%d" % ((i * 5 + j) % 7) for j in range(5)] for i in range(37)]
    return t


DATA: dict[str, tuple[np.ndarray[Any, Any], tuple[int, ...], dict[str, Any]]] = {
    "grid": (np.arange(70 * 45, dtype="<f4").reshape(70, 45), (16, 16), {"filters": ["shuffle", "gzip"], "fillvalue": -9}),
    "big": ((np.arange(33 * 7 * 10).reshape(33, 7, 10) - 500).astype(">i4"), (8, 4, 10), {}),
    "table": (_compound(), (10, 2), {}),
    "sparse": (np.arange(40 * 40, dtype="<i2").reshape(40, 40), (8, 8), {"fillvalue": 7, "skip": True}),
}


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("dask-data")

    async def write() -> None:
        w = Writer(PosixStorage(root), "hsdstest")
        for name, (data, chunks, opts) in DATA.items():
            kw = {k: v for k, v in opts.items() if k != "skip"}
            skip = (lambda i: sum(i) % 3 == 0) if opts.get("skip") else None
            await w.create_dataset(DOMAIN, "/" + name, data, chunks=chunks, skip_chunk=skip, **kw)

    asyncio.run(write())
    return root


@pytest.fixture()
def dom(root: Path) -> Any:
    with hb.open_domain(DOMAIN, root_dir=str(root)) as d:
        yield d


def _same(a: np.ndarray[Any, Any], b: np.ndarray[Any, Any]) -> None:
    assert a.dtype == b.dtype and a.shape == b.shape
    assert a.tobytes() == b.tobytes()


@pytest.mark.parametrize("name", list(DATA))
def test_compute_is_byte_identical_to_a_direct_read(dom: Any, name: str) -> None:
    dset = dom["/" + name]
    x = dset.to_dask()
    assert x.dtype == dset.dtype and x.shape == dset.shape
    # blocks are the dataset's chunks; the last block per axis is an edge chunk
    assert tuple(c[0] for c in x.chunks) == tuple(min(c, n) for c, n in zip(dset.chunks, dset.shape, strict=True))
    dask_array.reset_block_reads()
    got = x.compute(scheduler="threads")
    _same(got, dset.read())
    _same(got, dset[...])
    assert dask_array.block_reads() == x.npartitions
    if name == "big":
        assert got.dtype.byteorder == ">"
        _same(got, DATA[name][0])


def test_groups_of_chunks(dom: Any) -> None:
    dset = dom["/grid"]
    x = dset.to_dask(chunks=(32, -1))
    assert x.chunks == ((32, 32, 6), (45,))
    _same(x.compute(scheduler="threads"), dset.read())
    assert dset.to_dask(chunks=48).chunks == ((48, 22), (45,))  # 48 = 3 chunks; 48 ≥ 45 covers the axis
    _same(dom["/table"].to_dask(chunks=(20, None)).compute(scheduler="threads"), DATA["table"][0])


@pytest.mark.parametrize("chunks", [(10, 16), (16, 17), 5, (16,), "auto", (16, 0), ((16, 16), (45,))])
def test_chunks_that_split_dataset_chunks_are_refused(dom: Any, chunks: Any) -> None:
    with pytest.raises(hb.SelectionError, match="chunks="):
        dom["/grid"].to_dask(chunks=chunks)


def test_slicing_reads_only_the_needed_blocks(dom: Any) -> None:
    dset = dom["/grid"]  # 5 x 3 chunks of 16 x 16 over 70 x 45
    x = dset.to_dask()
    expect = dset.read()
    for index, blocks in [
        (np.s_[0:10, 0:10], 1),
        (np.s_[20:40, 10:20], 4),
        (np.s_[64:70, :], 3),
        (np.s_[5], 3),
        (np.s_[:, 44], 5),
    ]:
        dask_array.reset_block_reads()
        _same(x[index].compute(scheduler="threads"), expect[index])
        assert dask_array.block_reads() == blocks, index


def test_sparse_chunks_read_as_fill_and_fields(dom: Any) -> None:
    x = dom["/sparse"].to_dask()
    got = x.compute(scheduler="threads")
    _same(got, dom["/sparse"].read())
    assert (got[0:8, 0:8] == 7).all()  # a missing chunk reads as the fill value
    t = dom["/table"].to_dask()
    _same(t["temp"].compute(scheduler="threads"), DATA["table"][0]["temp"])


def test_the_graph_holds_no_live_reader_and_no_secrets(dom: Any, root: Path) -> None:
    with hb.open_domain(DOMAIN, root_dir=str(root), aws_secret_access_key="s3cr3t", aws_access_key_id="AKIDEXAMPLE") as d:
        x = d["/grid"].to_dask()
        blob = pickle.dumps(dict(x.__dask_graph__()))
        assert b"s3cr3t" not in blob and b"AKIDEXAMPLE" not in blob
        assert b"Reader(" not in blob and b"_LoopThread" not in blob
        specs = [v for v in dict(x.__dask_graph__()).values() if isinstance(v, dask_array.BlockSpec)]
        assert len(specs) == 1 and specs[0].reader_class is hb.Reader
        _same(pickle.loads(blob)[(x.name, 1, 1)][0](specs[0], (slice(16, 32), slice(16, 32))), d["/grid"][16:32, 16:32])
        # in the process that built the graph, the block's reader has the full configuration
        x.blocks[0, 0].compute(scheduler="threads")
        configs = [r.config for r in dask_array._get_runtime().readers.values()]
        assert any(c.get("aws_secret_access_key") == "s3cr3t" for c in configs)


def _worker_secrets() -> list[Any]:
    rt = dask_array._runtime
    return [] if rt is None else [r.config.get("aws_secret_access_key") for r in rt.readers.values()]


def test_async_dataset_to_dask(root: Path) -> None:
    async def get() -> Any:
        async with hb.Reader({"root_dir": str(root)}) as reader:
            dset = await (await reader.open(DOMAIN)).get("/big")
            return dset.to_dask(chunks=(16, 4, 10)), await dset.read()

    x, expect = asyncio.run(get())
    # the graph outlives the reader that made it: blocks rebuild their own
    _same(x.compute(scheduler="threads"), expect)


def test_scalar_and_empty_datasets(tmp_path: Path) -> None:
    async def write() -> None:
        w = Writer(PosixStorage(tmp_path), "hsdstest")
        await w.create_dataset(DOMAIN, "/scalar", np.array(3.5, dtype=">f8"))
        await w.create_dataset(DOMAIN, "/empty", np.zeros((0, 4), dtype="<i4"), chunks=(4, 4))

    asyncio.run(write())
    with hb.open_domain(DOMAIN, root_dir=str(tmp_path)) as d:
        s = d["/scalar"].to_dask()
        assert s.shape == ()
        _same(s.compute(scheduler="threads"), d["/scalar"][...])
        e = d["/empty"].to_dask().compute(scheduler="threads")
        assert e.shape == (0, 4) and e.dtype == np.dtype("<i4")


def test_distributed_cluster(dom: Any) -> None:
    distributed = pytest.importorskip("distributed")
    dset = dom["/table"]
    x = dset.to_dask()
    with distributed.LocalCluster(
        processes=True, n_workers=1, threads_per_worker=2, host="127.0.0.1", dashboard_address="127.0.0.1:0"
    ) as cluster, distributed.Client(cluster) as client:
        got = client.compute(x).result()
        _same(got, dset.read())
        # the worker (another process) read the blocks, not this one
        counts = client.run(dask_array.block_reads)
        assert sum(counts.values()) == x.npartitions
        _same(client.compute(dom["/big"].to_dask()[3:20, 1]).result(), dom["/big"][3:20, 1])
        # credentials never reach a worker through the graph (they come from its environment)
        with hb.open_domain(DOMAIN, root_dir=dom.reader.config["root_dir"], aws_secret_access_key="s3cr3t") as d:
            _same(client.compute(d["/grid"].to_dask()).result(), d["/grid"].read())
        secrets = [v for vs in client.run(_worker_secrets).values() for v in vs]
        assert secrets and "s3cr3t" not in secrets


def test_variable_length_strings(tmp_path: Path) -> None:
    v = np.empty(11, dtype=hb.vlen_dtype(str))
    v[:] = ["x", "", "yy", "zzz", "é", "a" * 40, "b", "c", "dd", "", "last"]

    async def write() -> None:
        await Writer(PosixStorage(tmp_path), "hsdstest").create_dataset(DOMAIN, "/vlen", v, chunks=(3,))

    asyncio.run(write())
    with hb.open_domain(DOMAIN, root_dir=str(tmp_path)) as d:
        x = d["/vlen"].to_dask()
        assert x.chunks == ((3, 3, 3, 2),)
        got = x.compute(scheduler="threads")
        expect = d["/vlen"].read()
        assert got.dtype == expect.dtype and got.tolist() == expect.tolist() == v.tolist()
        assert x[4:7].compute(scheduler="threads").tolist() == v[4:7].tolist()
