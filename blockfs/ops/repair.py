"""Rebuild a volume's index from the block records in its shards.

For each block position the last complete, CRC-valid record in its shard wins (appends are
serialised, so the last one in a shard is the newest), except over an indexed block written later
without a record (by an earlier release) that decodes: that one is kept. Torn or damaged stretches
are reported and skipped. A volume whose index already agrees with its records is left untouched.

Repair is an offline operation: it holds the index exclusively (:mod:`blockfs.locking`) from start
to end, so it is refused while any process has the volume open for writing, and no writer can
start while it runs. The new index is written and locked beside the old one, then renamed into
place; the old one is kept as a backup. A shard file that is missing is never taken for an empty
one: repair refuses, unless asked to drop the missing shards' blocks.

Blocks that had an entry and have no complete copy left (and dropped blocks) read as zeros; they
are recorded in the new header's ``BlockfsLost`` mark, merged with those recorded before, so that
``check`` and ``info`` report them until they are written again or the loss is accepted.
"""

from __future__ import annotations

import dataclasses
import fcntl
import mmap
import os
import shutil
import stat
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .. import format as fmt
from .. import locking, marks, records
from ..codec import BLOSC_HEADER_BYTES, blosc_sizes
from ..errors import CorruptBlockError, FormatError, MissingShardError, StaleVolumeError
from ..progress import progress
from ..storage import file_identity, fsync_folder, link_exclusive, naming, pwrite_all
from ..store import BlockStore
from .offline import OfflineVolume, ShardFile, open_offline

#: Who the lost mark names as having recorded the loss.
LOST_BY = "blockfs repair"


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
    #: The missing shard files whose blocks were dropped (``drop_missing_shards``), with how many blocks each held.
    dropped_shards: list[tuple[ShardFile, int]] = field(default_factory=list)
    #: First voxels (x, y, z) of the blocks dropped with them: they now read as zeros.
    dropped: list[tuple[int, int, int]] = field(default_factory=list)
    #: First voxels (x, y, z) of every block the new header records as lost (this repair's and earlier ones).
    unsaved: list[tuple[int, int, int]] = field(default_factory=list)
    #: Whether the header's record of lost blocks changed (recorded, merged, or removed by ``accept_loss``).
    marks_changed: bool = False

    @property
    def changed(self) -> bool:
        """Whether a new index was written."""
        return bool(self.entries_changed or self.marks_changed)


@dataclass
class ShardRecords:
    """The sound records of one shard that name a block of it, in shard order (numpy arrays)."""

    #: Where each record starts (its header).
    offsets: np.ndarray
    entries: np.ndarray
    #: Each record's payload length.
    lengths: np.ndarray
    #: What each payload's blosc header says: the bytes it decompresses to, and its compressed bytes.
    expands: np.ndarray
    cbytes: np.ndarray


def scan_shards(layout: fmt.Layout, shard_paths: list[str], silent: bool = True
                ) -> tuple[list[ShardRecords], list[str]]:
    """Every shard's sound records (walked in parallel, one thread per shard), and the damage seen."""
    def scan_one(shard: int) -> tuple[ShardRecords, list[str]]:
        path = shard_paths[shard]
        if not os.path.exists(path) or os.path.getsize(path) == 0:
            return ShardRecords(*(np.zeros(0, np.int64) for _ in range(5))), []
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
            scanned = [(offset, record, length, _payload_sizes(data, offset, length) if record else (-1, -1))
                       for offset, record, length in records.scan(data, path)]
        named = np.array([r.entry if r is not None and r.entry < layout.n_entries else -1 for _, r, _, _ in scanned],
                         np.int64)
        belongs = layout.blocks_of(named)[0] & (layout.shard_of(named) == shard)
        damaged, sound = [], []
        for (offset, record, length, header), ok in zip(scanned, belongs.tolist()):
            if record is None:
                damaged.append(f"{path}: {length} bytes at offset {offset} are not a complete block record "
                               "(an interrupted write, damage, or blocks written without records)")
            elif not ok:
                damaged.append(f"{path}: the record at offset {offset} names entry {record.entry}, which does "
                               "not belong in this shard")
            else:
                sound.append((offset, record.entry, record.length, *header))
        found = np.array(sound, np.int64).reshape(-1, 5)
        return ShardRecords(*found.T), damaged

    with ThreadPoolExecutor(max(1, min(len(shard_paths), os.cpu_count() or 1))) as pool:
        scanned = list(progress(pool.map(scan_one, range(len(shard_paths))), silent, "scanning shards",
                                total=len(shard_paths), unit="shard"))
    return [found for found, _ in scanned], [line for _, damaged in scanned for line in damaged]


