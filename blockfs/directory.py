"""Directory: one blockfs volume, its index file and its shard files."""

from __future__ import annotations

import dataclasses
import json
import math
import multiprocessing
import operator
import os
import threading
import warnings
import weakref
from typing import Any, Callable, Protocol

import numpy as np

from . import format as fmt
from . import marks, records
from .casting import Caster
from .codec import Compression, check_compression, check_sizes
from .errors import (AttachError, BlockShapeError, ClosedError, CorruptBlockError, FormatError,
                     IncompleteVolumeWarning, InvalidArgumentError, LostBlocksWarning, ReadOnlyError, RegionError,
                     ShardLocationWarning, VolumeExistsError)
from .selection import select
from . import locking
from .storage import atomic_write, publish_index, resolve_shard_path, shadowing_copy
from .store import BlockStore, StoreSpec
from .volume import Volume, block_entry, projections
from .writer import WriterPool

MODES = ("r", "r+")


class BlockSink(Protocol):
    """Where ``write_block`` hands this process's blocks: the writer processes, or an MPI collective writer."""

    #: writer processes, each with ``q_in`` (empty when there are none)
    writers: list
    #: whether each shard is fsynced by the process that appended to it, so ``close()`` need not
    shards_synced_by_owners: bool

    @property
    def is_owner(self) -> bool:
        """Whether this process hands its blocks to the sink (else it appends them itself)."""

    def submit(self, block: np.ndarray, entry: int) -> None:
        """Take one C-contiguous block of the volume's dtype for entry ``entry``."""

    def close(self) -> None:
        """Return once every block taken is stored; raise if any could not be."""


def _positive(name: str, value: Any) -> int:
    try:
        number = operator.index(value)
    except TypeError:
        raise InvalidArgumentError(f"{name} must be a positive integer; got {value!r}.") from None
    if number < 1:
        raise InvalidArgumentError(f"{name} must be a positive integer; got {value!r}.")
    return number


def _check_metadata(metadata: dict | None) -> dict:
    if metadata is None:
        return {}
    if not isinstance(metadata, dict):
        raise InvalidArgumentError(f"metadata must be a dict of JSON values; got {type(metadata).__name__}.")
    clash = sorted(set(metadata) & set(fmt.RESERVED_KEYS))
    if clash:
        raise InvalidArgumentError(f"metadata keys {clash} are reserved by the blockfs format; rename them.")
    try:
        json.dumps(metadata)
    except (TypeError, ValueError) as exc:
        raise InvalidArgumentError(f"metadata must be JSON-serialisable ({exc}); convert arrays with .tolist().") from None
    return dict(metadata)


_attach_lock = threading.Lock()


def _from_layout(name: str) -> property:
    """A read-only attribute that mirrors one field of the volume's header."""
    return property(lambda self: getattr(self._layout, name), doc=f"The header's {name}.")


def _read_header(path: str) -> tuple[fmt.Layout, int, tuple[int, int]]:
    """(Layout, D, the file's identity) of the directory file at ``path``."""
    header = fmt.read_directory_file(path)
    return header.layout, header.directory_offset, header.identity


def _own_shards(index: str) -> set[str]:
    """Real paths of the shards named by the volume at ``index``; empty if it is not a readable volume."""
    try:
        layout = fmt.read_directory_file(index).layout
    except (OSError, FormatError):
        return set()
    return {os.path.realpath(resolve_shard_path(index, name).path) for name in layout.block_filenames}


def _foreign_file(index: str, shards: list[str]) -> str | None:
    """The first non-empty file at these paths that is neither a blockfs index nor a shard of the
    volume whose index is at ``index``: create() must not truncate it."""
    own = _own_shards(index)
    if os.path.exists(index) and os.path.getsize(index) and not own:
        return index
    for path in shards:
        if os.path.exists(path) and os.path.getsize(path) and os.path.realpath(path) not in own:
            return path
    return None


def _importing_main_in_worker() -> bool:
    """True while multiprocessing imports the main module in a new spawn/forkserver process."""
    return bool(getattr(multiprocessing.current_process(), "_inheriting", False))


def _reopen(path: str, mode: str, verify: bool, durable: bool) -> "Directory":
    return Directory.open(path, mode, verify=verify, durable=durable)


