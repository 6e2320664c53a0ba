"""A z-stack of 2-D TIFF planes (one file per z): found, checked for one shape and dtype, read ahead in order."""

from __future__ import annotations

import collections
import contextlib
import glob
import os
import re
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import tifffile

from ..directory import Directory
from ..errors import PlaneMismatchError, VolumeExistsError
from ..storage import incomplete_by
from ..threads import ordered_map


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
    return ordered_map(read_plane, paths, n_threads, in_flight=n_threads, name="tif2blockfs-read")


#: The tool named in the incomplete mark of the volumes it is writing.
TOOL = "tif2blockfs"


def check_destination(output: str) -> bool:
    """Fail before the (long) header scan if a volume is already at ``output``, unless it is an import that
    did not finish (returns True: it is replaced)."""
    if incomplete_by(output) == TOOL:
        return True
    for path in (output, f"{output}.0"):
        if os.path.exists(path):
            raise VolumeExistsError(f"{path}: already exists; remove it, choose another --output, or pass "
                                    "--overwrite to replace it.")
    return False


def remove_volume(directory: Directory) -> None:
    """Remove a volume this import created and left half written, so that a re-run starts clean."""
    for path in [directory.directory_filename, *directory.shard_paths]:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