def _payload_sizes(data: mmap.mmap, offset: int, length: int) -> tuple[int, int]:
    """:func:`blosc_sizes` of the payload of the record at ``offset`` (``length`` bytes with its header)."""
    start = offset + records.HEADER_SIZE
    return blosc_sizes(data[start:min(start + BLOSC_HEADER_BYTES, offset + length)])


def latest_records(layout: fmt.Layout, shard_paths: list[str], silent: bool = True
                   ) -> tuple[dict[int, tuple[int, int]], list[str]]:
    """The last sound record of each entry, as {entry: (payload offset, length)}, and the damage seen."""
    scanned, damaged = scan_shards(layout, shard_paths, silent)
    return newest_records(scanned), damaged


def newest_records(scanned: list[ShardRecords]) -> dict[int, tuple[int, int]]:
    """{entry: (payload offset, length)} of each entry's last record in :func:`scan_shards`' result."""
    found: dict[int, tuple[int, int]] = {}
    for shard in scanned:
        for entry, offset, length in zip(shard.entries.tolist(), (shard.offsets + records.HEADER_SIZE).tolist(),
                                         shard.lengths.tolist()):
            found[entry] = (offset, length)
    return found


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


def repair_volume(path: str, silent: bool = True, drop_missing_shards: bool = False,
                  accept_loss: bool = False) -> RepairResult:
    """Rebuild the index of the volume at ``path`` from its shard records, holding the volume alone.

    Raises :class:`VolumeBusyError` while any process has the volume open for writing, and
    :class:`MissingShardError` when a shard file is missing, unless ``drop_missing_shards`` (its
    blocks are then dropped). Blocks lost are recorded in the header unless ``accept_loss``, which
    also removes the record of earlier losses.
    """
    with locking.exclusively(path, "blockfs repair") as held, open_offline(path) as volume:
        if volume.header.identity != file_identity(os.fstat(held)):
            raise StaleVolumeError(f"{path}: the index file was replaced while blockfs repair opened it; "
                                   "run blockfs repair again.")
        if not volume.layout.records:
            raise FormatError(f"{path}: this volume was written without block records, so its index cannot be "
                              "rebuilt from the shards; use blockfs check to find damaged blocks.")
        # Entries past the end of the index file are empty: the work is that of the entries present
        # (and of the records found), not of what the header's extents claim.
        old_offsets, old_sizes = volume.store.lookup(np.arange(volume.header.entries_in_file))
        result = RepairResult(path, dropped_shards=_refuse_missing_shards(volume, old_sizes, drop_missing_shards))
        old_offsets, old_sizes, offsets, sizes = _rebuild(volume, old_offsets, old_sizes, result, silent)
        changed = (old_sizes != sizes) | ((sizes > 0) & (old_offsets != offsets))
        result.entries_changed = int(np.count_nonzero(changed))
        lost_mark = _lost_mark(volume, sizes, result, accept_loss)
        if not result.changed:
            return result
        header = os.pread(held, volume.header.directory_offset, 0)
        if result.marks_changed:
            header = _header_with(volume.header, lost_mark)
        result.backup = _backup_path(path)
        _install_index(path, header + fmt.pack_entries(offsets, sizes, volume.layout), result.backup)
    return result


def _refuse_missing_shards(volume: OfflineVolume, sizes: np.ndarray, drop: bool) -> list[tuple[ShardFile, int]]:
    """The missing shard files with their indexed blocks; without ``drop``, a :class:`MissingShardError` naming them."""
    if not volume.missing:
        return []
    entries, _ = volume.layout.block_entries(len(sizes))
    held = np.bincount(volume.layout.shard_of(entries[sizes[entries] > 0]), minlength=len(volume.shards))
    missing = [(volume.shards[i], int(held[i])) for i in volume.missing]
    if drop:
        return missing
    named = "; ".join(f"shard {s.name!r} (looked at {', '.join(s.looked_at)}), holding {n} indexed blocks"
                      for s, n in missing)
    raise MissingShardError(
        f"{volume.path}: {len(missing)} of {len(volume.shards)} shard files are missing: {named}. Nothing was "
        "changed. Mount or restore them (or run blockfs rebase if the volume was moved) and run blockfs repair "
        "again; or, to give up their blocks, run blockfs repair --drop-missing-shards (the dropped blocks are "
        "recorded as lost).")


