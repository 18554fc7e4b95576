"""Chunk locations of ``H5D_CHUNKED_REF_INDIRECT`` datasets, and hyper-chunks (docs/hsds-format.md §3.5).

An ``H5D_CHUNKED_REF_INDIRECT`` dataset keeps its chunks in HDF5 files linked in place; where
each chunk's bytes are is a row of another HSDS dataset, its *chunk table* (layout key
``chunk_table``). The table has the dataset's rank and one entry per HDF5 chunk; its fields
count by position: 0 = byte offset, 1 = byte size (0: the chunk was never written, it reads as
the fill value), 2 = the file (``bucket/key`` bytes) when the layout has no ``file_uri``.

With ``hyper_dims`` (the HDF5 chunk shape), one HSDS chunk of ``dims`` covers
Π(dims / hyper_dims) HDF5 chunks, whose table entries are those at
``index × factors + j`` for every ``j`` of the factor grid, in row-major order. Their byte
ranges are fetched with nearby ranges merged (gaps ≤ :data:`MAX_RANGEGET_GAP`, HSDS's
``max_rangeget_gap``), each is decoded with the file's filters, and placed into an HSDS chunk
first filled with the fill value.

This module turns table rows into :class:`~hsds_backends.dataset.ChunkLocation` objects
(:func:`locations_from_rows`, used by the reader) and parses the SN's colon-separated
``s3offset``/``s3size``/``hyper_dims`` DN parameters into the same (:func:`hyper_location`,
used by the DN service and the front). The kernel fetches and decodes them
(:func:`merged_ranges`, :func:`hsds_backends.kernel.fetch_location`).
"""

from __future__ import annotations

import itertools
import math
from typing import TYPE_CHECKING, Any, Final

import numpy as np

from .dataset import ChunkLocation, _split_uri, hyper_problem
from .errors import DatasetJsonError, LimitError, TaskError

if TYPE_CHECKING:
    from collections.abc import Sequence

    from .dataset import DatasetMeta

__all__ = [
    "MAX_PARTS",
    "MAX_RANGEGET_GAP",
    "check_table",
    "hyper_location",
    "hyper_problem",
    "locations_from_rows",
    "merged_ranges",
    "parse_int_list",
    "pending_error",
    "table_points",
]

#: Byte ranges of one hyper-chunk closer than this are fetched as one (HSDS's ``max_rangeget_gap`` default).
MAX_RANGEGET_GAP: Final = 1024
#: Most values an ``s3offset``/``s3size``/``hyper_dims`` list may hold (HDF5 chunks of one HSDS chunk).
MAX_PARTS: Final = 1 << 16


def parse_int_list(value: Any, name: str, cid: str = "") -> list[int] | None:
    """Parse an integer list: a JSON list or HSDS's ``a:b:c`` text (§4.2); ``None`` when absent.

    ``cid``: the chunk the value belongs to, named in errors.

    Raises
    ------
    TaskError
        (status 400) more than :data:`MAX_PARTS` values (counted before anything is split),
        or a value that is not an integer (``null``, booleans and floats included).
    """
    if value is None or value == "":
        return None
    chunk = f"chunk {cid}: " if cid else ""
    if isinstance(value, str):
        if value.count(":") >= MAX_PARTS:
            raise TaskError(f"{chunk}{name} lists more than {MAX_PARTS} values", status=400)
        items: list[Any] = value.split(":")
    elif isinstance(value, list):
        if len(value) > MAX_PARTS:
            raise TaskError(f"{chunk}{name} lists {len(value)} values, more than {MAX_PARTS}", status=400)
        items = value
    else:
        items = [value]
    out = []
    for v in items:
        if isinstance(v, bool) or not (isinstance(v, int) or (isinstance(v, str) and v.strip().lstrip("-").isdigit())):
            raise TaskError(f"{chunk}{name} {value!r} must be an integer or a ':'-separated list of integers", status=400)
        out.append(int(v))
    return out


def pending_error(cid: str) -> TaskError:
    """The error of reading a location never looked up in the chunk table (never read as fill)."""
    return TaskError(
        f"chunk {cid}: its location is in the dataset's chunk table (H5D_CHUNKED_REF_INDIRECT) and was not looked up; "
        "run the plan through Reader.execute, which reads the chunk table first"
    )


