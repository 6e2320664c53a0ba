"""Reading: from many threads, from forked children, while a writer adds blocks, and wherever a
volume's files are found.
"""

from __future__ import annotations

import multiprocessing
import os
import shutil
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fixtures import copy_volume, fixture_cases, require_fixtures, rewrite_names
from helpers import block_origins, origins_of

from blockfs import Directory

# -- helpers -------------------------------------------------------------------------------------


def make_volume(path: Path, missing_every: int = 5, **kwargs: Any) -> tuple[Directory, np.ndarray]:
    """A closed uint16 volume of 90 x 70 x 50 (x, y, z) voxels in 32 x 16 x 12 blocks.

    Every ``missing_every``-th block is left unwritten (it reads as zeros).
    """
    args: dict[str, Any] = dict(x_extent=90, y_extent=70, z_extent=50, dtype="uint16",
                                directory_filename=str(path), n_filenames=3,
                                x_block_size=32, y_block_size=16, z_block_size=12)
    args.update(kwargs)
    d = Directory(**args).create()
    data = np.random.default_rng(2024).integers(0, 65535, d.shape, dtype=np.uint16)
    with d:
        for i, (x, y, z) in enumerate(origins_of(d)):
            bz, by, bx = d.get_block_size(x, y, z)
            if missing_every and i % missing_every == 0:
                data[z:z + bz, y:y + by, x:x + bx] = 0
            else:
                d.write_block(data[z:z + bz, y:y + by, x:x + bx], x, y, z)
    return d, data


def random_key(rng: np.random.Generator, shape: tuple[int, ...]) -> tuple[Any, ...]:
    """A random basic index over ``shape``: slices (any step, either direction) and integers."""
    key: list[Any] = []
    for n in shape:
        kind = rng.integers(0, 6)
        if kind == 0:
            key.append(int(rng.integers(-n, n)))
        else:
            a, b = sorted(int(v) for v in rng.integers(0, n + 1, 2))
            step = int(rng.choice([1, 1, 1, 2, 3, 7, -1, -2, -5]))
            key.append(slice(a, b, step) if step > 0 else slice(b, a if a else None, step))
    return tuple(key)


# -- threads -------------------------------------------------------------------------------------


