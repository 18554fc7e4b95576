"""Block-level partial decode: only the Blosc blocks a selection needs, the same bytes as a whole decode.

HSDS stores gzip chunks as Blosc-1 containers of independent zlib blocks, each a contiguous
range of the chunk's bytes (docs/hsds-format.md §3.3). A point or a few rows need only some
blocks: :func:`hsds_backends.codecs.decode_chunk_part` decodes those (each whole, checked),
and the kernel uses it where no decoded-chunk cache keeps the chunk. For random datasets,
selections, points, block sizes and filters, the kernel's answer with partial decode equals
the answer of a whole decode, byte for byte; a corrupt block that is needed still raises,
naming the chunk.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from numcodecs import Blosc

from hsds_backends.codecs import decode_chunk, decode_chunk_part, filter_ops
from hsds_backends.dataset import DatasetMeta
from hsds_backends.errors import ChunkDecodeError
from hsds_backends.kernel import decode_task, process, process_chunk
from hsds_backends.tasks import ChunkTask

SETTINGS = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
DSET = "d-12345678-12345678-1234-123456-123456"


def _meta(shape: tuple[int, ...], chunks: tuple[int, ...], dtype: str, filters: list[Any]) -> DatasetMeta:
    return DatasetMeta.from_json(
        {
            "id": DSET,
            "type": {"class": "H5T_FLOAT", "base": "H5T_IEEE_F32LE"} if dtype == "<f4" else {"class": "H5T_INTEGER", "base": "H5T_STD_I16BE"},
            "shape": {"class": "H5S_SIMPLE", "dims": list(shape)},
            "layout": {"class": "H5D_CHUNKED", "dims": list(chunks)},
            "creationProperties": {"filters": filters},
        },
        "b",
    )


def _stored(raw: bytes, blocksize: int, shuffle: bool) -> bytes:
    """A chunk as HSDS stores gzip (+shuffle): a Blosc container of zlib blocks, typesize 1."""
    return bytes(Blosc(cname="zlib", clevel=3, shuffle=Blosc.SHUFFLE if shuffle else Blosc.NOSHUFFLE, blocksize=blocksize).encode(raw))


@st.composite
def cases(draw: st.DrawFn) -> tuple[DatasetMeta, bytes, bytes, ChunkTask]:
    rank = draw(st.integers(1, 3))
    top = {1: 150_000, 2: 400, 3: 60}[rank]  # up to ~600 KB: several 64 KiB blocks
    chunks = tuple(draw(st.integers(1, top)) for _ in range(rank))
    dtype = draw(st.sampled_from(["<f4", ">i2"]))
    shuffle = draw(st.booleans())
    meta = _meta(chunks, chunks, dtype, [{"class": "H5Z_FILTER_DEFLATE", "id": 1, "name": "deflate", "level": 3}]
                 + ([{"class": "H5Z_FILTER_SHUFFLE", "id": 2, "name": "shuffle"}] if shuffle else []))
    n = int(np.prod(chunks))
    raw = (np.arange(n, dtype="<i8") * draw(st.integers(1, 977)) % 65521).astype(meta.dtype).tobytes()
    stored = _stored(raw, draw(st.sampled_from([65536, 131072, 262144])), shuffle)
    cid = meta.chunk_id((0,) * rank)
    if draw(st.booleans()):
        k = draw(st.integers(1, 8))
        pts = np.stack([np.array(draw(st.lists(st.integers(0, c - 1), min_size=k, max_size=k))) for c in chunks], axis=1)
        task = ChunkTask(cid, meta, meta.location((0,) * rank, cid), "points", points=pts.astype(np.uint64))
    else:
        sel = []
        for c in chunks:
            start = draw(st.integers(0, c - 1))
            stop = draw(st.integers(start + 1, c))
            sel.append(slice(start, stop, draw(st.integers(1, 4))))
        task = ChunkTask(cid, meta, meta.location((0,) * rank, cid), "hyperslab", "[" + ",".join(f"{s.start}:{s.stop}:{s.step}" for s in sel) + "]")
    return meta, raw, stored, task


@SETTINGS
@given(case=cases())
def test_partial_decode_answers_as_a_whole_decode(case: tuple[DatasetMeta, bytes, bytes, ChunkTask]) -> None:
    meta, raw, stored, task = case
    whole = process_chunk(task, decode_task(task, stored))  # a whole decode, as a cache does it
    assert bytes(process(task, stored).data) == bytes(whole.data)  # the kernel's own path: partial where it can
    arr = np.frombuffer(raw, dtype=meta.dtype).reshape(meta.chunks)
    if task.kind == "points":
        assert task.points is not None
        assert bytes(whole.data) == arr[tuple(task.points.astype(np.int64).T)].tobytes()


def test_only_the_needed_blocks_are_decoded() -> None:
    raw = np.arange(64 * 1024, dtype="<f4").tobytes()  # 256 KiB: 4 blocks of 64 KiB (c-blosc's least for zlib)
    stored = _stored(raw, 65536, False)
    ops = filter_ops(["gzip"])
    starts = np.frombuffer(stored, dtype="<i4", count=4, offset=16)
    spoiled = bytearray(stored)
    for b in (0, 2):  # blocks 0 and 2 are garbage: a decode of them would fail
        spoiled[int(starts[b]) + 30] ^= 0xFF
    out = decode_chunk_part(bytes(spoiled), ops, nbytes=len(raw), intervals=np.array([[70000, 70004], [200000, 200010]]))
    assert out is not None and len(out) == len(raw)  # blocks 0 and 2 were never decoded
    view = memoryview(out)
    assert bytes(view[65536:131072]) == raw[65536:131072] and bytes(view[196608:]) == raw[196608:]
    assert decode_chunk_part(bytes(spoiled), ops, nbytes=len(raw), intervals=np.array([[10, 14], [200000, 200010]])) is None  # block 0 needed
    # every block needed, another codec, a trailer to check, a linked chunk: the whole decode's job
    assert decode_chunk_part(stored, ops, nbytes=len(raw), intervals=np.array([[0, len(raw)]])) is None
    lz4 = bytes(Blosc(cname="lz4", blocksize=65536).encode(raw))
    assert decode_chunk_part(lz4, filter_ops(["lz4"]), nbytes=len(raw), intervals=np.array([[0, 4]])) is None
    assert decode_chunk_part(stored, filter_ops(["gzip", "fletcher32"]), nbytes=len(raw), intervals=np.array([[0, 4]])) is None
    assert decode_chunk_part(stored, ops, nbytes=len(raw), intervals=np.array([[0, 4]]), linked=True) is None
    assert decode_chunk_part(stored, ops, nbytes=len(raw) + 4, intervals=np.array([[0, 4]])) is None  # another size: not this chunk


def test_a_corrupt_needed_block_raises_naming_the_chunk_and_an_unneeded_one_is_not_read() -> None:
    meta = _meta((256, 256), (256, 256), "<f4", [{"class": "H5Z_FILTER_DEFLATE", "id": 1, "name": "deflate", "level": 3}])
    raw = (np.arange(256 * 256, dtype="<f4") % 1013).tobytes()
    stored = bytearray(_stored(raw, 65536, False))  # 4 blocks of 64 rows
    header_end = 16 + 4 * 4
    starts = np.frombuffer(bytes(stored[16:header_end]), dtype="<i4")
    stored[int(starts[3]) + 40] ^= 0xFF  # corrupt the last block (rows 192-255)
    cid = meta.chunk_id((0, 0))
    top = ChunkTask(cid, meta, meta.location((0, 0), cid), "hyperslab", "[0:10,0:256]")
    assert bytes(process(top, bytes(stored)).data) == np.frombuffer(raw, "<f4").reshape(256, 256)[0:10].tobytes()
    bottom = ChunkTask(cid, meta, meta.location((0, 0), cid), "hyperslab", "[200:201,5:6]")
    with pytest.raises(ChunkDecodeError, match=f"chunk {cid} .*corrupt"):
        process(bottom, bytes(stored))
    with pytest.raises(ChunkDecodeError, match=f"chunk {cid}"):
        decode_chunk(bytes(stored), meta.ops, itemsize=4, nbytes=len(raw), chunk_id=cid, key="k")



def test_coordinate_lists_fields_and_compounds_take_the_partial_path_with_the_same_answer() -> None:
    dt = np.dtype([("a", ">i2"), ("b", "<f8"), ("c", "S3")])
    doc = {
        "id": DSET,
        "type": {"class": "H5T_COMPOUND", "fields": [
            {"name": "a", "type": {"class": "H5T_INTEGER", "base": "H5T_STD_I16BE"}},
            {"name": "b", "type": {"class": "H5T_FLOAT", "base": "H5T_IEEE_F64LE"}},
            {"name": "c", "type": {"class": "H5T_STRING", "charSet": "H5T_CSET_ASCII", "strPad": "H5T_STR_NULLPAD", "length": 3}},
        ]},
        "shape": {"class": "H5S_SIMPLE", "dims": [400, 300]},
        "layout": {"class": "H5D_CHUNKED", "dims": [400, 300]},
        "creationProperties": {"filters": [{"class": "H5Z_FILTER_DEFLATE", "id": 1, "name": "deflate", "level": 3}]},
    }
    meta = DatasetMeta.from_json(doc, "b")
    assert meta.dtype == dt
    arr = np.zeros((400, 300), dtype=dt)
    arr["a"] = np.arange(400 * 300).reshape(400, 300) % 30000
    arr["b"] = np.linspace(0, 1, 400 * 300).reshape(400, 300)
    arr["c"] = b"xyz"
    raw = arr.tobytes()
    stored = _stored(raw, 65536, False)  # 2.2 MB: 33 blocks
    cid = meta.chunk_id((0, 0))
    for select, fields, want in [
        ("[[3,7,5], 10:20:3]", None, arr[[3, 7, 5]][:, 10:20:3]),
        ("[120:122, [0, 299, 150]]", ("b",), arr[120:122][:, [0, 299, 150]][["b"]]),
        ("[200, 5:6]", ("c", "a"), arr[200:201, 5:6][["c", "a"]]),
    ]:
        task = ChunkTask(cid, meta, meta.location((0, 0), cid), "hyperslab", select, fields=fields)
        part = decode_chunk_part(stored, meta.ops, nbytes=len(raw), intervals=_needed(task, meta))
        assert part is not None  # the partial path is taken
        got = bytes(process(task, stored).data)
        expect = np.ascontiguousarray(want).tobytes() if fields is None else _project_bytes(want, fields, dt)
        assert got == expect == bytes(process_chunk(task, decode_task(task, stored)).data), select


def _needed(task: ChunkTask, meta: DatasetMeta) -> Any:
    from hsds_backends.kernel import _needed_bytes

    out = _needed_bytes(task, meta)
    assert out is not None
    return out


def _project_bytes(values: np.ndarray[Any, Any], fields: tuple[str, ...], dt: np.dtype[Any]) -> bytes:
    from hsds_backends.tasks import field_dtype

    out = np.empty(values.shape, dtype=field_dtype(dt, fields))
    for f in fields:
        out[f] = values[f]
    return out.tobytes()
