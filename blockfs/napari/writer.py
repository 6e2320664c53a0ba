"""The npe2 writers: an image or labels layer saved as a new blockfs volume, with napari's progress bar.

The layer's data (the finest level of a multiscale layer; a 2D layer as one plane) is written block row by
block row straight into the shards (:class:`~blockfs.writable.WritableVolume`), so memory holds one row of
blocks at a time; the layer's scale becomes the volume's voxel size in micrometres.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from ..errors import InvalidArgumentError
from ..interop.zarr_format import VOXEL_SIZE_KEY
from ..writable import create_volume

#: Block shape (z, y, x) of a saved volume.
BLOCK_SHAPE = (64, 64, 64)


def write_image(path: str, data: Any, meta: dict[str, Any]) -> list[str]:
    """npe2 writer hook for an image layer: a volume at ``path`` of the layer's dtype."""
    array = finest(data, meta)
    return [write_volume(path, array, meta.get("scale"), np.dtype(array.dtype))]


def write_labels(path: str, data: Any, meta: dict[str, Any]) -> list[str]:
    """npe2 writer hook for a labels layer: a uint32 volume at ``path``, uint64 for labels of more than 4 bytes."""
    array = finest(data, meta)
    dtype = np.dtype(np.uint64 if array.dtype.itemsize > 4 else np.uint32)
    return [write_volume(path, array, meta.get("scale"), dtype)]


def finest(data: Any, meta: dict[str, Any]) -> Any:
    """A layer's full-resolution array: the first level of a multiscale layer."""
    return data[0] if meta.get("multiscale") else data


def voxel_size_um(scale: Any, ndim: int) -> list[float]:
    """The (x, y, z) voxel size of a layer's (z, y, x) or (y, x) ``scale``; 1 where it has none."""
    sizes = [1.0] * (3 - ndim) + [float(s) for s in (scale if scale is not None else [1.0] * ndim)]
    return sizes[::-1]


def write_volume(path: str, array: Any, scale: Any, dtype: np.dtype) -> str:
    """Write the 2D or 3D ``array`` as a volume of ``dtype`` at ``path``; return ``path``."""
    from napari.utils import progress
    from napari.utils.notifications import show_info
    if array.ndim not in (2, 3):
        raise InvalidArgumentError(f"{path}: a blockfs volume is 3D (z, y, x); the layer has {array.ndim} "
                                   f"dimensions {tuple(array.shape)}.")
    size = voxel_size_um(scale, array.ndim)
    array = array if array.ndim == 3 else array[None]
    (nz, ny, _), (bz, by, _) = array.shape, BLOCK_SHAPE
    with create_volume(path, array.shape, dtype, BLOCK_SHAPE, metadata={VOXEL_SIZE_KEY: size}) as volume, \
            progress(total=-(-nz // bz) * -(-ny // by), desc=f"saving {os.path.basename(path)}") as bar:
        for z in range(0, nz, bz):
            for y in range(0, ny, by):
                volume[z:z + bz, y:y + by] = np.asarray(array[z:z + bz, y:y + by])
                bar.update(1)
    show_info(f"saved {path}")
    return path
