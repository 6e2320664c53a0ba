"""blockfs to-zarr and from-zarr: zarr-python and tensorstore read what to-zarr wrote, an OME-Zarr validator
accepts it, shards hold the blocks' stored bytes, and from-zarr brings full blocks back byte for byte."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import crc32c
import numpy as np
import pytest

from helpers import require
from interop_support import make_pyramid
from terminal import open_terminal, read_all
from volumes import make_volume

from blockfs import Directory
from blockfs.cli import main as blockfs_main
from blockfs.pyramid import open_pyramid

BLOCK = 16
FORMS = [("3", None), ("3", "0"), ("3", "1"), ("2", None)]  # (zarr format, --shard-blocks)


def to_zarr(source, dest, zarr_format="3", shard_blocks=None, *extra):
    argv = ["to-zarr", str(source), str(dest), "--zarr-format", zarr_format, "--silent", *extra]
    return blockfs_main(argv + (["--shard-blocks", shard_blocks] if shard_blocks is not None else []))


@pytest.fixture(scope="module")
def pyramid(tmp_path_factory):
    return make_pyramid(tmp_path_factory.mktemp("pyramid") / "brain")


def blocks(d: Directory):
    bz, by, bx = d.layout.block_shape
    return [(x, y, z) for z in range(0, d.shape[0], bz) for y in range(0, d.shape[1], by)
            for x in range(0, d.shape[2], bx)]


@pytest.mark.parametrize("zarr_format, shard_blocks", FORMS)
def test_zarr_python_tensorstore_and_the_validator_read_every_level(pyramid, tmp_path, zarr_format, shard_blocks):
    zarr = require("zarr")
    ts = require("tensorstore")
    require("ome_zarr_models")
    from ome_zarr_models import v04, v05
    root, arrays = pyramid
    dest = tmp_path / "brain.ome.zarr"
    assert to_zarr(root, dest, zarr_format, shard_blocks) == 0
    group = zarr.open_group(dest, mode="r", zarr_format=int(zarr_format))
    image = (v05 if zarr_format == "3" else v04).Image.from_zarr(group)
    assert [d.path for d in image.ome_attributes.multiscales[0].datasets] == ["0", "1", "2"]
    levels = open_pyramid(root).levels
    for i, (level, expected) in enumerate(zip(levels, arrays)):
        np.testing.assert_array_equal(level[...], expected, strict=True)
        np.testing.assert_array_equal(group[str(i)][...], expected, strict=True)
        store = ts.open({"driver": "zarr3" if zarr_format == "3" else "zarr",
                         "kvstore": {"driver": "file", "path": str(dest / str(i))}}, read=True).result()
        np.testing.assert_array_equal(store.read().result(), expected, strict=True)
        z = expected.shape[0]
        np.testing.assert_array_equal(store[3:z - 1, 5:9, 1:].read().result(), expected[3:z - 1, 5:9, 1:], strict=True)
    if shard_blocks is None and zarr_format == "2" or shard_blocks == "0":  # one file per block
        assert (dest / "0" / ("0.0.0" if zarr_format == "2" else "c/0/0/0")).exists()
        assert not (dest / "0" / ("0.0.1" if zarr_format == "2" else "c/0/0/1")).exists()  # never written


def test_the_validator_accepts_a_single_volume(tmp_path):
    zarr = require("zarr")
    require("ome_zarr_models")
    from ome_zarr_models.v05 import Image
    path, expected = make_volume(tmp_path, shape=(20, 33, 40), block=(BLOCK,) * 3,
                                 metadata={"voxel_size_um": [0.4, 0.4, 1.5], "stain": "DAPI"})
    assert to_zarr(path, tmp_path / "one.zarr") == 0
    group = zarr.open_group(tmp_path / "one.zarr", mode="r")
    multiscale = Image.from_zarr(group).ome_attributes.multiscales[0]
    assert multiscale.datasets[0].coordinateTransformations[0].scale == [1.5, 0.4, 0.4]
    assert group.attrs["blockfs"] == {"voxel_size_um": [0.4, 0.4, 1.5], "stain": "DAPI"}
    np.testing.assert_array_equal(group["0"][...], expected, strict=True)


def test_a_shard_holds_the_blocks_stored_bytes(pyramid, tmp_path):
    root, _ = pyramid
    dest = tmp_path / "sharded.zarr"
    assert to_zarr(root, dest, "3", "2") == 0
    meta = json.loads((dest / "0" / "zarr.json").read_text())
    assert meta["chunk_grid"]["configuration"]["chunk_shape"] == [32, 32, 32]
    level = open_pyramid(root).levels[0]
    shard = (dest / "0" / "c" / "0" / "1" / "1").read_bytes()  # blocks z 0-1, y 2-3, x 2-3
    raw_index, crc = shard[-8 * 16 - 4:-4], shard[-4:]
    assert crc32c.crc32c(raw_index).to_bytes(4, "little") == crc
    index = np.frombuffer(raw_index, "<u8").reshape(2, 2, 2, 2)  # (z, y, x) inner chunk -> (offset, nbytes)
    offset, nbytes = (int(v) for v in index[1, 0, 1])  # inner chunk (1, 0, 1): the block at z=16, y=32, x=48
    stored = level.read_block_payload(48, 32, 16)
    assert shard[offset:offset + nbytes] == stored and len(stored) < BLOCK ** 3 * 2


def test_from_zarr_round_trips_to_zarr_byte_for_byte_on_full_blocks(pyramid, tmp_path):
    require("zarr")
    root, arrays = pyramid
    for zarr_format, shard_blocks in FORMS[:1] + FORMS[-1:]:
        dest = tmp_path / f"v{zarr_format}.zarr"
        assert to_zarr(root, dest, zarr_format, shard_blocks) == 0
        back = tmp_path / f"back{zarr_format}"
        assert blockfs_main(["from-zarr", str(dest), str(back), "--pyramid", "--silent"]) == 0
        source, copy = open_pyramid(root), open_pyramid(back)
        assert copy.keys == source.keys and copy.resolutions_nm == source.resolutions_nm
        for a, b, expected in zip(source.levels, copy.levels, arrays):
            np.testing.assert_array_equal(b[...], expected, strict=True)
            assert b.layout.block_shape == a.layout.block_shape
            for x, y, z in blocks(a):
                if b.layout.block_shape_at(x, y, z) == b.layout.block_shape:
                    assert b.read_block_payload(x, y, z) == a.read_block_payload(x, y, z)
        one = tmp_path / f"level{zarr_format}.blockfs"
        assert blockfs_main(["from-zarr", str(dest), str(one), "--level", "1", "--silent"]) == 0
        assert Directory.open(one).metadata["voxel_size_um"] == [1.0, 1.0, 4.0]
        np.testing.assert_array_equal(Directory.open(one)[...], arrays[1], strict=True)


def test_from_zarr_transcodes_other_chunkings_and_codecs(tmp_path):
    zarr = require("zarr")
    from blockfs.interop.unpack import from_zarr
    data = np.random.default_rng(1).integers(0, 1000, (30, 40, 50), dtype=np.uint16)
    data[:16] = 0  # blocks of zeros stay unwritten
    for name, kwargs in [("zstd-v3", {"chunks": (10, 20, 25), "shards": (20, 40, 50)}),
                         ("raw-v2", {"chunks": (16, 16, 16), "zarr_format": 2, "compressors": None})]:
        source = tmp_path / f"{name}.zarr"
        array = zarr.create_array(source, shape=data.shape, dtype=data.dtype, **kwargs)
        array[...] = data
        dest = tmp_path / f"{name}.blockfs"
        assert blockfs_main(["from-zarr", str(source), str(dest), "--silent"]) == 0
        volume = Directory.open(dest)
        np.testing.assert_array_equal(volume[...], data, strict=True)
        assert volume.layout.block_shape == tuple(kwargs["chunks"])
        assert volume.read_block_payload(0, 0, 0) is None
        other = from_zarr(source, tmp_path / f"{name}-16.blockfs", block_shape=(16, 16, 16))
        assert other.layout.block_shape == (16, 16, 16) and other.read_block_payload(0, 0, 0) is None
        np.testing.assert_array_equal(other[...], data, strict=True)


@pytest.mark.parametrize("zarr_format", ["2", "3"])
def test_a_float_volume_with_odd_blocks_reads_the_same_in_tensorstore(tmp_path, zarr_format):
    ts = require("tensorstore")
    path, expected = make_volume(tmp_path, shape=(19, 23, 29), block=(8, 16, 12), dtype="float32",
                                 missing=((12, 0, 8),))
    dest = tmp_path / "f.zarr"
    assert to_zarr(path, dest, zarr_format, "2" if zarr_format == "3" else None) == 0
    store = ts.open({"driver": "zarr3" if zarr_format == "3" else "zarr",
                     "kvstore": {"driver": "file", "path": str(dest / "0")}}, read=True).result()
    assert store.dtype.numpy_dtype == np.float32
    np.testing.assert_array_equal(store.read().result(), expected, strict=True)


def test_tools_refuse_an_existing_output_unless_overwrite(pyramid, tmp_path, capsys):
    require("zarr")
    root, _ = pyramid
    dest = tmp_path / "out.zarr"
    assert to_zarr(root, dest) == 0
    assert to_zarr(root, dest) == 1
    assert f"blockfs to-zarr: {dest}: already exists; pass --overwrite" in capsys.readouterr().err
    assert to_zarr(root, dest, "2", None, "--overwrite") == 0
    assert (dest / ".zgroup").exists() and not (dest / "zarr.json").exists()
    other = tmp_path / "notes"
    other.mkdir()
    (other / "todo.txt").write_text("keep me")
    assert to_zarr(root, other, "3", None, "--overwrite") == 1
    assert "is not what this tool writes" in capsys.readouterr().err
    target = tmp_path / "v.blockfs"
    assert blockfs_main(["from-zarr", str(dest), str(target), "--silent"]) == 0
    assert blockfs_main(["from-zarr", str(dest), str(target), "--silent"]) == 1
    assert "already exists" in capsys.readouterr().err
    assert blockfs_main(["from-zarr", str(dest), str(target), "--level", "7", "--silent"]) == 1
    assert "level 7 does not exist" in capsys.readouterr().err
    assert to_zarr(root, tmp_path / "x.zarr", "2", "4") == 1
    assert "sharding needs zarr format 3" in capsys.readouterr().err


def test_console_script_shows_progress_on_a_terminal_only(pyramid, tmp_path):
    root, _ = pyramid
    argv = [sys.executable, "-m", "blockfs.cli", "to-zarr", str(root)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    controller, terminal = open_terminal()
    try:
        process = subprocess.Popen([*argv, str(tmp_path / "p.zarr")], stdout=terminal, stderr=terminal, env=env)
    finally:
        os.close(terminal)
    shown = read_all(controller).decode()
    assert process.wait(timeout=120) == 0, shown
    assert "to-zarr: 100%" in shown and "111/111" in shown, shown
    logged = subprocess.run([*argv, str(tmp_path / "q.zarr")], capture_output=True, text=True, timeout=120, env=env)
    assert logged.returncode == 0 and logged.stderr == "", logged.stderr  # no bar in a log


def test_from_zarr_passes_foreign_blosc_chunks_through(tmp_path):
    zarr = require("zarr")
    numcodecs = require("numcodecs")
    data = np.random.default_rng(2).integers(0, 3000, (32, 40, 48), dtype=np.uint16)
    for name, kwargs in [("v2", {"zarr_format": 2, "compressors": numcodecs.Blosc("lz4", 3, numcodecs.Blosc.SHUFFLE)}),
                         ("v3", {"shards": (32, 32, 32),
                                 "compressors": zarr.codecs.BloscCodec(cname="lz4", clevel=3, shuffle="shuffle")})]:
        source = tmp_path / f"{name}.zarr"
        array = zarr.create_array(source, shape=data.shape, dtype=data.dtype, chunks=(16, 16, 16), **kwargs)
        array[...] = data
        dest = tmp_path / f"{name}.blockfs"
        assert blockfs_main(["from-zarr", str(source), str(dest), "--silent"]) == 0
        volume = Directory.open(dest)
        np.testing.assert_array_equal(volume[...], data, strict=True)
        assert volume.compression.value == "lz4" and volume.compression_level == 3
        payload = volume.read_block_payload(16, 16, 16)
        if name == "v2":
            assert payload == (source / "1.1.1").read_bytes()
        else:
            assert payload in (source / "c" / "0" / "0" / "0").read_bytes()


def test_bad_sources_and_arguments_are_named(tmp_path, capsys):
    require("zarr")
    assert blockfs_main(["from-zarr", str(tmp_path / "none.zarr"), str(tmp_path / "v.blockfs")]) == 1
    assert "none.zarr: not a zarr array or group" in capsys.readouterr().err
    assert to_zarr(tmp_path / "none.blockfs", tmp_path / "o.zarr") == 1
    assert "none.blockfs" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        blockfs_main(["to-zarr", "a", "b", "--workers", "0"])
    assert exit_info.value.code == 2 and "must be a positive whole number" in capsys.readouterr().err


def test_a_missing_optional_package_is_named_with_the_extra(tmp_path):
    path, _ = make_volume(tmp_path, shape=(8, 8, 8), block=(8, 8, 8))
    code = ("import sys; sys.modules['zarr'] = sys.modules['dask'] = None\n"
            "import blockfs\n"
            f"volume = {str(path)!r}\n"
            "for call in (lambda: blockfs.open_zarr(volume), lambda: blockfs.Directory.open(volume).to_dask()):\n"
            "    try:\n"
            "        call()\n"
            "    except blockfs.MissingDependencyError as exc:\n"
            "        print(exc)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert result.returncode == 0, result.stderr
    fix = "install it with pip install 'blockfs[interop]'."
    assert result.stdout.splitlines() == [f"zarr: not installed, and blockfs.interop.store needs it; {fix}",
                                          f"dask.array: not installed, and blockfs.interop.dask_io needs it; {fix}"]


def test_from_zarr_writes_out_a_non_zero_fill_and_checks_axes(tmp_path, capsys):
    zarr = require("zarr")
    array = zarr.create_array(tmp_path / "fill.zarr", shape=(20, 20, 20), chunks=(16, 16, 16), dtype="uint16",
                              fill_value=7, compressors=zarr.codecs.BloscCodec(cname="zstd", clevel=3))
    array[:16, :16, :16] = 1  # one chunk stored; the others are missing and read as 7
    assert blockfs_main(["from-zarr", str(tmp_path / "fill.zarr"), str(tmp_path / "fill.blockfs"), "--silent"]) == 0
    np.testing.assert_array_equal(Directory.open(tmp_path / "fill.blockfs")[...], array[...], strict=True)
    group = zarr.open_group(tmp_path / "xyz.zarr", mode="w", zarr_format=2)
    group.create_array("0", shape=(4, 4, 4), dtype="uint8")
    group.attrs["multiscales"] = [{"version": "0.4", "axes": [{"name": n, "type": "space"} for n in "xyz"],
                                   "datasets": [{"path": "0", "coordinateTransformations": [
                                       {"type": "scale", "scale": [1, 1, 1]}]}]}]
    assert blockfs_main(["from-zarr", str(tmp_path / "xyz.zarr"), str(tmp_path / "xyz.blockfs"), "--silent"]) == 1
    assert "axes ['x', 'y', 'z']; only 3D images with axes z, y, x" in capsys.readouterr().err
