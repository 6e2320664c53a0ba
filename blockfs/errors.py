"""The blockfs exception hierarchy.

Every error subclasses :class:`BlockfsError` and the builtin it resembles, so callers may catch
either. Messages name the file, the offending value and the fix.
"""


class BlockfsError(Exception):
    """Base class of every error raised by blockfs."""


class InvalidArgumentError(BlockfsError, ValueError):
    """An argument has a value blockfs cannot use."""


class FormatError(BlockfsError, ValueError):
    """A file is not a blockfs 1.0.0 directory file, or its header is damaged."""


class UnsupportedDTypeError(BlockfsError, TypeError):
    """The data type cannot be stored in a blockfs volume."""


class UnsupportedCompressionError(BlockfsError, ValueError):
    """The compressor is unknown or not built into this blosc."""


class BlockShapeError(BlockfsError, ValueError):
    """A block's shape does not match the block at the given coordinates."""


class BlockCoordinateError(BlockfsError, IndexError):
    """Block coordinates are not on the block grid or lie outside the volume."""


class RegionError(BlockfsError, IndexError):
    """An index or region cannot be read from or written to the volume."""


class EntryOverflowError(BlockfsError, OverflowError):
    """An offset or size does not fit the bits of an index entry."""


class CorruptBlockError(BlockfsError, ValueError):
    """An index entry points at bytes that are not a valid block."""


class MissingShardError(BlockfsError, FileNotFoundError):
    """A shard file that holds written blocks cannot be found."""


class VolumeExistsError(BlockfsError, FileExistsError):
    """A volume already exists where a new one was to be created."""


class ReadOnlyError(BlockfsError, PermissionError):
    """A write was attempted on a volume that is open read-only or not writable."""


class WriterError(BlockfsError, RuntimeError):
    """A writer process died or failed; its shard and the cause are in the message."""


class ClosedError(BlockfsError, ValueError):
    """The volume was used after close()."""


class NotCreatedError(BlockfsError, RuntimeError):
    """A Directory was used before ``create()`` made its volume (and none is at its path to attach to)."""


class AttachError(BlockfsError, RuntimeError):
    """A Directory built in a worker process cannot use the volume at its path (missing, or another
    layout), or create() ran while multiprocessing imported the main module in a new process."""


class ChecksumError(CorruptBlockError):
    """A block's record or bytes fail their checksum, or the record belongs to another block."""


class PlaneError(BlockfsError, ValueError):
    """A plane does not fit the volume a PlaneWriter writes (shape or dtype)."""


class PlaneCountError(PlaneError):
    """A PlaneWriter received more or fewer planes than its z range holds."""


class PlaneMismatchError(BlockfsError, ValueError):
    """A TIFF file of a stack differs from the others in shape or dtype, or is not one 2-D plane."""


class ExportError(BlockfsError, RuntimeError):
    """An export could not write its output (a plane file, an HDF5 dataset); the file and cause are named."""


class DatasetExistsError(BlockfsError, FileExistsError):
    """The HDF5 file already holds an object under the dataset's name."""


class MissingDependencyError(BlockfsError, ImportError):
    """An optional package a feature needs (zarr, dask for blockfs.interop) is not installed."""


class RemoteReadError(BlockfsError, OSError):
    """A volume read by URL could not be read: the server failed, or the connection did, past the retries."""


class VolumeBusyError(BlockfsError, BlockingIOError):
    """The volume is open for writing elsewhere, or an offline operation (repair, mv, rebase, create over
    it) holds it; the operation that needed it alone, or the write, is refused."""


class StaleVolumeError(BlockfsError, RuntimeError):
    """The volume's index file was replaced (by create, repair, rebase) after this object opened it."""


class ForeignShardError(BlockfsError, PermissionError):
    """A move would remove a file that is not the volume's own: outside its index's folder, a symbolic link, or
    named by another index file there."""


class BlockfsWarning(UserWarning):
    """Base class of every warning blockfs gives, such as clipping out-of-range values."""


class IncompleteVolumeWarning(BlockfsWarning):
    """A volume was opened that the tool writing it has not finished (interrupted, or still running)."""


class LostBlocksWarning(BlockfsWarning):
    """A volume was opened whose blocks repair could not save (they read as zeros until rewritten)."""


class ShardLocationWarning(BlockfsWarning):
    """A shard is read from somewhere other than where the index names it, or from outside the volume's folder
    though a copy sits beside it (a volume moved or copied by hand; blockfs-rebase fixes the names)."""


class OpenServerWarning(BlockfsWarning):
    """A server listens on an address other than loopback: anyone who can reach it may read what it serves."""


#: What a user can cause (a bad argument, a damaged or missing file, a full disk): every tool prints it as
#: ``prog: file: reason`` and exits 1. Anything else is a bug in blockfs and shows its traceback.
USER_ERRORS = (BlockfsError, OSError)


def describe(exc: BaseException) -> str:
    """``file: reason`` for an error (blockfs messages already start with their file)."""
    if isinstance(exc, OSError) and not isinstance(exc, BlockfsError) and exc.filename is not None:
        return f"{exc.filename}: {exc.strerror or exc}"
    return str(exc)
