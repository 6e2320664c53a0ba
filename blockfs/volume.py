"""Volume: a read-only, thread-safe, cheaply pickled view of a blockfs volume.

Reads go through :meth:`Volume.iter_projections`, which splits a region into the blocks it
touches (the zarr ``ChunkProjection`` idea): each :class:`BlockProjection` says which block, which
part of it lies inside the region and where that part goes in the output. Reads, region writes
(``Directory.__setitem__``) and callers that tile a volume (pyramid, dask) share it.
"""

from __future__ import annotations

import math
import os
import threading
import warnings
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor, wait
from typing import Any

import numpy as np

from . import marks
from .errors import BlockShapeError, IncompleteVolumeWarning, InvalidArgumentError, LostBlocksWarning
from .format import Layout
from .selection import BlockProjection, Selection, block_entry, box_entries, projections, select
from .store import BlockStore, StoreSpec, resolve_spec

_executor: ThreadPoolExecutor | None = None
_executor_pid = 0
_scratch = threading.local()


def read_pool() -> ThreadPoolExecutor:
    """The thread pool that decompresses blocks, created anew in each process."""
    global _executor, _executor_pid
    if _executor is None or _executor_pid != os.getpid():
        _executor, _executor_pid = ThreadPoolExecutor(os.cpu_count() or 1, "blockfs-read"), os.getpid()
    return _executor


def _block_scratch(shape: tuple[int, int, int], dtype: np.dtype) -> np.ndarray:
    """This thread's reusable array for decompressing a block of ``shape`` before copying part of it out."""
    size = math.prod(shape) * dtype.itemsize
    buffer = getattr(_scratch, "buffer", None)
    if buffer is None or buffer.size < size:
        buffer = _scratch.buffer = np.empty(size, np.uint8)
    return buffer[:size].view(dtype).reshape(shape)


