"""blockfs2jp2k, run as the installed command: lossless planes voxel for voxel, lossy ones by PSNR."""

from __future__ import annotations

import functools
from pathlib import Path

import glymur
import numpy as np
import pytest

from fixtures import fixture_cases, require_fixtures
from helpers import console
from volumes import make_volume

from blockfs import Directory
from blockfs.convert.jp2k import ENCODER_BYTES_PER_VOXEL, GB, plan, resolutions
from blockfs.sample import microscopy_block

pytestmark = pytest.mark.timeout(120)

INTEGER_FIXTURES = [c for c in fixture_cases() if c["dtype"] in ("uint8", "uint16")]


run = functools.partial(console, "blockfs2jp2k")


def read_planes(folder: Path, name: str, count: int) -> np.ndarray:
    """The ``count`` planes ``name % z``, the only files in ``folder``, as one (z, y, x) array."""
    assert sorted(p.name for p in folder.iterdir()) == sorted(name % z for z in range(count))
    return np.stack([glymur.Jp2k(str(folder / (name % z)))[:] for z in range(count)])


def test_openjpeg_can_write() -> None:
    assert glymur.version.openjpeg_version_tuple >= (2, 3, 0), glymur.version.openjpeg_version


@pytest.mark.parametrize("dtype, workers, memory", [("uint8", 1, None), ("uint16", 3, None), ("uint16", 2, "0.0002")])
def test_lossless_planes_equal_the_volume(tmp_path: Path, dtype: str, workers: int, memory: str | None) -> None:
    path, expected = make_volume(tmp_path, (37, 45, 51), (16, 20, 32), dtype, missing=((0, 20, 0),))
    out = tmp_path / "out" / "jp2"
    extra = ["--memory", memory] if memory else []
    result = run("--input", path, "--output-pattern", out / "img_%04d.jp2", "--n-workers", str(workers),
                 "--silent", *extra)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    got = read_planes(out, "img_%04d.jp2", len(expected))
    assert got.dtype == expected.dtype
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("case", INTEGER_FIXTURES or [None], ids=[c["name"] for c in INTEGER_FIXTURES] or ["none"])
def test_lossless_fixture_volumes(tmp_path: Path, case: dict | None) -> None:
    folder = require_fixtures()
    assert case is not None
    expected = np.load(folder / case["expected_array"])
    result = run("--input", folder / case["directory_file"], "--output-pattern", tmp_path / "z%d.j2k", "--silent")
    assert result.returncode == 0, result.stderr
    np.testing.assert_array_equal(read_planes(tmp_path, "z%d.j2k", len(expected)), expected)


