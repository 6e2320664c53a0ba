"""A volume as check, info and repair see it: its header, its shard files and the states its header records.

These tools read the header themselves instead of opening the volume through ``Directory``: a volume
that is incomplete, holds lost blocks or uses another volume's shards is opened without a warning,
because each of these tools reports such a state in its own output.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass

from .. import marks, remote
from ..format import DirectoryFile, Layout, read_directory_file
from ..storage import resolve_shard_path, shadowing_copy
from ..store import BlockStore, StoreSpec, url_spec


@dataclass(frozen=True)
class ShardFile:
    """Where one shard name of the header leads, by the reading rules of docs/FORMAT.md section 9.6."""

    name: str
    path: str
    looked_at: tuple[str, ...]
    #: a regular file (or a device) is there
    exists: bool
    #: found only by its base name beside the index: the stored name is stale
    stale: bool
    #: this volume's own copy of the shard beside the index, when the stored (absolute) name reaches
    #: another file: a volume copied with ``cp -r`` that still uses the original's shards
    copy_beside: str | None
    #: bytes in the file (0 when missing)
    size: int


def _is_shard_file(path: str) -> bool:
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return False
    return stat.S_ISREG(mode) or stat.S_ISCHR(mode) or stat.S_ISBLK(mode)


def locate(index: str, name: str) -> ShardFile:
    """The shard file the stored ``name`` of the volume at ``index`` leads to."""
    found = resolve_shard_path(index, name)
    exists = _is_shard_file(found.path)
    return ShardFile(name, found.path, tuple(found.looked_at), exists, exists and found.fallback,
                     shadowing_copy(index, name, found.path) if exists else None,
                     os.path.getsize(found.path) if exists else 0)


def locate_url(url: str, name: str) -> ShardFile:
    """The shard at ``url`` (the stored ``name`` beside a remote index), as its server answers for it."""
    try:
        size = remote.head(url)[0]
    except FileNotFoundError:
        return ShardFile(name, url, (url,), False, False, None, 0)
    return ShardFile(name, url, (url,), True, False, None, size)


@dataclass
class OfflineVolume:
    """A volume's header, shard files and read-only block store."""

    path: str
    header: DirectoryFile
    shards: list[ShardFile]
    store: BlockStore

    @property
    def layout(self) -> Layout:
        return self.header.layout

    @property
    def remote(self) -> bool:
        """Whether the volume is read by URL."""
        return remote.is_url(self.path)

    @property
    def missing(self) -> list[int]:
        """Which of the shard files the header names are not there."""
        return [i for i, s in enumerate(self.shards) if not s.exists]

    def incomplete(self) -> str | None:
        """Why the volume is incomplete (its header's incomplete mark), or None."""
        value = self.layout.marks.get(marks.INCOMPLETE_KEY)
        return None if value is None else marks.describe_incomplete(value)

    def lost_blocks(self) -> list[tuple[int, int, int]]:
        """First voxels (x, y, z) of the blocks repair recorded as lost that are still unwritten."""
        return self.store.unsaved_blocks()

    def close(self) -> None:
        self.store.close()

    def __enter__(self) -> OfflineVolume:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_offline(path: str) -> OfflineVolume:
    """Read the header of the volume at ``path`` (a file name or a URL) and locate its shards; blocks are read
    on demand."""
    if remote.is_url(path):
        header, version = remote.read_header(path)
        spec = url_spec(header, version)
        shards = [locate_url(url, name) for url, name in zip(spec.shard_paths, header.names)]
        return OfflineVolume(path, header, shards, BlockStore(spec))
    header = read_directory_file(path)
    lay = header.layout
    shards = [locate(path, name) for name in lay.block_filenames]
    spec = StoreSpec(path, tuple(s.path for s in shards), lay, header.directory_offset,
                     looked_at=tuple(s.looked_at for s in shards), index_identity=header.identity)
    return OfflineVolume(path, header, shards, BlockStore(spec))
