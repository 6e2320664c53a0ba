"""The import tool under mpiexec: ``mpiexec -n N tif2blockfs`` (``blockfs from-tif``) on N ranks.

The ranks read the TIFF headers in turns, agree on the stack, create the volume collectively
(:mod:`blockfs.parallel.collective`), and each writes the planes of its block-deep z ranges
(dealt round-robin) through a PlaneWriter. Blocks go to their shard's owner compressed. The
result equals a serial run's: the same header, and every block compressed to the same bytes.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any

from tqdm import tqdm

from ..convert.tiff_stack import (TOOL, check_destination, check_stack, find_planes, inspect_plane, read_in_order,
                                  remove_volume)
from ..directory import Directory
from ..errors import USER_ERRORS, BlockfsError, describe
from ..planes import PlaneWriter
from ..progress import progress
from ..storage import mark_complete
from .mpi import Ranks

PROG = "tif2blockfs"


def _inspect(paths: list[str], ranks: Ranks, silent: bool) -> list[Any]:
    """Every file's header, each read by one rank, in the order of ``paths``; agreed on by all ranks."""
    def mine() -> list[tuple[int, Any]]:
        indices = ranks.mine(range(len(paths)))
        return [(i, inspect_plane(paths[i])) for i in progress(indices, silent, f"{PROG}: checking", unit="file")]

    share = ranks.attempt(mine, kind=BlockfsError)
    parts = ranks.comm.allgather(share) if ranks.parallel else [share]
    return [plane for _, plane in sorted((p for part in parts for p in part), key=lambda p: p[0])]


def import_planes(patterns: list[str], output: str, block_size: tuple[int, int, int], n_shards: int,
                  compression: str, level: int, silent: bool, ranks: Ranks, metadata: dict | None = None) -> None:
    """Write the TIFF planes matching ``patterns`` into a new volume at ``output``, shared by ``ranks``.

    ``metadata`` is the volume's application metadata. Raises on every rank if any rank fails; a volume
    this call created is then removed.
    """
    quiet = silent or ranks.rank != 0

    def find() -> list[str]:
        check_destination(output)  # an import that did not finish is replaced
        paths = find_planes(patterns)
        os.makedirs(os.path.dirname(output), exist_ok=True)
        return paths

    # Each step is agreed on by every rank before the next collective call, and before any file is made.
    paths = ranks.attempt(find, kind=BlockfsError)
    planes = _inspect(paths, ranks, quiet)
    common = ranks.attempt(lambda: check_stack(planes), kind=BlockfsError)
    (y_extent, x_extent), (bz, by, bx) = common.shape, block_size
    directory = Directory(x_extent, y_extent, len(paths), common.dtype, output, n_filenames=n_shards,
                          x_block_size=bx, y_block_size=by, z_block_size=bz, compression=compression,
                          compression_level=level, metadata=metadata)
    directory.create(comm=ranks.comm, incomplete=TOOL)
    starts = ranks.mine(range(0, len(paths), bz))
    error = None
    try:
        with tqdm(total=sum(min(bz, len(paths) - z) for z in starts), unit="plane", disable=quiet, desc=f"{PROG} (rank 0 of {ranks.size})") as bar:
            for z0 in starts:
                z1 = min(z0 + bz, len(paths))
                reader = read_in_order(paths[z0:z1], n_shards)
                with contextlib.closing(reader), PlaneWriter(directory, z0, z1) as writer:
                    for plane in reader:
                        writer.write(plane)
                        bar.update()
    except USER_ERRORS as exc:
        error = describe(exc)
    try:
        directory.close()  # collective: every rank comes here, whatever happened to it
    except USER_ERRORS as exc:
        error = error or describe(exc)
    try:
        ranks.agree(error, BlockfsError)
    except BlockfsError:
        if ranks.rank == 0:
            remove_volume(directory)  # ours and half written: a re-run starts clean
        raise
    ranks.attempt(lambda: mark_complete(output) if ranks.rank == 0 else None, kind=BlockfsError)
