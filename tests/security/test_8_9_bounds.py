"""Findings 3 (core), 8 and 9: a bound on every allocation, checked before allocating.

- Finding 3: chunk dims of 2^30 over a 1 KB linked file made a DN allocate 3.2 GB (the DN's
  own test, with its peak RSS, is ``test_3_unbounded_memory.py``); here: such dataset JSON is
  refused when it is loaded, by ``chunk_bytes_limit``, for a read and for a query over an
  unwritten chunk alike.
- Finding 8: a zlib bomb (1 MB stored → far more) inflated fully before failing.
- Finding 9: no cap on output bytes or chunk count: a 1 TiB read ended in numpy's
  ``_ArrayMemoryError``, and 2^40 one-element chunks built tasks until memory ran out.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import hsds_backends as hb
from hsds_backends.codecs import decode_chunk, filter_ops
from hsds_backends.dataset import DatasetMeta
from hsds_backends.errors import ChunkDecodeError, LimitError
from hsds_backends.storage import PosixStorage
from hsds_backends.tasks import ChunkTask
from hsds_backends.writer import Writer

DOMAIN = "/home/sec/bounds.h5"


def _dset_json(shape: list[int], chunks: list[int], type_json: str = "H5T_STD_U8LE", **layout: object) -> dict[str, object]:
    cp_layout = {"class": "H5D_CHUNKED", "dims": chunks, **layout}
    return {
        "id": "d-147ada2c-2ffb2839-39b5-e935ed-e55bf0",
        "type": type_json,
        "shape": {"class": "H5S_SIMPLE", "dims": shape, "maxdims": shape},
        "layout": {"class": "H5D_CHUNKED", "dims": chunks},
        "creationProperties": {"layout": cp_layout},
    }


def test_finding_3_huge_chunk_dims_are_refused_at_load_before_any_allocation() -> None:
    """Finding 3: chunk dims 2^30 over a 1 KB file (and a query over an unwritten chunk) allocated gigabytes."""
    dj = _dset_json([2**30], [2**30], "H5T_STD_U8LE")
    dj["creationProperties"] = {"layout": {"class": "H5D_CONTIGUOUS_REF", "file_uri": "hsdstest/f.h5", "offset": 0, "size": 1024}}
    with pytest.raises(LimitError, match=r"chunks of \[1073741824\] elements of 1 bytes \(1073741824 bytes\) exceed chunk_bytes_limit \(268435456 bytes\); raise config chunk_bytes_limit") as ei:
        DatasetMeta.from_json(dj, "hsdstest")
    assert ei.value.status == 413
    table = _dset_json([2**28], [2**28], {"class": "H5T_COMPOUND", "fields": [{"name": "a", "type": "H5T_STD_I64LE"}]})  # type: ignore[arg-type]
    with pytest.raises(LimitError, match=r"exceed chunk_bytes_limit"):  # a query over it would fill a 2 GiB chunk
        ChunkTask.from_wire({"chunk_id": "c-147ada2c-2ffb2839-39b5-e935ed-e55bf0_0", "dset_json": table, "bucket": "hsdstest", "query": "a > 0"})
    # the limit is configurable, and a small dataset is untouched by it
    assert DatasetMeta.from_json(dj, "hsdstest", chunk_bytes_limit=2**31).chunks == (2**30,)


def test_finding_8_a_zlib_bomb_fails_without_inflating_the_rest() -> None:
    """Finding 8: a 1 MB stored chunk that inflates to 1 GiB inflated fully before failing."""
    code = textwrap.dedent(
        """
        import resource, sys, zlib
        from hsds_backends.codecs import decode_chunk, filter_ops
        from hsds_backends.errors import ChunkDecodeError
        c = zlib.compressobj(9)
        bomb = b"".join(c.compress(bytes(1 << 20)) for _ in range(1024)) + c.flush()   # 1 GiB of zeros
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        try:
            decode_chunk(bomb, filter_ops([{"class": "H5Z_FILTER_DEFLATE", "id": 1, "level": 9}]), itemsize=1, nbytes=1 << 20, chunk_id="c-bomb", key="k/bomb")
        except ChunkDecodeError as exc:
            grew = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
            print(len(bomb), grew, exc)
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    stored, grew_kb, message = out.stdout.strip().split(" ", 2)
    assert int(stored) < 2 * 1024 * 1024  # about 1 MB on disk
    assert "chunk c-bomb (key k/bomb) inflates to more than the 1069056 bytes it may hold (corrupt, or a decompression bomb); nothing more was inflated" in message
    assert int(grew_kb) < 64 * 1024, f"decoding the bomb grew the peak RSS by {int(grew_kb) // 1024} MB"


