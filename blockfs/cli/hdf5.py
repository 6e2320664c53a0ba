"""``blockfs hdf5`` (blockfs2hdf5, blockfs2hdf): export a volume to one HDF5 dataset, in parallel under mpiexec."""

from __future__ import annotations

import argparse

from ..convert.hdf5 import BLOCK_SIZE_ATTR, PROG, export, parallel_hdf5_missing, parse_filter, parse_filter_options
from ..parallel.mpi import find_ranks, run_ranked, serially
from ._support import add_silent, run_tool, volume_argument


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Write a blockfs volume into a dataset of an HDF5 file, with chunks equal to the block "
                    "size. Started by mpiexec, the ranks write in parallel through h5py's MPI driver (h5py must "
                    "be built with parallel HDF5); otherwise the export runs serially.",
        epilog="example:\n"
               "  mpiexec -n 4 blockfs2hdf /data/brain.blockfs /data/brain.h5 /raw/channel0 --compression gzip\n\n"
               "The application metadata of the volume becomes attributes of the dataset (JSON text), and\n"
               f"{BLOCK_SIZE_ATTR} records the block size. An existing dataset is never replaced.\n"
               "lzf, szip and plugin filters are written serially (parallel HDF5 mislabels chunks they skip).",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("src", metavar="BLOCKFS_FILE", help="the volume's directory file, or a folder holding one")
    parser.add_argument("dest", metavar="HDF5_FILE", help="the HDF5 file; created if missing, else added to")
    parser.add_argument("name", metavar="DATASET",
                        help="the dataset to create, e.g. /raw/channel0 (missing groups are created)")
    parser.add_argument("--compression", type=parse_filter, metavar="FILTER",
                        help="HDF5 compression filter: gzip, lzf, szip or a registered filter number (default: none)")
    parser.add_argument("--compression-opts", type=parse_filter_options, metavar="OPTS",
                        help="options of the filter, e.g. 0-9 for gzip (default 4), or nn,8 for szip")
    add_silent(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    """blockfs2hdf5: export a volume to an HDF5 dataset, by MPI ranks in parallel under mpiexec."""
    parser = build_parser()

    def body(args: argparse.Namespace) -> int:
        if args.compression_opts is not None and args.compression is None:
            parser.error("--compression-opts needs --compression")
        args.src = volume_argument(args.src)
        ranks, reason = find_ranks(parallel_hdf5_missing)
        if reason is not None:
            solo = serially(ranks, reason, parser.prog)
            if solo is None:
                return 0  # started by mpiexec without parallel HDF5: rank 0 does all the work
            ranks = solo
        return run_ranked(ranks, lambda: export(args.src, args.dest, args.name, ranks, args.compression,
                                                args.compression_opts, args.silent), parser.prog)

    return run_tool(parser, body, argv)
