"""The DN's decoded-chunk cache (HSDS ``chunk_mem_cache_size``, docs/hsds-format.md §4.6).

An LRU of decoded chunk arrays, bounded in bytes. Like HSDS's chunk cache it
saves both the storage read and the decode when a chunk is read again (a
second selection of the same chunk, a repeated read). Two additions:

- **Scan resistance.** Each entry remembers the *tag* (client request id) that
  last used it. A miss is not admitted when admitting it would evict an entry
  the same request already used: one read larger than the cache keeps the
  first cache-full of its chunks instead of cycling through all of them (a
  plain LRU ends up with no hits at all when the same large read repeats).
- **Validators.** An entry may carry a validator (posix: file mtime and size);
  a hit whose validator no longer matches is a miss, so a chunk rewritten
  underneath the DN is never served stale.

Used from the DN's event loop only (no locking).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["ChunkCache", "entry_nbytes"]


def entry_nbytes(arr: np.ndarray[Any, Any]) -> int:
    """Bytes an array holds, counting object elements (vlen) at a rough 64 bytes each."""
    if arr.dtype.hasobject:
        return int(arr.nbytes + 64 * arr.size)
    return int(arr.nbytes)


@dataclass
class _Entry:
    arr: np.ndarray[Any, Any]
    nbytes: int
    tag: str
    validator: Hashable = None


@dataclass
class ChunkCache:
    """An LRU of decoded chunks holding at most ``max_bytes`` (0 disables it)."""

    max_bytes: int
    hits: int = 0
    misses: int = 0
    evictions: int = 0
    rejected: int = 0
    """Misses not admitted (too big, or would evict the same request's chunks)."""
    nbytes: int = 0
    _entries: OrderedDict[Hashable, _Entry] = field(default_factory=OrderedDict, repr=False)

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: Hashable, tag: str = "", validator: Hashable = None) -> np.ndarray[Any, Any] | None:
        """Return the cached chunk for ``key`` (and mark it used by ``tag``), or ``None``."""
        e = self._entries.get(key)
        if e is None or e.validator != validator:
            if e is not None:  # stale: the object changed underneath us
                self._drop(key)
            self.misses += 1
            return None
        self._entries.move_to_end(key)
        e.tag = tag
        self.hits += 1
        return e.arr

    def put(self, key: Hashable, arr: np.ndarray[Any, Any], tag: str = "", validator: Hashable = None) -> bool:
        """Admit a decoded chunk; return whether it was cached."""
        if self.max_bytes <= 0:
            return False
        n = entry_nbytes(arr)
        if n > self.max_bytes:
            self.rejected += 1
            return False
        if key in self._entries:
            self._drop(key)
        # find what would have to go; refuse if that includes a chunk this request already used
        need = self.nbytes + n - self.max_bytes
        if need > 0:
            freed = 0
            victims = []
            for k, e in self._entries.items():
                if freed >= need:
                    break
                if tag and e.tag == tag:
                    self.rejected += 1
                    return False
                victims.append(k)
                freed += e.nbytes
            for k in victims:
                self._drop(k)
                self.evictions += 1
        arr.flags.writeable = False  # shared between requests: nothing may write into it
        self._entries[key] = _Entry(arr, n, tag, validator)
        self.nbytes += n
        return True

    def _drop(self, key: Hashable) -> None:
        e = self._entries.pop(key)
        self.nbytes -= e.nbytes

    def drop_if(self, pred: Callable[[Hashable], bool]) -> int:
        """Drop every entry whose key satisfies ``pred``; return how many went."""
        keys = [k for k in self._entries if pred(k)]
        for k in keys:
            self._drop(k)
        return len(keys)

    def clear(self) -> None:
        self._entries.clear()
        self.nbytes = 0

    def stats(self) -> dict[str, int]:
        """Return size, use and hit figures (reported by ``GET /info``)."""
        return {
            "max_bytes": self.max_bytes,
            "bytes": self.nbytes,
            "entries": len(self._entries),
            "hits": self.hits,
            "misses": self.misses,
            "evictions": self.evictions,
            "rejected": self.rejected,
        }
