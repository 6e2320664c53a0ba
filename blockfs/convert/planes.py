"""What the plane exporters (blockfs2tif, blockfs2jp2k) share.

Output patterns and the loop that reads the volume one slab at a time and
writes the slab's planes in worker threads (zlib, OpenJPEG and file I/O release the GIL). Each
plane is written under a hidden temporary name in its folder and renamed into place
(:func:`blockfs.storage.atomic_write`, keeping the suffix that tells the writer the format), so an
interrupted export never leaves a truncated file under a plane's name.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np

from ..errors import BlockfsError, ExportError, InvalidArgumentError
from ..parallel.mpi import SOLO, Ranks
from ..planes import iter_slabs
from ..progress import progress
from ..storage import atomic_write, full_disk_note
from ..volume import Volume

#: printf-style conversion fields: ``%%``, ``%d``, ``%04d``, ``%-5i`` ... (flags, width, precision, type)
_FIELD = re.compile(r"%(?:%|[-+ #0]*(?:\d+|\*)?(?:\.(?:\d+|\*))?([a-zA-Z]))")
_INTEGER_TYPES = "diu"

WritePlane = Callable[[str, np.ndarray], None]


def _suggest(pattern: str) -> str:
    root, ext = os.path.splitext(_FIELD.sub("", pattern).replace("%", ""))
    return re.sub(r"([_.-])\1+", r"\1", f"{root}_%04d{ext}")


def check_pattern(pattern: str) -> str:
    """Return ``pattern`` if it has exactly one printf-style integer field (``%d``, ``%04d``...) for z.

    Otherwise raise :class:`InvalidArgumentError` naming the pattern and the fix, before any work is done.
    """
    fields = [m for m in _FIELD.finditer(pattern) if m.group(0) != "%%"]
    if not fields:
        raise InvalidArgumentError(f"{pattern}: the output pattern has no %d-style field for the plane's z, so "
                                   f"every plane would go to one file; add one, e.g. {_suggest(pattern)}")
    if len(fields) > 1 or fields[0].group(1) not in _INTEGER_TYPES or "*" in fields[0].group(0):
        raise InvalidArgumentError(f"{pattern}: the output pattern must have exactly one integer field for z "
                                   f"(%d, %04d, ...) and no other %-field (write a literal % as %%); "
                                   f"e.g. {_suggest(pattern)}")
    try:
        first, second = pattern % 0, pattern % 1
    except (TypeError, ValueError) as exc:
        raise InvalidArgumentError(f"{pattern}: not a valid printf-style pattern ({exc}); write a literal % as %%, "
                                   f"e.g. {_suggest(pattern)}") from None
    if first == second or not os.path.basename(first):
        raise InvalidArgumentError(f"{pattern}: the z field must be in the file name; e.g. {_suggest(pattern)}")
    return pattern


def _check_writable(path: str) -> None:
    """Create and remove a hidden file beside ``path``: raise OSError naming ``path`` if that fails."""
    try:
        with tempfile.NamedTemporaryFile(dir=os.path.dirname(path) or ".", prefix="."):
            pass
    except OSError as exc:
        if exc.errno is None:
            raise
        raise OSError(exc.errno, exc.strerror, path) from None


def _write_atomically(write_plane: WritePlane, path: str, plane: np.ndarray) -> None:
    """Write one plane under a temporary name beside ``path`` (same suffix), then rename it."""
    temporary: list[str] = []
    try:
        with atomic_write(path, durable=False, suffix=os.path.splitext(path)[1]) as name:
            temporary.append(name)
            write_plane(name, plane)
    except BlockfsError:
        raise
    except Exception as exc:
        if isinstance(exc, OSError) and exc.filename not in (None, *temporary):
            raise
        if isinstance(exc, OSError) and exc.errno is not None:
            raise OSError(exc.errno, exc.strerror, path) from exc
        raise ExportError(f"{path}: {type(exc).__name__}: {exc}{full_disk_note(path)}") from exc


class _Folders:
    """Creates each output folder once."""

    def __init__(self) -> None:
        self._made: set[str] = set()

    def ensure(self, path: str) -> None:
        folder = os.path.dirname(path) or "."
        if folder not in self._made:
            os.makedirs(folder, exist_ok=True)
            self._made.add(folder)


def rank_slabs(volume: Volume, depth: int | None, ranks: Ranks) -> tuple[int, Iterator[tuple[int, np.ndarray]]]:
    """(planes, slabs) of this rank's share: block-deep z ranges dealt round-robin to the ranks."""
    bz, nz = volume.block_shape[0], volume.shape[0]
    if not ranks.parallel:
        return nz, iter_slabs(volume, depth)
    starts = ranks.mine(range(0, nz, bz))
    return (sum(min(bz, nz - z) for z in starts),
            (slab for z in starts for slab in iter_slabs(volume, depth, z, min(z + bz, nz))))


def export_planes(volume: Volume, pattern: str, write_plane: WritePlane, n_workers: int, silent: bool,
                  desc: str, depth: int | None = None, ranks: Ranks = SOLO) -> None:
    """Write every z-plane of ``volume`` to ``pattern % z`` with ``write_plane(path, plane)``.

    The volume is read ``depth`` planes at a time (one block depth by default, see
    :func:`~blockfs.planes.iter_slabs`) and each slab's planes are written by ``n_workers``
    threads before the next slab is read, so memory holds one slab and the planes being encoded.
    With several ``ranks``, each writes the planes of its block-deep z ranges (see
    :func:`rank_slabs`) and rank 0 shows its progress.
    """
    check_pattern(pattern)
    folders = _Folders()
    folders.ensure(pattern % 0)  # an unwritable destination fails now, before anything is read
    _check_writable(pattern % 0)

    planes, slabs = rank_slabs(volume, depth, ranks)

    def written() -> Iterator[int]:
        with ThreadPoolExecutor(n_workers, "blockfs-export") as pool:
            for z0, slab in slabs:
                futures: list[Future[None]] = []
                try:
                    for i, plane in enumerate(slab):
                        path = pattern % (z0 + i)
                        folders.ensure(path)
                        futures.append(pool.submit(_write_atomically, write_plane, path, plane))
                    for i, future in enumerate(futures):
                        future.result()
                        yield z0 + i
                except BaseException:
                    for future in futures:
                        future.cancel()
                    raise

    if ranks.parallel:
        desc = f"{desc} (rank 0 of {ranks.size})"
    for _ in progress(written(), silent or ranks.rank != 0, desc, total=planes, unit="plane"):
        pass
