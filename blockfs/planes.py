"""Volumes as z-planes: writing planes into blocks, and reading slabs to take planes from.

Microscopes and most image tools produce and consume 2-D planes, one z at a time, while a
volume stores 3-D blocks. :class:`PlaneWriter` collects planes into a slab one block deep and
writes the slab's blocks as soon as it is full; :func:`iter_slabs` reads the volume back one slab
at a time. Either way memory holds one slab, never the volume.

Both take the engine's objects (a :class:`~blockfs.volume.Volume` to read, a
:class:`~blockfs.writable.WritableVolume` to write); a ``Directory`` is taken through the
volume it delegates to.
"""

from __future__ import annotations

import operator
from collections.abc import Iterator
from typing import Any

import numpy as np

from .errors import ClosedError, InvalidArgumentError, PlaneCountError, PlaneError
from .volume import Volume
from .writable import WritableVolume


def _z_range(volume: Volume, z_start: int, z_stop: int | None) -> tuple[int, int]:
    z_extent, depth = volume.shape[0], volume.block_shape[0]
    start = operator.index(z_start)
    stop = z_extent if z_stop is None else operator.index(z_stop)
    if not 0 <= start < stop <= z_extent:
        raise InvalidArgumentError(f"{volume.path}: z range [{start}, {stop}) must lie within [0, {z_extent}) and "
                                   "hold at least one plane.")
    if start % depth or (stop % depth and stop != z_extent):
        raise InvalidArgumentError(f"{volume.path}: z range [{start}, {stop}) must start at a multiple of the block "
                                   f"depth {depth} and end at one or at the volume's end {z_extent}, so that it "
                                   "covers whole blocks.")
    return start, stop


def iter_slabs(volume: Volume, depth: int | None = None, z_start: int = 0,
               z_stop: int | None = None) -> Iterator[tuple[int, np.ndarray]]:
    """Yield ``(z0, slab)`` for consecutive slabs of the volume, where ``slab`` is ``volume.read(z0:z0 + n)``.

    Slabs are ``depth`` planes thick (the block depth by default, which reads every block once)
    and never cross a block boundary in z: a thinner ``depth`` holds less in memory but
    decompresses each block once per slab that touches it. The blocks of a slab are read in
    parallel threads; only one slab is alive at a time if the caller drops it before the next.
    """
    if not isinstance(volume, Volume):  # a Directory
        volume = volume.volume
    block = volume.block_shape[0]
    step = block if depth is None else operator.index(depth)
    if step < 1:
        raise InvalidArgumentError(f"{volume.path}: slab depth must be a positive integer; got {depth!r}.")
    step = min(step, block)
    start, stop = _z_range(volume, z_start, z_stop)
    for block_start in range(start - start % block, stop, block):
        block_stop = min(block_start + block, stop)
        for z0 in range(max(block_start, start), block_stop, step):
            yield z0, volume.read(np.s_[z0:min(z0 + step, block_stop)])


class PlaneWriter:
    """Write a volume plane by plane: planes arrive in z order, whole-depth blocks leave.

    ``write(plane)`` copies each (y, x) plane into a slab one block deep; when the slab is full,
    its blocks go to ``volume.write_block`` (through the writer processes, if the volume
    started them) and the slab is reused. ``close()`` writes the last, possibly thinner, slab and
    checks that every plane of the z range arrived. The volume stays open: close it after the
    writer. Memory: one slab, ``block depth * y extent * x extent`` voxels.

    ``z_start`` and ``z_stop`` (block-aligned) let several jobs each write their own z range of
    one volume. A PlaneWriter is not thread-safe; feed it from one thread::

        with PlaneWriter(volume) as writer:
            for plane in acquisition:
                writer.write(plane)
    """

    def __init__(self, volume: WritableVolume, z_start: int = 0, z_stop: int | None = None):
        self.volume = volume if isinstance(volume, WritableVolume) else volume.writable  # or a Directory's
        self.z_start, self.z_stop = _z_range(self.volume, z_start, z_stop)
        self._z = self.z_start  # z of the next plane
        self._slab: np.ndarray | None = None
        self._closed = False

    @property
    def z(self) -> int:
        """The z of the next plane to write (``z_stop`` once all have been written)."""
        return self._z

    @property
    def plane_shape(self) -> tuple[int, int]:
        return self.volume.shape[1:]

    def write(self, plane: Any) -> None:
        """Add the next plane, a (y, x) array, cast to the volume's dtype by the rule of :mod:`blockfs.casting`."""
        where = self.volume.path
        if self._closed:
            raise ClosedError(f"{where}: this PlaneWriter is closed; start a new one to write more planes.")
        if self._z >= self.z_stop:
            raise PlaneCountError(f"{where}: too many planes: all {self.z_stop - self.z_start} planes of z range "
                                  f"[{self.z_start}, {self.z_stop}) were already written.")
        array = np.asarray(plane)
        if array.shape != self.plane_shape:
            raise PlaneError(f"{where}: plane z={self._z} has shape {array.shape}; the volume's planes are "
                             f"{self.plane_shape} (y, x).")
        depth = self.volume.block_shape[0]
        if self._slab is None:
            self._slab = np.empty((depth, *self.plane_shape), self.volume.dtype)
        self._slab[self._z % depth] = self.volume.cast(array, f"plane z={self._z}")
        self._z += 1
        if self._z % depth == 0 or self._z == self.z_stop:
            self._flush()

    def _flush(self) -> None:
        """Write the blocks of the slab that ends just before plane ``self._z``."""
        assert self._slab is not None  # write() filled it
        depth = self.volume.block_shape[0]
        z0 = (self._z - 1) // depth * depth
        self.volume[z0:self._z] = self._slab[:self._z - z0]

    def close(self) -> None:
        """Release the slab; raise :class:`PlaneCountError` if planes of the z range are missing.

        The last slab is written by the ``write`` of the range's last plane, so a complete range
        is on its way to the volume before ``close``. A slab left incomplete is not written.
        """
        if self._closed:
            return
        self._closed = True
        self._slab = None
        if self._z != self.z_stop:
            depth = self.volume.block_shape[0]
            unwritten = self._z // depth * depth
            raise PlaneCountError(
                f"{self.volume.path}: got {self._z - self.z_start} of the "
                f"{self.z_stop - self.z_start} planes of z range [{self.z_start}, {self.z_stop}); planes "
                f"{self._z} to {self.z_stop - 1} are missing and blocks from z={unwritten} on were not written.")

    def __enter__(self) -> PlaneWriter:
        return self

    def __exit__(self, exc_type: Any, *exc_info: Any) -> None:
        if exc_type is None:
            self.close()
        else:  # keep the caller's error; the missing planes follow from it
            self._closed = True
            self._slab = None
