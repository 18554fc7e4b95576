"""The conformance domain: datasets covering every type, filter and layout, with numpy oracles.

:func:`write_conformance_domain` writes it in HSDS's format (through
:class:`hsds_backends.writer.Writer`) and returns the oracle arrays; the
expected answers of the conformance suite come from these arrays and numpy
indexing, never from a backend.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..dtypes import vlen_dtype
from ..ids import chunk_id, chunk_key
from ..storage import Storage
from ..writer import Writer

__all__ = ["CONFORMANCE_DOMAIN", "ConformanceData", "write_conformance_domain", "TABLE_DTYPE"]

CONFORMANCE_DOMAIN = "/home/conformance/data.h5"
TABLE_DTYPE = np.dtype([("id", "<i8"), ("temp", "<f4"), ("station", "S8")])


@dataclass
class ConformanceData:
    """Oracle arrays and facts about the conformance domain."""

    bucket: str
    domain: str
    arrays: dict[str, np.ndarray[Any, Any]] = field(default_factory=dict)
    fills: dict[str, Any] = field(default_factory=dict)
    ids: dict[str, str] = field(default_factory=dict)
    bad_keys: dict[str, tuple[str, str]] = field(default_factory=dict)
    """name → (chunk id, key) of the chunk that was corrupted."""


def _table(n: int, seed: int) -> np.ndarray[Any, Any]:
    rng = np.random.default_rng(seed)
    t = np.zeros(n, dtype=TABLE_DTYPE)
    t["id"] = np.arange(n) * 3 - 7
    t["temp"] = rng.normal(15, 8, n).astype("<f4")
    t["station"] = np.array([b"ST%02d" % i for i in range(12)])[rng.integers(0, 12, n)]
    return t


async def write_conformance_domain(storage: Storage, bucket: str = "hsdstest", domain: str = CONFORMANCE_DOMAIN) -> ConformanceData:
    """Write the conformance domain into ``bucket`` and return its oracles."""
    w = Writer(storage, bucket, owner="conformance")
    cd = ConformanceData(bucket, domain)
    rng = np.random.default_rng(1234)

    async def put(name: str, arr: np.ndarray[Any, Any], *, fill: Any = None, skip: Any = None, **kw: Any) -> None:
        meta = await w.create_dataset(domain, f"/{name}", arr, fillvalue=fill, skip_chunk=skip, **kw)
        expected = np.array(arr, copy=True)
        if skip is not None:
            fe = meta.fill_element
            for index in np.ndindex(*meta.chunk_grid):
                if skip(index):
                    region = tuple(slice(i * c, (i + 1) * c) for i, c in zip(index, meta.chunks, strict=True))
                    expected.reshape(meta.data_shape)[region] = fe[()] if expected.dtype.names is None else fe
        cd.arrays[name] = expected
        cd.fills[name] = fill
        cd.ids[name] = meta.id

    await put("be_i4", np.arange(97 * 61, dtype=">i4").reshape(97, 61) - 3000, chunks=(20, 16), filters=["shuffle", ("gzip", 6)])
    await put(
        "f4_fill", rng.random((100, 100), dtype=np.float32).astype("<f4"), chunks=(32, 32), fill=-1.5,
        skip=lambda i: (i[0] + i[1]) % 3 == 0,
    )
    table = _table(1000, 7)
    fill_row = np.array((-1, 99.0, b"none"), dtype=TABLE_DTYPE)
    await put("table", table, chunks=(128,), filters=[("gzip", 4)], fill=fill_row, skip=lambda i: i == (3,))
    vs = np.empty(50, dtype=vlen_dtype(str))
    vs[:] = ["", "a", "bc", "héllo wörld", "x" * 300] * 10
    await put("vlen_str", vs, chunks=(16,), filters=[("gzip", 4)])
    vb = np.empty(23, dtype=vlen_dtype(bytes))
    vb[:] = [bytes(range(i % 7)) for i in range(23)]
    await put("vlen_bytes", vb, chunks=(10,))
    vi = np.empty(20, dtype=vlen_dtype(np.dtype("<i4")))
    for i in range(20):
        vi[i] = np.arange(i % 5, dtype="<i4") * i
    await put("vlen_ints", vi, chunks=(8,))
    await put("cube_u8", rng.integers(0, 255, (20, 30, 40), dtype=np.uint8), chunks=(7, 11, 13), filters=["lz4"])
    await put("f8_zstd", rng.normal(size=(64, 64)).astype(">f8"), chunks=(16, 16), filters=[("zstd", 3)])
    await put("i2_bitshuffle", (np.arange(300, dtype="<i2") * 7) % 1000, chunks=(64,), filters=["bitshuffle"])
    await put("u8_bitshuffle_gzip", np.arange(4000, dtype="<u8") ** 2, chunks=(1000,), filters=["bitshuffle", "gzip"])
    await put("scalar", np.array(3.25, dtype="<f8"))
    await put("partitioned", np.arange(2500, dtype="<u2").reshape(50, 50), chunks=(10, 10), partition_count=4)
    await put("i4_1_0_2_style", np.arange(100 * 200, dtype="<i4").reshape(100, 200), chunks=(40, 50), filters=["shuffle", "gzip"], layout_style="1.0.2")
    cmp_dt = np.dtype([("a", "<i2"), ("v", ">f8", (3,)), ("s", "S5"), ("e", np.dtype("<u1", metadata={"enum": {"RED": 0, "GREEN": 1}}))])
    cmp = np.zeros(40, dtype=cmp_dt)
    cmp["a"] = np.arange(40)
    cmp["v"] = rng.normal(size=(40, 3))
    cmp["s"] = [b"s%d" % i for i in range(40)]
    cmp["e"] = np.arange(40) % 2
    await put("compound_nested", cmp, chunks=(16,))
    await put("bool", np.arange(30) % 3 == 0, chunks=(8,))
    await put("opaque", np.frombuffer(bytes(range(60)), dtype="V6"), chunks=(4,))
    await put("f2", np.linspace(-2, 2, 90, dtype="<f2").reshape(9, 10), chunks=(4, 4), filters=["blosclz"])
    await put("empty_fill", np.full((30, 30), 42, dtype="<i8"), chunks=(10, 10), fill=42, skip=lambda i: True)

    # linked HDF5 layouts (§3.5)
    lc = np.arange(60 * 40, dtype="<i4").reshape(60, 40) * 11
    meta = await w.create_linked_dataset(
        domain, "/linked_chunked", lc, file_key="linked/file1.h5", layout="H5D_CHUNKED_REF", chunks=(16, 16),
        filters=["shuffle", "gzip", "fletcher32"], skip_chunk=lambda i: i == (1, 1),
    )
    exp = lc.copy()
    exp[16:32, 16:32] = 0
    cd.arrays["linked_chunked"] = exp
    cd.ids["linked_chunked"] = meta.id
    lcont = rng.normal(size=(30, 20)).astype("<f8")
    meta = await w.create_linked_dataset(domain, "/linked_contig", lcont, file_key="linked/file2.h5", layout="H5D_CONTIGUOUS_REF")
    cd.arrays["linked_contig"] = lcont
    cd.ids["linked_contig"] = meta.id
    # H5D_CHUNKED_REF_INDIRECT: locations in a chunk table; one HDF5 chunk per HSDS chunk, and
    # hyper-chunks (HSDS chunks of 2 x 3 HDF5 chunks, the file named in the table), each with an unwritten chunk
    li = (np.arange(50 * 45, dtype=">i8").reshape(50, 45) * 13) % 10007
    meta = await w.create_linked_dataset(
        domain, "/linked_indirect", li, file_key="linked/file3.h5", layout="H5D_CHUNKED_REF_INDIRECT", chunks=(16, 10),
        filters=["shuffle", ("gzip", 5)], fillvalue=-7, skip_chunk=lambda i: i == (1, 2),
    )
    exp = li.copy()
    exp[16:32, 20:30] = -7
    cd.arrays["linked_indirect"] = exp
    cd.ids["linked_indirect"] = meta.id
    lh = rng.normal(size=(47, 61)).astype("<f4")
    meta = await w.create_linked_dataset(
        domain, "/linked_hyper", lh, file_key="linked/file4.h5", layout="H5D_CHUNKED_REF_INDIRECT", chunks=(16, 24),
        hyper_dims=(8, 8), filters=["shuffle", ("gzip", 3), "fletcher32"], fillvalue=1.5, file_in_table=True,
        skip_chunk=lambda i: i in ((1, 2), (5, 7)),
    )
    exp = lh.copy()
    exp[8:16, 16:24] = 1.5
    exp[40:47, 56:61] = 1.5
    cd.arrays["linked_hyper"] = exp
    cd.ids["linked_hyper"] = meta.id

    # corrupt and truncated chunks: reads must raise, naming the chunk id and key. (Blosc has no
    # checksum, so the damage goes into the zlib stream, whose adler32 catches it.)
    mangles: tuple[tuple[str, Callable[[bytes], bytes]], ...] = (
        ("bad_corrupt", lambda b: b[:40] + bytes(255 - x for x in b[40:])),
        ("bad_truncated", lambda b: b[: len(b) // 2]),
        ("bad_length", lambda b: b + b"\0\0\0\0\0\0\0\0"),
    )
    for name, mangle in mangles:
        arr = np.arange(10000, dtype="<i4").reshape(100, 100)
        meta = await w.create_dataset(domain, f"/{name}", arr, chunks=(50, 50), filters=[] if name == "bad_length" else [("gzip", 4)])
        cid = chunk_id(meta.id, (0, 1))
        key = chunk_key(cid)
        raw = await storage.get(bucket, key)
        assert raw is not None
        await storage.put(bucket, key, mangle(raw))
        cd.arrays[name] = arr
        cd.ids[name] = meta.id
        cd.bad_keys[name] = (cid, key)
    return cd
