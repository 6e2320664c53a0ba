"""dask in and out: a lazy dask array over a volume (one chunk per block), and writing a dask array as a volume."""

from __future__ import annotations

import os
from typing import Any

import dask.array as da
import numpy as np
from dask.base import tokenize

from ..directory import Directory
from ..errors import InvalidArgumentError


def _read_chunk(volume: Directory, index: tuple[slice, ...], asarray: bool = True, lock: Any = None) -> np.ndarray:
    """One chunk of ``to_dask``: a whole block straight from ``read_block``, any other region by slicing."""
    start = tuple(s.start or 0 for s in index)
    stop = tuple(s.stop for s in index)
    z, y, x = start
    if (all(s.step in (None, 1) for s in index) and all(a % b == 0 for a, b in zip(start, volume.layout.block_shape))
            and tuple(e - a for a, e in zip(start, stop)) == volume.layout.block_shape_at(x, y, z)):
        return volume.read_block(x, y, z)
    return volume[index]


def to_dask(volume: Directory) -> da.Array:
    """A lazy dask array of a volume with one chunk per block.

    The volume is one key of the graph and pickles as its path, so the graph is cheap to send to
    process or distributed workers, which reopen the volume read-only.
    """
    if volume.mode != "r":
        volume = Directory.open(volume.directory_filename, verify=volume.verify)
    stat = os.stat(volume.directory_filename)
    name = "blockfs-" + tokenize(os.path.abspath(volume.directory_filename), stat.st_mtime_ns, stat.st_size)
    return da.from_array(volume, chunks=volume.layout.block_shape, name=name, getitem=_read_chunk,
                         meta=np.empty((0, 0, 0), volume.dtype))


def _write_chunk(chunk: np.ndarray, path: str, block_info: dict | None = None) -> np.ndarray:
    """Write one block-aligned chunk into the volume at ``path`` directly; return a 1-voxel marker.

    The volume is opened here and closed at the end, so a retried task opens it anew and rewrites
    the same blocks (the last write wins).
    """
    region = tuple(slice(a, b) for a, b in block_info[0]["array-location"])  # type: ignore[index]
    with Directory.open(path, "r+", durable=False) as volume:
        volume[region] = chunk
    return np.ones((1,) * chunk.ndim, bool)


def _fsync(paths: list[str]) -> None:
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_dask(array: Any, path: str | os.PathLike, overwrite: bool = False, compute_kwargs: dict | None = None,
               **directory_kwargs: Any) -> Directory:
    """Write a 3D (z, y, x) dask array as a new volume at ``path``; return it opened read-only.

    ``directory_kwargs`` go to :class:`Directory` (block sizes, compression, metadata, ...). The
    array is rechunked to the block grid and each task writes its blocks straight into the shards
    (safe alongside the other tasks), on whatever scheduler ``compute`` picks (``compute_kwargs``,
    e.g. ``{"scheduler": "processes"}``; a ``dask.distributed`` client when one is active). Returns
    once every block is written, indexed and (unless ``durable=False``) fsynced.
    """
    array = da.asarray(array)
    path = os.fspath(path)
    if array.ndim != 3:
        raise InvalidArgumentError(f"{path}: write_dask needs a 3D (z, y, x) array; got shape {array.shape}.")
    z, y, x = array.shape
    volume = Directory(x, y, z, directory_kwargs.pop("dtype", array.dtype), path, **directory_kwargs)
    volume.create(overwrite=overwrite)
    volume.close()
    blocks = array.rechunk(volume.layout.block_shape)
    markers = blocks.map_blocks(_write_chunk, path, dtype=bool, chunks=tuple((1,) * len(c) for c in blocks.chunks))
    markers.sum().compute(**(compute_kwargs or {}))
    if volume.durable:
        _fsync(volume.shard_paths + [volume.directory_filename])
    return Directory.open(path)
