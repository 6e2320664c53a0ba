"""The zarr view of volumes and pyramids, read by zarr-python 3 through the blockfs Store."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import blosc
import numpy as np
import pytest

from helpers import require
from interop_support import make_pyramid
from volumes import make_volume

import blockfs
from blockfs import create_volume, open_volume
from blockfs.interop.zarr_format import ZarrView, chunk_bytes, parse_chunk_key, written_chunks

MISSING = ((32, 0, 0), (96, 64, 64))


@pytest.fixture
def volume(tmp_path):
    return make_volume(tmp_path, shape=(70, 90, 100), block=(32, 32, 32), missing=MISSING,
                       metadata={"voxel_size_um": [0.5, 0.5, 2.0]})


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_zarr_python_reads_a_volume(volume, zarr_format):
    require("zarr")
    from blockfs.interop.store import BlockfsStore, open_zarr
    path, expected = volume
    array = open_zarr(path, zarr_format=zarr_format)
    assert array.shape == expected.shape and array.dtype == expected.dtype
    assert array.chunks == (32, 32, 32) and array.read_only
    np.testing.assert_array_equal(array[...], expected, strict=True)
    np.testing.assert_array_equal(array[5:67, 31:33, 99], expected[5:67, 31:33, 99], strict=True)
    with pytest.raises(ValueError):
        array[0:1, 0:1, 0:1] = 1
    assert isinstance(array.store, BlockfsStore)


def test_full_blocks_pass_through_and_edge_blocks_are_padded(volume):
    path, expected = volume
    d = open_volume(path)
    assert chunk_bytes(d, (0, 1, 0)) == d.read_block_payload(0, 32, 0)
    assert chunk_bytes(d, (0, 0, 1)) is None  # never written
    assert chunk_bytes(d, (3, 0, 0)) is None  # outside the grid
    assert chunk_bytes(d, (2, 2, 3)) is None  # a never-written edge block
    out = np.frombuffer(blosc.decompress(chunk_bytes(d, (2, 1, 3))), d.dtype).reshape(32, 32, 32)
    np.testing.assert_array_equal(out[:6, :, :4], expected[64:, 32:64, 96:], strict=True)
    assert not out[6:].any() and not out[:, :, 4:].any()
    assert sorted(written_chunks(d)) == sorted(
        (z // 32, y // 32, x // 32) for z in range(0, 70, 32) for y in range(0, 90, 32) for x in range(0, 100, 32)
        if (x, y, z) not in MISSING)


def test_chunk_keys_of_both_forms():
    assert parse_chunk_key("1.2.3", 2) == (1, 2, 3)
    assert parse_chunk_key("c/1/2/3", 3) == (1, 2, 3)
    for key, fmt in [("1.2", 2), ("c/1/2/3", 2), ("1.2.3", 3), ("c/1/2", 3), (".zarray", 2), ("c/-1/0/0", 3),
                     ("1.2.x", 2), ("zarr.json", 3)]:
        assert parse_chunk_key(key, fmt) is None


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_zarr_python_reads_a_pyramid_with_ome_multiscales(tmp_path, zarr_format):
    require("zarr")
    from blockfs.interop.store import open_zarr
    root, arrays = make_pyramid(tmp_path / "pyramid")
    group = open_zarr(root, zarr_format=zarr_format)
    attrs = dict(group.attrs)
    ms = attrs["multiscales"][0] if zarr_format == 2 else attrs["ome"]["multiscales"][0]
    assert [a["name"] for a in ms["axes"]] == ["z", "y", "x"]
    assert [d["path"] for d in ms["datasets"]] == ["0", "1", "2"]
    assert ms["datasets"][2]["coordinateTransformations"] == [
        {"type": "scale", "scale": [8.0, 2.0, 2.0]}, {"type": "translation", "translation": [3.0, 0.75, 0.75]}]
    for i, expected in enumerate(arrays):
        np.testing.assert_array_equal(group[str(i)][...], expected, strict=True)
    assert sorted(group.array_keys()) == ["0", "1", "2"]


def test_store_pickles_and_reads_from_threads(volume):
    require("zarr")
    import zarr

    from blockfs.interop.store import BlockfsStore
    path, expected = volume
    store = pickle.loads(pickle.dumps(BlockfsStore(path)))
    assert len(pickle.dumps(store)) < 4096
    array = zarr.open_array(store, mode="r")
    with ThreadPoolExecutor(4) as pool:
        parts = list(pool.map(lambda z: array[z:z + 10], range(0, 70, 10)))
    np.testing.assert_array_equal(np.concatenate(parts), expected, strict=True)


def test_view_lists_metadata_then_written_chunks(volume):
    path, _ = volume
    view = ZarrView(path, zarr_format=3)
    keys = list(view.metadata) + list(view.chunk_keys())
    assert keys[0] == "zarr.json" and "c/0/1/0" in keys and "c/0/0/1" not in keys
    assert len(keys) == 1 + 3 * 3 * 4 - len(MISSING)


def test_write_block_payload_stores_stored_bytes_and_checks_them(volume, tmp_path):
    path, expected = volume
    source = open_volume(path)
    copy = create_volume(tmp_path / "copy.blockfs", (70, 90, 100), "uint16", (32, 32, 32), 1)
    full, edge = source.read_block_payload(32, 32, 32), source.read_block_payload(96, 64, 0)
    copy.write_block_payload(full, 32, 32, 32)
    copy.write_block_payload(edge, 96, 64, 0)
    with pytest.raises(blockfs.BlockShapeError, match="decompressing to 65536"):
        copy.write_block_payload(edge, 0, 0, 0)  # an edge block's bytes at a full block
    with pytest.raises(blockfs.BlockShapeError, match="one blosc buffer"):
        copy.write_block_payload(b"not blosc at all, not at all", 0, 0, 0)
    copy.close()
    reopened = open_volume(tmp_path / "copy.blockfs")
    assert reopened.read_block_payload(32, 32, 32) == full
    np.testing.assert_array_equal(reopened[:32, 64:, 96:], expected[:32, 64:, 96:], strict=True)
    assert reopened.read_block_payload(0, 0, 0) is None


def test_import_blockfs_and_the_zarr_format_module_leave_zarr_and_dask_out():
    code = ("import sys, blockfs, blockfs.interop.zarr_format, blockfs.cli.to_zarr, blockfs.cli.from_zarr\n"
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'zarr', 'dask', 'distributed', 'tensorstore'}))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
