"""Bad input gets the specific blockfs error, a message naming the file and the value, and no damage.

Every test that touches an existing volume compares all of its files byte for byte before and
after the failing call.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import stat
import struct
import tempfile
import traceback
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pytest

from fixtures import copy_volume, fixture_cases, require_fixtures

from blockfs import (
    BlockCoordinateError,
    BlockShapeError,
    CorruptBlockError,
    Directory,
    EntryOverflowError,
    FormatError,
    InvalidArgumentError,
    MissingShardError,
    ReadOnlyError,
    RegionError,
    UnsupportedCompressionError,
    UnsupportedDTypeError,
    VolumeExistsError,
)

# -- helpers -------------------------------------------------------------------------------------


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` and its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def make_volume(folder: Path, **kwargs: Any) -> tuple[Directory, np.ndarray]:
    """A closed volume of 40 x 24 x 20 (x, y, z) uint16 voxels in 16 x 8 x 8 blocks, fully written."""
    args: dict[str, Any] = dict(x_extent=40, y_extent=24, z_extent=20, dtype="uint16",
                                directory_filename=str(folder / "vol.blockfs"), n_filenames=2,
                                x_block_size=16, y_block_size=8, z_block_size=8)
    args.update(kwargs)
    data = np.random.default_rng(11).integers(0, 4000, (args["z_extent"], args["y_extent"], args["x_extent"]),
                                              dtype=np.uint16)
    with Directory(**args).create() as d:
        d[...] = data
    return d, data


def header_of(path: Path) -> tuple[int, int, dict[str, Any]]:
    """(M, D, JSON) of a directory file, decoded by hand from FORMAT-NOTES."""
    raw = path.read_bytes()
    json_len, start = struct.unpack_from("<II", raw, 8)
    return json_len, start, json.loads(raw[16:16 + json_len])


def rewrite_entry(path: Path, e: int, offset: int | None = None, size: int | None = None) -> tuple[int, int]:
    """Set fields of entry ``e`` of a directory file; return the entry's old (offset, size)."""
    _, start, doc = header_of(path)
    n_offset, n_size = doc["NOffsetBits"], doc["NSizeBits"]
    entry_size = -(-(n_offset + n_size) // 8)
    raw = bytearray(path.read_bytes())
    at = start + e * entry_size
    value = int.from_bytes(raw[at:at + entry_size], "little")
    old = (value & ((1 << n_offset) - 1), (value >> n_offset) & ((1 << n_size) - 1))
    new_offset = old[0] if offset is None else offset
    new_size = old[1] if size is None else size
    raw[at:at + entry_size] = (new_offset | new_size << n_offset).to_bytes(entry_size, "little")
    path.write_bytes(bytes(raw))
    return old


def header_bytes(doc: Any) -> bytes:
    """A directory file's preamble and JSON for an arbitrary JSON value ``doc``."""
    text = json.dumps(doc).encode("utf-8")
    return b"BlockFS\x00" + struct.pack("<II", len(text), 16 + len(text)) + text


def fixture_copy(tmp_path: Path, index: int = 0) -> tuple[dict[str, Any], Path, np.ndarray]:
    """(case, copied directory file, expected array) of one fixture case."""
    folder = require_fixtures()
    case = fixture_cases()[index]
    return case, copy_volume(case, tmp_path / "vol"), np.load(folder / case["expected_array"])


def raises_unchanged(folder: Path, error: type[BaseException], call: Callable[[], Any], *needles: str
                     ) -> pytest.ExceptionInfo:
    """``call()`` raises ``error`` whose message holds every needle, and no file in ``folder`` changes."""
    before = snapshot(folder)
    with pytest.raises(error) as info:
        call()
    message = str(info.value)
    for needle in needles:
        assert needle in message, f"{needle!r} not in {message!r}"
    after = snapshot(folder)
    assert after.keys() == before.keys()
    for name in before:
        assert after[name] == before[name], f"{name} changed"
    return info


# -- writing blocks ------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(8, 8, 15), (8, 8, 17), (7, 8, 16), (8, 8), (1, 8, 8, 16), (16, 8, 8)])
def test_wrong_block_shape(tmp_path: Path, shape: tuple[int, ...]) -> None:
    d, data = make_volume(tmp_path)
    with Directory.open(d.directory_filename, "r+") as w:
        raises_unchanged(tmp_path, BlockShapeError, lambda: w.write_block(np.ones(shape, np.uint16), 16, 8, 8),
                         d.directory_filename, str(shape), "(8, 8, 16)")
        np.testing.assert_array_equal(w[...], data, strict=True)


def test_wrong_block_shape_at_the_edge(tmp_path: Path) -> None:
    d, _ = make_volume(tmp_path)
    with Directory.open(d.directory_filename, "r+") as w:
        # The edge block at x=32 is 8 voxels wide; a full-size block does not fit there.
        raises_unchanged(tmp_path, BlockShapeError, lambda: w.write_block(np.ones((8, 8, 16), np.uint16), 32, 16, 16),
                         d.directory_filename, "(4, 8, 8)", "(8, 8, 16)")


BAD_COORDINATES = {
    "non-aligned": [((1, 0, 0), "x=1"), ((0, 4, 0), "y=4"), ((0, 0, 7), "z=7"), ((15, 8, 8), "x=15")],
    "out-of-range": [((48, 0, 0), "x=48"), ((0, 24, 0), "y=24"), ((0, 0, 24), "z=24"), ((1600, 0, 0), "x=1600")],
    "negative": [((-16, 0, 0), "x=-16"), ((0, -8, 0), "y=-8"), ((0, 0, -8), "z=-8"), ((-1, 0, 0), "x=-1")],
}


@pytest.mark.parametrize("xyz, value", [case for cases in BAD_COORDINATES.values() for case in cases],
                         ids=[f"{kind}-{value}" for kind, cases in BAD_COORDINATES.items() for _, value in cases])
def test_coordinates_off_the_block_grid(tmp_path: Path, xyz: tuple[int, int, int], value: str) -> None:
    d, _ = make_volume(tmp_path)
    with Directory.open(d.directory_filename, "r+") as w:
        block = np.ones((8, 8, 16), np.uint16)
        raises_unchanged(tmp_path, BlockCoordinateError, lambda: w.write_block(block, *xyz),
                         d.directory_filename, value)
        raises_unchanged(tmp_path, BlockCoordinateError, lambda: w.read_block(*xyz), d.directory_filename, value)
        raises_unchanged(tmp_path, BlockCoordinateError, lambda: w.get_block_size(*xyz), value)


@pytest.mark.parametrize("xyz", [(16.0, 0, 0), (0, "8", 0), (0, 0, None)])
def test_non_integer_coordinates(tmp_path: Path, xyz: tuple[Any, Any, Any]) -> None:
    d, _ = make_volume(tmp_path)
    with Directory.open(d.directory_filename, "r+") as w:
        bad = next(repr(c) for c in xyz if not isinstance(c, int))
        raises_unchanged(tmp_path, BlockCoordinateError, lambda: w.write_block(np.ones((8, 8, 16), np.uint16), *xyz),
                         d.directory_filename, bad)
        raises_unchanged(tmp_path, BlockCoordinateError, lambda: w.read_block(*xyz), d.directory_filename, bad)


# -- indexing ------------------------------------------------------------------------------------


def test_too_many_indices(tmp_path: Path) -> None:
    d, _ = make_volume(tmp_path)
    with Directory.open(d.directory_filename) as r:
        info = raises_unchanged(tmp_path, RegionError, lambda: r[1, 2, 3, 4], d.directory_filename, "4")
        assert "(1, 2, 3, 4)" in str(info.value)
        raises_unchanged(tmp_path, RegionError, lambda: r[..., 1, ...], d.directory_filename)
    with Directory.open(d.directory_filename, "r+") as w:
        raises_unchanged(tmp_path, RegionError, lambda: w.__setitem__((0, 0, 0, 0), 1), d.directory_filename)


@pytest.mark.parametrize("key, value", [((1.5,), "1.5"), ((0, 2.0), "2.0"), ((0, 0, "a"), "'a'"),
                                        ((0, 0, [1, 2]), "[1, 2]"), ((None,), "None")])
def test_non_integer_index(tmp_path: Path, key: tuple[Any, ...], value: str) -> None:
    d, _ = make_volume(tmp_path)
    with Directory.open(d.directory_filename) as r:
        raises_unchanged(tmp_path, RegionError, lambda: r[key], d.directory_filename, value)


@pytest.mark.parametrize("key, value", [((20,), "20"), ((0, -25), "-25"), ((0, 0, 40), "40")])
def test_integer_index_out_of_range(tmp_path: Path, key: tuple[int, ...], value: str) -> None:
    d, _ = make_volume(tmp_path)
    with Directory.open(d.directory_filename) as r:
        with pytest.raises(IndexError):  # numpy's own behaviour, for comparison
            np.zeros(r.shape)[key]
        raises_unchanged(tmp_path, RegionError, lambda: r[key], d.directory_filename, value)


# -- creating volumes ----------------------------------------------------------------------------


@pytest.mark.parametrize("dtype, value", [("foo", "foo"), (object, "O"), ("U4", "U4"), ("datetime64[s]", "M8"),
                                          ([("a", "u2"), ("b", "f4")], "a")])
def test_unknown_dtype(tmp_path: Path, dtype: Any, value: str) -> None:
    path = str(tmp_path / "dtype.blockfs")
    with pytest.raises(UnsupportedDTypeError) as info:
        Directory(10, 10, 10, dtype, path)
    assert value in str(info.value)
    assert isinstance(info.value, TypeError)
    assert list(tmp_path.iterdir()) == []


def test_unknown_dtype_message_names_the_file(tmp_path: Path) -> None:
    path = str(tmp_path / "dtype.blockfs")
    with pytest.raises(UnsupportedDTypeError) as info:
        Directory(10, 10, 10, "foo", path)
    assert path in str(info.value)


@pytest.mark.parametrize("compression, level, value", [("bogus", 5, "bogus"), ("snappy", 5, "snappy"),
                                                       ("zstd", 12, "12"), ("zstd", -1, "-1"), ("lz4", 2.5, "2.5")])
def test_unsupported_compression(tmp_path: Path, compression: str, level: Any, value: str) -> None:
    import blosc
    if compression == "snappy" and "snappy" in blosc.compressor_list():
        pytest.skip("this blosc build has snappy")
    path = str(tmp_path / "c.blockfs")
    with pytest.raises(UnsupportedCompressionError) as info:
        Directory(10, 10, 10, "uint8", path, compression=compression, compression_level=level)
    assert path in str(info.value)
    assert value in str(info.value)
    assert isinstance(info.value, ValueError)
    assert list(tmp_path.iterdir()) == []


def test_create_over_existing_volume(tmp_path: Path) -> None:
    d, data = make_volume(tmp_path)
    again = Directory(40, 24, 20, "uint8", d.directory_filename, n_filenames=2, x_block_size=16, y_block_size=8,
                      z_block_size=8)
    info = raises_unchanged(tmp_path, VolumeExistsError, lambda: again.create(overwrite=False), d.directory_filename,
                            "overwrite")
    assert isinstance(info.value, FileExistsError)
    with Directory.open(d.directory_filename) as r:
        np.testing.assert_array_equal(r[...], data, strict=True)


def test_create_over_a_lone_shard(tmp_path: Path) -> None:
    shard = tmp_path / "lone.blockfs.1"
    shard.write_bytes(b"precious")
    d = Directory(10, 10, 10, "uint8", str(tmp_path / "lone.blockfs"), n_filenames=2)
    raises_unchanged(tmp_path, VolumeExistsError, d.create, str(shard))


def test_create_twice_on_one_directory(tmp_path: Path) -> None:
    d = Directory(10, 10, 10, "uint8", str(tmp_path / "twice.blockfs"), n_filenames=1).create()
    with d:
        raises_unchanged(tmp_path, VolumeExistsError, d.create, d.directory_filename)


def test_bad_mode(tmp_path: Path) -> None:
    d, _ = make_volume(tmp_path)
    for mode in ("w", "a", "rb", ""):
        raises_unchanged(tmp_path, ValueError, lambda mode=mode: Directory.open(d.directory_filename, mode),
                         d.directory_filename, repr(mode))


# -- files that are not blockfs directories ------------------------------------------------------


def test_random_bytes(tmp_path: Path) -> None:
    path = tmp_path / "random.blockfs"
    raw = np.random.default_rng(5).integers(0, 256, 4096, dtype=np.uint8).tobytes()
    path.write_bytes(raw)
    raises_unchanged(tmp_path, FormatError, lambda: Directory.open(str(path)), str(path), repr(raw[:8]))
    raises_unchanged(tmp_path, FormatError, lambda: Directory.open(str(path), "r+"), str(path))


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.blockfs"
    path.write_bytes(b"")
    raises_unchanged(tmp_path, FormatError, lambda: Directory.open(str(path)), str(path), "0 bytes")


def test_shard_passed_instead_of_directory(tmp_path: Path) -> None:
    d, _ = make_volume(tmp_path)
    shard = d.block_filenames[0]
    raises_unchanged(tmp_path, FormatError, lambda: Directory.open(shard), shard, "not a blockfs directory")


def test_truncated_header(tmp_path: Path) -> None:
    d, _ = make_volume(tmp_path)
    path = tmp_path / "short.blockfs"
    path.write_bytes(Path(d.directory_filename).read_bytes()[:10])
    raises_unchanged(tmp_path, FormatError, lambda: Directory.open(str(path)), str(path), "10 bytes")


def test_truncated_json(tmp_path: Path) -> None:
    d, _ = make_volume(tmp_path)
    raw = Path(d.directory_filename).read_bytes()
    json_len, _, _ = header_of(Path(d.directory_filename))
    path = tmp_path / "cut.blockfs"
    path.write_bytes(raw[:16 + json_len // 2])
    raises_unchanged(tmp_path, FormatError, lambda: Directory.open(str(path)), str(path), str(json_len))


def test_damaged_json(tmp_path: Path) -> None:
    d, _ = make_volume(tmp_path)
    raw = bytearray(Path(d.directory_filename).read_bytes())
    raw[16] = ord("#")
    path = tmp_path / "damaged.blockfs"
    path.write_bytes(bytes(raw))
    raises_unchanged(tmp_path, FormatError, lambda: Directory.open(str(path)), str(path), "JSON")


@pytest.mark.parametrize("doc, value", [([1, 2, 3], "list"), ("text", "str"), (42, "int"), (None, "NoneType")])
def test_json_not_an_object(tmp_path: Path, doc: Any, value: str) -> None:
    path = tmp_path / "notobject.blockfs"
    path.write_bytes(header_bytes(doc))
    raises_unchanged(tmp_path, FormatError, lambda: Directory.open(str(path)), str(path), value)


@pytest.mark.parametrize("key", ["XExtent", "DType", "BlockFilenames", "NOffsetBits", "Compression", "ZStride"])
def test_missing_key(tmp_path: Path, key: str) -> None:
    d, _ = make_volume(tmp_path)
    _, _, doc = header_of(Path(d.directory_filename))
    del doc[key]
    path = tmp_path / "missing-key.blockfs"
    path.write_bytes(header_bytes(doc))
    raises_unchanged(tmp_path, FormatError, lambda: Directory.open(str(path)), str(path), key)


@pytest.mark.parametrize("key, value, shown", [
    ("XExtent", -3, "-3"), ("XBlockSize", 0, "0"), ("DType", "foo", "foo"), ("DType", "object", "O"),
    ("Compression", "bogus", "bogus"), ("BlockFilenames", [], "[]"), ("BlockFilenames", "v.0", "v.0"),
    ("NOffsetBits", 60, "72"), ("Version", "2.0.0", "2.0.0"), ("YStride", 1.5, "1.5"), ("CompressionLvl", "5", "'5'"),
    ("ZExtent", True, "True"),
])
def test_bad_key_value(tmp_path: Path, key: str, value: Any, shown: str) -> None:
    d, _ = make_volume(tmp_path)
    _, _, doc = header_of(Path(d.directory_filename))
    doc[key] = value
    path = tmp_path / "bad-value.blockfs"
    path.write_bytes(header_bytes(doc))
    raises_unchanged(tmp_path, FormatError, lambda: Directory.open(str(path)), str(path), key, shown)


def test_missing_directory_file(tmp_path: Path) -> None:
    path = str(tmp_path / "nowhere.blockfs")
    with pytest.raises(FileNotFoundError) as info:
        Directory.open(path)
    assert path in str(info.value)


# -- files that are not regular files -------------------------------------------------------------


def _device(path: Path) -> None:
    try:
        os.mknod(path, stat.S_IFCHR | 0o600, os.makedev(1, 3))  # the null device's numbers
    except OSError as exc:
        pytest.skip(f"cannot make a device node here ({exc})")


@pytest.mark.timeout(20)  # a FIFO opened for reading waits for a writer: the test would hang
@pytest.mark.parametrize("kind, make", [("a FIFO", os.mkfifo), ("a directory", os.mkdir),
                                        ("a character device", _device)], ids=["fifo", "folder", "device"])
def test_index_that_is_not_a_regular_file(tmp_path: Path, kind: str, make: Callable[[Path], None]) -> None:
    path = tmp_path / "special.blockfs"
    make(path)
    for mode in ("r", "r+"):
        raises_unchanged(tmp_path, FormatError, lambda mode=mode: Directory.open(str(path), mode), str(path), kind,
                         "not a regular file")


@pytest.mark.timeout(20)
@pytest.mark.parametrize("kind, make", [("a FIFO", os.mkfifo), ("a directory", os.mkdir),
                                        ("a character device", _device)], ids=["fifo", "folder", "device"])
def test_shard_that_is_not_a_regular_file(tmp_path: Path, kind: str, make: Callable[[Path], None]) -> None:
    """Read from, a shard must be a regular file: a FIFO is not waited on, a device not read."""
    d, data = make_volume(tmp_path, n_filenames=1)
    shard = Path(d.block_filenames[0])
    shard.unlink()
    make(shard)
    with Directory.open(d.directory_filename) as r:
        raises_unchanged(tmp_path, FormatError, lambda: r.read_block(0, 0, 0), str(shard), kind, "not a regular file")
        raises_unchanged(tmp_path, FormatError, lambda: r[...], str(shard))


# -- headers no volume can have --------------------------------------------------------------------

#: A plausible header: 1000^3 uint16 voxels in 64^3 blocks (16^3 of them), the earlier rule's bit widths.
SANE = {"XBlockSize": 64, "YBlockSize": 64, "ZBlockSize": 64, "XExtent": 1000, "YExtent": 1000, "ZExtent": 1000,
        "DType": "uint16", "NOffsetBits": 32, "NSizeBits": 20, "XStride": 1, "YStride": 16, "ZStride": 256,
        "BlockFilenames": ["v.blockfs.0"], "Compression": "zstd", "CompressionLvl": 5, "Version": "1.0.0"}

#: (what, values that no volume can have, the same at the limit, words the refusal holds)
LIMITS = [
    ("entry-bits", dict(NOffsetBits=45, NSizeBits=20), dict(NOffsetBits=44, NSizeBits=20),
     ["NOffsetBits + NSizeBits = 65", "exceeds 64"]),
    ("size-field", dict(NSizeBits=19), dict(NSizeBits=20),
     ["NSizeBits is 19", "524288 bytes", "NSizeBits >= 20"]),
    ("blosc-buffer", dict(XBlockSize=2**31 - 16, XExtent=2**31 - 16, YBlockSize=1, YExtent=1, ZBlockSize=1,
                          ZExtent=1, DType="uint8", NSizeBits=31),
     dict(XBlockSize=2**31 - 17, XExtent=2**31 - 17, YBlockSize=1, YExtent=1, ZBlockSize=1, ZExtent=1, DType="uint8",
          NSizeBits=31), ["2147483632 bytes", "2147483631 bytes one blosc buffer"]),
    ("volume-bytes", dict(XExtent=2**21, YExtent=2**21, ZExtent=2**21, XBlockSize=1024, YBlockSize=1024,
                          ZBlockSize=1024, DType="uint8", XStride=1, YStride=2**11, ZStride=2**22, NOffsetBits=27,
                          NSizeBits=31, BlockFilenames=[f"v.{i}" for i in range(1024)]),
     dict(XExtent=2**21, YExtent=2**21, ZExtent=2**21 - 1024, XBlockSize=1024, YBlockSize=1024, ZBlockSize=1024,
          DType="uint8", XStride=1, YStride=2**11, ZStride=2**22, NOffsetBits=27, NSizeBits=31,
          BlockFilenames=[f"v.{i}" for i in range(1024)]), ["9223372036854775808 bytes", "64-bit"]),
    ("overlapping-strides", dict(YStride=15), dict(YStride=16), ["YStride 15", "entry 15", "overlap"]),
    ("interleaved-strides", dict(XStride=2, YStride=3, XExtent=192, YExtent=128),  # x: 0, 2, 4; y: 3, 5, 7
     dict(XStride=2, YStride=5, XExtent=192, YExtent=128), ["YStride 3", "entry 4"]),
    ("index-addressing", dict(XExtent=2**20, XBlockSize=1, YExtent=64, ZExtent=64, XStride=2**40,
                              NOffsetBits=24, NSizeBits=18),
     dict(XExtent=2**20, XBlockSize=1, YExtent=64, ZExtent=64, XStride=2**39, NOffsetBits=24, NSizeBits=18),
     ["entry positions of 6 bytes", "2**62 bytes of index"]),
    ("offset-capacity", dict(NOffsetBits=15), dict(NOffsetBits=16),
     ["4096 block positions cannot all be written", "NOffsetBits 15", "at most 2048 blocks"]),
]


@pytest.mark.parametrize("values, limit, words", [case[1:] for case in LIMITS], ids=[case[0] for case in LIMITS])
def test_header_no_volume_can_have(tmp_path: Path, values: dict[str, Any], limit: dict[str, Any],
                                   words: list[str]) -> None:
    """Refused with the file, the value and why; the same header at the limit opens."""
    path = tmp_path / "absurd.blockfs"
    path.write_bytes(header_bytes(dict(SANE, **values)))
    raises_unchanged(tmp_path, FormatError, lambda: Directory.open(str(path)), str(path), *words)
    path.write_bytes(header_bytes(dict(SANE, **limit)))
    with Directory.open(str(path)) as d:
        resident = psutil.Process().memory_info().rss
        block = d.read_block(0, 0, 0)
        assert not block.any()
        # a block never written reads as zeros without touching its pages (2 GiB at the blosc-buffer limit)
        assert psutil.Process().memory_info().rss - resident < 64 << 20


@pytest.mark.parametrize("values", [case[1] for case in LIMITS], ids=[case[0] for case in LIMITS])
def test_no_volume_is_created_that_a_reader_refuses(tmp_path: Path, values: dict[str, Any]) -> None:
    keys = {"XExtent": "x_extent", "YExtent": "y_extent", "ZExtent": "z_extent", "XBlockSize": "x_block_size",
            "YBlockSize": "y_block_size", "ZBlockSize": "z_block_size", "DType": "dtype", "XStride": "x_stride",
            "YStride": "y_stride", "ZStride": "z_stride", "NOffsetBits": "n_offset_bits", "NSizeBits": "n_size_bits"}
    doc = dict(SANE, **values)
    args = {name: doc[key] for key, name in keys.items()}
    with pytest.raises(InvalidArgumentError) as info:
        Directory(directory_filename=str(tmp_path / "v.blockfs"), n_filenames=len(doc["BlockFilenames"]), **args)
    assert str(tmp_path / "v.blockfs") in str(info.value)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("extents, blocks, strides", [
    ((1000, 1000, 1000), (64, 64, 64), None),                  # x fastest, as written by default
    ((300, 200, 100), (64, 32, 16), (91, 7, 1)),                # z fastest
    ((300, 200, 100), (64, 32, 16), (1, 11, 200)),              # gaps between rows and planes
    ((1, 200, 1), (1, 32, 1), (5, 3, 9)),                       # one axis with more than one block
])
def test_entries_map_back_to_their_blocks(tmp_path: Path, extents: tuple[int, int, int],
                                          blocks: tuple[int, int, int], strides: tuple[int, int, int] | None) -> None:
    sx, sy, sz = strides or (None, None, None)
    d = Directory(*extents, "uint8", str(tmp_path / "v.blockfs"), n_filenames=2, x_block_size=blocks[0],
                  y_block_size=blocks[1], z_block_size=blocks[2], x_stride=sx, y_stride=sy, z_stride=sz)
    layout = d.layout
    origins = [(x, y, z) for z in range(0, extents[2], blocks[2]) for y in range(0, extents[1], blocks[1])
               for x in range(0, extents[0], blocks[0])]
    numbers = {layout.entry_index(*o): o for o in origins}
    assert len(numbers) == len(origins) == layout.n_blocks
    everything = np.arange(-3, layout.n_entries + 3)
    inside, found = layout.blocks_of(everything)
    assert everything[inside].tolist() == sorted(numbers)
    assert [tuple(o) for o in found.tolist()] == [numbers[e] for e in sorted(numbers)]
    entries, first_voxels = layout.block_entries(stop=layout.n_entries // 2)
    assert entries.tolist() == [e for e in sorted(numbers) if e < layout.n_entries // 2]
    assert [tuple(o) for o in first_voxels.tolist()] == [numbers[e] for e in entries.tolist()]


# -- damaged volumes -----------------------------------------------------------------------------


def test_entry_pointing_past_end_of_shard(tmp_path: Path) -> None:
    case, directory_file, expected = fixture_copy(tmp_path)
    _, _, doc = header_of(directory_file)
    # Block (x=64, y=0, z=0): entry 1 * XStride, stored in shard e % n.
    e = doc["XStride"]
    shard_name = doc["BlockFilenames"][e % len(doc["BlockFilenames"])]
    shard_size = (directory_file.parent / shard_name).stat().st_size
    huge = (1 << doc["NOffsetBits"]) - 1
    assert huge > shard_size
    rewrite_entry(directory_file, e, offset=huge)
    folder = directory_file.parent
    with Directory.open(str(directory_file)) as r:
        info = raises_unchanged(folder, CorruptBlockError, lambda: r.read_block(64, 0, 0), shard_name, str(huge))
        assert isinstance(info.value, ValueError)
        raises_unchanged(folder, CorruptBlockError, lambda: r[...], shard_name)
        raises_unchanged(folder, CorruptBlockError, lambda: r[0:1, 0:1, 60:70], shard_name)
        # Other blocks are unaffected.
        np.testing.assert_array_equal(r.read_block(0, 0, 0), expected[:64, :64, :64], strict=True)
        np.testing.assert_array_equal(r[:, :, :64], expected[:, :, :64], strict=True)


def test_entry_whose_size_runs_past_end_of_shard(tmp_path: Path) -> None:
    case, directory_file, _ = fixture_copy(tmp_path)
    _, _, doc = header_of(directory_file)
    e = doc["YStride"]  # block (x=0, y=64, z=0)
    old_offset, old_size = rewrite_entry(directory_file, e)
    shard_name = doc["BlockFilenames"][e % len(doc["BlockFilenames"])]
    shard_size = (directory_file.parent / shard_name).stat().st_size
    rewrite_entry(directory_file, e, offset=shard_size - old_size // 2)
    with Directory.open(str(directory_file)) as r:
        raises_unchanged(directory_file.parent, CorruptBlockError, lambda: r.read_block(0, 64, 0), shard_name)


def test_entry_pointing_at_the_wrong_bytes(tmp_path: Path) -> None:
    case, directory_file, _ = fixture_copy(tmp_path)
    _, _, doc = header_of(directory_file)
    # Point block 0 at an offset inside its own payload: blosc's header check must catch it.
    old_offset, old_size = rewrite_entry(directory_file, 0)
    rewrite_entry(directory_file, 0, offset=old_offset + 7, size=old_size - 7)
    with Directory.open(str(directory_file)) as r:
        raises_unchanged(directory_file.parent, CorruptBlockError, lambda: r.read_block(0, 0, 0),
                         doc["BlockFilenames"][0])


def test_entry_pointing_at_another_blocks_bytes(tmp_path: Path) -> None:
    # The bytes of an edge block (another shape) decompress to the wrong size: CorruptBlockError, not garbage.
    case, directory_file, _ = fixture_copy(tmp_path)
    _, _, doc = header_of(directory_file)
    (nz, ny, nx), (bz, by, bx) = case["shape_zyx"], case["block_size_zyx"]
    n_shards = len(doc["BlockFilenames"])
    edge = next(e for z in range(0, nz, bz) for y in range(0, ny, by) for x in range(0, nx, bx)
                if (e := x // bx * doc["XStride"] + y // by * doc["YStride"] + z // bz * doc["ZStride"]) % n_shards == 0
                and (min(bz, nz - z), min(by, ny - y), min(bx, nx - x)) != (bz, by, bx))
    offset, size = rewrite_entry(directory_file, edge)
    rewrite_entry(directory_file, 0, offset=offset, size=size)
    with Directory.open(str(directory_file)) as r:
        raises_unchanged(directory_file.parent, CorruptBlockError, lambda: r.read_block(0, 0, 0),
                         doc["BlockFilenames"][0], str(offset))


#: Bytes 4-15 of a blosc header: the uncompressed, block and compressed sizes (docs/FORMAT.md).
BLOSC_SIZE_FIELDS = range(4, 16)


def read_or_error(read: Callable[[], np.ndarray], shard: str) -> np.ndarray | CorruptBlockError:
    """What ``read()`` returns, or the CorruptBlockError it raises (which must name ``shard``)."""
    try:
        return read()
    except CorruptBlockError as exc:
        assert shard in str(exc), exc
        return exc


@pytest.mark.parametrize("index", range(len(fixture_cases()) or 1))
def test_corrupted_payload_byte(tmp_path: Path, index: int) -> None:
    """One changed byte in a stored block of a volume without records (no checksum): a damaged size
    field is always refused; elsewhere the block may raise CorruptBlockError or decode to other
    values, but read_block and a region read always agree."""
    case, directory_file, expected = fixture_copy(tmp_path, index)
    _, _, doc = header_of(directory_file)
    (nz, ny, nx), (bz, by, bx) = case["shape_zyx"], case["block_size_zyx"]
    written = next((x, y, z) for z in range(0, nz, bz) for y in range(0, ny, by) for x in range(0, nx, bx)
                   if [x, y, z] not in case["missing_blocks_xyz"])
    x, y, z = written
    e = x // bx * doc["XStride"] + y // by * doc["YStride"] + z // bz * doc["ZStride"]
    offset, size = rewrite_entry(directory_file, e)
    shard = directory_file.parent / doc["BlockFilenames"][e % len(doc["BlockFilenames"])]
    pristine = shard.read_bytes()
    shape = (min(bz, nz - z), min(by, ny - y), min(bx, nx - x))
    positions = sorted(set(list(range(16)) + [16, 17, 20, 24, 31, size // 2, size - 1]))
    refused = 0
    for position in positions:
        for change in (lambda b: b ^ 0xFF, lambda b: 0, lambda b: 0xFF, lambda b: b ^ 0x01):
            damaged = bytearray(pristine)
            damaged[offset + position] = change(damaged[offset + position])
            if damaged == pristine:
                continue  # e.g. zeroing a zero byte
            shard.write_bytes(bytes(damaged))
            with Directory.open(str(directory_file)) as r:
                block = read_or_error(lambda: r.read_block(x, y, z), shard.name)
                region = read_or_error(lambda: r[z:z + shape[0], y:y + shape[1], x:x + shape[2]], shard.name)
            where = f"byte {position} set to {damaged[offset + position]:#04x}"
            if isinstance(block, CorruptBlockError):
                refused += 1
                assert isinstance(region, CorruptBlockError), f"{where}: read_block refuses, a region read does not"
                continue
            assert position not in BLOSC_SIZE_FIELDS, f"{where}: a damaged size field must be refused"
            assert block.shape == shape and block.dtype == np.dtype(case["dtype"]), where
            assert isinstance(region, np.ndarray) and np.array_equal(region, block), \
                f"{where}: read_block and a region read disagree"
    assert refused >= len(BLOSC_SIZE_FIELDS), "the damaged size fields were not all refused"
    shard.write_bytes(pristine)
    with Directory.open(str(directory_file)) as r:
        np.testing.assert_array_equal(r[...], expected, strict=True)


def test_missing_shard(tmp_path: Path) -> None:
    case, directory_file, expected = fixture_copy(tmp_path)
    _, _, doc = header_of(directory_file)
    assert len(doc["BlockFilenames"]) == 2
    lost = doc["BlockFilenames"][1]
    (directory_file.parent / lost).unlink()
    folder = directory_file.parent
    with Directory.open(str(directory_file)) as r:
        # Block (x=64, y=0, z=0) is entry XStride = 1, in shard 1.
        info = raises_unchanged(folder, MissingShardError, lambda: r.read_block(64, 0, 0), repr(lost))
        assert isinstance(info.value, FileNotFoundError)
        raises_unchanged(folder, MissingShardError, lambda: r[...], repr(lost))
        # Blocks of the other shard still read.
        np.testing.assert_array_equal(r.read_block(0, 0, 0), expected[:64, :64, :64], strict=True)


def test_write_to_missing_shard(tmp_path: Path) -> None:
    case, directory_file, _ = fixture_copy(tmp_path)
    _, _, doc = header_of(directory_file)
    lost = doc["BlockFilenames"][1]
    (directory_file.parent / lost).unlink()
    with Directory.open(str(directory_file), "r+") as w:
        raises_unchanged(directory_file.parent, MissingShardError,
                         lambda: w.write_block(np.ones((64, 64, 64), np.uint16), 64, 0, 0), lost)


# -- read-only volumes ---------------------------------------------------------------------------


def test_write_to_read_only_volume(tmp_path: Path) -> None:
    d, data = make_volume(tmp_path)
    with Directory.open(d.directory_filename, "r") as r:
        block = np.ones((8, 8, 16), np.uint16)
        info = raises_unchanged(tmp_path, ReadOnlyError, lambda: r.write_block(block, 0, 0, 0),
                                d.directory_filename, "r+")
        assert isinstance(info.value, PermissionError)
        raises_unchanged(tmp_path, ReadOnlyError, lambda: r.__setitem__((slice(0, 8), slice(0, 8), slice(0, 16)),
                                                                         block), d.directory_filename)
        np.testing.assert_array_equal(r[...], data, strict=True)


def test_write_to_read_only_fixture(tmp_path: Path) -> None:
    case, directory_file, _ = fixture_copy(tmp_path)
    with Directory.open(str(directory_file)) as r:
        raises_unchanged(directory_file.parent, ReadOnlyError,
                         lambda: r.write_block(np.zeros((64, 64, 64), np.uint16), 0, 0, 0), str(directory_file))


def _open_as_nobody(path: str, conn: Any) -> None:
    """Body of a forked child: drop root, then try to open the volume for writing and for reading."""
    try:
        os.setgroups([])
        os.setgid(65534)
        os.setuid(65534)
        results = []
        try:
            Directory.open(path, "r+").close()
            results.append(("opened", ""))
        except BaseException as exc:  # reported to the parent, which asserts on it
            results.append((type(exc).__name__, str(exc)))
        with Directory.open(path, "r") as r:
            results.append(("read", int(r[...].astype(np.int64).sum())))
        conn.send(results)
    except BaseException:
        conn.send([("child failed", traceback.format_exc())])
    finally:
        conn.close()


def test_open_for_writing_without_permission() -> None:
    with tempfile.TemporaryDirectory(prefix="blockfs-perm-") as tmp:
        folder = Path(tmp)
        folder.chmod(0o755)
        d, data = make_volume(folder)
        for p in folder.iterdir():
            p.chmod(0o444)
        before = snapshot(folder)
        if os.geteuid() != 0:
            with pytest.raises(ReadOnlyError) as info:
                Directory.open(d.directory_filename, "r+")
            assert d.directory_filename in str(info.value)
            with Directory.open(d.directory_filename) as r:
                np.testing.assert_array_equal(r[...], data, strict=True)
        else:
            # Root may write anything: the check runs in a child that has given up root.
            ctx = multiprocessing.get_context("fork")
            parent_end, child_end = ctx.Pipe(duplex=False)
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*fork.*", category=DeprecationWarning)
                child = ctx.Process(target=_open_as_nobody, args=(d.directory_filename, child_end))
                child.start()
            child_end.close()
            assert parent_end.poll(60), "the child did not answer"
            results = parent_end.recv()
            child.join(30)
            assert child.exitcode == 0
            (kind, message), *rest = results
            assert kind == "ReadOnlyError", results
            assert d.directory_filename in message
            assert rest == [("read", int(data.astype(np.int64).sum()))]
        assert snapshot(folder) == before
        for p in folder.iterdir():
            p.chmod(stat.S_IRUSR | stat.S_IWUSR)


# -- region writes -------------------------------------------------------------------------------


@pytest.mark.parametrize("key", [
    (slice(0, 8), slice(0, 8), slice(0, 15)),      # ends inside a block
    (slice(1, 9), slice(0, 8), slice(0, 16)),      # starts inside a block
    (slice(0, 8), slice(4, 12), slice(16, 32)),
    (slice(0, 16), slice(0, 8), slice(0, 39)),     # one short of the volume's edge
    (slice(0, 8, 2), slice(0, 8), slice(0, 16)),   # step 2
    (slice(7, None, -1), slice(0, 8), slice(0, 16)),  # reversed
    (0, slice(0, 8), slice(0, 16)),                # an integer collapses an axis
    (Ellipsis, 5),
])
def test_region_write_not_block_aligned(tmp_path: Path, key: Any) -> None:
    d, data = make_volume(tmp_path)
    with Directory.open(d.directory_filename, "r+") as w:
        value = np.ones(np.zeros(w.shape)[key].shape, np.uint16)
        raises_unchanged(tmp_path, RegionError, lambda: w.__setitem__(key, value), d.directory_filename,
                         "8x8x16", "grid")
        np.testing.assert_array_equal(w[...], data, strict=True)


def test_region_write_of_wrong_shape(tmp_path: Path) -> None:
    d, data = make_volume(tmp_path)
    with Directory.open(d.directory_filename, "r+") as w:
        before = snapshot(tmp_path)
        with pytest.raises(ValueError):
            w[0:8, 0:8, 0:16] = np.ones((8, 8, 15), np.uint16)
        assert snapshot(tmp_path) == before


# -- entry overflow ------------------------------------------------------------------------------


def test_entry_overflow(tmp_path: Path) -> None:
    path = str(tmp_path / "tiny.blockfs")
    rng = np.random.default_rng(8)
    blocks = [rng.integers(0, 256, (16, 16, 16), dtype=np.uint8) for _ in range(3)]  # incompressible
    with Directory(48, 16, 16, "uint8", path, n_filenames=1, x_block_size=16, y_block_size=16, z_block_size=16,
                   n_offset_bits=12).create() as d:
        assert d.n_offset_bits == 12
        d.write_block(blocks[0], 0, 0, 0)  # offset 0: fits
        shard = d.block_filenames[0]
        assert os.path.getsize(shard) >= 1 << 12

        # A new block: its offset (past the first block's bytes) needs 13 bits.
        info = raises_unchanged(tmp_path, EntryOverflowError, lambda: d.write_block(blocks[1], 16, 0, 0),
                                shard, "offset", "12 bits")
        assert isinstance(info.value, OverflowError)
        # A rewrite of the first block: its entry keeps pointing at the old copy.
        raises_unchanged(tmp_path, EntryOverflowError, lambda: d.write_block(blocks[2], 0, 0, 0), shard)
        # Through a region write as well.
        raises_unchanged(tmp_path, EntryOverflowError, lambda: d.__setitem__((Ellipsis, slice(32, 48)), blocks[2]),
                         shard)

        np.testing.assert_array_equal(d.read_block(0, 0, 0), blocks[0], strict=True)
        assert not d.read_block(16, 0, 0).any()
        assert not d.read_block(32, 0, 0).any()
    with Directory.open(path) as r:
        np.testing.assert_array_equal(r[:, :, :16], blocks[0], strict=True)
        assert not r[:, :, 16:].any()


def test_entry_overflow_of_size_bits(tmp_path: Path) -> None:
    """12 size bits hold the 4090 voxel bytes of a block, not blosc's copy of it with its 16-byte header."""
    path = str(tmp_path / "narrow.blockfs")
    block = np.random.default_rng(9).integers(0, 256, (2, 5, 409), dtype=np.uint8)  # incompressible
    with Directory(409, 5, 2, "uint8", path, n_filenames=1, x_block_size=409, y_block_size=5, z_block_size=2,
                   n_size_bits=12).create() as d:
        raises_unchanged(tmp_path, EntryOverflowError, lambda: d.write_block(block, 0, 0, 0), "size", "12 bits")
        assert not d.read_block(0, 0, 0).any()


def test_size_bits_that_cannot_hold_a_block_are_refused(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgumentError) as info:
        Directory(16, 16, 16, "uint8", str(tmp_path / "narrow.blockfs"), n_filenames=1, x_block_size=16,
                  y_block_size=16, z_block_size=16, n_size_bits=8)
    assert "NSizeBits is 8" in str(info.value) and "4096 bytes" in str(info.value) and ">= 13" in str(info.value)
    assert list(tmp_path.iterdir()) == []


# -- constructor arguments -----------------------------------------------------------------------


@pytest.mark.parametrize("kwargs, value", [
    (dict(x_extent=0), "0"), (dict(y_extent=-5), "-5"), (dict(z_extent=2.5), "2.5"),
    (dict(x_block_size=0), "0"), (dict(n_filenames=0), "0"), (dict(block_filenames=[]), "[]"),
    (dict(n_offset_bits=40, n_size_bits=40), "80"), (dict(x_stride=0), "0"),
])
def test_bad_constructor_arguments(tmp_path: Path, kwargs: dict[str, Any], value: str) -> None:
    args: dict[str, Any] = dict(x_extent=10, y_extent=10, z_extent=10, dtype="uint8",
                                directory_filename=str(tmp_path / "args.blockfs"))
    args.update(kwargs)
    with pytest.raises(ValueError) as info:
        Directory(**args)
    assert value in str(info.value)
    assert list(tmp_path.iterdir()) == []


def test_corrupted_byte_in_a_new_volume(tmp_path: Path) -> None:
    d, data = make_volume(tmp_path, n_filenames=1)
    _, _, doc = header_of(Path(d.directory_filename))
    offset, size = rewrite_entry(Path(d.directory_filename), 0)
    shard = Path(d.block_filenames[0])
    pristine = shard.read_bytes()
    for position in sorted(set(range(0, size, max(1, size // 40))) | set(range(16)) | {size - 1}):
        damaged = bytearray(pristine)
        damaged[offset + position] ^= 0x5A
        shard.write_bytes(bytes(damaged))
        with Directory.open(d.directory_filename) as r:
            try:
                block = r.read_block(0, 0, 0)
            except CorruptBlockError as exc:
                assert str(shard) in str(exc)
            else:
                assert block.shape == (8, 8, 16) and block.dtype == np.dtype("uint16")
    shard.write_bytes(pristine)
    with Directory.open(d.directory_filename) as r:
        np.testing.assert_array_equal(r[...], data, strict=True)


@pytest.mark.parametrize("dtype", ["a", "a4", "<a8", "(2,)a4", "u2,a4"])
def test_deprecated_bytes_code_is_refused_without_a_warning(tmp_path: Path, dtype: str) -> None:
    """numpy parses 'a' with a DeprecationWarning; blockfs refuses it before numpy sees it."""
    with warnings.catch_warnings(record=True) as caught, pytest.raises(UnsupportedDTypeError, match="'a' for bytes"):
        warnings.simplefilter("always")
        Directory(10, 10, 10, dtype, str(tmp_path / "dtype.blockfs"))
    assert caught == []
