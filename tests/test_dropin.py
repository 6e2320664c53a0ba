"""What real callers of the earlier blockfs release do, and what must keep working for them.

1. spimstitch and the earlier release's tests: write, ``close()``, then ``read_block`` on the same object.
2. precomputed-tif converts into one folder twice; the earlier tests pre-create empty files with
   ``mkstemp``: ``create()`` replaces a volume (or empty files) at its path.
3. The earlier ``blockfs-mv``/``blockfs-cp`` write a header with their own rule's bit widths and
   copy the index bytes verbatim: new volumes must carry exactly those widths.
4. An earlier-release writer appends a payload without a record to one of our volumes and
   repoints the entry: reads, check and repair must take that block as the newest.
5. The README pattern under fork, spawn and forkserver.

The earlier tools' behaviour is simulated here by independent code (the format's rules written
out again with struct, json and blosc), not by calling blockfs's own implementation of them.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import blosc
import numpy as np
import pytest

import producers

from blockfs import (
    AttachError,
    ChecksumError,
    ClosedError,
    CorruptBlockError,
    Directory,
    EntryOverflowError,
    VolumeExistsError,
)
from blockfs.check import check_volume
from blockfs.info import describe_volume, format_text
from blockfs.repair import repair_volume

pytestmark = pytest.mark.timeout(200)

TESTS_DIR = Path(__file__).resolve().parent
PREAMBLE = struct.Struct("<8sII")


def origins(d: Directory) -> list[tuple[int, int, int]]:
    return [(x, y, z) for z in range(0, d.z_extent, d.z_block_size) for y in range(0, d.y_extent, d.y_block_size)
            for x in range(0, d.x_extent, d.x_block_size)]


def random_volume(shape_zyx: tuple[int, int, int], dtype: str, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if np.dtype(dtype).kind == "f":
        return rng.standard_normal(shape_zyx).astype(dtype)
    return rng.integers(0, min(np.iinfo(dtype).max, 3000), shape_zyx, endpoint=True).astype(dtype)


def write_all(d: Directory, data: np.ndarray, skip: tuple[tuple[int, int, int], ...] = ()) -> np.ndarray:
    """Write ``data`` block by block except the blocks at ``skip``; return what must read back."""
    expected = data.copy()
    for x, y, z in origins(d):
        dz, dy, dx = d.get_block_size(x, y, z)
        if (x, y, z) in skip:
            expected[z:z + dz, y:y + dy, x:x + dx] = 0
        else:
            d.write_block(data[z:z + dz, y:y + dy, x:x + dx], x, y, z)
    return expected


# -- reading after close() -------------------------------------------------------------------

def test_read_block_after_close_on_the_same_object(tmp_path: Path) -> None:
    """spimstitch: write through the writer processes, close(), then read_block on the same object."""
    data = random_volume((70, 90, 100), "uint16", 1)
    d = Directory(100, 90, 70, np.uint16, str(tmp_path / "stitched.blockfs"), n_filenames=2,
                  x_block_size=32, y_block_size=32, z_block_size=32).create()
    d.start_writer_processes()
    expected = write_all(d, data)
    d.close()
    for x, y, z in origins(d):
        dz, dy, dx = d.get_block_size(x, y, z)
        np.testing.assert_array_equal(d.read_block(x, y, z), expected[z:z + dz, y:y + dy, x:x + dx], strict=True)
    np.testing.assert_array_equal(d[...], expected, strict=True)
    assert d.read_block_payload(0, 0, 0) is not None
    d.close()  # a second close is a no-op
    with pytest.raises(ClosedError) as info:
        d.write_block(data[:32, :32, :32], 0, 0, 0)
    assert f"Directory.open({d.directory_filename!r}, \"r+\")" in str(info.value)
    np.testing.assert_array_equal(d[...], expected, strict=True)


# -- create() over an existing volume ---------------------------------------------------------

def test_create_twice_into_one_folder_replaces_the_volume(tmp_path: Path) -> None:
    """precomputed-tif converts into the same output folder twice."""
    path = str(tmp_path / "out" / "img.blockfs")
    os.makedirs(os.path.dirname(path))
    notes = tmp_path / "out" / "notes.txt"
    notes.write_text("not part of the volume")
    first = random_volume((40, 30, 50), "uint16", 2)
    with Directory(50, 30, 40, np.uint16, path, n_filenames=3, x_block_size=16, y_block_size=16,
                   z_block_size=16).create() as d:
        write_all(d, first)
    old_index = os.open(path, os.O_RDONLY)
    try:
        old_header = os.pread(old_index, 4096, 0)
        second = random_volume((20, 30, 50), "uint8", 3)
        with Directory(50, 30, 20, np.uint8, path, n_filenames=2, x_block_size=16, y_block_size=16,
                       z_block_size=8).create() as again:
            expected = write_all(again, second, skip=((16, 0, 0),))
        # the old index was replaced by a new file, not rewritten in place
        assert os.pread(old_index, 4096, 0) == old_header
    finally:
        os.close(old_index)
    with Directory.open(path) as reader:
        assert reader.shape == (20, 30, 50) and reader.dtype == np.uint8
        np.testing.assert_array_equal(reader[...], expected, strict=True)
    # only the volume's own files were touched: the old third shard and the notes stay
    assert notes.read_text() == "not part of the volume"
    assert os.path.getsize(f"{path}.2") > 0
    assert sorted(os.listdir(tmp_path / "out")) == ["img.blockfs", "img.blockfs.0", "img.blockfs.1", "img.blockfs.2",
                                                    "notes.txt"]


def test_create_again_leaves_hard_linked_copies_of_the_shards_whole(tmp_path: Path) -> None:
    """A pyramid's level 1 hard-links the source's shards; re-creating the source must not empty them."""
    path = str(tmp_path / "src.blockfs")
    data = random_volume((32, 32, 32), "uint16", 4)
    with Directory(32, 32, 32, np.uint16, path, n_filenames=1, x_block_size=16, y_block_size=16,
                   z_block_size=16).create() as d:
        write_all(d, data)
    linked = tmp_path / "linked.0"
    os.link(f"{path}.0", linked)
    before = linked.read_bytes()
    Directory(32, 32, 32, np.uint16, path, n_filenames=1, x_block_size=16, y_block_size=16,
              z_block_size=16).create().close()
    assert os.path.getsize(f"{path}.0") == 0
    assert linked.read_bytes() == before


def test_create_over_mkstemp_files(tmp_path: Path) -> None:
    """The earlier release's test helpers make empty index and shard files with mkstemp first."""
    fd, index = tempfile.mkstemp(suffix=".blockfs", dir=tmp_path)
    os.close(fd)
    shards = []
    for _ in range(2):
        fd, shard = tempfile.mkstemp(dir=tmp_path)
        os.close(fd)
        shards.append(shard)
    data = random_volume((10, 20, 30), "uint16", 4)
    d = Directory(30, 20, 10, np.uint16, index, block_filenames=shards, x_block_size=16, y_block_size=16,
                  z_block_size=8)
    d.create()
    expected = write_all(d, data)
    d.close()
    np.testing.assert_array_equal(d[...], expected, strict=True)
    with Directory.open(index) as reader:
        np.testing.assert_array_equal(reader[...], expected, strict=True)


