"""blockfs: a block store for large 3D volumes, written in parallel into a few shard files."""

from .codec import Compression
from .directory import Directory
from .errors import (AttachError, BlockCoordinateError, BlockfsError, BlockShapeError, ChecksumError, ClosedError,
                     CorruptBlockError, EntryOverflowError, FormatError, InvalidArgumentError, MissingShardError,
                     ReadOnlyError, RegionError, UnsupportedCompressionError, UnsupportedDTypeError,
                     VolumeExistsError, WriterError)

__version__ = "1.0.0"

__all__ = [
    "AttachError", "BlockCoordinateError", "BlockShapeError", "BlockfsError", "ChecksumError", "ClosedError",
    "Compression", "CorruptBlockError", "Directory", "EntryOverflowError", "FormatError", "InvalidArgumentError",
    "MissingShardError", "ReadOnlyError", "RegionError", "UnsupportedCompressionError", "UnsupportedDTypeError",
    "VolumeExistsError", "WriterError", "__version__",
]
