"""Small volumes for tests: written through the library, with the array they must read as."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from blockfs import Directory


def make_volume(folder: Path, shape: tuple[int, int, int] = (70, 90, 100), block: tuple[int, int, int] = (32, 32, 32),
                dtype: str = "uint16", n_files: int = 2, missing: tuple[tuple[int, int, int], ...] = (),
                metadata: dict | None = None, name: str = "volume.blockfs", seed: int = 0) -> tuple[Path, np.ndarray]:
    """Write a random volume of ``shape`` (z, y, x) and return (directory path, expected array).

    Blocks whose first voxel (x, y, z) is in ``missing`` are left unwritten and read as zeros.
    """
    rng = np.random.default_rng(seed)
    info = np.iinfo(dtype) if np.dtype(dtype).kind in "ui" else None
    expected = (rng.integers(0, min(info.max, 4000) + 1, shape).astype(dtype) if info is not None
                else rng.standard_normal(shape).astype(dtype))
    path = Path(folder) / name
    d = Directory(shape[2], shape[1], shape[0], dtype, str(path), n_filenames=n_files, z_block_size=block[0],
                  y_block_size=block[1], x_block_size=block[2], metadata=metadata)
    d.create()
    for z in range(0, shape[0], block[0]):
        for y in range(0, shape[1], block[1]):
            for x in range(0, shape[2], block[2]):
                region = (slice(z, z + block[0]), slice(y, y + block[1]), slice(x, x + block[2]))
                if (x, y, z) in missing:
                    expected[region] = 0
                else:
                    d.write_block(expected[region], x, y, z)
    d.close()
    return path, expected