@pytest.mark.parametrize("dtype, psnr", [("uint16", 70.0), ("uint8", 40.0)])
def test_lossy_planes_meet_their_psnr(tmp_path: Path, dtype: str, psnr: float) -> None:
    shape = (4, 256, 200)  # OpenJPEG meets a PSNR target to ~1 dB on planes this size, less well on tiny ones
    data = microscopy_block((0, 0, 0), shape, seed=3)
    expected = np.clip(data // 4, 0, 255).astype(np.uint8) if dtype == "uint8" else data
    d = Directory(shape[2], shape[1], shape[0], dtype, str(tmp_path / "v.blockfs"), n_filenames=1,
                  x_block_size=32, y_block_size=32, z_block_size=8).create()
    d[:] = expected
    d.close()
    result = run("--input", tmp_path / "v.blockfs", "--output-pattern", tmp_path / "out" / "%03d.jp2",
                 "--psnr", str(psnr), "--n-workers", "2", "--silent")
    assert result.returncode == 0, result.stderr
    got = read_planes(tmp_path / "out", "%03d.jp2", shape[0])
    error = got.astype(np.float64) - expected
    peak = np.iinfo(dtype).max  # OpenJPEG's PSNR is against the full range of the sample's bits
    measured = 10 * np.log10(peak**2 / np.mean(error**2))
    assert np.any(error), "lossy output is bit-exact"
    assert abs(measured - psnr) < 3, f"asked for {psnr} dB, got {measured:.1f} dB"
    lossless = run("--input", tmp_path / "v.blockfs", "--output-pattern", tmp_path / "exact" / "%03d.jp2", "--silent")
    assert lossless.returncode == 0, lossless.stderr
    lossy_bytes = sum(f.stat().st_size for f in (tmp_path / "out").iterdir())
    assert lossy_bytes < sum(f.stat().st_size for f in (tmp_path / "exact").iterdir())


def test_psnr_zero_is_lossless(tmp_path: Path) -> None:
    path, expected = make_volume(tmp_path, (6, 20, 30), (4, 16, 16), "uint16")  # planes under 32 a side, too
    result = run("--input", path, "--output-pattern", tmp_path / "out" / "%d.jp2", "--psnr", "0", "--silent")
    assert result.returncode == 0, result.stderr
    np.testing.assert_array_equal(read_planes(tmp_path / "out", "%d.jp2", 6), expected)


def test_float_volume_is_refused(tmp_path: Path) -> None:
    path, _ = make_volume(tmp_path, (4, 8, 8), (4, 8, 8), "float32")
    result = run("--input", path, "--output-pattern", tmp_path / "out" / "%d.jp2", "--silent")
    assert result.returncode == 1
    assert result.stderr.strip() == (f"blockfs2jp2k: {path}: the volume is float32, but JPEG 2000 export writes "
                                     "uint8 or uint16 planes; use blockfs2tif for other dtypes.")
    assert not (tmp_path / "out").exists()


def test_bad_input(tmp_path: Path) -> None:
    path, _ = make_volume(tmp_path, (4, 8, 8), (4, 8, 8), "uint8")
    missing = run("--input", tmp_path / "nothing.blockfs", "--output-pattern", tmp_path / "out" / "%d.jp2")
    assert missing.returncode == 1
    assert missing.stderr.strip() == f"blockfs2jp2k: {tmp_path / 'nothing.blockfs'}: No such file or directory"
    no_field = run("--input", path, "--output-pattern", tmp_path / "out" / "img.jp2")
    assert no_field.returncode == 1
    assert no_field.stderr.startswith(f"blockfs2jp2k: {tmp_path / 'out' / 'img.jp2'}: the output pattern has no "
                                      "%d-style field")
    (tmp_path / "file").write_text("not a folder")
    unwritable = run("--input", path, "--output-pattern", tmp_path / "file" / "sub" / "%d.jp2", "--silent")
    assert unwritable.returncode == 1
    assert unwritable.stderr.strip() == f"blockfs2jp2k: {tmp_path / 'file' / 'sub'}: Not a directory"
    too_little = run("--input", path, "--output-pattern", tmp_path / "out" / "%d.jp2", "--memory", "1e-9")
    assert too_little.returncode == 1
    assert "--memory 1e-09 GB cannot hold one 8x8 uint8 plane and its encoder" in too_little.stderr
    assert not (tmp_path / "out").exists()


def test_memory_plan() -> None:
    shape, voxels = (200, 1000, 1000), 1000 * 1000
    plane, encoder = 2 * voxels, ENCODER_BYTES_PER_VOXEL * voxels
    default = plan(shape, np.dtype("uint16"), 64, 4, None, "v")
    assert (default.depth, default.workers) == (64, 4)
    roomy = plan(shape, np.dtype("uint16"), 64, 4, 1e3 * GB, "v")
    assert (roomy.depth, roomy.workers) == (64, 4)
    tight = plan(shape, np.dtype("uint16"), 64, 4, 10 * plane + 4 * encoder, "v")
    assert (tight.depth, tight.workers) == (10, 4) and tight.nbytes <= 10 * plane + 4 * encoder
    one = plan(shape, np.dtype("uint16"), 64, 4, plane + encoder, "v")
    assert (one.depth, one.workers) == (1, 1)
    with pytest.raises(ValueError, match="cannot hold one 1000x1000 uint16 plane"):
        plan(shape, np.dtype("uint16"), 64, 4, plane + encoder - 1, "v")


def test_resolution_levels_fit_small_planes() -> None:
    assert [resolutions(s) for s in [(1, 50), (3, 3), (20, 30), (32, 32), (4000, 5000)]] == [1, 2, 5, 6, 6]


def test_help_shows_an_example() -> None:
    result = run("--help")
    assert result.returncode == 0
    assert "blockfs2jp2k --input /data/brain.blockfs --output-pattern /data/jp2/img_%04d.jp2" in result.stdout
    assert "--memory GB" in result.stdout and "--psnr DB" in result.stdout
