"""``blockfs jp2k`` (blockfs2jp2k): export a volume as one JPEG 2000 file per z-plane."""

from __future__ import annotations

import argparse
import contextlib
import functools

from ..convert.jp2k import ENCODER_BYTES_PER_VOXEL, GB, JP2K_DTYPES, check_glymur, plan, write_jp2k
from ..convert.planes import check_pattern, export_planes
from ..errors import UnsupportedDTypeError
from ..parallel.mpi import Ranks, on_ranks
from ..volume import open_volume
from ._support import add_export_arguments, number, run_tool, volume_argument

EPILOG = """\
examples:
  blockfs2jp2k --input /data/brain.blockfs --output-pattern /data/jp2/img_%04d.jp2
  blockfs2jp2k --input /data/brain.blockfs --output-pattern /data/jp2/img_%04d.jp2 --psnr 80 --memory 16

The first is lossless; the second is lossy at about 80 dB (PSNR against the dtype's full range,
65535 for uint16) and holds at most ~16 GB of planes at a time. The suffix chooses the container:
.jp2 writes JP2 files, .j2k a bare codestream.
"""

MEMORY_HELP = (
    "upper bound, in GB, on the planes held at once: the slab read from the volume (bytes per plane "
    f"each) plus OpenJPEG's working memory for each plane being encoded (~{ENCODER_BYTES_PER_VOXEL} bytes "
    "per voxel). By default a slab is one block deep and --n-workers planes are encoded at once. A "
    "smaller budget reads thinner slabs (each block is then decompressed once per slab that touches it, "
    "so it is slower) and, if needed, encodes fewer planes at once; one plane and its encoder must fit.")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="blockfs2jp2k", description="Export a blockfs volume as one JPEG 2000 file per z-plane.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_export_arguments(parser, "/path/img_%%04d.jp2", "JPEG 2000")
    parser.add_argument("--psnr", type=number(float, "the PSNR must be a number of dB >= 0 (0: lossless)", low=0),
                        default=None, metavar="DB",
                        help="lossy compression at this peak signal-to-noise ratio in dB (e.g. 60); "
                             "default, or 0: lossless")
    parser.add_argument("--memory", type=number(float, "the memory must be a positive number of GB", low=0, above=True),
                        default=None, metavar="GB",
                        help=MEMORY_HELP.replace("%", "%%"))
    return parser


def _export(args: argparse.Namespace, ranks: Ranks, prog: str) -> int:
    check_pattern(args.output_pattern)
    check_glymur()
    with contextlib.closing(open_volume(args.input)) as volume:
        if volume.dtype not in JP2K_DTYPES:
            raise UnsupportedDTypeError(f"{args.input}: the volume is {volume.dtype.name}, but JPEG 2000 export "
                                        "writes uint8 or uint16 planes; use blockfs2tif for other dtypes.")
        memory = None if args.memory is None else args.memory * GB
        chosen = plan(volume.shape, volume.dtype, volume.block_shape[0], args.n_workers, memory, args.input)
        export_planes(volume, args.output_pattern, functools.partial(write_jp2k, psnr=args.psnr or None),
                      chosen.workers, args.silent, prog, depth=chosen.depth, ranks=ranks)
    return 0


def _run(args: argparse.Namespace, prog: str) -> int:
    """Under ``mpiexec -n N`` the ranks share the slabs; otherwise one process writes every plane."""
    args.input = volume_argument(args.input)
    return on_ranks(prog, lambda ranks: _export(args, ranks, prog))


def main(argv: list[str] | None = None) -> int:
    """Run blockfs2jp2k with ``argv`` (default: the command line); return the exit status."""
    parser = build_parser()
    return run_tool(parser, lambda args: _run(args, parser.prog), argv)
