"""Downsampling by 2 on every axis, one block at a time, for each method.

A level is built from the level below as *accumulators*: for ``mean`` the exact sum of the
level-1 voxels under each voxel (float64, exact for the integer sums it accepts, see
:meth:`Method.check_sums`), for the other methods the voxel values themselves. ``reduce`` turns a
block of values or accumulators into the accumulators of the coarser voxels it covers (2x2x2
cells; a cell cut by the volume's edge uses its in-bounds voxels only), and ``finish`` turns
accumulators into the level's voxels. For ``mean`` the divisor of each voxel is the number of
in-bounds level-1 voxels under it, so every level is the exact mean of its footprint, rounded
half to even for integers: what tensorstore's ``downsample`` driver computes with
``method="mean"``.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import numpy as np

from ..errors import InvalidArgumentError

METHODS = ("mean", "max", "mode", "stride")


def _halve(a: np.ndarray, axis: int, combine: np.ufunc, dtype: np.dtype) -> np.ndarray:
    """Combine neighbouring pairs along ``axis``; an odd last element stands alone."""
    first = a[(slice(None),) * axis + (slice(0, None, 2),)]
    second = a[(slice(None),) * axis + (slice(1, None, 2),)]
    if first.shape == second.shape:
        return combine(first, second, dtype=dtype)
    out = first.astype(dtype)
    head = out[(slice(None),) * axis + (slice(0, second.shape[axis]),)]
    combine(head, second, out=head)
    return out


def _cells(a: np.ndarray, combine: np.ufunc, dtype: np.dtype) -> np.ndarray:
    """``combine`` over the in-bounds voxels of each 2x2x2 cell, one axis at a time (z first: whole planes)."""
    for axis in range(3):
        a = _halve(a, axis, combine, dtype)
    return a


#: Integer sums below this are exact in float64, and so is their mean's rounding half to even.
EXACT_SUM = 2**52


def _sum(acc: np.ndarray) -> np.ndarray:
    # Eight voxels of at most 16 bits sum exactly in float32, which halves the memory traffic.
    small = acc.dtype.kind in "iu" and acc.dtype.itemsize <= 2
    return _cells(acc, np.add, np.dtype(np.float32 if small else np.float64))


def _max(acc: np.ndarray) -> np.ndarray:
    return _cells(acc, np.maximum, acc.dtype)


def _stride(acc: np.ndarray) -> np.ndarray:
    return acc[::2, ::2, ::2].copy()


def _head(out: np.ndarray, view: np.ndarray) -> np.ndarray:
    return out[:view.shape[0], :view.shape[1], :view.shape[2]]


def _mode(acc: np.ndarray) -> np.ndarray:
    """The most frequent in-bounds value of each 2x2x2 cell; ties go to the smallest value."""
    views = [acc[dz::2, dy::2, dx::2] for dz, dy, dx in itertools.product((0, 1), repeat=3)]
    shape = views[0].shape
    values = np.zeros((8,) + shape, acc.dtype)
    valid = np.zeros((8,) + shape, bool)
    for i, view in enumerate(views):
        _head(values[i], view)[...] = view
        _head(valid[i], view)[...] = True
    best, best_count = values[0].copy(), np.zeros(shape, np.int8)
    for i in range(8):
        count = np.zeros(shape, np.int8)
        for j in range(8):
            count += (values[j] == values[i]) & valid[j]
        better = valid[i] & ((count > best_count) | ((count == best_count) & (values[i] < best)))
        best = np.where(better, values[i], best)
        best_count = np.where(better, count, best_count)
    return best


def footprint_counts(origin: tuple[int, ...], shape: tuple[int, ...], factor: int,
                     extent: tuple[int, ...]) -> np.ndarray | float:
    """How many in-bounds level-1 voxels lie under each voxel of a block of a level with ``factor``.

    ``origin`` and ``shape`` are the block's (z, y, x) first voxel and shape in that level,
    ``extent`` the level-1 volume's (z, y, x) shape. A block inside the volume gets one number.
    """
    if all((o + n) * factor <= e for o, n, e in zip(origin, shape, extent)):
        return float(factor ** 3)
    axes = []
    for o, n, e in zip(origin, shape, extent):
        v = np.arange(o, o + n, dtype=np.int64)
        axes.append((np.minimum((v + 1) * factor, e) - v * factor).astype(np.float64))
    return axes[0][:, None, None] * axes[1][None, :, None] * axes[2][None, None, :]


def _mean_finish(dtype: np.dtype) -> Callable[[np.ndarray, np.ndarray | float], np.ndarray]:
    def finish(acc: np.ndarray, counts: np.ndarray | float) -> np.ndarray:
        # A number of voxels is a power of two (exact reciprocal), an array holds the edge's counts.
        mean = acc * (1.0 / counts) if isinstance(counts, float) else acc / counts
        if dtype.kind != "f":
            np.rint(mean, out=mean)  # half to even; exact, as the sums are below EXACT_SUM
        return mean.astype(dtype)

    return finish


class Method:
    """One downsampling method for one dtype: accumulator type, reduction and finishing."""

    def __init__(self, name: str, dtype: np.dtype):
        if name not in METHODS:
            raise InvalidArgumentError(f"method must be one of {', '.join(METHODS)}; got {name!r}.")
        if dtype.kind not in "iuf":
            raise InvalidArgumentError(f"a pyramid needs an integer or floating-point volume; got {dtype.name}.")
        self.name, self.dtype = name, dtype
        self.acc_dtype = np.dtype(np.float64) if name == "mean" else dtype
        self.reduce: Callable[[np.ndarray], np.ndarray] = {"mean": _sum, "max": _max, "mode": _mode,
                                                            "stride": _stride}[name]
        self._finish = _mean_finish(dtype) if name == "mean" else None

    def check_sums(self, footprint: int, where: str) -> None:
        """Raise if the sums of ``footprint`` integer voxels could be too large to stay exact (mean only)."""
        if self.name == "mean" and self.dtype.kind in "iu":
            info = np.iinfo(self.dtype)
            if max(abs(int(info.min)), int(info.max)) * footprint >= EXACT_SUM:
                raise InvalidArgumentError(
                    f"{where}: the mean of up to {footprint} {self.dtype.name} voxels needs sums beyond 2^52, "
                    "where they are no longer exact; use fewer levels or another method (max, mode, stride).")

    def finish(self, acc: np.ndarray, counts: Callable[[], np.ndarray | float]) -> np.ndarray:
        """A block's voxels from its accumulators; ``counts()`` gives the in-bounds footprint sizes."""
        return acc if self._finish is None else self._finish(acc, counts())
