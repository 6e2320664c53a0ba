"""``blockfs view``'s display range: the same for a volume and its pyramid (taken from a bounded sample
of level-1 blocks spread over the volume), covering the bright structures, and settable."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from helpers import require

from blockfs import Volume, create_volume, open_volume
from blockfs.pyramid.build import build_pyramid
from blockfs.pyramid.folder import LEVEL_FILE, level_key
from blockfs.sample import microscopy_block

pytestmark = pytest.mark.timeout(180)

BLOCK = 64
SHAPE = (192, 384, 256)  # (z, y, x): 3 x 6 x 4 blocks of demo-like sample data
#: Blocks the range may cost per volume, whatever its size.
MAX_READS = 27


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, np.ndarray]:
    """(volume, pyramid folder built from it, the data)."""
    folder = tmp_path_factory.mktemp("contrast")
    data = np.empty(SHAPE, np.uint16)
    path = folder / "sample.blockfs"
    with create_volume(path, SHAPE, np.uint16, (BLOCK,) * 3) as volume:
        for origin in np.ndindex(*(n // BLOCK for n in SHAPE)):
            bz, by, bx = (i * BLOCK for i in origin)
            region = np.s_[bz:bz + BLOCK, by:by + BLOCK, bx:bx + BLOCK]
            data[region] = volume[region] = microscopy_block((bz, by, bx), (BLOCK,) * 3)
    build_pyramid(path, folder / "pyramid", silent=True)
    return path, folder / "pyramid", data


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, list[tuple[int, int, int]]]]:
    """Every block read through :meth:`Volume.read_block`: {index file: [origins]}."""
    seen: dict[str, list[tuple[int, int, int]]] = {}
    original = Volume.read_block

    def counting(self: Volume, x: int, y: int, z: int, *args: object, **kwargs: object) -> np.ndarray:
        seen.setdefault(self.path, []).append((x, y, z))
        return original(self, x, y, z, *args, **kwargs)

    monkeypatch.setattr(Volume, "read_block", counting)
    yield seen


def served_ranges(*paths: Path, **options: object) -> list[tuple[float, float]]:
    """The display range ``blockfs.serve.view`` gives each path's layer."""
    require("neuroglancer")
    from blockfs.serve import view
    server, _ = view(list(paths), **options)
    with server:
        assert server.state.viewer is not None
        return [tuple(layer["shaderControls"]["normalized"]["range"]) for layer in server.state.viewer.state["layers"]]


def test_a_volume_and_its_pyramid_get_the_same_range_covering_the_bright_cells(
        sample: tuple[Path, Path, np.ndarray], reads: dict[str, list[tuple[int, int, int]]]) -> None:
    volume, pyramid, data = sample
    (volume_lo, volume_hi), (pyramid_lo, pyramid_hi) = served_ranges(volume, pyramid)
    assert pyramid_lo == pytest.approx(volume_lo, rel=0.03) and pyramid_hi == pytest.approx(volume_hi, rel=0.03)
    lo, bright = np.percentile(data[data != 0], [0.5, 99.5])
    for low, high in ((volume_lo, volume_hi), (pyramid_lo, pyramid_hi)):
        assert low <= 1.1 * lo and low < bright < high, (low, high, lo, bright)
    level1 = pyramid / level_key(1) / LEVEL_FILE
    assert {os.path.realpath(p) for p in reads} == {os.path.realpath(volume), os.path.realpath(level1)}, reads
    assert all(0 < len(origins) <= MAX_READS for origins in reads.values()), reads


def test_the_range_costs_a_bounded_number_of_blocks_spread_over_the_volume(
        tmp_path: Path, reads: dict[str, list[tuple[int, int, int]]]) -> None:
    from blockfs.serve.viewer import contrast
    block, path = 8, str(tmp_path / "big.blockfs")
    with create_volume(path, (256,) * 3, np.uint16, (block,) * 3) as volume:  # 32 ** 3 block positions
        volume[40:48, 40:48, 40:48] = 700
        volume[128:136, 128:136, 128:136] = 900
    assert contrast(open_volume(path)) == (700, 900)
    origins = np.array(reads[path])
    assert 0 < len(origins) <= MAX_READS
    assert (origins.max(axis=0) - origins.min(axis=0) >= 256 // 2).all(), origins  # spread along every axis


def test_the_range_can_be_set(sample: tuple[Path, Path, np.ndarray]) -> None:
    volume, pyramid, _ = sample
    assert served_ranges(volume, pyramid, display_range=(100.0, 2000.0)) == [(100.0, 2000.0)] * 2
    help_text = subprocess.run([sys.executable, "-m", "blockfs", "view", "--help"], capture_output=True, text=True,
                               timeout=60).stdout
    assert "--contrast LO,HI" in help_text, help_text
    refused = subprocess.run([sys.executable, "-m", "blockfs", "view", "--contrast", "9,3", str(volume)],
                             capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2 and "LO < HI" in refused.stderr, refused.stderr
