"""Decode (and encode) HSDS chunk bytes: Blosc containers, raw zlib, shuffle, bitshuffle.

HSDS reduces a dataset's filter list to one compressor plus one shuffle flag
(docs/hsds-format.md §3.3, ``getFilterOps``) and stores each chunk as

* a **Blosc-1 container** (numcodecs) when a compressor is set -- for gzip the
  container's internal codec is zlib;
* a **raw zlib stream** for gzip chunks written before 2020-08 (legacy HSDS) and
  for chunks of linked HDF5 files (HDF5's deflate filter);
* the **plain bytes** otherwise (docs/hsds-format.md §3.1, §3.2).

Bitshuffle chunks carry the HDF5 bitshuffle+LZ4 framing, optionally wrapped in
a Blosc container. :func:`decode_chunk` turns any of those back into the raw
chunk bytes; :func:`encode_chunk` writes them the way HSDS does and
:func:`encode_linked_chunk` the way the HDF5 filter pipeline does.

One concern per module:

=====================  ==========================================================
:mod:`.filters`        HSDS filter list -> :class:`FilterOps` (:func:`filter_ops`)
:mod:`.decode`         the read pipeline, :func:`decode_chunk` (and :func:`decode_chunk_part`: the blocks a selection needs)
:mod:`.encode`         the writer's encoders
:mod:`.blosc`          Blosc-1 header parsing and checks, block-by-block zlib decode
:mod:`.inflate`        zlib streams (libdeflate for blocks of known size; ISA-L, else zlib)
:mod:`.shuffle`        HDF5 byte shuffle
:mod:`.bitshuffle`     the bitshuffle+LZ4 framing (numpy bit transpose, lz4)
:mod:`.fletcher32`     HDF5's fletcher32 trailer
=====================  ==========================================================

Only numpy, numcodecs and lz4 are needed at run time; ``deflate`` (libdeflate)
and ``isal`` speed up inflate when installed. The ``bitshuffle`` package is
deliberately not imported (it pulls in h5py).
"""

from __future__ import annotations

from .decode import decode_chunk, decode_chunk_part
from .encode import encode_chunk, encode_linked_chunk
from .filters import KNOWN_FILTERS, SUPPORTED_FILTERS, FilterOps, filter_ops

__all__ = [
    "KNOWN_FILTERS",
    "SUPPORTED_FILTERS",
    "FilterOps",
    "decode_chunk",
    "decode_chunk_part",
    "encode_chunk",
    "encode_linked_chunk",
    "filter_ops",
]
