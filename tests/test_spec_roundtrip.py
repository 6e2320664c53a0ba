"""Volumes that blockfs writes decode with the spec decoder, and their bytes follow docs/FORMAT.md.

The spec decoder (tests/spec_decoder.py) knows only the format document, so a volume it decodes
correctly is a plain blockfs 1.0.0 volume that any reader of the format can read.
"""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from helpers import block_origins
from spec_decoder import read_volume

from blockfs import Compression, Directory

METADATA = {"voxel_size": [1.8, 1.8, 2.0]}
#: (extent, block size) in (z, y, x) order: even blocks with ragged edges, and anisotropic blocks
#: that divide no extent.
GEOMETRIES = {
    "b64": ((65, 70, 100), (64, 64, 64)),
    "aniso": ((37, 70, 100), (16, 32, 48)),
}


def sample_volume(shape: tuple[int, int, int], dtype: np.dtype, seed: int) -> np.ndarray:
    """A smooth background with noise and a few bright voxels: compressible, like a microscope's."""
    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(*(np.arange(n, dtype=np.float64) for n in shape), indexing="ij")
    values = 100 + 40 * np.sin(x / 9) * np.cos(y / 13) + z / 3 + rng.normal(0, 4, shape)
    values[rng.random(shape) < 0.001] = 250
    if dtype.kind == "f":
        out = values.astype(dtype)
        out[-1, -1, :3] = [np.nan, -0.0, np.inf]  # in block (0, last y, last z), which is written
        return out
    if dtype.kind == "i":
        values -= 120  # some negative values
    return np.clip(values, np.iinfo(dtype).min, np.iinfo(dtype).max).astype(dtype)


