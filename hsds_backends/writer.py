"""Write domains and datasets in HSDS's storage format (for tests, demos and benchmarks).

Objects go where HSDS puts them (docs/hsds-format.md §1.2): folder and domain
``.domain.json``, the root group ``db/<root>/.group.json``, dataset JSON and
chunk objects; chunk bytes are encoded as HSDS encodes them (§3.3 write side,
via :func:`hsds_backends.codecs.encode_chunk`). A read never calls this module.
"""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from .codecs import FilterOps, encode_chunk, encode_linked_chunk, filter_ops
from .dataset import DatasetMeta, hyper_problem
from .dtypes import type_json_from_dtype
from .errors import DatasetJsonError, SelectionError
from .ids import chunk_id, chunk_key, domain_key, new_object_id, new_root_id, object_key
from .storage import Storage, check_bucket
from .vlen import encode_vlen

__all__ = ["Writer", "normalize_filters", "FILTER_NAMES"]

#: Filter name → the object HSDS stores in ``creationProperties.filters`` (§2.4).
FILTER_NAMES: dict[str, dict[str, Any]] = {
    "gzip": {"class": "H5Z_FILTER_DEFLATE", "id": 1, "name": "gzip"},
    "deflate": {"class": "H5Z_FILTER_DEFLATE", "id": 1, "name": "gzip"},
    "shuffle": {"class": "H5Z_FILTER_SHUFFLE", "id": 2, "name": "shuffle"},
    "fletcher32": {"class": "H5Z_FILTER_FLETCHER32", "id": 3, "name": "fletcher32"},
    "blosclz": {"class": "H5Z_FILTER_BLOSC", "id": 32001, "name": "blosclz"},
    "lz4": {"class": "H5Z_FILTER_LZ4", "id": 32004, "name": "lz4"},
    "lz4hc": {"class": "H5Z_FILTER_LZ4HC", "id": 32005, "name": "lz4hc"},
    "bitshuffle": {"class": "H5Z_FILTER_BITSHUFFLE", "id": 32008, "name": "bitshuffle"},
    "zstd": {"class": "H5Z_FILTER_ZSTD", "id": 32015, "name": "zstd"},
}
_COMPRESSORS = {"gzip", "deflate", "blosclz", "lz4", "lz4hc", "zstd"}


def normalize_filters(filters: Iterable[Any] | None) -> list[dict[str, Any]]:
    """Return HSDS's stored filter objects for names like ``"gzip"``, ``("gzip", 4)``, or filter dicts."""
    out: list[dict[str, Any]] = []
    for f in filters or ():
        level = None
        if isinstance(f, tuple):
            f, level = f
        if isinstance(f, dict):
            out.append(dict(f))
            continue
        name = str(f).lower()
        if name not in FILTER_NAMES:
            raise DatasetJsonError(f"unknown filter {f!r}; choose from {sorted(FILTER_NAMES)}")
        item = dict(FILTER_NAMES[name])
        if name in _COMPRESSORS:
            item["level"] = 5 if level is None else int(level)
        out.append(item)
    return out


def _now() -> float:
    return time.time()


