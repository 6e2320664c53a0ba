"""A full disk, for each tool that writes and is not covered elsewhere: the exports (tif, jp2k, hdf5),
the TIFF import, repair and rebase.

Each writes onto a small tmpfs (mounting needs root) and must exit 1 with one line that names a
file on that disk and says it is full, with no traceback, leaving its input as it was; once there is
room again, the same command succeeds. (cp and mv: tests/test_relocate_safety.py; pyramid:
tests/test_pyramid_disk_full.py; to-zarr and from-zarr: tests/test_interop_interrupted.py.)
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tifffile

from helpers import console, mounted, unavailable
from volumes import make_volume

pytestmark = pytest.mark.timeout(240)

SHAPE = (48, 128, 128)  # 1.5 MiB of uint16 noise: more than the disk holds


@contextlib.contextmanager
def small_disk(folder: Path, size: str = "512k") -> Iterator[Path]:
    folder.mkdir()
    with mounted(folder, "-t", "tmpfs", "-o", f"size={size}", "tmpfs") as ok:
        if not ok:
            unavailable("cannot mount a tmpfs (it needs root)")
        yield folder


def grow(folder: Path, size: str = "64m") -> None:
    subprocess.run(["mount", "-o", f"remount,size={size}", str(folder)], check=True, capture_output=True, timeout=60)


def fill(folder: Path, leave: int) -> None:
    """Fill the file system of ``folder`` up to ``leave`` free bytes with a ballast file."""
    free = shutil.disk_usage(folder).free
    with open(folder / "ballast", "wb") as f:
        f.write(bytes(max(0, free - leave)))


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def assert_full_disk_named(result: subprocess.CompletedProcess[str], prog: str, disk: Path) -> None:
    """Exit status 1, and one line ``prog: <a file on disk>...`` that says the disk is full."""
    assert result.returncode == 1, (result.returncode, result.stdout, result.stderr)
    lines = [line for line in result.stderr.strip().splitlines() if not line.startswith("---")]
    assert lines and lines[0].startswith(f"{prog}: "), result.stderr
    assert f" {disk}/" in lines[0] or lines[0].startswith(f"{prog}: {disk}/"), result.stderr
    assert "No space left on device" in lines[0], result.stderr


EXPORTS = {
    "tif": ("blockfs tif", lambda v, d: ["tif", "--silent", "--input", v, "--output-pattern", d / "z%04d.tif"]),
    "jp2k": ("blockfs jp2k", lambda v, d: ["jp2k", "--silent", "--input", v, "--output-pattern", d / "z%04d.jp2"]),
    "hdf5": ("blockfs hdf5", lambda v, d: ["hdf5", "--silent", v, d / "out.h5", "/raw"]),
}


@pytest.mark.parametrize("tool", sorted(EXPORTS))
def test_an_export_onto_a_full_disk_names_the_file(tmp_path: Path, tool: str) -> None:
    volume, expected = make_volume(tmp_path, SHAPE, (16, 64, 64))
    before = snapshot(tmp_path)
    prog, argv = EXPORTS[tool]
    with small_disk(tmp_path / "disk") as disk:
        assert_full_disk_named(console("blockfs", *argv(volume, disk)), prog, disk)
        assert {k: v for k, v in snapshot(tmp_path).items() if not k.startswith("disk/")} == before
        grow(disk)
        result = console("blockfs", *argv(volume, disk))
        assert result.returncode == 0, result.stderr


def test_a_tiff_import_onto_a_full_disk_names_the_file_and_leaves_no_volume(tmp_path: Path) -> None:
    stack = np.random.default_rng(1).integers(0, 1 << 16, SHAPE, dtype=np.uint16)
    (tmp_path / "in").mkdir()
    for z, plane in enumerate(stack):
        tifffile.imwrite(tmp_path / "in" / f"z{z:03d}.tif", plane)
    with small_disk(tmp_path / "disk") as disk:
        argv = ["from-tif", "--silent", "--input", tmp_path / "in" / "z*.tif", "--output", disk / "v.blockfs"]
        assert_full_disk_named(console("blockfs", *argv), "blockfs from-tif", disk)
        assert os.listdir(disk) == []  # the half-written volume is removed: a re-run starts clean
        grow(disk)
        assert console("blockfs", *argv).returncode == 0
        from blockfs import Directory
        with Directory.open(str(disk / "v.blockfs")) as d:
            assert np.array_equal(d[...], stack)


@pytest.mark.parametrize("tool", ["repair", "rebase"])
def test_rewriting_the_index_on_a_full_disk_names_the_file_and_keeps_the_volume(tmp_path: Path, tool: str) -> None:
    with small_disk(tmp_path / "disk", "2m") as disk:
        volume, expected = make_volume(disk, (32, 64, 64), (16, 32, 32), missing=((0, 0, 0),))
        if tool == "repair":  # an entry the index lost, which repair restores from its record
            with open(volume, "r+b") as f:
                f.seek(-5, os.SEEK_END)
                f.write(bytes(5))
        else:  # a volume moved by hand: its stored absolute names are stale
            moved = disk / "moved"
            moved.mkdir()
            for p in disk.glob("volume.blockfs*"):
                p.rename(moved / p.name)
            volume = moved / "volume.blockfs"
        fill(disk, 0)
        before = snapshot(disk)
        assert_full_disk_named(console("blockfs", tool, "--silent", volume), f"blockfs {tool}", disk)
        assert snapshot(disk) == before  # nothing changed, nothing left behind
        os.unlink(disk / "ballast")
        result = console("blockfs", tool, "--silent", volume)
        assert result.returncode == 0, result.stdout + result.stderr