def test_reads_from_many_threads(tmp_path: Path) -> None:
    d, data = make_volume(tmp_path / "threads.blockfs")
    with Directory.open(d.directory_filename) as reader:

        def work(seed: int) -> int:
            rng = np.random.default_rng(seed)
            for _ in range(25):
                key = random_key(rng, data.shape)
                np.testing.assert_array_equal(reader[key], data[key], strict=True, err_msg=f"key {key}")
                x, y, z = (int(rng.integers(0, n // b + (n % b > 0))) * b for n, b in
                           zip((90, 70, 50), (32, 16, 12)))
                bz, by, bx = reader.get_block_size(x, y, z)
                np.testing.assert_array_equal(reader.read_block(x, y, z), data[z:z + bz, y:y + by, x:x + bx],
                                              strict=True)
            return seed

        with ThreadPoolExecutor(8) as pool:
            assert sorted(pool.map(work, range(32))) == list(range(32))


def test_whole_volume_reads_from_many_threads(tmp_path: Path) -> None:
    d, data = make_volume(tmp_path / "whole.blockfs", missing_every=0)
    with Directory.open(d.directory_filename) as reader:
        with ThreadPoolExecutor(8) as pool:
            for got in pool.map(lambda _: reader[...], range(16)):
                np.testing.assert_array_equal(got, data, strict=True)


def test_fixture_reads_from_many_threads() -> None:
    folder = require_fixtures()
    for case in fixture_cases():
        expected = np.load(folder / case["expected_array"])
        with Directory.open(str(folder / case["directory_file"])) as reader:

            def work(seed: int, expected: np.ndarray = expected) -> None:
                rng = np.random.default_rng(seed)
                for _ in range(10):
                    key = random_key(rng, expected.shape)
                    np.testing.assert_array_equal(reader[key], expected[key], strict=True, err_msg=f"key {key}")

            with ThreadPoolExecutor(8) as pool:
                list(pool.map(work, range(8)))


# -- forked children -----------------------------------------------------------------------------

_FORKED_VOLUME: Directory | None = None


def _read_in_child(key: tuple[Any, ...]) -> tuple[int, np.ndarray]:
    """Runs in a forked child: read a region from the Directory the parent opened."""
    assert _FORKED_VOLUME is not None
    return os.getpid(), _FORKED_VOLUME[key]


def _fork_context() -> Any:
    if "fork" not in multiprocessing.get_all_start_methods():
        pytest.skip("this platform cannot fork")
    return multiprocessing.get_context("fork")


def test_reads_in_forked_children(tmp_path: Path) -> None:
    global _FORKED_VOLUME
    ctx = _fork_context()
    d, data = make_volume(tmp_path / "forked.blockfs")
    rng = np.random.default_rng(99)
    keys = [random_key(rng, data.shape) for _ in range(40)] + [(Ellipsis,)] * 4
    with Directory.open(d.directory_filename) as reader:
        # The parent has read (file descriptors and decompression threads exist) before forking.
        np.testing.assert_array_equal(reader[...], data, strict=True)
        _FORKED_VOLUME = reader
        try:
            with warnings.catch_warnings():
                # Python 3.12+ warns about fork() in a process that has threads; that is the point here.
                warnings.filterwarnings("ignore", message=".*fork.*", category=DeprecationWarning)
                with ctx.Pool(2) as pool:
                    results = pool.map(_read_in_child, keys, chunksize=1)
        finally:
            _FORKED_VOLUME = None
        # The parent still reads after its children have used the inherited Directory.
        np.testing.assert_array_equal(reader[::-1, 3:40, ::7], data[::-1, 3:40, ::7], strict=True)
    assert {pid for pid, _ in results} - {os.getpid()}
    for key, (pid, got) in zip(keys, results):
        assert pid != os.getpid()
        np.testing.assert_array_equal(got, data[key], strict=True, err_msg=f"key {key}")


def test_pickled_directory_reads_in_forked_children(tmp_path: Path) -> None:
    ctx = _fork_context()
    d, data = make_volume(tmp_path / "pickled.blockfs")
    with Directory.open(d.directory_filename) as reader:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*fork.*", category=DeprecationWarning)
            with ctx.Pool(2) as pool:
                blocks = pool.starmap(Directory.read_block, [(reader, x, y, z) for x, y, z in origins_of(reader)])
    for (x, y, z), block in zip(origins_of(d), blocks):
        bz, by, bx = d.get_block_size(x, y, z)
        np.testing.assert_array_equal(block, data[z:z + bz, y:y + by, x:x + bx], strict=True)


# -- a live writer -------------------------------------------------------------------------------


def test_reader_opened_before_writes_sees_them(tmp_path: Path) -> None:
    path = str(tmp_path / "live.blockfs")
    Directory(64, 32, 16, "uint16", path, n_filenames=1, x_block_size=16, y_block_size=16,
              z_block_size=16).create().close()
    rng = np.random.default_rng(1)
    first, second, third = (rng.integers(0, 60000, (16, 16, 16), dtype=np.uint16) for _ in range(3))
    with Directory.open(path) as reader:
        assert not reader[...].any()
        with Directory.open(path, "r+") as writer:
            writer.write_block(first, 0, 0, 0)
        np.testing.assert_array_equal(reader.read_block(0, 0, 0), first, strict=True)
        # The reader now has the shard open; later appends to it are visible too.
        with Directory.open(path, "r+") as writer:
            writer.write_block(second, 48, 16, 0)
            np.testing.assert_array_equal(reader.read_block(48, 16, 0), second, strict=True)
            writer.write_block(third, 0, 0, 0)  # a rewrite: the entry moves to the new copy
            np.testing.assert_array_equal(reader.read_block(0, 0, 0), third, strict=True)
        expected = np.zeros((16, 32, 64), np.uint16)
        expected[:, :16, :16] = third
        expected[:, 16:, 48:] = second
        np.testing.assert_array_equal(reader[...], expected, strict=True)


def test_reader_sees_region_writes_of_a_live_writer(tmp_path: Path) -> None:
    path = str(tmp_path / "live-region.blockfs")
    with Directory(40, 30, 20, "float32", path, n_filenames=2, x_block_size=8, y_block_size=8, z_block_size=8
                   ).create() as writer:
        reader = Directory.open(path)
        try:
            expected = np.zeros(writer.shape, np.float32)
            rng = np.random.default_rng(5)
            for z0 in range(0, 20, 8):
                for x0 in range(0, 40, 16):
                    patch = rng.random((min(8, 20 - z0), 30, min(16, 40 - x0)), dtype=np.float32)
                    writer[z0:z0 + 8, :, x0:x0 + 16] = patch
                    expected[z0:z0 + 8, :, x0:x0 + 16] = patch
                    np.testing.assert_array_equal(reader[...], expected, strict=True)
        finally:
            reader.close()


# -- where the shards are ------------------------------------------------------------------------


def test_copied_fixture_opens_from_another_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = require_fixtures()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    for case in fixture_cases():
        directory_file = copy_volume(case, tmp_path / "copies" / case["name"])
        expected = np.load(folder / case["expected_array"])
        monkeypatch.chdir(elsewhere)
        with Directory.open(str(directory_file)) as d:
            assert d.block_filenames == case["block_files"]  # relative names, as stored
            np.testing.assert_array_equal(d[...], expected, strict=True)
        # A relative path to the directory file works as well.
        monkeypatch.chdir(tmp_path)
        with Directory.open(os.path.join("copies", case["name"], case["directory_file"])) as d:
            np.testing.assert_array_equal(d[...], expected, strict=True)


def test_stale_absolute_names_fall_back_beside_the_directory_file(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    a, b = tmp_path / "A", tmp_path / "B"
    a.mkdir()
    b.mkdir()
    d, data = make_volume(a / "vol.blockfs")
    assert all(os.path.isabs(name) for name in d.block_filenames)
    for name in os.listdir(a):
        os.rename(a / name, b / name)
    assert not list(a.iterdir())

    with pytest.warns(UserWarning, match=r"vol\.blockfs\.[0-2]") as record:
        moved = Directory.open(str(b / "vol.blockfs"))
    for i in range(3):  # one warning per shard, naming the stale name and the file used instead
        assert any(str(a / f"vol.blockfs.{i}") in str(w.message) and str(b / f"vol.blockfs.{i}") in str(w.message)
                   for w in record)
    with moved:
        assert moved.block_filenames == d.block_filenames  # the stored names are not rewritten by reading
        np.testing.assert_array_equal(moved[...], data, strict=True)

    monkeypatch.chdir(b)
    with pytest.warns(UserWarning):
        moved = Directory.open("vol.blockfs")
    with moved:
        np.testing.assert_array_equal(moved[::-1, ::2, 5:], data[::-1, ::2, 5:], strict=True)


def test_a_cp_r_copy_warns_that_it_uses_the_originals_shards(tmp_path: Path) -> None:
    (tmp_path / "A").mkdir()
    original, data = make_volume(tmp_path / "A" / "vol.blockfs")
    shutil.copytree(tmp_path / "A", tmp_path / "B")
    copy = tmp_path / "B" / "vol.blockfs"
    with pytest.warns(UserWarning, match="blockfs-rebase") as record:
        d = Directory.open(str(copy))
    assert len(record) == 3 and all(str(tmp_path / "B" / f"vol.blockfs.{i}") in str(w.message)
                                    for i, w in enumerate(record))
    with d:
        np.testing.assert_array_equal(d[...], data, strict=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the original, whose names point at its own shards, opens quietly
        Directory.open(original.directory_filename).close()


def test_stale_absolute_names_of_a_fixture(tmp_path: Path) -> None:
    folder = require_fixtures()
    case = fixture_cases()[1]
    directory_file = copy_volume(case, tmp_path / "new-home")
    rewrite_names(directory_file, [f"/no/such/lab/share/{name}" for name in case["block_files"]])
    with pytest.warns(UserWarning, match="/no/such/lab/share"):
        d = Directory.open(str(directory_file))
    with d:
        np.testing.assert_array_equal(d[...], np.load(folder / case["expected_array"]), strict=True)


def test_relative_path_stores_absolute_names(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    d, data = make_volume(Path("rel.blockfs"))
    assert d.directory_filename == "rel.blockfs"
    assert d.block_filenames == [str(tmp_path / f"rel.blockfs.{i}") for i in range(3)]
    assert all((tmp_path / f"rel.blockfs.{i}").is_file() for i in range(3))
    with Directory.open("rel.blockfs") as again:
        assert again.block_filenames == d.block_filenames
        np.testing.assert_array_equal(again[...], data, strict=True)


def test_relative_names_with_a_folder_written_by_the_earlier_implementation(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The earlier implementation, given "sub/vol.blockfs" from a working directory, stored shard
    # names "sub/vol.blockfs.<i>": relative to that working directory, not to the index file.
    folder = require_fixtures()
    case = fixture_cases()[0]
    directory_file = copy_volume(case, tmp_path / "sub")
    rewrite_names(directory_file, [f"sub/{name}" for name in case["block_files"]])
    expected = np.load(folder / case["expected_array"])

    monkeypatch.chdir(tmp_path)
    with Directory.open(os.path.join("sub", case["directory_file"])) as d:  # no warning: found against cwd
        assert d.block_filenames == [f"sub/{name}" for name in case["block_files"]]
        np.testing.assert_array_equal(d[...], expected, strict=True)

    # From anywhere else, the same base names beside the index file are used, with a warning.
    monkeypatch.chdir(tmp_path / "sub")
    with pytest.warns(UserWarning):
        d = Directory.open(case["directory_file"])
    with d:
        np.testing.assert_array_equal(d[...], expected, strict=True)


def test_create_with_relative_path_in_a_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sub").mkdir()
    d, data = make_volume(Path("sub") / "vol.blockfs")
    assert d.block_filenames == [str(tmp_path / "sub" / f"vol.blockfs.{i}") for i in range(3)]
    assert all((tmp_path / "sub" / f"vol.blockfs.{i}").is_file() for i in range(3))
    with Directory.open(os.path.join("sub", "vol.blockfs")) as again:
        np.testing.assert_array_equal(again[...], data, strict=True)


def test_read_block_into_fills_a_block_and_leaves_an_unwritten_one_untouched(tmp_path: Path) -> None:
    from blockfs import BlockShapeError, open_volume

    _, data = make_volume(tmp_path / "v.blockfs", missing_every=5)
    v = open_volume(str(tmp_path / "v.blockfs"))
    for i, (x, y, z) in enumerate(block_origins(v.shape, v.block_shape)):
        shape = v.layout.block_shape_at(x, y, z)
        out = np.full(shape, 7, np.uint16)
        assert v.read_block_into(out, x, y, z) is (i % 5 != 0)
        expected = data[z:z + shape[0], y:y + shape[1], x:x + shape[2]] if i % 5 else np.full(shape, 7, np.uint16)
        np.testing.assert_array_equal(out, expected, strict=True)
    for wrong in [np.empty((12, 16, 31), np.uint16), np.empty((12, 16, 32), np.int16),
                  np.empty((12, 16, 64), np.uint16)[:, :, ::2]]:
        with pytest.raises(BlockShapeError, match=r"v\.blockfs: read_block_into needs a C-contiguous array of shape "
                                                  r"\(12, 16, 32\)"):
            v.read_block_into(wrong, 32, 16, 12)


# -- stored bytes ----------------------------------------------------------------------------------


@pytest.mark.parametrize("records", [True, False])
def test_read_block_payload_is_the_stored_blosc_buffer(tmp_path: Path, records: bool) -> None:
    import blosc

    d, expected = make_volume(tmp_path / "v.blockfs", missing_every=0, records=records)
    d = Directory.open(str(tmp_path / "v.blockfs"))
    for z, y, x in [(0, 0, 0), (12, 16, 32), (48, 64, 64)]:
        payload = d.read_block_payload(x, y, z)
        entry = d.offsetof(x, y, z)
        with open(d.directory_filename, "rb") as f:
            f.seek(entry)
            value = int.from_bytes(f.read(d.layout.entry_size), "little")
        offset, size = value & ((1 << d.n_offset_bits) - 1), value >> d.n_offset_bits
        with open(d.shard_paths[d.layout.entry_index(x, y, z) % 3], "rb") as f:
            f.seek(offset)
            assert payload == f.read(size)
        block = np.frombuffer(blosc.decompress(payload), d.dtype).reshape(d.get_block_size(x, y, z))
        np.testing.assert_array_equal(block, expected[z:z + 12, y:y + 16, x:x + 32])


def test_read_block_payload_of_an_unwritten_block_is_none(tmp_path: Path) -> None:
    make_volume(tmp_path / "v.blockfs", missing_every=1)
    assert Directory.open(str(tmp_path / "v.blockfs")).read_block_payload(0, 0, 0) is None


def test_read_block_payload_checks_the_record(tmp_path: Path) -> None:
    from blockfs import ChecksumError

    make_volume(tmp_path / "v.blockfs", missing_every=0)
    d = Directory.open(str(tmp_path / "v.blockfs"))
    with open(d.directory_filename, "rb") as f:
        f.seek(d.offsetof(0, 0, 0))
        offset = int.from_bytes(f.read(d.layout.entry_size), "little") & ((1 << d.n_offset_bits) - 1)
    with open(d.shard_paths[0], "r+b") as f:
        f.seek(offset + 100)
        byte = f.read(1)
        f.seek(offset + 100)
        f.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(ChecksumError):
        d.read_block_payload(0, 0, 0)


def test_a_column_reads_only_its_own_index_entries(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``v[:, y, x]`` of a 40^3-block grid reads its 40 entries, not the 64,000-entry index between them."""
    import blockfs
    from blockfs.storage import VolumeFiles

    with blockfs.create_volume(tmp_path / "big.blockfs", (40 * 8,) * 3, "uint16", (8, 8, 8), shards=2) as v:
        column = np.arange(40 * 8, dtype=np.uint16).reshape(-1, 1, 1) * np.ones((1, 8, 8), np.uint16)
        v[:, 16:24, 8:16] = column
    read: list[int] = []
    real = VolumeFiles.read_index

    def counting(self: VolumeFiles, offset: int, size: int) -> bytes:
        read.append(size)
        return real(self, offset, size)

    monkeypatch.setattr(VolumeFiles, "read_index", counting)
    volume = blockfs.open_volume(tmp_path / "big.blockfs")
    np.testing.assert_array_equal(volume[:, 20, 10], column[:, 0, 0], strict=True)
    entry_size = volume.layout.entry_size
    assert sum(read) == 40 * entry_size, f"{sum(read)} index bytes read for 40 entries of {entry_size} bytes"
    assert len(read) == 40  # z-neighbours lie 1,600 entries apart: one read each
    read.clear()
    row = np.zeros((8, 8, 320), np.uint16)
    row[:, :, 8:16] = column[:8]
    np.testing.assert_array_equal(volume[0:8, 16:24, :], row, strict=True)
    assert len(read) == 1 and sum(read) == 40 * entry_size  # a row of blocks: one run of 40 entries
