"""Grid geometry of reads and writes: a numpy-style index as a box and the selection to apply to it,
the blocks a box touches (:class:`BlockProjection`), and the entry of a block's first voxel."""

from __future__ import annotations

import itertools
import operator
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import BlockCoordinateError, RegionError
from .format import Layout


@dataclass(frozen=True)
class Selection:
    """A bounding box (``start``/``stop`` per axis, z, y, x) and how to index into it."""

    start: tuple[int, ...]
    stop: tuple[int, ...]
    within: tuple[slice | int, ...]

    @property
    def box_shape(self) -> tuple[int, ...]:
        return tuple(b - a for a, b in zip(self.start, self.stop))


def _axis(item: Any, length: int, axis: str, where: str) -> tuple[int, int, slice | int]:
    """(start, stop, index within the box) for one axis."""
    if isinstance(item, slice):
        start, stop, step = item.indices(length)
        span = range(start, stop, step)
        if not span:
            return 0, 0, slice(0, 0)
        low, high = min(span), max(span) + 1
        end = span[-1] - low + (1 if step > 0 else -1)
        return low, high, slice(span[0] - low, end if end >= 0 else None, step)
    try:
        index = operator.index(item)
    except TypeError:
        raise RegionError(f"{where}: index {item!r} on the {axis} axis is not an integer or a slice; "
                          "blockfs supports basic indexing (integers, slices, ...).") from None
    if not -length <= index < length:
        raise RegionError(f"{where}: index {index} is out of range for the {axis} axis of length {length}.")
    index %= length
    return index, index + 1, 0


def select(key: Any, shape: tuple[int, ...], where: str) -> Selection:
    """The :class:`Selection` for ``volume[key]`` on a volume of ``shape`` (z, y, x)."""
    items = list(key) if isinstance(key, tuple) else [key]
    if sum(item is Ellipsis for item in items) > 1:
        raise RegionError(f"{where}: an index can only have one ellipsis (...); got {key!r}.")
    if Ellipsis in items:
        at = items.index(Ellipsis)
        items[at:at + 1] = [slice(None)] * (len(shape) - len(items) + 1)
    if len(items) > len(shape):
        raise RegionError(f"{where}: {len(items)} indices for a {len(shape)}-d volume (z, y, x); got {key!r}.")
    items += [slice(None)] * (len(shape) - len(items))
    axes = [_axis(item, n, name, where) for item, n, name in zip(items, shape, "zyx")]
    return Selection(tuple(a[0] for a in axes), tuple(a[1] for a in axes), tuple(a[2] for a in axes))


def block_entry(layout: Layout, where: str, x: Any, y: Any, z: Any) -> int:
    """The entry of the block whose first voxel is (x, y, z), or :class:`BlockCoordinateError`."""
    try:
        x, y, z = operator.index(x), operator.index(y), operator.index(z)
    except TypeError:
        raise BlockCoordinateError(f"{where}: block coordinates must be integers; "
                                   f"got (x={x!r}, y={y!r}, z={z!r}).") from None
    bx, by, bz = layout.x_block_size, layout.y_block_size, layout.z_block_size
    if x % bx or y % by or z % bz or not (0 <= x < layout.x_extent and 0 <= y < layout.y_extent
                                          and 0 <= z < layout.z_extent):  # once per block written: kept short
        for name, c, size, extent in zip("xyz", (x, y, z), (bx, by, bz),
                                         (layout.x_extent, layout.y_extent, layout.z_extent)):
            if c % size or not 0 <= c < extent:
                raise BlockCoordinateError(
                    f"{where}: {name}={c} is not the first voxel of a block; {name} must be a "
                    f"multiple of the block size {size} in [0, {extent}).")
    return layout.entry_index(x, y, z)


@dataclass(frozen=True)
class BlockProjection:
    """One block's share of a region (all selections in (z, y, x) order)."""

    #: The block's first voxel (x, y, z), as ``read_block`` and ``write_block`` take it.
    origin: tuple[int, int, int]
    entry: int
    #: The block's shape (z, y, x), truncated at the volume's edges.
    shape: tuple[int, int, int]
    #: The part of the block inside the region.
    block_selection: tuple[slice, slice, slice]
    #: Where that part goes in the region's bounding box.
    out_selection: tuple[slice, slice, slice]
    #: Whether the whole block lies inside the region.
    is_complete: bool


def projections(layout: Layout, start: tuple[int, ...], stop: tuple[int, ...]) -> Iterator[BlockProjection]:
    """The blocks that intersect the box [start, stop) (z, y, x), z-major."""
    ranges = [range(a // b * b, e, b) for a, e, b in zip(start, stop, layout.block_shape)]
    for z, y, x in itertools.product(*ranges):
        shape = layout.block_shape_at(x, y, z)
        lo = [max(a, o) for a, o in zip(start, (z, y, x))]
        hi = [min(b, o + n) for b, o, n in zip(stop, (z, y, x), shape)]
        yield BlockProjection(
            (x, y, z), layout.entry_index(x, y, z), shape,
            # the zips run over three axes, which mypy cannot see: it types each as tuple[slice, ...]
            tuple(slice(low - o, h - o) for low, h, o in zip(lo, hi, (z, y, x))),  # type: ignore[arg-type]
            tuple(slice(low - a, h - a) for low, h, a in zip(lo, hi, start)),  # type: ignore[arg-type]
            all(h - low == n for low, h, n in zip(lo, hi, shape)))


def box_entries(layout: Layout, start: tuple[int, ...], stop: tuple[int, ...]) -> np.ndarray:
    """The entries of the blocks that intersect the box [start, stop) (z, y, x), in the order of :func:`projections`."""
    axes = [np.arange(a // b, -(-e // b), dtype=np.int64) * s for a, e, b, s in
            zip(start, stop, layout.block_shape, (layout.z_stride, layout.y_stride, layout.x_stride))]
    return (axes[0][:, None, None] + axes[1][None, :, None] + axes[2][None, None, :]).ravel()
