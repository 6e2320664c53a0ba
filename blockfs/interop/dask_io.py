"""dask in and out: a lazy dask array over a volume (one chunk per block), and writing a dask array as a volume."""

from __future__ import annotations

import itertools
import math
import os
from collections.abc import Callable
from typing import Any

import dask.array as da
import numpy as np
from dask.base import tokenize
from dask.callbacks import Callback
from tqdm import tqdm

from ..errors import CorruptBlockError, InvalidArgumentError
from ..progress import disabled
from ..selection import projections, select
from ..volume import Volume, open_volume
from ..writable import create_volume, open_writable

#: Bytes of voxels each ``write_dask`` task writes at most (unless one block is larger).
TASK_BYTES = 32 * 2**20


class Guarded:
    """An array over a volume whose damaged blocks read as zeros, each error passed to ``damaged`` first."""

    def __init__(self, volume: Volume, damaged: Callable[[CorruptBlockError], None]):
        self.volume, self.damaged = volume, damaged
        self.shape, self.dtype, self.ndim = volume.shape, volume.dtype, len(volume.shape)

    def __getitem__(self, index: Any) -> np.ndarray:
        try:
            return self.volume[index]
        except CorruptBlockError:
            return self._read_sound_blocks(index)

    def _read_sound_blocks(self, index: Any) -> np.ndarray:
        """The region read block by block, each block that does not decode reported and left as zeros."""
        volume = self.volume
        sel = select(index, volume.shape, volume.path)
        box = np.zeros(sel.box_shape, self.dtype)
        for part in projections(volume.layout, sel.start, sel.stop):
            try:
                box[part.out_selection] = volume.read_block(*part.origin)[part.block_selection]
            except CorruptBlockError as exc:
                self.damaged(exc)
        return box[sel.within]


def to_dask(volume: Volume, damaged: Callable[[CorruptBlockError], None] | None = None,
            max_chunks: int | None = None) -> da.Array:
    """A lazy dask array of a volume with one chunk per block, or with ``max_chunks``, chunks of whole blocks
    (:func:`coarse_chunks`) so that there are at most that many.

    dask pays for every chunk of an array each time a slice of it is computed (about 1 us each, here), so a
    10^4-voxel volume of 64^3 blocks (3.9 million) takes seconds per slice; larger chunks still read only
    the blocks a slice touches.

    The read-only :class:`Volume` is one key of the graph and pickles as its store's description,
    so the graph is cheap to send to process or distributed workers, which reopen it read-only.
    A damaged block raises :class:`CorruptBlockError` when computed, unless ``damaged`` is given:
    then the error goes to ``damaged`` (a viewer shows it) and the block reads as zeros.
    """
    spec = volume.store.spec.read_only()
    view = Volume.from_spec(spec, volume.verify)
    if spec.remote:  # the index's ETag when opened tells its versions apart
        name = "blockfs-" + tokenize(spec.index_path, spec.index_version, spec.index_size)
    else:
        stat = os.stat(view.path)
        name = "blockfs-" + tokenize(os.path.abspath(view.path), stat.st_mtime_ns, stat.st_size)
    if damaged is not None:
        name += "-" + tokenize(damaged)
    chunks = view.block_shape if max_chunks is None else coarse_chunks(view.block_shape, view.shape, max_chunks)
    # dask's own getter: a slice of the array is fused into each chunk's read, which then reads only that part
    return da.from_array(view if damaged is None else Guarded(view, damaged), chunks=chunks, name=name,
                         meta=np.empty((0, 0, 0), view.dtype))


