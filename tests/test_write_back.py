"""A durable volume starts writing its shards to the disk while blocks are appended (sync_file_range), so
that the fsync at close() finds little left to write; a volume with durable=False leaves that to the kernel."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

import blockfs.storage
from blockfs import create_volume, open_volume
from blockfs.storage import WRITE_BACK_BYTES, start_write_back

BLOCK = (64, 64, 64)
#: Incompressible blocks: 512 KiB each as stored, so 40 of them pass WRITE_BACK_BYTES twice.
N_BLOCKS = 40


def test_the_kernel_takes_a_write_back_request_for_a_file_and_refuses_one_for_a_pipe(tmp_path: Path) -> None:
    path = tmp_path / "file"
    path.write_bytes(os.urandom(1 << 20))
    fd = os.open(path, os.O_RDWR)
    reading, writing = os.pipe()
    try:
        assert start_write_back(fd, 0, 1 << 20)
        assert not start_write_back(reading, 0, 1 << 20)
    finally:
        for descriptor in (fd, reading, writing):
            os.close(descriptor)


@pytest.mark.parametrize("durable", [True, False])
def test_a_durable_volume_hands_its_shard_to_the_disk_in_runs_while_it_is_written(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, durable: bool) -> None:
    requests: list[tuple[int, int, int]] = []  # (start, end, the shard's size then)
    real = blockfs.storage.start_write_back

    def recorded(fd: int, start: int, end: int) -> bool:
        requests.append((start, end, os.fstat(fd).st_size))
        return real(fd, start, end)

    monkeypatch.setattr(blockfs.storage, "start_write_back", recorded)
    rng = np.random.default_rng(3)
    blocks = [rng.integers(0, 2**16, BLOCK, dtype=np.uint16) for _ in range(N_BLOCKS)]
    path = tmp_path / "v.blockfs"
    with create_volume(path, (64, 64, 64 * N_BLOCKS), np.uint16, BLOCK, shards=1, durable=durable) as volume:
        for k, block in enumerate(blocks):
            volume.write_block(block, 64 * k, 0, 0)
        before_close = list(requests)
    shard = open_volume(path).store.spec.shard_paths[0]
    if not durable:
        assert requests == []
    else:
        assert len(before_close) == os.path.getsize(shard) // WRITE_BACK_BYTES >= 2, before_close
        assert [start for start, _, _ in before_close] == [0] + [end for _, end, _ in before_close[:-1]]
        assert all(end - start >= WRITE_BACK_BYTES and end == size for start, end, size in before_close)
    volume = open_volume(path)
    assert all((volume.read_block(64 * k, 0, 0) == block).all() for k, block in enumerate(blocks))
