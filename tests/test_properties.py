"""Property tests: a blockfs volume reads like the numpy array that received the same writes.

Volumes of random shape, block size and dtype get whole-block region writes and ``write_block``
calls; then random basic indexes (integers, slices with any start, stop and step, Ellipsis) must
give what numpy gives. Region writes that are not made of whole blocks must raise RegionError and
change nothing.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from helpers import examples

from blockfs import Directory, RegionError

DTYPES = ("uint8", "uint16", "float32")
#: At most this many blocks along an axis, which keeps a volume under 512 blocks and the run short.
MAX_GRID = 8

#: Each example creates and writes a volume: a small share of the profile's budget.
SETTINGS = examples(1 / 25)


# -- strategies ----------------------------------------------------------------------------------


@st.composite
def layouts(draw: st.DrawFn) -> dict[str, Any]:
    """Shape (z, y, x), block shape (z, y, x), dtype and shard count of a volume."""
    shape = tuple(draw(st.integers(1, 70)) for _ in range(3))
    blocks = tuple(draw(st.integers(max(1, -(-n // MAX_GRID)), 32)) for n in shape)
    return {"shape": shape, "blocks": blocks, "dtype": draw(st.sampled_from(DTYPES)),
            "n_files": draw(st.integers(1, 3))}


@st.composite
def writes(draw: st.DrawFn, layout: dict[str, Any]) -> list[tuple[str, tuple[Any, ...], int]]:
    """Whole-block writes: ("region", key, seed) with a slice key, or ("block", (x, y, z), seed)."""
    shape, blocks = layout["shape"], layout["blocks"]
    grid = [-(-n // b) for n, b in zip(shape, blocks)]
    result = []
    for _ in range(draw(st.integers(0, 5))):
        seed = draw(st.integers(0, 2**32 - 1))
        if draw(st.booleans()):
            key = []
            for n, b, g in zip(shape, blocks, grid):
                i0 = draw(st.integers(0, g - 1))
                i1 = draw(st.integers(i0 + 1, g))
                stop: int | None = min(i1 * b, n)
                if stop == n and draw(st.booleans()):
                    stop = None
                key.append(slice(i0 * b, stop, draw(st.sampled_from([None, 1]))))
            form = draw(st.sampled_from(["tuple", "ellipsis"]))
            if form == "ellipsis" and all(k.start == 0 and k.stop in (None, n) for k, n in zip(key, shape)):
                result.append(("region", (Ellipsis,), seed))
            else:
                result.append(("region", tuple(key), seed))
        else:
            origin = tuple(draw(st.integers(0, g - 1)) * b for g, b in zip(grid, blocks))  # z, y, x
            result.append(("block", origin[::-1], seed))
    return result


def axis_items(n: int) -> st.SearchStrategy[Any]:
    """One axis of a basic index on an axis of length ``n`` (integers now and then one out of range)."""
    bound = st.none() | st.integers(-n - 3, n + 3)
    step = st.none() | st.integers(-9, 9).filter(bool)
    return st.integers(-n - 1, n) | st.builds(slice, bound, bound, step) | st.builds(slice, bound, bound, step)


@st.composite
def basic_indexes(draw: st.DrawFn, shape: tuple[int, ...]) -> Any:
    """A numpy basic index for ``shape``: up to three items, with or without an Ellipsis."""
    ndim = len(shape)
    if draw(st.booleans()):
        lead = draw(st.integers(0, ndim))
        trail = draw(st.integers(0, ndim - lead))
        items = ([draw(axis_items(n)) for n in shape[:lead]] + [Ellipsis]
                 + [draw(axis_items(n)) for n in shape[ndim - trail:]])
    else:
        items = [draw(axis_items(n)) for n in shape[:draw(st.integers(0, ndim))]]
    if len(items) == 1 and draw(st.booleans()):
        return items[0]
    return tuple(items)


# -- helpers -------------------------------------------------------------------------------------


def values(seed: int, shape: tuple[int, ...], dtype: str) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if dtype == "float32":
        return (rng.standard_normal(shape) * 1000).astype(np.float32)
    return rng.integers(0, np.iinfo(dtype).max, shape, dtype=dtype, endpoint=True)


def create(folder: str, layout: dict[str, Any]) -> Directory:
    (nz, ny, nx), (bz, by, bx) = layout["shape"], layout["blocks"]
    return Directory(nx, ny, nz, layout["dtype"], str(Path(folder) / "p.blockfs"), n_filenames=layout["n_files"],
                     x_block_size=bx, y_block_size=by, z_block_size=bz, compression_level=1).create()


def apply(d: Directory, expected: np.ndarray, plan: list[tuple[str, tuple[Any, ...], int]]) -> None:
    """Carry out ``plan`` on the volume and on the numpy array alike."""
    for kind, where, seed in plan:
        if kind == "region":
            data = values(seed, expected[where].shape, d.dtype.name)
            d[where] = data
            expected[where] = data
        else:
            x, y, z = where
            shape = d.get_block_size(x, y, z)
            data = values(seed, shape, d.dtype.name)
            if seed % 3 == 0:  # write_block casts; give it float64 or int64 input now and then
                data = data.astype(np.float64 if d.dtype.kind == "f" else np.int64)
            d.write_block(data, x, y, z)
            expected[z:z + shape[0], y:y + shape[1], x:x + shape[2]] = data


def assert_reads_like_numpy(volume: Directory, expected: np.ndarray, key: Any) -> None:
    """``volume[key]`` equals ``expected[key]``, or raises RegionError where numpy raises IndexError."""
    try:
        want = expected[key]
    except IndexError:
        with pytest.raises(RegionError):
            volume[key]
        return
    assert_same(volume[key], want, key)


def assert_same(got: Any, want: Any, key: Any) -> None:
    assert np.shape(got) == np.shape(want), f"shape for {key!r}: {np.shape(got)} != {np.shape(want)}"
    assert np.asarray(got).dtype == np.asarray(want).dtype, f"dtype for {key!r}"
    assert np.array_equal(got, want), f"values for {key!r}"


def snapshot(folder: str) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(Path(folder).iterdir()) if p.is_file()}


def region_is_whole_blocks(key: tuple[Any, ...], shape: tuple[int, ...], blocks: tuple[int, ...]
                           ) -> bool | None:
    """True for a region made of whole blocks, False for one that is not, None for an edge case.

    Edge cases are left out of the property: empty regions, and strided slices that select a
    single voxel.
    """
    whole = True
    for item, n, b in zip(key, shape, blocks):
        if isinstance(item, int):
            if b == 1:
                return None
            whole = False
            continue
        span = range(*item.indices(n))
        if not span:
            return None
        if span.step != 1:
            if len(span) == 1:
                return None
            whole = False
        elif span.start % b or (span.stop % b and span.stop != n):
            whole = False
    return whole


# -- properties ----------------------------------------------------------------------------------


@SETTINGS
@given(data=st.data())
def test_reads_match_numpy(data: st.DataObject) -> None:
    layout = data.draw(layouts(), label="layout")
    plan = data.draw(writes(layout), label="writes")
    keys = data.draw(st.lists(basic_indexes(layout["shape"]), min_size=1, max_size=6), label="keys")
    with tempfile.TemporaryDirectory(prefix="blockfs-prop-") as folder:
        with create(folder, layout) as d:
            expected = np.zeros(layout["shape"], layout["dtype"])
            apply(d, expected, plan)
            for key in keys:
                assert_reads_like_numpy(d, expected, key)
        with Directory.open(str(Path(folder) / "p.blockfs")) as r:
            assert_same(r[...], expected, Ellipsis)
            for key in keys:
                assert_reads_like_numpy(r, expected, key)
            for kind, where, _ in plan:
                if kind == "block":
                    x, y, z = where
                    bz, by, bx = r.get_block_size(x, y, z)
                    assert_same(r.read_block(x, y, z), expected[z:z + bz, y:y + by, x:x + bx], where)


@SETTINGS
@given(data=st.data())
def test_every_block_reads_back(data: st.DataObject) -> None:
    layout = data.draw(layouts(), label="layout")
    plan = data.draw(writes(layout), label="writes")
    with tempfile.TemporaryDirectory(prefix="blockfs-prop-") as folder:
        with create(folder, layout) as d:
            expected = np.zeros(layout["shape"], layout["dtype"])
            apply(d, expected, plan)
        (bz, by, bx), (nz, ny, nx) = layout["blocks"], layout["shape"]
        with Directory.open(str(Path(folder) / "p.blockfs")) as r:
            for z in range(0, nz, bz):
                for y in range(0, ny, by):
                    for x in range(0, nx, bx):
                        assert_same(r.read_block(x, y, z), expected[z:z + bz, y:y + by, x:x + bx], (x, y, z))


@st.composite
def unaligned_regions(draw: st.DrawFn, shape: tuple[int, ...]) -> tuple[Any, ...]:
    key: list[Any] = []
    for n in shape:
        if draw(st.integers(0, 5)) == 0:
            key.append(draw(st.integers(0, n - 1)))
        else:
            start = draw(st.integers(0, n - 1))
            stop = draw(st.integers(start + 1, n))
            key.append(slice(start, stop, draw(st.sampled_from([None, 1, 1, 2, 3]))))
    return tuple(key)


@SETTINGS
@given(data=st.data())
def test_unaligned_region_writes_are_refused(data: st.DataObject) -> None:
    layout = data.draw(layouts(), label="layout")
    plan = data.draw(writes(layout), label="writes")
    bad = data.draw(st.lists(unaligned_regions(layout["shape"]), min_size=1, max_size=4), label="regions")
    verdicts = [region_is_whole_blocks(key, layout["shape"], layout["blocks"]) for key in bad]
    bad = [key for key, whole in zip(bad, verdicts) if whole is False]
    assume(bad)
    bz, by, bx = layout["blocks"]
    with tempfile.TemporaryDirectory(prefix="blockfs-prop-") as folder:
        with create(folder, layout) as d:
            expected = np.zeros(layout["shape"], layout["dtype"])
            apply(d, expected, plan)
            before = snapshot(folder)
            for key in bad:
                with pytest.raises(RegionError) as info:
                    d[key] = values(1, expected[key].shape, layout["dtype"])
                assert f"{bz}x{by}x{bx}" in str(info.value)
                assert d.directory_filename in str(info.value)
            assert snapshot(folder) == before
            assert_same(d[...], expected, Ellipsis)
