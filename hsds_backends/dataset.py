"""Dataset metadata from HSDS dataset JSON (docs/hsds-format.md §2).

:class:`DatasetMeta` is everything a reader needs to plan and decode: shape,
dtype, chunk dims, fill value, filters, and for linked HDF5 layouts where the
bytes of each chunk live (§3.5).
"""

from __future__ import annotations

import base64
import json
import math
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any, Final

import numpy as np

from .codecs import FilterOps, filter_ops
from .dtypes import dtype_from_type_json, has_vlen
from .config import DEFAULT_CHUNK_BYTES_LIMIT
from .errors import DatasetJsonError, LimitError, TypeJsonError
from .ids import chunk_id, chunk_key

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = ["DatasetMeta", "ChunkLocation", "LAYOUT_CLASSES", "hyper_problem"]

#: Bytes counted per element of a variable-length type when bounding a chunk (its decoded
#: form holds at least a pointer per element).
_VLEN_ELEMENT_BYTES: Final = 8

#: Layout classes we can read (§2.3).
LAYOUT_CLASSES: tuple[str, ...] = ("H5D_CHUNKED", "H5D_CHUNKED_REF", "H5D_CONTIGUOUS_REF", "H5D_CHUNKED_REF_INDIRECT")


@dataclass(frozen=True, slots=True)
class ChunkLocation:
    """Where one chunk's bytes live: an HSDS key, or byte ranges of a linked file.

    A hyper-chunk (``H5D_CHUNKED_REF_INDIRECT`` with ``hyper_dims``, docs/hsds-format.md §3.5)
    is several HDF5 chunks of one file: ``parts`` holds their ``(offset, size)`` in row-major
    order of the HDF5 chunks inside the HSDS chunk (size 0: not stored, the fill value), each
    of ``hyper_dims`` elements; ``offset`` and ``size`` are then ``None``.

    ``pending``: an ``H5D_CHUNKED_REF_INDIRECT`` chunk whose chunk-table entry has not been
    read yet (:meth:`hsds_backends.api.Reader.execute` looks it up); reading it raises.
    """

    bucket: str
    key: str
    offset: int | None = None
    size: int | None = None
    linked: bool = False
    parts: tuple[tuple[int, int], ...] | None = None
    hyper_dims: tuple[int, ...] | None = None
    pending: bool = False


def _fill_bytes(cp: dict[str, Any], dtype: np.dtype[Any]) -> bytes | None:
    """Return one element of the fill value as raw bytes, or None for none (§2.4)."""
    if "fillValue" not in cp or cp["fillValue"] is None:
        return None
    value = cp["fillValue"]
    if dtype.hasobject:
        return None  # vlen fill values: elements read as empty (HSDS writes count 0)
    try:
        if cp.get("fillValue_encoding") == "base64":
            raw = base64.b64decode(value)
            if len(raw) != dtype.itemsize:
                raise DatasetJsonError(
                    f"base64 fillValue decodes to {len(raw)} bytes; the dataset type needs {dtype.itemsize}"
                )
            return raw
        if dtype.names is not None and isinstance(value, list):
            value = tuple(_to_field(v, dtype.fields[n][0]) for v, n in zip(value, dtype.names, strict=True))  # type: ignore[index]
        elif isinstance(value, str) and dtype.kind == "S":
            value = value.encode("utf-8")
        arr = np.array(value, dtype=dtype)
        if arr.nbytes != dtype.itemsize:
            raise DatasetJsonError(f"fillValue {value!r} is {arr.nbytes} bytes of {dtype}; one element is {dtype.itemsize} bytes")
    except DatasetJsonError:
        raise
    except (ValueError, TypeError, OverflowError) as exc:
        raise DatasetJsonError(f"fillValue {value!r} does not fit the dataset type {dtype}: {exc}") from exc
    return arr.tobytes()


def _to_field(v: Any, dt: np.dtype[Any]) -> Any:
    if isinstance(v, str) and dt.kind == "S":
        return v.encode("utf-8")
    if isinstance(v, list) and dt.names is not None:
        return tuple(_to_field(x, dt.fields[n][0]) for x, n in zip(v, dt.names, strict=True))  # type: ignore[index]
    return v