def check_table(meta: DatasetMeta, table: DatasetMeta) -> None:
    """Refuse a chunk table ``meta`` cannot use, naming both datasets and what is wrong.

    Raises
    ------
    DatasetJsonError
        The table is itself ``H5D_CHUNKED_REF_INDIRECT``, has another rank, is not a compound
        of at least (offset, size) integers, has no file field while the layout has no
        ``file_uri``, or is smaller than the dataset's HDF5 chunk grid.
    """
    where = f"chunk table {table.id} of dataset {meta.id}"
    if table.layout_class == "H5D_CHUNKED_REF_INDIRECT":
        raise DatasetJsonError(f"{where} is itself H5D_CHUNKED_REF_INDIRECT; a chunk table must hold its rows itself")
    if len(table.data_shape) != len(meta.data_shape) or table.is_scalar != meta.is_scalar:
        raise DatasetJsonError(f"{where} has rank {table.rank}; the dataset has rank {meta.rank}, and they must match")
    names = table.dtype.names or ()
    kinds = [table.dtype.fields[n][0].kind for n in names[:2]] if names else []  # type: ignore[index]
    if len(names) < 2 or any(k not in "iu" for k in kinds):
        raise DatasetJsonError(
            f"{where} has type {table.dtype}; it must be a compound whose first two fields are integers "
            "(byte offset, byte size), with the file as a third string field when the layout has no file_uri"
        )
    if not meta.file_uri and (len(names) < 3 or table.dtype.fields[names[2]][0].kind != "S"):  # type: ignore[index]
        raise DatasetJsonError(f"{where} has no file field (a third, string field) and the layout names no file_uri: no chunk has a file to be read from")
    need = [_needed(meta, d) for d in range(len(meta.data_shape))]
    if any(have < n for have, n in zip(table.data_shape, need, strict=True)):
        raise DatasetJsonError(
            f"{where} has shape {list(table.data_shape)}; the dataset's HDF5 chunk grid needs at least {need} entries"
        )