def test_create_refuses_files_that_are_not_the_volumes(tmp_path: Path) -> None:
    """Replacing stops at files no volume at that path owns; overwrite=False refuses any."""
    precious = tmp_path / "photo.tif"
    precious.write_bytes(b"II*\x00 a tiff, not an index")
    with pytest.raises(VolumeExistsError, match="photo.tif"):
        Directory(8, 8, 8, np.uint8, str(precious), n_filenames=1).create()
    assert precious.read_bytes() == b"II*\x00 a tiff, not an index"
    foreign_shard = tmp_path / "v.blockfs.1"
    foreign_shard.write_bytes(b"someone else's data")
    with pytest.raises(VolumeExistsError, match="v.blockfs.1"):
        Directory(8, 8, 8, np.uint8, str(tmp_path / "v.blockfs"), n_filenames=2).create()
    assert foreign_shard.read_bytes() == b"someone else's data" and not (tmp_path / "v.blockfs").exists()
    foreign_shard.unlink()
    Directory(8, 8, 8, np.uint8, str(tmp_path / "v.blockfs"), n_filenames=2).create().close()
    with pytest.raises(VolumeExistsError, match="overwrite"):
        Directory(8, 8, 8, np.uint8, str(tmp_path / "v.blockfs"), n_filenames=2).create(overwrite=False)


# -- bit widths the earlier mv/cp understand --------------------------------------------------

