"""One casting rule for write_block (pool and direct paths) and region writes: in-range values cast
as numpy casts them, out-of-range values and NaN clipped with one warning per volume object."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest

from blockfs import BlockfsWarning, Directory

pytestmark = pytest.mark.timeout(120)

BLOCK = (8, 16, 16)  # z, y, x


def volume(tmp_path: Path, dtype: str, pool: bool) -> Directory:
    d = Directory(32, 16, 8, dtype, str(tmp_path / "v.blockfs"), n_filenames=2, x_block_size=BLOCK[2],
                  y_block_size=BLOCK[1], z_block_size=BLOCK[0]).create()
    if pool:
        d.start_writer_processes()
    return d


def written(d: Directory) -> np.ndarray:
    d.close()
    return Directory.open(d.directory_filename)[...]


PATHS = pytest.mark.parametrize("pool", [False, True], ids=["direct", "pool"])


@PATHS
def test_out_of_range_floats_are_clipped_with_one_warning(tmp_path: Path, pool: bool) -> None:
    d = volume(tmp_path, "uint16", pool)
    block = np.full(BLOCK, 1000.9)
    block[0, 0, :3] = (-1.0, 70000.0, np.nan)
    with pytest.warns(BlockfsWarning, match=r"3 values of the block at \(x=0, y=0, z=0\).*uint16.*clipped") as caught:
        d.write_block(block, 0, 0, 0)
    assert len(caught) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no second warning from the same volume object
        d.write_block(np.full(BLOCK, -5.0), 16, 0, 0)
    assert d.clipped_values == 3 + block.size
    data = written(d)
    assert list(data[0, 0, :4]) == [0, 65535, 0, 1000]  # never 65535 for -1 or 4464 for 70000
    assert (data[:, :, 16:] == 0).all()


@PATHS
def test_in_range_values_cast_as_before_without_warning(tmp_path: Path, pool: bool) -> None:
    d = volume(tmp_path, "uint16", pool)
    deconvolved = np.random.default_rng(1).uniform(0, 65535.99, BLOCK)  # float output of a pipeline
    means = np.random.default_rng(2).integers(0, 65536, BLOCK).astype(np.uint64)  # a pyramid's uint64 means
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        d.write_block(deconvolved, 0, 0, 0)
        d.write_block(means, 16, 0, 0)
    assert d.clipped_values == 0
    data = written(d)
    np.testing.assert_array_equal(data[:, :, :16], deconvolved.astype(np.uint16))
    np.testing.assert_array_equal(data[:, :, 16:], means.astype(np.uint16))


def test_integer_overflow_is_clipped(tmp_path: Path) -> None:
    d = volume(tmp_path, "uint16", pool=False)
    block = np.zeros(BLOCK, np.int64)
    block[0, 0, :3] = (2**40, -(2**40), 65536)
    with pytest.warns(BlockfsWarning, match="3 values"):
        d.write_block(block, 0, 0, 0)
    means = np.full(BLOCK, 2**63 + 5, np.uint64)
    d.write_block(means, 16, 0, 0)
    data = written(d)
    assert list(data[0, 0, :4]) == [65535, 0, 65535, 0] and (data[:, :, 16:] == 65535).all()


def test_int64_volume_clips_huge_unsigned_values(tmp_path: Path) -> None:
    d = volume(tmp_path, "int64", pool=False)
    with pytest.warns(BlockfsWarning, match="int64"):
        d.write_block(np.full(BLOCK, 2**64 - 1, np.uint64), 0, 0, 0)
    assert (written(d)[:, :, :16] == 2**63 - 1).all()


def test_float64_into_float32_is_not_clipped(tmp_path: Path) -> None:
    d = volume(tmp_path, "float32", pool=False)
    block = np.random.default_rng(3).normal(0, 1e6, BLOCK)
    block[0, 0, 0] = np.nan
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        d.write_block(block, 0, 0, 0)
    assert d.clipped_values == 0
    np.testing.assert_array_equal(written(d)[:, :, :16], block.astype(np.float32))


def test_region_writes_follow_the_same_rule(tmp_path: Path) -> None:
    d = volume(tmp_path, "uint16", pool=False)
    region = np.full((8, 16, 32), 12.5)
    region[..., -1] = -3
    with pytest.warns(BlockfsWarning, match="the block at") as caught:
        d[:, :, :] = region
    assert len(caught) == 1 and d.clipped_values == 8 * 16
    data = written(d)
    assert (data[..., :-1] == 12).all() and (data[..., -1] == 0).all()