def _needed(meta: DatasetMeta, d: int) -> int:
    """Table extent dimension ``d`` needs: the HDF5 chunks that hold any element of the dataset."""
    unit = meta.hyper_dims[d] if meta.hyper_dims is not None else meta.chunks[d]
    return -(-meta.data_shape[d] // unit)


def table_points(
    meta: DatasetMeta, indices: Sequence[tuple[int, ...]], table_shape: Sequence[int]
) -> np.ndarray[Any, np.dtype[np.uint64]]:
    """Return the chunk-table coordinates of every HDF5 chunk of each HSDS chunk in ``indices``.

    ``len(indices) × Π factors`` rows of ``rank`` coordinates: chunk ``i``'s entries are rows
    ``i·F … (i+1)·F − 1``, its HDF5 chunks in row-major order (docs/hsds-format.md §3.5).
    Entries past the table's extent (HDF5 chunks wholly outside the dataset, at the edge of an
    HSDS chunk) are clipped to the last entry; :func:`locations_from_rows` ignores them.
    """
    factors = meta.hyper_factors
    offsets = np.array(list(itertools.product(*(range(f) for f in factors))), dtype=np.int64).reshape(-1, len(factors))
    base = np.asarray(indices, dtype=np.int64).reshape(-1, len(factors)) * np.asarray(factors, dtype=np.int64)
    pts = (base[:, None, :] + offsets[None, :, :]).reshape(-1, len(factors))
    np.minimum(pts, np.maximum(np.asarray(table_shape, dtype=np.int64) - 1, 0), out=pts)
    return pts.astype(np.uint64)


def _inside(meta: DatasetMeta, index: tuple[int, ...], j: tuple[int, ...]) -> bool:
    """Whether HDF5 chunk ``j`` of HSDS chunk ``index`` holds any element of the dataset."""
    hyper = meta.hyper_dims or meta.chunks
    return all(i * c + jj * h < s for i, c, jj, h, s in zip(index, meta.chunks, j, hyper, meta.data_shape, strict=True))


def locations_from_rows(
    meta: DatasetMeta,
    cids: Sequence[str],
    indices: Sequence[tuple[int, ...]],
    rows: np.ndarray[Any, Any],
    *,
    chunk_bytes_limit: int,
) -> list[ChunkLocation | None]:
    """Return the location of each chunk from its chunk-table ``rows`` (as :func:`table_points` ordered them).

    ``None``: no HDF5 chunk of it is stored (it reads as the fill value).

    Raises
    ------
    DatasetJsonError
        An entry with a negative offset or size, an empty file path, or (hyper-chunks) two
        entries of one HSDS chunk in different files; the message names the chunk and the value.
    LimitError
        An entry whose size exceeds ``chunk_bytes_limit``.
    """
    names: tuple[str, ...] = tuple(rows.dtype.names or ())
    factors = meta.hyper_factors
    per = math.prod(factors)
    grid = list(itertools.product(*(range(f) for f in factors)))
    offsets = rows[names[0]].astype(np.int64, copy=False)
    sizes = rows[names[1]].astype(np.int64, copy=False)
    paths = rows[names[2]] if len(names) > 2 and not meta.file_uri else None
    out: list[ChunkLocation | None] = []
    for i, (cid, index) in enumerate(zip(cids, indices, strict=True)):
        parts: list[tuple[int, int]] = []
        where: tuple[str, str] | None = None
        for j in range(per):
            r = i * per + j
            off, size = int(offsets[r]), int(sizes[r])
            if not _inside(meta, index, grid[j]):
                off = size = 0  # an HDF5 chunk past the dataset's extent holds nothing to read
            _check_entry(meta, cid, grid[j] if per > 1 else None, off, size, chunk_bytes_limit)
            if size and paths is not None:
                raw = paths[r]
                text = raw.decode("utf-8", "replace").rstrip("\0") if isinstance(raw, bytes) else str(raw)
                if not text:
                    raise DatasetJsonError(f"chunk {cid}: its chunk-table entry has size {size} but no file; the table {meta.chunk_table_id} is incomplete")
                here = _split_uri(text, meta.bucket)
                if where is not None and here != where:
                    raise DatasetJsonError(
                        f"chunk {cid}: its HDF5 chunks are in two files ({'/'.join(where)} and {'/'.join(here)}); "
                        "one HSDS chunk is read from one file"
                    )
                where = here
            parts.append((off, size))
        if not any(size for _, size in parts):
            out.append(None)
            continue
        total = sum(size for _, size in parts)
        if total > chunk_bytes_limit:
            raise LimitError(
                f"chunk {cid}: its HDF5 chunks hold {total} bytes in all, over chunk_bytes_limit ({chunk_bytes_limit} bytes); "
                "raise config chunk_bytes_limit to read it"
            )
        bucket, key = where if where is not None else _split_uri(meta.file_uri or "", meta.bucket)
        if per == 1:
            out.append(ChunkLocation(bucket, key, parts[0][0], parts[0][1], linked=True))
        else:
            out.append(ChunkLocation(bucket, key, linked=True, parts=tuple(parts), hyper_dims=meta.hyper_dims))
    return out


def _check_entry(meta: DatasetMeta, cid: str, j: tuple[int, ...] | None, off: int, size: int, limit: int) -> None:
    what = f"chunk {cid}" + (f", HDF5 chunk {list(j)} of it," if j is not None else "")
    if off < 0 or size < 0:
        raise DatasetJsonError(f"{what} has chunk-table entry offset {off}, size {size}; neither may be negative (table {meta.chunk_table_id})")
    if size > limit:
        raise LimitError(f"{what} has chunk-table entry size {size}, over chunk_bytes_limit ({limit} bytes); raise config chunk_bytes_limit to read it")


def hyper_location(
    meta: DatasetMeta, cid: str, bucket: str, key: str, offsets: Sequence[int], sizes: Sequence[int],
    hyper_dims: Sequence[int] | None, *, chunk_bytes_limit: int,
) -> ChunkLocation | None:
    """Return the location the SN's ``s3offset``/``s3size`` lists and ``hyper_dims`` name (docs/hsds-format.md §4.2).

    ``None`` when every size is 0 (the DN answers 404: the fill value).

    Raises
    ------
    TaskError
        (status 400) no ``hyper_dims``, ones of the wrong rank or not dividing the chunk dims,
        lists of different lengths, or a count other than Π(dims / hyper_dims); negative
        values; sizes summing to more than ``chunk_bytes_limit`` — each naming the chunk and the value.
    """
    if hyper_dims is None:
        raise TaskError(f"chunk {cid}: s3offset/s3size are lists (hyper-chunks) but hyper_dims is missing", status=400)
    hyper = tuple(int(h) for h in hyper_dims)
    chunks = meta.chunks
    problem = hyper_problem(chunks, hyper)
    if problem:
        raise TaskError(f"chunk {cid}: {problem}", status=400)
    if len(offsets) != len(sizes):
        raise TaskError(f"chunk {cid}: {len(offsets)} s3offset values but {len(sizes)} s3size values; give one of each per HDF5 chunk", status=400)
    count = math.prod(c // h for c, h in zip(chunks, hyper, strict=True))
    if len(offsets) != count:
        raise TaskError(
            f"chunk {cid}: {len(offsets)} HDF5 chunks given; chunk dims {list(chunks)} over hyper_dims {list(hyper)} make {count}",
            status=400,
        )
    for off, size in zip(offsets, sizes, strict=True):
        if off < 0 or size < 0:
            raise TaskError(f"chunk {cid}: s3offset {off} / s3size {size} may not be negative", status=400)
    if sum(sizes) > chunk_bytes_limit:
        raise TaskError(f"chunk {cid}: s3size values sum to {sum(sizes)} bytes, over chunk_bytes_limit ({chunk_bytes_limit} bytes)", status=400)
    if not any(sizes):
        return None
    if all(c == h for c, h in zip(chunks, hyper, strict=True)):
        return ChunkLocation(bucket, key, int(offsets[0]), int(sizes[0]), linked=True)
    return ChunkLocation(bucket, key, linked=True, parts=tuple((int(o), int(s)) for o, s in zip(offsets, sizes, strict=True)), hyper_dims=hyper)


def merged_ranges(parts: Sequence[tuple[int, int]], max_gap: int = MAX_RANGEGET_GAP) -> list[tuple[int, int, list[int]]]:
    """Group the stored parts into byte ranges to fetch: ``(start, length, part numbers)``.

    Parts of size 0 are skipped; parts whose ranges are at most ``max_gap`` bytes apart (or
    overlap) share one range, as HSDS's DN merges them (docs/hsds-format.md §3.5).
    """
    order = sorted((off, size, j) for j, (off, size) in enumerate(parts) if size)
    ranges: list[tuple[int, int, list[int]]] = []
    for off, size, j in order:
        if ranges:
            start, length, members = ranges[-1]
            end = start + length
            if off - end <= max_gap:
                ranges[-1] = (start, max(end, off + size) - start, [*members, j])
                continue
        ranges.append((off, size, [j]))
    return ranges
