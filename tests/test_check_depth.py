"""``blockfs check`` verifies a recorded block by its CRC32C and its blosc header's sizes, decoding nothing;
``--deep`` also decompresses every block, and so finds one recorded over bytes that no codec decodes."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

import blockfs.store
from blockfs import create_volume, records
from blockfs.cli.check import main as check_main
from blockfs.volume import open_volume


def recorded_over_changed_bytes(path: Path, origin: tuple[int, int, int], change: Callable[[bytearray, int], None]
                                ) -> int:
    """A volume of 8 blocks whose block at ``origin`` (x, y, z) has its payload changed by ``change(payload,
    size)`` and recorded again over the change, with a sound checksum; returns that block's entry."""
    data = np.arange(32 ** 3, dtype=np.uint16).reshape(32, 32, 32)
    with create_volume(path, data.shape, data.dtype, (16, 16, 16), 1) as volume:
        volume[...] = data
    store = open_volume(path).store
    entry = store.layout.entry_index(*origin)
    offset, size = store.entry(entry)
    with open(store.spec.shard_paths[0], "r+b") as f:
        f.seek(offset)
        payload = bytearray(f.read(size))
        change(payload, size)
        f.seek(offset - records.HEADER_SIZE)
        f.write(records.encode(entry, bytes(payload)) + bytes(payload))
    return entry


def recorded_over_undecodable_bytes(path: Path) -> tuple[int, int, int]:
    """A volume of 8 blocks whose block at (x, y, z) = (16, 0, 0) is recorded, checksum and sizes right, over a
    blosc header that names no compressor; returns that block's first voxel."""
    def no_compressor(payload: bytearray, size: int) -> None:
        payload[2] = (payload[2] & 0x1F) | (7 << 5)  # the flags' compressor code: 7, which blosc does not have
    recorded_over_changed_bytes(path, (16, 0, 0), no_compressor)
    return 16, 0, 0


def test_only_deep_decodes_and_so_only_deep_finds_an_undecodable_recorded_block(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "v.blockfs"
    origin = recorded_over_undecodable_bytes(path)
    decoded: list[tuple[int, ...]] = []
    decode = blockfs.store.decompress_into
    monkeypatch.setattr(blockfs.store, "decompress_into",
                        lambda data, out, where: (decoded.append(out.shape), decode(data, out, where))[1])

    assert check_main([str(path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["problems"] == [] and decoded == []

    assert check_main([str(path), "--json", "--deep"]) == 1
    problems = json.loads(capsys.readouterr().out)["problems"]
    assert [(p["kind"], tuple(p["block"])) for p in problems] == [("undecodable", origin)]
    assert len(decoded) == 8


def test_the_report_says_how_the_blocks_were_checked(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "v.blockfs"
    recorded_over_undecodable_bytes(path)
    check_main([str(path), "--silent"])
    assert "checksums and sizes checked; --deep decompresses too" in capsys.readouterr().out
    check_main([str(path), "--silent", "--deep"])
    assert "every block decompressed too" in capsys.readouterr().out


def test_the_walk_of_the_shards_vouches_for_sound_blocks_and_sizes_that_disagree_are_still_found(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """A recorded block is read once, by the walk over its shard that also looks for newer records; only a
    block the walk does not vouch for is read again, here one whose record is sound over a blosc header
    that says one compressed byte more than the block has."""
    def one_byte_more(payload: bytearray, size: int) -> None:
        payload[12:16] = (size + 1).to_bytes(4, "little")  # the header's compressed bytes
    path = tmp_path / "v.blockfs"
    entry = recorded_over_changed_bytes(path, (0, 16, 0), one_byte_more)
    loaded: list[int] = []
    load = blockfs.store.BlockStore.load
    monkeypatch.setattr(blockfs.store.BlockStore, "load",
                        lambda self, e, *args, **kwargs: (loaded.append(e), load(self, e, *args, **kwargs))[1])

    assert check_main([str(path), "--json"]) == 1
    problems = json.loads(capsys.readouterr().out)["problems"]
    assert [(p["kind"], tuple(p["block"])) for p in problems] == [("undecodable", (0, 16, 0))], problems
    assert "compressed bytes" in problems[0]["detail"] and loaded == [entry]
