"""Deterministic microscopy-like sample data: smooth background, sparse bright cells, shot noise.

Every voxel depends only on its position and the seed (noise on the block's origin too), so a
volume can be generated block by block, in any order and in any process, and regenerated to
verify it.
"""

from __future__ import annotations

import numpy as np

#: Spacing of the lattice on which cells may sit, in voxels.
CELL_PITCH = 24
CELL_PROBABILITY = 0.2
_MARGIN = 12


def _background(origin: tuple[int, int, int], shape: tuple[int, int, int]) -> np.ndarray:
    """Slowly varying autofluorescence, about 60-180 counts."""
    axes = [np.cos(2 * np.pi * (o + np.arange(n, dtype=np.float32)) / period)
            for o, n, period in zip(origin, shape, (700.0, 450.0, 380.0))]
    background: np.ndarray = 120 + 20 * (axes[0][:, None, None] + axes[1][None, :, None] + axes[2][None, None, :])
    return background


def _add_cells(volume: np.ndarray, origin: tuple[int, int, int], seed: int) -> None:
    """Add Gaussian blobs centred on a jittered lattice; each lattice site holds a cell or not."""
    lo = [(o - _MARGIN) // CELL_PITCH for o in origin]
    hi = [(o + n + _MARGIN) // CELL_PITCH + 1 for o, n in zip(origin, volume.shape)]
    for site in np.ndindex(*(h - low for low, h in zip(lo, hi))):
        cell = tuple(int(low + s) for low, s in zip(lo, site))
        rng = np.random.default_rng([seed, *(c + 2**20 for c in cell)])
        if rng.random() >= CELL_PROBABILITY:
            continue
        centre = np.array(cell) * CELL_PITCH + rng.uniform(0, CELL_PITCH, 3)
        sigma, brightness = rng.uniform(1.5, 3.5), rng.uniform(400, 6000)
        start = [max(0, int(c - o - 3 * sigma)) for c, o in zip(centre, origin)]
        stop = [min(n, int(c - o + 3 * sigma) + 1) for c, o, n in zip(centre, origin, volume.shape)]
        if any(a >= b for a, b in zip(start, stop)):
            continue
        grids = [((np.arange(a, b) + o - c) ** 2)[shape] for a, b, o, c, shape in
                 zip(start, stop, origin, centre, ((slice(None), None, None), (None, slice(None), None),
                                                  (None, None, slice(None))))]
        blob = brightness * np.exp(-(grids[0] + grids[1] + grids[2]) / (2 * sigma * sigma))
        volume[start[0]:stop[0], start[1]:stop[1], start[2]:stop[2]] += blob


def microscopy_block(origin: tuple[int, int, int], shape: tuple[int, int, int], seed: int = 0) -> np.ndarray:
    """A uint16 block of sample data whose first voxel is ``origin`` (z, y, x)."""
    mean = _background(origin, shape)
    _add_cells(mean, origin, seed)
    rng = np.random.default_rng([seed, *origin])
    noisy = mean + np.sqrt(mean) * rng.standard_normal(shape, dtype=np.float32)
    block: np.ndarray = np.clip(np.rint(noisy), 0, 65535).astype(np.uint16)
    return block


def random_block(origin: tuple[int, int, int], shape: tuple[int, int, int], seed: int = 0) -> np.ndarray:
    """Uniform random uint16: the incompressible worst case."""
    return np.random.default_rng([seed, *origin]).integers(0, 65536, shape, dtype=np.uint16)
