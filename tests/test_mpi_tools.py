"""The tools under ``mpiexec -n 3`` give what a serial run gives.

from-tif: the same header and every block compressed to the same bytes; blockfs2tif and
blockfs2jp2k: byte-identical plane files. Failures: every rank stops, the message is printed once.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile

from mpi_run import mpiexec, require_mpi, run, tool

from blockfs import Directory

SHAPE = (37, 50, 70)  # z, y, x: 37 planes in 5 slabs of 8, the last one short
BLOCKS = "8,16,16"


@pytest.fixture(autouse=True)
def mpi() -> None:
    require_mpi()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """37 TIFF planes of noise."""
    folder = tmp_path_factory.mktemp("tiff")
    rng = np.random.default_rng(3)
    for z in range(SHAPE[0]):
        tifffile.imwrite(folder / f"img_{z}.tif", rng.integers(0, 3000, SHAPE[1:], dtype=np.uint16))
    return folder


@pytest.fixture(scope="module")
def serial_volume(stack: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    output = tmp_path_factory.mktemp("serial") / "v.blockfs"
    serial = run([tool("blockfs"), "from-tif", "--input", stack / "img_*.tif", "--output", output,
                  "--block-size", BLOCKS, "--n-workers", "3", "--silent"])
    assert serial.returncode == 0, serial.stderr
    return output


def _header(d: Directory) -> dict:
    """The JSON header, shard names reduced to their base names (the folders differ)."""
    with open(d.directory_filename, "rb") as f:
        raw = f.read(d.directory_offset)
    meta = json.loads(raw[16:16 + int.from_bytes(raw[8:12], "little")])
    meta["BlockFilenames"] = [Path(n).name for n in meta["BlockFilenames"]]
    return meta


def test_from_tif_on_three_ranks_equals_serial(stack: Path, serial_volume: Path, tmp_path: Path) -> None:
    output = tmp_path / "v.blockfs"
    result, _ = mpiexec(3, [tool("blockfs"), "from-tif", "--input", stack / "img_*.tif", "--output", output,
                            "--block-size", BLOCKS, "--n-workers", "3"])
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("tif2blockfs (rank 0 of 3)") >= 1  # rank 0's progress, and only rank 0's
    assert "rank 1" not in result.stderr and "rank 2" not in result.stderr
    with Directory.open(serial_volume) as a, Directory.open(output) as b:
        assert _header(a) == _header(b)
        assert np.array_equal(a[...], b[...])
        origins = [tuple(int(c) for c in o) for o in a.layout.block_entries()[1]]
        assert all(a.read_block_payload(*o) == b.read_block_payload(*o) for o in origins)


@pytest.mark.parametrize("exporter, suffix", [("blockfs2tif", "tif"), ("blockfs2jp2k", "jp2")])
def test_exporters_on_three_ranks_equal_serial(serial_volume: Path, tmp_path: Path, exporter: str,
                                               suffix: str) -> None:
    serial = run([tool(exporter), "--input", serial_volume, "--output-pattern",
                  tmp_path / "serial" / f"img_%03d.{suffix}", "--silent"])
    assert serial.returncode == 0, serial.stderr
    result, _ = mpiexec(3, [tool(exporter), "--input", serial_volume, "--output-pattern",
                            tmp_path / "ranks" / f"img_%03d.{suffix}"])
    assert result.returncode == 0, result.stderr
    assert f"{exporter} (rank 0 of 3)" in result.stderr
    names = sorted(p.name for p in (tmp_path / "serial").iterdir())
    assert len(names) == SHAPE[0]
    assert sorted(p.name for p in (tmp_path / "ranks").iterdir()) == names
    for name in names:
        assert (tmp_path / "serial" / name).read_bytes() == (tmp_path / "ranks" / name).read_bytes(), name


def test_a_failure_stops_every_rank_and_is_printed_once(stack: Path, serial_volume: Path, tmp_path: Path) -> None:
    result, _ = mpiexec(3, [tool("blockfs"), "from-tif", "--input", stack / "img_*.tif", "--output", serial_volume,
                            "--block-size", BLOCKS, "--silent"])
    assert result.returncode == 1
    assert result.stderr.count("already exists") == 1, result.stderr
    missing = tmp_path / "missing.blockfs"
    result, _ = mpiexec(3, [tool("blockfs2tif"), "--input", missing, "--output-pattern", tmp_path / "t_%03d.tif"])
    assert result.returncode == 1
    assert result.stderr.count(f"blockfs2tif: {missing}: No such file or directory") == 1, result.stderr


def test_an_odd_plane_is_named_once_and_no_volume_is_left(tmp_path: Path) -> None:
    for z in range(7):
        tifffile.imwrite(tmp_path / f"img_{z}.tif", np.zeros((20, 30) if z != 5 else (20, 31), np.uint16))
    output = tmp_path / "out" / "v.blockfs"
    result, _ = mpiexec(3, [tool("blockfs"), "from-tif", "--input", tmp_path / "img_*.tif", "--output", output,
                            "--silent"])
    assert result.returncode == 1
    assert result.stderr.count(f"tif2blockfs: {tmp_path / 'img_5.tif'}: the plane is 20x31") == 1, result.stderr
    assert not output.exists()


def test_tools_run_serially_without_a_launcher(serial_volume: Path, tmp_path: Path) -> None:
    """Outside mpiexec the tools never initialise MPI (mpi4py made unimportable)."""
    code = ("import sys; sys.modules['mpi4py'] = None\n"
            "from blockfs.blockfs2tif import main\n"
            "sys.exit(main(sys.argv[1:]))")
    result = run([sys.executable, "-c", code, "--input", serial_volume, "--output-pattern", tmp_path / "img_%03d.tif",
                  "--silent"])
    assert result.returncode == 0, result.stderr
    assert len(list(tmp_path.iterdir())) == SHAPE[0]
