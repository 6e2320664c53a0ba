"""PlaneWriter (planes in, whole-depth blocks out) and iter_slabs (the volume back, a slab at a time)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from volumes import make_volume

from blockfs import BlockfsWarning, Directory, WritableVolume, create_volume, open_volume
from blockfs.planes import PlaneCountError, PlaneError, PlaneWriter, iter_slabs

#: (z, y, x): 37 = 16 + 16 + 5 planes, so the last slab is partial; y and x do not divide either.
SHAPE = (37, 45, 51)
BLOCK = (16, 20, 32)


def new_volume(tmp_path: Path, dtype: str = "uint16", shape: tuple[int, int, int] = SHAPE) -> WritableVolume:
    return create_volume(tmp_path / "v.blockfs", shape, dtype, BLOCK, 2)


def planes(dtype: str = "uint16", shape: tuple[int, int, int] = SHAPE) -> np.ndarray:
    return np.random.default_rng(5).integers(1, 250, shape).astype(dtype)


def read_back(tmp_path: Path) -> np.ndarray:
    return open_volume(tmp_path / "v.blockfs").read()


@pytest.mark.parametrize("dtype", ["uint8", "uint16", "float32"])
def test_planes_become_the_volume(tmp_path: Path, dtype: str) -> None:
    expected = planes(dtype)
    d = new_volume(tmp_path, dtype)
    with PlaneWriter(d) as writer:
        for plane in expected:
            writer.write(plane)
        assert writer.z == SHAPE[0]
    d.close()
    got = read_back(tmp_path)
    assert got.dtype == expected.dtype
    np.testing.assert_array_equal(got, expected)


def test_through_the_writer_processes(tmp_path: Path) -> None:
    expected = planes()
    d = new_volume(tmp_path)
    d.start_writers()
    with PlaneWriter(d) as writer:
        for plane in expected:
            writer.write(plane)
    d.close()
    np.testing.assert_array_equal(read_back(tmp_path), expected)


def test_a_directory_as_in_the_readme(tmp_path: Path) -> None:
    """A Directory is written and read through the volumes it delegates to."""
    expected = planes()
    d = Directory(SHAPE[2], SHAPE[1], SHAPE[0], "uint16", str(tmp_path / "v.blockfs"), n_filenames=2,
                  z_block_size=BLOCK[0], y_block_size=BLOCK[1], x_block_size=BLOCK[2]).create()
    d.start_writer_processes()
    with PlaneWriter(d) as writer:
        for plane in expected:
            writer.write(plane)
    d.close()
    with Directory.open(str(tmp_path / "v.blockfs")) as r:
        np.testing.assert_array_equal(np.concatenate([s for _, s in iter_slabs(r)]), expected)


def test_a_slab_is_written_as_soon_as_it_is_full(tmp_path: Path) -> None:
    expected = planes()
    d = new_volume(tmp_path)
    writer = PlaneWriter(d)
    for plane in expected[:BLOCK[0]]:
        writer.write(plane)
    np.testing.assert_array_equal(d.read(np.s_[:BLOCK[0]]), expected[:BLOCK[0]])  # no write_block waits for close()
    for plane in expected[BLOCK[0]:]:
        writer.write(plane)
    writer.close()
    writer.close()  # a second close does nothing
    d.close()
    np.testing.assert_array_equal(read_back(tmp_path), expected)


def test_safe_casts_are_accepted(tmp_path: Path) -> None:
    expected = planes("uint8")
    d = new_volume(tmp_path, "uint16")
    with PlaneWriter(d) as writer:
        for plane in expected:
            writer.write(plane)
    d.close()
    np.testing.assert_array_equal(read_back(tmp_path), expected.astype(np.uint16))


def test_wrong_plane_shape(tmp_path: Path) -> None:
    with new_volume(tmp_path) as d:
        writer = PlaneWriter(d)
        writer.write(np.zeros(SHAPE[1:], np.uint16))
        with pytest.raises(PlaneError, match=r"plane z=1 has shape \(45, 50\); the volume's planes are \(45, 51\)"):
            writer.write(np.zeros((45, 50), np.uint16))
        assert writer.z == 1  # the bad plane was not taken


def test_plane_dtype_follows_the_casting_rule(tmp_path: Path) -> None:
    """Planes are cast as write_block casts: in-range values as numpy does, others clipped with one warning."""
    with new_volume(tmp_path) as d:
        with PlaneWriter(d) as writer:
            writer.write(np.full(SHAPE[1:], 1234.7, np.float32))
            with pytest.warns(BlockfsWarning, match=r"plane z=1.*clipped"):
                writer.write(np.full(SHAPE[1:], -1, np.int64))
            for _ in range(2, SHAPE[0]):
                writer.write(np.full(SHAPE[1:], 70000, np.int64))  # counted, not warned again
        assert d.clipped_values == (SHAPE[0] - 1) * SHAPE[1] * SHAPE[2]
    r = open_volume(d.path).read()
    assert (r[0] == 1234).all() and (r[1] == 0).all() and (r[2:] == 65535).all()


def test_too_many_planes(tmp_path: Path) -> None:
    with new_volume(tmp_path) as d:
        writer = PlaneWriter(d)
        for plane in planes():
            writer.write(plane)
        with pytest.raises(PlaneCountError, match=r"too many planes: all 37 planes of z range \[0, 37\)"):
            writer.write(np.zeros(SHAPE[1:], np.uint16))
        writer.close()


def test_too_few_planes(tmp_path: Path) -> None:
    expected = planes()
    d = new_volume(tmp_path)
    writer = PlaneWriter(d)
    for plane in expected[:20]:
        writer.write(plane)
    with pytest.raises(PlaneCountError, match=r"got 20 of the 37 planes .* planes 20 to 36 are missing and blocks "
                                              r"from z=16 on were not written"):
        writer.close()
    d.close()
    got = read_back(tmp_path)
    np.testing.assert_array_equal(got[:16], expected[:16])  # whole slabs before the gap are written
    assert not got[16:].any()


def test_context_manager_checks_the_count(tmp_path: Path) -> None:
    with new_volume(tmp_path) as d:
        with pytest.raises(PlaneCountError, match="got 0 of the 37 planes"):
            with PlaneWriter(d):
                pass


def test_context_manager_keeps_the_callers_error(tmp_path: Path) -> None:
    with new_volume(tmp_path) as d:
        with pytest.raises(KeyError, match="acquisition failed"):
            with PlaneWriter(d) as writer:
                writer.write(np.zeros(SHAPE[1:], np.uint16))
                raise KeyError("acquisition failed")
        with pytest.raises(ValueError, match="closed"):
            writer.write(np.zeros(SHAPE[1:], np.uint16))


def test_z_ranges_from_separate_writers(tmp_path: Path) -> None:
    expected = planes()
    d = new_volume(tmp_path)
    for start, stop in ((16, None), (0, 16)):
        with PlaneWriter(d, z_start=start, z_stop=stop) as writer:
            assert writer.z == start
            for plane in expected[start:stop]:
                writer.write(plane)
    d.close()
    np.testing.assert_array_equal(read_back(tmp_path), expected)


@pytest.mark.parametrize("start, stop", [(8, None), (0, 20), (16, 16), (0, 38), (-16, None)])
def test_z_ranges_must_cover_whole_blocks(tmp_path: Path, start: int, stop: int | None) -> None:
    with new_volume(tmp_path) as d:
        with pytest.raises(ValueError, match=r"z range"):
            PlaneWriter(d, z_start=start, z_stop=stop)


def test_iter_slabs_follows_the_blocks(tmp_path: Path) -> None:
    path, expected = make_volume(tmp_path, SHAPE, BLOCK, "uint16", missing=((0, 0, 16),))
    d = open_volume(path)
    slabs = list(iter_slabs(d))
    assert [(z0, len(s)) for z0, s in slabs] == [(0, 16), (16, 16), (32, 5)]
    np.testing.assert_array_equal(np.concatenate([s for _, s in slabs]), expected)
    thin = list(iter_slabs(d, depth=6))
    assert [(z0, len(s)) for z0, s in thin] == [(0, 6), (6, 6), (12, 4), (16, 6), (22, 6), (28, 4), (32, 5)]
    np.testing.assert_array_equal(np.concatenate([s for _, s in thin]), expected)
    ranged = list(iter_slabs(d, depth=100, z_start=16, z_stop=32))
    assert [(z0, len(s)) for z0, s in ranged] == [(16, 16)]
    with pytest.raises(ValueError, match="slab depth must be a positive integer"):
        next(iter_slabs(d, depth=0))
