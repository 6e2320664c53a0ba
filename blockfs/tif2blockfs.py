"""tif2blockfs: write a z-stack of 2-D TIFF planes (one file per z) into a new blockfs volume."""

from __future__ import annotations

import argparse
import collections
import contextlib
import glob
import os
import re
import sys
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import tifffile

from .cli_support import add_silent, progress, run_tool
from .codec import Compression
from .directory import Directory
from .errors import InvalidArgumentError, PlaneMismatchError, VolumeExistsError
from .export import positive_int
from .parallel.mpi import launcher_rank
from .planes import PlaneWriter

EPILOG = """\
example:
  tif2blockfs --input "/data/tiff/img_*.tiff" --output /data/brain.blockfs --block-size 64,64,64

reads /data/tiff/img_0000.tiff, img_0001.tiff, ... as z = 0, 1, ... (quote the pattern so the
shell leaves it alone) and writes /data/brain.blockfs and its shards brain.blockfs.0, .1, ...
"""



@dataclass(frozen=True)
class Plane:
    """What a TIFF file's header says about the image in it."""

    path: str
    shape: tuple[int, ...]
    dtype: np.dtype

    @property
    def kind(self) -> tuple[tuple[int, ...], np.dtype]:
        return self.shape, self.dtype

    def describe(self) -> str:
        return f"{'x'.join(map(str, self.shape))} {self.dtype.name}"


