"""A volume made a moment ago with a relative output path opens from any working directory.

Every writer stores absolute shard names, resolved against its working directory when the volume
is created (docs/FORMAT.md 9.2). Each writer below runs from one folder with relative paths; the
volumes are then looked at from another: ``blockfs info`` finds no stale name, ``blockfs check``
and ``Directory.open`` say nothing, and the earlier release's reading rule (each name opened
exactly as stored, relative ones against the working directory) decodes the same voxels.
"""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import tifffile

import mpi_writer
import spec_decoder
from helpers import console, origins_of, require
from mpi_run import mpiexec, require_mpi, tool
from producers import REPO_ROOT, TESTS_DIR

import blockfs
from blockfs import Directory

SHAPE = (20, 24, 36)  # (z, y, x)


def sample() -> np.ndarray:
    return np.random.default_rng(7).integers(0, 4000, SHAPE, dtype=np.uint16)


def write_sample(path: str, **kwargs: object) -> np.ndarray:
    """A 36 x 24 x 20 (x, y, z) uint16 volume in 16^3 blocks at ``path``, every block written."""
    data = sample()
    with Directory(SHAPE[2], SHAPE[1], SHAPE[0], np.uint16, path, x_block_size=16, y_block_size=16,
                   z_block_size=16, **kwargs).create() as d:
        for x, y, z in origins_of(d):
            bz, by, bx = d.get_block_size(x, y, z)
            d.write_block(data[z:z + bz, y:y + by, x:x + bx], x, y, z)
    return data


def write_planes(folder: Path) -> np.ndarray:
    """The sample as TIFF planes ``folder/img_<z>.tif``."""
    data = sample()
    folder.mkdir()
    for z, plane in enumerate(data):
        tifffile.imwrite(folder / f"img_{z:02d}.tif", plane)
    return data


def assert_opens_anywhere(index: Path, elsewhere: Path, monkeypatch: pytest.MonkeyPatch,
                          expected: np.ndarray | None = None) -> None:
    """The volume at ``index`` (absolute) opens from ``elsewhere`` with no warning, by either reader."""
    names = spec_decoder.read_index(index)[0]["BlockFilenames"]
    assert all(Path(name).is_absolute() and Path(name).is_file() for name in names), names
    info = console("blockfs", "info", index, cwd=elsewhere)
    assert info.returncode == 0, info.stderr
    assert "stale" not in info.stdout + info.stderr, info.stdout
    check = console("blockfs", "check", "--silent", index, cwd=elsewhere)
    assert (check.returncode, check.stderr) == (0, ""), check.stdout + check.stderr
    monkeypatch.chdir(elsewhere)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with Directory.open(str(index)) as d:
            got = d[...]
    old_reader, _ = spec_decoder.read_volume(index, as_stored=True)
    np.testing.assert_array_equal(old_reader, got, strict=True)
    if expected is not None:
        np.testing.assert_array_equal(got, expected, strict=True)


