"""``blockfs to-zarr``: repack a volume or pyramid as OME-Zarr; the options ``blockfs from-zarr`` shares."""

from __future__ import annotations

import argparse

from ..interop.tools import load
from ._support import add_silent, number, run_tool, volume_argument

EPILOG = """\
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


def add_copy_arguments(parser: argparse.ArgumentParser) -> None:
    """--workers, --overwrite and --silent, as to-zarr and from-zarr have them."""
    parser.add_argument("--workers", type=number(int, "must be a positive whole number", low=1), default=None,
                        metavar="N", help="threads copying blocks (default: the number of CPUs)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace DEST if it exists (this tool's own incomplete output is replaced anyway)")
    add_silent(parser)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="blockfs to-zarr", description="Repack a volume or pyramid as OME-Zarr.",
                                     epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", help="a .blockfs volume, a folder holding one, or a pyramid folder")
    parser.add_argument("dest", help="the .zarr folder to write")
    parser.add_argument("--zarr-format", type=int, choices=(2, 3), default=3, help="zarr format (default 3)")
    parser.add_argument("--shard-blocks", type=int, default=None, metavar="N",
                        help="zarr v3: blocks per shard side (default 4; 0 = one file per block)")
    add_copy_arguments(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    """blockfs to-zarr: repack a volume or pyramid as OME-Zarr."""
    parser = build_parser()

    def body(args: argparse.Namespace) -> None:
        load("repack").to_zarr(volume_argument(args.source, pyramids=True), args.dest, zarr_format=args.zarr_format,
                               shard_blocks=args.shard_blocks, overwrite=args.overwrite, workers=args.workers,
                               silent=args.silent)

    return run_tool(parser, body, argv)
