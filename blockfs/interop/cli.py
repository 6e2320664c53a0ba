"""``blockfs to-zarr`` and ``blockfs from-zarr``: repack between blockfs and (OME-)Zarr."""

from __future__ import annotations

import argparse

from ..cli._support import add_silent, run_tool, volume_argument
from .tools import load

TO_EPILOG = """\
examples:
  blockfs to-zarr /data/brain.blockfs /data/brain.ome.zarr
  blockfs to-zarr /data/brain-pyramid /data/brain.ome.zarr --shard-blocks 8
  blockfs to-zarr /data/brain.blockfs /data/brain-v2.ome.zarr --zarr-format 2

Writes OME-Zarr 0.5 (zarr v3, shards of N x N x N blocks) or 0.4 (zarr v2, one file per block).
Full blocks are copied as stored, without recompressing; only edge blocks are re-encoded.

Until it has finished, DEST holds blockfs-to-zarr.incomplete and no root zarr.json (.zgroup): an
interrupted or failed run leaves it so, and running the command again replaces that output
(with or without --overwrite). Nothing else is replaced without --overwrite.
"""

FROM_EPILOG = """\
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


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"must be a positive whole number; got {text!r}")
    return int(text)


def _workers(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workers", type=_positive, default=None, metavar="N",
                        help="threads copying blocks (default: the number of CPUs)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace DEST if it exists (this tool's own incomplete output is replaced anyway)")
    add_silent(parser)


def to_zarr_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="blockfs to-zarr", description="Repack a volume or pyramid as OME-Zarr.",
                                     epilog=TO_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", help="a .blockfs volume, a folder holding one, or a pyramid folder")
    parser.add_argument("dest", help="the .zarr folder to write")
    parser.add_argument("--zarr-format", type=int, choices=(2, 3), default=3, help="zarr format (default 3)")
    parser.add_argument("--shard-blocks", type=int, default=None, metavar="N",
                        help="zarr v3: blocks per shard side (default 4; 0 = one file per block)")
    _workers(parser)

    def body(args: argparse.Namespace) -> None:
        load("repack").to_zarr(volume_argument(args.source, pyramids=True), args.dest, zarr_format=args.zarr_format,
                               shard_blocks=args.shard_blocks, overwrite=args.overwrite, workers=args.workers,
                               silent=args.silent)

    return run_tool(parser, body, argv)


def from_zarr_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="blockfs from-zarr",
                                     description="Import a zarr array or OME-Zarr image as a volume or pyramid.",
                                     epilog=FROM_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", help="a zarr array or OME-Zarr image folder")
    parser.add_argument("dest", help="the .blockfs volume (or, with --pyramid, the folder) to write")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--level", type=int, default=None, metavar="N", help="the OME-Zarr level to import (default 0)")
    which.add_argument("--pyramid", action="store_true", help="import every level as a pyramid folder")
    _workers(parser)

    def body(args: argparse.Namespace) -> None:
        load("unpack").from_zarr(args.source, args.dest, level=args.level, pyramid=args.pyramid,
                                 overwrite=args.overwrite, workers=args.workers, silent=args.silent)

    return run_tool(parser, body, argv)
