"""Tests for hsds_backends.ids: object ids, chunk ids and storage keys (docs/hsds-format.md §1.1-§1.4, §4.5)."""

from __future__ import annotations

import hashlib
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hsds_backends.errors import DatasetJsonError, HsdsBackendsError, StoragePathError
from hsds_backends.ids import (
    PRIMES,
    chunk_id,
    chunk_index,
    chunk_key,
    dataset_id_of,
    dn_index,
    domain_key,
    is_root_id,
    new_object_id,
    new_root_id,
    object_key,
    partition_of,
    root_id_of,
)

FAST = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# §1.1 example ids; §1.2 verified on disk: hsdstest/db/147ada2c-2ffb2839/.group.json, …/d/39b5-e935ed-e55bf0/0_0
DSET = "d-147ada2c-2ffb2839-39b5-e935ed-e55bf0"
ROOT = "g-147ada2c-2ffb2839-9cf2-52a4a7-73a0b1"  # first 16 hex rotated by 8
V2_RE = re.compile(r"^[gdt]-[0-9a-f]{8}-[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{6}-[0-9a-f]{6}$")


def rot8(h: str) -> str:
    return "".join("0123456789abcdef"[(int(c, 16) + 8) % 16] for c in h)


# --------------------------------------------------------------------------- object keys


def test_object_key_dataset() -> None:
    assert object_key(DSET) == "db/147ada2c-2ffb2839/d/39b5-e935ed-e55bf0/.dataset.json"


def test_object_key_group_and_datatype() -> None:
    assert (
        object_key("g-147ada2c-2ffb2839-39b5-e935ed-e55bf0") == "db/147ada2c-2ffb2839/g/39b5-e935ed-e55bf0/.group.json"
    )
    assert (
        object_key("t-147ada2c-2ffb2839-39b5-e935ed-e55bf0")
        == "db/147ada2c-2ffb2839/t/39b5-e935ed-e55bf0/.datatype.json"
    )


def test_object_key_root_group_has_no_g_component() -> None:
    # §1.2 verified: hsdstest/db/147ada2c-2ffb2839/.group.json
    assert object_key(ROOT) == "db/147ada2c-2ffb2839/.group.json"


def test_object_key_v1_is_md5_prefixed() -> None:
    v1 = "d-12345678-1234-1234-1234-123456789abc"
    assert object_key(v1) == hashlib.md5(v1.encode()).hexdigest()[:5] + "-" + v1
    assert object_key(v1).endswith("-" + v1)
    assert len(object_key(v1).split("-", 1)[0]) == 5


@pytest.mark.parametrize(
    "bad",
    [
        "x",
        "",
        "d-147ada2c-2ffb2839-39b5-e935ed-e55bf",  # one hex short
        "D-147ada2c-2ffb2839-39b5-e935ed-e55bf0",  # upper-case prefix
        "d-147ADA2C-2ffb2839-39b5-e935ed-e55bf0",  # upper-case hex
        "x-147ada2c-2ffb2839-39b5-e935ed-e55bf0",  # unknown kind
        "d-147ada2c-2ffb2839-39b5-e935ed-e55bf0/../x",
        "c-147ada2c-2ffb2839-39b5-e935ed-e55bf0_0",  # a chunk id is not an object id
    ],
)
def test_object_key_rejects_bad_ids(bad: str) -> None:
    with pytest.raises(
        DatasetJsonError, match=re.escape(f"object id {bad!r} is not a schema-v2 HSDS id like 'd-147ada2c")
    ):
        object_key(bad)


# --------------------------------------------------------------------------- root ids


def test_root_id_of_example() -> None:
    assert root_id_of(DSET) == ROOT
    assert is_root_id(ROOT)
    assert not is_root_id("g-147ada2c-2ffb2839-39b5-e935ed-e55bf0")
    assert not is_root_id(DSET)  # only g- ids can be roots
    assert root_id_of(ROOT) == ROOT


def test_is_root_id_rejects_malformed_group_id() -> None:
    with pytest.raises(DatasetJsonError, match="object id 'g-nothex' is not a schema-v2 HSDS id"):
        is_root_id("g-nothex")


def test_new_root_id_is_rot8() -> None:
    seen = set()
    for _ in range(20):
        r = new_root_id()
        assert V2_RE.match(r) and r.startswith("g-")
        h = r[2:].replace("-", "")
        assert h[16:] == rot8(h[:16])
        assert is_root_id(r)
        assert root_id_of(r) == r
        assert object_key(r) == f"db/{h[:8]}-{h[8:16]}/.group.json"
        seen.add(r)
    assert len(seen) == 20, "root ids are random"


