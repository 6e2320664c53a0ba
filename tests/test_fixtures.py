"""The library reads every blockfs 1.0.0 fixture (written by the earlier implementation) exactly.

The fixtures are opened where they are, read-only; a test that needs a changed volume works on a
copy in its temporary folder.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fixtures import (
    case_ids,
    case_params,
    copy_volume,
    drop_last_entry,
    pad_header,
    require_fixtures,
)
from helpers import block_origins

from blockfs import Directory

params = pytest.mark.parametrize("case", case_params(), ids=case_ids())


def open_case(case: dict[str, Any] | None) -> tuple[Directory, np.ndarray]:
    """The fixture volume opened read-only, and the array it must read as."""
    folder = require_fixtures()
    assert case is not None
    expected = np.load(folder / case["expected_array"])
    assert hashlib.sha256(np.ascontiguousarray(expected).tobytes()).hexdigest() == case["expected_sha256"]
    return Directory.open(str(folder / case["directory_file"])), expected


@params
def test_header_facts(case: dict[str, Any] | None) -> None:
    d, _ = open_case(case)
    assert case is not None
    with d:
        assert d.shape == tuple(case["shape_zyx"])
        assert d.dtype == np.dtype(case["dtype"])
        assert (d.z_block_size, d.y_block_size, d.x_block_size) == tuple(case["block_size_zyx"])
        assert (d.z_extent, d.y_extent, d.x_extent) == tuple(case["shape_zyx"])
        assert len(d.block_filenames) == case["n_block_files"]
        assert d.compression.name == case["compression"]
        assert d.compression_level == case["compression_level"]
        assert d.metadata == case["metadata"]


@params
def test_full_read_is_bit_exact(case: dict[str, Any] | None) -> None:
    d, expected = open_case(case)
    with d:
        volume = d[:, :, :]
    assert volume.dtype == expected.dtype
    np.testing.assert_array_equal(volume, expected, strict=True)
    assert volume.tobytes() == expected.tobytes()


@params
def test_every_block(case: dict[str, Any] | None) -> None:
    d, expected = open_case(case)
    assert case is not None
    with d:
        for x, y, z in block_origins(case["shape_zyx"], case["block_size_zyx"]):
            bz, by, bx = d.get_block_size(x, y, z)
            block = d.read_block(x, y, z)
            np.testing.assert_array_equal(block, expected[z:z + bz, y:y + by, x:x + bx], strict=True,
                                          err_msg=f"block {(x, y, z)}")


@params
def test_missing_blocks_read_as_zeros(case: dict[str, Any] | None) -> None:
    d, _ = open_case(case)
    assert case is not None
    with d:
        for x, y, z in case["missing_blocks_xyz"]:
            block = d.read_block(x, y, z)
            assert block.shape == d.get_block_size(x, y, z)
            assert block.dtype == d.dtype
            assert not block.any(), f"block {(x, y, z)} should read as zeros"


@params
def test_random_regions(case: dict[str, Any] | None) -> None:
    d, expected = open_case(case)
    rng = np.random.default_rng(20240517)
    with d:
        for _ in range(12):
            lo = [int(rng.integers(0, n)) for n in expected.shape]
            hi = [int(rng.integers(a + 1, n + 1)) for a, n in zip(lo, expected.shape)]
            region = d[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
            np.testing.assert_array_equal(region, expected[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]], strict=True,
                                          err_msg=f"region {lo} to {hi}")
        # Single voxels, lines and planes that cross block boundaries.
        z, y, x = (n // 2 for n in expected.shape)
        np.testing.assert_array_equal(d[z:z + 1, y:y + 1, x:x + 1], expected[z:z + 1, y:y + 1, x:x + 1], strict=True)
        np.testing.assert_array_equal(d[:, y:y + 1, :], expected[:, y:y + 1, :], strict=True)
        np.testing.assert_array_equal(d[z:z + 1, :, :], expected[z:z + 1, :, :], strict=True)


@params
def test_entry_past_end_of_index_is_missing(case: dict[str, Any] | None, tmp_path: Path) -> None:
    folder = require_fixtures()
    assert case is not None
    directory_file = copy_volume(case, tmp_path)
    drop_last_entry(directory_file)
    expected = np.load(folder / case["expected_array"])
    z, y, x = ((-(-n // b) - 1) * b for n, b in zip(case["shape_zyx"], case["block_size_zyx"]))
    expected[z:, y:, x:] = 0

    with Directory.open(str(directory_file)) as d:
        np.testing.assert_array_equal(d[:, :, :], expected, strict=True)
        assert not d.read_block(x, y, z).any()


@params
def test_entries_start_at_the_stored_offset(case: dict[str, Any] | None, tmp_path: Path) -> None:
    folder = require_fixtures()
    assert case is not None
    directory_file = copy_volume(case, tmp_path)
    pad_header(directory_file, 37)

    with Directory.open(str(directory_file)) as d:
        np.testing.assert_array_equal(d[:, :, :], np.load(folder / case["expected_array"]), strict=True)
        assert d.metadata == case["metadata"]


@params
def test_close_twice(case: dict[str, Any] | None) -> None:
    d, _ = open_case(case)
    d.close()
    d.close()
