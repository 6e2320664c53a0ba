"""blockfs2tif, run as the installed command: every voxel of every TIFF plane, and bad input."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pytest
import tifffile

from fixtures import case_ids, case_params, require_fixtures
from helpers import console
from volumes import make_volume

from blockfs import ExportError, blockfs2tif, open_volume
from blockfs.convert import tiff
from blockfs.convert.planes import export_planes

pytestmark = pytest.mark.timeout(120)

#: TIFF Compression tag values
NONE, DEFLATE = 1, 8


run = functools.partial(console, "blockfs2tif")


def assert_planes_equal(folder: Path, name: str, expected: np.ndarray, compression: int | None = None) -> None:
    """``folder`` holds exactly one file per z, ``name % z``, equal to ``expected[z]``."""
    assert sorted(p.name for p in folder.iterdir()) == sorted(name % z for z in range(len(expected)))
    for z, plane in enumerate(expected):
        with tifffile.TiffFile(folder / (name % z)) as tif:
            got = tif.asarray()
            if compression is not None:
                assert tif.pages[0].compression == compression
            assert not tif.is_bigtiff
        assert got.dtype == plane.dtype and got.shape == plane.shape, f"z={z}"
        np.testing.assert_array_equal(got, plane, err_msg=f"plane z={z}")


@pytest.mark.parametrize("dtype, level, workers, tag", [
    ("uint8", 0, 1, NONE),
    ("uint16", 9, 3, DEFLATE),
    ("float32", 3, 3, DEFLATE),
    ("int16", 1, 2, DEFLATE),
])
def test_planes_equal_the_volume(tmp_path: Path, dtype: str, level: int, workers: int, tag: int) -> None:
    path, expected = make_volume(tmp_path, (37, 45, 51), (16, 20, 32), dtype, missing=((32, 20, 16),))
    out = tmp_path / "not" / "yet" / "there"
    result = run("--input", path, "--output-pattern", out / "img_%04d.tiff", "--compression", str(level),
                 "--n-workers", str(workers), "--silent")
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert_planes_equal(out, "img_%04d.tiff", expected, tag)


@pytest.mark.parametrize("case", case_params(), ids=case_ids())
def test_fixture_volumes(tmp_path: Path, case: dict | None) -> None:
    folder = require_fixtures()
    assert case is not None
    expected = np.load(folder / case["expected_array"])
    result = run("--input", folder / case["directory_file"], "--output-pattern", tmp_path / "z%d.tif")
    assert result.returncode == 0, result.stderr
    assert "%|" not in result.stderr  # no progress bar in a log: stderr is not a terminal
    assert_planes_equal(tmp_path, "z%d.tif", expected, DEFLATE)


def test_main_from_python(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path, expected = make_volume(tmp_path, (20, 30, 40), (8, 16, 16), "uint16")
    pattern = tmp_path / "out" / "img_%03d.tif"
    pattern.parent.mkdir()
    (pattern.parent / "img_005.tif").write_bytes(b"stale plane from an earlier run")
    assert blockfs2tif.main(["--input", str(path), "--output-pattern", str(pattern), "--silent",
                             "--n-workers", "2"]) == 0
    assert capsys.readouterr().err == ""
    assert_planes_equal(pattern.parent, "img_%03d.tif", expected, DEFLATE)  # the stale file was replaced


def test_bigtiff_when_a_plane_needs_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert not blockfs2tif.needs_bigtiff(2**32 - 2**26)
    assert blockfs2tif.needs_bigtiff(2**32)
    plane = np.arange(600, dtype=np.uint16).reshape(20, 30)
    monkeypatch.setattr(tiff, "BIGTIFF_THRESHOLD", plane.nbytes - 1)
    tiff.write_tiff(str(tmp_path / "big.tif"), plane, 3)
    with tifffile.TiffFile(tmp_path / "big.tif") as tif:
        assert tif.is_bigtiff
        np.testing.assert_array_equal(tif.asarray(), plane)


def test_missing_input(tmp_path: Path) -> None:
    result = run("--input", tmp_path / "nothing.blockfs", "--output-pattern", tmp_path / "out" / "%d.tif")
    assert result.returncode == 1
    assert result.stderr.strip() == f"blockfs2tif: {tmp_path / 'nothing.blockfs'}: No such file or directory"
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("pattern, says", [
    ("img.tif", "has no %d-style field"),
    ("img_%s_%d.tif", "exactly one integer field"),
    ("img_%f.tif", "exactly one integer field"),
    ("img_%d%.tif", "not a valid printf-style pattern"),
])
def test_pattern_without_a_z_field(tmp_path: Path, pattern: str, says: str) -> None:
    path, _ = make_volume(tmp_path, (4, 8, 8), (4, 8, 8), "uint8")
    full = tmp_path / "out" / pattern
    result = run("--input", path, "--output-pattern", full, "--silent")
    assert result.returncode == 1
    assert result.stderr.startswith(f"blockfs2tif: {full}: ")
    assert says in result.stderr and "e.g. " in result.stderr and "%04d" in result.stderr
    assert not (tmp_path / "out").exists()  # checked before any work


@pytest.mark.parametrize("where", ["under_a_file", "proc"])
def test_unwritable_output_folder(tmp_path: Path, where: str) -> None:
    path, _ = make_volume(tmp_path, (4, 8, 8), (4, 8, 8), "uint8")
    (tmp_path / "file").write_text("a regular file, not a folder")
    folder = tmp_path / "file" / "sub" if where == "under_a_file" else Path("/proc/blockfs-test")
    result = run("--input", path, "--output-pattern", folder / "img_%04d.tif", "--silent")
    assert result.returncode == 1
    reason = "Not a directory" if where == "under_a_file" else "No such file or directory"
    assert result.stderr.strip() == f"blockfs2tif: {folder}: {reason}"


def test_compression_level_out_of_range(tmp_path: Path) -> None:
    result = run("--input", tmp_path / "v.blockfs", "--output-pattern", tmp_path / "%d.tif", "--compression", "10")
    assert result.returncode == 2
    assert "the zlib level must be an integer from 0 (none) to 9; got '10'" in result.stderr


def test_help_shows_an_example() -> None:
    result = run("--help")
    assert result.returncode == 0
    assert "example:" in result.stdout
    assert "blockfs2tif --input /data/brain.blockfs --output-pattern /data/tiff/img_%04d.tiff" in result.stdout


def test_a_failed_plane_leaves_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    """A writer that fails half way through a plane: the plane's old file stays, nothing hidden is left."""
    path, _ = make_volume(tmp_path, (4, 8, 8), (4, 8, 8))
    out = tmp_path / "out"
    out.mkdir()
    (out / "z1.tif").write_bytes(b"old")

    def fail_on_z1(name: str, plane: np.ndarray) -> None:
        assert name.endswith(".tif") and Path(name).name.startswith(".")  # the writer picks TIFF by the suffix
        tiff.write_tiff(name, plane, 1)
        if Path(name).name.startswith(".z1.tif."):
            raise RuntimeError("encoder failed")

    with pytest.raises(ExportError, match=r"z1\.tif: RuntimeError: encoder"):
        export_planes(open_volume(path), str(out / "z%d.tif"), fail_on_z1, 1, True, "test")
    assert (out / "z1.tif").read_bytes() == b"old"
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]
