"""Finding 3: one small request must not make a DN allocate gigabytes.

A ~600-byte ``/batch`` declaring chunk dims of 2^30 (and 2^33) over a 1 KB file, a query
over an unwritten chunk of such a dataset, and the same dataset JSON stored in the bucket
and read through HSDS's route: each is a 413 naming ``chunk_bytes_limit``, answered at
once, and the DN's peak resident memory (``VmHWM`` of the DN process) stays within 100 MB
of what it was idle.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("hsds_backends_containers")

from _dn_harness import CHUNK0, DN, DSET_ID, batch, contiguous_ref, json_message, start_dn  # noqa: E402

from hsds_backends.ids import object_key  # noqa: E402

JSON = {"Content-Type": "application/json"}
MB = 1024  # /proc figures are in kB


@pytest.fixture(scope="module")
def dn(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DN]:
    root = tmp_path_factory.mktemp("root")
    (root / "hsdstest").mkdir()
    (root / "hsdstest" / "small.bin").write_bytes(bytes(range(256)) * 4)  # 1 KB
    # the huge dataset's JSON, stored where HSDS's route loads it from
    huge = {**contiguous_ref(1 << 30), "layout": {"class": "H5D_CHUNKED", "dims": [1 << 30]}}
    path = root / "hsdstest" / object_key(DSET_ID)
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(huge))
    node = start_dn("--root-dir", str(root))
    yield node
    node.stop()


def _limit_message(raw: bytes, elements: int) -> None:
    msg = json_message(raw)
    assert f"chunks of [{elements}] elements of 1 bytes ({elements} bytes) exceed chunk_bytes_limit (268435456 bytes)" in msg, msg
    assert msg.endswith("raise config chunk_bytes_limit to read this dataset")


def test_huge_chunk_dims_are_a_413_without_allocating(dn: DN, capsys: pytest.CaptureFixture[str]) -> None:
    """Finding 3: 2^30 / 2^33 chunk dims over a 1 KB file, and a query over an unwritten such chunk: 413s, peak RSS within 100 MB of idle."""
    # warm up (imports, pools, first request), then take the idle peak
    good = batch(contiguous_ref(1024), {"chunk_id": CHUNK0, "bucket": "hsdstest", "s3path": "hsdstest/small.bin", "s3offset": 0, "s3size": 1024})
    status, _, raw = dn.request("POST", "/batch", body=good, headers=JSON)
    assert status == 200 and raw.endswith(bytes(range(256)))
    idle = dn.proc_status_kb("VmHWM")
    for exp in (30, 33):
        n = 1 << exp
        body = batch(contiguous_ref(n), {"chunk_id": CHUNK0, "bucket": "hsdstest", "s3path": "hsdstest/small.bin", "s3offset": 0, "s3size": 1024})
        assert len(body) < 700
        t0 = time.monotonic()
        status, _, raw = dn.request("POST", "/batch", body=body, headers=JSON)
        took = time.monotonic() - t0
        assert status == 413, raw[:300]
        _limit_message(raw, n)
        assert took < 2.0, took
        # a query over an unwritten chunk (no s3size: nothing stored) of the same dataset
        chunked = {**contiguous_ref(n), "layout": {"class": "H5D_CHUNKED", "dims": [n]}}
        body = batch(chunked, {"chunk_id": CHUNK0, "bucket": "hsdstest", "kind": "query", "query": "value > 0", "s3size": 0})
        status, _, raw = dn.request("POST", "/batch", body=body, headers=JSON)
        assert status == 413, raw[:300]
        _limit_message(raw, n)
    # the same dataset JSON stored in the bucket, read and queried through HSDS's route
    for query in ("", "&query=value%20%3E%200"):
        status, _, raw = dn.request("GET", f"/chunks/{CHUNK0}?bucket=hsdstest{query}")
        assert status == 413, raw[:300]
        _limit_message(raw, 1 << 30)
    peak = dn.proc_status_kb("VmHWM")
    with capsys.disabled():
        print(f"\nDN peak RSS: idle {idle / MB:.1f} MiB, after the finding-3 requests {peak / MB:.1f} MiB (+{(peak - idle) / MB:.1f} MiB)")
    assert peak - idle < 100 * MB, (idle, peak)
    # and the DN still serves
    status, _, raw = dn.request("POST", "/batch", body=good, headers=JSON)
    assert status == 200
    assert Path(f"/proc/{dn.proc.pid}").exists()
