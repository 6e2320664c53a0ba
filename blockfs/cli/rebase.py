"""``blockfs rebase`` (blockfs-rebase): point a hand-moved volume at the shard files beside it."""

from __future__ import annotations

import argparse

from ..ops.rebase import rebase
from ..ops.relocate import DEFAULT_BUFFER_SIZE
from ._support import add_silent, number, run_tool, volume_argument

EPILOG = """\
example:
  mv /data/brain /archive/brain                      # moved by hand: the shard names are stale
  blockfs-rebase /archive/brain/brain.blockfs        # now they name /archive/brain/brain.blockfs.<i>

Every shard must be beside the directory file, under the base name it was stored with. Names
that are relative are rewritten too (as absolute paths), since the earlier blockfs opened them
against the working directory. A volume that already names the files beside it is left as it is.
--block-size only sets the buffer used to copy the index (the earlier tool's option); it does not
change the volume. It needs the volume alone: while any process has it open for writing it
refuses, and no writer can open it until it ends.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="blockfs-rebase", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Rewrite a blockfs directory file after its volume was moved by hand, so that its shard "
                    "names are the absolute paths of the shard files beside it.",
        epilog=EPILOG)
    parser.add_argument("index_file", help="the volume's directory (.blockfs) file, or a folder holding one")
    parser.add_argument("--block-size", type=number(int, "must be a positive number of bytes", low=1),
                        default=DEFAULT_BUFFER_SIZE, metavar="N",
                        help="bytes per read when copying the index into the new file "
                             f"(default {DEFAULT_BUFFER_SIZE}); affects only speed")
    add_silent(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    """blockfs-rebase: point the shard names at the files beside the directory file."""
    parser = build_parser()

    def body(args: argparse.Namespace) -> int:
        args.index_file = volume_argument(args.index_file)
        changed = rebase(args.index_file, args.block_size, args.silent, parser.prog)
        if not args.silent:
            state = "shard names now point beside it" if changed else "already names the shards beside it; unchanged"
            print(f"{args.index_file}: {state}")
        return 0

    return run_tool(parser, body, argv)