@pytest.mark.parametrize("kind", ["g", "d", "t"])
def test_new_object_id_shares_root_prefix(kind: str) -> None:
    r = new_root_id()
    oid = new_object_id(kind, r)
    assert V2_RE.match(oid) and oid[0] == kind
    assert oid[2:19] == r[2:19]  # first 16 hex (8-8) shared
    assert root_id_of(oid) == r
    assert object_key(oid).startswith(f"db/{r[2:19]}/{kind}/")
    if kind == "g":
        assert not is_root_id(oid) or oid == r


def test_new_object_id_rejects_kind() -> None:
    with pytest.raises(DatasetJsonError, match="object kind 'c' must be 'g', 'd' or 't'"):
        new_object_id("c", ROOT)
    with pytest.raises(DatasetJsonError, match="object id 'nope' is not a schema-v2 HSDS id"):
        new_object_id("d", "nope")


# --------------------------------------------------------------------------- chunk ids


def test_chunk_id_examples() -> None:
    # §1.1: c-147ada2c-2ffb2839-39b5-e935ed-e55bf0_0_3_1
    assert chunk_id(DSET, (0, 3, 1)) == "c-147ada2c-2ffb2839-39b5-e935ed-e55bf0_0_3_1"
    assert chunk_id(DSET, (0, 0)) == "c-147ada2c-2ffb2839-39b5-e935ed-e55bf0_0_0"
    assert chunk_id(DSET, [7]) == "c-147ada2c-2ffb2839-39b5-e935ed-e55bf0_7"


def test_chunk_key_examples() -> None:
    # §1.2 verified on disk: …/d/39b5-e935ed-e55bf0/0_0
    assert chunk_key(chunk_id(DSET, (0, 0))) == "db/147ada2c-2ffb2839/d/39b5-e935ed-e55bf0/0_0"
    assert chunk_key(chunk_id(DSET, (0, 3, 1))) == "db/147ada2c-2ffb2839/d/39b5-e935ed-e55bf0/0_3_1"
    assert chunk_key(chunk_id(DSET, (12,))) == "db/147ada2c-2ffb2839/d/39b5-e935ed-e55bf0/12"


def test_partitioned_chunk_id_and_key() -> None:
    # §1.4: partition = Σ index[d] × PRIMES[d mod 10] mod count; digits after the leading 'c'
    assert PRIMES == (29, 31, 37, 41, 43, 47, 53, 59, 61, 67)
    p = (3 * 29 + 4 * 31) % 7
    assert p == 1
    cid = chunk_id(DSET, (3, 4), 7)
    assert cid == "c1-147ada2c-2ffb2839-39b5-e935ed-e55bf0_3_4"
    assert chunk_key(cid) == "db/147ada2c-2ffb2839/d/39b5-e935ed-e55bf0/p1/3_4"
    assert chunk_index(cid) == (3, 4)
    assert dataset_id_of(cid) == DSET


@pytest.mark.parametrize("count", [None, 0])
def test_no_partition_count_means_no_partition(count: int | None) -> None:
    assert chunk_id(DSET, (3, 4), count) == "c-147ada2c-2ffb2839-39b5-e935ed-e55bf0_3_4"


def test_partition_zero_still_gets_digits() -> None:
    cid = chunk_id(DSET, (0, 0), 5)
    assert cid.startswith("c0-")
    assert chunk_key(cid) == "db/147ada2c-2ffb2839/d/39b5-e935ed-e55bf0/p0/0_0"


@given(st.lists(st.integers(0, 10_000), min_size=1, max_size=12), st.integers(1, 1000))
@FAST
def test_partition_formula(index: list[int], count: int) -> None:
    want = sum(i * PRIMES[d % 10] for d, i in enumerate(index)) % count
    assert partition_of(index, count) == want
    cid = chunk_id(DSET, index, count)
    assert cid.startswith(f"c{want}-")
    assert f"/p{want}/" in chunk_key(cid)


@given(st.lists(st.integers(0, 10**9), min_size=1, max_size=6), st.one_of(st.none(), st.integers(1, 64)))
@FAST
def test_chunk_id_round_trip(index: list[int], count: int | None) -> None:
    cid = chunk_id(DSET, index, count)
    assert chunk_index(cid) == tuple(index)
    assert dataset_id_of(cid) == DSET
    key = chunk_key(cid)
    assert key.startswith("db/147ada2c-2ffb2839/d/39b5-e935ed-e55bf0/")
    assert key.endswith("/" + "_".join(map(str, index)))


@given(st.integers(0, 2**64 - 1), st.sampled_from(["g", "d", "t"]))
@FAST
def test_object_key_is_injective_on_random_ids(seed: int, kind: str) -> None:
    h = hashlib.sha256(str(seed).encode()).hexdigest()[:32]
    oid = f"{kind}-{h[0:8]}-{h[8:16]}-{h[16:20]}-{h[20:26]}-{h[26:32]}"
    key = object_key(oid)
    assert key.startswith(f"db/{h[0:8]}-{h[8:16]}/")
    if not is_root_id(oid):
        assert f"/{kind}/{h[16:20]}-{h[20:26]}-{h[26:32]}/" in key


