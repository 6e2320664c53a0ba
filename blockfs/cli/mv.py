"""``blockfs mv`` / ``blockfs cp`` (blockfs-mv, blockfs-cp): move or copy a volume into a folder."""

from __future__ import annotations

import argparse

from ..ops.transfer import transfer
from ._support import add_silent, run_tool, volume_argument

EPILOG = """\
example:
  {prog} /data/brain.blockfs /archive/brain
      {verb} brain.blockfs and its shard files into /archive/brain (created if missing;
      /archive must exist), and records the shards' new absolute paths in the directory file.

The index, bit widths and application metadata are kept exactly. An existing volume (the
directory file or any shard file) at the destination is never overwritten. Each file is
written under a hidden name (.NAME.partial) and given its name once complete, the directory
file last: an interrupted run leaves no volume at the destination, and running it again
replaces what it left, or finishes it. A full disk is reported naming the file, and what was
written is removed.

{detail}

It needs the volume alone: while any process has it open for writing it refuses, and no
writer can open it until it ends.
"""

DETAILS = {
    True: ("moves", "It moves only the volume's own files: the directory file and the shards must be regular\n"
                    "files (not symbolic links) directly in the directory file's folder, and no other\n"
                    "directory file there may name one of the shards (repair's backups, NAME.bak*, stay\n"
                    "behind). Otherwise it refuses and changes nothing: a copy made with cp -r still names\n"
                    "the original's shards, so run blockfs-rebase on it first, or copy it with blockfs-cp.\n"
                    "Within one file system the shards are hard-linked, else copied and fsynced; the source\n"
                    "is removed only once the new volume is complete and durable, so a kill at any point\n"
                    "leaves a whole volume at the source or the destination. Nothing of the source remains\n"
                    "afterwards."),
    False: ("copies", "The source is left untouched, whatever its shard names: it writes only inside the\n"
                      "destination folder. While it copies, a second copy of the same volume is refused."),
}


def build_parser(move: bool = True) -> argparse.ArgumentParser:
    """blockfs-mv's arguments (with ``move`` false, blockfs-cp's)."""
    prog = "blockfs-mv" if move else "blockfs-cp"
    verb, detail = DETAILS[move]
    parser = argparse.ArgumentParser(
        prog=prog, formatter_class=argparse.RawDescriptionHelpFormatter,
        description=f"{'Move' if move else 'Copy'} a blockfs volume (its directory file and shard files) into "
                    "a folder, rewriting the shard names in the new directory file.",
        epilog=EPILOG.format(prog=prog, verb=verb.capitalize(), detail=detail))
    parser.add_argument("source", help="the volume's directory (.blockfs) file, or a folder holding one")
    parser.add_argument("dest", help="the folder to put the volume in (created if missing; its parent must exist)")
    add_silent(parser)
    return parser


def _main(argv: list[str] | None, move: bool) -> int:
    parser = build_parser(move)

    def body(args: argparse.Namespace) -> int:
        transfer(volume_argument(args.source), args.dest, move, args.silent, parser.prog)
        return 0

    return run_tool(parser, body, argv)


def main(argv: list[str] | None = None) -> int:
    """blockfs-mv: move a volume into a folder."""
    return _main(argv, move=True)


def copy_main(argv: list[str] | None = None) -> int:
    """blockfs-cp: copy a volume into a folder."""
    return _main(argv, move=False)
