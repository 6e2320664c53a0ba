"""WritableVolume: a volume open for writing in this process, and the functions that make or open one.

``create_volume(path, shape, dtype, block_shape=...)`` speaks (z, y, x) throughout; ``open_writable``
opens an existing volume. Writes go to the volume's writer processes once ``start_writers()`` ran
in this process, to a sink given with ``write_through`` (an MPI collective writer, say), else
straight to the shards from this process, safely beside other writers.
"""

from __future__ import annotations

import dataclasses
import json
import math
import multiprocessing
import operator
import os
import weakref
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import numpy as np

from . import format as fmt
from . import locking, marks, records
from .casting import Caster
from .codec import Compression, check_compression, check_sizes
from .errors import (
    AttachError,
    BlockShapeError,
    ClosedError,
    CorruptBlockError,
    FormatError,
    InvalidArgumentError,
    ReadOnlyError,
    RegionError,
    VolumeExistsError,
)
from .selection import Selection, block_entry, projections, select
from .storage import atomic_write, publish_index, resolve_shard_path
from .store import BlockStore, StoreSpec, resolve_spec, spec_for
from .volume import Volume, warn_marks
from .writer import BlockWriter, WriterPool


class BlockSink(Protocol):
    """Where a writable volume hands this process's blocks: the writer processes, or an MPI collective writer."""

    #: writer processes (empty when there are none); ``Directory.writers`` shows them
    writers: list[BlockWriter]
    #: whether each shard is fsynced by the process that appended to it, so ``close()`` need not
    shards_synced_by_owners: bool

    @property
    def is_owner(self) -> bool:
        """Whether this process hands its blocks to the sink (else it appends them itself)."""

    def submit(self, block: np.ndarray, entry: int) -> None:
        """Take one C-contiguous block of the volume's dtype for entry ``entry``."""

    def close(self) -> None:
        """Return once every block taken is stored; raise if any could not be."""


def positive(name: str, value: Any) -> int:
    """``value`` as a positive int, or :class:`InvalidArgumentError` naming ``name``."""
    try:
        number = operator.index(value)
    except TypeError:
        raise InvalidArgumentError(f"{name} must be a positive integer; got {value!r}.") from None
    if number < 1:
        raise InvalidArgumentError(f"{name} must be a positive integer; got {value!r}.")
    return number


def _check_metadata(metadata: dict[str, Any] | None) -> dict[str, Any]:
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
        raise InvalidArgumentError(f"metadata must be JSON-serialisable ({exc}); "
                                   "convert arrays with .tolist().") from None
    return dict(metadata)


def new_layout(path: str, shape: Sequence[int], dtype: Any, block_shape: Sequence[int] = (64, 64, 64),
               shards: int | Sequence[str | os.PathLike[str]] | None = None, *,
               compression: Compression | str = Compression.zstd, compression_level: int = 5,
               metadata: dict[str, Any] | None = None, records: bool = True,
               strides: Sequence[int | None] = (None,) * 3, n_offset_bits: int | None = None,
               n_size_bits: int | None = None, directory_offset: int | None = None,
               names: tuple[str, str, str] = ("z_extent", "y_extent", "x_extent")) -> tuple[fmt.Layout, int]:
    """(the checked Layout, D) of a new volume at ``path``; every argument in (z, y, x) order.

    ``shards`` is a count (default: one per core, named ``<path>.<i>``) or the shard paths; they
    are stored as absolute names. ``names`` are the argument names error messages use.
    """
    z, y, x = (positive(n, v) for n, v in zip(names, shape))
    block_names = tuple(n.replace("extent", "block_size") for n in names)
    bz, by, bx = (positive(n, v) for n, v in zip(block_names, block_shape))
    dt = fmt.check_dtype(dtype, path)
    compressor, level = check_compression(compression, compression_level, path)
    if shards is None or isinstance(shards, int):
        count = positive("n_filenames", multiprocessing.cpu_count() if shards is None else shards)
        filenames: Sequence[Any] = [f"{path}.{i}" for i in range(count)]
    elif not shards or isinstance(shards, str) or not all(isinstance(n, (str, os.PathLike)) for n in shards):
        raise InvalidArgumentError(f"{path}: block_filenames must be a non-empty list of paths; got {shards!r}.")
    else:
        filenames = shards
    defaults = fmt.default_strides(x, y, bx, by)
    sz, sy, sx = strides
    x_stride, y_stride, z_stride = (d if s is None else positive(n, s) for n, s, d in
                                    zip(("x_stride", "y_stride", "z_stride"), (sx, sy, sz), defaults))
    offset_bits, size_bits = fmt.default_bit_widths((x, y, z), (bx, by, bz), (x_stride, y_stride, z_stride),
                                                    dt.itemsize, len(filenames), bool(records))
    layout = fmt.Layout(
        x_extent=x, y_extent=y, z_extent=z, dtype=dt, x_block_size=bx, y_block_size=by, z_block_size=bz,
        n_offset_bits=offset_bits if n_offset_bits is None else positive("n_offset_bits", n_offset_bits),
        n_size_bits=size_bits if n_size_bits is None else positive("n_size_bits", n_size_bits),
        x_stride=x_stride, y_stride=y_stride, z_stride=z_stride,
        block_filenames=tuple(os.path.abspath(os.fspath(n)) for n in filenames),
        compression=compressor, compression_level=level, metadata=_check_metadata(metadata), records=bool(records))
    start = len(fmt.encode_header(layout, directory_offset))
    fmt.check_limits(layout, start, path, InvalidArgumentError)
    return layout, start


