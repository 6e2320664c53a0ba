"""``blockfs tif`` (blockfs2tif): export a volume as one TIFF file per z-plane."""

from __future__ import annotations

import argparse
import contextlib
import functools

from ..convert.planes import check_pattern, export_planes
from ..convert.tiff import write_tiff
from ..parallel.mpi import Ranks, on_ranks
from ..volume import open_volume
from ._support import add_export_arguments, number, run_tool, volume_argument

EPILOG = """\
example:
  blockfs2tif --input /data/brain.blockfs --output-pattern /data/tiff/img_%04d.tiff --compression 3

writes /data/tiff/img_0000.tiff, img_0001.tiff, ... one plane per z, reading one slab of the
volume's block depth at a time.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="blockfs2tif", description="Export a blockfs volume as one TIFF file per z-plane.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_export_arguments(parser, "/path/img_%%04d.tiff", "TIFF")
    parser.add_argument("--compression", type=number(int, "the zlib level must be an integer from 0 (none) to 9", 0, 9),
                        default=3, metavar="0-9",
                        help="zlib level of each plane, 0 for none (default: %(default)s); planes over 4 GB are "
                             "written as BigTIFF")
    return parser


def _export(args: argparse.Namespace, ranks: Ranks, prog: str) -> int:
    check_pattern(args.output_pattern)
    with contextlib.closing(open_volume(args.input)) as volume:
        export_planes(volume, args.output_pattern, functools.partial(write_tiff, level=args.compression),
                      args.n_workers, args.silent, prog, ranks=ranks)
    return 0


def _run(args: argparse.Namespace, prog: str) -> int:
    """Under ``mpiexec -n N`` the ranks share the slabs; otherwise one process writes every plane."""
    args.input = volume_argument(args.input)
    return on_ranks(prog, lambda ranks: _export(args, ranks, prog))


def main(argv: list[str] | None = None) -> int:
    """Run blockfs2tif with ``argv`` (default: the command line); return the exit status."""
    parser = build_parser()
    return run_tool(parser, lambda args: _run(args, parser.prog), argv)