class Volume:
    """A read-only view of a volume: thread-safe, and pickled as its :class:`StoreSpec`."""

    def __init__(self, store: BlockStore, verify: bool = True):
        self._store = store
        self.verify = verify

    @classmethod
    def from_spec(cls, spec: StoreSpec, verify: bool = True) -> Volume:
        return cls(BlockStore(spec), verify)

    def __reduce__(self) -> tuple[Any, ...]:
        return Volume.from_spec, (self._store.spec.read_only(), self.verify)

    def __repr__(self) -> str:
        return f"<blockfs.Volume {self.path!r} shape (z, y, x)={self.shape} {self.dtype.name}>"

    # -- attributes ------------------------------------------------------------------------------

    @property
    def path(self) -> str:
        """The directory (index) file."""
        return self._store.spec.index_path

    @property
    def store(self) -> BlockStore:
        return self._store

    @property
    def layout(self) -> Layout:
        return self._store.layout

    @property
    def shape(self) -> tuple[int, int, int]:
        """(z, y, x) extent of the volume."""
        return self.layout.shape

    @property
    def dtype(self) -> np.dtype:
        return self.layout.dtype

    @property
    def metadata(self) -> dict[str, Any]:
        """Application metadata: the JSON keys that are not part of the format."""
        return dict(self.layout.metadata)

    @property
    def block_shape(self) -> tuple[int, int, int]:
        """Full block shape (z, y, x)."""
        return self.layout.block_shape

    @property
    def grid(self) -> tuple[int, int, int]:
        """Number of blocks along (z, y, x)."""
        return self.layout.grid

    def entry_of(self, x: Any, y: Any, z: Any) -> int:
        """The entry of the block whose first voxel is (x, y, z) (checked to be on the block grid)."""
        return block_entry(self.layout, self.path, x, y, z)

    # -- reading -----------------------------------------------------------------------------------

    def read_block(self, x: int, y: int, z: int) -> np.ndarray:
        """The block whose first voxel is (x, y, z), as a (z, y, x) array; zeros if never written."""
        entry = self.entry_of(x, y, z)
        shape = self.layout.block_shape_at(x, y, z)
        out = np.empty(shape, self.dtype)
        # np.zeros leaves the pages of a block never written untouched, so a huge one costs no memory
        return out if self._load_block(entry, out) else np.zeros(shape, self.dtype)

    def read_block_into(self, out: np.ndarray, x: int, y: int, z: int) -> bool:
        """Decompress the block whose first voxel is (x, y, z) into ``out`` (C-contiguous, of the block's
        (z, y, x) shape and the volume's dtype); False, with ``out`` untouched, if it was never written."""
        entry = self.entry_of(x, y, z)
        shape = self.layout.block_shape_at(x, y, z)
        if out.shape != shape or out.dtype != self.dtype or not out.flags.c_contiguous:
            raise BlockShapeError(f"{self.path}: read_block_into needs a C-contiguous array of shape {shape} and "
                                  f"dtype {self.dtype} for the block at (x={x}, y={y}, z={z}); got {out.shape} "
                                  f"{out.dtype}{'' if out.flags.c_contiguous else ', not C-contiguous'}.")
        return self._load_block(entry, out)

    def _load_block(self, entry: int, out: np.ndarray) -> bool:
        """Decompress block ``entry`` into ``out``; False, with ``out`` untouched, if it was never written."""
        offset, size = self._store.entry(entry)
        if size:
            self._store.load(entry, offset, size, out, self.verify)
        return bool(size)

    def read_block_payload(self, x: int, y: int, z: int) -> bytes | None:
        """The stored (blosc-compressed) bytes of the block at (x, y, z); None if never written.

        Checked against the block's record (CRC32C) when the volume has records and ``verify`` is
        on; a block written without a record is checked by its blosc header's sizes instead.
        """
        return self.read_block_payload_at(x, y, z)[1]

    def read_block_payload_at(self, x: int, y: int, z: int, where: tuple[int, int] | None = None
                              ) -> tuple[tuple[int, int], bytes | None]:
        """(the block's index entry (offset, size), its stored bytes read at exactly that entry), as
        :meth:`read_block_payload` checks them: one index read, none when ``where`` (the entry as
        the caller read it) is given. A server makes a chunk's ETag and body from the same pair."""
        nbytes = math.prod(self.layout.block_shape_at(x, y, z)) * self.dtype.itemsize
        return self._store.payload(self.entry_of(x, y, z), nbytes, self.verify, where)

    def iter_projections(self, region: Any = ...) -> Iterator[BlockProjection]:
        """The blocks a region (numpy basic index, (z, y, x)) touches, each with its share of the
        region's bounding box."""
        sel = self._select(region)
        return projections(self.layout, sel.start, sel.stop)

    def _select(self, region: Any) -> Selection:
        return select(region, self.shape, self.path)

    def read(self, region: Any = ...) -> np.ndarray:
        """Any region by numpy basic indexing in (z, y, x) order; unwritten blocks read as 0."""
        sel = self._select(region)
        out = np.zeros(sel.box_shape, self.dtype)
        self._fill(out, sel, zero=False)
        return out[sel.within]

    __getitem__ = read

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        if copy is False:
            raise InvalidArgumentError(f"{self.path}: a volume is stored compressed, so np.asarray cannot give it "
                                       "without a copy; use copy=None or read it with v[...].")
        data = self.read()
        return data if dtype is None else data.astype(dtype, copy=False)

    def read_into(self, out: np.ndarray, region: Any = ...) -> np.ndarray:
        """Fill ``out`` (shaped like ``read(region)``, of the volume's dtype) with a region; return it.

        Nothing is allocated per block: a block that lies whole inside the region is decompressed
        straight into ``out`` where that part of ``out`` is C-contiguous, others through one
        reusable buffer per thread. A region with steps other than 1 is read through a temporary.
        """
        sel = self._select(region)
        want = tuple(len(range(*w.indices(n))) for w, n in zip(sel.within, sel.box_shape) if isinstance(w, slice))
        if out.shape != want or out.dtype != self.dtype:
            raise BlockShapeError(f"{self.path}: read_into needs an array of shape {want} and dtype {self.dtype} "
                                  f"for {region!r}; got {out.shape} {out.dtype}.")
        if any(isinstance(w, slice) and w.step not in (None, 1) for w in sel.within):
            out[...] = self.read(region)
            return out
        box = np.expand_dims(out, tuple(i for i, w in enumerate(sel.within) if not isinstance(w, slice)))
        self._fill(box, sel, zero=True)
        return out

    def _fill(self, box: np.ndarray, sel: Selection, zero: bool) -> None:
        """Read the bounding box of ``sel`` into ``box``; with ``zero``, zero where no block was written.

        The read pool's threads each take the next block until none is left (so a thread that is
        held up delays no one), and nothing is kept per block.
        """
        if box.size == 0:
            return
        lay, start, stop = self.layout, sel.start, sel.stop
        entries = box_entries(lay, start, stop)
        offsets, sizes = self._store.lookup(entries)
        store, verify, dtype = self._store, self.verify, self.dtype
        fetched = store.prefetch(entries, offsets, sizes, verify)
        n_blocks = offsets.size
        parts: Iterator[tuple[int, BlockProjection]] = enumerate(projections(lay, start, stop))  # box_entries' order
        taking = threading.Lock()

        def fill() -> None:
            nonlocal parts
            while True:
                with taking:
                    k, part = next(parts, (0, None))
                if part is None:
                    return
                try:
                    place(k, part)
                except BaseException:
                    with taking:
                        parts = iter(())  # the other threads stop at their next block
                    raise

        def place(k: int, part: BlockProjection) -> None:
            target = box[part.out_selection]
            if not sizes[k]:
                if zero:
                    target[...] = 0
            elif part.is_complete and target.flags.c_contiguous:
                store.load(part.entry, int(offsets[k]), int(sizes[k]), target, verify, fetched)
            else:
                block = _block_scratch(part.shape, dtype)
                store.load(part.entry, int(offsets[k]), int(sizes[k]), block, verify, fetched)
                target[...] = block[part.block_selection]

        threads = min(n_blocks, os.cpu_count() or 1)
        if threads == 1:
            fill()
            return
        futures = [read_pool().submit(fill) for _ in range(threads)]
        wait(futures)  # all of them, so no read is still running when an error reaches the caller
        for future in futures:
            future.result()

    def unsaved_blocks(self) -> list[tuple[int, int, int]]:
        """First voxels (x, y, z) of the blocks repair recorded as lost that are still unwritten."""
        return self._store.unsaved_blocks()

    def close(self) -> None:
        """Close this process's file descriptors (a later read reopens them)."""
        self._store.close()


def warn_marks(volume: Volume, depth: int = 3) -> None:
    """Warn when the header says the volume is incomplete, or holds blocks repair could not save."""
    state, path = volume.layout.marks, volume.path
    if marks.INCOMPLETE_KEY in state:
        warnings.warn(f"{path}: incomplete: {marks.describe_incomplete(state[marks.INCOMPLETE_KEY])}.",
                      IncompleteVolumeWarning, stacklevel=depth)
    lost = volume.unsaved_blocks()
    if lost:
        warnings.warn(f"{path}: {len(lost)} blocks that repair could not save read as zeros "
                      f"(the first at (x, y, z) = {lost[0]}); write them again, or accept the loss with "
                      f"blockfs repair --accept-loss {path}.", LostBlocksWarning, stacklevel=depth)


def open_volume(path: str | os.PathLike[str], verify: bool = True) -> Volume:
    """A read-only, thread-safe, cheaply pickled :class:`Volume` of the volume at ``path``: a file name, or the
    URL of its index (``http(s)://``, ``s3://``; see :mod:`blockfs.remote`)."""
    volume = Volume(BlockStore(resolve_spec(os.fspath(path), warn_depth=3)), verify)
    warn_marks(volume)
    return volume

