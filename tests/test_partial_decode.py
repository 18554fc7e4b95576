"""Block-level partial decode: only the Blosc blocks a selection needs, the same bytes as a whole decode.

HSDS stores compressed chunks as Blosc-1 containers of independent blocks, each a contiguous
range of the chunk's bytes, byte-shuffled (if at all) within the block (docs/hsds-format.md
§3.3). A point or a few rows need only some blocks: :func:`hsds_backends.codecs.decode_chunk_part`
decodes those (each whole, checked), whatever the internal codec (zlib, blosclz, LZ4, LZ4HC,
Zstandard), shuffle and typesize, and the kernel uses it where no decoded-chunk cache keeps the
chunk. For random datasets, selections, points, codecs, block sizes and filters, the kernel's
answer with partial decode equals the answer of a whole decode, byte for byte; a corrupt block
that is needed still raises, naming the chunk. A chunk's blocks are decoded on every idle core
when few chunks are read.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from numcodecs import Blosc

from hsds_backends.codecs import _cblosc, decode_chunk, decode_chunk_part, filter_ops
from hsds_backends.codecs import blosc as blosc_codec
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


CODECS = {"zlib": "deflate", "blosclz": "blosclz", "lz4": "lz4", "lz4hc": "lz4hc", "zstd": "zstd"}  # Blosc cname: HSDS filter name


def _stored(raw: bytes, blocksize: int, shuffle: bool, cname: str = "zlib", typesize: int = 1) -> bytes:
    """A chunk as HSDS stores it (typesize 1: the chunk as a byte string), or with a real typesize as other writers do."""
    codec = Blosc(cname=cname, clevel=3, shuffle=Blosc.SHUFFLE if shuffle else Blosc.NOSHUFFLE, blocksize=blocksize)
    return bytes(codec.encode(np.frombuffer(raw, dtype=f"V{typesize}")))


@st.composite
def cases(draw: st.DrawFn) -> tuple[DatasetMeta, bytes, bytes, ChunkTask]:
    rank = draw(st.integers(1, 3))
    top = {1: 150_000, 2: 400, 3: 60}[rank]  # up to ~600 KB: several 64 KiB blocks
    chunks = tuple(draw(st.integers(1, top)) for _ in range(rank))
    dtype = draw(st.sampled_from(["<f4", ">i2"]))
    shuffle = draw(st.booleans())
    cname = draw(st.sampled_from(sorted(CODECS)))
    meta = _meta(chunks, chunks, dtype, [{"name": CODECS[cname], "level": 3}]
                 + ([{"class": "H5Z_FILTER_SHUFFLE", "id": 2, "name": "shuffle"}] if shuffle else []))
    n = int(np.prod(chunks))
    raw = (np.arange(n, dtype="<i8") * draw(st.integers(1, 977)) % 65521).astype(meta.dtype).tobytes()
    typesize = draw(st.sampled_from([1, meta.dtype.itemsize]))
    stored = _stored(raw, draw(st.sampled_from([16384, 65536, 131072, 262144])), shuffle, cname, typesize)
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
    # every block needed, a trailer to check, a linked chunk, bitshuffle: the whole decode's job
    assert decode_chunk_part(stored, ops, nbytes=len(raw), intervals=np.array([[0, len(raw)]])) is None
    assert decode_chunk_part(stored, filter_ops(["gzip", "fletcher32"]), nbytes=len(raw), intervals=np.array([[0, 4]])) is None
    assert decode_chunk_part(stored, ops, nbytes=len(raw), intervals=np.array([[0, 4]]), linked=True) is None
    assert decode_chunk_part(stored, ops, nbytes=len(raw) + 4, intervals=np.array([[0, 4]])) is None  # another size: not this chunk
    bits = bytes(Blosc(cname="lz4", shuffle=Blosc.BITSHUFFLE, blocksize=65536).encode(np.frombuffer(raw, "<f4")))
    assert decode_chunk_part(bits, filter_ops(["lz4"]), nbytes=len(raw), intervals=np.array([[0, 4]])) is None


def test_the_block_decoders_of_numcodecs_c_blosc_are_found() -> None:
    """Without them blosclz, LZ4 and Zstandard chunks would silently decode whole (numcodecs 0.16 exports all three)."""
    for code in (_cblosc.BLOSCLZ, _cblosc.LZ4, _cblosc.ZSTD):
        assert _cblosc.decompressor(code) is not None, code
    assert _cblosc.decompressor(_cblosc.SNAPPY) is None  # not built into numcodecs' c-blosc: whole decode, which reports it


@pytest.mark.parametrize("cname", sorted(CODECS))
@pytest.mark.parametrize(("shuffle", "typesize"), [(False, 1), (True, 1), (False, 4), (True, 4), (True, 8)])
def test_every_codec_decodes_only_the_needed_blocks(cname: str, shuffle: bool, typesize: int) -> None:
    raw = (np.arange(512 * 1024, dtype="<i8") * 2654435761 % 1000).astype("<f8").tobytes()  # 4 MiB: 4 or more blocks
    stored = _stored(raw, 65536, shuffle, cname, typesize)
    header = blosc_codec.parse_header(memoryview(stored))
    assert header is not None and header.flags >> 5 == {"zlib": 3, "blosclz": 0, "lz4": 1, "lz4hc": 1, "zstd": 4}[cname]
    assert header.typesize == typesize and bool(header.flags & 1) == shuffle
    bs = header.blocksize  # c-blosc may pick a larger block than asked for
    nblocks = -(-len(raw) // bs)
    assert nblocks >= 4
    a, b = 1, nblocks - 1
    spoiled = bytearray(stored)
    offsets = np.frombuffer(spoiled, dtype="<i4", count=nblocks, offset=16)
    for k in range(nblocks):
        if k not in (a, b):
            offsets[k] = 0  # points into the header: decoding this block would be refused
    ops = filter_ops([CODECS[cname]] + (["shuffle"] if shuffle else []))
    out = decode_chunk_part(bytes(spoiled), ops, nbytes=len(raw), intervals=np.array([[a * bs + 8, a * bs + 16], [b * bs + 100, len(raw)]]))
    assert out is not None, f"blocks {a} and {b} decode; no other block was touched"
    view = memoryview(out)
    assert bytes(view[a * bs : (a + 1) * bs]) == raw[a * bs : (a + 1) * bs]
    assert bytes(view[b * bs :]) == raw[b * bs :]
    assert decode_chunk_part(bytes(spoiled), ops, nbytes=len(raw), intervals=np.array([[0, 8], [a * bs, a * bs + 8]])) is None  # block 0 needed


@settings(max_examples=150, deadline=None)
@given(
    cname=st.sampled_from(sorted(CODECS)),
    shuffle=st.sampled_from([Blosc.NOSHUFFLE, Blosc.SHUFFLE]),
    typesize=st.sampled_from([1, 2, 3, 4, 8, 16, 17]),
    blocksize=st.sampled_from([0, 128, 1000, 4096, 65536]),
    items=st.integers(1, 60_000),
    seed=st.integers(0, 2**32 - 1),
    threads=st.integers(1, 3),
    data=st.data(),
)
def test_block_decode_gives_c_blosc_bytes_for_any_codec_shuffle_typesize_and_block_size(
    cname: str, shuffle: int, typesize: int, blocksize: int, items: int, seed: int, threads: int, data: st.DataObject
) -> None:
    """Block by block, all blocks or some, on one thread or several: the bytes c-blosc decodes, block for block."""
    rng = np.random.default_rng(seed)
    raw = (rng.integers(0, 6, items * typesize, dtype=np.uint8) * rng.integers(0, 2, 1, dtype=np.uint8)[0] + np.arange(items * typesize) // 97 % 7).astype(np.uint8).tobytes()
    stored = bytes(Blosc(cname=cname, clevel=5, shuffle=shuffle, blocksize=blocksize).encode(np.frombuffer(raw, dtype=f"V{typesize}")))
    header = blosc_codec.parse_header(memoryview(stored))
    assert header is not None
    whole = blosc_codec.decode_blocks(memoryview(stored), header, threads=threads)
    if header.flags & 0x02:  # c-blosc stored it uncompressed: not this path
        assert whole is None
        return
    assert whole is not None and bytes(whole) == raw
    nblocks = -(-header.nbytes // header.blocksize)
    wanted = sorted(data.draw(st.sets(st.integers(0, nblocks - 1), max_size=6)))
    part = blosc_codec.decode_blocks(memoryview(stored), header, wanted, threads)
    assert part is not None
    for b in wanted:
        lo, hi = b * header.blocksize, min((b + 1) * header.blocksize, len(raw))
        assert bytes(part[lo:hi]) == raw[lo:hi]


def test_one_chunk_is_decoded_on_every_core_and_many_chunks_one_core_each(monkeypatch: pytest.MonkeyPatch) -> None:
    """A read of one chunk spreads its blocks over the idle cores; tasks that already fill the cores do not."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from hsds_backends import kernel

    monkeypatch.setattr(kernel, "_CORES", 2)
    seen: list[str] = []
    real = blosc_codec._decode_some

    def spy(job: Any, blocks: list[int]) -> bool:
        seen.append(threading.current_thread().name)
        return real(job, blocks)

    monkeypatch.setattr(blosc_codec, "_decode_some", spy)
    meta = _meta((512, 512), (512, 512), "<f4", [{"name": "deflate", "level": 3}])
    raw = (np.arange(512 * 512, dtype="<f4") % 1013).tobytes()
    stored = _stored(raw, 262144, False)  # 1 MiB in 4 blocks, as HSDS writes it
    cid = meta.chunk_id((0, 0))
    task = ChunkTask(cid, meta, meta.location((0, 0), cid), "hyperslab", "[0:512,0:512]")
    assert bytes(process(task, stored).data) == raw
    assert len(seen) == 2 and any(name.startswith("blosc-blocks") for name in seen), seen
    seen.clear()
    barrier = threading.Barrier(2)

    def busy_read(_: int) -> bytes:
        with kernel._occupying():
            barrier.wait(timeout=10)  # both cores hold a chunk task before either decodes
            out = bytes(process(task, stored).data)
            barrier.wait(timeout=10)  # and until both have decoded
            return out

    with ThreadPoolExecutor(2) as pool:
        assert list(pool.map(busy_read, range(2))) == [raw, raw]
    assert len(seen) == 2 and not any(name.startswith("blosc-blocks") for name in seen), seen


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


