"""Directory: the classic face of one blockfs volume, delegating to Volume and WritableVolume."""

from __future__ import annotations

import multiprocessing
import os
import threading
from collections.abc import Callable
from typing import Any

import numpy as np

from . import format as fmt
from .codec import Compression
from .errors import ClosedError, InvalidArgumentError, NotCreatedError, ReadOnlyError, VolumeExistsError
from .selection import block_entry
from .store import BlockStore, spec_for
from .volume import Volume, open_volume
from .writable import BlockSink, WritableVolume, create_from_layout, new_layout, open_matching, open_writable, positive

MODES = ("r", "r+")

_attach_lock = threading.Lock()


def _from_layout(name: str) -> property:
    """A read-only attribute that mirrors one field of the volume's header."""
    return property(lambda self: getattr(self._layout, name), doc=f"The header's {name}.")


def _reopen(path: str, mode: str, verify: bool, durable: bool) -> Directory:
    return Directory.open(path, mode, verify=verify, durable=durable)


class Directory:
    """A blockfs 1.0.0 volume: an index file mapping blocks to (shard, offset, size), and shards.

    Coordinates passed to block calls are the block's first voxel in (x, y, z) order; arrays and
    ``shape`` are in (z, y, x) order. Create a new volume with ``Directory(...).create()``, or
    open an existing one with ``Directory.open(path, mode)``.

    Beyond the classic arguments: ``records`` writes a checksummed record before each block
    (readers of plain 1.0.0 are unaffected), ``verify`` checks those records on every read, and
    ``durable=False`` skips the fsync at close() for scratch volumes.

    Shard names, the defaults ``"<directory_filename>.<i>"`` and any ``block_filenames`` given,
    are made absolute against the working directory when the Directory is constructed; those
    absolute names are what ``block_filenames`` returns and what the index file stores.

    A Directory is the compatibility face of the engine's objects: reads go to a :class:`Volume`,
    writes to a :class:`WritableVolume` (``Directory.writable``); new code can use those directly
    (``blockfs.open_volume``, ``blockfs.create_volume``, ``blockfs.open_writable``).
    """

    HEADER = fmt.MAGIC

    def __init__(self, x_extent: int, y_extent: int, z_extent: int, dtype: Any, directory_filename: str,
                 n_filenames: int | None = None, x_block_size: int = 64, y_block_size: int = 64,
                 z_block_size: int = 64, n_offset_bits: int | None = None, n_size_bits: int | None = None,
                 directory_offset: int | None = None, block_filenames: list[str] | None = None,
                 x_stride: int | None = None, y_stride: int | None = None, z_stride: int | None = None,
                 compression: Compression | str = Compression.zstd, compression_level: int = 5,
                 metadata: dict | None = None, records: bool = True, verify: bool = True, durable: bool = True):
        where = os.fspath(directory_filename)
        self._layout, self.directory_offset = new_layout(
            where, (z_extent, y_extent, x_extent), dtype, (z_block_size, y_block_size, x_block_size),
            n_filenames if block_filenames is None else block_filenames, compression=compression,
            compression_level=compression_level, metadata=metadata, records=records,
            strides=(z_stride, y_stride, x_stride), n_offset_bits=n_offset_bits, n_size_bits=n_size_bits,
            directory_offset=directory_offset)
        self._directory_offset_arg = directory_offset
        self._init(where, verify, durable, None, None)

    def _init(self, path: str, verify: bool, durable: bool, view: Volume | None, mode: str | None) -> None:
        self.directory_filename = path
        self.verify = verify
        self.durable = durable
        self._view = view
        self._mode = mode
        self._closed = False
        self._reads: Volume | None = None

    @classmethod
    def _of(cls, view: Volume, mode: str, durable: bool) -> Directory:
        """A Directory over an opened volume."""
        self = cls.__new__(cls)
        self._layout, self.directory_offset = view.layout, view.store.spec.directory_offset
        self._directory_offset_arg = None
        self._init(view.path, view.verify, durable, view, mode)
        return self

    # -- creating and opening ------------------------------------------------------------------

    def create(self, overwrite: bool = True, comm: Any = None, incomplete: str | None = None) -> Directory:
        """Write a new, empty volume (index, then empty shards) and open it for writing.

        What is replaced or refused, and ``incomplete``, are as in :func:`blockfs.create_from_layout`;
        with an MPI communicator ``comm`` the call is collective and every rank may write.
        """
        if comm is not None:
            from .parallel.collective import create_collective
            return self._take(create_collective(self._layout, self.directory_filename, comm, overwrite,
                                                self._directory_offset_arg, incomplete, self.verify, self.durable))
        self._check_open()
        if self._mode is not None:
            raise VolumeExistsError(f"{self.directory_filename}: this Directory is already created or opened.")
        return self._take(create_from_layout(self.directory_filename, self._layout, self._directory_offset_arg,
                                             overwrite, incomplete, self.verify, self.durable))

    def _take(self, view: WritableVolume) -> Directory:
        """Use ``view``, a volume just created or opened for writing, from now on."""
        self._view, self._mode = view, "r+"
        self._layout, self.directory_offset = view.layout, view.store.spec.directory_offset
        return self

    @classmethod
    def open(cls, directory_filename: str, mode: str = "r", verify: bool = True, durable: bool = True,
             comm: Any = None) -> Directory:
        """Open an existing volume; mode "r+" allows writing more blocks.

        With an MPI communicator ``comm`` the call is collective, and in mode "r+" every rank may
        write (blockfs.parallel)."""
        path = os.fspath(directory_filename)
        if mode not in MODES:
            raise InvalidArgumentError(f"{path}: mode must be one of {MODES}; got {mode!r}.")
        if comm is not None:
            from .parallel.collective import open_collective
            return cls._of(open_collective(path, mode, comm, verify, durable), mode, durable)
        view = open_writable(path, verify, durable) if mode == "r+" else open_volume(path, verify)
        return cls._of(view, mode, durable)

    def unsaved_blocks(self) -> list[tuple[int, int, int]]:
        """First voxels (x, y, z) of the blocks repair recorded as lost that are still unwritten."""
        return self.store.unsaved_blocks()

    def __reduce__(self) -> tuple:
        if self._mode is None:
            raise InvalidArgumentError(
                f"{self.directory_filename}: create() the volume before passing it to other processes.")
        return _reopen, (self.directory_filename, "r" if self._closed else self._mode, self.verify, self.durable)

    # -- attributes --------------------------------------------------------------------------

    x_extent = _from_layout("x_extent")
    y_extent = _from_layout("y_extent")
    z_extent = _from_layout("z_extent")
    x_block_size = _from_layout("x_block_size")
    y_block_size = _from_layout("y_block_size")
    z_block_size = _from_layout("z_block_size")
    x_stride = _from_layout("x_stride")
    y_stride = _from_layout("y_stride")
    z_stride = _from_layout("z_stride")
    n_offset_bits = _from_layout("n_offset_bits")
    n_size_bits = _from_layout("n_size_bits")
    compression_level = _from_layout("compression_level")
    dtype = _from_layout("dtype")
    shape = _from_layout("shape")
    records = _from_layout("records")
    layout = property(lambda self: self._layout, doc="Everything the directory file's header says, as one value.")

    @property
    def compression(self) -> Compression:
        return Compression(self._layout.compression)

    @property
    def block_filenames(self) -> list[str]:
        """Shard names as stored in the index file."""
        return list(self._layout.block_filenames)

    @property
    def metadata(self) -> dict[str, Any]:
        """Application metadata: the JSON keys that are not part of the format."""
        return dict(self._layout.metadata)

    @property
    def shard_paths(self) -> list[str]:
        """Where the shard files are, as resolved when the volume was opened."""
        return list(self._view.store.spec.shard_paths if self._view is not None else self._layout.block_filenames)

    @property
    def writable(self) -> WritableVolume:
        """The engine object this Directory's writes go to."""
        self._check_writable()
        assert isinstance(self._view, WritableVolume)
        return self._view

    def cast(self, array: Any, what: str) -> np.ndarray:
        """``array`` as this volume's dtype by the casting rule of :mod:`blockfs.casting` (clips, never wraps)."""
        return self.writable.cast(array, what)

    @property
    def clipped_values(self) -> int:
        """How many values this object's writes clipped to the dtype's range (NaN counted), so far."""
        return self._view.clipped_values if isinstance(self._view, WritableVolume) else 0

    @property
    def store(self) -> BlockStore:
        """The volume's block store in this process (its spec pickles cheaply to other processes)."""
        return self._readable().store

    @property
    def mode(self) -> str | None:
        """"r", "r+", or None before ``create()``."""
        return self._mode

    @property
    def writers(self) -> list:
        """The writer processes (each with ``q_in``) started by ``start_writer_processes()``."""
        return self._view.writers if isinstance(self._view, WritableVolume) else []

    def __repr__(self) -> str:
        z, y, x = self._layout.block_shape
        return (f"<blockfs.Directory {self.directory_filename!r} shape (z, y, x)={self.shape} {self.dtype.name} "
                f"blocks {z}x{y}x{x} {self._layout.compression}:{self.compression_level} "
                f"{len(self.block_filenames)} shards mode={self._mode}{' closed' if self._closed else ''}>")

    def get_block_size(self, x: int, y: int, z: int) -> tuple[int, int, int]:
        """Shape (z, y, x) of the block at (x, y, z), truncated at the volume's edges."""
        block_entry(self._layout, self.directory_filename, x, y, z)
        return self._layout.block_shape_at(x, y, z)

    def offsetof(self, x: int, y: int, z: int) -> int:
        """Byte position in the index file of the entry for the block at (x, y, z)."""
        entry = block_entry(self._layout, self.directory_filename, x, y, z)
        return self._layout.entry_position(entry, self.directory_offset)

    # -- writing -------------------------------------------------------------------------------

    def start_writer_processes(self, queue_depth: int = 10) -> None:
        """Start one writer process per shard (at most ``queue_depth`` blocks wait per writer)."""
        self.writable.start_writers(positive("queue_depth", queue_depth))

    def write_through(self, make_sink: Callable[[BlockStore], BlockSink]) -> Directory:
        """Hand this process's writes to ``make_sink(store)`` (an MPI collective writer, say).

        A Directory neither created nor opened in this process (an MPI rank other than the one that
        created the volume) first takes the volume's files as its arguments name them, for writing.
        """
        self._check_open()
        if self._mode is None:
            spec = spec_for(self.directory_filename, self._layout, self.directory_offset, True, self.durable,
                            resolve=False)
            self._take(WritableVolume(BlockStore(spec), self.verify))
        self.writable.write_through(make_sink)
        return self

    def write_block(self, block: Any, x: int, y: int, z: int) -> None:
        """Write one block (a (z, y, x) array) whose first voxel is (x, y, z); see
        :meth:`WritableVolume.write_block`."""
        self.writable.write_block(block, x, y, z)

    def __setitem__(self, key: Any, value: Any) -> None:
        """Write a region made of whole blocks: ``d[z0:z1, y0:y1, x0:x1] = array``."""
        self.writable[key] = value

    def write_block_payload(self, payload: bytes, x: int, y: int, z: int) -> None:
        """Store already-compressed blosc bytes (as ``read_block_payload`` returns them) as the block at (x, y, z);
        see :meth:`WritableVolume.write_block_payload`."""
        self.writable.write_block_payload(payload, x, y, z)

    # -- reading -------------------------------------------------------------------------------

    @property
    def volume(self) -> Volume:
        """The read-only, thread-safe, cheaply pickled view that serves this Directory's reads."""
        store = self._readable().store
        if self._reads is None or self._reads.store is not store:
            self._reads = Volume(store, self.verify)
        return self._reads

    def read_block(self, x: int, y: int, z: int) -> np.ndarray:
        """The block whose first voxel is (x, y, z), as a (z, y, x) array; zeros if never written."""
        return self.volume.read_block(x, y, z)

    def read_block_payload(self, x: int, y: int, z: int) -> bytes | None:
        """The stored (blosc-compressed) bytes of the block at (x, y, z), checked; None if never written.
        A full-size block's payload is a valid zarr v2 chunk with a blosc compressor."""
        return self.volume.read_block_payload(x, y, z)

    def __getitem__(self, key: Any) -> np.ndarray:
        """Read any region with numpy basic indexing in (z, y, x) order; unwritten blocks read as 0."""
        return self.volume.read(key)

    def read_into(self, out: np.ndarray, key: Any = ...) -> np.ndarray:
        """Fill ``out`` with a region, allocating nothing per block; see :meth:`Volume.read_into`."""
        return self.volume.read_into(out, key)

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        return self.volume.__array__(dtype, copy)

    # -- helpers and lifetime ------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedError(f"{self.directory_filename}: the volume was closed for writing; reads still work, "
                              f"and Directory.open({self.directory_filename!r}, \"r+\") writes more blocks.")

    def _readable(self) -> Volume:
        if self._view is None:
            with _attach_lock:
                # A worker started by multiprocessing (the README pattern under spawn and forkserver)
                # re-imports a module-level Directory never create()d here: it joins the parent's volume.
                if self._view is None and multiprocessing.parent_process() is not None and not self._closed:
                    self._view = open_matching(self.directory_filename, self._layout, self.directory_offset,
                                               self.verify, self.durable)
                    self._mode = "r+" if self._view.store.spec.writable else "r"
        if self._view is None:
            raise NotCreatedError(f"{self.directory_filename}: the volume does not exist yet; call create() first.")
        return self._view

    def _check_writable(self) -> None:
        self._check_open()
        self._readable()
        if self._mode != "r+":
            raise ReadOnlyError(f"{self.directory_filename}: opened read-only; use Directory.open(path, mode='r+') "
                                "to write blocks.")

    def close(self) -> None:
        """Store every queued block, fsync, release the files; see :meth:`WritableVolume.close`.
        Reads keep working afterwards; calling it again does nothing."""
        if self._closed:
            return
        self._closed = True
        if self._view is not None:
            self._view.close()

    def __enter__(self) -> Directory:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def to_dask(self) -> Any:
        """A lazy dask array of the volume, one chunk per block (needs dask); see :mod:`blockfs.interop.dask_io`."""
        from .interop.tools import load
        return load("dask_io").to_dask(self.volume)
