"""Finding 7: a DN serves the buckets it is told to, not every bucket its storage reaches.

Two buckets hold a dataset each. A DN started with ``--bucket hsdstest`` serves only
``hsdstest`` (403 naming ``allowed_buckets`` for the other, on both routes, before the
dataset JSON is even read); ``--allowed-buckets`` (config ``allowed_buckets``) widens it,
``'*'`` on purpose to any.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("hsds_backends_containers")

from _dn_harness import batch, clean_env, frames, json_message, start_dn  # noqa: E402

from hsds_backends.ids import chunk_id  # noqa: E402
from hsds_backends.storage import PosixStorage  # noqa: E402
from hsds_backends.writer import Writer  # noqa: E402

ARR = np.arange(64, dtype="<i8")
JSON = {"Content-Type": "application/json"}


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("root")

    async def write() -> dict[str, Any]:
        out: dict[str, Any] = {"root": str(root)}
        for bucket in ("hsdstest", "payroll"):
            out[bucket] = await Writer(PosixStorage(root), bucket).create_dataset("/home/x/data.h5", "/v", ARR, chunks=(16,))
        return out

    return asyncio.run(write())


def _reads(data: dict[str, Any], *args: str, env: dict[str, str] | None = None) -> dict[str, tuple[int, int, str]]:
    """Read chunk 1 of each bucket's dataset through both routes: bucket → (GET status, batch status, message)."""
    node = start_dn("--root-dir", data["root"], *args, env=env)
    out = {}
    try:
        for bucket in ("hsdstest", "payroll"):
            meta = data[bucket]
            cid = chunk_id(meta.id, (1,))
            g, _, graw = node.request("GET", f"/chunks/{cid}?bucket={bucket}")
            b, _, braw = node.request("POST", "/batch", body=batch(meta.wire_text(), {"chunk_id": cid, "bucket": bucket}), headers=JSON)
            if g == 200:
                assert graw == ARR[16:32].tobytes()
            if b == 200:
                assert frames(braw)[0][2] == ARR[16:32].tobytes()
            msg = json_message(graw) if g != 200 else ""
            if b != 200:
                assert msg == "" or json_message(braw).endswith(msg)
            out[bucket] = (g, b, msg)
    finally:
        node.stop()
    return out


def test_only_the_configured_bucket_is_served(data: dict[str, Any]) -> None:
    """Finding 7: --bucket hsdstest → 'payroll' is a 403 on GET /chunks and /batch."""
    got = _reads(data, "--bucket", "hsdstest")
    assert got["hsdstest"][:2] == (200, 200)
    assert got["payroll"] == (
        403, 403,
        "bucket 'payroll' is not an allowed bucket (allowed: ['hsdstest']); add it to config allowed_buckets to serve it",
    )


def test_allowed_buckets_widen_it(data: dict[str, Any], tmp_path: Path) -> None:
    """Finding 7: --allowed-buckets, config allowed_buckets (file or environment) and '*' serve more buckets."""
    assert {b: r[:2] for b, r in _reads(data, "--allowed-buckets", "hsdstest,payroll").items()} == {"hsdstest": (200, 200), "payroll": (200, 200)}
    cfg = tmp_path / "config.yml"
    cfg.write_text("allowed_buckets: [payroll]\n")
    got = _reads(data, "--config", str(cfg))
    assert got["payroll"][:2] == (200, 200) and got["hsdstest"][:2] == (403, 403)
    got = _reads(data, env=clean_env(HSDS_BACKENDS_ALLOWED_BUCKETS="*"))
    assert {b: r[:2] for b, r in got.items()} == {"hsdstest": (200, 200), "payroll": (200, 200)}
