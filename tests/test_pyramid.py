"""blockfs pyramid: every level against independent references, the layout, the info file, refusals."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

import pyramid_reference as ref
from helpers import console, in_process

from blockfs import Directory, VolumeExistsError
from blockfs.cli import main as blockfs_main
from blockfs.ops.relocate import read_directory_file
from blockfs.pyramid import open_pyramid
from blockfs.pyramid.build import build_pyramid
from blockfs.volume import Volume
from blockfs.writable import WritableVolume

pytestmark = pytest.mark.timeout(120)

SHAPE = (21, 27, 35)  # odd on every axis
BLOCK = (4, 6, 8)  # non-cubic


def missing(z: int, y: int, x: int) -> bool:
    """A few scattered blocks, and the whole subtree of the first level-2 block (8 x 12 x 16 voxels), unwritten."""
    return (z < 8 and y < 12 and x < 16) or (z, y, x) in {(4, 18, 24), (20, 24, 32), (12, 0, 8)}


def call(*args: object) -> tuple[int, str, str]:
    """``blockfs ...`` in this process: (exit status, stdout, stderr)."""
    result = in_process(blockfs_main, *args)
    return result.returncode, result.stdout, result.stderr


def build(tmp_path: Path, dtype: str, method: str, **kwargs) -> tuple[np.ndarray, Path, Path]:
    source = tmp_path / "source.blockfs"
    expected = ref.write_volume(source, ref.sample(SHAPE, dtype), BLOCK, missing)
    dest = tmp_path / "pyramid"
    build_pyramid(source, dest, method=method, n_workers=2, **kwargs)
    return expected, source, dest


def written(volume: Volume) -> set[tuple[int, int, int]]:
    """First voxels (z, y, x) of the blocks a volume holds."""
    return {(z, y, x) for z in range(0, volume.shape[0], BLOCK[0]) for y in range(0, volume.shape[1], BLOCK[1])
            for x in range(0, volume.shape[2], BLOCK[2]) if volume.read_block_payload(x, y, z) is not None}


@pytest.mark.parametrize("method", ["mean", "max", "mode", "stride"])
@pytest.mark.parametrize("dtype", ["uint8", "uint16", "int16", "float32"])
def test_every_level_equals_the_reference(tmp_path: Path, dtype: str, method: str) -> None:
    expected, _, dest = build(tmp_path, dtype, method)
    pyramid = open_pyramid(dest)
    assert len(pyramid.levels) == 4  # by default until the coarsest fits one block: 3 x 4 x 5 at factor 8
    references = ref.levels(expected, method, len(pyramid.levels))
    for level, (volume, reference) in enumerate(zip(pyramid.levels, references), 1):
        got = volume[...]
        assert got.dtype == np.dtype(dtype)
        assert got.shape == reference.shape, level
        mismatched = np.argwhere(got != reference)
        assert mismatched.size == 0, f"level {level}: {len(mismatched)} voxels differ, first at {mismatched[:3]}"
    # Sparse stays sparse: a block is written exactly when a level-1 block under it is.
    base = written(pyramid.levels[0])
    for level, volume in enumerate(pyramid.levels[1:], 2):
        f = 2 ** (level - 1)
        under = {(z // f // BLOCK[0] * BLOCK[0], y // f // BLOCK[1] * BLOCK[1], x // f // BLOCK[2] * BLOCK[2])
                 for z, y, x in base}
        assert written(volume) == under, level
    assert (0, 0, 0) not in written(pyramid.levels[1]) and (0, 0, 0) in written(pyramid.levels[2])


@pytest.mark.parametrize("method", ["mean", "max", "mode", "stride"])
def test_levels_equal_tensorstore_downsample(tmp_path: Path, method: str) -> None:
    ts = ref.require("tensorstore")
    expected, _, dest = build(tmp_path, "uint16", method)
    levels = open_pyramid(dest).levels
    below = ts.array(expected)
    for level, volume in enumerate(levels[1:], 2):
        if method == "mode":  # tensorstore's mode is over the whole footprint; ours is 2 x 2 x 2 of the level below
            below = ts.array(levels[level - 2][...])
            theirs = ts.downsample(below, [2, 2, 2], "mode").read().result()
        else:
            theirs = ts.downsample(below, [2 ** (level - 1)] * 3, method).read().result()
        np.testing.assert_array_equal(volume[...], theirs, err_msg=f"level {level}")


def test_info_file_and_layout(tmp_path: Path) -> None:
    """Section 1 of VIEWING-NOTES, key by key; level 1 linked, shards named absolutely."""
    metadata = {"voxel_size_um": [1.8, 1.8, 2.0], "scope": "lightsheet"}
    source = tmp_path / "source.blockfs"
    ref.write_volume(source, ref.sample(SHAPE, "uint16"), BLOCK, missing, metadata=metadata)
    index_before = source.read_bytes()
    dest = tmp_path / "pyramid"
    build_pyramid(source, dest, levels=3, n_workers=2)

    assert sorted(os.listdir(dest)) == ["1_1_1", "2_2_2", "4_4_4", "info"]
    info = json.loads((dest / "info").read_text())
    assert list(info) == ["data_type", "num_channels", "type", "scales"]
    assert (info["data_type"], info["num_channels"], info["type"]) == ("uint16", 1, "image")
    assert [s["key"] for s in info["scales"]] == ["1_1_1", "2_2_2", "4_4_4"]
    for i, scale in enumerate(info["scales"]):
        f = 2 ** i
        assert list(scale) == ["key", "size", "resolution", "chunk_sizes", "encoding", "voxel_offset"]
        assert scale["size"] == [-(-35 // f), -(-27 // f), -(-21 // f)]  # x, y, z
        assert scale["resolution"] == pytest.approx([1800 * f, 1800 * f, 2000 * f])
        assert scale["chunk_sizes"] == [[8, 6, 4]]
        assert (scale["encoding"], scale["voxel_offset"]) == ("raw", [0, 0, 0])

    source_shards = [Path(p) for p in Directory.open(str(source)).shard_paths]
    for i, scale in enumerate(info["scales"]):
        folder = dest / scale["key"]
        header = read_directory_file(str(folder / "precomputed.blockfs"))
        assert header.layout.block_shape == BLOCK and header.layout.dtype == np.dtype("uint16")
        for name in header.names:
            assert os.path.isabs(name) and Path(name).parent == folder.resolve() and os.path.isfile(name)
        if i == 0:  # the source, hard-linked: same files, index carried over, metadata kept
            assert [os.path.samefile(n, s) for n, s in zip(header.names, source_shards)] == [True] * len(source_shards)
            assert header.layout.metadata == metadata
        else:
            assert header.layout.metadata["voxel_size_um"] == pytest.approx([1.8 * 2 ** i, 1.8 * 2 ** i, 2.0 * 2 ** i])
            assert header.layout.metadata["pyramid"] == {"level": i + 1, "factor": 2 ** i, "method": "mean"}
    assert source.read_bytes() == index_before  # the source is untouched and still opens
    np.testing.assert_array_equal(Directory.open(str(source))[...], open_pyramid(dest).levels[0][...])

    pyramid = open_pyramid(dest)
    assert pyramid.keys == ["1_1_1", "2_2_2", "4_4_4"] and pyramid.voxel_size_um == pytest.approx((1.8, 1.8, 2.0))
    assert all(isinstance(level, Volume) and not isinstance(level, WritableVolume) for level in pyramid.levels)


def test_segmentation_type_and_voxel_size_option(tmp_path: Path) -> None:
    _, _, dest = build(tmp_path, "uint16", "mode", voxel_size_um=(0.5, 0.5, 4))
    info = json.loads((dest / "info").read_text())
    assert info["type"] == "segmentation"
    assert info["scales"][1]["resolution"] == [1000, 1000, 8000]


def test_refuses_finished_and_half_built_destinations(tmp_path: Path) -> None:
    _, source, dest = build(tmp_path, "uint8", "stride")
    code, _, err = call("pyramid", source, dest, "--silent")
    assert code == 1 and err.startswith(f"blockfs pyramid: {dest}: ") and "--overwrite" in err
    os.unlink(dest / "info")  # as if the build had stopped before its end
    (dest / ".pyramid-build").mkdir()
    code, _, err = call("pyramid", source, dest, "--silent")
    assert code == 1 and "--resume" in err and "--overwrite" in err, err
    code, _, _ = call("pyramid", source, dest, "--silent", "--overwrite", "--method", "max")
    assert code == 0 and json.loads((dest / "info").read_text())["scales"][0]["key"] == "1_1_1"
    with pytest.raises(VolumeExistsError):
        build_pyramid(source, dest)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    code, _, err = call("pyramid", source, tmp_path / "other", "--silent", "--overwrite")
    assert code == 1 and "not empty" in err and (tmp_path / "other" / "notes.txt").exists()


def test_info_describes_a_pyramid(tmp_path: Path) -> None:
    _, _, dest = build(tmp_path, "uint16", "mean")
    code, out, _ = call("info", dest)
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == f"pyramid       {dest.resolve()}" and "4, uint16, type image" in lines[1]
    assert [line.split()[0] for line in lines[3:]] == ["1_1_1", "2_2_2", "4_4_4", "8_8_8"]
    code, out, _ = call("info", dest, "--json")
    described = json.loads(out)
    assert [level["shape_zyx"] for level in described["levels"]] == [[21, 27, 35], [11, 14, 18], [6, 7, 9], [3, 4, 5]]
    base = open_pyramid(dest).levels
    assert [level["blocks_written"] for level in described["levels"]] == [len(written(v)) for v in base]


def test_from_tif_builds_a_pyramid(tmp_path: Path) -> None:
    tifffile = ref.require("tifffile")
    data = ref.sample((6, 20, 30), "uint16")
    for z, plane in enumerate(data):
        tifffile.imwrite(tmp_path / f"img_{z}.tif", plane)
    output = tmp_path / "out" / "brain.blockfs"
    result = console("tif2blockfs", "--input", tmp_path / "img_*.tif", "--output", output, "--block-size", "4,8,8",
                     "--pyramid", "3", "--silent")
    assert result.returncode == 0, result.stderr
    dest = tmp_path / "out" / "brain.pyramid"
    assert str(dest) in result.stdout
    levels = open_pyramid(dest).levels
    for volume, reference in zip(levels, ref.levels(data, "mean", 3)):
        np.testing.assert_array_equal(volume[...], reference)


def test_level1_is_copied_from_another_file_system(tmp_path: Path) -> None:
    """/dev/shm (tmpfs) and the test folder are different file systems: level 1 is a copy there."""
    shm = Path("/dev/shm")
    if not (shm.is_dir() and os.access(shm, os.W_OK)) or os.stat(shm).st_dev == os.stat(tmp_path).st_dev:
        pytest.fail("this test needs a writable /dev/shm on another file system than the test folder")
    folder = Path(__import__("tempfile").mkdtemp(dir=shm))
    try:
        source = folder / "source.blockfs"
        expected = ref.write_volume(source, ref.sample(SHAPE, "uint16"), BLOCK, missing)
        dest = tmp_path / "pyramid"
        build_pyramid(source, dest, levels=2, n_workers=2)
        level1 = Directory.open(str(dest / "1_1_1" / "precomputed.blockfs"))
        for ours, theirs in zip(level1.shard_paths, Directory.open(str(source)).shard_paths):
            assert Path(ours).parent == dest / "1_1_1" and Path(ours).read_bytes() == Path(theirs).read_bytes()
            assert os.stat(ours).st_dev != os.stat(theirs).st_dev
        np.testing.assert_array_equal(level1[...], expected)
    finally:
        __import__("shutil").rmtree(folder)


def test_unusable_sources_and_folders_are_named(tmp_path: Path) -> None:
    odd = tmp_path / "odd.blockfs"
    ref.write_volume(odd, ref.sample((8, 8, 8), "uint8"), (3, 4, 4))
    code, _, err = call("pyramid", odd, tmp_path / "p", "--silent")
    assert code == 1 and str(odd) in err and "even" in err
    wide = tmp_path / "wide.blockfs"
    ref.write_volume(wide, ref.sample((8, 8, 8), "int64"), (4, 4, 4))
    code, _, err = call("pyramid", wide, tmp_path / "p", "--silent", "--levels", "3")
    assert code == 1 and "2^52" in err and "max" in err
    assert call("pyramid", wide, tmp_path / "p", "--silent", "--method", "max")[0] == 0
    half = tmp_path / "half"
    (half / ".pyramid-build").mkdir(parents=True)
    code, _, err = call("info", half)
    assert code == 1 and "--resume" in err
    code, _, err = call("pyramid", wide, tmp_path / "missing" / "p", "--silent", "--method", "max")
    assert code == 1 and "parent folder" in err


def test_a_damaged_source_block_stops_the_build_with_its_name(tmp_path: Path) -> None:
    source = tmp_path / "source.blockfs"
    ref.write_volume(source, ref.sample(SHAPE, "uint16"), BLOCK, n_files=1)
    shard = Path(Directory.open(str(source)).shard_paths[0])
    os.truncate(shard, shard.stat().st_size // 2)
    result = console("blockfs", "pyramid", source, tmp_path / "p", "--n-workers", "2", "--silent")
    assert result.returncode == 1
    assert result.stderr.startswith("blockfs pyramid: ") and "truncated" in result.stderr
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert not (tmp_path / "p" / "info").exists()
