"""Independent references for pyramid tests: each level computed with numpy on the whole array.

Nothing here shares code with blockfs.pyramid: the mean and max come straight from level 1 (a
padded reshape per factor), the mode from the reference's own level below, cell by cell.
"""

from __future__ import annotations

import collections
import itertools
import os
from pathlib import Path

import numpy as np
import pytest

from blockfs import Directory


def require(module: str):
    """Import an optional test dependency; skip without it, or fail under CI."""
    try:
        return __import__(module)
    except ImportError:
        message = f"{module} is not installed (pip install {module}; it is in blockfs's [test] extra)"
        if os.environ.get("CI"):
            pytest.fail(message, pytrace=False)
        pytest.skip(message)


def sample(shape: tuple[int, int, int], dtype: str, seed: int = 0) -> np.ndarray:
    """Test voxels: the full range for 8-bit types, signed values for ints, quarter steps for floats.

    Float values are multiples of 1/4 below 2^12, so every sum of them is exact in float64 and
    the mean does not depend on the order of summation.
    """
    rng = np.random.default_rng(seed)
    dt = np.dtype(dtype)
    if dt.kind == "f":
        return (rng.integers(-4000, 16000, shape) / 4).astype(dt)
    info = np.iinfo(dt)
    return rng.integers(info.min, int(info.max) + 1, shape, dtype=dt)


def write_volume(path: Path, data: np.ndarray, block: tuple[int, int, int], missing=lambda z, y, x: False,
                 metadata: dict | None = None, n_files: int = 2) -> np.ndarray:
    """Write ``data`` as a volume, leaving out blocks for which ``missing(z, y, x)`` (first voxels) holds.

    Returns the array the volume reads as (zeros where blocks are missing).
    """
    expected = data.copy()
    z_, y_, x_ = data.shape
    d = Directory(x_, y_, z_, data.dtype, str(path), n_filenames=n_files, z_block_size=block[0],
                  y_block_size=block[1], x_block_size=block[2], metadata=metadata).create()
    for z, y, x in itertools.product(*(range(0, n, b) for n, b in zip(data.shape, block))):
        region = np.s_[z:z + block[0], y:y + block[1], x:x + block[2]]
        if missing(z, y, x):
            expected[region] = 0
        else:
            d.write_block(data[region], x, y, z)
    d.close()
    return expected


def _padded(a: np.ndarray, f: int, fill) -> np.ndarray:
    shape = [-(-n // f) * f for n in a.shape]
    out = np.full(shape, fill, a.dtype)
    out[:a.shape[0], :a.shape[1], :a.shape[2]] = a
    return out.reshape(shape[0] // f, f, shape[1] // f, f, shape[2] // f, f)


def mean(a: np.ndarray, f: int) -> np.ndarray:
    """The mean of the in-bounds voxels of each f x f x f footprint, rounded half to even for integers."""
    wide = np.float64 if a.dtype.kind == "f" else np.int64
    sums = _padded(a.astype(wide), f, 0).sum(axis=(1, 3, 5))
    counts = _padded(np.ones(a.shape, np.int64), f, 0).sum(axis=(1, 3, 5))
    return (sums / counts if a.dtype.kind == "f" else np.rint(sums / counts)).astype(a.dtype)


def maximum(a: np.ndarray, f: int) -> np.ndarray:
    low = -np.inf if a.dtype.kind == "f" else np.iinfo(a.dtype).min
    return _padded(a, f, low).max(axis=(1, 3, 5))


def mode2(a: np.ndarray) -> np.ndarray:
    """The most frequent value of each in-bounds 2 x 2 x 2 cell; ties go to the smallest value."""
    out = np.empty([-(-n // 2) for n in a.shape], a.dtype)
    for z, y, x in np.ndindex(*out.shape):
        counts = collections.Counter(a[2 * z:2 * z + 2, 2 * y:2 * y + 2, 2 * x:2 * x + 2].ravel().tolist())
        out[z, y, x] = min(counts, key=lambda v: (-counts[v], v))
    return out


def levels(a: np.ndarray, method: str, n: int) -> list[np.ndarray]:
    """Levels 1..n of ``a`` by ``method``."""
    if method == "mode":
        out = [a]
        for _ in range(n - 1):
            out.append(mode2(out[-1]))
        return out
    f = {"mean": mean, "max": maximum, "stride": lambda a, f: a[::f, ::f, ::f]}[method]
    return [a] + [f(a, 2 ** i) for i in range(1, n)]
