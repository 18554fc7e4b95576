"""HSDS filter lists reduced to what a chunk read must undo (docs/hsds-format.md §2.4, §3.3).

HSDS reduces a dataset's filter list to one compressor plus one shuffle flag
(``getFilterOps``); :func:`filter_ops` does the same and records, without
raising, filters whose output cannot be decoded.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from collections.abc import Iterable

__all__ = ["DEFAULT_LEVEL", "KNOWN_FILTERS", "SUPPORTED_FILTERS", "FilterOps", "filter_ops", "filter_list"]

#: HDF5 filter id -> HSDS filter name (docs/hsds-format.md §2.4, ``FILTER_DEFS``).
KNOWN_FILTERS: Final[dict[int, str]] = {
    0: "none",
    1: "gzip",
    2: "shuffle",
    3: "fletcher32",
    4: "szip",
    5: "nbit",
    6: "scaleoffset",
    32000: "lzf",
    32001: "blosclz",
    32003: "snappy",
    32004: "lz4",
    32005: "lz4hc",
    32008: "bitshuffle",
    32015: "zstd",
}

#: The filter names the codecs decode; quoted in :class:`UnsupportedFilterError` messages.
SUPPORTED_FILTERS: Final[tuple[str, ...]] = (
    "gzip/deflate",
    "blosclz",
    "lz4",
    "lz4hc",
    "zstd",
    "shuffle",
    "bitshuffle",
    "fletcher32",
    "nbit (no-op, HSDS-native only)",
    "scaleoffset (no-op, HSDS-native only)",
)

# HDF5 filter class string (H5Z_FILTER_<X>) -> HSDS name, docs/hsds-format.md §2.4.
_CLASS_NAMES: Final[dict[str, str]] = {
    "H5Z_FILTER_NONE": "none",
    "H5Z_FILTER_DEFLATE": "gzip",
    "H5Z_FILTER_SHUFFLE": "shuffle",
    "H5Z_FILTER_FLETCHER32": "fletcher32",
    "H5Z_FILTER_SZIP": "szip",
    "H5Z_FILTER_NBIT": "nbit",
    "H5Z_FILTER_SCALEOFFSET": "scaleoffset",
    "H5Z_FILTER_LZF": "lzf",
    "H5Z_FILTER_BLOSC": "blosclz",
    "H5Z_FILTER_SNAPPY": "snappy",
    "H5Z_FILTER_LZ4": "lz4",
    "H5Z_FILTER_LZ4HC": "lz4hc",
    "H5Z_FILTER_BITSHUFFLE": "bitshuffle",
    "H5Z_FILTER_ZSTD": "zstd",
}
# Extra spellings accepted for names: `deflate` is HSDS's alias of gzip, and
# getSupportedFilters reports numcodecs' `zlib` as gzip (docs/hsds-format.md §2.4).
_NAME_ALIASES: Final[dict[str, str]] = {"deflate": "gzip", "zlib": "gzip", "blosc": "blosclz"}
# Names HSDS counts as compression classes, in docs/hsds-format.md §3.3's list; the first one in
# the filter list wins.
_COMPRESSION_NAMES: Final[frozenset[str]] = frozenset(
    {"gzip", "szip", "scaleoffset", "lzf", "blosclz", "snappy", "lz4", "lz4hc", "zstd"}
)
# Filters whose output nobody here can decode (HSDS rejects them at creation, docs/hsds-format.md §2.4).
_UNDECODABLE: Final[frozenset[str]] = frozenset({"szip", "lzf", "snappy"})
# Filters HSDS accepts but never applies (docs/hsds-format.md §3.3 table). In a linked HDF5 file
# the HDF5 library did apply them, so there they are undecodable.
_NOOP_NATIVE: Final[frozenset[str]] = frozenset({"nbit", "scaleoffset"})
_BLOSC_CNAMES: Final[frozenset[str]] = frozenset({"blosclz", "lz4", "lz4hc", "zstd"})

#: HSDS's compression level when a filter gives none.
DEFAULT_LEVEL: Final = 5


@dataclass(frozen=True, slots=True)
class FilterOps:
    """What :func:`~hsds_backends.codecs.decode_chunk` must undo, reduced from a dataset's filter list.

    Build it with :func:`filter_ops`; docs/hsds-format.md §3.3 (``getFilterOps``).

    Attributes
    ----------
    compressor : str or None
        ``'zlib'`` (for gzip/deflate), ``'blosclz'``, ``'lz4'``, ``'lz4hc'``,
        ``'zstd'``, or ``None``.
    level : int
        Compression level of the compressor filter (HSDS default 5).
    shuffle : int
        0 none, 1 byte shuffle, 2 bitshuffle; always 0 for variable-length types.
    fletcher32 : bool
        Whether the list holds the fletcher32 filter.
    unsupported : str or None
        Name of a filter whose output cannot be decoded (szip, lzf, snappy, an
        unknown user filter, nbit/scaleoffset in a linked HDF5 file), else ``None``.
        :func:`~hsds_backends.codecs.decode_chunk` raises
        :class:`UnsupportedFilterError` when it is set.
    """

    compressor: str | None = None
    level: int = DEFAULT_LEVEL
    shuffle: int = 0
    fletcher32: bool = False
    unsupported: str | None = None


def _filter_name(item: object) -> str:
    """Return the HSDS name of one filter list item, or a description of an unknown one.

    Accepts the forms HSDS's ``getFilterItem`` normalises (docs/hsds-format.md §2.4):
    an int id, a name, an ``H5Z_FILTER_*`` class string, or a dict with
    ``class``/``id``/``name``. Unknown filters come back as a name that is not
    in :data:`KNOWN_FILTERS`, so they end up unsupported.
    """
    if isinstance(item, bool):
        return repr(item)
    if isinstance(item, int):
        return KNOWN_FILTERS.get(item, f"filter id {item}")
    if isinstance(item, str):
        if item.upper().startswith("H5Z_FILTER_"):
            return _CLASS_NAMES.get(item.upper(), item)
        name = item.lower()
        return _NAME_ALIASES.get(name, name)
    if isinstance(item, dict):
        cls = item.get("class")
        if isinstance(cls, str) and cls.upper() != "H5Z_FILTER_USER":
            return _filter_name(cls)
        # H5Z_FILTER_USER (or no class): the name identifies it, else the id.
        given = item.get("name")
        if isinstance(given, str) and _filter_name(given) in KNOWN_FILTERS.values():
            return _filter_name(given)
        fid = item.get("id")
        if isinstance(fid, int) and not isinstance(fid, bool) and fid in KNOWN_FILTERS:
            return KNOWN_FILTERS[fid]
        if isinstance(given, str):
            return given
        return f"filter id {fid}" if fid is not None else repr(item)
    return repr(item)


def _filter_level(item: object) -> int:
    """Return the ``level`` of a filter dict, or the HSDS default 5."""
    level = item.get("level") if isinstance(item, dict) else None
    try:
        return int(level) if level is not None else DEFAULT_LEVEL
    except (TypeError, ValueError):
        return DEFAULT_LEVEL


def filter_list(filters: Iterable[Any] | None) -> list[tuple[str, int]]:
    """Return ``(name, level)`` for each item of a dataset's filter list, in order.

    Names are HSDS's (``gzip`` for deflate, ``shuffle``, ``fletcher32``, ``lz4`` ...;
    docs/hsds-format.md §2.4); ``level`` is read as :func:`filter_ops` reads it (HSDS's
    default 5 when the item gives none). What ``ls`` prints and what ``Dataset.compression``
    and ``compression_opts`` report come from here.
    """
    return [(_filter_name(item), _filter_level(item)) for item in filters or ()]


def filter_ops(
    filters: Iterable[Any] | None, *, is_vlen: bool = False, linked: bool = False
) -> FilterOps:
    """Reduce an HSDS filter list to the operations a chunk read must undo.

    Follows HSDS's ``getFilterOps`` (docs/hsds-format.md §3.3): the first
    compression-class filter in list order is the compressor (deflate becomes
    ``'zlib'``; scaleoffset counts as a compressor but does nothing), the
    shuffle and bitshuffle filters set ``shuffle`` to 1 or 2, and otherwise list
    order does not matter. Nothing is raised here: filters that cannot be
    decoded are recorded in ``unsupported`` and reported by
    :func:`~hsds_backends.codecs.decode_chunk`.

    Parameters
    ----------
    filters : iterable or None
        The dataset's ``creationProperties.filters``. Items may be dicts
        ``{"class", "id", "name", "level"}``, int filter ids, names
        (``"gzip"``, ``"deflate"``, ``"lz4"`` ...) or class strings
        (``"H5Z_FILTER_SHUFFLE"`` ...), as in docs/hsds-format.md §2.4.
    is_vlen : bool, optional
        The type is variable-length: HSDS skips shuffling those (docs/hsds-format.md §3.2).
    linked : bool, optional
        The chunks come from a linked HDF5 file (reference layouts, docs/hsds-format.md §3.5).
        There nbit and scaleoffset really transformed the data, and since the
        filter list carries none of their parameters they are unsupported.

    Returns
    -------
    FilterOps
        The reduced operations.

    Examples
    --------
    >>> filter_ops([{"class": "H5Z_FILTER_DEFLATE", "id": 1, "name": "gzip", "level": 6}, 2])
    FilterOps(compressor='zlib', level=6, shuffle=1, fletcher32=False, unsupported=None)
    """
    compressor: str | None = None
    compressor_seen = False
    level = DEFAULT_LEVEL
    shuffles: set[int] = set()
    fletcher = False
    unsupported: str | None = None
    for item in filters or ():
        name = _filter_name(item)
        if name == "none":
            continue
        if name == "shuffle":
            shuffles.add(1)
        elif name == "bitshuffle":
            shuffles.add(2)
        elif name == "fletcher32":
            fletcher = True
        elif name in _UNDECODABLE or name not in KNOWN_FILTERS.values():
            unsupported = unsupported or name
        elif name in _NOOP_NATIVE and linked:
            unsupported = unsupported or f"{name} (in a linked HDF5 file)"
        if name in _COMPRESSION_NAMES and not compressor_seen:
            compressor_seen = True
            level = _filter_level(item)
            if name == "gzip":
                compressor = "zlib"
            elif name in _BLOSC_CNAMES:
                compressor = name
            # scaleoffset (and the undecodable ones) leave compressor None: HSDS
            # skips decompression for scaleoffset (docs/hsds-format.md §3.3 step 1).
    if len(shuffles) > 1:
        # Nothing says in which order the two ran; refuse rather than guess.
        unsupported = unsupported or "shuffle together with bitshuffle"
    shuffle = 0 if is_vlen or not shuffles else max(shuffles)
    if unsupported is not None:
        compressor = None
    return FilterOps(
        compressor=compressor,
        level=level,
        shuffle=shuffle,
        fletcher32=fletcher,
        unsupported=unsupported,
    )
