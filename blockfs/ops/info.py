"""What a volume is, how much of it is written, and what it takes on disk.

The entries in the index file are scanned with numpy a page at a time (one
:meth:`blockfs.store.BlockStore.lookup` per page), so a volume of millions of blocks is described
in a moment and in bounded memory, whatever number of blocks its header claims. Shard
files are located by the reading rules of docs/FORMAT.md section 9.6; a missing shard is
reported, not an error.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np

from .. import records, remote
from ..format import Layout, field_bit_widths
from ..store import BlockStore
from .offline import OfflineVolume, open_offline
from .usage import referenced_bytes

#: Entries read and decoded at once.
SCAN_ENTRIES = 1 << 20


@dataclass(frozen=True)
class IndexScan:
    """What the index says about the written blocks."""

    blocks_written: int
    uncompressed_bytes: int
    compressed_bytes: int
    #: Per shard: its written blocks, their compressed bytes, and the bytes entries point at
    #: (payloads and their records; overlaps count once).
    shard_blocks: np.ndarray
    shard_bytes: np.ndarray
    shard_referenced: np.ndarray


def scan_index(store: BlockStore, entries: int, page: int = SCAN_ENTRIES) -> IndexScan:
    """Count written blocks, their uncompressed and compressed bytes, in total and per shard.

    Only the first ``entries`` entries (those in the index file) are read, ``page`` at a time: the
    work and memory are bounded by what the index holds, not by the block positions its header claims.
    """
    lay: Layout = store.layout
    extents = np.array([lay.x_extent, lay.y_extent, lay.z_extent], np.int64)
    block_sizes = np.array([lay.x_block_size, lay.y_block_size, lay.z_block_size], np.int64)
    voxels = 0
    found: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []  # (shard, offset, size) of the written blocks
    for first in range(0, entries, page):
        offsets, sizes = store.lookup(np.arange(first, min(first + page, entries)))
        written = np.flatnonzero(sizes)
        is_block, origins = lay.blocks_of(first + written)  # a stray entry is no block's: not counted
        written = written[is_block]
        voxels += int(np.minimum(block_sizes, extents - origins).prod(axis=1).sum())
        found.append((lay.shard_of(first + written), offsets[written].astype(np.int64),
                      sizes[written].astype(np.int64)))
    shard, offsets, sizes = (np.concatenate(a) for a in zip(*found)) if found else (np.zeros(0, np.int64),) * 3
    n_shards = len(lay.block_filenames)
    starts = offsets - (records.HEADER_SIZE if lay.records else 0)
    return IndexScan(shard.size, voxels * lay.dtype.itemsize, int(sizes.sum()),
                     np.bincount(shard, minlength=n_shards),
                     np.bincount(shard, weights=sizes, minlength=n_shards).astype(np.int64),
                     np.array([referenced_bytes(starts[shard == i], (offsets + sizes)[shard == i])
                               for i in range(n_shards)], np.int64))


def describe_volume(path: str) -> dict[str, Any]:
    """Everything ``blockfs info`` reports, as one JSON-ready dict."""
    with open_offline(path) as volume:
        return _describe(volume)


def _describe(volume: OfflineVolume) -> dict[str, Any]:
    path, header, lay = volume.path, volume.header, volume.layout
    scan = scan_index(volume.store, header.entries_in_file)
    shards: list[dict[str, Any]] = []
    for i, shard in enumerate(volume.shards):
        size = shard.size if shard.exists else None
        shards.append({
            "index": i, "name": shard.name, "path": remote.absolute(shard.path) if shard.exists else None,
            "exists": shard.exists, "stale_name": shard.stale, "size": size,
            "blocks": int(scan.shard_blocks[i]), "block_bytes": int(scan.shard_bytes[i]),
            "referenced_bytes": int(scan.shard_referenced[i]),
            "looked_at": None if shard.exists else list(shard.looked_at),
            "copy_beside": shard.copy_beside,
        })
    present = [s for s in shards if s["exists"]]
    distinct_sizes = {s["path"]: s["size"] for s in present}
    shard_total = sum(distinct_sizes.values())
    nz, ny, nx = lay.grid
    rule = field_bit_widths((lay.x_extent, lay.y_extent, lay.z_extent),
                            (lay.x_block_size, lay.y_block_size, lay.z_block_size),
                            (lay.x_stride, lay.y_stride, lay.z_stride), lay.dtype.itemsize, len(lay.block_filenames))
    return {
        "path": remote.absolute(path),
        "shape_zyx": list(lay.shape),
        "dtype": lay.dtype.name,
        "block_size_zyx": list(lay.block_shape),
        "grid_zyx": [nz, ny, nx],
        "compression": lay.compression,
        "compression_level": lay.compression_level,
        "n_offset_bits": lay.n_offset_bits,
        "n_size_bits": lay.n_size_bits,
        "entry_size": lay.entry_size,
        "earlier_rule_bits": list(rule),
        "bits_differ_from_earlier_rule": rule != (lay.n_offset_bits, lay.n_size_bits),
        "strides_xyz": [lay.x_stride, lay.y_stride, lay.z_stride],
        "directory_offset": header.directory_offset,
        "entries_in_file": header.entries_in_file,
        "entry_positions": lay.n_entries,
        "blocks_total": nx * ny * nz,
        "blocks_written": scan.blocks_written,
        "blocks_in_missing_shards": sum(s["blocks"] for s in shards if not s["exists"]),
        "uncompressed_bytes": scan.uncompressed_bytes,
        "compressed_bytes": scan.compressed_bytes,
        "compression_ratio": (scan.uncompressed_bytes / scan.compressed_bytes) if scan.compressed_bytes else None,
        "index_bytes": header.file_size,
        "shard_bytes": shard_total,
        "bytes_on_disk": header.file_size + shard_total,
        "unreferenced_bytes": sum(max(0, s["size"] - s["referenced_bytes"]) for s in present),
        "block_records": lay.records,
        "shards": shards,
        "missing_shards": [s["name"] for s in shards if not s["exists"]],
        "foreign_shards": [s["name"] for s in shards if s["copy_beside"] is not None],
        "incomplete": volume.incomplete(),
        "lost_blocks": [list(b) for b in volume.lost_blocks()],
        "metadata": dict(lay.metadata),
    }


def human(n: int | float) -> str:
    """A byte count for people: ``1.5 GiB (1610612736 bytes)``; small counts as they are."""
    if n < 1024:
        return f"{n} B"
    value = float(n)
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        value /= 1024
        if value < 1024:
            return f"{value:.1f} {unit} ({n} bytes)"
    return f"{value / 1024:.1f} PiB ({n} bytes)"


def format_text(info: dict[str, Any]) -> str:
    """The report ``blockfs info`` prints without ``--json``."""
    z, y, x = info["shape_zyx"]
    bz, by, bx = info["block_size_zyx"]
    gz, gy, gx = info["grid_zyx"]
    sx, sy, sz = info["strides_xyz"]
    written, total = info["blocks_written"], info["blocks_total"]
    ratio = info["compression_ratio"]
    lines = [
        f"volume        {info['path']}",
        f"shape         {z} x {y} x {x} (z, y, x) voxels, {info['dtype']}",
        f"blocks        {bz} x {by} x {bx} (z, y, x) voxels; grid {gz} x {gy} x {gx} = {total}",
        f"compression   {info['compression']}, level {info['compression_level']}; "
        f"block records {'yes (checksummed)' if info['block_records'] else 'no'}",
        f"entries       NOffsetBits {info['n_offset_bits']}, NSizeBits {info['n_size_bits']} "
        f"({info['entry_size']} bytes each); strides x {sx}, y {sy}, z {sz}; first at byte {info['directory_offset']}",
    ]
    if info["bits_differ_from_earlier_rule"]:
        offset_bits, size_bits = info["earlier_rule_bits"]
        lines.append(f"              NOTE: the earlier blockfs rule gives NOffsetBits {offset_bits}, NSizeBits "
                     f"{size_bits}; the earlier release's blockfs-mv and blockfs-cp would damage this volume "
                     "(move or copy it with this release's blockfs mv / blockfs cp)")
    lines += [
        f"written       {written} of {total} blocks ({100 * written / total:.1f}%)",
        f"data          {human(info['uncompressed_bytes'])} in {human(info['compressed_bytes'])}"
        + (f", compression ratio {ratio:.2f}" if ratio is not None else ""),
        f"on disk       {human(info['bytes_on_disk'])}: index {human(info['index_bytes'])}, "
        f"shards {human(info['shard_bytes'])}, of which unreferenced {human(info['unreferenced_bytes'])}",
        f"shards        {len(info['shards'])}" + (f", {len(info['missing_shards'])} MISSING "
                                                   f"(holding {info['blocks_in_missing_shards']} written blocks)"
                                                   if info["missing_shards"] else ""),
    ]
    lines += [f"  [{s['index']}] {s['name']}: {_shard_text(s)}; {s['blocks']} blocks" for s in info["shards"]]
    lines += _state_lines(info)
    metadata = info["metadata"]
    lines.append("metadata      " + (json.dumps(metadata, sort_keys=True) if metadata else "(none)"))
    return "\n".join(lines)


def _shard_text(shard: dict[str, Any]) -> str:
    """Where one shard is, for the text report."""
    if not shard["exists"]:
        return f"MISSING (looked at {', '.join(shard['looked_at'])})"
    where = f"{shard['path']}, {shard['size']} bytes"
    if shard["stale_name"]:
        where += " (found by base name: stale, run blockfs-rebase)"
    if shard["copy_beside"] is not None:
        where += (f" (ANOTHER VOLUME'S SHARD: this volume's own copy {shard['copy_beside']} sits beside the index, "
                  "unused; a cp -r copy? run blockfs rebase)")
    return where


#: Lost blocks the text report names; the JSON lists them all.
LOST_SHOWN = 10


def _state_lines(info: dict[str, Any]) -> list[str]:
    """The text report's lines on an incomplete volume and on blocks repair could not save."""
    lines = [f"state         INCOMPLETE: {info['incomplete']}"] if info["incomplete"] else []
    lost = info["lost_blocks"]
    if lost:
        named = ", ".join(f"(x={x}, y={y}, z={z})" for x, y, z in lost[:LOST_SHOWN])
        more = f" and {len(lost) - LOST_SHOWN} more" if len(lost) > LOST_SHOWN else ""
        lines.append(f"lost          {len(lost)} blocks repair could not save read as zeros: {named}{more}; write "
                     f"them again, or accept the loss with blockfs repair --accept-loss {info['path']}")
    return lines
