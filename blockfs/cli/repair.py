"""``blockfs repair``: rebuild a volume's index from the block records in its shards."""

from __future__ import annotations

import argparse

from ..ops.repair import RepairResult, repair_volume
from ._support import add_silent, run_tool, volume_argument

#: Exit status when the volume was repaired but holds blocks that are lost (recorded in its header).
BLOCKS_LOST = 3

EPILOG = f"""\
Repair needs the volume alone: it is refused while any process has it open for writing, and no
writer can start until it ends. The old index is kept as <volume>.bak.

A shard file that is missing (an unmounted file system, say) is never taken for an empty one:
repair refuses and names it. --drop-missing-shards gives up the blocks of missing shards.

A block that has no complete copy left reads as zeros. Repair records each such block in the
volume's header, and blockfs check and blockfs info report it, until it is written again or
the loss is accepted with --accept-loss (which also removes the record of earlier losses).

exit status:
  0  the index agrees with the shards (rebuilt, or already so), and no block is lost
  1  nothing was changed: the volume is open for writing, a shard is missing, or another error
  {BLOCKS_LOST}  repaired, but blocks are lost: they read as zeros and are recorded in the header

example:
  blockfs repair /data/brain.blockfs && blockfs check /data/brain.blockfs
"""


def print_result(volume: str, result: RepairResult) -> None:
    for line in result.damaged:
        print(f"blockfs repair: {line}; skipped")
    for x, y, z in result.unrecorded:
        print(f"blockfs repair: {volume}: block (x={x}, y={y}, z={z}) was written without a record (by an "
              "earlier blockfs release) and decodes; it is kept")
    for shard, blocks in result.dropped_shards:
        print(f"blockfs repair: {volume}: shard {shard.name!r} is missing ({shard.path}); its {blocks} indexed "
              "blocks were dropped and now read as zeros")
    for x, y, z in result.lost:
        print(f"blockfs repair: {volume}: block (x={x}, y={y}, z={z}) has no complete copy in its shard; "
              "it now reads as zeros")
    if result.changed:
        accepted = "; the record of lost blocks is removed" if result.marks_changed and not result.unsaved else ""
        print(f"{volume}: rebuilt the index from {result.blocks_indexed} block records; "
              f"{result.entries_changed} entries changed{accepted}; the old index is {result.backup}")
    else:
        print(f"{volume}: the index agrees with the {result.blocks_indexed} block records; nothing changed")
    if result.unsaved:
        x, y, z = result.unsaved[0]
        print(f"{volume}: {len(result.unsaved)} lost blocks (the first at x={x}, y={y}, z={z}) are recorded in the "
              "header; blockfs check reports them until they are written again, or accept the loss with "
              f"blockfs repair --accept-loss {volume}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="blockfs repair", description=__doc__.split("\n\n")[0], epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("volume", help="the volume's directory (index) file, or a folder holding one")
    parser.add_argument("--drop-missing-shards", action="store_true",
                        help="drop the blocks of shard files that are missing instead of refusing (they are "
                             "recorded as lost)")
    parser.add_argument("--accept-loss", action="store_true",
                        help="record no block as lost, and remove the record of blocks lost before")
    add_silent(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    """blockfs repair: rebuild the index; exit status 0, 1, or BLOCKS_LOST."""
    parser = build_parser()

    def body(args: argparse.Namespace) -> int:
        args.volume = volume_argument(args.volume)
        result = repair_volume(args.volume, silent=args.silent, drop_missing_shards=args.drop_missing_shards,
                               accept_loss=args.accept_loss)
        print_result(args.volume, result)
        return BLOCKS_LOST if result.unsaved else 0

    return run_tool(parser, body, argv)