def _rebuild(volume: OfflineVolume, old_offsets: np.ndarray, old_sizes: np.ndarray, result: RepairResult,
             silent: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(old offsets, old sizes, new offsets, new sizes), each as long as the old entries present or the
    last entry a record names; fills ``result`` with what was indexed, kept and lost."""
    layout, store = volume.layout, volume.store
    found, result.damaged = latest_records(layout, list(store.spec.shard_paths), silent)
    count = max(len(old_sizes), max(found, default=-1) + 1)
    old_offsets = np.concatenate([old_offsets, np.zeros(count - len(old_offsets), np.uint64)])
    old_sizes = np.concatenate([old_sizes, np.zeros(count - len(old_sizes), np.uint64)])
    offsets = np.zeros(count, np.uint64)
    sizes = np.zeros(count, np.uint64)
    if found:
        keys = np.fromiter(found, np.int64, len(found))
        offsets[keys], sizes[keys] = np.array(list(found.values()), np.uint64).T
    result.blocks_indexed = len(found)
    entries, origins = layout.block_entries(count)
    in_missing = np.isin(layout.shard_of(entries), volume.missing)
    # An indexed block after the last record of its position (or with none) may be one written
    # without a record: kept if it decodes, as no older copy may replace it.
    later = (old_sizes[entries] > 0) & ((sizes[entries] == 0) | (old_offsets[entries] > offsets[entries]))
    for entry, origin in zip(entries[later & ~in_missing].tolist(), origins[later & ~in_missing].tolist()):
        if _decodes_unrecorded(store, entry, int(old_offsets[entry]), int(old_sizes[entry]), origin):
            offsets[entry], sizes[entry] = old_offsets[entry], old_sizes[entry]
            result.unrecorded.append(tuple(origin))
    gone = (old_sizes[entries] > 0) & (sizes[entries] == 0)
    result.lost = [(int(x), int(y), int(z)) for x, y, z in origins[gone & ~in_missing]]
    result.dropped = [(int(x), int(y), int(z)) for x, y, z in origins[gone & in_missing]]
    return old_offsets, old_sizes, offsets, sizes


def _lost_mark(volume: OfflineVolume, sizes: np.ndarray, result: RepairResult, accept_loss: bool) -> Any:
    """The new header's ``BlockfsLost`` value (None for none): blocks lost now or before and still unwritten."""
    layout = volume.layout
    old = layout.marks.get(marks.LOST_KEY)
    if accept_loss:
        result.marks_changed = old is not None
        return None
    candidates = set(volume.lost_blocks()) | set(result.lost) | set(result.dropped)
    result.unsaved = sorted(b for b in candidates
                            if layout.entry_index(*b) >= len(sizes) or not sizes[layout.entry_index(*b)])
    result.marks_changed = set(marks.lost_blocks(old)) != set(result.unsaved) or (old is None) != (not result.unsaved)
    return marks.lost(result.unsaved, LOST_BY) if result.unsaved else None


def _header_with(header: fmt.DirectoryFile, lost: Any) -> bytes:
    """The header bytes with the lost mark set to ``lost`` (removed for None); every other key keeps its value.

    A header that carried padding before its entries keeps its D when the new text fits in it;
    otherwise D becomes 16 + M, and the entries follow the new text.
    """
    state = {k: v for k, v in header.layout.marks.items() if k != marks.LOST_KEY}
    if lost is not None:
        state[marks.LOST_KEY] = lost
    layout = dataclasses.replace(header.layout, marks=state)
    tight = fmt.encode_header(layout)
    padded = header.directory_offset > fmt.PREAMBLE.size + len(header.json_text.encode("utf-8"))
    if padded and len(tight) <= header.directory_offset:
        return fmt.encode_header(layout, header.directory_offset)
    return tight


def _install_index(path: str, data: bytes, backup: str) -> None:
    """Make ``data`` the index at ``path``, keeping the old index as ``backup``.

    The new file is written beside ``path``, fsynced and locked exclusively before it is renamed into
    place, and stays locked until this returns: a writer finds either the old index or the new one,
    and both are held by this process (the caller holds the old one).
    """
    folder, name = os.path.split(os.path.abspath(path))
    temporary = os.path.join(folder, f".{name}.{uuid.uuid4().hex[:12]}.repair")
    fd = os.open(temporary, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.fchmod(fd, stat.S_IMODE(os.stat(path).st_mode))
        with naming(path):  # the new index, before it takes the name
            pwrite_all(fd, data, 0)
            os.fsync(fd)
        if not link_exclusive(path, backup):  # no hard links on this file system: copy
            with naming(backup):
                shutil.copy2(path, backup)
        os.replace(temporary, path)
        fsync_folder(folder)
    finally:
        os.close(fd)
        if os.path.lexists(temporary):
            os.unlink(temporary)
