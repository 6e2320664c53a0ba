"""Helpers the test modules share (fixtures live in conftest.py)."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, NoReturn, Sequence

import pytest

if TYPE_CHECKING:  # hypothesis only where a module fuzzes: child processes import this module too
    from hypothesis import settings


def examples(share: float) -> settings:
    """Hypothesis settings running ``share`` of the loaded profile's budget (see conftest.py), at least one."""
    from hypothesis import settings
    return settings(max_examples=max(1, round(settings.default.max_examples * share)))


def block_origins(shape: Sequence[int], block: int | Sequence[int]) -> list[tuple[int, int, int]]:
    """First voxels (x, y, z) of every block of a volume of ``shape`` (z, y, x) cut in ``block`` (z, y, x;
    one int for cubes), in entry order (x fastest)."""
    if isinstance(block, int):
        block = (block, block, block)
    return [(x, y, z) for z in range(0, shape[0], block[0]) for y in range(0, shape[1], block[1])
            for x in range(0, shape[2], block[2])]


def origins_of(d: Any) -> list[tuple[int, int, int]]:
    """:func:`block_origins` of an open Directory."""
    return block_origins((d.z_extent, d.y_extent, d.x_extent), (d.z_block_size, d.y_block_size, d.x_block_size))


def unavailable(reason: str) -> NoReturn:
    """Skip the test for a missing dependency, or fail it under CI (the ``CI`` environment variable),
    where everything the tests use must be installed."""
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (required under CI)")
    pytest.skip(reason)