def natural_key(path: str) -> tuple[list[int | str], str]:
    """Sort key comparing runs of digits as numbers: img_2.tif before img_10.tif (then img_02.tif)."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path)], path


def find_planes(patterns: list[str]) -> list[str]:
    """The files matching any of the glob ``patterns``, sorted by name (numbers as numbers)."""
    found = {path for pattern in patterns for path in glob.glob(os.path.expanduser(pattern), recursive=True)
             if os.path.isfile(path)}
    if not found:
        shown = " ".join(patterns)
        folders = [p for p in patterns if os.path.isdir(p)]
        example = os.path.join(folders[0], "*.tif") if folders else "/data/tiff/img_*.tif"
        raise FileNotFoundError(2, f"no file matches; give a glob of the planes such as \"{example}\" (quoted)", shown)
    return sorted(found, key=natural_key)


def _tiff_error(path: str, exc: Exception) -> Exception:
    if isinstance(exc, OSError) and exc.errno is not None:
        return OSError(exc.errno, exc.strerror, path)
    return PlaneMismatchError(f"{path}: not a readable TIFF file ({type(exc).__name__}: {exc}).")


def inspect_plane(path: str) -> Plane:
    """Shape and dtype of the image in a TIFF file, from its header; one 2-D plane per file."""
    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            plane = Plane(path, tuple(series.shape), np.dtype(series.dtype).newbyteorder("="))
            pages = len(tif.pages)
    except Exception as exc:  # tifffile raises several types for files that are not TIFF
        raise _tiff_error(path, exc) from None
    if len(plane.shape) != 2 or pages != 1:
        raise PlaneMismatchError(f"{path}: holds a {plane.describe()} image in {pages} page(s); tif2blockfs reads "
                                 "one 2-D grayscale plane per file.")
    return plane


def check_stack(planes: list[Plane]) -> Plane:
    """The shape and dtype every plane shares; raise naming the first file that differs."""
    counts = collections.Counter(p.kind for p in planes)
    common = next(p for p in planes if p.kind == counts.most_common(1)[0][0])
    odd = [p for p in planes if p.kind != common.kind]
    if odd:
        first = odd[0]
        more = len(odd) - 1
        others = f"; {more} more file{'s differ' if more > 1 else ' differs'} too" if more else ""
        raise PlaneMismatchError(
            f"{first.path}: the plane is {first.describe()} (y x dtype{others}), but {counts[common.kind]} of the "
            f"{len(planes)} planes, e.g. {os.path.basename(common.path)}, are {common.describe()}; every plane of "
            "the stack must have the same shape and dtype.")
    return common


def read_plane(path: str) -> np.ndarray:
    try:
        return tifffile.imread(path, maxworkers=1)
    except Exception as exc:
        raise _tiff_error(path, exc) from None


def read_in_order(paths: list[str], n_threads: int) -> Iterator[np.ndarray]:
    """The planes of ``paths`` in order, read by ``n_threads`` threads at most ``n_threads`` ahead."""
    with ThreadPoolExecutor(n_threads, "tif2blockfs-read") as pool:
        pending: collections.deque[Future[np.ndarray]] = collections.deque()
        try:
            for path in paths:
                pending.append(pool.submit(read_plane, path))
                if len(pending) >= n_threads:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for future in pending:
                future.cancel()


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
    return sizes  # type: ignore[return-value]


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
    parser.add_argument("--compression", default=Compression.zstd.value,
                        choices=[c.value for c in Compression], help="blosc compressor (default: %(default)s)")
    parser.add_argument("--level", type=int, default=5, choices=range(10), metavar="0-9",
                        help="compression level (default: %(default)s)")
    parser.add_argument("--pyramid", type=positive_int, metavar="LEVELS",
                        help="then build a pyramid of LEVELS levels in OUTPUT's name with .pyramid for .blockfs "
                             "(level 1 hard-linked; see blockfs pyramid)")
    add_silent(parser)
    return parser


def _check_destination(output: str) -> None:
    """Fail before the (long) header scan if a volume is already at ``output``."""
    for path in (output, f"{output}.0"):
        if os.path.exists(path):
            raise VolumeExistsError(f"{path}: already exists; remove it, choose another --output, or pass "
                                    "--overwrite to replace it.")


def _remove_volume(directory: Directory) -> None:
    for path in [directory.directory_filename, *directory.shard_paths]:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


def _run(args: argparse.Namespace) -> int:
    if launcher_rank()[1] > 1:  # started by mpiexec -n N: the ranks share the planes (blockfs.parallel.tools)
        if args.pyramid:  # its worker processes would fork MPI ranks
            raise InvalidArgumentError(f"{args.output}: --pyramid {args.pyramid} does not run under mpiexec; import "
                                       "without it, then run blockfs pyramid on the volume.")
        from .parallel.tools import run_import
        return run_import(args)
    # Absolute shard names, as earlier blockfs releases wrote them, so that every reader finds them.
    output = os.path.abspath(os.path.expanduser(args.output))
    if not args.overwrite:
        _check_destination(output)
    paths = find_planes(args.input)
    planes = [inspect_plane(p) for p in progress(paths, args.silent, "tif2blockfs: checking", unit="file")]
    common = check_stack(planes)
    (y_extent, x_extent), (bz, by, bx) = common.shape, args.block_size
    directory = Directory(x_extent, y_extent, len(paths), common.dtype, output, n_filenames=args.n_workers,
                          x_block_size=bx, y_block_size=by, z_block_size=bz, compression=args.compression,
                          compression_level=args.level)
    os.makedirs(os.path.dirname(output), exist_ok=True)
    directory.create(overwrite=args.overwrite)  # without it, any file of the volume there is an error
    try:
        directory.start_writer_processes()
        reader = read_in_order(paths, args.n_workers)
        with contextlib.closing(reader), PlaneWriter(directory) as writer:
            for plane in progress(reader, args.silent, "tif2blockfs", len(paths), "plane"):
                writer.write(plane)
        directory.close()
    except BaseException:
        with contextlib.suppress(Exception):
            directory.close()
        _remove_volume(directory)  # ours and half written: a re-run starts clean
        raise
    if args.pyramid:
        from .pyramid.build import build_pyramid
        dest = build_pyramid(output, os.path.splitext(output)[0] + ".pyramid", args.pyramid,
                             n_workers=args.n_workers, silent=args.silent)
        print(f"tif2blockfs: pyramid in {dest}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run tif2blockfs with ``argv`` (default: the command line); return the exit status."""
    return run_tool(build_parser(), _run, argv)


if __name__ == "__main__":
    sys.exit(main())
