"""blockfs2jp2k: export a volume as one JPEG 2000 file per z-plane (lossless, or lossy at a PSNR)."""

from __future__ import annotations

import argparse
import functools
import math
import sys
from dataclasses import dataclass

import numpy as np

from .cli_support import run_tool
from .directory import Directory
from .errors import InvalidArgumentError, MissingDependencyError, UnsupportedDTypeError
from .export import add_export_arguments, check_pattern, export_planes
from .parallel.mpi import Ranks, on_ranks

#: dtypes glymur can write
JP2K_DTYPES = (np.dtype(np.uint8), np.dtype(np.uint16))
#: OpenJPEG's working memory while it encodes one plane, in bytes per voxel (measured: 8-10)
ENCODER_BYTES_PER_VOXEL = 10
#: OpenJPEG's default number of resolution levels; each halves the plane, so a side needs 2**(n-1) voxels
DEFAULT_RESOLUTIONS = 6
GB = 1e9

EPILOG = """\
examples:
  blockfs2jp2k --input /data/brain.blockfs --output-pattern /data/jp2/img_%04d.jp2
  blockfs2jp2k --input /data/brain.blockfs --output-pattern /data/jp2/img_%04d.jp2 --psnr 60 --memory 16

The first is lossless; the second is lossy at about 60 dB (PSNR against the dtype's full range,
65535 for uint16) and holds at most ~16 GB of planes at a time. The suffix chooses the container:
.jp2 writes JP2 files, .j2k a bare codestream.
"""

MEMORY_HELP = (
    "upper bound, in GB, on the planes held at once: the slab read from the volume (bytes per plane "
    f"each) plus OpenJPEG's working memory for each plane being encoded (~{ENCODER_BYTES_PER_VOXEL} bytes "
    "per voxel). By default a slab is one block deep and --n-workers planes are encoded at once. A "
    "smaller budget reads thinner slabs (each block is then decompressed once per slab that touches it, "
    "so it is slower) and, if needed, encodes fewer planes at once; one plane and its encoder must fit.")


@dataclass(frozen=True)
class Plan:
    """How many planes to read per slab and to encode at once."""

    depth: int
    workers: int
    nbytes: int  # the estimated peak of planes and encoders


def plan(shape_zyx: tuple[int, int, int], dtype: np.dtype, z_block_size: int, n_workers: int,
         memory: float | None, where: str) -> Plan:
    """The thickest slab (at most one block deep) and most workers that fit ``memory`` bytes."""
    voxels = shape_zyx[1] * shape_zyx[2]
    plane, encoder = voxels * np.dtype(dtype).itemsize, voxels * ENCODER_BYTES_PER_VOXEL
    most = min(z_block_size, shape_zyx[0])
    if memory is None:
        workers = min(n_workers, most)
        return Plan(most, workers, most * plane + workers * encoder)
    # Encoding is the slow part: keep the workers, and thin the slab (re-reading blocks) first.
    for workers in range(min(n_workers, most), 0, -1):
        depth = min(most, int(memory - workers * encoder) // plane)
        if depth >= workers:
            return Plan(depth, workers, depth * plane + workers * encoder)
    need = plane + encoder
    raise InvalidArgumentError(f"{where}: --memory {memory / GB:g} GB cannot hold one {shape_zyx[1]}x{shape_zyx[2]} "
                               f"{np.dtype(dtype).name} plane and its encoder (about {need / GB:.3g} GB); "
                               "give at least that.")


def resolutions(shape_yx: tuple[int, ...]) -> int:
    """OpenJPEG's default of 6 resolution levels, fewer for planes under 32 voxels a side."""
    return min(DEFAULT_RESOLUTIONS, int(math.log2(max(1, min(shape_yx)))) + 1)


def write_jp2k(path: str, plane: np.ndarray, psnr: float | None) -> None:
    """One plane as JPEG 2000: lossless, or lossy at ``psnr`` dB."""
    import glymur

    options = {} if psnr is None else {"psnr": [psnr]}
    glymur.Jp2k(path, data=plane, numres=resolutions(plane.shape), **options)


def check_glymur() -> None:
    """Raise if glymur is missing or has no OpenJPEG library to write with."""
    try:
        import glymur
    except ImportError as exc:
        raise MissingDependencyError(f"glymur is not installed ({exc}); install it with: pip install glymur packaging"
                                     ) from None
    if glymur.version.openjpeg_version_tuple < (2, 3, 0):
        raise MissingDependencyError(f"glymur {glymur.__version__} found OpenJPEG {glymur.version.openjpeg_version}, "
                                     "which cannot write; install OpenJPEG 2.3 or newer "
                                     "(Debian: apt-get install libopenjp2-7).")


def _psnr(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"the PSNR must be a number of dB >= 0 (0: lossless); got {text!r}")
    return value or None


def _gigabytes(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"the memory must be a positive number of GB; got {text!r}")
    return value * GB


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="blockfs2jp2k", description="Export a blockfs volume as one JPEG 2000 file per z-plane.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_export_arguments(parser, "/path/img_%%04d.jp2", "JPEG 2000")
    parser.add_argument("--psnr", type=_psnr, default=None, metavar="DB",
                        help="lossy compression at this peak signal-to-noise ratio in dB (e.g. 60); "
                             "default, or 0: lossless")
    parser.add_argument("--memory", type=_gigabytes, default=None, metavar="GB",
                        help=MEMORY_HELP.replace("%", "%%"))
    return parser


def _export(args: argparse.Namespace, ranks: Ranks) -> int:
    check_pattern(args.output_pattern)
    check_glymur()
    with Directory.open(args.input) as directory:
        if directory.dtype not in JP2K_DTYPES:
            raise UnsupportedDTypeError(f"{args.input}: the volume is {directory.dtype.name}, but JPEG 2000 export "
                                        "writes uint8 or uint16 planes; use blockfs2tif for other dtypes.")
        chosen = plan(directory.shape, directory.dtype, directory.z_block_size, args.n_workers, args.memory,
                      args.input)
        export_planes(directory, args.output_pattern, functools.partial(write_jp2k, psnr=args.psnr),
                      chosen.workers, args.silent, "blockfs2jp2k", depth=chosen.depth, ranks=ranks)
    return 0


def _run(args: argparse.Namespace) -> int:
    """Under ``mpiexec -n N`` the ranks share the slabs; otherwise one process writes every plane."""
    return on_ranks("blockfs2jp2k", lambda ranks: _export(args, ranks))


def main(argv: list[str] | None = None) -> int:
    """Run blockfs2jp2k with ``argv`` (default: the command line); return the exit status."""
    return run_tool(build_parser(), _run, argv)


if __name__ == "__main__":
    sys.exit(main())