def _replace_with_empty_file(path: str) -> None:
    """Put a new empty file at ``path``; hard links to the old file (a pyramid's level 1, a copy) keep its bytes."""
    with atomic_write(path, durable=False):
        pass


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
    """

    HEADER = fmt.MAGIC

    def __init__(self, x_extent: int, y_extent: int, z_extent: int, dtype: Any, directory_filename: str,
                 n_filenames: int | None = None, x_block_size: int = 64, y_block_size: int = 64,
                 z_block_size: int = 64, n_offset_bits: int | None = None, n_size_bits: int | None = None,
                 directory_offset: int | None = None, block_filenames: list[str] | None = None,
                 x_stride: int | None = None, y_stride: int | None = None, z_stride: int | None = None,
                 compression: Compression | str = Compression.zstd, compression_level: int = 5,
                 metadata: dict | None = None, records: bool = True, verify: bool = True, durable: bool = True):
        where = str(directory_filename)
        extents = tuple(_positive(n, v) for n, v in
                        (("x_extent", x_extent), ("y_extent", y_extent), ("z_extent", z_extent)))
        sizes = tuple(_positive(n, v) for n, v in
                      (("x_block_size", x_block_size), ("y_block_size", y_block_size), ("z_block_size", z_block_size)))
        dt = fmt.check_dtype(dtype, where)
        compressor, level = check_compression(compression, compression_level, where)
        if block_filenames is None:
            count = _positive("n_filenames", multiprocessing.cpu_count() if n_filenames is None else n_filenames)
            block_filenames = [f"{directory_filename}.{i}" for i in range(count)]
        elif not block_filenames or not all(isinstance(n, (str, os.PathLike)) for n in block_filenames):
            raise InvalidArgumentError(f"{where}: block_filenames must be a non-empty list of paths; "
                                       f"got {block_filenames!r}.")
        defaults = fmt.default_strides(extents[0], extents[1], sizes[0], sizes[1])
        strides = tuple(d if s is None else _positive(n, s) for n, s, d in
                        zip(("x_stride", "y_stride", "z_stride"), (x_stride, y_stride, z_stride), defaults))
        offset_bits, size_bits = fmt.default_bit_widths(extents, sizes, strides, dt.itemsize, len(block_filenames),
                                                        bool(records))
        layout = fmt.Layout(
            x_extent=extents[0], y_extent=extents[1], z_extent=extents[2], dtype=dt,
            x_block_size=sizes[0], y_block_size=sizes[1], z_block_size=sizes[2],
            n_offset_bits=offset_bits if n_offset_bits is None else _positive("n_offset_bits", n_offset_bits),
            n_size_bits=size_bits if n_size_bits is None else _positive("n_size_bits", n_size_bits),
            x_stride=strides[0], y_stride=strides[1], z_stride=strides[2],
            block_filenames=tuple(os.path.abspath(os.fspath(n)) for n in block_filenames),
            compression=compressor, compression_level=level, metadata=_check_metadata(metadata),
            records=bool(records))
        fmt.check_limits(layout, len(fmt.encode_header(layout, directory_offset)), where, InvalidArgumentError)
        self._directory_offset_arg = directory_offset
        self._setup(os.fspath(directory_filename), layout,
                    len(fmt.encode_header(layout, directory_offset)), None, verify, durable)
        # A new volume's shards go where the caller names them, and are stored as absolute names.
        self._shard_candidates = [(name, [name]) for name in layout.block_filenames]

    def _setup(self, path: str, layout: fmt.Layout, directory_offset: int, mode: str | None, verify: bool,
               durable: bool, identity: tuple[int, int] | None = None) -> None:
        self.directory_filename = path
        self._identity = identity
        self.verify = verify
        self.durable = durable
        self._layout = layout
        self.directory_offset = directory_offset
        self._mode = mode
        resolved = [resolve_shard_path(path, name) for name in layout.block_filenames]
        self._shard_candidates = [(shard.path, shard.looked_at) for shard in resolved]
        for name, shard in zip(layout.block_filenames, resolved):
            if shard.fallback:
                warnings.warn(f"{path}: shard {name!r} not found; using {shard.path} beside the directory file "
                              "(run blockfs-rebase to record the new location)", ShardLocationWarning, stacklevel=3)
        self._store: BlockStore | None = None
        self._volume: Volume | None = None
        self._caster = Caster(layout.dtype, path)
        self._pool: BlockSink | None = None
        self._closed = False
        if mode is not None:
            self._store = BlockStore(self._spec(mode == "r+"))

    def _spec(self, writable: bool) -> StoreSpec:
        """The picklable description of this volume's files."""
        return StoreSpec(self.directory_filename, tuple(p for p, _ in self._shard_candidates), self._layout,
                         self.directory_offset, writable, self.durable,
                         tuple(tuple(looked) for _, looked in self._shard_candidates), self._identity)

    # -- creating and opening ------------------------------------------------------------------

    def create(self, overwrite: bool = True, comm: Any = None, incomplete: str | None = None) -> "Directory":
        """Write a new, empty volume: the index file and empty shard files.

        As in earlier releases, a volume (or empty files) already at these paths is replaced: the
        new index atomically replaces the old one, and only then are the shards emptied. Only the
        volume's own files are touched: a non-empty file that is neither a blockfs index nor a
        shard of the volume at this path is refused. ``overwrite=False`` refuses any existing file.
        A volume open for writing in any process is never replaced (:class:`VolumeBusyError`), and
        of two processes creating the same volume at once, one gets that error. With an MPI
        communicator ``comm`` the call is collective and every rank may write (blockfs.parallel).
        A tool that writes the whole volume passes ``incomplete="its name"``: the header says the
        volume is incomplete until :func:`blockfs.storage.mark_complete` (see docs/FORMAT.md).
        """
        if comm is not None:
            from .parallel.collective import create
            return create(self, comm, overwrite, incomplete=incomplete)
        self._check_open()
        if self._mode is not None:
            raise VolumeExistsError(f"{self.directory_filename}: this Directory is already created or opened.")
        index = self.directory_filename
        if _importing_main_in_worker():
            raise AttachError(f"{index}: create() ran while multiprocessing imported the main module in a new "
                              "worker process, and would replace the volume the parent is writing; put create() "
                              "under `if __name__ == \"__main__\":`.")
        shards = [p for p, _ in self._shard_candidates]
        existing = [p for p in [index, *shards] if os.path.exists(p)]
        if existing and not overwrite:
            raise VolumeExistsError(f"{existing[0]}: already exists; remove the volume, choose another "
                                    "directory_filename, or call create() without overwrite=False to replace it.")
        foreign = _foreign_file(index, shards) if existing else None
        if foreign is not None:
            raise VolumeExistsError(f"{foreign}: not empty, and neither a blockfs directory file nor a shard of the "
                                    f"volume at {index}, so create() will not replace it; remove it or choose "
                                    "another directory_filename.")
        if incomplete is not None:
            self._layout = dataclasses.replace(self._layout, marks={marks.INCOMPLETE_KEY: marks.incomplete(incomplete)})
            self.directory_offset = len(fmt.encode_header(self._layout, self._directory_offset_arg))
        # First, so an old index never points into emptied shards; close() fsyncs the index of a durable volume.
        fd = publish_index(index, fmt.encode_header(self._layout, self.directory_offset), overwrite, "create()")
        try:
            self._replace_shards(shards, index, bool(existing))
            fd = locking.reopen_shared(fd, index, "create() emptied the shards")
        except BaseException:
            os.close(fd)
            raise
        self._mode = "r+"
        self._store = BlockStore(self._spec(True))
        self._store.adopt_index(fd)
        self._identity = self._store.spec.index_identity
        return self

    @staticmethod
    def _replace_shards(shards: list[str], index: str, existed: bool) -> None:
        """New empty shard files; if that fails and nothing was there before, remove what was made."""
        made = [index]
        try:
            for path in shards:
                _replace_with_empty_file(path)
                made.append(path)
        except OSError:
            if not existed:  # leave nothing half-made behind, so a re-run can start over
                for path in made:
                    os.remove(path)
            raise

    @classmethod
    def open(cls, directory_filename: str, mode: str = "r", verify: bool = True, durable: bool = True,
             comm: Any = None) -> "Directory":
        """Open an existing volume: ``mode="r"`` to read, ``"r+"`` to read and write blocks.

        With an MPI communicator ``comm`` the call is collective, and in mode "r+" every rank may
        write (blockfs.parallel)."""
        if comm is not None:
            from .parallel.collective import open_volume
            return open_volume(directory_filename, mode, comm, verify, durable)
        path = os.fspath(directory_filename)
        if mode not in MODES:
            raise InvalidArgumentError(f"{path}: mode must be one of {MODES}; got {mode!r}.")
        layout, start, identity = _read_header(path)
        self = cls.__new__(cls)
        self._setup(path, layout, start, mode, verify, durable, identity)
        for name, (found, _) in zip(layout.block_filenames, self._shard_candidates):
            copy = shadowing_copy(path, name, found)
            if copy is not None:
                warnings.warn(f"{path}: shard {name!r} lies outside this volume's folder, though {copy} sits beside "
                              "it; if the volume was copied (cp -r), it is using the original's shards. Run "
                              f"blockfs-rebase {path} to use its own.", ShardLocationWarning, stacklevel=2)
        if mode == "r+":
            self._check_writable_files()
            self._store.index_fd()  # the shared lock of a writer: refused during repair, mv, rebase
        self._warn_marks()
        return self

    def _warn_marks(self) -> None:
        """Warn when the header says the volume is incomplete, or holds blocks repair could not save."""
        state = self._layout.marks
        if marks.INCOMPLETE_KEY in state:
            warnings.warn(f"{self.directory_filename}: incomplete: {marks.describe_incomplete(state[marks.INCOMPLETE_KEY])}.",
                          IncompleteVolumeWarning, stacklevel=3)
        lost = self.unsaved_blocks()
        if lost:
            warnings.warn(f"{self.directory_filename}: {len(lost)} blocks that repair could not save read as zeros "
                          f"(the first at (x, y, z) = {lost[0]}); write them again, or accept the loss with "
                          f"blockfs repair --accept-loss {self.directory_filename}.", LostBlocksWarning, stacklevel=3)

    def unsaved_blocks(self) -> list[tuple[int, int, int]]:
        """First voxels (x, y, z) of the blocks repair recorded as lost that are still unwritten."""
        return self.store.unsaved_blocks()

    def _check_writable_files(self) -> None:
        for path in [self.directory_filename] + [p for p, _ in self._shard_candidates]:
            if os.path.exists(path) and not os.access(path, os.W_OK):
                raise ReadOnlyError(f"{path}: not writable; open the volume with mode='r' to read it, "
                                    "or make its files writable.")

    def _attach(self) -> None:
        """In a process started by multiprocessing, use the volume at this path if it has this layout.

        That is the README pattern under spawn and forkserver: the worker re-imports the module and
        builds a module-level Directory that was never create()d here, for the volume the parent made.
        """
        path = self.directory_filename
        try:
            layout, start, identity = _read_header(path)
        except FileNotFoundError:
            raise AttachError(f"{path}: this Directory was never create()d in this worker process, and there is "
                              "no volume at that path to write into; call create() in the parent before starting "
                              "the workers.") from None
        mine = dataclasses.asdict(self._layout) | {"directory_offset": self.directory_offset, "marks": None}
        disk = dataclasses.asdict(layout) | {"directory_offset": start, "marks": None}
        differ = [f"{key} is {disk[key]!r} on disk but {mine[key]!r} here" for key in mine if mine[key] != disk[key]]
        if differ:
            raise AttachError(f"{path}: the volume on disk does not match this Directory(...), so this worker "
                              f"cannot write into it: {'; '.join(differ)}. Construct it with the arguments the "
                              "volume was created with, or pass the volume to the workers instead.")
        self._setup(path, layout, start, "r+" if os.access(path, os.W_OK) else "r", self.verify, self.durable,
                    identity)
        if self._mode == "r+":
            self._store.index_fd()

    def __reduce__(self) -> tuple:
        if self._mode is None:
            raise InvalidArgumentError(f"{self.directory_filename}: create() the volume before passing it to other processes.")
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

    @property
    def dtype(self) -> np.dtype:
        return self._layout.dtype

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
    def shape(self) -> tuple[int, int, int]:
        """(z, y, x) extent of the volume."""
        return self._layout.shape

    @property
    def layout(self) -> fmt.Layout:
        """Everything the directory file's header says, as one immutable value."""
        return self._layout

    @property
    def shard_paths(self) -> list[str]:
        """Where the shard files are, as resolved when the volume was opened."""
        return [path for path, _ in self._shard_candidates]

    def cast(self, array: Any, what: str) -> np.ndarray:
        """``array`` as this volume's dtype by the casting rule of :mod:`blockfs.casting` (clips, never wraps)."""
        return self._caster(np.asarray(array), what)

    @property
    def clipped_values(self) -> int:
        """How many values this object's writes clipped to the dtype's range (NaN counted), so far."""
        return self._caster.clipped

    @property
    def store(self) -> BlockStore:
        """The volume's block store in this process (its spec pickles cheaply to other processes)."""
        self._check_readable()
        return self._store

    @property
    def records(self) -> bool:
        """Whether each block carries a checksummed record (see docs/FORMAT.md)."""
        return self._layout.records

    @property
    def mode(self) -> str | None:
        """"r", "r+", or None before ``create()``."""
        return self._mode

    @property
    def writers(self) -> list:
        """The writer processes (each with ``q_in``) started by ``start_writer_processes()``."""
        return self._pool.writers if self._pool is not None else []

    def __repr__(self) -> str:
        z, y, x = self._layout.block_shape
        return (f"<blockfs.Directory {self.directory_filename!r} shape (z, y, x)={self.shape} {self.dtype.name} "
                f"blocks {z}x{y}x{x} {self._layout.compression}:{self.compression_level} "
                f"{len(self.block_filenames)} shards mode={self._mode}{' closed' if self._closed else ''}>")

    def get_block_size(self, x: int, y: int, z: int) -> tuple[int, int, int]:
        """Shape (z, y, x) of the block at (x, y, z), truncated at the volume's edges."""
        self._entry(x, y, z)
        return self._layout.block_shape_at(x, y, z)

    def offsetof(self, x: int, y: int, z: int) -> int:
        """Byte position in the index file of the entry for the block at (x, y, z)."""
        return self._layout.entry_position(self._entry(x, y, z), self.directory_offset)

    # -- writing -------------------------------------------------------------------------------

    def start_writer_processes(self, queue_depth: int = 10) -> None:
        """Start one writer process per shard; this process's writes then go through them.

        At most ``queue_depth`` blocks wait per writer, so memory stays bounded.
        """
        self._check_writable()
        if self._pool is None or not self._pool.is_owner:
            self._pool = WriterPool(self._store.spec, _positive("queue_depth", queue_depth))

    def write_through(self, make_sink: Callable[[BlockStore], BlockSink]) -> "Directory":
        """Hand this process's writes to ``make_sink(store)`` (an MPI collective writer, say).

        A Directory neither created nor opened in this process (an MPI rank other than the one that
        created the volume) first takes the volume's files as its arguments name them, for writing.
        """
        self._check_open()
        if self._mode is None:
            self._mode, self._store = "r+", BlockStore(self._spec(True))
        self._check_writable()
        self._pool = make_sink(self._store)
        return self

    def write_block(self, block: Any, x: int, y: int, z: int) -> None:
        """Write one block (z, y, x array, cast by :mod:`blockfs.casting`) whose first voxel is (x, y, z).

        From the process that started the writer processes, the block is queued to them; from any
        other process (forked, spawned or unrelated) it is compressed and appended here, safely
        alongside other writers.
        """
        self._check_writable()
        entry = self._entry(x, y, z)
        shape = self._layout.block_shape_at(x, y, z)
        array = np.asarray(block)
        if array.shape != shape:
            raise BlockShapeError(f"{self.directory_filename}: the block at (x={x}, y={y}, z={z}) must have shape "
                                  f"{shape} (z, y, x); got {array.shape}.")
        if array.dtype != self.dtype:
            array = self._caster(array, f"the block at (x={x}, y={y}, z={z})")
        if self._pool is not None and self._pool.is_owner:
            self._pool.submit(array, entry)
        else:
            self._store.store(entry, np.ascontiguousarray(array))

    def __setitem__(self, key: Any, value: Any) -> None:
        """Write a region made of whole blocks: ``d[z0:z1, y0:y1, x0:x1] = array``."""
        sel = select(key, self.shape, self.directory_filename)
        if not all(isinstance(w, slice) and w.step == 1 for w in sel.within) or not self._is_block_aligned(sel):
            bz, by, bx = self._layout.block_shape
            raise RegionError(
                f"{self.directory_filename}: cannot write {key!r}: writes must cover whole blocks of the "
                f"{bz}x{by}x{bx} (z, y, x) grid, starting at multiples of the block size and ending at one or "
                f"at the volume's edge {self.shape}, with step 1.")
        try:
            data = np.broadcast_to(np.asarray(value), sel.box_shape)
        except ValueError:
            raise BlockShapeError(f"{self.directory_filename}: cannot write an array of shape {np.shape(value)} to "
                                  f"the region {key!r} of shape {sel.box_shape} (z, y, x).") from None
        for part in projections(self._layout, sel.start, sel.stop):
            self.write_block(data[part.out_selection], *part.origin)

    def _is_block_aligned(self, sel: Any) -> bool:
        return all(a % b == 0 and (e % b == 0 or e == n) for a, e, b, n in
                   zip(sel.start, sel.stop, self._layout.block_shape, self.shape))

    # -- reading -------------------------------------------------------------------------------

    @property
    def volume(self) -> Volume:
        """The read-only, thread-safe, cheaply pickled view that serves this Directory's reads."""
        self._check_readable()
        if self._volume is None or self._volume.store is not self._store:
            self._volume = Volume(self._store, self.verify)
        return self._volume

    def read_block(self, x: int, y: int, z: int) -> np.ndarray:
        """The block whose first voxel is (x, y, z), as a (z, y, x) array; zeros if never written."""
        return self.volume.read_block(x, y, z)

    def read_block_payload(self, x: int, y: int, z: int) -> bytes | None:
        """The stored (blosc-compressed) bytes of the block at (x, y, z); None if never written.

        On a volume with records the bytes are checked against their record's CRC32C (unless the
        volume was opened with ``verify=False``); a block written without a record (by an earlier
        release) is checked by its blosc header's sizes instead. A full-size block's payload is a
        valid zarr v2 chunk with a blosc compressor.
        """
        return self.volume.read_block_payload(x, y, z)

    def __getitem__(self, key: Any) -> np.ndarray:
        """Read any region with numpy basic indexing in (z, y, x) order; unwritten blocks read as 0."""
        return self.volume.read(key)

    def read_into(self, out: np.ndarray, key: Any = ...) -> np.ndarray:
        """Fill ``out`` with a region, allocating nothing per block; see :meth:`Volume.read_into`."""
        return self.volume.read_into(out, key)

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        return self.volume.__array__(dtype, copy)

    # -- helpers and lifetime ------------------------------------------------------------------

    def _entry(self, x: int, y: int, z: int) -> int:
        return block_entry(self._layout, self.directory_filename, x, y, z)

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedError(f"{self.directory_filename}: the volume was closed for writing; reads still work, "
                              f"and Directory.open({self.directory_filename!r}, \"r+\") writes more blocks.")

    def _check_readable(self) -> None:
        if self._mode is None:
            with _attach_lock:
                if self._mode is None and multiprocessing.parent_process() is not None and not self._closed:
                    self._attach()
        if self._mode is None:
            raise FormatError(f"{self.directory_filename}: the volume does not exist yet; call create() first.")

    def _check_writable(self) -> None:
        self._check_open()
        self._check_readable()
        if self._mode != "r+":
            raise ReadOnlyError(f"{self.directory_filename}: opened read-only; use Directory.open(path, mode='r+') "
                                "to write blocks.")

    def close(self) -> None:
        """Wait for the writers to store every queued block, fsync what was written, release the files.

        Raises :class:`WriterError` if a writer failed or died. Reads keep working afterwards, writes
        raise :class:`ClosedError`; calling it again does nothing.
        """
        if self._closed:
            return
        self._closed = True
        try:
            if self._pool is not None:
                self._pool.close()
            if self._store is not None and self._store.spec.writable and self.durable:
                # Blocks written by other processes (forked producers) are this close()'s promise too.
                self._store.sync(every=self._pool is None or not self._pool.shards_synced_by_owners)
        finally:
            if self._store is not None:
                self._store.close()
                # Reads reopen the files read-only, on demand; they are released with this object.
                self._store = BlockStore(self._store.spec.read_only())
                weakref.finalize(self, self._store.close)

    def __enter__(self) -> "Directory":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    # -- interop (needs the [interop] extra) ------------------------------------------------------

    def write_block_payload(self, payload: bytes, x: int, y: int, z: int) -> None:
        """Store already-compressed blosc bytes (as ``read_block_payload`` returns them) as the block at (x, y, z).

        The buffer must decompress to exactly the block's shape at the volume's dtype; it is
        appended directly from this process, safely alongside other writers.
        """
        self._check_writable()
        entry = self._entry(x, y, z)
        nbytes = math.prod(self._layout.block_shape_at(x, y, z)) * self.dtype.itemsize
        where = (f"{self.directory_filename}: the payload for the block at (x={x}, y={y}, z={z}) must be one blosc "
                 f"buffer decompressing to {nbytes} bytes")
        try:
            check_sizes(payload, nbytes, where)
        except CorruptBlockError as exc:
            raise BlockShapeError(f"{exc} Compress the block with blosc first.") from None
        data, payload_at = ((records.encode(entry, bytes(payload)) + bytes(payload), records.HEADER_SIZE)
                            if self.records else (bytes(payload), 0))
        self._store.append(entry, data, payload_at)

    def to_dask(self) -> Any:
        """A lazy dask array of the volume, one chunk per block; see :mod:`blockfs.interop.dask_io`."""
        from .interop.tools import load
        return load("dask_io").to_dask(self)
