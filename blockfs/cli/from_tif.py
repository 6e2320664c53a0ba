"""``blockfs from-tif`` (tif2blockfs): import a z-stack of TIFF planes as a new volume."""

from __future__ import annotations

import argparse
import os

from ..codec import Compression
from ..convert.tiff_stack import import_stack
from ..errors import InvalidArgumentError
from ..parallel.mpi import launcher_rank, on_ranks
from ._support import add_silent, positive_int, run_tool, voxel_size

EPILOG = """\
example:
  tif2blockfs --input "/data/tiff/img_*.tiff" --output /data/brain.blockfs --block-size 64,64,64

reads /data/tiff/img_0000.tiff, img_0001.tiff, ... as z = 0, 1, ... (quote the pattern so the
shell leaves it alone) and writes /data/brain.blockfs and its shards brain.blockfs.0, .1, ...
"""


def block_size(text: str) -> tuple[int, int, int]:
    """argparse type: ``Z,Y,X`` or one ``N`` for all three."""
    parts = text.split(",")
    try:
        sizes = tuple(int(p) for p in parts)
    except ValueError:
        sizes = ()
    if len(sizes) == 1:
        sizes *= 3
    if len(sizes) != 3 or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"expected Z,Y,X (e.g. 64,64,64) or one size N; got {text!r}")
    return sizes


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tif2blockfs", description="Write a z-stack of 2-D TIFF planes, one file per z, into a new blockfs "
                                        "volume.", epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", required=True, nargs="+", metavar="GLOB",
                        help="the TIFF planes: a quoted glob (or several, or the files themselves), sorted by name "
                             "with numbers compared as numbers (img_2 before img_10); every plane must have the "
                             "same shape and dtype, which become the volume's")
    parser.add_argument("--output", required=True, metavar="BLOCKFS_FILE",
                        help="the new volume's directory file; its shards are written beside it. An existing "
                             "volume is an error unless --overwrite is given")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace a volume already at --output (its directory file and shards)")
    parser.add_argument("--block-size", type=block_size, default=(64, 64, 64), metavar="Z,Y,X",
                        help="block size in voxels (default: 64,64,64)")
    parser.add_argument("--n-workers", type=positive_int, default=os.cpu_count() or 1, metavar="N",
                        help="shard files and writer processes (default: the number of CPUs, %(default)s)")
    parser.add_argument("--voxel-size", type=voxel_size, metavar="X,Y,Z",
                        help="the voxel size in micrometres, e.g. 1.8,1.8,2, kept as the volume's voxel_size_um "
                             "metadata, which --pyramid, blockfs pyramid, to-zarr and serve use (default: none; "
                             "they take 1,1,1)")
    parser.add_argument("--compression", default=Compression.zstd.value,
                        choices=[c.value for c in Compression], help="blosc compressor (default: %(default)s)")
    parser.add_argument("--level", type=int, default=5, choices=range(10), metavar="0-9",
                        help="compression level (default: %(default)s)")
    parser.add_argument("--pyramid", type=positive_int, metavar="LEVELS",
                        help="then build a pyramid of LEVELS levels in OUTPUT's name with .pyramid for .blockfs "
                             "(level 1 hard-linked; see blockfs pyramid)")
    add_silent(parser)
    return parser


def metadata(args: argparse.Namespace) -> dict[str, list[float]]:
    """The new volume's application metadata: its voxel size, if given."""
    return {} if args.voxel_size is None else {"voxel_size_um": list(args.voxel_size)}


def _run(args: argparse.Namespace, prog: str) -> int:
    # Absolute shard names, as earlier blockfs releases wrote them, so that every reader finds them.
    output = os.path.abspath(os.path.expanduser(args.output))
    if args.pyramid and launcher_rank()[1] > 1:  # its worker processes would fork MPI ranks
        raise InvalidArgumentError(f"{args.output}: --pyramid {args.pyramid} does not run under mpiexec; import "
                                   "without it, then run blockfs pyramid on the volume.")
    status = on_ranks(prog, lambda ranks: import_stack(
        args.input, output, args.block_size, args.n_workers, compression=args.compression,
        compression_level=args.level, metadata=metadata(args), overwrite=args.overwrite, silent=args.silent,
        prog=prog, ranks=ranks))
    if args.pyramid:
        from ..pyramid.build import build_pyramid
        dest = build_pyramid(output, os.path.splitext(output)[0] + ".pyramid", args.pyramid,
                             n_workers=args.n_workers, silent=args.silent)
        print(f"{prog}: pyramid in {dest}")
    return status


def main(argv: list[str] | None = None) -> int:
    """Run tif2blockfs with ``argv`` (default: the command line); return the exit status."""
    parser = build_parser()
    return run_tool(parser, lambda args: _run(args, parser.prog), argv)
