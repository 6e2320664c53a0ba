"""Verify every block of a volume and report each problem with its block (``blockfs check``)."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from .. import records
from ..errors import ChecksumError, CorruptBlockError
from ..format import Layout
from ..progress import progress
from .offline import OfflineVolume, open_offline
from .repair import ShardRecords, newest_records, scan_shards
from .usage import referenced_bytes


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a volume, and where."""

    kind: str
    detail: str
    block: tuple[int, int, int] | None = None
    entry: int | None = None
    shard: str | None = None
    offset: int | None = None

    def __str__(self) -> str:
        where = [f"block (x={self.block[0]}, y={self.block[1]}, z={self.block[2]})" if self.block else "",
                 f"entry {self.entry}" if self.entry is not None else "",
                 f"{self.shard} at offset {self.offset}" if self.shard and self.offset is not None
                 else self.shard or ""]
        return ": ".join(part for part in (self.kind, ", ".join(w for w in where if w), self.detail) if part)


@dataclass
class ShardUsage:
    """How much of one shard the index points at."""

    name: str
    path: str
    exists: bool
    size: int = 0
    referenced: int = 0

    @property
    def unreferenced(self) -> int:
        return self.size - self.referenced


@dataclass
class Report:
    """The result of checking a volume."""

    volume: str
    records: bool
    blocks_total: int
    blocks_written: int
    shards: list[ShardUsage]
    problems: list[Problem] = field(default_factory=list)
    #: Shard bytes that are neither a block nor a record (interrupted writes): harmless, reported.
    damaged: list[str] = field(default_factory=list)
    #: First voxels (x, y, z) of blocks, in a volume with records, that were written without one (by
    #: an earlier release) and decode to their shape: healthy, reported.
    unrecorded: list[tuple[int, int, int]] = field(default_factory=list)
    #: Harmless findings about the files, such as shards found beside the index under a stale name.
    notes: list[str] = field(default_factory=list)

    @property
    def healthy(self) -> bool:
        return not self.problems

    def to_json(self) -> dict[str, Any]:
        return {"volume": self.volume, "healthy": self.healthy, "records": self.records,
                "blocks_total": self.blocks_total, "blocks_written": self.blocks_written,
                "unreferenced_bytes": sum(s.unreferenced for s in self.shards),
                "shards": [dict(asdict(s), unreferenced=s.unreferenced) for s in self.shards],
                "problems": [asdict(p) for p in self.problems], "unrecognised_bytes": self.damaged,
                "unrecorded_blocks": [list(b) for b in self.unrecorded], "notes": self.notes}


def _xyz(origin: np.ndarray) -> tuple[int, int, int]:
    """A block's first voxel, as reports name it."""
    x, y, z = (int(c) for c in origin)
    return x, y, z


def check_volume(path: str, silent: bool = True, deep: bool = False) -> Report:
    """Check a volume's header, index, shards and every written block.

    A block with a record is checked by its CRC32C and its blosc header's sizes; with ``deep``, it
    is decompressed too. A block without a record (an earlier release's) is always decompressed.
    """
    with open_offline(path) as volume:
        return _check(volume, silent, deep)


def _volume_problems(volume: OfflineVolume) -> list[Problem]:
    """What the header and the shard files say is wrong, before any block is read."""
    problems = []
    incomplete = volume.incomplete()
    if incomplete is not None:
        problems.append(Problem("incomplete", incomplete))
    for shard in volume.shards:
        if not shard.exists:
            problems.append(Problem("missing-shard", f"the shard file {shard.name!r} named in the header does not "
                                    f"exist (looked at {', '.join(shard.looked_at)}); mount or restore it",
                                    shard=shard.path))
        elif shard.copy_beside is not None:
            problems.append(Problem("foreign-shard", f"the stored name {shard.name!r} leads outside this volume's "
                                    f"folder, though {shard.copy_beside} sits beside it: a copy (cp -r) that uses "
                                    f"the original's shards; run blockfs rebase {volume.path} to use its own",
                                    shard=shard.path))
    layout = volume.layout
    for origin in volume.lost_blocks():
        entry = layout.entry_index(*origin)
        problems.append(Problem("lost-block", "repair could not save this block (no complete copy was left); it "
                                "reads as zeros until it is written again, or the loss is accepted with blockfs "
                                f"repair --accept-loss {volume.path}", origin, entry,
                                volume.shards[layout.shard_of(entry)].path))
    return problems


