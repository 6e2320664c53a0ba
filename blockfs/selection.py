"""Turning a numpy-style index into a region to read and the selection to apply to it."""

from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Any

from .errors import RegionError


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
