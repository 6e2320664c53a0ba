"""The compatibility surface of ``blockfs.Directory`` that existing pipelines call.

Attributes and their defaults, block geometry helpers (``get_block_size``, ``offsetof``,
``shape``), casting in ``write_block``, lifetime (``with``, ``close`` twice), ``repr``, pickling,
metadata, and ``create(overwrite=True)``.
"""

from __future__ import annotations

import json
import math
import os
import pickle
import struct
from pathlib import Path
from typing import Any

import blosc
import numpy as np
import pytest

from fixtures import copy_volume, fixture_cases, require_fixtures
from helpers import origins_of

import blockfs
from blockfs import BlockCoordinateError, ClosedError, Compression, Directory


def read_header(path: str | Path) -> tuple[int, dict[str, Any]]:
    """(D, JSON object) of a directory file, decoded by hand from FORMAT-NOTES."""
    raw = Path(path).read_bytes()
    magic, json_len, start = struct.unpack_from("<8sII", raw)
    assert magic == b"BlockFS\x00"
    return start, json.loads(raw[16:16 + json_len].decode("utf-8"))


def new_volume(tmp_path: Path, name: str = "v.blockfs", **kwargs: Any) -> Directory:
    """A created volume in ``tmp_path`` (small blocks unless told otherwise)."""
    args: dict[str, Any] = dict(x_extent=30, y_extent=20, z_extent=10, dtype="uint16",
                                directory_filename=str(tmp_path / name), n_filenames=2,
                                x_block_size=8, y_block_size=8, z_block_size=4)
    args.update(kwargs)
    return Directory(**args).create()


# -- defaults ------------------------------------------------------------------------------------


def test_constructor_defaults(tmp_path: Path) -> None:
    path = str(tmp_path / "defaults.blockfs")
    d = Directory(300, 200, 100, "uint16", path)
    assert d.directory_filename == path
    assert (d.x_extent, d.y_extent, d.z_extent) == (300, 200, 100)
    assert d.dtype == np.dtype("uint16")
    assert (d.x_block_size, d.y_block_size, d.z_block_size) == (64, 64, 64)
    assert d.compression is Compression.zstd
    assert d.compression_level == 5
    assert d.metadata == {}
    assert d.writers == []
    n_cpus = os.cpu_count()
    assert len(d.block_filenames) == n_cpus
    assert d.block_filenames == [f"{path}.{i}" for i in range(n_cpus)]
    # Strides as the field writes them: x fastest, then y, then z.
    assert (d.x_stride, d.y_stride, d.z_stride) == (1, math.ceil(300 / 64), math.ceil(300 / 64) * math.ceil(200 / 64))
    # Nothing is on disk before create().
    assert not os.path.exists(path)
    assert not any(os.path.exists(name) for name in d.block_filenames)


def test_create_writes_header_and_empty_shards(tmp_path: Path) -> None:
    d = new_volume(tmp_path, n_filenames=3)
    with d:
        start, doc = read_header(d.directory_filename)
        assert Path(d.directory_filename).read_bytes()[:8] == Directory.HEADER
        assert start == d.directory_offset
        assert doc["BlockFilenames"] == d.block_filenames == [f"{d.directory_filename}.{i}" for i in range(3)]
        for name in d.block_filenames:
            assert os.path.getsize(name) == 0
        assert doc["XExtent"] == 30 and doc["YExtent"] == 20 and doc["ZExtent"] == 10
        assert doc["XBlockSize"] == 8 and doc["YBlockSize"] == 8 and doc["ZBlockSize"] == 4
        assert doc["DType"] == "uint16"
        assert doc["Compression"] == "zstd" and doc["CompressionLvl"] == 5
        assert doc["Version"] == "1.0.0"
        assert (doc["XStride"], doc["YStride"], doc["ZStride"]) == (1, 4, 12)
        assert (doc["NOffsetBits"], doc["NSizeBits"]) == (d.n_offset_bits, d.n_size_bits)