def _check(volume: OfflineVolume, silent: bool, deep: bool) -> Report:
    store, layout, path = volume.store, volume.layout, volume.path
    shard_paths = [s.path for s in volume.shards]
    present = volume.header.entries_in_file  # the entries after are empty, however many the header claims
    offsets, sizes = store.lookup(np.arange(present))
    head = records.HEADER_SIZE if layout.records else 0
    entries, origins = layout.block_entries(present)
    report = Report(path, layout.records, layout.n_blocks, int(np.count_nonzero(sizes[entries])),
                    [ShardUsage(s.name, s.path, s.exists, s.size) for s in volume.shards], _volume_problems(volume))
    report.notes = [f"{s.path}: found by its base name beside the index; the stored name {s.name!r} is stale "
                    f"(run blockfs rebase {path})" for s in volume.shards if s.stale]
    stray = np.setdiff1d(np.flatnonzero(sizes), entries)
    report.problems += [Problem("stray-entry", "a non-empty entry that belongs to no block position", entry=int(e))
                        for e in stray]

    written = np.flatnonzero(sizes[entries])
    block_entry = entries[written]
    block_offset, block_size = offsets[block_entry].astype(np.int64), sizes[block_entry].astype(np.int64)
    block_shard = layout.shard_of(block_entry)
    shard_size = np.array([s.size for s in report.shards], np.int64)[block_shard]
    shard_exists = np.array([s.exists for s in report.shards], bool)[block_shard]
    bad = np.zeros(written.size, bool)

    def flag(mask: np.ndarray, kind: str, detail: str) -> None:
        for i in np.flatnonzero(mask & ~bad):
            report.problems.append(Problem(kind, detail, _xyz(origins[written[i]]),
                                           int(block_entry[i]), shard_paths[block_shard[i]], int(block_offset[i])))
        bad[:] |= mask

    flag(~shard_exists, "missing-shard", "the shard file holding this block does not exist")
    flag(block_offset + block_size > shard_size, "past-end", "the entry points outside its shard")

    def verify(i: int) -> tuple[Problem | None, bool]:
        """(the block's problem, whether a record vouches for it)."""
        x, y, z = _xyz(origins[written[i]])
        try:
            recorded = store.load(int(block_entry[i]), int(block_offset[i]), int(block_size[i]),
                                  np.empty(layout.block_shape_at(x, y, z), layout.dtype), True, fetched, deep)
        except CorruptBlockError as exc:
            kind = "checksum" if isinstance(exc, ChecksumError) else "undecodable"
            return Problem(kind, str(exc), (x, y, z), int(block_entry[i]),
                           shard_paths[block_shard[i]], int(block_offset[i])), True
        return None, recorded

    scanned, scan_damage = (scan_shards(layout, shard_paths, silent) if layout.records and not volume.remote
                            else (None, []))
    vouched = np.zeros(written.size, bool)
    if scanned is not None and not deep:  # a block whose sound record the walk found needs no second read
        nbytes = np.prod(np.minimum(layout.block_shape, np.array(layout.shape) - origins[written][:, ::-1]),
                         axis=1) * layout.dtype.itemsize
        vouched = vouched_by_records(scanned, block_shard, block_offset - head, block_entry, block_size, nbytes)
    todo = np.flatnonzero(~bad & ~vouched)
    fetched = store.prefetch(block_entry[todo], block_offset[todo], block_size[todo], verify=True)
    recorded = np.full(written.size, layout.records)
    with ThreadPoolExecutor(os.cpu_count() or 1) as pool:
        found = progress(pool.map(verify, todo), silent or not todo.size, "checking", total=len(todo), unit="block")
        for (problem, has_record), i in zip(found, todo):  # the bar first, so that it reaches its end
            if problem is not None:
                report.problems.append(problem)
                bad[i] = True
            recorded[i] = has_record
    if layout.records:
        report.unrecorded = [_xyz(origins[written[i]]) for i in np.flatnonzero(~recorded & ~bad)]

    starts, ends = block_offset - head * recorded, block_offset + block_size
    for shard, usage in enumerate(report.shards):
        mine = np.flatnonzero(block_shard == shard)
        order = mine[np.argsort(starts[mine], kind="stable")]
        usage.referenced = min(usage.size, referenced_bytes(starts[mine], ends[mine]))
        overlapping = np.zeros(written.size, bool)
        overlapping[order[1:]] = starts[order[1:]] < np.maximum.accumulate(ends[order])[:-1]
        flag(overlapping, "overlap", "the block's bytes overlap another block's")

    if layout.records and volume.remote:
        report.notes.append("read by URL: the shards were not scanned for records newer than the index's blocks "
                            "(that needs the whole shards; check a copy on a disk for it)")
    elif scanned is not None:
        report.damaged = scan_damage
        _compare_with_records(report, layout, shard_paths, offsets, sizes, newest_records(scanned))
    report.problems.sort(key=lambda p: (p.entry if p.entry is not None else -1, p.kind))
    return report


def vouched_by_records(scanned: list[ShardRecords], shard: np.ndarray, start: np.ndarray, entry: np.ndarray,
                       size: np.ndarray, nbytes: np.ndarray) -> np.ndarray:
    """Which blocks (their shard, record start, entry, payload size and decompressed bytes) have a sound record
    of theirs at that place, whose payload's blosc header says that size and those bytes."""
    vouched = np.zeros(shard.size, bool)
    for s, found in enumerate(scanned):
        mine = np.flatnonzero(shard == s)
        if not found.offsets.size:
            continue
        at = np.minimum(np.searchsorted(found.offsets, start[mine]), found.offsets.size - 1)
        vouched[mine] = ((found.offsets[at] == start[mine]) & (found.entries[at] == entry[mine])
                         & (found.lengths[at] == size[mine]) & (found.cbytes[at] == size[mine])
                         & (found.expands[at] == nbytes[mine]))
    return vouched


def _compare_with_records(report: Report, layout: Layout, shard_paths: list[str], offsets: np.ndarray,
                          sizes: np.ndarray, found: dict[int, tuple[int, int]]) -> None:
    """Flag blocks whose shard holds a complete record newer than the block the index points at.

    A block written later without a record (by an earlier release) lies after its older recorded
    copies: the index rightly points at it.
    """
    for entry, (offset, size) in found.items():
        if entry >= sizes.size or not sizes[entry] or offset > int(offsets[entry]):
            shard = shard_paths[layout.shard_of(entry)]
            origin = _xyz(layout.blocks_of(np.array([entry]))[1][0])
            report.problems.append(Problem(
                "unindexed-record", f"the shard's last complete copy of this block ({size} bytes) is not the one "
                "the index points at (an interrupted write, or a damaged index or block); run blockfs repair",
                origin, entry, shard, offset))