class Writer:
    """Create folders, domains, groups and datasets in ``bucket`` of ``storage``.

    Parameters
    ----------
    storage
        Where to write.
    bucket
        Bucket (posix: a folder under ``root_dir``).
    owner
        Owner recorded in domain ACLs (HSDS user name).
    """

    def __init__(self, storage: Storage, bucket: str = "hsdstest", *, owner: str = "admin") -> None:
        self.storage = storage
        self.bucket = check_bucket(bucket)
        self.owner = owner

    async def _put_json(self, key: str, obj: Mapping[str, Any]) -> None:
        await self.storage.put(self.bucket, key, json.dumps(obj).encode())

    async def _get_json(self, key: str) -> Any:
        raw = await self.storage.get(self.bucket, key)
        return None if raw is None else json.loads(raw)

    def _acls(self) -> dict[str, Any]:
        full = {k: True for k in ("create", "read", "update", "delete", "readACL", "updateACL")}
        default = {k: k == "read" for k in full}
        return {self.owner: full, "default": default}

    async def create_domain(self, domain: str, *, folders: bool = True) -> str:
        """Create ``domain`` (and its parent folders) unless it exists; return its root group id."""
        key = domain_key(domain)
        existing = await self._get_json(key)
        if existing and existing.get("root"):
            return str(existing["root"])
        if folders:
            parts = domain.strip("/").split("/")
            for i in range(1, len(parts)):
                fkey = domain_key("/" + "/".join(parts[:i]))
                if await self._get_json(fkey) is None:
                    t = _now()
                    await self._put_json(fkey, {"owner": self.owner, "acls": self._acls(), "created": t, "lastModified": t})
        root = new_root_id()
        t = _now()
        await self._put_json(object_key(root), {"id": root, "root": root, "created": t, "lastModified": t, "links": {}, "attributes": {}})
        await self._put_json(key, {"root": root, "owner": self.owner, "acls": self._acls(), "created": t, "lastModified": t})
        return root

    async def _link(self, domain: str, h5path: str, obj_id: str, link: Mapping[str, Any] | None = None) -> None:
        """Link ``obj_id`` at ``h5path``, creating intermediate groups (``link``: a soft or external link JSON instead)."""
        root = await self.create_domain(domain)
        parts = [p for p in h5path.split("/") if p]
        if not parts:
            raise SelectionError(f"h5path {h5path!r} is empty; give a name such as '/dset'")
        gid = root
        for i, name in enumerate(parts):
            gkey = object_key(gid)
            group = await self._get_json(gkey)
            links = group.setdefault("links", {})
            last = i == len(parts) - 1
            if name in links:
                if last:
                    raise DatasetJsonError(f"{h5path!r} already exists in domain {domain!r}")
                gid = links[name]["id"]
                continue
            t = _now()
            target = obj_id if last else new_object_id("g", root)
            links[name] = {"class": "H5L_TYPE_HARD", "id": target, "title": name, "created": t}
            if last and link is not None:
                links[name] = {**link, "title": name, "created": t}
            group["lastModified"] = t
            await self._put_json(gkey, group)
            if not last:
                await self._put_json(object_key(target), {"id": target, "root": root, "created": t, "lastModified": t, "links": {}, "attributes": {}})
            gid = target

    async def create_group(self, domain: str, h5path: str) -> str:
        """Create an empty group at ``h5path`` (and missing parents); return its id."""
        root = await self.create_domain(domain)
        gid = new_object_id("g", root)
        t = _now()
        await self._put_json(object_key(gid), {"id": gid, "root": root, "created": t, "lastModified": t, "links": {}, "attributes": {}})
        await self._link(domain, h5path, gid)
        return gid

    async def create_soft_link(self, domain: str, h5path: str, target: str) -> None:
        """Link ``h5path`` softly to the path ``target`` (docs/hsds-format.md §2: ``H5L_TYPE_SOFT``)."""
        await self._link(domain, h5path, "", {"class": "H5L_TYPE_SOFT", "h5path": target})

    async def create_external_link(self, domain: str, h5path: str, target_domain: str, target: str) -> None:
        """Link ``h5path`` to ``target`` in another domain (``H5L_TYPE_EXTERNAL``: ``h5domain``, ``h5path``)."""
        await self._link(domain, h5path, "", {"class": "H5L_TYPE_EXTERNAL", "h5domain": target_domain, "h5path": target})

    async def _object_at(self, domain: str, h5path: str) -> str:
        """The id of the object at ``h5path`` (``/``: the root group), following hard links only."""
        gid = await self.create_domain(domain)
        for name in [p for p in h5path.split("/") if p]:
            links = (await self._get_json(object_key(gid)) or {}).get("links", {})
            if name not in links or "id" not in links[name]:
                raise DatasetJsonError(f"no hard link {name!r} on the way to {h5path!r} in domain {domain!r}; create it first")
            gid = links[name]["id"]
        return gid

    async def set_attribute(
        self, domain: str, h5path: str, name: str, value: Any, dtype: Any = None, *, type_json: Any = None, shape: Any = None
    ) -> None:
        """Store attribute ``name`` on the object at ``h5path`` in HSDS's JSON form (docs/hsds-format.md §2).

        Parameters
        ----------
        value
            The value; a 0-d value makes a scalar attribute (``H5S_SCALAR``).
        dtype
            Its numpy dtype (default: ``numpy.asarray(value).dtype``); vlen dtypes from
            :func:`hsds_backends.dtypes.vlen_dtype`, enums with ``metadata={"enum": …}``.
        type_json, shape
            Raw HSDS type and shape JSON, stored with ``value`` as given (for references,
            or layouts the numpy route cannot express).
        """
        if type_json is None:
            dt = np.dtype(dtype) if dtype is not None else None
            if dt is not None and dt.subdtype is not None:
                base, sub = dt.subdtype
                arr = np.asarray(value, dtype=base)
                ashape = arr.shape[: arr.ndim - len(sub)]
            else:
                arr = np.asarray(value, dtype=dt) if dt is None or not dt.hasobject else _object_array(value, dt)
                dt = arr.dtype if dt is None else dt
                ashape = arr.shape
            type_json = type_json_from_dtype(dt)
            shape = {"class": "H5S_SCALAR"} if not ashape else {"class": "H5S_SIMPLE", "dims": list(ashape)}
            value = _json_value(arr.tolist())
        elif shape is None:
            shape = {"class": "H5S_SCALAR"}
        oid = await self._object_at(domain, h5path)
        key = object_key(oid)
        obj = await self._get_json(key)
        t = _now()
        obj.setdefault("attributes", {})[name] = {"type": type_json, "shape": shape, "value": value, "created": t}
        obj["lastModified"] = t
        await self._put_json(key, obj)

    async def create_dataset(
        self,
        domain: str,
        h5path: str,
        data: Any = None,
        *,
        shape: Sequence[int] | None = None,
        dtype: Any = None,
        chunks: Sequence[int] | None = None,
        filters: Iterable[Any] | None = None,
        fillvalue: Any = None,
        skip_chunk: Callable[[tuple[int, ...]], bool] | None = None,
        write_fill_chunks: bool = True,
        layout_style: str = "master",
        partition_count: int | None = None,
        maxshape: Sequence[int | None] | None = None,
        link: bool = True,
    ) -> DatasetMeta:
        """Create a chunked dataset and write ``data`` into chunk objects.

        Parameters
        ----------
        data
            Array to store (``None``: no chunks are written; all reads give fill).
        shape, dtype
            Needed when ``data`` is ``None``; ``shape=()`` makes a scalar dataset.
        chunks
            Chunk dims (default: the whole shape).
        filters
            Names (``"gzip"``, ``("gzip", 4)``, ``"shuffle"``, ``"lz4"``, ...) or HSDS filter objects.
        fillvalue
            Fill value (stored in ``creationProperties.fillValue``).
        maxshape
            Extents the dataset may grow to, ``None`` for unlimited (stored as ``maxdims``,
            0 for unlimited; default: the shape).
        skip_chunk
            Return True for chunk indices to leave unwritten (they read as fill).
        write_fill_chunks
            When False, chunks whose every element equals the fill value are not written.
        layout_style
            ``"master"`` writes top-level ``layout`` and ``creationProperties.layout``;
            ``"1.0.2"`` writes only ``creationProperties.layout`` (§2.3).
        partition_count
            Spread chunk keys over ``p<N>/`` folders (§1.4).
        link
            ``False``: create the dataset without linking it at ``h5path`` (an anonymous
            dataset, as HSDS keeps the chunk table of an ``H5D_CHUNKED_REF_INDIRECT`` layout).
        """
        dt = np.dtype(dtype) if dtype is not None else None
        arr = None
        if data is not None:
            if dt is not None and dt.subdtype is not None:
                # H5T_ARRAY elements: numpy expands sub-array dtypes, so keep elements as raw V<n> items
                base, sub = dt.subdtype
                a = np.ascontiguousarray(np.asarray(data, dtype=base))
                if a.shape[a.ndim - len(sub) :] != sub:
                    raise DatasetJsonError(f"data of shape {list(a.shape)} does not end in the element shape {list(sub)}")
                arr = a.reshape(-1).view(f"V{dt.itemsize}").reshape(a.shape[: a.ndim - len(sub)])
            else:
                arr = np.asarray(data, dtype=dt)
                dt = arr.dtype
            shape = arr.shape
        if dt is None:
            dt = np.dtype("<f4")
        if shape is None:
            raise DatasetJsonError("pass data or a shape")
        shape = tuple(int(s) for s in shape)
        dshape = shape or (1,)
        chunks = tuple(int(c) for c in (chunks or dshape))
        if len(chunks) != len(dshape) or any(c < 1 for c in chunks):
            raise DatasetJsonError(f"chunks {list(chunks)} do not fit shape {list(shape)}")
        maxdims = list(shape)
        if maxshape is not None:
            if len(maxshape) != len(shape) or any(m is not None and int(m) < s for m, s in zip(maxshape, shape, strict=True)):
                raise DatasetJsonError(f"maxshape {list(maxshape)} does not fit shape {list(shape)}: one extent or None per dimension, each at least the shape's")
            maxdims = [0 if m is None else int(m) for m in maxshape]
        root = await self.create_domain(domain)
        did = new_object_id("d", root)
        flist = normalize_filters(filters)
        cp: dict[str, Any] = {"layout": {"class": "H5D_CHUNKED", "dims": list(chunks)}, "filters": flist}
        if fillvalue is not None:
            cp.update(_fill_json(fillvalue, dt))
        t = _now()
        dj: dict[str, Any] = {
            "id": did,
            "root": root,
            "created": t,
            "lastModified": t,
            "type": type_json_from_dtype(dt),
            "shape": {"class": "H5S_SCALAR"} if not shape else {"class": "H5S_SIMPLE", "dims": list(shape), "maxdims": maxdims},
            "attributes": {},
            "creationProperties": cp,
        }
        if layout_style == "master":
            dj["layout"] = {"class": "H5D_CHUNKED", "dims": list(chunks)}
            if partition_count:
                dj["layout"]["partition_count"] = int(partition_count)
        elif partition_count:
            cp["layout"]["partition_count"] = int(partition_count)
        meta = DatasetMeta.from_json(dj, self.bucket)
        await self._put_json(object_key(did), dj)
        if link:
            await self._link(domain, h5path, did)
        if arr is not None:
            await self._write_chunks(meta, arr.reshape(dshape), skip_chunk, write_fill_chunks)
        return meta

    async def _write_chunks(self, meta: DatasetMeta, arr: np.ndarray[Any, Any], skip_chunk: Callable[[tuple[int, ...]], bool] | None, write_fill: bool) -> None:
        ops = meta.ops
        if meta.is_vlen:
            fill = meta.fill_element
        else:
            # work on raw V<n> items: byte-exact for every fixed-size type, incl. sub-arrays
            fill = np.frombuffer(meta.fill_raw, dtype=f"V{meta.dtype.itemsize}").reshape(())
            arr = np.ascontiguousarray(arr).view(f"V{meta.dtype.itemsize}") if arr.dtype.kind != "V" or arr.dtype.names else arr
        for index in itertools.product(*(range(n) for n in meta.chunk_grid)):
            if skip_chunk is not None and skip_chunk(index):
                continue
            region = tuple(slice(i * c, min((i + 1) * c, s)) for i, c, s in zip(index, meta.chunks, meta.data_shape, strict=True))
            block = np.empty(meta.chunks, dtype=meta.dtype if meta.is_vlen else fill.dtype)
            if meta.is_vlen and meta.dtype.names is None:
                block.fill(fill[()])  # an element may itself be an array (vlen of ints): no broadcasting
            else:
                block[...] = fill
            part = arr[region]
            block[tuple(slice(0, n) for n in part.shape)] = part
            if not write_fill and _all_fill(part, fill):
                continue
            raw = encode_vlen(block, meta.dtype) if meta.is_vlen else block.tobytes()
            enc = encode_chunk(raw, ops, itemsize=1 if meta.is_vlen else meta.dtype.itemsize)
            await self.storage.put(self.bucket, chunk_key(chunk_id(meta.id, index, meta.partition_count)), enc)

    async def create_linked_dataset(
        self,
        domain: str,
        h5path: str,
        data: Any,
        *,
        file_key: str,
        layout: str = "H5D_CHUNKED_REF",
        chunks: Sequence[int] | None = None,
        filters: Iterable[Any] | None = None,
        fillvalue: Any = None,
        skip_chunk: Callable[[tuple[int, ...]], bool] | None = None,
        header_bytes: int = 2048,
        hyper_dims: Sequence[int] | None = None,
        file_in_table: bool = False,
    ) -> DatasetMeta:
        """Write ``data`` into a linked "HDF5-like" file and a reference-layout dataset (§3.5).

        The file holds ``header_bytes`` of padding, then each chunk as HDF5's
        filter pipeline would store it (shuffle → zlib → fletcher32), and the
        dataset JSON points into it with ``H5D_CHUNKED_REF`` offsets/sizes or an
        ``H5D_CONTIGUOUS_REF`` offset/size (contiguous data is unfiltered).

        ``H5D_CHUNKED_REF_INDIRECT``: the file holds HDF5 chunks of ``hyper_dims`` (default:
        ``chunks``) and their offsets and sizes go into a chunk-table dataset (anonymous, in the
        same domain; compound ``offset`` int64, ``size`` int32, and with ``file_in_table`` the
        file's ``bucket/key`` as a third field instead of the layout's ``file_uri``). HSDS chunks
        are ``chunks``, a multiple of ``hyper_dims``; ``skip_chunk`` is given HDF5 chunk indices.
        """
        arr = np.asarray(data)
        dt = arr.dtype
        shape = arr.shape
        root = await self.create_domain(domain)
        did = new_object_id("d", root)
        flist = normalize_filters(filters)
        blob = bytearray(header_bytes)
        cp_layout: dict[str, Any] = {"class": layout, "file_uri": f"{self.bucket}/{file_key}"}
        if layout == "H5D_CONTIGUOUS_REF":
            cp_layout.update({"offset": len(blob), "size": arr.nbytes})
            blob += arr.tobytes()
            dims = None
        elif layout == "H5D_CHUNKED_REF":
            dims = tuple(int(c) for c in (chunks or shape))
            table: dict[str, list[int]] = {}
            ops = filter_ops(flist)
            for index, enc in _hdf5_chunks(arr, dims, ops, fillvalue, skip_chunk):
                table["_".join(map(str, index))] = [len(blob), len(enc)]
                blob += enc
            cp_layout.update({"dims": list(dims), "chunks": table})
        elif layout == "H5D_CHUNKED_REF_INDIRECT":
            if not shape:
                raise DatasetJsonError("a scalar dataset cannot have layout H5D_CHUNKED_REF_INDIRECT (HDF5 never chunks a scalar)")
            dims = tuple(int(c) for c in (chunks or shape))
            h5dims = tuple(int(c) for c in (hyper_dims or dims))
            problem = hyper_problem(dims, h5dims)
            if problem:  # before anything is written
                raise DatasetJsonError(problem)
            ops = filter_ops(flist)
            grid = [-(-s // c) for s, c in zip(shape, h5dims, strict=True)]
            file_uri = f"{self.bucket}/{file_key}"
            fields: list[tuple[str, str]] = [("offset", "<i8"), ("size", "<i4")]
            if file_in_table:
                fields.append(("file_uri", f"S{len(file_uri.encode())}"))
            entries = np.zeros(grid, dtype=fields)
            for index, enc in _hdf5_chunks(arr, h5dims, ops, fillvalue, skip_chunk):
                entries[index] = (len(blob), len(enc), file_uri.encode()) if file_in_table else (len(blob), len(enc))
                blob += enc
            table_meta = await self.create_dataset(
                domain, "", entries, chunks=tuple(max(1, min(n, 64)) for n in grid), link=False,
                fillvalue=None,
            )
            cp_layout = {"class": layout, "dims": list(dims), "chunk_table": table_meta.id}
            if not file_in_table:
                cp_layout["file_uri"] = file_uri
            if h5dims != dims:
                cp_layout["hyper_dims"] = list(h5dims)
        else:
            raise DatasetJsonError(f"layout {layout!r} must be 'H5D_CHUNKED_REF', 'H5D_CHUNKED_REF_INDIRECT' or 'H5D_CONTIGUOUS_REF'")
        await self.storage.put(self.bucket, file_key, bytes(blob))
        cp: dict[str, Any] = {"layout": cp_layout, "filters": flist}
        if fillvalue is not None:
            cp.update(_fill_json(fillvalue, dt))
        t = _now()
        dj: dict[str, Any] = {
            "id": did, "root": root, "created": t, "lastModified": t,
            "type": type_json_from_dtype(dt),
            "shape": {"class": "H5S_SIMPLE", "dims": list(shape), "maxdims": list(shape)},
            "attributes": {}, "creationProperties": cp,
        }
        if dims is not None:
            dj["layout"] = {"class": "H5D_CHUNKED", "dims": list(dims)}
        meta = DatasetMeta.from_json(dj, self.bucket)
        if dims is None:
            dj["layout"] = {"class": "H5D_CHUNKED", "dims": list(meta.chunks)}
        await self._put_json(object_key(did), dj)
        await self._link(domain, h5path, did)
        return meta


def _hdf5_chunks(
    arr: np.ndarray[Any, Any], dims: tuple[int, ...], ops: FilterOps, fillvalue: Any,
    skip_chunk: Callable[[tuple[int, ...]], bool] | None,
) -> Iterator[tuple[tuple[int, ...], bytes]]:
    """Yield ``(index, stored bytes)`` of each HDF5 chunk of ``dims`` that is written, as HDF5's pipeline stores it (§3.5)."""
    grid = [-(-s // c) for s, c in zip(arr.shape, dims, strict=True)]
    for index in itertools.product(*(range(n) for n in grid)):
        if skip_chunk is not None and skip_chunk(index):
            continue
        block = np.zeros(dims, dtype=arr.dtype)
        if fillvalue is not None:
            block[...] = fillvalue
        region = tuple(slice(i * c, min((i + 1) * c, s)) for i, c, s in zip(index, dims, arr.shape, strict=True))
        part = arr[region]
        block[tuple(slice(0, n) for n in part.shape)] = part
        yield index, encode_linked_chunk(block.tobytes(), ops, itemsize=arr.dtype.itemsize)


def _fill_json(fillvalue: Any, dt: np.dtype[Any]) -> dict[str, Any]:
    """Fill value as HSDS stores it (§2.4): JSON for ints/floats, base64 of the element otherwise."""
    if dt.hasobject:
        raise DatasetJsonError("variable-length datasets cannot have a fill value here; their elements read as empty")
    fv = np.asarray(fillvalue, dtype=dt.base if dt.subdtype is not None else dt)
    if fv.nbytes != dt.itemsize:
        raise DatasetJsonError(f"fill value {fillvalue!r} is {fv.nbytes} bytes; one element of {dt} is {dt.itemsize}")
    if dt.kind in "iuf" and dt.names is None and dt.subdtype is None:
        return {"fillValue": fv.item()}
    import base64

    return {"fillValue": base64.b64encode(fv.tobytes()).decode(), "fillValue_encoding": "base64"}


def _all_fill(part: np.ndarray[Any, Any], fill: np.ndarray[Any, Any]) -> bool:
    if part.dtype.hasobject:
        return False
    a = np.ascontiguousarray(part).view(np.uint8).reshape(-1, part.dtype.itemsize) if part.size else np.empty((0, part.dtype.itemsize), np.uint8)
    return bool((a == np.frombuffer(fill.tobytes(), np.uint8)).all())


def _object_array(value: Any, dt: np.dtype[Any]) -> np.ndarray[Any, Any]:
    """``value`` as an array of ``dt`` without numpy turning vlen elements into extra axes."""
    if isinstance(value, np.ndarray) and value.dtype.hasobject:
        return value.astype(dt)
    if dt.names is not None or not isinstance(value, (list, tuple)):
        return np.array(value, dtype=dt)
    out = np.empty(len(value), dtype=dt)
    for i, v in enumerate(value):
        out[i] = v
    return out


def _json_value(v: Any) -> Any:
    """``tolist()`` output as JSON: tuples (compound elements) as lists, bytes as text, arrays as lists."""
    if isinstance(v, (list, tuple)):
        return [_json_value(x) for x in v]
    if isinstance(v, bytes):
        return v.decode("utf-8")
    if isinstance(v, np.ndarray):
        return _json_value(v.tolist())
    if isinstance(v, np.generic):
        return _json_value(v.item())
    if isinstance(v, bool):
        return int(v)
    return v