@pytest.fixture
def work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The folder the writers run in (and the working directory until a test moves away)."""
    (tmp_path / "work").mkdir()
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    return tmp_path / "work"


def test_directory_default_names(work: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (work / "sub").mkdir()
    d = Directory(36, 24, 20, np.uint16, "sub/rel.blockfs", n_filenames=3)
    assert d.block_filenames == [str(work / "sub" / f"rel.blockfs.{i}") for i in range(3)]  # before create()
    data = write_sample("sub/rel.blockfs", n_filenames=3)
    assert_opens_anywhere(work / "sub" / "rel.blockfs", work.parent / "elsewhere", monkeypatch, data)


def test_relative_block_filenames_are_made_absolute(work: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (work / "sub").mkdir()
    (work / "shards").mkdir()
    data = write_sample("sub/given.blockfs", block_filenames=["shards/a", "shards/b"])
    assert (work / "shards" / "a").stat().st_size and (work / "shards" / "b").stat().st_size
    assert spec_decoder.read_index(work / "sub" / "given.blockfs")[0]["BlockFilenames"] == [
        str(work / "shards" / "a"), str(work / "shards" / "b")]
    assert_opens_anywhere(work / "sub" / "given.blockfs", work.parent / "elsewhere", monkeypatch, data)


def test_write_dask(work: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    da = require("dask.array")
    (work / "sub").mkdir()
    data = sample()
    blockfs.write_dask(da.from_array(data, chunks=(10, 12, 18)), "sub/dask.blockfs", n_filenames=2,
                       x_block_size=16, y_block_size=16, z_block_size=16, compute_kwargs={"scheduler": "threads"}
                       ).close()
    assert_opens_anywhere(work / "sub" / "dask.blockfs", work.parent / "elsewhere", monkeypatch, data)


def test_from_zarr_tool(work: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    zarr = require("zarr")
    data = sample()
    zarr.create_array("src.zarr", shape=data.shape, chunks=(16, 16, 16), dtype=data.dtype)[...] = data
    (work / "rel").mkdir()
    result = console("blockfs", "from-zarr", "src.zarr", "rel/fz.blockfs", "--silent", cwd=work)
    assert result.returncode == 0, result.stderr
    assert_opens_anywhere(work / "rel" / "fz.blockfs", work.parent / "elsewhere", monkeypatch, data)


@pytest.mark.parametrize("command", [["tif2blockfs"], ["blockfs", "from-tif"]])
def test_from_tif_tools(work: Path, monkeypatch: pytest.MonkeyPatch, command: list[str]) -> None:
    data = write_planes(work / "planes")
    (work / "rel").mkdir()
    result = console(*command, "--input", "planes/img_*.tif", "--output", "rel/t.blockfs", "--n-workers", "2",
                     "--silent", cwd=work)
    assert result.returncode == 0, result.stderr
    assert_opens_anywhere(work / "rel" / "t.blockfs", work.parent / "elsewhere", monkeypatch, data)


def test_from_tif_on_two_mpi_ranks(work: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    require_mpi()
    data = write_planes(work / "planes")
    (work / "rel").mkdir()
    result, _ = mpiexec(2, [tool("blockfs"), "from-tif", "--input", "planes/img_*.tif", "--output", "rel/m.blockfs",
                            "--n-workers", "2", "--silent"], cwd=work)
    assert result.returncode == 0, result.stderr
    assert_opens_anywhere(work / "rel" / "m.blockfs", work.parent / "elsewhere", monkeypatch, data)


def test_collective_create_on_two_mpi_ranks(work: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every rank builds ``Directory(..., "rel/c.blockfs")`` from the same folder and writes into it."""
    require_mpi()
    (work / "rel").mkdir()
    result, _ = mpiexec(2, [sys.executable, Path(mpi_writer.__file__), "rel/c.blockfs", "--shards", "3"], cwd=work)
    assert result.returncode == 0, result.stderr
    assert_opens_anywhere(work / "rel" / "c.blockfs", work.parent / "elsewhere", monkeypatch,
                          mpi_writer.expected_volume())


def test_pyramid_levels(work: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (work / "rel").mkdir()
    data = write_sample("rel/src.blockfs", n_filenames=2)
    result = console("blockfs", "pyramid", "rel/src.blockfs", "rel/pyr", "--levels", "3", "--silent", cwd=work)
    assert result.returncode == 0, result.stderr
    levels = sorted((work / "rel" / "pyr").glob("*/*.blockfs"))
    assert len(levels) == 3, levels
    for level in levels:
        assert_opens_anywhere(level, work.parent / "elsewhere", monkeypatch, data if "1_1_1" in str(level) else None)


def test_demo(work: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    result = console("blockfs-demo", "--output", "demo-output", "--size-gib", "0.001", "--silent", cwd=work,
                     timeout=300)
    assert result.returncode == 0, result.stderr
    volumes = sorted((work / "demo-output").rglob("*.blockfs"))
    assert work / "demo-output" / "sample.blockfs" in volumes
    for volume in volumes:
        assert_opens_anywhere(volume, work.parent / "elsewhere", monkeypatch)


def test_blockfs_cp_into_a_relative_folder(work: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = write_sample("src.blockfs", n_filenames=2)
    result = console("blockfs-cp", "--silent", "src.blockfs", "copies", cwd=work)
    assert result.returncode == 0, result.stderr
    assert_opens_anywhere(work / "copies" / "src.blockfs", work.parent / "elsewhere", monkeypatch, data)


def test_spawned_workers_attach_to_a_relative_module_level_directory(work: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """The README pattern with ``Directory(..., "sub/brain.blockfs")`` at module level, under spawn:
    each worker's Directory, built from the same working directory, matches the volume on disk."""
    (work / "sub").mkdir()
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    result = subprocess.run([sys.executable, str(TESTS_DIR / "readme_pattern.py"), "sub/brain.blockfs", "spawn",
                             "get_context"], cwd=work, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    z, y, x = np.meshgrid(np.arange(130), np.arange(150), np.arange(200), indexing="ij")
    expected = ((x * 3 + y * 5 + z * 7) % 65521).astype(np.uint16)
    assert_opens_anywhere(work / "sub" / "brain.blockfs", work.parent / "elsewhere", monkeypatch, expected)

