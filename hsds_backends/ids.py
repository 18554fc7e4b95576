"""HSDS object ids, chunk ids and storage keys (docs/hsds-format.md §1.1–§1.4)."""

from __future__ import annotations

import hashlib
import re
import uuid
from collections.abc import Sequence

from .errors import DatasetJsonError, StoragePathError

__all__ = [
    "PRIMES",
    "chunk_id",
    "chunk_index",
    "chunk_key",
    "dataset_id_of",
    "domain_key",
    "is_root_id",
    "new_object_id",
    "new_root_id",
    "object_key",
    "partition_of",
    "root_id_of",
    "dn_index",
]

#: §1.4: partition = Σ index[d] × PRIMES[d mod 10] mod partition_count.
PRIMES: tuple[int, ...] = (29, 31, 37, 41, 43, 47, 53, 59, 61, 67)

_V2_RE = re.compile(r"^([gdt])-([0-9a-f]{8})-([0-9a-f]{8})-([0-9a-f]{4})-([0-9a-f]{6})-([0-9a-f]{6})$")
_CHUNK_RE = re.compile(r"^c(\d*)-([0-9a-f]{8}-[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{6}-[0-9a-f]{6})_(\d+(?:_\d+)*)$")
_V1_RE = re.compile(r"^([gdtc])-[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


def _hex32(obj_id: str) -> str:
    m = _V2_RE.match(obj_id)
    if not m:
        raise DatasetJsonError(
            f"object id {obj_id!r} is not a schema-v2 HSDS id like 'd-147ada2c-2ffb2839-39b5-e935ed-e55bf0'"
        )
    return "".join(m.groups()[1:])


def _fmt(prefix: str, h: str) -> str:
    return f"{prefix}-{h[0:8]}-{h[8:16]}-{h[16:20]}-{h[20:26]}-{h[26:32]}"


def _rot8(h: str) -> str:
    return "".join(format((int(c, 16) + 8) % 16, "x") for c in h)


def is_root_id(obj_id: str) -> bool:
    """Return whether ``obj_id`` is a v2 root group id (last 16 hex = rot-8 of the first 16, §1.1)."""
    if not obj_id.startswith("g-"):
        return False
    h = _hex32(obj_id)
    return h[16:] == _rot8(h[:16])


def root_id_of(obj_id: str) -> str:
    """Return the root group id of the domain that ``obj_id`` belongs to (§1.1 ``getRootObjId``)."""
    h = _hex32(obj_id)
    return _fmt("g", h[:16] + _rot8(h[:16]))


def new_root_id() -> str:
    """Return a fresh root group id: 16 random hex and their rot-8 image."""
    h = hashlib.sha256(uuid.uuid4().hex.encode()).hexdigest()[:16]
    return _fmt("g", h + _rot8(h))


def new_object_id(kind: str, root_id: str) -> str:
    """Return a fresh ``g``/``d``/``t`` id sharing the first 16 hex of ``root_id``."""
    if kind not in ("g", "d", "t"):
        raise DatasetJsonError(f"object kind {kind!r} must be 'g', 'd' or 't'")
    h = _hex32(root_id)[:16] + hashlib.sha256(uuid.uuid4().hex.encode()).hexdigest()[:16]
    return _fmt(kind, h)


def object_key(obj_id: str) -> str:
    """Return the storage key of a group, dataset or datatype JSON (§1.2)."""
    m = _V1_RE.match(obj_id)
    if m and not _V2_RE.match(obj_id):
        return f"{hashlib.md5(obj_id.encode()).hexdigest()[:5]}-{obj_id}"
    h = _hex32(obj_id)
    kind = obj_id[0]
    base = f"db/{h[0:8]}-{h[8:16]}"
    if kind == "g" and is_root_id(obj_id):
        return f"{base}/.group.json"
    name = {"g": ".group.json", "d": ".dataset.json", "t": ".datatype.json"}[kind]
    return f"{base}/{kind}/{h[16:20]}-{h[20:26]}-{h[26:32]}/{name}"


def partition_of(index: Sequence[int], partition_count: int) -> int:
    """Return the partition of a chunk index (§1.4)."""
    return sum(int(i) * PRIMES[d % 10] for d, i in enumerate(index)) % partition_count


def chunk_id(dset_id: str, index: Sequence[int], partition_count: int | None = None) -> str:
    """Return the chunk id of chunk ``index`` of dataset ``dset_id`` (§1.1, §1.3, §1.4)."""
    if not isinstance(dset_id, str) or not dset_id.startswith("d-") or not _V2_RE.match(dset_id):
        raise DatasetJsonError(f"dataset id {dset_id!r} is not a schema-v2 HSDS dataset id like 'd-147ada2c-2ffb2839-39b5-e935ed-e55bf0'")
    body = dset_id[2:]
    suffix = "_".join(str(int(i)) for i in index)
    part = "" if not partition_count else str(partition_of(index, partition_count))
    return f"c{part}-{body}_{suffix}"


def _parse_chunk_id(cid: str) -> tuple[str, str, tuple[int, ...]]:
    m = _CHUNK_RE.match(cid) if isinstance(cid, str) else None
    if not m:
        raise StoragePathError(
            f"chunk id {cid!r} is not an HSDS chunk id like 'c-147ada2c-2ffb2839-39b5-e935ed-e55bf0_0_3'"
        )
    part, body, suffix = m.groups()
    return part, body, tuple(int(s) for s in suffix.split("_"))


def chunk_index(cid: str) -> tuple[int, ...]:
    """Return the chunk indices encoded in a chunk id."""
    return _parse_chunk_id(cid)[2]


def dataset_id_of(cid: str) -> str:
    """Return the dataset id a chunk id belongs to (§1.1 ``getDatasetId``)."""
    return "d-" + _parse_chunk_id(cid)[1]


def chunk_key(cid: str) -> str:
    """Return the storage key of chunk ``cid`` (§1.2), including a partition folder ``p<N>/``."""
    part, body, index = _parse_chunk_id(cid)
    h = body.replace("-", "")
    folder = f"db/{h[0:8]}-{h[8:16]}/d/{h[16:20]}-{h[20:26]}-{h[26:32]}"
    name = "_".join(str(i) for i in index)
    if part:
        return f"{folder}/p{part}/{name}"
    return f"{folder}/{name}"


def domain_key(domain: str) -> str:
    """Return the key of a domain's ``.domain.json`` (§1.2); rejects ``..`` and empty paths."""
    if not isinstance(domain, str) or not domain.strip("/"):
        raise StoragePathError(f"domain {domain!r} is empty; pass a path such as '/home/user/file.h5'")
    parts = domain.strip("/").split("/")
    if any(p in ("", ".", "..") for p in parts) or "\\" in domain or "\x00" in domain:
        raise StoragePathError(f"domain {domain!r} contains an empty, '.' or '..' component; pass an absolute path such as '/home/user/file.h5'")
    return "/".join(parts) + "/.domain.json"


def dn_index(cid: str, node_count: int) -> int:
    """Return the DN number that owns ``cid`` (§4.5: ``int(md5(id)[:5], 16) mod N``)."""
    return int(hashlib.md5(cid.encode()).hexdigest()[:5], 16) % node_count