@dataclass(frozen=True)
class DatasetMeta:
    """Parsed HSDS dataset JSON.

    Build with :meth:`from_json`. ``shape`` is ``()`` for a scalar dataset,
    whose single chunk has dims ``(1,)`` (§2.1).
    """

    id: str
    bucket: str
    shape: tuple[int, ...]
    dtype: np.dtype[Any]
    type_json: Any
    chunks: tuple[int, ...]
    fill: bytes | None
    filters: tuple[Any, ...]
    layout_class: str
    partition_count: int | None = None
    file_uri: str | None = None
    contiguous_offset: int | None = None
    contiguous_size: int | None = None
    chunk_table: dict[str, list[int]] = field(default_factory=dict, repr=False)
    source_json: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)
    chunk_table_id: str | None = None
    """``H5D_CHUNKED_REF_INDIRECT``: the id of the dataset holding each chunk's location (§3.5)."""
    hyper_dims: tuple[int, ...] | None = None
    """``H5D_CHUNKED_REF_INDIRECT``: the HDF5 chunk shape when one HSDS chunk covers several (§3.5)."""

    # ------------------------------------------------------------------ parsing
    @classmethod
    def from_json(
        cls, dset_json: dict[str, Any], bucket: str = "", *, chunk_bytes_limit: int = DEFAULT_CHUNK_BYTES_LIMIT
    ) -> DatasetMeta:
        """Parse a dataset JSON as written by hsds 1.0.2 or HSDS master (§2).

        Chunk dims come from top-level ``layout.dims``, else
        ``creationProperties.layout.dims`` (§2.3).

        Raises
        ------
        DatasetJsonError
            The JSON is malformed or inconsistent.
        LimitError
            A chunk would be larger than ``chunk_bytes_limit`` (config ``chunk_bytes_limit``):
            refused here, before any read allocates one.
        """
        if not isinstance(dset_json, dict):
            raise DatasetJsonError(f"dataset JSON must be an object, got {type(dset_json).__name__}")
        did = dset_json.get("id", "")
        try:
            type_json = dset_json["type"]
            shape_json = dset_json["shape"]
        except KeyError as exc:
            raise DatasetJsonError(f"dataset JSON {did!r} has no {exc.args[0]!r} key") from exc
        try:
            dtype = dtype_from_type_json(type_json)
        except TypeJsonError as exc:
            raise DatasetJsonError(f"dataset {did!r}: {exc}") from exc
        try:
            sclass = shape_json.get("class") if isinstance(shape_json, dict) else None
            if sclass == "H5S_SCALAR":
                shape: tuple[int, ...] = ()
            elif sclass == "H5S_SIMPLE":
                shape = tuple(int(d) for d in shape_json["dims"])
                if any(d < 0 for d in shape):
                    raise DatasetJsonError(f"dataset {did!r}: shape {list(shape)} has a negative extent")
            elif sclass == "H5S_NULL":
                raise DatasetJsonError(f"dataset {did!r} has a null dataspace (H5S_NULL); it holds no values to read")
            else:
                raise DatasetJsonError(f"dataset {did!r} has unknown shape class {sclass!r}")
            cp = dset_json.get("creationProperties") or {}
            cp_layout = cp.get("layout") or {}
            top_layout = dset_json.get("layout") or {}
            if not all(isinstance(x, dict) for x in (cp, cp_layout, top_layout)):
                raise DatasetJsonError(f"dataset {did!r}: creationProperties, layout and creationProperties.layout must be objects")
            layout_class = cp_layout.get("class") or top_layout.get("class") or "H5D_CHUNKED"
            if layout_class == "H5D_CONTIGUOUS":
                layout_class = "H5D_CHUNKED"  # §2.3: contiguous requests are stored chunked
            if layout_class not in LAYOUT_CLASSES:
                raise DatasetJsonError(
                    f"dataset {did!r} has layout {layout_class!r}; supported layouts: {', '.join(LAYOUT_CLASSES)}"
                )
            dims = top_layout.get("dims") or cp_layout.get("dims")
            if shape == ():
                chunks: tuple[int, ...] = (1,)
            elif dims is None:
                if layout_class == "H5D_CONTIGUOUS_REF":
                    chunks = _contiguous_chunks(shape, dtype.itemsize)
                else:
                    chunks = tuple(max(1, s) for s in shape)  # no layout at all: one chunk
            else:
                chunks = tuple(int(d) for d in dims)
            if len(chunks) != max(len(shape), 1) or any(c < 1 for c in chunks):
                raise DatasetJsonError(f"dataset {did!r}: chunk dims {list(chunks)} do not fit shape {list(shape)}")
            if shape == () and layout_class == "H5D_CHUNKED_REF_INDIRECT":
                raise DatasetJsonError(f"dataset {did!r}: a scalar dataset cannot have layout H5D_CHUNKED_REF_INDIRECT (HDF5 never chunks a scalar)")
            table_id, hyper = _indirect(did, layout_class, cp_layout, top_layout, chunks)
            # bounded before anything is allocated for a chunk (a fill, a decode, a padded read)
            element = max(dtype.itemsize, _VLEN_ELEMENT_BYTES) if has_vlen(dtype) else dtype.itemsize
            chunk_bytes = math.prod(chunks) * element
            if chunk_bytes > chunk_bytes_limit:
                raise LimitError(
                    f"dataset {did!r}: chunks of {list(chunks)} elements of {element} bytes "
                    f"({chunk_bytes} bytes) exceed chunk_bytes_limit ({chunk_bytes_limit} bytes); "
                    "raise config chunk_bytes_limit to read this dataset"
                )
        except DatasetJsonError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError, OverflowError) as exc:
            raise DatasetJsonError(f"dataset {did!r}: malformed shape or layout JSON ({type(exc).__name__}: {exc})") from exc
        filters = tuple(cp.get("filters") or ())
        if layout_class != "H5D_CHUNKED" and has_vlen(dtype):
            raise DatasetJsonError(f"dataset {did!r}: reference layouts cannot hold variable-length types")
        return cls(
            id=did,
            bucket=bucket,
            shape=shape,
            dtype=dtype,
            type_json=type_json,
            chunks=chunks,
            fill=_fill_bytes(cp, dtype),
            filters=filters,
            layout_class=layout_class,
            partition_count=top_layout.get("partition_count") or cp_layout.get("partition_count"),
            file_uri=cp_layout.get("file_uri"),
            contiguous_offset=cp_layout.get("offset"),
            contiguous_size=cp_layout.get("size"),
            chunk_table=dict(cp_layout.get("chunks") or {}),
            source_json=dset_json,
            chunk_table_id=table_id,
            hyper_dims=hyper,
        )

    # ------------------------------------------------------------ derived facts
    @property
    def rank(self) -> int:
        return len(self.shape)

    @property
    def is_scalar(self) -> bool:
        return self.shape == ()

    @property
    def is_vlen(self) -> bool:
        return has_vlen(self.dtype)

    @property
    def itemsize(self) -> int:
        """Stored bytes per element (for vlen types: not fixed; returns 0)."""
        return 0 if self.is_vlen else self.dtype.itemsize

    @property
    def chunk_shape(self) -> tuple[int, ...]:
        """Shape of a stored chunk (edge chunks are stored full size, §3.1)."""
        return self.chunks

    @property
    def chunk_nbytes(self) -> int:
        return math.prod(self.chunks) * self.dtype.itemsize

    @property
    def data_shape(self) -> tuple[int, ...]:
        """The dataset shape used for chunking (``(1,)`` for scalars)."""
        return self.shape if self.shape else (1,)

    @property
    def chunk_grid(self) -> tuple[int, ...]:
        """Number of chunks per dimension (§1.3)."""
        return tuple(-(-s // c) for s, c in zip(self.data_shape, self.chunks, strict=True))

    @property
    def hyper_factors(self) -> tuple[int, ...]:
        """HDF5 chunks per HSDS chunk along each dimension (all 1 without ``hyper_dims``)."""
        if self.hyper_dims is None:
            return (1,) * len(self.chunks)
        return tuple(c // h for c, h in zip(self.chunks, self.hyper_dims, strict=True))

    @cached_property
    def ops(self) -> FilterOps:
        return filter_ops(list(self.filters), is_vlen=self.is_vlen, linked=self.layout_class != "H5D_CHUNKED")

    @property
    def fill_raw(self) -> bytes:
        """One fill element's bytes (zeros if no fill value); fixed-size types only."""
        return self.fill if self.fill is not None else bytes(self.dtype.itemsize)

    @property
    def fill_element(self) -> np.ndarray[Any, Any]:
        """One fill element as a 0-d array of the dataset dtype (zeros if no fill value)."""
        if self.is_vlen:
            out = np.empty((), dtype=self.dtype)
            out[()] = _empty_vlen(self.dtype)
            return out
        if self.fill is None:
            return np.zeros((), dtype=self.dtype)
        return np.frombuffer(self.fill, dtype=self.dtype).reshape(())

    def chunk_id(self, index: tuple[int, ...]) -> str:
        return chunk_id(self.id, index, self.partition_count)

    def location(self, index: tuple[int, ...], cid: str | None = None) -> ChunkLocation | None:
        """Return where chunk ``index`` lives, or None when a reference layout has no bytes for it (§3.5)."""
        if self.layout_class == "H5D_CHUNKED":
            return ChunkLocation(self.bucket, chunk_key(cid or self.chunk_id(index)))
        if self.layout_class == "H5D_CHUNKED_REF_INDIRECT":
            # the chunk table says where: looked up per read (hsds_backends.chunk_table, Reader.execute)
            return ChunkLocation(self.bucket, "", linked=True, pending=True)
        bucket, key = _split_uri(self.file_uri or "", self.bucket)
        if self.layout_class == "H5D_CHUNKED_REF":
            entry = self.chunk_table.get("_".join(str(i) for i in index))
            if not entry or int(entry[1]) == 0:
                return None
            return ChunkLocation(bucket, key, int(entry[0]), int(entry[1]), linked=True)
        # H5D_CONTIGUOUS_REF: offset + Σ index[d]·chunk[d]·stride[d] (§3.5)
        itemsize = self.dtype.itemsize
        strides = [itemsize * math.prod(self.data_shape[d + 1 :]) for d in range(len(self.data_shape))]
        off = int(self.contiguous_offset or 0) + sum(i * c * s for i, c, s in zip(index, self.chunks, strides, strict=True))
        return ChunkLocation(bucket, key, off, self.chunk_nbytes, linked=True)

    def wire_json(self) -> dict[str, Any]:
        """Return a trimmed dataset JSON holding only what decoding needs.

        It is a valid dataset JSON (:meth:`from_json` parses it back) without the
        chunk table of ``H5D_CHUNKED_REF`` layouts: a chunk task carries its
        own byte range (docs/architecture.md §7).
        """
        cp: dict[str, Any] = {"filters": list(self.filters), "layout": {"class": self.layout_class}}
        if self.fill is not None:
            cp["fillValue"] = base64.b64encode(self.fill).decode()
            cp["fillValue_encoding"] = "base64"
        layout: dict[str, Any] = {"class": "H5D_CHUNKED", "dims": list(self.chunks)}
        if self.partition_count:
            layout["partition_count"] = self.partition_count
        if self.layout_class == "H5D_CONTIGUOUS_REF":
            cp["layout"].update({"file_uri": self.file_uri, "offset": self.contiguous_offset, "size": self.contiguous_size})
        elif self.layout_class == "H5D_CHUNKED_REF":
            cp["layout"].update({"file_uri": self.file_uri, "dims": list(self.chunks)})
        elif self.layout_class == "H5D_CHUNKED_REF_INDIRECT":
            cp["layout"].update({"dims": list(self.chunks), "chunk_table": self.chunk_table_id})
            if self.file_uri:
                cp["layout"]["file_uri"] = self.file_uri
            if self.hyper_dims is not None:
                cp["layout"]["hyper_dims"] = list(self.hyper_dims)
        shape: dict[str, Any] = {"class": "H5S_SCALAR"} if self.is_scalar else {"class": "H5S_SIMPLE", "dims": list(self.shape)}
        return {"id": self.id, "type": self.type_json, "shape": shape, "layout": layout, "creationProperties": cp}

    def wire_text(self) -> str:
        return json.dumps(self.wire_json(), separators=(",", ":"), sort_keys=True)


def _empty_vlen(dt: np.dtype[Any]) -> Any:
    from .dtypes import vlen_of

    v = vlen_of(dt)
    if v is str:
        return ""
    if v is bytes:
        return b""
    if v is not None:
        return np.zeros(0, dtype=v)
    if dt.names is not None:
        return tuple(_empty_vlen(dt.fields[n][0]) for n in dt.names)  # type: ignore[index]
    return np.zeros((), dtype=dt)[()]


def hyper_problem(chunks: Sequence[int], hyper: Sequence[int]) -> str | None:
    """Say what is wrong with ``hyper_dims`` for chunk dims ``chunks``, if anything (§3.5)."""
    if len(hyper) != len(chunks) or any(h < 1 for h in hyper):
        return f"hyper_dims {list(hyper)} must be {len(chunks)} positive extents, one per chunk dim {list(chunks)}"
    bad = [d for d, (c, h) in enumerate(zip(chunks, hyper, strict=True)) if c % h]
    if bad:
        d = bad[0]
        return (
            f"hyper_dims {list(hyper)} do not divide the chunk dims {list(chunks)} "
            f"(dimension {d}: {chunks[d]} is not a multiple of {hyper[d]}); each HSDS chunk must hold whole HDF5 chunks"
        )
    return None


def _indirect(
    did: str, layout_class: str, cp_layout: dict[str, Any], top_layout: dict[str, Any], chunks: tuple[int, ...]
) -> tuple[str | None, tuple[int, ...] | None]:
    """Return (chunk table id, hyper_dims) of an ``H5D_CHUNKED_REF_INDIRECT`` layout (§2.3, §3.5); (None, None) otherwise.

    Raises
    ------
    DatasetJsonError
        No ``chunk_table`` id, or ``hyper_dims`` of another rank than the chunk dims or
        not dividing them (HSDS answers 400), naming the value.
    """
    if layout_class != "H5D_CHUNKED_REF_INDIRECT":
        return None, None
    table = cp_layout.get("chunk_table") or top_layout.get("chunk_table")
    if not isinstance(table, str) or not table.startswith("d-"):
        raise DatasetJsonError(
            f"dataset {did!r}: layout H5D_CHUNKED_REF_INDIRECT needs 'chunk_table', the id of the dataset of chunk "
            f"locations (d-…); got {table!r}"
        )
    raw = cp_layout.get("hyper_dims") or top_layout.get("hyper_dims")
    if raw is None:
        return table, None
    try:
        hyper = tuple(int(h) for h in raw)
    except (TypeError, ValueError):
        raise DatasetJsonError(f"dataset {did!r}: hyper_dims {raw!r} must be a list of integers") from None
    problem = hyper_problem(chunks, hyper)
    if problem:
        raise DatasetJsonError(f"dataset {did!r}: {problem}")
    return table, None if all(c == h for c, h in zip(chunks, hyper, strict=True)) else hyper


def _split_uri(uri: str, default_bucket: str) -> tuple[str, str]:
    """Split a linked file URI into (bucket, key) (§1.5 ``getBucketFromStorURI``)."""
    u = uri
    for prefix in ("s3://", "file://"):
        if u.startswith(prefix):
            u = u[len(prefix) :]
            break
    if not u:
        raise DatasetJsonError("reference layout has no file_uri; it cannot be read")
    if "/" not in u:
        return default_bucket, u
    bucket, key = u.split("/", 1)
    return bucket, key


def _contiguous_chunks(shape: tuple[int, ...], itemsize: int) -> tuple[int, ...]:
    """Chunk dims HSDS derives for ``H5D_CONTIGUOUS_REF`` (§2.3 ``getContiguousLayout``)."""
    limit = 4 * 1024 * 1024
    rank = len(shape)
    chunks = [1] * rank
    nbytes = itemsize
    for d in range(rank - 1, -1, -1):
        if nbytes * shape[d] <= limit:
            chunks[d] = shape[d]
            nbytes *= shape[d]
            continue
        c = shape[d]
        while c > 1 and nbytes * c >= limit:
            c = -(-c // 2)
        chunks[d] = c
        break
    return tuple(chunks)
