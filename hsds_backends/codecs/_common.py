"""What every codec module shares: the buffer type and the chunk-naming error raiser."""

from __future__ import annotations

from typing import NoReturn, TypeAlias

from ..errors import ChunkDecodeError

__all__ = ["Buffer", "Fail"]

#: Anything the codecs accept as chunk bytes.
Buffer: TypeAlias = bytes | bytearray | memoryview


class Fail:
    """Raise :class:`ChunkDecodeError` messages that name the chunk and its key."""

    __slots__ = ("prefix",)

    def __init__(self, chunk_id: str, key: str) -> None:
        self.prefix = f"chunk {chunk_id} (key {key})"

    def __call__(self, what: str, exc: BaseException | None = None) -> NoReturn:
        raise ChunkDecodeError(f"{self.prefix} {what}") from exc
