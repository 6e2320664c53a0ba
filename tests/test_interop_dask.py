"""dask in and out: to_dask and open_zarr + da.from_zarr equal the library's reads; write_dask on every scheduler."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from helpers import require
from interop_support import make_pyramid
from repair_volumes import damage
from volumes import make_volume

import blockfs
from blockfs import Directory, check, open_volume
from blockfs.errors import CorruptBlockError
from blockfs.interop.dask_io import to_dask
from blockfs.pyramid import open_pyramid

SHAPE = (40, 50, 70)
BLOCK = (16, 16, 32)


@pytest.fixture
def volume(tmp_path):
    return make_volume(tmp_path, shape=SHAPE, block=BLOCK, missing=((32, 16, 16),))


@pytest.mark.parametrize("scheduler", ["threads", "processes", "synchronous"])
def test_to_dask_equals_the_library_read(volume, scheduler):
    require("dask")
    path, expected = volume
    d = Directory.open(path)
    array = d.to_dask()
    assert array.chunksize == BLOCK and array.numblocks == (3, 4, 3)
    assert len(pickle.dumps(array)) < 20_000
    np.testing.assert_array_equal(array.compute(scheduler=scheduler), d[...], strict=True)
    np.testing.assert_array_equal(array[3:37, 10:20, 65:].compute(scheduler=scheduler), expected[3:37, 10:20, 65:],
                                  strict=True)
    assert int(array.sum(dtype=np.int64).compute(scheduler=scheduler)) == int(expected.sum(dtype=np.int64))


def test_max_chunks_gives_chunks_of_whole_blocks_and_a_damaged_block_reads_as_zeros_alone(volume):
    path, expected = volume
    array = to_dask(open_volume(path), max_chunks=8)  # 36 blocks
    assert array.npartitions <= 8 and all(c % b == 0 for c, b in zip(array.chunksize, BLOCK))
    np.testing.assert_array_equal(array.compute(), expected, strict=True)
    np.testing.assert_array_equal(array[5, 3:40, 7:66].compute(), expected[5, 3:40, 7:66], strict=True)

    damage(path, (32, 16, 0))
    reported: list[CorruptBlockError] = []
    guarded = to_dask(open_volume(path), damaged=reported.append, max_chunks=8)
    data = guarded.compute(scheduler="synchronous")
    assert not data[0:16, 16:32, 32:64].any() and len(reported) == 1 and str(path) in str(reported[0])
    expected[0:16, 16:32, 32:64] = 0
    np.testing.assert_array_equal(data, expected, strict=True)  # the rest of its chunk reads as written


def test_to_dask_on_pyramid_levels_and_open_zarr_with_from_zarr(tmp_path):
    da = require("dask.array")
    require("zarr")
    root, arrays = make_pyramid(tmp_path / "p")
    for level, expected in zip(open_pyramid(root).levels, arrays):
        np.testing.assert_array_equal(to_dask(level).compute(), expected, strict=True)
    group = blockfs.open_zarr(root)
    for i, expected in enumerate(arrays):
        np.testing.assert_array_equal(da.from_zarr(group[str(i)]).compute(scheduler="processes"), expected, strict=True)


def test_to_dask_on_a_distributed_cluster(volume):
    distributed = require("distributed")
    path, expected = volume
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None)
    with cluster, distributed.Client(cluster) as client:
        array = Directory.open(path).to_dask()
        np.testing.assert_array_equal(client.compute(array).result(), expected, strict=True)
        zarr_array = require("dask.array").from_zarr(blockfs.open_zarr(path))
        np.testing.assert_array_equal(client.compute(zarr_array).result(), expected, strict=True)


def _input(da):
    rng = np.random.default_rng(3)
    data = rng.integers(0, 60000, SHAPE, dtype=np.uint16)
    return data, da.from_array(data, chunks=(13, 21, 40))  # chunks that straddle blocks


@pytest.mark.parametrize("scheduler", ["threads", "processes"])
def test_write_dask_on_local_schedulers(tmp_path, scheduler):
    da = require("dask.array")
    data, array = _input(da)
    path = tmp_path / "out.blockfs"
    out = blockfs.write_dask(array, path, compute_kwargs={"scheduler": scheduler}, n_filenames=3, task_bytes=40_000,
                             z_block_size=BLOCK[0], y_block_size=BLOCK[1], x_block_size=BLOCK[2],
                             metadata={"source": "dask"})
    assert out.mode == "r" and out.metadata == {"source": "dask"}
    np.testing.assert_array_equal(out[...], data, strict=True)
    again = Directory.open(path)
    assert all(again.read_block_payload(x, y, z) is not None
               for z in range(0, SHAPE[0], BLOCK[0]) for y in range(0, SHAPE[1], BLOCK[1])
               for x in range(0, SHAPE[2], BLOCK[2]))
    with pytest.raises(blockfs.VolumeExistsError):
        blockfs.write_dask(array, path)


def test_write_dask_on_a_distributed_cluster_with_retries(tmp_path):
    da = require("dask.array")
    distributed = require("distributed")
    from blockfs.interop.dask_io import _write_chunk
    data, array = _input(da)
    path = tmp_path / "out.blockfs"
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=2, processes=True, dashboard_address=None)
    with cluster, distributed.Client(cluster):
        blockfs.write_dask(array, path, z_block_size=BLOCK[0], y_block_size=BLOCK[1], x_block_size=BLOCK[2])
        # a retried task writes its blocks again: the result is the same volume
        blockfs.write_dask(array + 1, path, overwrite=True, z_block_size=BLOCK[0], y_block_size=BLOCK[1],
                           x_block_size=BLOCK[2])
        rewrite = (array + 1).rechunk(BLOCK).map_blocks(_write_chunk, str(path), dtype=bool,
                                                        chunks=((1,) * 3, (1,) * 4, (1,) * 3))
        rewrite.sum().compute()
    np.testing.assert_array_equal(Directory.open(path)[...], data + 1, strict=True)
    assert check.main([str(path)]) == 0


def test_write_dask_tasks_are_whole_blocks_up_to_task_bytes():
    from blockfs.interop.dask_io import TASK_BYTES, task_shape
    assert task_shape((16, 16, 32), SHAPE, 2, 40_000) == (16, 16, 64)  # doubling y too would be 64 KiB
    assert task_shape((64, 64, 64), (10_000,) * 3, 2, TASK_BYTES) == (256, 256, 256)  # 32 MiB
    assert task_shape((64, 64, 64), (10, 10, 10), 2, TASK_BYTES) == (64, 64, 64)  # never past the volume
    assert task_shape((64, 64, 64), (1000,) * 3, 2, 1000) == (64, 64, 64)  # at least one block


def test_write_dask_rejects_a_2d_array(tmp_path):
    da = require("dask.array")
    with pytest.raises(blockfs.InvalidArgumentError, match="3D"):
        blockfs.write_dask(da.zeros((4, 4)), tmp_path / "flat.blockfs")
