"""Test volumes and pyramids for the server tests."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from blockfs import Directory
from blockfs.serve import Server, start

#: Blocks left unwritten in every level (chunk coordinates z, y, x, where they are on the grid).
MISSING = {(1, 1, 1), (0, 2, 0)}
#: The served volume of the HTTP tests (the ``volume`` and ``server`` fixtures), in (z, y, x).
BLOCK = (16, 24, 32)
SHAPE = (40, 60, 80)  # grid (3, 3, 3), edge blocks on every axis; chunk (1, 1, 1) never written


def volume_data(shape: tuple[int, int, int], seed: int = 0) -> np.ndarray:
    """Smooth uint16 data with noise: compressible like microscopy, no two blocks alike."""
    z, y, x = np.meshgrid(*(np.arange(n) for n in shape), indexing="ij")
    smooth = 1000 + 300 * np.sin(x / 7.0) + 200 * np.cos(y / 5.0) + 10 * z
    noise = np.random.default_rng(seed).integers(0, 50, shape)
    return (smooth + noise).astype(np.uint16)


def write_volume(path: Path, data: np.ndarray, block: tuple[int, int, int], missing: set = MISSING,
                 **kwargs: object) -> np.ndarray:
    """Write ``data`` as a volume with (z, y, x) ``block``s, leaving ``missing`` chunks unwritten.

    Returns what the volume reads as: ``data`` with the missing blocks zeroed.
    """
    expected = data.copy()
    d = Directory(data.shape[2], data.shape[1], data.shape[0], data.dtype, str(path), x_block_size=block[2],
                  y_block_size=block[1], z_block_size=block[0], **kwargs)
    d.create()
    for cz in range(-(-data.shape[0] // block[0])):
        for cy in range(-(-data.shape[1] // block[1])):
            for cx in range(-(-data.shape[2] // block[2])):
                region = tuple(slice(c * b, (c + 1) * b) for c, b in zip((cz, cy, cx), block))
                if (cz, cy, cx) in missing:
                    expected[region] = 0
                else:
                    d.write_block(data[region], cx * block[2], cy * block[1], cz * block[0])
    d.close()
    return expected


def write_pyramid(root: Path, data: np.ndarray, block: tuple[int, int, int], n_levels: int,
                  voxel_size_um: tuple[float, float, float] = (0.5, 0.5, 2.0), missing: set = MISSING
                  ) -> list[np.ndarray]:
    """A pyramid folder as VIEWING-NOTES section 1 lays it out; levels are strided subsamples.

    Returns each level as it reads (missing blocks zeroed), finest first.
    """
    root.mkdir()
    scales, levels = [], []
    for level in range(n_levels):
        f = 2 ** level
        key = f"{f}_{f}_{f}"
        (root / key).mkdir()
        sub = np.ascontiguousarray(data[::f, ::f, ::f])
        levels.append(write_volume(root / key / "precomputed.blockfs", sub, block, missing,
                                   metadata={"voxel_size_um": [v * f for v in voxel_size_um]}))
        scales.append({"key": key, "size": [sub.shape[2], sub.shape[1], sub.shape[0]],
                       "resolution": [v * f * 1000 for v in voxel_size_um], "chunk_sizes": [list(block[::-1])],
                       "encoding": "raw", "voxel_offset": [0, 0, 0]})
    info = {"data_type": data.dtype.name, "num_channels": 1, "type": "image", "scales": scales}
    (root / "info").write_text(json.dumps(info))
    return levels


@pytest.fixture
def volume(tmp_path: Path) -> Path:
    """The HTTP tests' volume: ``volume_data(SHAPE)`` in ``BLOCK``s with records, ``MISSING`` unwritten."""
    write_volume(tmp_path / "vol.blockfs", volume_data(SHAPE), BLOCK, records=True)
    return tmp_path / "vol.blockfs"


@pytest.fixture
def server(volume: Path) -> Iterator[Server]:
    """A running server of ``volume``."""
    with start(volume) as running:
        yield running
