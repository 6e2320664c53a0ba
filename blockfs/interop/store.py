"""A read-only zarr-python 3 ``Store`` over a blockfs volume or pyramid (see :mod:`.zarr_format`)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Iterable
from typing import Any, Literal, cast

import zarr
from zarr.abc.store import ByteRequest, OffsetByteRequest, RangeByteRequest, Store, SuffixByteRequest
from zarr.core.buffer import Buffer, BufferPrototype, default_buffer_prototype

from ..errors import ReadOnlyError
from .zarr_format import Source, SourceLike, ZarrView


def _slice(data: bytes, byte_range: ByteRequest | None) -> bytes:
    if byte_range is None:
        return data
    if isinstance(byte_range, RangeByteRequest):
        return data[byte_range.start:byte_range.end]
    if isinstance(byte_range, OffsetByteRequest):
        return data[byte_range.offset:]
    if isinstance(byte_range, SuffixByteRequest):
        return data[max(0, len(data) - byte_range.suffix):]
    raise TypeError(f"unexpected byte range {byte_range!r}")


class BlockfsStore(Store):
    """Read-only zarr keys over blockfs: metadata documents, and chunks read on demand in a thread.

    Full blocks come as stored, edge blocks padded and re-encoded, never-written blocks are
    missing keys. Listing yields the metadata documents and each array's written chunks.
    """

    supports_writes = False
    supports_deletes = False
    supports_listing = True

    def __init__(self, source: SourceLike | Source | ZarrView, zarr_format: int = 3, group: bool | None = None):
        super().__init__(read_only=True)
        self.view = source if isinstance(source, ZarrView) else ZarrView(source, zarr_format, group)

    def with_read_only(self, read_only: bool = False) -> BlockfsStore:
        if not read_only:
            raise ReadOnlyError(f"{self}: a blockfs zarr view is read-only.")
        return BlockfsStore(self.view)

    def __reduce__(self) -> tuple:
        return BlockfsStore, (self.view,)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, BlockfsStore) and other.view.metadata == self.view.metadata and [
            v.path for v in other.view.source.levels] == [v.path for v in self.view.source.levels]

    def __str__(self) -> str:
        return f"blockfs://{self.view.source.levels[0].path}"

    def __repr__(self) -> str:
        return f"BlockfsStore({str(self)!r}, zarr_format={self.view.zarr_format})"

    async def get(self, key: str, prototype: BufferPrototype | None = None,
                  byte_range: ByteRequest | None = None) -> Buffer | None:
        data = self.view.metadata.get(key)
        if data is None:
            data = await asyncio.to_thread(self.view.get, key)
        if data is None:
            return None
        return (prototype or default_buffer_prototype()).buffer.from_bytes(_slice(data, byte_range))

    async def get_partial_values(self, prototype: BufferPrototype,
                                 key_ranges: Iterable[tuple[str, ByteRequest | None]]) -> list[Buffer | None]:
        return list(await asyncio.gather(*(self.get(key, prototype, byte_range) for key, byte_range in key_ranges)))

    async def exists(self, key: str) -> bool:
        return key in self.view.metadata or await asyncio.to_thread(self.view.get, key) is not None

    async def set(self, key: str, value: Buffer) -> None:
        self._check_writable()

    async def delete(self, key: str) -> None:
        self._check_writable()

    async def list(self) -> AsyncIterator[str]:
        for key in self.view.metadata:
            yield key
        for key in await asyncio.to_thread(lambda: list(self.view.chunk_keys())):
            yield key

    async def list_prefix(self, prefix: str) -> AsyncIterator[str]:
        async for key in self.list():
            if key.startswith(prefix):
                yield key

    async def list_dir(self, prefix: str) -> AsyncIterator[str]:
        prefix = prefix.rstrip("/") + "/" if prefix else ""
        seen = set()
        async for key in self.list_prefix(prefix):
            head = key[len(prefix):].split("/", 1)[0]
            if head not in seen:
                seen.add(head)
                yield head


def open_zarr(path: str | os.PathLike | Any, zarr_format: int = 3) -> zarr.Array | zarr.Group:
    """A read-only zarr array over a blockfs volume, or a group (OME-Zarr multiscales) over a pyramid folder."""
    store = BlockfsStore(path, zarr_format)
    # passed on as given: the view has checked it is 2 or 3 (zarr checks it again against a view passed in)
    version = cast(Literal[2, 3], zarr_format)
    if store.view.group:
        return zarr.open_group(store, mode="r", zarr_format=version)
    return zarr.open_array(store, mode="r", zarr_format=version)
