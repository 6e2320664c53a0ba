"""``blockfs mv`` / ``blockfs cp`` (blockfs-mv, blockfs-cp): move or copy a volume into a folder."""

from __future__ import annotations

import argparse

from ..ops.transfer import transfer
from ._support import add_silent, run_tool

EPILOG = """\
example:
  {prog} /data/brain.blockfs /archive/brain
      {verb} brain.blockfs and its shard files into /archive/brain (created if missing;
      /archive must exist), and records the shards' new absolute paths in the directory file.

The index, bit widths and application metadata are kept exactly. An existing volume (the
directory file or any shard file) at the destination is never overwritten.
{detail}
"""

DETAILS = {
    True: ("moves", "Nothing of the source remains afterwards. Within one file system the shards are\n"
                    "hard-linked, else copied; the source is removed only once the new volume is\n"
                    "complete, so a move that fails part way leaves the source whole and readable."),
    False: ("copies", "The source is left untouched."),
}


def build_parser(move: bool) -> argparse.ArgumentParser:
    prog = "blockfs-mv" if move else "blockfs-cp"
    verb, detail = DETAILS[move]
    parser = argparse.ArgumentParser(
        prog=prog, formatter_class=argparse.RawDescriptionHelpFormatter,
        description=f"{'Move' if move else 'Copy'} a blockfs volume (its directory file and shard files) into "
                    "a folder, rewriting the shard names in the new directory file.",
        epilog=EPILOG.format(prog=prog, verb=verb.capitalize(), detail=detail))
    parser.add_argument("source", help="the volume's directory (.blockfs) file")
    parser.add_argument("dest", help="the folder to put the volume in (created if missing; its parent must exist)")
    add_silent(parser)
    return parser


def _main(argv: list[str] | None, move: bool) -> int:
    parser = build_parser(move)

    def body(args: argparse.Namespace) -> int:
        transfer(args.source, args.dest, move, args.silent, parser.prog)
        return 0

    return run_tool(parser, body, argv)


def main(argv: list[str] | None = None) -> int:
    """blockfs-mv: move a volume into a folder."""
    return _main(argv, move=True)


def copy_main(argv: list[str] | None = None) -> int:
    """blockfs-cp: copy a volume into a folder."""
    return _main(argv, move=False)