def test_a_crafted_block_size_allocates_no_more_than_the_chunk() -> None:
    """The header's block size is the attacker's: the shuffle scratch is bounded by the chunk's size, not by it."""
    import tracemalloc

    raw = np.arange(1024, dtype="<i4").tobytes()
    stored = bytearray(Blosc(cname="lz4", shuffle=Blosc.SHUFFLE, blocksize=0).encode(np.frombuffer(raw, "<i4")))
    header = blosc_codec.parse_header(memoryview(bytes(stored)))
    assert header is not None and header.typesize == 4 and header.flags & 1 and header.nbytes == len(raw)
    stored[8:12] = (0x7FFFFFF0).to_bytes(4, "little")  # blocksize: 2 GiB
    crafted = blosc_codec.parse_header(memoryview(bytes(stored)))
    assert crafted is not None and crafted.blocksize == 0x7FFFFFF0 and blosc_codec.size_problem(crafted, len(stored)) is None
    tracemalloc.start()
    try:
        out = blosc_codec.decode_blocks(memoryview(bytes(stored)), crafted)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 64 * 1024, peak  # the 4 KiB chunk and its scratch, not 2 GiB
    assert out is None or len(out) == len(raw)


@settings(max_examples=200, deadline=None)
@given(
    cname=st.sampled_from(sorted(CODECS)),
    shuffle=st.booleans(),
    typesize=st.sampled_from([1, 4, 8]),
    flips=st.lists(st.tuples(st.integers(0, 1 << 30), st.integers(1, 255)), min_size=1, max_size=8),
    threads=st.integers(1, 2),
)
def test_crafted_block_streams_never_crash_and_fail_as_chunk_errors(
    cname: str, shuffle: bool, typesize: int, flips: list[tuple[int, int]], threads: int
) -> None:
    """Spoiled offsets, sizes and streams (a crafted or corrupt object): the block decoders refuse or decode within
    bounds, and the whole pipeline answers the chunk's size or ChunkDecodeError naming the chunk, never a crash."""
    raw = (np.arange(64 * 1024, dtype="<i4") % 977).astype("<i4").tobytes()  # 256 KiB
    stored = bytearray(_stored(raw, 16384, shuffle, cname, typesize))
    for pos, x in flips:
        stored[16 + pos % (len(stored) - 16)] ^= x  # anywhere after the header: offsets, split sizes, streams
    blob = bytes(stored)
    header = blosc_codec.parse_header(memoryview(blob))
    assert header is not None
    out = blosc_codec.decode_blocks(memoryview(blob), header, threads=threads)
    assert out is None or len(out) == len(raw)
    ops = filter_ops([CODECS[cname]] + (["shuffle"] if shuffle else []))
    try:
        whole = decode_chunk(blob, ops, itemsize=4, nbytes=len(raw), chunk_id="c-1", key="k/1")
    except ChunkDecodeError as exc:
        assert "c-1" in str(exc)
    else:
        assert len(whole) == len(raw)
