"""Helpers for the interop tests: a small pyramid folder."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from volumes import make_volume

from blockfs import Directory


def make_pyramid(folder: Path, shape: tuple[int, int, int] = (45, 70, 83), block: tuple[int, int, int] = (16, 16, 16),
                 levels: int = 3, voxel_um: tuple[float, float, float] = (0.5, 0.5, 2.0),
                 missing: tuple[tuple[int, int, int], ...] = ((16, 0, 0),)) -> tuple[Path, list[np.ndarray]]:
    """A pyramid folder in the precomputed-tif layout (level i strided by 2^i); (root, arrays finest first).

    ``missing`` blocks (first voxel x, y, z) stay unwritten in level 0; ``voxel_um`` is (x, y, z).
    """
    folder.mkdir(parents=True, exist_ok=True)
    _, full = make_volume(folder, shape, block, missing=missing, name="source.blockfs", n_files=1)
    arrays, scales = [], []
    for i in range(levels):
        f = 2 ** i
        data = np.ascontiguousarray(full[::f, ::f, ::f])
        key = f"{f}_{f}_{f}"
        (folder / key).mkdir()
        path = folder / key / "precomputed.blockfs"
        d = Directory(data.shape[2], data.shape[1], data.shape[0], data.dtype, str(path), n_filenames=2,
                      z_block_size=block[0], y_block_size=block[1], x_block_size=block[2],
                      block_filenames=[str(path) + f".{k}" for k in range(2)],
                      metadata={"voxel_size_um": [v * f for v in voxel_um]})
        d.create()
        for z in range(0, data.shape[0], block[0]):
            for y in range(0, data.shape[1], block[1]):
                for x in range(0, data.shape[2], block[2]):
                    if i == 0 and (x, y, z) in missing:
                        continue
                    d.write_block(data[z:z + block[0], y:y + block[1], x:x + block[2]], x, y, z)
        d.close()
        arrays.append(data)
        scales.append({"key": key, "size": list(data.shape[::-1]), "resolution": [v * f * 1000 for v in voxel_um],
                       "chunk_sizes": [list(block[::-1])], "encoding": "raw", "voxel_offset": [0, 0, 0]})
    (folder / "info").write_text(json.dumps({"data_type": "uint16", "num_channels": 1, "type": "image",
                                             "scales": scales}))
    return folder, arrays
