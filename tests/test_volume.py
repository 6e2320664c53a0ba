"""Volume: the read-only view behind Directory's reads, read_into and block projections."""

from __future__ import annotations

import multiprocessing
import pickle
import threading
import tracemalloc

import numpy as np
import pytest

import blockfs
from blockfs import BlockShapeError, Directory, Volume

pytestmark = pytest.mark.timeout(120)

SHAPE = (40, 70, 90)  # z, y, x: edge blocks are truncated on every axis
BLOCK = (16, 32, 32)


@pytest.fixture(scope="module")
def volume_path(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, np.ndarray]:
    path = str(tmp_path_factory.mktemp("vol") / "v.blockfs")
    d = Directory(SHAPE[2], SHAPE[1], SHAPE[0], np.uint16, path, n_filenames=2, z_block_size=BLOCK[0],
                  y_block_size=BLOCK[1], x_block_size=BLOCK[2]).create()
    data = np.random.default_rng(5).integers(0, 60000, SHAPE, dtype=np.uint16)
    for part in d.volume.iter_projections():
        x, y, z = part.origin
        if (x // BLOCK[2] + y // BLOCK[1] + z // BLOCK[0]) % 4:  # some blocks stay unwritten
            d.write_block(data[part.out_selection], x, y, z)
        else:
            data[part.out_selection] = 0
    d.close()
    return path, data


REGIONS = [np.s_[...], np.s_[3:37, 5:66, 7:80], np.s_[16:32, 32:64, 0:90], np.s_[5, :, 10:20],
           np.s_[:, 40, 3], np.s_[::3, 1:60:7, ::-5], np.s_[0:0, :, :], np.s_[-1, -1, -1]]


@pytest.mark.parametrize("region", REGIONS, ids=[str(r) for r in range(len(REGIONS))])
def test_read_and_read_into_agree_with_numpy(volume_path: tuple[str, np.ndarray], region: object) -> None:
    path, data = volume_path
    volume = blockfs.open_volume(path)
    expected = data[region]
    np.testing.assert_array_equal(volume.read(region), expected)
    np.testing.assert_array_equal(volume[region], expected)
    np.testing.assert_array_equal(Directory.open(path)[region], expected)
    out = np.full(expected.shape, 7, np.uint16)  # stale values must be overwritten, zeros included
    assert volume.read_into(out, region) is out
    np.testing.assert_array_equal(out, expected)
    strided = np.full(expected.shape + (2,), 7, np.uint16)[..., 0]  # not C-contiguous
    volume.read_into(strided, region)
    np.testing.assert_array_equal(strided, expected)


def test_read_into_refuses_a_wrong_buffer(volume_path: tuple[str, np.ndarray]) -> None:
    volume = blockfs.open_volume(volume_path[0])
    with pytest.raises(BlockShapeError, match="shape"):
        volume.read_into(np.empty((2, 2, 2), np.uint16), np.s_[0:2, 0:2, 0:3])
    with pytest.raises(BlockShapeError, match="dtype"):
        volume.read_into(np.empty((2, 2, 2), np.float32), np.s_[0:2, 0:2, 0:2])


def test_read_into_allocates_nothing_per_block(volume_path: tuple[str, np.ndarray]) -> None:
    path, data = volume_path
    volume = blockfs.open_volume(path)
    block_bytes = int(np.prod(BLOCK)) * 2
    for region in (np.s_[...], np.s_[3:37, 5:66, 7:80]):  # whole blocks straight in; partial ones via scratch
        out = np.empty(data[region].shape, np.uint16)
        volume.read_into(out, region)  # warm up: file descriptors, thread pool, per-thread buffers
        tracemalloc.start()
        try:
            volume.read_into(out, region)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        np.testing.assert_array_equal(out, data[region])
        assert peak < block_bytes, (region, peak)


def test_projections_tile_the_region(volume_path: tuple[str, np.ndarray]) -> None:
    volume = blockfs.open_volume(volume_path[0])
    region = np.s_[3:37, 5:66, 7:80]
    covered = np.zeros((34, 61, 73), np.int32)
    parts = list(volume.iter_projections(region))
    for part in parts:
        covered[part.out_selection] += 1
        x, y, z = part.origin
        assert part.entry == volume.layout.entry_index(x, y, z)
        assert part.shape == volume.layout.block_shape_at(x, y, z)
        assert part.is_complete == all(s.stop - s.start == n for s, n in zip(part.block_selection, part.shape))
    assert (covered == 1).all()
    assert len(parts) == 3 * 3 * 3 and sum(p.is_complete for p in parts) == 1 * 1 * 1


def test_volume_pickles_as_its_spec_and_reads_in_another_process(volume_path: tuple[str, np.ndarray]) -> None:
    path, data = volume_path
    volume = blockfs.open_volume(path)
    clone = pickle.loads(pickle.dumps(volume))
    assert isinstance(clone, Volume) and clone.store.spec == volume.store.spec and not clone.store.spec.writable
    assert len(pickle.dumps(volume)) < 4096
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        total = pool.apply(_sum, (volume, np.s_[0:20, 10:50, 30:70]))
    assert total == int(data[0:20, 10:50, 30:70].sum(dtype=np.int64))


def _sum(volume: Volume, region: object) -> int:
    return int(volume[region].sum(dtype=np.int64))


def test_threads_share_one_volume(volume_path: tuple[str, np.ndarray]) -> None:
    path, data = volume_path
    volume = blockfs.open_volume(path)
    errors: list[BaseException] = []

    def work(seed: int) -> None:
        rng = np.random.default_rng(seed)
        try:
            for _ in range(20):
                z0, y0, x0 = (int(rng.integers(0, n - 1)) for n in SHAPE)
                region = np.s_[z0:z0 + 9, y0:y0 + 33, x0:x0 + 20]
                np.testing.assert_array_equal(volume[region], data[region])
                np.testing.assert_array_equal(volume.read_block(32, 0, 16), data[16:32, 0:32, 32:64])
        except BaseException as exc:  # noqa: BLE001 - reported to the main thread below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(seed,)) for seed in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors[0]


def test_volume_has_no_writer_state(volume_path: tuple[str, np.ndarray]) -> None:
    volume = blockfs.open_volume(volume_path[0])
    assert not hasattr(volume, "write_block") and not hasattr(volume, "__setitem__")
    assert volume.shape == SHAPE and volume.dtype == np.uint16 and volume.block_shape == BLOCK
    assert volume.grid == (3, 3, 3) and volume.metadata == {}
    payload = volume.read_block_payload(32, 0, 16)
    assert payload is not None and payload == Directory.open(volume_path[0]).read_block_payload(32, 0, 16)