@pytest.mark.parametrize(
    "bad",
    [
        "x",
        "",
        "c-147ada2c",
        "c-147ada2c-2ffb2839-39b5-e935ed-e55bf0",  # no index suffix
        "c-147ada2c-2ffb2839-39b5-e935ed-e55bf0_",
        "c-147ada2c-2ffb2839-39b5-e935ed-e55bf0_a",
        "c-147ada2c-2ffb2839-39b5-e935ed-e55bf0_-1",
        "c-147ada2c-2ffb2839-39b5-e935ed-e55bf0_0/../../x",
        "cx-147ada2c-2ffb2839-39b5-e935ed-e55bf0_0",
        "d-147ada2c-2ffb2839-39b5-e935ed-e55bf0",
        "c-147ada2c-2ffb2839-39b5-e935ed-e55bf_0",
    ],
)
def test_chunk_functions_reject_bad_ids(bad: str) -> None:
    msg = re.escape(f"chunk id {bad!r} is not an HSDS chunk id like 'c-147ada2c-2ffb2839-39b5-e935ed-e55bf0_0_3'")
    for fn in (chunk_key, chunk_index, dataset_id_of):
        with pytest.raises(StoragePathError, match=msg):
            fn(bad)


def test_chunk_functions_reject_non_strings() -> None:
    with pytest.raises(StoragePathError, match="chunk id None is not an HSDS chunk id"):
        chunk_key(None)  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", ["x", "", "g-147ada2c", "d-147ada2c-2ffb2839-39b5-e935ed-e55bf0/../.."])
def test_chunk_id_rejects_bad_dataset_id(bad: str) -> None:
    # chunk_id("x", (1,)) must not produce the unparsable id 'c-_1'
    with pytest.raises(HsdsBackendsError, match=re.escape(repr(bad))):
        chunk_id(bad, (1,))


# --------------------------------------------------------------------------- domains


@pytest.mark.parametrize(
    ("domain", "key"),
    [
        ("/home/test_user1/test.h5", "home/test_user1/test.h5/.domain.json"),  # §1.2 example
        ("home/test_user1/test.h5", "home/test_user1/test.h5/.domain.json"),  # relative = absolute
        ("/home/test_user1/test.h5/", "home/test_user1/test.h5/.domain.json"),
        ("/home", "home/.domain.json"),  # folder
        ("//home/u/f.h5", "home/u/f.h5/.domain.json"),
    ],
)
def test_domain_key(domain: str, key: str) -> None:
    assert domain_key(domain) == key


@pytest.mark.parametrize("bad", ["/home/../etc/passwd", "..", "/a/./b", "a//b", "/a/b\\c", "/a/\x00b", "/home/u/.."])
def test_domain_key_rejects_traversal(bad: str) -> None:
    with pytest.raises(StoragePathError, match=re.escape(f"domain {bad!r} contains an empty, '.' or '..' component")):
        domain_key(bad)


@pytest.mark.parametrize("bad", ["", "/", "///"])
def test_domain_key_rejects_empty(bad: str) -> None:
    with pytest.raises(
        StoragePathError, match=re.escape(f"domain {bad!r} is empty; pass a path such as '/home/user/file.h5'")
    ):
        domain_key(bad)


def test_domain_key_rejects_non_string() -> None:
    with pytest.raises(StoragePathError, match="domain None is empty"):
        domain_key(None)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- DN choice


@pytest.mark.parametrize("n", [1, 2, 3, 4, 7, 16])
def test_dn_index_is_md5_prefix_mod_n(n: int) -> None:
    for cid in (chunk_id(DSET, (0, 0)), chunk_id(DSET, (1, 2)), chunk_id(DSET, (3, 4), 7)):
        want = int(hashlib.md5(cid.encode()).hexdigest()[:5], 16) % n
        assert dn_index(cid, n) == want
        assert 0 <= dn_index(cid, n) < n


def test_dn_index_uses_the_partitioned_id() -> None:
    # §1.4: the hash is over the partitioned id, so partitioning may move a chunk to another DN
    plain = chunk_id(DSET, (3, 4))
    part = chunk_id(DSET, (3, 4), 7)
    assert dn_index(part, 1 << 20) == int(hashlib.md5(part.encode()).hexdigest()[:5], 16)
    assert dn_index(plain, 1 << 20) == int(hashlib.md5(plain.encode()).hexdigest()[:5], 16)
    assert dn_index(plain, 1 << 20) != dn_index(part, 1 << 20)
