"""The spec decoder (tests/spec_decoder.py) decodes every 1.0.0 fixture exactly.

This checks docs/FORMAT.md and the decoder written from it against volumes written by the earlier
implementation. It needs no part of the blockfs package.
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
from spec_decoder import read_volume


@pytest.mark.parametrize("case", case_params(), ids=case_ids())
def test_spec_decoder_reads_fixture(case: dict[str, Any] | None) -> None:
    folder = require_fixtures()
    assert case is not None
    expected = np.load(folder / case["expected_array"])
    assert hashlib.sha256(np.ascontiguousarray(expected).tobytes()).hexdigest() == case["expected_sha256"]

    volume, metadata = read_volume(folder / case["directory_file"])

    assert volume.shape == tuple(case["shape_zyx"]) == expected.shape
    assert volume.dtype == np.dtype(case["dtype"]) == expected.dtype
    np.testing.assert_array_equal(volume, expected, strict=True)
    assert volume.tobytes() == expected.tobytes()  # bit-exact, NaN payloads and signed zeros included
    assert hashlib.sha256(volume.tobytes()).hexdigest() == case["expected_sha256"]
    assert metadata == case["metadata"]


@pytest.mark.parametrize("case", case_params(), ids=case_ids())
def test_fixture_missing_blocks_are_zero(case: dict[str, Any] | None) -> None:
    folder = require_fixtures()
    assert case is not None
    volume, _ = read_volume(folder / case["directory_file"])
    bz, by, bx = case["block_size_zyx"]
    for x, y, z in case["missing_blocks_xyz"]:
        assert not volume[z:z + bz, y:y + by, x:x + bx].any(), f"block {(x, y, z)} should be missing"


def last_block_corner(case: dict[str, Any]) -> tuple[int, int, int]:
    """(z, y, x) of the first voxel of the block with the largest entry number (default strides)."""
    return tuple((-(-n // b) - 1) * b for n, b in zip(case["shape_zyx"], case["block_size_zyx"]))  # type: ignore[return-value]


@pytest.mark.parametrize("case", case_params(), ids=case_ids())
def test_entry_past_end_of_index_is_missing(case: dict[str, Any] | None, tmp_path: Path) -> None:
    folder = require_fixtures()
    assert case is not None
    directory_file = copy_volume(case, tmp_path)
    drop_last_entry(directory_file)
    expected = np.load(folder / case["expected_array"])
    z, y, x = last_block_corner(case)
    expected[z:, y:, x:] = 0

    volume, _ = read_volume(directory_file)

    np.testing.assert_array_equal(volume, expected, strict=True)


@pytest.mark.parametrize("case", case_params(), ids=case_ids())
def test_entries_start_at_the_stored_offset(case: dict[str, Any] | None, tmp_path: Path) -> None:
    folder = require_fixtures()
    assert case is not None
    directory_file = copy_volume(case, tmp_path)
    pad_header(directory_file, 37)

    volume, metadata = read_volume(directory_file)

    np.testing.assert_array_equal(volume, np.load(folder / case["expected_array"]), strict=True)
    assert metadata == case["metadata"]
