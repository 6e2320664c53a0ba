"""The block store and its helpers: one header reader, atomic replacement without hard links,
one missing-shard error on both write paths, and the store used from another process."""

from __future__ import annotations

import errno
import multiprocessing
import os
import pickle
from pathlib import Path

import numpy as np
import pytest

from blockfs import Directory, MissingShardError
from blockfs.format import read_directory_file
from blockfs.ops.check import check_volume
from blockfs.ops.info import describe_volume
from blockfs.ops.repair import repair_volume
from blockfs.store import BlockStore, StoreSpec

pytestmark = pytest.mark.timeout(120)


def small_volume(path: Path, n_shards: int = 2) -> Directory:
    d = Directory(96, 64, 40, np.uint16, str(path), n_filenames=n_shards, x_block_size=32, y_block_size=32,
                  z_block_size=16)
    return d.create()


def fill(d: Directory, seed: int = 1) -> dict[tuple[int, int, int], np.ndarray]:
    rng = np.random.default_rng(seed)
    written = {}
    for z in range(0, d.z_extent, d.z_block_size):
        for y in range(0, d.y_extent, d.y_block_size):
            for x in range(0, d.x_extent, d.x_block_size):
                block = rng.integers(0, 4000, d.get_block_size(x, y, z), dtype=np.uint16)
                d.write_block(block, x, y, z)
                written[x, y, z] = block
    return written


def folder_listing(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()}


def test_layout_routes_shards_and_entries(tmp_path: Path) -> None:
    d = small_volume(tmp_path / "v.blockfs", n_shards=3)
    lay = d.layout
    entries, _ = lay.block_entries()
    assert [lay.shard_of(int(e)) for e in entries] == [int(e) % 3 for e in entries]
    assert list(lay.shard_of(entries)) == [int(e) % 3 for e in entries]
    assert d.offsetof(32, 32, 16) == lay.entry_position(lay.entry_index(32, 32, 16), d.directory_offset)


def test_store_spec_pickles_and_reads_in_another_process(tmp_path: Path) -> None:
    d = small_volume(tmp_path / "v.blockfs")
    written = fill(d)
    d.close()
    spec = Directory.open(str(tmp_path / "v.blockfs")).store.spec
    assert pickle.loads(pickle.dumps(spec)) == spec
    entry = d.layout.entry_index(32, 0, 16)
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        offset, size = pool.apply(_entry_of, (spec, entry))
    store = BlockStore(spec)
    assert store.entry(entry) == (offset, size) and size > 0
    out = np.empty(d.layout.block_shape_at(32, 0, 16), np.uint16)
    assert store.load(entry, offset, size, out, verify=True)  # a record vouched for it
    np.testing.assert_array_equal(out, written[32, 0, 16])
    offsets, sizes = store.entries(entry, 2)
    assert (int(offsets[0]), int(sizes[0])) == (offset, size)
    store.close()


def _entry_of(spec: StoreSpec, entry: int) -> tuple[int, int]:
    return BlockStore(spec).entry(entry)


def test_one_header_reader_refuses_a_truncated_file(tmp_path: Path) -> None:
    path = tmp_path / "v.blockfs"
    small_volume(path).close()
    header = read_directory_file(path)
    assert header.layout == Directory.open(str(path)).layout
    data = path.read_bytes()
    path.write_bytes(data[:header.directory_offset - 5])
    with pytest.raises(Exception) as direct:
        Directory.open(str(path))
    with pytest.raises(Exception) as reader:
        read_directory_file(path)
    assert type(direct.value) is type(reader.value) and "truncated" in str(reader.value)
    with pytest.raises(type(reader.value)):
        describe_volume(str(path))


def _break_index(path: Path, d: Directory) -> None:
    """Point the entry of block (0, 0, 0) at nothing, as a lost index write would leave it."""
    with open(path, "r+b") as f:
        f.seek(d.offsetof(0, 0, 0))
        f.write(bytes(d.layout.entry_size))


def test_repair_works_without_hard_links(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "v.blockfs"
    d = small_volume(path)
    written = fill(d)
    d.close()
    _break_index(path, d)
    assert not check_volume(str(path)).healthy
    before = folder_listing(tmp_path)

    def no_links(*args: object, **kwargs: object) -> None:
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_links)
    result = repair_volume(str(path))
    assert result.entries_changed == 1 and result.backup is not None
    assert folder_listing(tmp_path) == before | {Path(result.backup).name}  # no temporary file left behind
    assert check_volume(str(path)).healthy
    np.testing.assert_array_equal(Directory.open(str(path)).read_block(0, 0, 0), written[0, 0, 0])
    backup = Directory.open(result.backup)
    assert not backup.read_block(0, 0, 0).any()  # the backup is the old index


def test_repair_failure_leaves_no_temporary_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "v.blockfs"
    d = small_volume(path)
    fill(d)
    d.close()
    _break_index(path, d)
    before = folder_listing(tmp_path)
    index_bytes = path.read_bytes()

    def failing_link(*args: object, **kwargs: object) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "link", failing_link)
    with pytest.raises(OSError) as info:
        repair_volume(str(path))
    assert info.value.errno == errno.EIO
    assert folder_listing(tmp_path) == before and path.read_bytes() == index_bytes


def test_unreferenced_bytes_agree_between_check_and_info(tmp_path: Path) -> None:
    path = tmp_path / "v.blockfs"
    d = small_volume(path)
    fill(d, seed=1)
    fill(d, seed=2)  # every block rewritten: the first copies are unreferenced
    d.close()
    report = check_volume(str(path))
    info = describe_volume(str(path))
    unreferenced = sum(s.unreferenced for s in report.shards)
    assert unreferenced > 0 and info["unreferenced_bytes"] == unreferenced


@pytest.mark.parametrize("pool", [False, True], ids=["direct", "pool"])
def test_missing_shard_raises_the_same_error_on_both_write_paths(tmp_path: Path, pool: bool) -> None:
    path = tmp_path / "v.blockfs"
    small_volume(path).close()
    d = Directory.open(str(path), "r+")
    os.remove(d.shard_paths[d.layout.shard_of(d.layout.entry_index(0, 0, 0))])
    block = np.ones(d.get_block_size(0, 0, 0), np.uint16)
    try:
        with pytest.raises(MissingShardError, match="is missing"):
            if pool:
                d.start_writer_processes()
            d.write_block(block, 0, 0, 0)
            d.close()  # the pool reports its writer's failure here at the latest
    finally:
        d.close()
