"""Finding 10 (DN part): ``/info`` tells strangers only that this is a DN; odd input is a one-line 4xx.

``GET /info`` without a valid token (or on a DN without one) used to give anyone the
storage root, the pid and the versions; now it answers ``{"service", "state"}`` and the
full figures only to a caller with the DN's token. A 5,000-digit index in ``select`` used
to be a bare 500; every answer is JSON with one line of message, never a traceback.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

pytest.importorskip("hsds_backends_containers")

from _dn_harness import DN, clean_env, json_message, serving, start_dn, write_one_dataset  # noqa: E402

from hsds_backends.ids import chunk_id  # noqa: E402

TOKEN = "info-test-token"
PUBLIC = {"service": "hsds-backends-dn", "state": "READY"}


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return write_one_dataset(tmp_path_factory.mktemp("secretpath"), "/home/c/d.h5", "/v", np.arange(100, dtype="<i2"), (10,))


@pytest.fixture(scope="module")
def open_dn(data: dict[str, Any]) -> Iterator[DN]:
    yield from serving("--root-dir", data["root"])


@pytest.fixture(scope="module")
def guarded_dn(data: dict[str, Any]) -> Iterator[DN]:
    node = start_dn("--root-dir", data["root"], env=clean_env(HSDS_BACKENDS_DN_TOKEN=TOKEN))
    yield node
    node.stop()


def test_info_without_a_token_says_only_that_it_is_a_dn(open_dn: DN, guarded_dn: DN, data: dict[str, Any]) -> None:
    """Finding 10: no root, pid, versions or load for a caller without the token; all of it with the token."""
    for node, token in [(open_dn, None), (guarded_dn, None), (guarded_dn, "wrong")]:
        status, _, raw = node.request("GET", "/info", token=token)
        assert status == 200 and json.loads(raw) == PUBLIC
        assert data["root"].encode() not in raw and str(node.proc.pid).encode() not in raw
    status, _, raw = guarded_dn.request("GET", "/info", token=TOKEN)
    doc = json.loads(raw)
    assert status == 200 and doc["storage"] == {"root_dir": data["root"]} and doc["pid"] == guarded_dn.proc.pid
    assert doc["allowed_buckets"] == ["hsdstest"]


def test_a_huge_select_index_is_a_one_line_400(open_dn: DN, data: dict[str, Any]) -> None:
    """Finding 10: a 5,000-digit index in select is a 4xx naming the select, not a bare 500."""
    cid = chunk_id(data["meta"].id, (1,))
    status, headers, raw = open_dn.request("GET", f"/chunks/{cid}?bucket=hsdstest&select=[{'9' * 5000}]")
    assert 400 <= status < 500, raw[:300]
    assert headers["content-type"].startswith("application/json")
    msg = json_message(raw)
    assert "\n" not in msg and "Traceback" not in msg and len(msg) < 400
    assert "select" in msg or "index" in msg
    # and the DN still serves
    status, _, raw = open_dn.request("GET", f"/chunks/{cid}?bucket=hsdstest&select=[2:4]")
    assert status == 200 and raw == np.arange(12, 14, dtype="<i2").tobytes()