def test_header_constant() -> None:
    assert Directory.HEADER == b"BlockFS\x00"
    assert bytes.fromhex("426C6F636B465300") == Directory.HEADER


def test_public_names() -> None:
    assert blockfs.__version__ == "1.0.0"
    assert [m.name for m in Compression] == ["zstd", "blosclz", "lz4", "lz4hc", "zlib", "snappy"]
    for name in ("FormatError", "UnsupportedDTypeError", "UnsupportedCompressionError", "BlockShapeError",
                 "BlockCoordinateError", "RegionError", "EntryOverflowError", "CorruptBlockError",
                 "MissingShardError", "VolumeExistsError", "ReadOnlyError", "WriterError", "ClosedError"):
        error = getattr(blockfs, name)
        assert issubclass(error, blockfs.BlockfsError), name
        assert any(base.__module__ == "builtins" and base is not Exception for base in error.__mro__[1:-2]), name


def test_size_bits_follow_the_field_rule_and_offsets_have_room(tmp_path: Path) -> None:
    d = new_volume(tmp_path, x_extent=300, y_extent=200, z_extent=100, x_block_size=64, y_block_size=64,
                   z_block_size=64)
    with d:
        block_bytes = 64 ** 3 * 2 + 16
        assert d.n_size_bits == math.floor(math.log2(block_bytes)) + 1
        last = math.ceil(300 / 64) * d.x_stride + math.ceil(200 / 64) * d.y_stride + math.ceil(100 / 64) * d.z_stride
        assert d.n_offset_bits >= math.floor(math.log2(last * block_bytes // 2)) + 1
        assert d.n_offset_bits + d.n_size_bits <= 64


def test_explicit_parameters_are_kept(tmp_path: Path) -> None:
    names = [str(tmp_path / "shard-a"), str(tmp_path / "shard-b"), str(tmp_path / "shard-c")]
    d = Directory(50, 40, 30, np.float32, str(tmp_path / "explicit.blockfs"), x_block_size=16, y_block_size=8,
                  z_block_size=4, n_offset_bits=33, n_size_bits=15, directory_offset=4096, block_filenames=names,
                  compression=Compression.lz4, compression_level=2, metadata={"a": 1}).create()
    with d:
        assert d.dtype == np.dtype("float32")
        assert d.block_filenames == names
        assert all(os.path.exists(n) for n in names)
        assert (d.n_offset_bits, d.n_size_bits) == (33, 15)
        assert d.directory_offset == 4096
        assert d.compression is Compression.lz4 and d.compression_level == 2
        start, doc = read_header(d.directory_filename)
        assert start == 4096
        assert doc["Compression"] == "lz4" and doc["CompressionLvl"] == 2
        assert doc["a"] == 1
        data = np.random.default_rng(1).random((30, 40, 50), dtype=np.float32)
        d[...] = data
        np.testing.assert_array_equal(d[...], data, strict=True)
    with Directory.open(str(tmp_path / "explicit.blockfs")) as again:
        assert again.directory_offset == 4096
        assert (again.n_offset_bits, again.n_size_bits) == (33, 15)
        np.testing.assert_array_equal(again[...], data, strict=True)


def test_compression_given_by_name(tmp_path: Path) -> None:
    with new_volume(tmp_path, compression="zlib", compression_level=0) as d:
        assert d.compression is Compression.zlib
        assert d.compression_level == 0


# -- geometry ------------------------------------------------------------------------------------


def test_shape_is_zyx(tmp_path: Path) -> None:
    with new_volume(tmp_path) as d:
        assert d.shape == (10, 20, 30)
        assert d[...].shape == (10, 20, 30)
        assert d[:, :, :].shape == (10, 20, 30)
        assert np.asarray(d).shape == (10, 20, 30)
        assert d.read_block(0, 0, 0).shape == (4, 8, 8)


def test_get_block_size_at_edges(tmp_path: Path) -> None:
    with new_volume(tmp_path, x_extent=100, y_extent=70, z_extent=50, x_block_size=64, y_block_size=32,
                    z_block_size=16) as d:
        assert d.get_block_size(0, 0, 0) == (16, 32, 64)
        assert d.get_block_size(64, 0, 0) == (16, 32, 36)
        assert d.get_block_size(0, 64, 0) == (16, 6, 64)
        assert d.get_block_size(0, 0, 48) == (2, 32, 64)
        assert d.get_block_size(64, 64, 48) == (2, 6, 36)
        for x, y, z in origins_of(d):
            assert d.read_block(x, y, z).shape == d.get_block_size(x, y, z)
        for bad in ((1, 0, 0), (128, 0, 0), (0, 96, 0), (0, 0, 64), (-64, 0, 0)):
            with pytest.raises(BlockCoordinateError):
                d.get_block_size(*bad)


def test_get_block_size_one_voxel_edges(tmp_path: Path) -> None:
    with new_volume(tmp_path, x_extent=65, y_extent=33, z_extent=17, x_block_size=64, y_block_size=32,
                    z_block_size=16) as d:
        assert d.get_block_size(64, 32, 16) == (1, 1, 1)


@pytest.mark.parametrize("strides", [None, (1, 4, 12), (12, 3, 1), (3, 36, 1), (1, 5, 100)])
def test_offsetof_arithmetic(tmp_path: Path, strides: tuple[int, int, int] | None) -> None:
    kwargs: dict[str, Any] = {}
    if strides is not None:
        kwargs = dict(x_stride=strides[0], y_stride=strides[1], z_stride=strides[2])
    d = new_volume(tmp_path, n_filenames=3, **kwargs)
    with d:
        sx, sy, sz = d.x_stride, d.y_stride, d.z_stride
        if strides is not None:
            assert (sx, sy, sz) == strides
        entry_size = math.ceil((d.n_offset_bits + d.n_size_bits) / 8)
        seen = set()
        for x, y, z in origins_of(d):
            e = (x // 8) * sx + (y // 8) * sy + (z // 4) * sz
            assert d.offsetof(x, y, z) == d.directory_offset + e * entry_size
            seen.add(e)
        assert len(seen) == len(origins_of(d))

        # Every block reads back what was written, and the entry at offsetof() points at it.
        rng = np.random.default_rng(7)
        expected = rng.integers(0, 60000, d.shape, dtype=np.uint16)
        for x, y, z in origins_of(d):
            bz, by, bx = d.get_block_size(x, y, z)
            d.write_block(expected[z:z + bz, y:y + by, x:x + bx], x, y, z)
        np.testing.assert_array_equal(d[...], expected, strict=True)

        index = Path(d.directory_filename).read_bytes()
        _, doc = read_header(d.directory_filename)
        for x, y, z in origins_of(d):
            at = d.offsetof(x, y, z)
            value = int.from_bytes(index[at:at + entry_size], "little")
            offset = value & ((1 << d.n_offset_bits) - 1)
            size = (value >> d.n_offset_bits) & ((1 << d.n_size_bits) - 1)
            e = (at - d.directory_offset) // entry_size
            shard = Path(d.block_filenames[e % len(doc["BlockFilenames"])]).read_bytes()
            raw = blosc.decompress(shard[offset:offset + size])
            bz, by, bx = d.get_block_size(x, y, z)
            np.testing.assert_array_equal(np.frombuffer(raw, np.uint16).reshape(bz, by, bx),
                                          expected[z:z + bz, y:y + by, x:x + bx])


# -- writing -------------------------------------------------------------------------------------


def test_write_block_casts_float64(tmp_path: Path) -> None:
    with new_volume(tmp_path) as d:
        block = np.arange(4 * 8 * 8, dtype=np.float64).reshape(4, 8, 8) * 100.0
        d.write_block(block, 8, 0, 4)
        got = d.read_block(8, 0, 4)
        assert got.dtype == np.dtype("uint16")
        np.testing.assert_array_equal(got, block.astype(np.uint16), strict=True)


def test_write_block_casts_int_list(tmp_path: Path) -> None:
    with new_volume(tmp_path, x_extent=3, y_extent=2, z_extent=2, x_block_size=4, y_block_size=4,
                    z_block_size=4, dtype="uint8") as d:
        values = [[[1, 2, 3], [4, 5, 6]], [[7, 8, 9], [10, 11, 255]]]
        d.write_block(values, 0, 0, 0)
        got = d.read_block(0, 0, 0)
        assert got.dtype == np.dtype("uint8")
        np.testing.assert_array_equal(got, np.array(values, np.uint8), strict=True)


def test_write_block_accepts_non_contiguous_input(tmp_path: Path) -> None:
    with new_volume(tmp_path) as d:
        big = np.arange(8 * 16 * 16, dtype=np.uint16).reshape(8, 16, 16)
        view = big[::2, ::2, ::2]
        d.write_block(view, 0, 0, 0)
        np.testing.assert_array_equal(d.read_block(0, 0, 0), view, strict=True)
        transposed = np.arange(8 * 8 * 4, dtype=np.uint16).reshape(8, 8, 4).T
        d.write_block(transposed, 8, 8, 4)
        np.testing.assert_array_equal(d.read_block(8, 8, 4), transposed, strict=True)


def test_region_write_broadcasts_a_scalar(tmp_path: Path) -> None:
    with new_volume(tmp_path) as d:
        d[0:4, 0:16, 8:30] = 7
        expected = np.zeros(d.shape, np.uint16)
        expected[0:4, 0:16, 8:30] = 7
        np.testing.assert_array_equal(d[...], expected, strict=True)


def test_unwritten_blocks_read_as_zeros(tmp_path: Path) -> None:
    with new_volume(tmp_path, dtype="float32") as d:
        got = d[...]
        assert got.dtype == np.dtype("float32")
        assert not got.any()
        assert not d.read_block(24, 16, 8).any()


# -- lifetime ------------------------------------------------------------------------------------


def test_context_manager_and_close_twice(tmp_path: Path) -> None:
    data = np.random.default_rng(3).integers(0, 1000, (10, 20, 30), dtype=np.uint16)
    with new_volume(tmp_path) as d:
        d[...] = data
    d.close()
    d.close()
    np.testing.assert_array_equal(d[...], data, strict=True)  # reads outlive close(), as in earlier releases
    with pytest.raises(ClosedError, match="r\\+"):
        d.write_block(data[:8, :8, :8], 0, 0, 0)
    with Directory.open(d.directory_filename) as reader:
        np.testing.assert_array_equal(reader[...], data, strict=True)
    reader.close()
    assert reader[0, 0, 0] == data[0, 0, 0]


def test_context_manager_returns_the_directory(tmp_path: Path) -> None:
    d = new_volume(tmp_path)
    with d as entered:
        assert entered is d


def test_repr(tmp_path: Path) -> None:
    with new_volume(tmp_path, dtype="float32") as d:
        text = repr(d)
        assert d.directory_filename in text
        assert str(d.shape) in text
        assert "float32" in text
    with Directory.open(d.directory_filename) as reader:
        text = repr(reader)
        assert d.directory_filename in text and "(10, 20, 30)" in text and "float32" in text


def test_pickle_read_only_directory(tmp_path: Path) -> None:
    data = np.random.default_rng(4).integers(0, 5000, (10, 20, 30), dtype=np.uint16)
    with new_volume(tmp_path) as d:
        d[...] = data
    with Directory.open(d.directory_filename, "r") as reader:
        copy = pickle.loads(pickle.dumps(reader))
        try:
            assert copy.directory_filename == reader.directory_filename
            assert copy.shape == reader.shape and copy.dtype == reader.dtype
            np.testing.assert_array_equal(copy[...], data, strict=True)
            np.testing.assert_array_equal(copy[3:7, ::-3, 5], reader[3:7, ::-3, 5], strict=True)
        finally:
            copy.close()


def test_pickle_of_fixture(tmp_path: Path) -> None:
    folder = require_fixtures()
    case = fixture_cases()[0]
    with Directory.open(str(folder / case["directory_file"])) as reader:
        copy = pickle.loads(pickle.dumps(reader, protocol=pickle.HIGHEST_PROTOCOL))
        with copy:
            np.testing.assert_array_equal(copy[...], np.load(folder / case["expected_array"]), strict=True)


# -- metadata and re-creation --------------------------------------------------------------------


def test_metadata_round_trip(tmp_path: Path) -> None:
    metadata = {"voxel_size_um": [1.8, 1.8, 2.0], "sample": "mouse brain", "channel": 2,
                "nested": {"objective": "4x", "tiles": [[0, 0], [1, 0]]}, "flag": True, "none": None,
                "unicode": "µm"}
    with new_volume(tmp_path, metadata=metadata) as d:
        assert d.metadata == metadata
    with Directory.open(d.directory_filename) as reader:
        assert reader.metadata == metadata
    _, doc = read_header(d.directory_filename)
    for key, value in metadata.items():
        assert doc[key] == value


def test_metadata_is_a_copy(tmp_path: Path) -> None:
    metadata = {"a": 1}
    with new_volume(tmp_path, metadata=metadata) as d:
        metadata["a"] = 2
        d.metadata["b"] = 3
        assert d.metadata == {"a": 1}


@pytest.mark.parametrize("metadata", [{"XExtent": 5}, {"arr": object()}, ["not", "a", "dict"]])
def test_bad_metadata_is_refused(tmp_path: Path, metadata: Any) -> None:
    with pytest.raises(ValueError):
        Directory(10, 10, 10, "uint8", str(tmp_path / "m.blockfs"), metadata=metadata)
    assert not os.path.exists(tmp_path / "m.blockfs")


def test_fixture_metadata_and_attributes() -> None:
    folder = require_fixtures()
    for case in fixture_cases():
        with Directory.open(str(folder / case["directory_file"])) as d:
            assert d.metadata == case["metadata"]
            assert d.compression is Compression[case["compression"]]
            assert d.compression_level == case["compression_level"]
            assert d.block_filenames == case["block_files"]
            assert d.shape == tuple(case["shape_zyx"])
            assert (d.z_block_size, d.y_block_size, d.x_block_size) == tuple(case["block_size_zyx"])
            start, doc = read_header(d.directory_filename)
            assert d.directory_offset == start
            assert (d.n_offset_bits, d.n_size_bits) == (doc["NOffsetBits"], doc["NSizeBits"])
            assert (d.x_stride, d.y_stride, d.z_stride) == (doc["XStride"], doc["YStride"], doc["ZStride"])


def test_reopen_preserves_metadata_and_bit_widths(tmp_path: Path) -> None:
    for i, widths in enumerate([(None, None), (40, 24), (20, 20)]):
        d = new_volume(tmp_path, name=f"w{i}.blockfs", n_offset_bits=widths[0], n_size_bits=widths[1],
                       metadata={"run": i})
        with d:
            d.write_block(np.full((4, 8, 8), i + 1, np.uint16), 0, 0, 0)
            chosen = (d.n_offset_bits, d.n_size_bits)
            if widths[0] is not None:
                assert chosen == widths
        for mode in ("r", "r+"):
            with Directory.open(d.directory_filename, mode) as again:
                assert (again.n_offset_bits, again.n_size_bits) == chosen
                assert again.metadata == {"run": i}
                assert again.directory_offset == d.directory_offset
                assert again.block_filenames == d.block_filenames
                assert (again.x_stride, again.y_stride, again.z_stride) == (d.x_stride, d.y_stride, d.z_stride)
                assert again.compression is d.compression and again.compression_level == d.compression_level
                assert (again.read_block(0, 0, 0) == i + 1).all()


def test_create_overwrite_replaces_the_volume(tmp_path: Path) -> None:
    path = str(tmp_path / "again.blockfs")
    with new_volume(tmp_path, name="again.blockfs", metadata={"generation": 1}) as d:
        d[...] = np.full(d.shape, 1234, np.uint16)
    shard_sizes = [os.path.getsize(n) for n in d.block_filenames]
    assert all(shard_sizes)

    fresh = Directory(30, 20, 10, "uint16", path, n_filenames=2, x_block_size=8, y_block_size=8, z_block_size=4,
                      metadata={"generation": 2})
    with fresh.create(overwrite=True):
        assert not fresh[...].any()
        assert not fresh.read_block(0, 0, 0).any()
        assert fresh.metadata == {"generation": 2}
        assert all(os.path.getsize(n) == 0 for n in fresh.block_filenames)
        fresh.write_block(np.full((4, 8, 8), 9, np.uint16), 8, 8, 4)
    with Directory.open(path) as reader:
        assert reader.metadata == {"generation": 2}
        expected = np.zeros(reader.shape, np.uint16)
        expected[4:8, 8:16, 8:16] = 9
        np.testing.assert_array_equal(reader[...], expected, strict=True)


def test_create_overwrite_with_another_layout(tmp_path: Path) -> None:
    path = str(tmp_path / "relayout.blockfs")
    with new_volume(tmp_path, name="relayout.blockfs") as d:
        d[...] = 5
    with Directory(12, 12, 12, "float32", path, n_filenames=2, x_block_size=4, y_block_size=4,
                   z_block_size=4).create(overwrite=True) as fresh:
        assert not fresh[...].any()
    with Directory.open(path) as reader:
        assert reader.shape == (12, 12, 12) and reader.dtype == np.dtype("float32")
        assert not reader[...].any()


def test_copy_of_fixture_keeps_relative_names(tmp_path: Path) -> None:
    require_fixtures()
    case = fixture_cases()[1]
    directory_file = copy_volume(case, tmp_path / "copy")
    with Directory.open(str(directory_file)) as d:
        assert d.block_filenames == case["block_files"]
        assert d.directory_filename == str(directory_file)


class _StoringSink:
    """A write path that stores each block at once through the volume's block store, counting them."""

    writers: list = []
    shards_synced_by_owners = False
    is_owner = True

    def __init__(self, store: Any):
        self.store, self.entries, self.closed = store, [], False

    def submit(self, block: np.ndarray, entry: int) -> None:
        self.entries.append(entry)
        self.store.store(entry, block)

    def close(self) -> None:
        self.closed = True


def test_write_through_hands_every_write_to_the_sink(tmp_path: Path) -> None:
    made = new_volume(tmp_path)
    made.close()
    # As an MPI rank that did not create the volume: a Directory built from the same arguments.
    d = Directory(30, 20, 10, np.uint16, str(tmp_path / "v.blockfs"), n_filenames=2, x_block_size=8,
                  y_block_size=8, z_block_size=4)
    sinks: list[_StoringSink] = []

    def make_sink(store: Any) -> _StoringSink:
        sinks.append(_StoringSink(store))
        return sinks[-1]

    d.write_through(make_sink)
    expected = {}
    for x, y, z in [(0, 0, 0), (8, 16, 4), (24, 16, 8)]:
        block = np.full(d.get_block_size(x, y, z), x + y + z + 1, np.uint16)
        d.write_block(block, x, y, z)
        expected[(x, y, z)] = block
    d.close()
    assert sinks[0].closed and len(sinks[0].entries) == 3
    with Directory.open(str(tmp_path / "v.blockfs")) as back:
        for (x, y, z), block in expected.items():
            np.testing.assert_array_equal(back.read_block(x, y, z), block)


def test_write_through_refuses_a_read_only_volume(tmp_path: Path) -> None:
    new_volume(tmp_path).close()
    d = Directory.open(str(tmp_path / "v.blockfs"))
    with pytest.raises(blockfs.ReadOnlyError, match="read-only"):
        d.write_through(_StoringSink)
    assert d.read_block(0, 0, 0).shape == (4, 8, 8)
