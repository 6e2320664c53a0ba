"""The npe2 reader: a blockfs volume or pyramid folder as one lazy napari layer.

The layer's data is :func:`~blockfs.interop.dask_io.to_dask` of each level (one chunk per block, or per
few blocks on a level of more than :data:`MAX_CHUNKS` blocks; read only when napari shows it): a pyramid
is a multiscale layer, finest level first. Its scale is the voxel size (z, y, x) in micrometres, its name
the file's or folder's, its contrast that of ``blockfs view`` (:func:`~blockfs.ops.contrast.contrast`).
uint32 and uint64 volumes, and segmentation pyramids, open as labels. A block that does not decode reads as
zeros and is reported in napari's notification area.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from ..errors import CorruptBlockError
from ..format import is_volume
from ..interop.dask_io import to_dask
from ..interop.zarr_format import open_source
from ..ops.contrast import contrast
from ..pyramid.folder import is_pyramid, read_info
from ..volume import Volume

#: Layer data as napari takes it from a reader: (data, layer keyword arguments, layer type).
LayerData = tuple[Any, dict[str, Any], str]
#: Chunks of a level's dask array at most (about): napari computes a slice several times while it opens a
#: layer, and dask's cost of each grows with the chunks of the array (see to_dask).
MAX_CHUNKS = 2**14
#: The dtypes that open as a labels layer (and that the labels writer writes).
LABEL_DTYPES = (np.dtype(np.uint32), np.dtype(np.uint64))


def get_reader(path: str | list[str]) -> Callable[[str | list[str]], list[LayerData]] | None:
    """npe2 reader hook: :func:`read` if every path is a blockfs volume or pyramid folder, else None."""
    paths = [path] if isinstance(path, str) else path
    return read if paths and all(is_volume(p) or is_pyramid(p) for p in paths) else None


def read(path: str | list[str]) -> list[LayerData]:
    """One layer per volume or pyramid folder in ``path``."""
    return [layer_data(p) for p in ([path] if isinstance(path, str) else path)]


def report_damage(error: CorruptBlockError) -> None:
    """Show a block that does not decode in napari's notification area."""
    from napari.utils.notifications import show_error
    show_error(f"{error} (shown as zeros)")


def display_range(volume: Volume) -> tuple[float, float]:
    """:func:`contrast` of the finest level; if a block it samples is damaged, that is reported and the range is
    the dtype's (0 to its largest integer, or 0 to 1)."""
    try:
        return contrast(volume)
    except CorruptBlockError as error:
        report_damage(error)
        return 0.0, float(np.iinfo(volume.dtype).max) if volume.dtype.kind in "ui" else 1.0


def is_labels(path: str, dtype: np.dtype) -> bool:
    """Whether the volume or pyramid at ``path`` opens as labels: a segmentation pyramid, or a label dtype."""
    if is_pyramid(path):
        return read_info(path).get("type") == "segmentation"
    return dtype in LABEL_DTYPES


def layer_data(path: str) -> LayerData:
    """The layer of the volume or pyramid folder at ``path``."""
    source = open_source(path)
    levels = [to_dask(level, damaged=report_damage, max_chunks=MAX_CHUNKS) for level in source.levels]
    data = levels if source.is_pyramid else levels[0]
    options: dict[str, Any] = {"name": source.name, "scale": source.voxel_sizes_um[0], "units": "micrometer",
                               "multiscale": source.is_pyramid}
    if is_labels(path, source.levels[0].dtype):
        return data, options, "labels"
    return data, {**options, "contrast_limits": display_range(source.levels[0])}, "image"
