"""Reading and writing single blocks: index entry, shard bytes, compression."""

from __future__ import annotations

import numpy as np

from .codec import compress, decompress_into
from .errors import CorruptBlockError
from .format import Layout, pack_entry, unpack_entries
from .storage import VolumeFiles


def store_block(files: VolumeFiles, layout: Layout, directory_offset: int, entry: int, block: np.ndarray) -> None:
    """Compress a C-contiguous block and append it to its shard, then point its entry at it."""
    data = compress(block, layout.compression, layout.compression_level)
    shard = entry % len(layout.block_filenames)
    where = f"{files.shard_paths[shard]} (entry {entry})"
    files.append(shard, data, directory_offset + entry * layout.entry_size,
                 lambda offset: pack_entry(layout, offset, len(data), where))


def read_entries(files: VolumeFiles, layout: Layout, directory_offset: int, first: int, count: int
                 ) -> tuple[np.ndarray, np.ndarray]:
    """(offsets, sizes) of ``count`` consecutive entries from entry ``first``, read in one call."""
    raw = files.read_index(directory_offset + first * layout.entry_size, count * layout.entry_size)
    return unpack_entries(raw, layout)


def load_block(files: VolumeFiles, layout: Layout, entry: int, offset: int, size: int,
               shape: tuple[int, int, int]) -> np.ndarray:
    """Read and decompress the block that an entry (offset, size) points at."""
    shard = entry % len(layout.block_filenames)
    data = files.read_shard(shard, offset, size)
    where = f"{files.shard_paths[shard]}: block at offset {offset}, size {size} (entry {entry})"
    if len(data) < size:
        raise CorruptBlockError(f"{where} points past the end of the shard ({offset + len(data)} bytes); "
                                "the shard is truncated or the index is damaged (run blockfs check).")
    out = np.empty(shape, layout.dtype)
    decompress_into(data, out, where)
    return out