def coarse_chunks(block_shape: tuple[int, int, int], shape: tuple[int, int, int], max_chunks: int
                  ) -> tuple[int, int, int]:
    """Chunks of whole blocks, doubled along the axis cut into the most chunks until at most ``max_chunks``."""
    if max_chunks < 1:
        raise InvalidArgumentError(f"max_chunks must be at least 1; got {max_chunks}.")
    chunk = list(block_shape)
    while math.prod(-(-n // c) for n, c in zip(shape, chunk)) > max_chunks:
        axis = max(range(3), key=lambda i: -(-shape[i] // chunk[i]))
        chunk[axis] *= 2
    return tuple(chunk)  # type: ignore[return-value]  # chunk is a list of three ints


def _write_chunk(chunk: np.ndarray, path: str, block_info: dict | None = None) -> np.ndarray:
    """Write one block-aligned chunk into the volume at ``path`` directly; return a 1-voxel marker.

    The volume is opened here and closed at the end, so a retried task opens it anew and rewrites
    the same blocks (the last write wins).
    """
    # dask's block_info is an untyped dict of lists
    region = tuple(slice(a, b) for a, b in block_info[0]["array-location"])  # type: ignore[index]
    with open_writable(path, durable=False) as volume:
        volume[region] = chunk
    return np.ones((1,) * chunk.ndim, bool)


def task_shape(block_shape: tuple[int, int, int], shape: tuple[int, ...], itemsize: int, task_bytes: int
               ) -> tuple[int, int, int]:
    """Chunks of whole blocks (``write_dask``'s tasks): blocks doubled along x, y, z in turn up to ``task_bytes``."""
    chunk = list(block_shape)
    grown = True
    while grown:
        grown = False
        for axis in (2, 1, 0):
            if chunk[axis] < shape[axis] and math.prod(chunk) * itemsize * 2 <= task_bytes:
                chunk[axis] *= 2
                grown = True
    return tuple(chunk)  # type: ignore[return-value]  # chunk is a list of three ints


class _BlocksWritten(Callback):
    """A dask callback advancing a tqdm bar by the blocks of each finished write task (local schedulers)."""

    def __init__(self, blocks: dict[Any, int], bar: tqdm):
        super().__init__()
        self.blocks, self.bar = blocks, bar

    def _posttask(self, key: Any, result: Any, dsk: Any, state: Any, worker_id: Any) -> None:
        self.bar.update(self.blocks.get(key, 0))


def _blocks_per_task(markers: da.Array, chunks: tuple[tuple[int, ...], ...], block_shape: tuple[int, int, int]
                     ) -> dict[Any, int]:
    """The write task keys of ``markers`` with the number of blocks each writes."""
    counts = [[math.ceil(n / b) for n in sizes] for sizes, b in zip(chunks, block_shape)]
    return {(markers.name, *index): math.prod(c[i] for c, i in zip(counts, index))
            for index in itertools.product(*(range(len(c)) for c in counts))}


def write_dask(array: Any, path: str | os.PathLike, overwrite: bool = False, compute_kwargs: dict | None = None,
               task_bytes: int = TASK_BYTES, silent: bool = False, dtype: Any = None,
               block_shape: tuple[int, int, int] = (64, 64, 64), durable: bool = True, **create_kwargs: Any
               ) -> Volume:
    """Write a 3D (z, y, x) dask array as a new volume at ``path``; return it opened read-only.

    ``dtype`` (default the array's), ``block_shape`` (z, y, x) and ``create_kwargs`` (shards,
    compression, metadata, ...) go to :func:`blockfs.create_volume`. The array is rechunked to
    whole blocks of the block grid, up to ``task_bytes`` per chunk, and each task writes its blocks
    straight into the shards (safe alongside the other tasks), on whatever scheduler ``compute``
    picks (``compute_kwargs``, e.g. ``{"scheduler": "processes"}``; a ``dask.distributed`` client
    when one is active). Returns once every block is written, indexed and (unless
    ``durable=False``) fsynced. A bar of the blocks written goes to stderr when it is a terminal,
    unless ``silent`` (on dask's local schedulers; ``dask.distributed`` has its own dashboard).
    """
    array = da.asarray(array)
    path = os.fspath(path)
    if array.ndim != 3:
        raise InvalidArgumentError(f"{path}: write_dask needs a 3D (z, y, x) array; got shape {array.shape}.")
    # Not durable itself: its close() would fsync once more what sync() below has made durable.
    volume = create_volume(path, array.shape, array.dtype if dtype is None else dtype, block_shape,
                           overwrite=overwrite, durable=False, **create_kwargs)
    lay = volume.layout
    blocks = array.rechunk(task_shape(lay.block_shape, array.shape, lay.dtype.itemsize, task_bytes))
    markers = blocks.map_blocks(_write_chunk, path, dtype=bool, chunks=tuple((1,) * len(c) for c in blocks.chunks))
    try:
        with tqdm(total=lay.n_blocks, unit="block", desc=f"writing {path}", disable=disabled(silent)) as bar, \
                _BlocksWritten(_blocks_per_task(markers, blocks.chunks, lay.block_shape), bar):
            markers.compute(**(compute_kwargs or {}))  # the write tasks are the outputs: their keys stay
        if durable:
            volume.sync()  # the tasks' writes, from whichever processes ran them
    finally:
        volume.close()
    return open_volume(path)