def field_widths(meta: dict[str, Any], itemsize: int) -> tuple[int, int]:
    """(NOffsetBits, NSizeBits) by the earlier writer's rule (docs/FORMAT.md section 9.1)."""
    b = meta["XBlockSize"] * meta["YBlockSize"] * meta["ZBlockSize"] * itemsize + 16
    e = sum((meta[f"{a}Extent"] + meta[f"{a}BlockSize"] - 1) // meta[f"{a}BlockSize"] * meta[f"{a}Stride"]
            for a in "XYZ")
    big_l = max(1, e * b // len(meta["BlockFilenames"]))
    return math.floor(math.log2(big_l)) + 1, math.floor(math.log2(b)) + 1


def check_bytes(directory_file: Path, expected_names: list[str], itemsize: int) -> None:
    """Check the directory file and shards against the rules of docs/FORMAT.md with raw reads."""
    data = directory_file.read_bytes()
    magic, m, d = struct.unpack_from("<8sII", data)
    assert magic == bytes.fromhex("426C6F636B465300")
    assert d == 16 + m
    meta = json.loads(data[16:16 + m].decode("utf-8"))
    assert meta["Version"] == "1.0.0"
    assert meta["BlockFilenames"] == expected_names
    assert {k: meta[k] for k in METADATA} == METADATA
    field_offset_bits, field_size_bits = field_widths(meta, itemsize)
    off_bits, size_bits = meta["NOffsetBits"], meta["NSizeBits"]
    assert size_bits == field_size_bits
    # The implementation's rule (section 9.1): the earlier rule's widths exactly, wherever a shard
    # can hold one full write of the volume, as every shard here can.
    assert off_bits == field_offset_bits
    total = off_bits + size_bits
    entry_size = math.ceil(total / 8)
    assert (len(data) - d) % entry_size == 0
    n_entries = sum((meta[f"{a}Extent"] - 1) // meta[f"{a}BlockSize"] * meta[f"{a}Stride"] for a in "XYZ") + 1
    assert len(data) - d <= n_entries * entry_size
    shards = [Path(name).read_bytes() for name in meta["BlockFilenames"]]
    used: list[list[tuple[int, int]]] = [[] for _ in shards]
    for e in range((len(data) - d) // entry_size):
        v = int.from_bytes(data[d + e * entry_size:d + (e + 1) * entry_size], "little")
        assert v >> total == 0
        offset, size = v & ((1 << off_bits) - 1), v >> off_bits
        if size:
            shard = shards[e % len(shards)]
            assert offset + size <= len(shard)
            nbytes, _, cbytes = struct.unpack_from("<III", shard, offset + 4)
            assert shard[offset + 3] == itemsize and cbytes == size
            used[e % len(shards)].append((offset, offset + size))
    for ranges in used:
        ranges.sort()
        assert all(a[1] <= b[0] for a, b in zip(ranges, ranges[1:])), "entries overlap"
    # The block written twice left its first copy in its shard, unreferenced.
    assert sum(map(len, shards)) > sum(b - a for ranges in used for a, b in ranges)


#: The extension key announcing block records: a plain 1.0.0 reader sees it as application metadata.
RECORDS_KEY = {"BlockfsRecords": {"version": 1, "header_size": 32, "checksum": "crc32c"}}


def write_volume(path: Path, truth: np.ndarray, block: tuple[int, int, int], n_filenames: int,
                 compression: Compression, parallel: bool = False) -> np.ndarray:
    """Write ``truth`` block by block and return what must read back.

    The first, a middle and the last block are never written (so the index file ends early), and
    the last block but one is written twice.
    """
    expected = truth.copy()
    d = Directory(truth.shape[2], truth.shape[1], truth.shape[0], truth.dtype, str(path), n_filenames=n_filenames,
                  x_block_size=block[2], y_block_size=block[1], z_block_size=block[0], compression=compression,
                  compression_level=5, metadata=METADATA)
    d.create()
    if parallel:
        d.start_writer_processes()
    origins = (block_origins(truth.shape, block))
    skipped = {origins[0], origins[len(origins) // 2], origins[-1]}
    twice = origins[-2]
    for x, y, z in origins:
        bz, by, bx = d.get_block_size(x, y, z)
        if (x, y, z) in skipped:
            expected[z:z + bz, y:y + by, x:x + bx] = 0
            continue
        if (x, y, z) == twice:
            d.write_block(np.full((bz, by, bx), 7, truth.dtype), x, y, z)  # replaced below
        d.write_block(truth[z:z + bz, y:y + by, x:x + bx], x, y, z)
    d.close()
    return expected


@pytest.mark.parametrize("n_filenames", [1, 3])
@pytest.mark.parametrize("geometry", sorted(GEOMETRIES))
@pytest.mark.parametrize("compression", [Compression.zstd, Compression.lz4, Compression.zlib, Compression.blosclz],
                         ids=lambda c: c.name)
@pytest.mark.parametrize("dtype", ["uint8", "uint16", "float32", "int32"])
def test_written_volume_decodes_by_spec(dtype: str, compression: Compression, geometry: str, n_filenames: int,
                                        tmp_path: Path) -> None:
    shape, block = GEOMETRIES[geometry]
    seed = sum(map(ord, f"{dtype}{compression.name}{geometry}{n_filenames}"))
    truth = sample_volume(shape, np.dtype(dtype), seed)
    path = tmp_path / "volume.blockfs"

    expected = write_volume(path, truth, block, n_filenames, compression)

    volume, metadata = read_volume(path)
    assert volume.dtype == np.dtype(dtype)
    assert volume.shape == shape
    assert volume.tobytes() == expected.tobytes()
    assert np.dtype(dtype).kind != "f" or np.isnan(volume).any()
    assert metadata == {**METADATA, **RECORDS_KEY}
    check_bytes(path, [f"{path}.{i}" for i in range(n_filenames)], np.dtype(dtype).itemsize)


def test_writer_processes_write_plain_volumes(tmp_path: Path) -> None:
    shape, block = GEOMETRIES["aniso"]
    truth = sample_volume(shape, np.dtype("uint16"), 1)
    path = tmp_path / "volume.blockfs"

    expected = write_volume(path, truth, block, 3, Compression.zstd, parallel=True)

    volume, metadata = read_volume(path)
    assert volume.tobytes() == expected.tobytes()
    assert metadata == {**METADATA, **RECORDS_KEY}
    check_bytes(path, [f"{path}.{i}" for i in range(3)], 2)


@pytest.mark.parametrize("key", ["DType", "Version", "BlockFilenames"])
def test_application_keys_must_not_be_format_keys(key: str, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=key):
        Directory(10, 10, 10, "uint8", str(tmp_path / "volume.blockfs"), n_filenames=1, metadata={key: "x"})
    assert not list(tmp_path.iterdir())


def records_by_spec(path: Path) -> int:
    """Check every entry's block record by docs/FORMAT.md section 10 alone; return how many."""
    import crc32c

    index = path.read_bytes()
    m, d = struct.unpack_from("<II", index, 8)
    meta = json.loads(index[16:16 + m])
    assert meta["BlockfsRecords"] == {"version": 1, "header_size": 32, "checksum": "crc32c"}
    off_bits, size_bits = meta["NOffsetBits"], meta["NSizeBits"]
    entry_size = math.ceil((off_bits + size_bits) / 8)
    names = meta["BlockFilenames"]
    shards = [Path(n if Path(n).is_absolute() else path.parent / n).read_bytes() for n in names]
    checked = 0
    for e in range((len(index) - d) // entry_size):
        v = int.from_bytes(index[d + e * entry_size:d + (e + 1) * entry_size], "little")
        offset, size = v & ((1 << off_bits) - 1), v >> off_bits
        if not size:
            continue
        shard = shards[e % len(names)]
        magic, version, header_size, entry, length, crc, head_crc = struct.unpack_from("<4sHHQQII", shard, offset - 32)
        assert (magic, version, header_size, entry, length) == (b"BFRC", 1, 32, e, size)
        assert crc32c.crc32c(shard[offset - 32:offset - 4]) == head_crc
        assert crc32c.crc32c(shard[offset:offset + size]) == crc
        checked += 1
    return checked


@pytest.mark.parametrize("parallel", [False, True])
def test_block_records_follow_the_spec(parallel: bool, tmp_path: Path) -> None:
    shape, block = GEOMETRIES["aniso"]
    truth = sample_volume(shape, np.dtype("uint16"), 2)
    path = tmp_path / "volume.blockfs"
    write_volume(path, truth, block, 3, Compression.zstd, parallel=parallel)
    n_blocks = len(block_origins(shape, block))
    assert records_by_spec(path) == n_blocks - 3  # three blocks are left unwritten


def test_records_can_be_turned_off(tmp_path: Path) -> None:
    path = tmp_path / "plain.blockfs"
    d = Directory(20, 20, 20, "uint8", str(path), n_filenames=1, x_block_size=8, y_block_size=8, z_block_size=8,
                  records=False)
    d.create()
    d.write_block(np.ones((8, 8, 8), np.uint8), 0, 0, 0)
    d.close()
    volume, metadata = read_volume(path)
    assert metadata == {} and volume[:8, :8, :8].min() == 1
    assert Path(f"{path}.0").read_bytes()[:4] != b"BFRC"