def test_finding_8_a_blosc_header_claiming_too_much_fails_before_allocating() -> None:
    from numcodecs import Blosc

    ops = filter_ops([{"class": "H5Z_FILTER_BLOSC", "id": 32001, "name": "blosclz"}])
    frame = bytearray(Blosc(cname="blosclz").encode(np.zeros(4096, dtype="u1")))
    frame[4:8] = (2**31 - 64).to_bytes(4, "little")  # nbytes of the header: 2 GiB
    with pytest.raises(ChunkDecodeError, match=r"chunk c-b \(key k\)"):
        decode_chunk(bytes(frame), ops, itemsize=1, nbytes=4096, chunk_id="c-b", key="k")


@pytest.fixture(scope="module")
def huge_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A domain with a 1 TiB dataset and one of 2^40 one-element chunks (no chunk written)."""
    root = tmp_path_factory.mktemp("huge")

    async def write() -> None:
        w = Writer(PosixStorage(root), "hsdstest")
        await w.create_dataset(DOMAIN, "/tib", None, shape=(2**20, 2**20), dtype="<u1", chunks=(4096, 65536))
        await w.create_dataset(DOMAIN, "/tiny_chunks", None, shape=(2**40,), dtype="<u1", chunks=(1,))

    asyncio.run(write())
    return root


def test_finding_9_a_1_tib_read_is_refused_with_the_limit_named(huge_root: Path) -> None:
    """Finding 9: reading a 1 TiB dataset ended in a numpy ``_ArrayMemoryError`` traceback."""
    with hb.open_domain(DOMAIN, root_dir=str(huge_root)) as dom:
        with pytest.raises(LimitError, match=r"the result would be 1099511627776 bytes, over half the available memory \(default of read_bytes_limit\) \(\d+ bytes\); read a smaller selection or set config read_bytes_limit"):
            dom["/tib"][...]
        assert dom["/tib"][0:2, 0:3].tobytes() == bytes(6)  # a small read of the same dataset is fine
    with hb.open_domain(DOMAIN, config={"root_dir": str(huge_root), "read_bytes_limit": "1m"}) as dom:
        with pytest.raises(LimitError, match=r"the result would be 2097152 bytes, over read_bytes_limit \(1048576 bytes\)"):
            dom["/tib"][0:2048, 0:1024]


def test_finding_9_two_to_the_40_chunks_are_refused_before_building_tasks(huge_root: Path) -> None:
    """Finding 9: a dataset of 2^40 one-element chunks built tasks until memory ran out."""
    with hb.open_domain(DOMAIN, root_dir=str(huge_root)) as dom:
        d = dom["/tiny_chunks"]
        with pytest.raises(LimitError, match=r"the selection touches 1099511627776 chunks, over read_chunks_limit \(250000\); read a smaller selection or raise config read_chunks_limit"):
            d[...]
        with pytest.raises(LimitError, match=r"touches 250001 chunks, over read_chunks_limit"):
            d[0:250_001]
        with pytest.raises(LimitError, match=r"touches 1099511627776 chunks"):
            d.read("[0:1099511627776]")  # an HSDS select string goes through the same check
        assert d[5:9].tobytes() == bytes(4)
