"""blockfs: a block store for large 3D volumes, written in parallel into a few shard files."""

from typing import Any

from .codec import Compression
from .directory import Directory
from .errors import (
    AttachError,
    BlockCoordinateError,
    BlockfsError,
    BlockfsWarning,
    BlockShapeError,
    ChecksumError,
    ClosedError,
    CorruptBlockError,
    DatasetExistsError,
    EntryOverflowError,
    ExportError,
    ForeignShardError,
    FormatError,
    IncompleteVolumeWarning,
    InvalidArgumentError,
    LostBlocksWarning,
    MissingDependencyError,
    MissingShardError,
    NotCreatedError,
    OpenServerWarning,
    PlaneCountError,
    PlaneError,
    PlaneMismatchError,
    ReadOnlyError,
    RegionError,
    RemoteReadError,
    ShardLocationWarning,
    StaleVolumeError,
    UnsupportedCompressionError,
    UnsupportedDTypeError,
    VolumeBusyError,
    VolumeExistsError,
    WriterError,
)
from .selection import BlockProjection
from .volume import Volume, open_volume
from .writable import WritableVolume, create_volume, open_writable

__version__ = "1.0.0"


def open_zarr(path: str, zarr_format: int = 3) -> Any:
    """A read-only zarr-python array over a volume, or an OME-Zarr group over a pyramid folder (needs zarr)."""
    from .interop.tools import load
    return load("store").open_zarr(path, zarr_format)


def write_dask(array: Any, path: str, **kwargs: Any) -> Directory:
    """Write a 3D dask array as a new volume, in parallel on any dask scheduler (needs dask); return it opened
    read-only. ``kwargs`` are :class:`Directory`'s for the volume (``n_filenames``, ``x_block_size``, ...) and
    :func:`blockfs.interop.dask_io.write_dask`'s (``overwrite``, ``compute_kwargs``, ...)."""
    from .interop.tools import load
    block_shape = tuple(kwargs.pop(f"{axis}_block_size", 64) for axis in "zyx")
    strides = tuple(kwargs.pop(f"{axis}_stride", None) for axis in "zyx")
    count, names = kwargs.pop("n_filenames", None), kwargs.pop("block_filenames", None)
    load("dask_io").write_dask(array, path, block_shape=block_shape, strides=strides,
                               shards=count if names is None else names, **kwargs)
    return Directory.open(path)


__all__ = [
    "AttachError", "BlockCoordinateError", "BlockProjection", "BlockShapeError", "BlockfsError", "BlockfsWarning",
    "ChecksumError", "ClosedError", "Compression", "CorruptBlockError", "DatasetExistsError", "Directory",
    "EntryOverflowError", "ExportError", "ForeignShardError", "FormatError", "IncompleteVolumeWarning",
    "InvalidArgumentError", "LostBlocksWarning", "MissingDependencyError", "MissingShardError", "NotCreatedError",
    "OpenServerWarning", "PlaneCountError", "PlaneError", "PlaneMismatchError", "ReadOnlyError", "RegionError",
    "RemoteReadError", "ShardLocationWarning", "StaleVolumeError", "UnsupportedCompressionError",
    "UnsupportedDTypeError", "Volume", "VolumeBusyError", "VolumeExistsError", "WritableVolume", "WriterError",
    "__version__", "create_volume", "open_volume", "open_writable", "open_zarr", "write_dask",
]