# -- creating ------------------------------------------------------------------------------------


def _own_shards(index: str) -> set[str]:
    """Real paths of the shards named by the volume at ``index``; empty if it is not a readable volume."""
    try:
        layout = fmt.read_directory_file(index).layout
    except (OSError, FormatError):
        return set()
    return {os.path.realpath(resolve_shard_path(index, name).path) for name in layout.block_filenames}


def _foreign_file(index: str, shards: Sequence[str]) -> str | None:
    """The first non-empty file at these paths that is neither a blockfs index nor a shard of the
    volume whose index is at ``index``: create must not truncate it."""
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


def _replace_with_empty_file(path: str) -> None:
    """Put a new empty file at ``path``; hard links to the old file (a pyramid's level 1, a copy) keep its bytes."""
    with atomic_write(path, durable=False):
        pass


def _replace_shards(shards: Sequence[str], index: str, existed: bool) -> None:
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


def create_from_layout(path: str, layout: fmt.Layout, directory_offset: int | None = None, overwrite: bool = True,
                       incomplete: str | None = None, verify: bool = True, durable: bool = True) -> WritableVolume:
    """Write a new, empty volume with this layout: its index file, then empty shard files.

    A volume (or empty files) already at these paths is replaced: the new index atomically replaces
    the old one, and only then are the shards emptied. A non-empty file that is neither a blockfs
    index nor a shard of the volume at this path is refused, and with ``overwrite=False`` so is any
    existing file. A volume open for writing in any process is never replaced
    (:class:`VolumeBusyError`); of two processes creating one volume at once, one gets that error.
    ``incomplete="the tool's name"`` marks the header incomplete until
    :func:`blockfs.storage.mark_complete` (see docs/FORMAT.md).
    """
    if _importing_main_in_worker():
        raise AttachError(f"{path}: create() ran while multiprocessing imported the main module in a new "
                          "worker process, and would replace the volume the parent is writing; put create() "
                          "under `if __name__ == \"__main__\":`.")
    shards = list(layout.block_filenames)
    existing = [p for p in [path, *shards] if os.path.exists(p)]
    if existing and not overwrite:
        raise VolumeExistsError(f"{existing[0]}: already exists; remove the volume, choose another "
                                "directory_filename, or call create() without overwrite=False to replace it.")
    foreign = _foreign_file(path, shards) if existing else None
    if foreign is not None:
        raise VolumeExistsError(f"{foreign}: not empty, and neither a blockfs directory file nor a shard of the "
                                f"volume at {path}, so create() will not replace it; remove it or choose "
                                "another directory_filename.")
    if incomplete is not None:
        layout = dataclasses.replace(layout, marks={marks.INCOMPLETE_KEY: marks.incomplete(incomplete)})
    start = len(fmt.encode_header(layout, directory_offset))
    # First, so an old index never points into emptied shards; close() fsyncs the index of a durable volume.
    fd = publish_index(path, fmt.encode_header(layout, start), overwrite, "create()")
    try:
        _replace_shards(shards, path, bool(existing))
        fd = locking.reopen_shared(fd, path, "create() emptied the shards")
    except BaseException:
        os.close(fd)
        raise
    store = BlockStore(spec_for(path, layout, start, writable=True, durable=durable, resolve=False))
    store.adopt_index(fd)
    return WritableVolume(store, verify)


def create_volume(path: str | os.PathLike[str], shape: Sequence[int], dtype: Any,
                  block_shape: Sequence[int] = (64, 64, 64),
                  shards: int | Sequence[str | os.PathLike[str]] | None = None, *, overwrite: bool = True,
                  incomplete: str | None = None, verify: bool = True, durable: bool = True,
                  **layout: Any) -> WritableVolume:
    """A new, empty volume of ``shape`` (z, y, x) and ``block_shape`` (z, y, x), open for writing.

    ``shards`` is their number (default: one per core) or their paths; ``layout`` takes
    ``compression``, ``compression_level``, ``metadata``, ``records`` and the other options of
    :func:`new_layout`. See :func:`create_from_layout` for what happens to files already there.
    """
    where = os.fspath(path)
    made, _ = new_layout(where, shape, dtype, block_shape, shards, **layout)
    return create_from_layout(where, made, layout.get("directory_offset"), overwrite, incomplete, verify, durable)


