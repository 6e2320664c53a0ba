"""tif2blockfs, run as the installed command: TIFF stack -> blockfs -> TIFF bit-exact, and bad input."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import tifffile

from helpers import console
from volumes import make_volume

from blockfs import Directory, open_volume
from blockfs.convert.tiff_stack import Plane, check_stack, import_stack, natural_key
from blockfs.errors import PlaneMismatchError

pytestmark = pytest.mark.timeout(120)

TIF2BLOCKFS, BLOCKFS2TIF = "tif2blockfs", "blockfs2tif"
SHAPE = (37, 45, 51)


run = console


def write_stack(folder: Path, dtype: str = "uint16", shape: tuple[int, int, int] = SHAPE,
                name: str = "img_%d.tif") -> np.ndarray:
    """One TIFF per z, numbered without zero padding (img_10 must follow img_9)."""
    rng = np.random.default_rng(7)
    stack = (rng.integers(0, 60000, shape) if dtype != "float32" else rng.standard_normal(shape)).astype(dtype)
    folder.mkdir(parents=True, exist_ok=True)
    for z, plane in enumerate(stack):
        tifffile.imwrite(folder / (name % z), plane, compression="zlib" if z % 2 else None)
    return stack


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


@pytest.mark.parametrize("dtype, block, workers, codec", [
    ("uint16", "16,20,32", "3", ["--compression", "zstd", "--level", "5"]),
    ("uint8", "8", "1", ["--compression", "lz4", "--level", "9"]),
    ("float32", "64,64,64", "2", []),
])
def test_round_trip_is_bit_exact(tmp_path: Path, dtype: str, block: str, workers: str, codec: list[str]) -> None:
    stack = write_stack(tmp_path / "in", dtype)
    volume = tmp_path / "vol" / "brain.blockfs"  # its folder does not exist yet
    result = run(TIF2BLOCKFS, "--input", tmp_path / "in" / "img_*.tif", "--output", volume, "--block-size", block,
                 "--n-workers", workers, *codec, "--silent")
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    sizes = tuple(int(b) for b in block.split(",")) * (3 if "," not in block else 1)
    with Directory.open(str(volume)) as d:
        assert d.shape == SHAPE and d.dtype == np.dtype(dtype)
        assert (d.z_block_size, d.y_block_size, d.x_block_size) == sizes
        assert len(d.block_filenames) == int(workers)
        assert d.compression.value == (codec[1] if codec else "zstd")
        assert d.compression_level == (int(codec[3]) if codec else 5)
        np.testing.assert_array_equal(d[:], stack)
    back = run(BLOCKFS2TIF, "--input", volume, "--output-pattern", tmp_path / "out" / "img_%d.tif", "--silent")
    assert back.returncode == 0, back.stderr
    for z, plane in enumerate(stack):
        got = tifffile.imread(tmp_path / "out" / f"img_{z}.tif")
        assert got.dtype == plane.dtype
        np.testing.assert_array_equal(got, plane, err_msg=f"plane z={z}")


def test_several_globs_and_no_progress_bar_in_a_log(tmp_path: Path) -> None:
    stack = write_stack(tmp_path / "in", shape=(12, 20, 30))
    volume = tmp_path / "v.blockfs"
    result = run(TIF2BLOCKFS, "--input", tmp_path / "in" / "img_?.tif", tmp_path / "in" / "img_1?.tif",
                 "--output", volume, "--block-size", "5,16,16", "--n-workers", "2")
    assert result.returncode == 0, result.stderr
    assert "%|" not in result.stderr  # no progress bar in a log: stderr is not a terminal
    with Directory.open(str(volume)) as d:
        np.testing.assert_array_equal(d[:], stack)


def test_import_stack_from_python(tmp_path: Path) -> None:
    """The library function the tool calls: shapes in (z, y, x), and a complete volume when it returns."""
    stack = write_stack(tmp_path / "in", shape=(12, 20, 30))
    volume = tmp_path / "v.blockfs"
    import_stack([str(tmp_path / "in" / "img_*.tif")], str(volume), (5, 16, 8), 2,
                 metadata={"voxel_size_um": [1, 1, 2]})
    v = open_volume(volume)  # no warning: the import is marked complete
    assert v.block_shape == (5, 16, 8) and len(v.store.spec.shard_paths) == 2
    assert v.metadata == {"voxel_size_um": [1, 1, 2]}
    np.testing.assert_array_equal(v.read(), stack)


def test_names_sort_with_numbers_as_numbers() -> None:
    names = ["a/img_10.tif", "a/img_9.tif", "a/img_100.tif", "a/img_0.tif", "a/img_09.tif"]
    assert sorted(names, key=natural_key) == ["a/img_0.tif", "a/img_09.tif", "a/img_9.tif", "a/img_10.tif",
                                              "a/img_100.tif"]


@pytest.mark.parametrize("odd, says", [
    (np.zeros((45, 50), np.uint16), "is 45x50 uint16 (y x dtype), but 36 of the 37 planes, e.g. img_0.tif, are "
                                    "45x51 uint16"),
    (np.zeros((45, 51), np.uint8), "is 45x51 uint8 (y x dtype), but 36 of the 37 planes, e.g. img_0.tif, are "
                                   "45x51 uint16"),
    (np.zeros((45, 51, 3), np.uint16), "holds a 45x51x3 uint16 image in 1 page(s); tif2blockfs reads one 2-D"),
    (np.zeros((2, 45, 51), np.uint16), "holds a 2x45x51 uint16 image in 2 page(s)"),
])
def test_mismatched_planes(tmp_path: Path, odd: np.ndarray, says: str) -> None:
    write_stack(tmp_path / "in")
    tifffile.imwrite(tmp_path / "in" / "img_17.tif", odd, photometric="rgb" if odd.ndim == 3 and odd.shape[-1] == 3
                     else "minisblack")
    result = run(TIF2BLOCKFS, "--input", tmp_path / "in" / "*.tif", "--output", tmp_path / "v.blockfs", "--silent")
    assert result.returncode == 1
    assert result.stderr.startswith(f"tif2blockfs: {tmp_path / 'in' / 'img_17.tif'}: "), result.stderr
    assert says in result.stderr
    assert sorted(os.listdir(tmp_path)) == ["in"]  # no volume was started


def test_the_odd_file_is_the_one_unlike_most() -> None:
    u16, u8 = np.dtype("uint16"), np.dtype("uint8")
    stack = [Plane("img_0.tif", (4, 5), u8)] + [Plane(f"img_{z}.tif", (4, 5), u16) for z in range(1, 5)]
    stack.append(Plane("img_5.tif", (4, 6), u16))
    with pytest.raises(PlaneMismatchError,
                       match=r"^img_0.tif: the plane is 4x5 uint8 \(y x dtype; 1 more file "
                             r"differs too\), but 4 of the 6 planes, e.g. img_1.tif, are 4x5 uint16"):
        check_stack(stack)
    assert check_stack(stack[1:5]) == stack[1]


def test_a_file_that_is_not_a_tiff(tmp_path: Path) -> None:
    write_stack(tmp_path / "in", shape=(3, 8, 8))
    (tmp_path / "in" / "img_3.tif").write_text("not a TIFF")
    result = run(TIF2BLOCKFS, "--input", tmp_path / "in" / "*.tif", "--output", tmp_path / "v.blockfs", "--silent")
    assert result.returncode == 1
    assert result.stderr.startswith(f"tif2blockfs: {tmp_path / 'in' / 'img_3.tif'}: not a readable TIFF file")
    assert sorted(os.listdir(tmp_path)) == ["in"]


def test_a_plane_unreadable_half_way_leaves_no_volume(tmp_path: Path) -> None:
    write_stack(tmp_path / "in")
    damaged = tmp_path / "in" / "img_30.tif"  # uncompressed: the header reads, the pixels are cut short
    damaged.write_bytes(damaged.read_bytes()[:-1000])
    result = run(TIF2BLOCKFS, "--input", tmp_path / "in" / "*.tif", "--output", tmp_path / "out" / "v.blockfs",
                 "--block-size", "16,20,32", "--n-workers", "2", "--silent")
    assert result.returncode == 1
    assert result.stderr.startswith(f"tif2blockfs: {damaged}: not a readable TIFF file"), result.stderr
    assert os.listdir(tmp_path / "out") == []  # the half-written volume was removed: a re-run starts clean


def test_no_file_matches(tmp_path: Path) -> None:
    pattern = tmp_path / "nothing_*.tif"
    result = run(TIF2BLOCKFS, "--input", pattern, "--output", tmp_path / "v.blockfs", "--silent")
    assert result.returncode == 1
    assert result.stderr.startswith(f"tif2blockfs: {pattern}: no file matches")
    assert sorted(os.listdir(tmp_path)) == []
    folder = run(TIF2BLOCKFS, "--input", tmp_path, "--output", tmp_path / "v.blockfs", "--silent")
    assert folder.returncode == 1
    assert f'such as "{tmp_path / "*.tif"}"' in folder.stderr


def test_existing_destination_is_not_overwritten(tmp_path: Path) -> None:
    write_stack(tmp_path / "in", shape=(4, 8, 8))
    (tmp_path / "vol").mkdir()
    existing, _ = make_volume(tmp_path / "vol", (4, 8, 8), (4, 8, 8), "uint8", n_files=2)
    before = snapshot(tmp_path / "vol")
    result = run(TIF2BLOCKFS, "--input", tmp_path / "in" / "*.tif", "--output", existing, "--silent")
    assert result.returncode == 1
    assert result.stderr.strip() == (f"tif2blockfs: {existing}: already exists; remove it, choose another "
                                     "--output, or pass --overwrite to replace it.")
    assert snapshot(tmp_path / "vol") == before


def test_overwrite_replaces_an_earlier_conversion(tmp_path: Path) -> None:
    first = write_stack(tmp_path / "in1", "uint16", shape=(6, 10, 12))
    second = write_stack(tmp_path / "in2", "uint8", shape=(4, 10, 12), name="p_%d.tif")
    volume = tmp_path / "vol" / "v.blockfs"
    assert run(TIF2BLOCKFS, "--input", tmp_path / "in1" / "*.tif", "--output", volume, "--silent").returncode == 0
    refused = run(TIF2BLOCKFS, "--input", tmp_path / "in2" / "*.tif", "--output", volume, "--silent")
    assert refused.returncode == 1 and "--overwrite" in refused.stderr
    with Directory.open(str(volume)) as d:
        np.testing.assert_array_equal(d[...], first, strict=True)
    again = run(TIF2BLOCKFS, "--input", tmp_path / "in2" / "*.tif", "--output", volume, "--overwrite", "--silent")
    assert again.returncode == 0, again.stderr
    with Directory.open(str(volume)) as d:
        np.testing.assert_array_equal(d[...], second, strict=True)


def test_an_existing_shard_is_not_overwritten(tmp_path: Path) -> None:
    write_stack(tmp_path / "in", shape=(4, 8, 8))
    (tmp_path / "vol").mkdir()
    stray = tmp_path / "vol" / "v.blockfs.2"
    stray.write_bytes(b"someone else's shard")
    result = run(TIF2BLOCKFS, "--input", tmp_path / "in" / "*.tif", "--output", tmp_path / "vol" / "v.blockfs",
                 "--n-workers", "3", "--silent")
    assert result.returncode == 1
    assert f"tif2blockfs: {stray}: already exists" in result.stderr
    assert snapshot(tmp_path / "vol") == {"v.blockfs.2": b"someone else's shard"}


def test_bad_block_size(tmp_path: Path) -> None:
    result = run(TIF2BLOCKFS, "--input", "x", "--output", tmp_path / "v.blockfs", "--block-size", "64,64")
    assert result.returncode == 2
    assert "expected Z,Y,X (e.g. 64,64,64) or one size N; got '64,64'" in result.stderr


def test_help_shows_an_example() -> None:
    result = run(TIF2BLOCKFS, "--help")
    assert result.returncode == 0
    assert 'tif2blockfs --input "/data/tiff/img_*.tiff" --output /data/brain.blockfs' in result.stdout


def test_an_import_killed_part_way_is_incomplete_and_a_rerun_replaces_it(tmp_path: Path) -> None:
    """SIGKILL tif2blockfs at 8 points: each time the output is absent or reported incomplete by
    Directory.open and blockfs check (exit 1), and a plain re-run (no --overwrite) replaces it with the
    whole stack."""
    import random
    import signal
    import subprocess
    import sys
    import time
    import warnings

    from blockfs import IncompleteVolumeWarning

    stack = write_stack(tmp_path / "in", shape=(160, 128, 128))
    exe = Path(sys.executable).with_name(TIF2BLOCKFS)
    rng, seen = random.Random(3), set()
    for trial in range(8):
        volume = tmp_path / f"out{trial}" / "v.blockfs"
        argv = [str(exe), "--input", str(tmp_path / "in" / "img_*.tif"), "--output", str(volume),
                "--block-size", "16", "--n-workers", "1", "--silent"]
        process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        time.sleep(rng.uniform(0.5, 2.0))
        process.send_signal(signal.SIGKILL)
        process.communicate(timeout=60)
        state = "absent" if not volume.exists() else "incomplete" if b"BlockfsIncomplete" in volume.read_bytes()[:200] \
            else "finished"
        seen.add(state)
        if state == "incomplete":
            with pytest.warns(IncompleteVolumeWarning, match="incomplete: tif2blockfs began writing it"):
                Directory.open(str(volume)).close()
            check = run("blockfs", "check", "--silent", volume)
            assert check.returncode == 1 and "incomplete" in check.stdout + check.stderr, check
        if state != "finished":
            rerun = run(TIF2BLOCKFS, *argv[1:])
            assert rerun.returncode == 0, rerun.stderr
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            with Directory.open(str(volume)) as d:
                assert np.array_equal(d[...], stack)
    assert "incomplete" in seen, seen
