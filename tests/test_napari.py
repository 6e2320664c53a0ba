"""blockfs in a real napari (Qt on a headless X display): the plugin's reader, writers, damage and lazy reads."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pytest

from helpers import console, require
from napari_support import NAPARI_IMPORT_WARNINGS, display, screenshot, viewer  # noqa: F401

import blockfs
from blockfs.napari.reader import MAX_CHUNKS
from blockfs.pyramid import build_pyramid, open_pyramid
from blockfs.pyramid.folder import level_path, make_info, write_info
from blockfs.store import BlockStore
from blockfs.writable import create_volume

pytestmark = NAPARI_IMPORT_WARNINGS

BRIGHT, GREY, DIM = 3000, 2000, 1000
VOXEL_UM = (0.5, 0.5, 2.0)  # x, y, z
#: Set to a file name to keep the pyramid test's screenshot (the README's docs/napari.png is made so).
SCREENSHOT = os.environ.get("BLOCKFS_NAPARI_SCREENSHOT")


def quadrants(path: Path, shards: int = 2) -> Path:
    """A 128^3 volume of 64^3 blocks, the same in both z rows: bright at y < 64, x < 64, missing (zeros) at
    y < 64, x >= 64, grey at y >= 64, x < 64 and dim (the contrast's low end) at y >= 64, x >= 64."""
    with create_volume(path, (128, 128, 128), np.uint16, (64, 64, 64), shards=shards,
                       metadata={"voxel_size_um": list(VOXEL_UM)}) as volume:
        for z in (0, 64):
            volume.write_block(np.full((64, 64, 64), BRIGHT, np.uint16), 0, 0, z)
            volume[z:z + 64, 64:128] = np.repeat([GREY, DIM], 64).astype(np.uint16)
    return path


@pytest.fixture(scope="module")
def pyramid(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("napari")
    return Path(build_pyramid(quadrants(folder / "quadrants.blockfs"), folder / "brain", levels=2, silent=True))


def open_one(viewer, path: Path):
    viewer.layers.clear()
    layers = viewer.open(str(path), plugin="blockfs")
    assert len(layers) == 1
    return layers[0]


def test_a_pyramid_opens_as_a_lazy_multiscale_layer_and_shows_its_blocks(viewer, pyramid: Path) -> None:
    dask = require("dask.array")
    layer = open_one(viewer, pyramid)
    levels = open_pyramid(pyramid).levels
    assert layer.name == "brain" and layer.multiscale and len(layer.data) == 2
    assert all(isinstance(level, dask.Array) and level.chunksize == (64, 64, 64) for level in layer.data)
    assert [level.shape for level in layer.data] == [(128, 128, 128), (64, 64, 64)]
    np.testing.assert_array_equal(np.asarray(layer.data[1]), levels[1][:])
    assert tuple(layer.scale) == (2.0, 0.5, 0.5) and tuple(layer.contrast_limits) == (DIM, BRIGHT)

    image = screenshot(viewer, Path(SCREENSHOT) if SCREENSHOT else None).mean(axis=2)
    rows, cols = np.nonzero(image > 32)  # the bright and grey blocks: the volume's left half
    top, bottom, left = rows.min(), rows.max() + 1, cols.min()
    right = left + bottom - top  # a square on screen: x and y have the same voxel size
    assert bottom - top > 100 and abs(2 * (cols.max() + 1 - left) - (right - left)) <= 2
    mid_y, mid_x, m = (top + bottom) // 2, (left + right) // 2, (bottom - top) // 8

    def mean(y0: int, y1: int, x0: int, x1: int) -> float:
        return float(image[y0 + m:y1 - m, x0 + m:x1 - m].mean())

    assert mean(top, mid_y, left, mid_x) > 250  # bright: the top of the contrast
    assert mean(top, mid_y, mid_x, right) < 5  # the missing block: zeros
    assert 110 < mean(mid_y, bottom, left, mid_x) < 145  # grey: halfway through the contrast
    assert mean(mid_y, bottom, mid_x, right) < 5  # dim: the bottom of the contrast


def test_a_saved_image_layer_reopens_voxel_for_voxel(viewer, tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    data = rng.integers(0, 60000, (70, 130, 90), dtype=np.uint16)
    viewer.layers.clear()
    viewer.add_image(data, name="noise", scale=(3.0, 0.25, 0.5))
    out = tmp_path / "out.blockfs"
    assert viewer.layers.save(str(out), plugin="blockfs") == [str(out)]
    volume = blockfs.open_volume(out)
    np.testing.assert_array_equal(volume[:], data, strict=True)
    assert volume.metadata["voxel_size_um"] == [0.5, 0.25, 3.0]
    again = open_one(viewer, out)
    np.testing.assert_array_equal(np.asarray(again.data), data, strict=True)
    assert tuple(again.scale) == (3.0, 0.25, 0.5)


@pytest.mark.parametrize(("dtype", "stored"), [(np.int32, np.uint32), (np.int64, np.uint64)])
def test_a_saved_labels_layer_is_a_uint32_or_uint64_volume_and_reopens_as_labels(viewer, tmp_path: Path, dtype,
                                                                                 stored) -> None:
    labels = np.zeros((20, 100, 80), dtype)
    labels[2:9, 10:60, 5:70], labels[12:, 70:, :40] = 5, 70000
    viewer.layers.clear()
    viewer.add_labels(labels, name="cells")
    out = tmp_path / "cells.blockfs"
    viewer.layers.save(str(out), plugin="blockfs")
    volume = blockfs.open_volume(out)
    assert volume.dtype == stored
    np.testing.assert_array_equal(volume[:], labels.astype(stored), strict=True)
    layer = open_one(viewer, out)
    assert isinstance(layer, require("napari.layers").Labels)
    np.testing.assert_array_equal(np.asarray(layer.data), labels.astype(stored))


def test_a_damaged_block_shows_as_zeros_with_an_error_notification(viewer, tmp_path: Path) -> None:
    from napari.utils.notifications import NotificationSeverity, notification_manager
    path = quadrants(tmp_path / "damaged.blockfs", shards=1)
    volume = blockfs.open_volume(path)
    offset, size = volume.store.entry(volume.entry_of(0, 0, 64))  # a bright block
    with open(volume.store.spec.shard_paths[0], "r+b") as f:
        f.seek(offset + size // 2)
        byte = f.read(1)
        f.seek(offset + size // 2)
        f.write(bytes([byte[0] ^ 0xFF]))
    before = len(notification_manager.records)
    layer = open_one(viewer, path)
    data = np.asarray(layer.data)
    assert not data[64:, :64, :64].any() and (data[:64, :64, :64] == BRIGHT).all()
    assert (data[64:, 64:, :64] == GREY).all()
    errors = [n for n in notification_manager.records[before:] if n.severity == NotificationSeverity.ERROR]
    assert errors and str(path) in errors[0].message and "zeros" in errors[0].message, errors
    assert screenshot(viewer).mean() > 0  # the viewer still draws


def sparse_pyramid(root: Path, side: int, block: int) -> tuple[set[tuple[str, int]], set[tuple[str, int]]]:
    """A pyramid folder of a ``side``^3 volume down to one block, each level written only at the block holding
    the volume's centre and at its last corner (the same block on the coarsest levels), away from the centre
    plane and from the first corner, where napari draws before it has placed its view. The (level index file,
    entry) of the centres, and of the corners apart from them."""
    levels = math.ceil(math.log2(side / block)) + 1
    root.mkdir()
    write_info(root, make_info("uint16", "image", (side,) * 3, (block,) * 3, (1.0, 1.0, 1.0), levels))
    centres, corners = set(), set()
    for level in range(levels):
        extent = -(-side // 2 ** level)
        path = level_path(root, 2 ** level)
        os.makedirs(os.path.dirname(path))
        centre, corner = (extent // 2) // block * block, (extent - 1) // block * block
        with create_volume(path, (extent,) * 3, np.uint16, (block,) * 3, shards=1) as volume:
            for origin in {(centre,) * 3, (corner,) * 3}:
                volume.write_block(np.full(volume.layout.block_shape_at(*origin), 1000, np.uint16), *origin)
            centres.add((path, volume.entry_of(centre, centre, centre)))
            corners |= {(path, volume.entry_of(corner, corner, corner))} if corner != centre else set()
    return centres, corners


def test_a_sparse_volume_of_ten_thousand_voxels_a_side_reads_only_the_blocks_on_screen(
        viewer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    centres, corners = sparse_pyramid(tmp_path / "sparse", 10_000, 64)
    loads: list[tuple[str, int]] = []
    load = BlockStore.load

    def counted(self, entry, *args, **kwargs):
        loads.append((self.spec.index_path, entry))
        return load(self, entry, *args, **kwargs)

    monkeypatch.setattr(BlockStore, "load", counted)
    layer = open_one(viewer, tmp_path / "sparse")
    screenshot(viewer)
    assert len(layer.data) == len(centres) and viewer.dims.current_step[0] in range(4992, 5056)
    assert layer.data[0].npartitions <= 2 * MAX_CHUNKS  # not 157^3: dask's cost per slice grows with them
    assert corners and loads and not corners & set(loads), loads  # no block away from the plane shown is read
    assert set(loads) <= centres and len(loads) <= 4 * len(centres), loads


def test_npe2_validates_the_manifest_and_reads_a_pyramid_without_a_viewer(pyramid: Path) -> None:
    npe2 = require("npe2")
    checked = console("npe2", "validate", "blockfs")
    assert checked.returncode == 0 and "valid" in checked.stdout, checked.stdout + checked.stderr
    npe2.PluginManager.instance().discover()
    [(data, options, kind)] = npe2.read([str(pyramid)], plugin_name="blockfs", stack=False)
    assert kind == "image" and len(data) == 2 and options["scale"] == (2.0, 0.5, 0.5)