def open_writable(path: str | os.PathLike[str], verify: bool = True, durable: bool = True) -> WritableVolume:
    """The existing volume at ``path``, open for writing (it holds the writers' shared lock, so repair,
    mv, cp and rebase are refused while it is open)."""
    spec = resolve_spec(os.fspath(path), writable=True, durable=durable, warn_depth=3)
    for file in (spec.index_path, *spec.shard_paths):
        if os.path.exists(file) and not os.access(file, os.W_OK):
            raise ReadOnlyError(f"{file}: not writable; open the volume with mode='r' to read it, "
                                "or make its files writable.")
    volume = WritableVolume(BlockStore(spec), verify)
    volume.store.index_fd()  # the shared lock of a writer: refused during repair, mv, rebase
    warn_marks(volume)
    return volume


def open_matching(path: str, layout: fmt.Layout, directory_offset: int, verify: bool = True,
                  durable: bool = True) -> WritableVolume:
    """The volume at ``path`` if it has this layout (for writing when its files allow), else :class:`AttachError`.

    That is how a process started by multiprocessing (the README pattern under spawn and
    forkserver) joins the volume its parent created.
    """
    writable = os.access(path, os.W_OK)
    try:
        spec = resolve_spec(path, writable, durable)
    except FileNotFoundError:
        raise AttachError(f"{path}: this Directory was never create()d in this worker process, and there is "
                          "no volume at that path to write into; call create() in the parent before starting "
                          "the workers.") from None
    mine = dataclasses.asdict(layout) | {"directory_offset": directory_offset, "marks": None}
    disk = dataclasses.asdict(spec.layout) | {"directory_offset": spec.directory_offset, "marks": None}
    differ = [f"{key} is {disk[key]!r} on disk but {mine[key]!r} here" for key in mine if mine[key] != disk[key]]
    if differ:
        raise AttachError(f"{path}: the volume on disk does not match this Directory(...), so this worker "
                          f"cannot write into it: {'; '.join(differ)}. Construct it with the arguments the "
                          "volume was created with, or pass the volume to the workers instead.")
    volume = WritableVolume(BlockStore(spec), verify)
    if writable:
        volume.store.index_fd()  # the writers' shared lock
    return volume


def _reopen_writable(spec: StoreSpec, verify: bool) -> WritableVolume:
    return WritableVolume(BlockStore(spec), verify)


