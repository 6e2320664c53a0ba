"""``blockfs repair``: rebuild a volume's index from the block records in its shards."""

from __future__ import annotations

import argparse

from ..ops.repair import repair_volume
from ._support import add_silent, run_tool


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="blockfs repair", description=__doc__.split("\n\n")[0],
        epilog="Stop every writer first. The old index is kept as <volume>.bak.\n\n"
               "example:\n  blockfs repair /data/brain.blockfs && blockfs check /data/brain.blockfs",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("volume", help="the volume's directory (index) file")
    add_silent(parser)

    def body(args: argparse.Namespace) -> int:
        result = repair_volume(args.volume, silent=args.silent)
        for line in result.damaged:
            print(f"blockfs repair: {line}; skipped")
        for x, y, z in result.unrecorded:
            print(f"blockfs repair: {args.volume}: block (x={x}, y={y}, z={z}) was written without a record (by an "
                  "earlier blockfs release) and decodes; it is kept")
        for x, y, z in result.lost:
            print(f"blockfs repair: {args.volume}: block (x={x}, y={y}, z={z}) has no complete copy in its shard; "
                  "it now reads as zeros")
        if result.entries_changed:
            print(f"{args.volume}: rebuilt the index from {result.blocks_indexed} block records; "
                  f"{result.entries_changed} entries changed; the old index is {result.backup}")
        else:
            print(f"{args.volume}: the index agrees with the {result.blocks_indexed} block records; nothing changed")
        return 0

    return run_tool(parser, body, argv)
