"""blockfs: a block store for large 3D volumes, written in parallel into a few shard files."""

from typing import Any

from .codec import Compression
from .directory import Directory
from .errors import (BlockCoordinateError, BlockfsError, BlockShapeError, ChecksumError, ClosedError,
                     CorruptBlockError, EntryOverflowError, FormatError, InvalidArgumentError, MissingShardError,
                     ReadOnlyError, RegionError, UnsupportedCompressionError, UnsupportedDTypeError,
                     VolumeExistsError, WriterError)

__version__ = "1.0.0"


def open_zarr(path: str, zarr_format: int = 3) -> Any:
    """A read-only zarr-python array over a volume, or an OME-Zarr group over a pyramid folder (needs zarr)."""
    from .interop.store import open_zarr as open_view
    return open_view(path, zarr_format)


def write_dask(array: Any, path: str, **kwargs: Any) -> Directory:
    """Write a 3D dask array as a new volume, in parallel on any dask scheduler (needs dask); see
    :func:`blockfs.interop.dask_io.write_dask`."""
    from .interop.dask_io import write_dask as write
    return write(array, path, **kwargs)


__all__ = [
    "BlockCoordinateError", "BlockShapeError", "BlockfsError", "ChecksumError", "ClosedError", "Compression",
    "CorruptBlockError", "Directory", "EntryOverflowError", "FormatError", "InvalidArgumentError",
    "MissingShardError", "ReadOnlyError", "RegionError", "UnsupportedCompressionError", "UnsupportedDTypeError",
    "VolumeExistsError", "WriterError", "__version__", "open_zarr", "write_dask",
]
