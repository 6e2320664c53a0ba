"""Benchmark data: 64^3 uint16 blocks made before any timing starts.

Three kinds, all deterministic so every run sees the same voxels: the library's microscopy-like
volume (``blockfs.sample``: smooth background of 60-180 counts, sparse bright cells, shot noise),
photon counts at low background (Poisson noise over the same blurred cells, dimmed, on a
background of 50 photons instead of 60-180 counts: noisier relative to its signal, so zstd
compresses it about half as fast), and uniform
random uint16, the incompressible worst case. A data set of N bytes is a list of C-contiguous blocks in (z, y, x)
order of their origins, laid out on a near-cubic grid of blocks; the peers also get the same
voxels as one contiguous volume (built on demand, also before timing).
"""

from __future__ import annotations

import multiprocessing
import os
import re
from dataclasses import dataclass, field

import numpy as np

from blockfs.sample import _add_cells, microscopy_block, random_block

BLOCK = 64
BLOCK_SHAPE = (BLOCK, BLOCK, BLOCK)
DTYPE = np.dtype(np.uint16)
BLOCK_BYTES = BLOCK**3 * DTYPE.itemsize
SEED = 0
PHOTON_BACKGROUND = 50.0
PHOTON_SCALE = 0.2  # the sample's cells (400-6000 counts at their centre) dimmed to 80-1200 photons


def poisson_block(origin: tuple[int, int, int], shape: tuple[int, int, int], seed: int = 0) -> np.ndarray:
    """Photon counts: Poisson noise over the sample's blurred cells, dimmed, at a low background."""
    cells = np.zeros(shape, np.float32)
    _add_cells(cells, origin, seed)
    rng = np.random.default_rng([seed, 7, *origin])
    return rng.poisson(PHOTON_BACKGROUND + PHOTON_SCALE * cells).astype(np.uint16)


KINDS = {"microscopy": microscopy_block, "poisson": poisson_block, "random": random_block}

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)i?B?\s*$", re.IGNORECASE)


def parse_size(text: str) -> int:
    """Bytes in a size such as ``256M``, ``1G``, ``1.5GiB`` or ``4096`` (binary units)."""
    match = _SIZE.match(text)
    if not match:
        raise ValueError(f"size must look like 256M, 1G or 4G; got {text!r}.")
    number, unit = match.groups()
    nbytes = int(float(number) * 1024 ** " KMGT".index(unit.upper() or " "))
    if nbytes < BLOCK_BYTES:
        raise ValueError(f"size {text!r} is smaller than one {BLOCK}^3 uint16 block ({BLOCK_BYTES} bytes).")
    return nbytes


def size_label(nbytes: int) -> str:
    """``256 MiB``, ``1 GiB``: how a size is written in the tables."""
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if nbytes >= scale:
            value = nbytes / scale
            return f"{value:.0f} {unit}" if value == int(value) else f"{value:.2f} {unit}"
    return f"{nbytes} B"


def block_grid(nbytes: int) -> tuple[int, int, int]:
    """(z, y, x) counts of blocks: about ``nbytes`` of blocks on a near-cubic grid, x >= y >= z."""
    count = max(1, nbytes // BLOCK_BYTES)
    grid = [1, 1, 1]  # x, y, z
    axis = 0
    while grid[0] * grid[1] * grid[2] * 2 <= count:
        grid[axis] *= 2
        axis = (axis + 1) % 3
    grid[2] = max(1, count // (grid[0] * grid[1]))
    return grid[2], grid[1], grid[0]


@dataclass
class Dataset:
    """One benchmark data set: blocks (z, y, x arrays) and their origins (z, y, x)."""

    kind: str
    shape: tuple[int, int, int]
    origins: list[tuple[int, int, int]]
    blocks: list[np.ndarray]
    _volume: np.ndarray | None = field(default=None, repr=False)

    @property
    def nbytes(self) -> int:
        return sum(block.nbytes for block in self.blocks)

    @property
    def label(self) -> str:
        return size_label(self.nbytes)

    def volume(self) -> np.ndarray:
        """The same voxels as one C-contiguous (z, y, x) array (built once, on first use)."""
        if self._volume is None:
            volume = np.empty(self.shape, DTYPE)
            for (z, y, x), block in zip(self.origins, self.blocks):
                volume[z:z + BLOCK, y:y + BLOCK, x:x + BLOCK] = block
            self._volume = volume
        return self._volume

    def blocks_file(self, folder: str) -> str:
        """A ``.npy`` file of every block, (n, z, y, x), in ``folder`` (written once), for producers
        that inherit no memory from this process."""
        path = os.path.join(folder, f"{self.kind}-{self.nbytes}-blocks.npy")
        if not os.path.exists(path):
            np.save(path, np.stack(self.blocks))
        return path

    def drop_volume(self) -> None:
        self._volume = None

    def matches(self, array: np.ndarray) -> bool:
        """Whether ``array`` (a full read of the volume) holds exactly these voxels."""
        if array.shape != self.shape:
            return False
        return all(np.array_equal(array[z:z + BLOCK, y:y + BLOCK, x:x + BLOCK], block)
                   for (z, y, x), block in zip(self.origins, self.blocks))


def _make(args: tuple[str, tuple[int, int, int]]) -> np.ndarray:
    kind, origin = args
    return KINDS[kind](origin, BLOCK_SHAPE, seed=SEED)


def make_dataset(kind: str, nbytes: int, processes: int | None = None) -> Dataset:
    """Generate a data set of ``kind`` holding about ``nbytes`` of voxels, in parallel processes."""
    if kind not in KINDS:
        raise ValueError(f"data kind must be one of {sorted(KINDS)}; got {kind!r}.")
    zb, yb, xb = block_grid(nbytes)
    shape = (zb * BLOCK, yb * BLOCK, xb * BLOCK)
    origins = [(z, y, x) for z in range(0, shape[0], BLOCK) for y in range(0, shape[1], BLOCK)
               for x in range(0, shape[2], BLOCK)]
    work = [(kind, origin) for origin in origins]
    processes = processes or os.cpu_count() or 1
    if processes == 1 or len(origins) < 16:
        blocks = [_make(item) for item in work]
    else:
        with multiprocessing.get_context("fork").Pool(processes) as pool:
            blocks = pool.map(_make, work, chunksize=16)
    return Dataset(kind, shape, origins, blocks)
