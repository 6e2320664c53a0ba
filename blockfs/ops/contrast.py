"""A display range for a volume from a bounded sample of its blocks: what every viewer starts with."""

from __future__ import annotations

import numpy as np

from ..volume import Volume

#: Blocks read per axis to choose the contrast: at most 3 x 3 x 3 level-1 blocks, spread over the volume.
SAMPLE_SPREAD = 3
#: Percentiles of the sampled non-zero voxels that make the display range.
PERCENTILES = (0.5, 99.9)


def sample_origins(volume: Volume) -> list[tuple[int, int, int]]:
    """First voxels (x, y, z) of the blocks :func:`contrast` reads: the centres of a lattice of
    :data:`SAMPLE_SPREAD` cells per axis over the block grid (fewer along a short axis)."""
    z, y, x = ([b * (int((i + 0.5) * n / SAMPLE_SPREAD)) for i in range(min(SAMPLE_SPREAD, n))]
               for n, b in zip(volume.layout.grid, volume.layout.block_shape))
    return [(bx, by, bz) for bz in z for by in y for bx in x]


def contrast(volume: Volume) -> tuple[float, float]:
    """A display range from a bounded sample of blocks (:func:`sample_origins`) of ``volume``, the finest
    level: the :data:`PERCENTILES` of their non-zero voxels."""
    samples = [block[block != 0].ravel() for block in (volume.read_block(*o) for o in sample_origins(volume))]
    values = np.concatenate(samples)
    if values.size == 0:
        return 0.0, 1.0
    lo, hi = (float(v) for v in np.percentile(values, PERCENTILES))
    return lo, hi if hi > lo else lo + 1
