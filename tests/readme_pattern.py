"""The README's writing pattern as a program of its own, for any start method.

    python readme_pattern.py VOLUME METHOD set_start_method|get_context

A module-level Directory, ``create()`` and ``start_writer_processes()`` under the ``__main__``
guard, a Pool of workers writing every block, ``close()``. Voxel (z, y, x) holds
``voxel_value(z, y, x)``, so the caller can check every voxel.
"""

import multiprocessing
import sys

import numpy as np

from blockfs import Directory

EXTENTS_XYZ = (200, 150, 130)
VOLUME, METHOD, HOW = sys.argv[1:4]

directory = Directory(*EXTENTS_XYZ, np.uint16, VOLUME, n_filenames=2)


def voxel_value(z: np.ndarray, y: np.ndarray, x: np.ndarray) -> np.ndarray:
    return ((x * 3 + y * 5 + z * 7) % 65521).astype(np.uint16)


def write_one(x: int, y: int, z: int) -> None:
    dz, dy, dx = directory.get_block_size(x, y, z)
    block = voxel_value(*np.meshgrid(np.arange(z, z + dz), np.arange(y, y + dy), np.arange(x, x + dx), indexing="ij"))
    directory.write_block(block, x, y, z)


if __name__ == "__main__":
    if HOW == "set_start_method":
        multiprocessing.set_start_method(METHOD)
    directory.create()
    directory.start_writer_processes()
    x_extent, y_extent, z_extent = EXTENTS_XYZ
    coords = [(x, y, z) for x in range(0, x_extent, 64) for y in range(0, y_extent, 64) for z in range(0, z_extent, 64)]
    pool = multiprocessing.Pool(2) if HOW == "set_start_method" else multiprocessing.get_context(METHOD).Pool(2)
    with pool:
        pool.starmap(write_one, coords)
    directory.close()
