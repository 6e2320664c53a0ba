"""blockfs: a block store for large 3D volumes, written in parallel into a few shard files."""

import os
from typing import Any

from .codec import Compression
from .directory import Directory
from .errors import (AttachError, BlockCoordinateError, BlockfsError, BlockfsWarning, BlockShapeError, ChecksumError,
                     ClosedError, CorruptBlockError, DatasetExistsError, EntryOverflowError, ExportError,
                     ForeignShardError, FormatError, IncompleteVolumeWarning, InvalidArgumentError, LostBlocksWarning,
                     MissingDependencyError, MissingShardError, NotCreatedError, OpenServerWarning, PlaneCountError, PlaneError,
                     PlaneMismatchError, ReadOnlyError, RegionError, ShardLocationWarning, StaleVolumeError,
                     UnsupportedCompressionError, UnsupportedDTypeError, VolumeBusyError, VolumeExistsError,
                     WriterError)

from .volume import BlockProjection, Volume, open_volume
from .writable import WritableVolume, create_volume, open_writable

__version__ = "1.0.0"


def open_zarr(path: str, zarr_format: int = 3) -> Any:
    """A read-only zarr-python array over a volume, or an OME-Zarr group over a pyramid folder (needs zarr)."""
    from .interop.tools import load
    return load("store").open_zarr(path, zarr_format)


def write_dask(array: Any, path: str, **kwargs: Any) -> Directory:
    """Write a 3D dask array as a new volume, in parallel on any dask scheduler (needs dask); see
    :func:`blockfs.interop.dask_io.write_dask`."""
    from .interop.tools import load
    return load("dask_io").write_dask(array, path, **kwargs)


__all__ = [
    "AttachError", "BlockCoordinateError", "BlockProjection", "BlockShapeError", "BlockfsError", "BlockfsWarning",
    "ChecksumError", "ClosedError", "Compression", "CorruptBlockError", "DatasetExistsError", "Directory",
    "EntryOverflowError", "ExportError", "ForeignShardError", "FormatError", "IncompleteVolumeWarning",
    "InvalidArgumentError", "LostBlocksWarning", "MissingDependencyError", "MissingShardError", "NotCreatedError", "OpenServerWarning",
    "PlaneCountError", "PlaneError", "PlaneMismatchError", "ReadOnlyError", "RegionError", "ShardLocationWarning",
    "StaleVolumeError", "UnsupportedCompressionError", "UnsupportedDTypeError", "Volume", "VolumeBusyError",
    "VolumeExistsError", "WritableVolume", "WriterError", "__version__", "create_volume", "open_volume", "open_writable",
    "open_zarr", "write_dask",
]
