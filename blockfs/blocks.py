"""Reading and writing single blocks: index entry, shard bytes, compression."""

from __future__ import annotations

import numpy as np

from . import records
from .codec import check_sizes, compress, decompress_into
from .errors import CorruptBlockError
from .format import Layout, pack_entry, unpack_entries, unpack_entry
from .storage import VolumeFiles


def encode_block(layout: Layout, entry: int, block: np.ndarray) -> tuple[bytes, int]:
    """(the bytes to append for a C-contiguous block, the payload's offset within them)."""
    payload = compress(block, layout.compression, layout.compression_level)
    if not layout.records:
        return payload, 0
    return records.encode(entry, payload) + payload, records.HEADER_SIZE


def append_block(files: VolumeFiles, layout: Layout, directory_offset: int, entry: int, data: bytes,
                 payload_at: int) -> None:
    """Append encoded block bytes to the block's shard, then point its index entry at the payload."""
    shard = entry % len(layout.block_filenames)
    where = f"{files.shard_paths[shard]} (entry {entry})"
    files.append(shard, data, directory_offset + entry * layout.entry_size,
                 lambda offset: pack_entry(layout, offset + payload_at, len(data) - payload_at, where))


def store_block(files: VolumeFiles, layout: Layout, directory_offset: int, entry: int, block: np.ndarray) -> None:
    """Compress a C-contiguous block and append it (after its record) to its shard, then index it."""
    append_block(files, layout, directory_offset, entry, *encode_block(layout, entry, block))


def read_entries(files: VolumeFiles, layout: Layout, directory_offset: int, first: int, count: int
                 ) -> tuple[np.ndarray, np.ndarray]:
    """(offsets, sizes) of ``count`` consecutive entries from entry ``first``, read in one call."""
    raw = files.read_index(directory_offset + first * layout.entry_size, count * layout.entry_size)
    return unpack_entries(raw, layout)


def read_entry(files: VolumeFiles, layout: Layout, directory_offset: int, entry: int) -> tuple[int, int]:
    """(offset, size) of one entry; (0, 0) when it lies past the end of the index file."""
    return unpack_entry(files.read_index(directory_offset + entry * layout.entry_size, layout.entry_size), layout)


def read_stored(files: VolumeFiles, layout: Layout, entry: int, offset: int, size: int, nbytes: int, verify: bool
                ) -> tuple[memoryview, bool]:
    """(the stored, compressed bytes an entry (offset, size) points at, whether a record vouched for them).

    The view lies in this thread's reusable buffer: use it before this thread's next read. With
    ``verify`` on a volume with records, a record before the payload must name this entry and
    length and its CRC32C must match, else :class:`ChecksumError`. Where no record starts there (no
    record magic: the block was written by a writer that does not write records, such as an
    earlier release), the payload's blosc header must instead say ``size`` bytes decompressing to
    ``nbytes``, the block's size, else :class:`CorruptBlockError`.
    """
    shard = entry % len(layout.block_filenames)
    where = f"{files.shard_paths[shard]}: block at offset {offset}, size {size} (entry {entry})"
    if size > layout.max_block_bytes:
        raise CorruptBlockError(f"{where}: {size} bytes is more than a block can compress to "
                                f"({layout.max_block_bytes}); the index is damaged.")
    head = records.HEADER_SIZE if layout.records and verify and offset >= records.HEADER_SIZE else 0
    data = files.read_shard(shard, offset - head, size + head)
    if len(data) < size + head:
        raise CorruptBlockError(f"{where} points past the end of the shard ({offset - head + len(data)} bytes); "
                                "the shard is truncated or the index is damaged (run blockfs check).")
    if head and records.starts_record(data):
        return records.verify(data, entry, size, where), True
    payload = data[head:]
    if layout.records and verify:
        check_sizes(payload, nbytes, f"{where}, written without a block record")
    return payload, False


def read_payload(files: VolumeFiles, layout: Layout, entry: int, offset: int, size: int, nbytes: int,
                 verify: bool) -> memoryview:
    """The stored (compressed) bytes of a block, checked as :func:`read_stored` describes."""
    return read_stored(files, layout, entry, offset, size, nbytes, verify)[0]


def load_block(files: VolumeFiles, layout: Layout, entry: int, offset: int, size: int, out: np.ndarray,
               verify: bool) -> bool:
    """Read the block that an entry (offset, size) points at and decompress it into ``out``.

    ``out`` is a C-contiguous array of the block's shape; see :func:`read_stored` for ``verify``.
    Returns whether a record vouched for the block.
    """
    payload, recorded = read_stored(files, layout, entry, offset, size, out.nbytes, verify)
    shard = entry % len(layout.block_filenames)
    decompress_into(payload, out, f"{files.shard_paths[shard]}: block at offset {offset}, size {size} (entry {entry})")
    return recorded
