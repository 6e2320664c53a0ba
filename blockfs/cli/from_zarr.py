"""``blockfs from-zarr``: import a zarr array or OME-Zarr image as a volume or pyramid."""

from __future__ import annotations

import argparse

from ..interop.tools import load
from ._support import run_tool
from .to_zarr import add_copy_arguments

EPILOG = """\
examples:
  blockfs from-zarr /data/brain.ome.zarr /data/brain.blockfs
  blockfs from-zarr /data/brain.ome.zarr /data/brain.blockfs --level 2
  blockfs from-zarr /data/brain.ome.zarr /data/brain-pyramid --pyramid

Blosc chunks whose shape is the block shape (the default) are stored as they are; anything else
is transcoded block by block. A damaged source chunk stops the import and is named.

Until it has finished, the volume (with --pyramid each level) is marked incomplete in its header,
which blockfs info, check and Directory.open report, and a pyramid folder holds
blockfs-from-zarr.incomplete. Running the command again over such an output replaces it from the
start (with or without --overwrite); it does not resume. Nothing else is replaced without --overwrite.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="blockfs from-zarr",
                                     description="Import a zarr array or OME-Zarr image as a volume or pyramid.",
                                     epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", help="a zarr array or OME-Zarr image folder")
    parser.add_argument("dest", help="the .blockfs volume (or, with --pyramid, the folder) to write")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--level", type=int, default=None, metavar="N", help="the OME-Zarr level to import (default 0)")
    which.add_argument("--pyramid", action="store_true", help="import every level as a pyramid folder")
    add_copy_arguments(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    """blockfs from-zarr: import a zarr array or OME-Zarr image."""
    parser = build_parser()

    def body(args: argparse.Namespace) -> None:
        load("unpack").from_zarr(args.source, args.dest, level=args.level, pyramid=args.pyramid,
                                 overwrite=args.overwrite, workers=args.workers, silent=args.silent)

    return run_tool(parser, body, argv)
