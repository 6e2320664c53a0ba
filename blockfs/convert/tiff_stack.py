"""A z-stack of 2-D TIFF planes (one file per z): found, checked for one shape and dtype, read ahead in
order, and imported as a new volume (:func:`import_stack`), alone or on the ranks of ``mpiexec``.

On several ranks the headers are read in turns and agreed on, the volume is created collectively
(:mod:`blockfs.parallel.collective`), and each rank writes the planes of its block-deep z ranges,
dealt round-robin; blocks go to their shard's owner compressed. The result equals a serial run's:
the same header, and every block compressed to the same bytes.
"""

from __future__ import annotations

import collections
import contextlib
import glob
import itertools
import os
import re
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import tifffile
from tqdm import tqdm

from ..codec import Compression
from ..errors import USER_ERRORS, BlockfsError, PlaneMismatchError, VolumeExistsError, describe
from ..parallel.collective import create_collective
from ..parallel.mpi import SOLO, Ranks
from ..planes import PlaneWriter
from ..progress import disabled, progress
from ..storage import incomplete_by, mark_complete
from ..threads import ordered_map
from ..volume import Volume
from ..writable import WritableVolume, create_from_layout, new_layout

T = TypeVar("T")


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


def read_in_order(paths: list[str], n_threads: int) -> Generator[np.ndarray, None, None]:
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


def remove_volume(volume: Volume) -> None:
    """Remove a volume this import created and left half written, so that a re-run starts clean."""
    for path in [volume.path, *volume.store.spec.shard_paths]:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


def _together(ranks: Ranks, step: Callable[[], T]) -> T:
    """``step()``; on several ranks, agreed on by all: if it fails on any, all raise :class:`BlockfsError`."""
    return ranks.attempt(step, kind=BlockfsError) if ranks.parallel else step()


def _inspect(paths: list[str], ranks: Ranks, silent: bool, prog: str) -> list[Plane]:
    """Every file's header, each read by one rank, in the order of ``paths``; agreed on by all ranks."""
    def mine() -> list[tuple[int, Plane]]:
        indices = ranks.mine(range(len(paths)))
        return [(i, inspect_plane(paths[i])) for i in progress(indices, silent, f"{prog}: checking", unit="file")]

    share = _together(ranks, mine)
    parts = ranks.comm.allgather(share) if ranks.parallel else [share]
    return [plane for _, plane in sorted((p for part in parts for p in part), key=lambda p: p[0])]


def _write_share(volume: WritableVolume, paths: list[str], n_threads: int, ranks: Ranks, silent: bool,
                 prog: str) -> None:
    """Write this rank's block-deep z ranges of planes, read ahead by ``n_threads`` threads (alone,
    through the volume's writer processes)."""
    if not ranks.parallel:
        volume.start_writers()
    depth, n = volume.block_shape[0], len(paths)
    ranges = [(z, min(z + depth, n)) for z in ranks.mine(range(0, n, depth))]
    reader = read_in_order([paths[z] for z0, z1 in ranges for z in range(z0, z1)], n_threads)
    desc = f"{prog} (rank 0 of {ranks.size})" if ranks.parallel else prog
    with (contextlib.closing(reader),
          tqdm(total=sum(z1 - z0 for z0, z1 in ranges), unit="plane", desc=desc, disable=disabled(silent)) as bar):
        for z0, z1 in ranges:
            with PlaneWriter(volume, z0, z1) as writer:
                for plane in itertools.islice(reader, z1 - z0):
                    writer.write(plane)
                    bar.update()


def _write_and_close(volume: WritableVolume, write: Callable[[], None], ranks: Ranks) -> None:
    """``write()``, then close the volume. On several ranks every rank closes (collectively) whatever
    happened on it, then all raise :class:`BlockfsError` if any failed."""
    if not ranks.parallel:
        try:
            write()
        except BaseException:
            with contextlib.suppress(Exception):
                volume.close()
            raise
        volume.close()
        return
    error = None
    try:
        write()
    except USER_ERRORS as exc:
        error = describe(exc)
    try:
        volume.close()
    except USER_ERRORS as exc:
        error = error or describe(exc)
    ranks.agree(error, BlockfsError)


def import_stack(patterns: list[str], dest: str, block_shape: tuple[int, int, int] = (64, 64, 64),
                 shards: int = 1, *, compression: Compression | str = Compression.zstd, compression_level: int = 5,
                 metadata: dict[str, Any] | None = None, overwrite: bool = False, silent: bool = True,
                 prog: str = TOOL, ranks: Ranks = SOLO) -> None:
    """Write the TIFF planes matching the glob ``patterns`` (z in name order) into a new volume at ``dest``.

    ``block_shape`` is (z, y, x); ``shards`` is the number of shard files, of writer processes (when
    alone) and of threads reading ahead. An existing volume is refused unless ``overwrite``, or it is
    an import that did not finish. On several ``ranks`` each step is agreed on by all before the next
    collective call, and all raise if any fails. A volume this call created is removed when it fails.
    """
    def find() -> tuple[list[str], bool]:
        replace = overwrite or check_destination(dest)  # an import that did not finish is replaced
        paths = find_planes(patterns)
        os.makedirs(os.path.dirname(os.path.abspath(dest)), exist_ok=True)
        return paths, replace

    quiet = silent or ranks.rank != 0
    paths, replace = _together(ranks, find)
    planes = _inspect(paths, ranks, quiet, prog)
    common = _together(ranks, lambda: check_stack(planes))
    layout, _ = new_layout(dest, (len(paths), *common.shape), common.dtype, block_shape, shards,
                           compression=compression, compression_level=compression_level, metadata=metadata)
    if ranks.parallel:
        volume = create_collective(layout, dest, ranks.comm, replace, incomplete=TOOL)
    else:
        volume = create_from_layout(dest, layout, overwrite=replace, incomplete=TOOL)
    try:
        _write_and_close(volume, lambda: _write_share(volume, paths, shards, ranks, quiet, prog), ranks)
    except BaseException:
        if ranks.rank == 0:
            remove_volume(volume)  # ours and half written: a re-run starts clean
        raise
    _together(ranks, lambda: mark_complete(dest) if ranks.rank == 0 else None)