class WritableVolume(Volume):
    """A volume this process writes: block and region writes, the writer processes, ``close()``.

    It reads like a :class:`Volume`. Pickled, it reaches another process as a writable volume
    that appends its blocks from there (a Pool worker, a dask task); after ``close()`` as a
    read-only one.
    """

    def __init__(self, store: BlockStore, verify: bool = True):
        super().__init__(store, verify)
        self._caster = Caster(store.layout.dtype, store.spec.index_path)
        self._sink: BlockSink | None = None
        self._closed = False

    def __reduce__(self) -> tuple[Any, ...]:
        if self._closed:
            return super().__reduce__()
        return _reopen_writable, (self._store.spec, self.verify)

    @property
    def durable(self) -> bool:
        """Whether ``close()`` fsyncs what was written."""
        return self._store.spec.durable

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def writers(self) -> list[BlockWriter]:
        """The writer processes started by :meth:`start_writers` (empty before)."""
        return self._sink.writers if self._sink is not None else []

    @property
    def clipped_values(self) -> int:
        """How many values this object's writes clipped to the dtype's range (NaN counted), so far."""
        return self._caster.clipped

    def cast(self, array: Any, what: str) -> np.ndarray:
        """``array`` as this volume's dtype by the casting rule of :mod:`blockfs.casting` (clips, never wraps)."""
        return self._caster(np.asarray(array), what)

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedError(f"{self.path}: the volume was closed for writing; reads still work, and "
                              f"blockfs.open_writable({self.path!r}) writes more blocks.")
        if not self._store.spec.writable:
            raise ReadOnlyError(f"{self.path}: opened read-only; open it for writing to write blocks.")

    # -- where writes go ---------------------------------------------------------------------------

    def start_writers(self, queue_depth: int = 10) -> None:
        """Start one writer process per shard; this process's writes then go through them.

        At most ``queue_depth`` blocks wait per writer, so memory stays bounded.
        """
        self._check_open()
        if self._sink is None or not self._sink.is_owner:
            self._sink = WriterPool(self._store.spec, positive("queue_depth", queue_depth))

    def write_through(self, make_sink: Callable[[BlockStore], BlockSink]) -> WritableVolume:
        """Hand this process's writes to ``make_sink(store)`` (an MPI collective writer, say)."""
        self._check_open()
        self._sink = make_sink(self._store)
        return self

    @property
    def sink(self) -> BlockSink | None:
        """Where this process's blocks go: the writer pool or a collective writer; None when written here."""
        return self._sink

    # -- writing -------------------------------------------------------------------------------------

    def write_block(self, block: Any, x: int, y: int, z: int) -> None:
        """Write one block (z, y, x array, cast by :mod:`blockfs.casting`) whose first voxel is (x, y, z)."""
        self._check_open()
        entry = block_entry(self.layout, self.path, x, y, z)
        shape = self.layout.block_shape_at(x, y, z)
        array = np.asarray(block)
        if array.shape != shape:
            raise BlockShapeError(f"{self.path}: the block at (x={x}, y={y}, z={z}) must have shape "
                                  f"{shape} (z, y, x); got {array.shape}.")
        if array.dtype != self.dtype:
            array = self._caster(array, f"the block at (x={x}, y={y}, z={z})")
        if self._sink is not None and self._sink.is_owner:
            self._sink.submit(array, entry)
        else:
            self._store.store(entry, np.ascontiguousarray(array))

    def __setitem__(self, key: Any, value: Any) -> None:
        """Write a region made of whole blocks: ``v[z0:z1, y0:y1, x0:x1] = array``."""
        sel = select(key, self.shape, self.path)
        if not all(isinstance(w, slice) and w.step == 1 for w in sel.within) or not self._is_block_aligned(sel):
            bz, by, bx = self.block_shape
            raise RegionError(
                f"{self.path}: cannot write {key!r}: writes must cover whole blocks of the "
                f"{bz}x{by}x{bx} (z, y, x) grid, starting at multiples of the block size and ending at one or "
                f"at the volume's edge {self.shape}, with step 1.")
        try:
            data = np.broadcast_to(np.asarray(value), sel.box_shape)
        except ValueError:
            raise BlockShapeError(f"{self.path}: cannot write an array of shape {np.shape(value)} to "
                                  f"the region {key!r} of shape {sel.box_shape} (z, y, x).") from None
        for part in projections(self.layout, sel.start, sel.stop):
            self.write_block(data[part.out_selection], *part.origin)

    def _is_block_aligned(self, sel: Selection) -> bool:
        return all(a % b == 0 and (e % b == 0 or e == n) for a, e, b, n in
                   zip(sel.start, sel.stop, self.block_shape, self.shape))

    def write_block_payload(self, payload: bytes, x: int, y: int, z: int) -> None:
        """Store already-compressed blosc bytes (as ``read_block_payload`` returns them) as the block at (x, y, z).

        The buffer must decompress to exactly the block's shape at the volume's dtype; it is
        appended directly from this process, safely alongside other writers.
        """
        self._check_open()
        entry = block_entry(self.layout, self.path, x, y, z)
        nbytes = math.prod(self.layout.block_shape_at(x, y, z)) * self.dtype.itemsize
        where = (f"{self.path}: the payload for the block at (x={x}, y={y}, z={z}) must be one blosc "
                 f"buffer decompressing to {nbytes} bytes")
        try:
            check_sizes(payload, nbytes, where)
        except CorruptBlockError as exc:
            raise BlockShapeError(f"{exc} Compress the block with blosc first.") from None
        data, payload_at = ((records.encode(entry, bytes(payload)) + bytes(payload), records.HEADER_SIZE)
                            if self.layout.records else (bytes(payload), 0))
        self._store.append(entry, data, payload_at)

    # -- durability and lifetime -------------------------------------------------------------------

    def sync(self) -> None:
        """fsync every shard, then the index: what any process wrote so far is on disk when it returns."""
        self._store.sync(every=True)

    def close(self) -> None:
        """Wait for the writers to store every queued block, fsync what was written, release the files.

        Raises :class:`WriterError` if a writer failed or died. Reads keep working afterwards, writes
        raise :class:`ClosedError`; calling it again does nothing.
        """
        if self._closed:
            return
        self._closed = True
        try:
            if self._sink is not None:
                self._sink.close()
            if self.durable and self._store.spec.writable:
                # Blocks written by other processes (forked producers) are this close()'s promise too.
                self._store.sync(every=self._sink is None or not self._sink.shards_synced_by_owners)
        finally:
            self._store.close()
            # Reads reopen the files read-only, on demand; they are released with this object.
            self._store = BlockStore(self._store.spec.read_only())
            weakref.finalize(self, self._store.close)

    def __enter__(self) -> WritableVolume:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()


__all__ = ["BlockSink", "WritableVolume", "create_from_layout", "create_volume", "new_layout", "open_matching",
           "open_writable", "positive"]