def earlier_rule(doc: dict[str, Any]) -> tuple[int, int]:
    """(NOffsetBits, NSizeBits) as the earlier release computes them from a header's JSON."""
    block_bytes = doc["XBlockSize"] * doc["YBlockSize"] * doc["ZBlockSize"] * np.dtype(doc["DType"]).itemsize + 16
    last = sum(-(-doc[f"{a}Extent"] // doc[f"{a}BlockSize"]) * doc[f"{a}Stride"] for a in "XYZ")
    return (max(1, last * block_bytes // len(doc["BlockFilenames"]))).bit_length(), block_bytes.bit_length()


def earlier_copy(source: Path, folder: Path) -> Path:
    """The earlier blockfs-cp: a new header with the rule's bit widths and absolute shard names,
    then the index entries copied byte for byte, and the shards copied."""
    raw = source.read_bytes()
    _, json_len, start = PREAMBLE.unpack_from(raw)
    doc = json.loads(raw[16:16 + json_len])
    folder.mkdir()
    names = []
    for name in doc["BlockFilenames"]:
        target = folder / os.path.basename(name)
        target.write_bytes((source.parent / os.path.basename(name)).read_bytes())
        names.append(str(target))
    doc["NOffsetBits"], doc["NSizeBits"] = earlier_rule(doc)
    doc["BlockFilenames"] = names
    text = json.dumps(doc).encode()
    destination = folder / source.name
    destination.write_bytes(PREAMBLE.pack(b"BlockFS\x00", len(text), 16 + len(text)) + text + raw[start:])
    return destination


CASES = [  # (x, y, z) extents, dtype, (x, y, z) block size, shards, records
    ((100, 90, 70), "uint16", (32, 32, 32), 2, True),
    ((100, 90, 70), "uint16", (32, 32, 32), 2, False),
    ((64, 64, 64), "uint8", (64, 64, 64), 1, True),
    ((130, 40, 33), "float32", (64, 16, 8), 3, True),
    ((257, 31, 5), "uint16", (16, 8, 4), 4, True),
    ((50, 50, 50), "int32", (10, 25, 50), 5, False),
    ((300, 200, 10), "uint8", (100, 64, 4), 7, True),
    ((40, 24, 20), "float64", (16, 8, 8), 2, True),
    ((17, 17, 17), "uint16", (16, 16, 16), 3, False),
    ((200, 150, 130), "uint16", (64, 64, 64), 2, True),
]


@pytest.mark.parametrize("extents, dtype, block, shards, records", CASES)
@pytest.mark.parametrize("rewrites", [0, 1])
def test_earlier_cp_rewrite_reads_every_block(tmp_path: Path, extents: tuple[int, int, int], dtype: str,
                                              block: tuple[int, int, int], shards: int, records: bool,
                                              rewrites: int) -> None:
    path = tmp_path / "src" / "v.blockfs"
    path.parent.mkdir()
    x, y, z = extents
    d = Directory(x, y, z, dtype, str(path), n_filenames=shards, x_block_size=block[0], y_block_size=block[1],
                  z_block_size=block[2], records=records).create()
    for version in range(rewrites + 1):
        data = random_volume((z, y, x), dtype, version)
        expected = write_all(d, data, skip=((block[0], 0, 0),))
    d.close()
    copy = earlier_copy(path, tmp_path / "copy")
    with Directory.open(str(copy)) as reader:
        for bx, by, bz in origins(reader):
            dz, dy, dx = reader.get_block_size(bx, by, bz)
            np.testing.assert_array_equal(reader.read_block(bx, by, bz), expected[bz:bz + dz, by:by + dy, bx:bx + dx],
                                          strict=True)
    doc = json.loads(path.read_bytes()[16:16 + PREAMBLE.unpack_from(path.read_bytes())[1]])
    assert (doc["NOffsetBits"], doc["NSizeBits"]) == earlier_rule(doc)
    assert not describe_volume(str(path))["bits_differ_from_earlier_rule"]


def test_widths_deviate_from_the_rule_by_the_least_that_holds_a_full_write(tmp_path: Path) -> None:
    """Tiny blocks with records: one incompressible write of every block needs one more offset bit
    than the earlier rule gives, and gets exactly that; ``info`` says so."""
    rng = np.random.default_rng(5)
    data = rng.integers(0, 256, (20, 20, 20), dtype=np.uint8)
    args = dict(n_filenames=1, x_block_size=2, y_block_size=2, z_block_size=2)
    d = Directory(20, 20, 20, np.uint8, str(tmp_path / "tiny.blockfs"), **args).create()
    doc = {"XExtent": 20, "YExtent": 20, "ZExtent": 20, "XBlockSize": 2, "YBlockSize": 2, "ZBlockSize": 2,
           "DType": "uint8", "XStride": d.x_stride, "YStride": d.y_stride, "ZStride": d.z_stride,
           "BlockFilenames": d.block_filenames}
    rule = earlier_rule(doc)
    assert (d.n_offset_bits, d.n_size_bits) == (rule[0] + 1, rule[1])
    with d:
        write_all(d, data)  # every block incompressible: fits
    np.testing.assert_array_equal(d[...], data, strict=True)
    info = describe_volume(d.directory_filename)
    assert info["bits_differ_from_earlier_rule"] and info["earlier_rule_bits"] == list(rule)
    assert "earlier release's blockfs-mv and blockfs-cp would damage this volume" in format_text(info)

    narrow = Directory(20, 20, 20, np.uint8, str(tmp_path / "narrow.blockfs"), n_offset_bits=rule[0], **args)
    with narrow.create(), pytest.raises(EntryOverflowError) as overflow:
        write_all(narrow, data)
    assert f"n_offset_bits={rule[0] + 2}" in str(overflow.value) and narrow.directory_filename in str(overflow.value)


@pytest.mark.parametrize("seed", range(40))
def test_default_widths_hold_one_full_write_counted_block_by_block(seed: int) -> None:
    """The default widths are the rule's, or the least that holds the last payload of one full
    incompressible write, counted here block by block."""
    rng = np.random.default_rng(seed)
    extents = tuple(int(v) for v in rng.integers(1, 120, 3))
    blocks = tuple(int(v) for v in rng.integers(1, 12, 3))
    shards, itemsize, records = int(rng.integers(1, 9)), int(rng.choice([1, 2, 4, 8])), bool(seed % 2)
    d = Directory(*extents, f"u{itemsize}", "never-created.blockfs", n_filenames=shards, x_block_size=blocks[0],
                  y_block_size=blocks[1], z_block_size=blocks[2], records=records)
    ends, smallest = [0] * shards, None
    for x, y, z in origins(d):
        nbytes = int(np.prod(d.get_block_size(x, y, z))) * itemsize
        ends[d.layout.entry_index(x, y, z) % shards] += (32 if records else 0) + nbytes + 16
        smallest = nbytes if smallest is None else min(smallest, nbytes)
    last_payload = max(0, max(ends) - smallest - 16)
    doc = {"XExtent": extents[0], "YExtent": extents[1], "ZExtent": extents[2], "XBlockSize": blocks[0],
           "YBlockSize": blocks[1], "ZBlockSize": blocks[2], "DType": f"u{itemsize}", "XStride": d.x_stride,
           "YStride": d.y_stride, "ZStride": d.z_stride, "BlockFilenames": d.block_filenames}
    rule = earlier_rule(doc)
    assert (d.n_offset_bits, d.n_size_bits) == (max(rule[0], last_payload.bit_length()), rule[1])


# -- blocks written by an earlier-release writer ------------------------------------------------

def earlier_write(path: Path, block: np.ndarray, x: int, y: int, z: int) -> None:
    """What an earlier-release process does to write a block: append the blosc payload to the
    block's shard (no record) and repoint its entry."""
    raw = path.read_bytes()
    _, json_len, start = PREAMBLE.unpack_from(raw)
    doc = json.loads(raw[16:16 + json_len])
    entry = (x // doc["XBlockSize"] * doc["XStride"] + y // doc["YBlockSize"] * doc["YStride"]
             + z // doc["ZBlockSize"] * doc["ZStride"])
    shard = path.parent / os.path.basename(doc["BlockFilenames"][entry % len(doc["BlockFilenames"])])
    payload = blosc.compress(np.ascontiguousarray(block).tobytes(), typesize=block.dtype.itemsize, clevel=5,
                             shuffle=blosc.SHUFFLE, cname="zstd")
    offset = shard.stat().st_size
    with open(shard, "ab") as f:
        f.write(payload)
    entry_size = -(-(doc["NOffsetBits"] + doc["NSizeBits"]) // 8)
    with open(path, "r+b") as f:
        f.seek(start + entry * entry_size)
        f.write((offset | len(payload) << doc["NOffsetBits"]).to_bytes(entry_size, "little"))


def test_block_written_by_an_earlier_writer_is_the_newest(tmp_path: Path) -> None:
    path = tmp_path / "v.blockfs"
    data = random_volume((40, 48, 40), "uint16", 6)
    with Directory(40, 48, 40, np.uint16, str(path), n_filenames=2, x_block_size=16, y_block_size=16,
                   z_block_size=16).create() as d:
        assert d.records
        expected = write_all(d, data)
    newer = (expected[16:32, 0:16, 16:32] + 1).astype(np.uint16)
    earlier_write(path, newer, 16, 0, 16)
    expected[16:32, 0:16, 16:32] = newer
    fresh = random_volume((8, 16, 8), "uint16", 7)  # an edge block never written before
    earlier_write(path, fresh, 32, 32, 32)
    expected[32:40, 32:48, 32:40] = fresh

    with Directory.open(str(path)) as reader:
        np.testing.assert_array_equal(reader[...], expected, strict=True)
        np.testing.assert_array_equal(reader.read_block(16, 0, 16), newer, strict=True)
        payload = reader.read_block_payload(16, 0, 16)
        assert blosc.decompress(payload) == newer.tobytes()

    report = check_volume(str(path))
    assert report.healthy, [str(p) for p in report.problems]
    assert sorted(report.unrecorded) == [(16, 0, 16), (32, 32, 32)]
    result = repair_volume(str(path))
    assert result.entries_changed == 0 and sorted(result.unrecorded) == [(16, 0, 16), (32, 32, 32)]
    with Directory.open(str(path)) as reader:
        np.testing.assert_array_equal(reader[...], expected, strict=True)


def test_earlier_volume_with_our_records_key_but_no_records(tmp_path: Path) -> None:
    """The earlier release created the volume with metadata copied from one of ours: the records
    key is there, the records are not."""
    path = tmp_path / "v.blockfs"
    data = random_volume((30, 20, 40), "uint16", 8)
    with Directory(40, 20, 30, np.uint16, str(path), n_filenames=2, x_block_size=16, y_block_size=16,
                   z_block_size=16, records=False).create() as d:
        expected = write_all(d, data, skip=((0, 16, 16),))
    raw = path.read_bytes()
    _, json_len, start = PREAMBLE.unpack_from(raw)
    doc = json.loads(raw[16:16 + json_len])
    doc["BlockfsRecords"] = {"version": 1, "header_size": 32, "checksum": "crc32c"}
    text = json.dumps(doc).encode()
    path.write_bytes(PREAMBLE.pack(b"BlockFS\x00", len(text), 16 + len(text)) + text + raw[start:])

    with Directory.open(str(path)) as reader:
        assert reader.records
        np.testing.assert_array_equal(reader[...], expected, strict=True)
        assert reader.read_block_payload(0, 0, 0) is not None
    report = check_volume(str(path))
    assert report.healthy and len(report.unrecorded) == report.blocks_written, [str(p) for p in report.problems]
    assert repair_volume(str(path)).entries_changed == 0


def test_a_record_that_is_there_but_wrong_still_raises(tmp_path: Path) -> None:
    path = tmp_path / "v.blockfs"
    data = random_volume((16, 16, 32), "uint16", 9)
    with Directory(32, 16, 16, np.uint16, str(path), n_filenames=1, x_block_size=16, y_block_size=16,
                   z_block_size=16).create() as d:
        write_all(d, data)
    shard = Path(f"{path}.0")
    raw = bytearray(shard.read_bytes())
    raw[40] ^= 0xFF  # inside the first block's payload, after its 32-byte record
    shard.write_bytes(bytes(raw))
    with Directory.open(str(path)) as reader:
        with pytest.raises(ChecksumError):
            reader.read_block(0, 0, 0)
        with pytest.raises(ChecksumError):
            reader.read_block_payload(0, 0, 0)
        np.testing.assert_array_equal(reader.read_block(16, 0, 0), data[:, :, 16:], strict=True)
    assert [p.kind for p in check_volume(str(path)).problems] == ["checksum"]


def test_an_unrecorded_payload_must_match_the_block_shape(tmp_path: Path) -> None:
    path = tmp_path / "v.blockfs"
    with Directory(32, 16, 16, np.uint16, str(path), n_filenames=1, x_block_size=16, y_block_size=16,
                   z_block_size=16).create() as d:
        write_all(d, random_volume((16, 16, 32), "uint16", 10))
    earlier_write(path, np.zeros((16, 16, 8), np.uint16), 16, 0, 0)  # half the block's voxels
    with Directory.open(str(path)) as reader:
        with pytest.raises(CorruptBlockError, match="without a block record"):
            reader.read_block_payload(16, 0, 0)
        with pytest.raises(CorruptBlockError):
            reader.read_block(16, 0, 0)
    assert [p.kind for p in check_volume(str(path)).problems] == ["undecodable"]


# -- the README pattern under every start method ------------------------------------------------

@pytest.mark.parametrize("how", ["set_start_method", "get_context"])
@pytest.mark.parametrize("method", ["fork", "spawn", "forkserver"])
def test_readme_pattern(tmp_path: Path, method: str, how: str) -> None:
    volume = tmp_path / "brain.blockfs"
    started = time.monotonic()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(producers.REPO_ROOT), os.environ.get("PYTHONPATH", "")]))
    result = subprocess.run([sys.executable, "-W", "always::DeprecationWarning", str(TESTS_DIR / "readme_pattern.py"),
                             str(volume), method, how], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert time.monotonic() - started < 120
    assert "DeprecationWarning" not in result.stderr, result.stderr
    with Directory.open(str(volume)) as reader:
        got = reader[...]
    z, y, x = np.meshgrid(*(np.arange(n) for n in got.shape), indexing="ij")
    expected = ((x * 3 + y * 5 + z * 7) % 65521).astype(np.uint16)
    assert np.count_nonzero(got != expected) == 0


def test_worker_directory_that_does_not_match_the_volume(tmp_path: Path) -> None:
    d = Directory(200, 150, 130, np.uint16, str(tmp_path / "v.blockfs"), n_filenames=2).create()
    d.close()
    with producers.pool_of("spawn", 1) as pool:
        pid = pool.apply_async(producers.attach_and_write, (d.directory_filename, (200, 150, 130), 3)).get(60)
        assert pid != os.getpid()
        with pytest.raises(AttachError) as mismatch:
            pool.apply_async(producers.attach_and_write, (d.directory_filename, (200, 150, 64), 3)).get(60)
        with pytest.raises(AttachError) as missing:
            pool.apply_async(producers.attach_and_write, (str(tmp_path / "none.blockfs"), (200, 150, 130), 3)).get(60)
    assert "z_extent is 130 on disk but 64 here" in str(mismatch.value)
    assert d.directory_filename in str(mismatch.value)
    assert "none.blockfs" in str(missing.value) and "create()" in str(missing.value)
    np.testing.assert_array_equal(d.read_block(0, 0, 0), producers.sample_block(0, 0, 0, (64, 64, 64), 3),
                                  strict=True)


UNGUARDED = """
import multiprocessing, sys
import numpy as np
from blockfs import Directory
d = Directory(64, 64, 64, np.uint16, sys.argv[1], n_filenames=1)
d.create()  # unguarded: runs again when a spawned process imports this module
if __name__ == "__main__":
    d.write_block(np.full((64, 64, 64), 7, np.uint16), 0, 0, 0)
    d.close()
    p = multiprocessing.get_context("spawn").Process(target=print)
    p.start()
    p.join(60)
    print("child exit", p.exitcode)
"""


def test_create_while_a_spawned_worker_imports_the_main_module(tmp_path: Path) -> None:
    """A program without the __main__ guard: the spawned process's import of it must not replace
    the volume the parent wrote."""
    script = tmp_path / "unguarded.py"
    script.write_text(UNGUARDED)
    volume = tmp_path / "v.blockfs"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(producers.REPO_ROOT), os.environ.get("PYTHONPATH", "")]))
    result = subprocess.run([sys.executable, str(script), str(volume)], cwd=tmp_path, env=env, capture_output=True,
                            text=True, timeout=120)
    assert "child exit 1" in result.stdout, result.stdout + result.stderr
    assert "AttachError" in result.stderr and "__main__" in result.stderr
    with Directory.open(str(volume)) as reader:
        assert (reader.read_block(0, 0, 0) == 7).all()
