"""Rebuild a volume's index from the block records in its shards.

For each block position the last complete, CRC-valid record in its shard wins (appends are
serialised, so the last one in a shard is the newest), except over an indexed block written later
without a record (by an earlier release) that decodes: that one is kept. Torn or damaged stretches
are reported and skipped. The new index is written beside the old one and renamed into place; the old one is kept
as a backup. A volume whose index already agrees with its records is left untouched.
"""

from __future__ import annotations

import mmap
import os
import shutil
from dataclasses import dataclass, field

import numpy as np

from .. import format as fmt
from .. import records
from ..directory import Directory
from ..errors import CorruptBlockError, FormatError
from ..progress import progress
from ..storage import atomic_write, link_exclusive
from ..store import BlockStore


@dataclass
class RepairResult:
    """What a repair found and did."""

    volume: str
    blocks_indexed: int = 0
    entries_changed: int = 0
    backup: str | None = None
    damaged: list[str] = field(default_factory=list)
    #: First voxels (x, y, z) of blocks that had an entry but no complete copy: they now read as zeros.
    lost: list[tuple[int, int, int]] = field(default_factory=list)
    #: First voxels (x, y, z) of indexed blocks without a record that decode, kept as they are.
    unrecorded: list[tuple[int, int, int]] = field(default_factory=list)


def latest_records(layout: fmt.Layout, shard_paths: list[str], silent: bool = True
                   ) -> tuple[dict[int, tuple[int, int]], list[str]]:
    """The last sound record of each entry, as {entry: (payload offset, length)}, and the damage seen."""
    entries, _ = layout.block_entries()
    valid = np.zeros(layout.n_entries, bool)
    valid[entries] = True
    found: dict[int, tuple[int, int]] = {}
    damaged: list[str] = []
    for shard, path in progress(list(enumerate(shard_paths)), silent, "scanning shards", unit="shard"):
        if not os.path.exists(path) or os.path.getsize(path) == 0:
            continue
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
            for offset, record, length in records.scan(data, path):
                if record is None:
                    damaged.append(f"{path}: {length} bytes at offset {offset} are not a complete block record "
                                   "(an interrupted write, damage, or blocks written without records)")
                elif record.entry >= valid.size or not valid[record.entry] or layout.shard_of(record.entry) != shard:
                    damaged.append(f"{path}: the record at offset {offset} names entry {record.entry}, which does "
                                   "not belong in this shard")
                else:
                    found[record.entry] = (offset + records.HEADER_SIZE, record.length)
    return found, damaged


def _decodes_unrecorded(store: BlockStore, entry: int, offset: int, size: int, origin: list[int]) -> bool:
    """Whether the block an entry points at has no record and decodes to the block's shape."""
    out = np.empty(store.layout.block_shape_at(*origin), store.layout.dtype)
    try:
        return not store.load(entry, offset, size, out, verify=True)
    except (CorruptBlockError, OSError):
        return False


def _backup_path(path: str) -> str:
    candidate, n = f"{path}.bak", 1
    while os.path.exists(candidate):
        candidate, n = f"{path}.bak{n}", n + 1
    return candidate


def repair_volume(path: str, silent: bool = True) -> RepairResult:
    """Rebuild the index of the volume at ``path`` from its shard records."""
    with Directory.open(path) as volume:
        store = BlockStore(volume.store.spec)
    layout, shard_paths, start = store.layout, list(store.spec.shard_paths), store.spec.directory_offset
    if not layout.records:
        raise FormatError(f"{path}: this volume was written without block records, so its index cannot be rebuilt "
                          "from the shards; use blockfs check to find damaged blocks.")
    result = RepairResult(path)
    found, result.damaged = latest_records(layout, shard_paths, silent)
    offsets = np.zeros(layout.n_entries, np.uint64)
    sizes = np.zeros(layout.n_entries, np.uint64)
    if found:
        keys = np.fromiter(found, np.int64, len(found))
        offsets[keys], sizes[keys] = np.array(list(found.values()), np.uint64).T
    result.blocks_indexed = len(found)

    old_offsets, old_sizes = store.entries(0, layout.n_entries)
    entries, origins = layout.block_entries()
    # An indexed block after the last record of its position (or with none) may be one written
    # without a record: kept if it decodes, as no older copy may replace it.
    later = (old_sizes[entries] > 0) & ((sizes[entries] == 0) | (old_offsets[entries] > offsets[entries]))
    for entry, origin in zip(entries[later].tolist(), origins[later].tolist()):
        if _decodes_unrecorded(store, entry, int(old_offsets[entry]), int(old_sizes[entry]), origin):
            offsets[entry], sizes[entry] = old_offsets[entry], old_sizes[entry]
            result.unrecorded.append(tuple(origin))
    store.close()
    changed = (old_sizes != sizes) | ((sizes > 0) & (old_offsets != offsets))
    result.entries_changed = int(np.count_nonzero(changed))
    dropped = (old_sizes[entries] > 0) & (sizes[entries] == 0)
    result.lost = [(int(x), int(y), int(z)) for x, y, z in origins[dropped]]
    if not result.entries_changed:
        return result

    with open(path, "rb") as f:
        header = f.read(start)
    with atomic_write(path, like=path) as temporary:
        with open(temporary, "wb") as f:
            f.write(header + fmt.pack_entries(offsets, sizes, layout))
        result.backup = _backup_path(path)
        if not link_exclusive(path, result.backup):  # no hard links on this file system: copy
            shutil.copy2(path, result.backup)
    return result
