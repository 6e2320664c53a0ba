"""blockfs pyramid: build a multi-resolution pyramid folder of a volume, in one pass."""

from __future__ import annotations

import argparse
import os
import sys

from ..parallel.mpi import Ranks, on_ranks
from ..pyramid.build import build_pyramid
from ..pyramid.reduce import METHODS
from ._support import INTERRUPTED, add_silent, positive_int, run_tool, volume_argument, voxel_size

EPILOG = """\
example:
  blockfs pyramid /data/brain.blockfs /data/brain-pyramid --voxel-size 1.8,1.8,2.0

writes /data/brain-pyramid/info and one level per folder, 1_1_1 (the source, hard-linked, or
copied from another file system), 2_2_2, 4_4_4, ... as precomputed-tif serves them to
Neuroglancer. Methods: mean (exact, rounded half to even; for images), max, mode (for labels:
info says "segmentation"), stride (fastest). An interrupted build continues with --resume.
The source is never changed; to rebuild the coarser levels of a pyramid from its level 1, keeping it:
  blockfs pyramid /data/brain-pyramid/1_1_1/precomputed.blockfs /data/brain-pyramid --overwrite
Under mpiexec -n N the N ranks share the subtrees (one process each; see docs/scaling.md):
  mpiexec -n 8 blockfs pyramid /lustre/brain.blockfs /lustre/brain-pyramid --n-workers 8
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="blockfs pyramid", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Build a multi-resolution pyramid of a blockfs volume in one pass over its blocks, in the "
                    "folder layout that precomputed-tif serves to Neuroglancer.", epilog=EPILOG)
    parser.add_argument("source",
                        help="the volume's directory (.blockfs) file, or a folder holding one; it is not changed")
    parser.add_argument("dest", help="the pyramid folder to create (its parent must exist)")
    parser.add_argument("--levels", type=positive_int, metavar="N",
                        help="levels including the source (default: until the coarsest fits in one block)")
    parser.add_argument("--method", choices=METHODS, default="mean", help="downsampling method (default: mean)")
    parser.add_argument("--voxel-size", type=voxel_size, metavar="X,Y,Z",
                        help="level 1's voxel size in micrometres (default: the source's voxel_size_um metadata, "
                             "else 1,1,1)")
    parser.add_argument("--n-workers", type=positive_int, default=os.cpu_count() or 1, metavar="N",
                        help="worker processes and shard files per level (default: the number of CPUs, %(default)s); "
                             "under mpiexec each rank works in one process and N sets the shard files only")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--overwrite", action="store_true", help="replace a pyramid (finished or not) in DEST")
    group.add_argument("--resume", action="store_true", help="continue an interrupted build in DEST")
    add_silent(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    """blockfs pyramid: build a pyramid folder; print where it is."""
    parser = build_parser()

    def build(args: argparse.Namespace, ranks: Ranks) -> int:
        # under mpiexec -n N the ranks share the subtrees
        dest = build_pyramid(args.source, args.dest, args.levels, args.method, args.voxel_size, args.n_workers,
                             args.overwrite, args.resume, args.silent, ranks=ranks)
        if ranks.rank == 0 and not args.silent:
            print(f"{parser.prog}: wrote {dest}")
        return 0

    def body(args: argparse.Namespace) -> int:
        args.source = volume_argument(args.source)
        try:
            return on_ranks(parser.prog, lambda ranks: build(args, ranks))
        except KeyboardInterrupt:
            print(f"{parser.prog}: {os.path.abspath(args.dest)}: interrupted; continue with the same command and "
                  "--resume", file=sys.stderr)
            return INTERRUPTED

    return run_tool(parser, body, argv)


if __name__ == "__main__":
    sys.exit(main())
