"""Fuzzing the parsers: directory-file headers, block records, shard walks and damaged indexes.

Every bad input must give a blockfs error (a ``BlockfsError``; ``ChecksumError`` for records),
never another exception, a hang or a huge allocation. Each property runs under an address-space
limit (``RLIMIT_AS``, a little above what the process already maps), so an attempt to allocate
gigabytes fails loudly as a MemoryError; allocations are also measured with tracemalloc where
the code under test is small.
"""

from __future__ import annotations

import contextlib
import json
import resource
import struct
import time
import tracemalloc
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import crc32c
import numpy as np
import psutil
import pytest
from hypothesis import given
from hypothesis import strategies as st

import fixtures
from crash_writer import DTYPE, block_content
from helpers import block_origins, examples

from blockfs import BlockfsError, Directory, records
from blockfs import format as fmt
from blockfs.errors import ChecksumError
from blockfs.ops.check import check_volume

pytestmark = pytest.mark.timeout(240)

#: Parser calls are cheap: the whole budget. A damaged volume is read whole per example: a share.
MANY = examples(1)
FEWER = examples(4 / 15)
#: How much more address space than the process already maps a parser may use.
ADDRESS_SPACE_HEADROOM = 1 << 30
#: Largest allocation one call of a small parser may make while traced.
TRACED_LIMIT = 16 << 20
#: Longest one call may take before it counts as a hang.
CALL_SECONDS = 5.0


# -- guards ------------------------------------------------------------------------------------

@pytest.fixture(autouse=True)
def address_space_limit() -> Iterator[None]:
    """Cap the address space for the duration of each test, then restore it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    limit = psutil.Process().memory_info().vms + ADDRESS_SPACE_HEADROOM
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def call(function: Callable[[], Any], expected: type[BaseException] | tuple[type[BaseException], ...],
         traced: bool = False) -> Any:
    """Run ``function``; return its result or the ``expected`` exception it raised.

    Any other exception propagates (and fails the property); so do a call that takes longer
    than CALL_SECONDS and, when ``traced``, one whose allocations peak above TRACED_LIMIT.
    """
    if traced:
        tracemalloc.start()
    start = time.monotonic()
    try:
        result = function()
    except expected as exc:
        result = exc
    finally:
        elapsed = time.monotonic() - start
        if traced:
            _, peak = tracemalloc.get_traced_memory()
            tracemalloc.stop()
    assert elapsed < CALL_SECONDS, f"one call took {elapsed:.1f} s"
    if traced:
        assert peak < TRACED_LIMIT, f"one call allocated {peak / 2**20:.0f} MiB"
    return result


# -- inputs ------------------------------------------------------------------------------------

JSON_TOKENS = [b"-1", b"0", b"1e999", b"-0", b"NaN", b"null", b"true", b'"', b"[", b"]", b"{", b"}", b",", b":",
               b"99999999999999999999", b"4294967296", b"\\u0000", b"\xff", b"\xc3", b"1.5", b'""', b"[]", b"{}"]


@st.composite
def mutated(draw: st.DrawFn, base: bytes, max_ops: int = 4) -> bytes:
    """``base`` with a few flips, overwrites, insertions, deletions, truncations or copies."""
    data = bytearray(base)
    for _ in range(draw(st.integers(1, max_ops))):
        op = draw(st.sampled_from(["flip", "set", "insert", "delete", "truncate", "copy"]))
        pos = draw(st.integers(0, len(data)))
        if op == "flip" and pos < len(data):
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "set" and pos < len(data):
            data[pos] = draw(st.sampled_from([0, 0xFF, 0x7F, 0x80, *b'"{}[],:-09eE', *range(256)]))
        elif op == "insert":
            data[pos:pos] = draw(st.sampled_from(JSON_TOKENS) | st.binary(min_size=1, max_size=8))
        elif op == "delete":
            del data[pos:pos + draw(st.integers(1, 16))]
        elif op == "truncate":
            del data[pos:]
        elif op == "copy" and data:
            start = draw(st.integers(0, len(data) - 1))
            data[pos:pos] = data[start:start + draw(st.integers(1, 32))]
    return bytes(data)


def _layout_headers() -> list[bytes]:
    """Valid directory-file headers of assorted layouts, as this implementation writes them."""
    layouts = [
        {"x_extent": 100, "y_extent": 90, "z_extent": 70, "dtype": "uint16", "n_filenames": 2},
        {"x_extent": 1, "y_extent": 1, "z_extent": 1, "dtype": "uint8", "n_filenames": 1, "x_block_size": 1,
         "y_block_size": 1, "z_block_size": 1, "records": False},
        {"x_extent": 4096, "y_extent": 4096, "z_extent": 2048, "dtype": "float32", "n_filenames": 4,
         "compression": "lz4", "metadata": {"voxel_size": [1.8, 1.8, 2.0], "note": "ü"}},
        {"x_extent": 300, "y_extent": 20, "z_extent": 5, "dtype": "int64", "n_filenames": 3, "x_stride": 7,
         "y_stride": 3, "z_stride": 400, "directory_offset": 2048, "compression": "zlib", "compression_level": 9},
    ]
    headers = []
    for i, kwargs in enumerate(layouts):
        d = Directory(directory_filename=f"/data/v{i}.blockfs", **kwargs)  # type: ignore[arg-type]
        headers.append(fmt.encode_header(d.layout, d.directory_offset))
    folder = fixtures.fixtures_dir()
    for case in fixtures.fixture_cases():
        data = (folder / case["directory_file"]).read_bytes()
        headers.append(data[:int.from_bytes(data[12:16], "little")])
    return headers


HEADERS = _layout_headers()


def _document(header: bytes) -> dict:
    json_len = int.from_bytes(header[8:12], "little")
    return json.loads(header[16:16 + json_len])


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.floats() | st.text(max_size=12)
    | st.integers() | st.sampled_from([0, 1, -1, 9, 10, 63, 64, 65, 2**31, 2**32, 2**40, 2**40 + 1, 2**62, 2**64]),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children, max_size=3),
    max_leaves=8)


#: DType values that make numpy's own dtype parser raise something other than TypeError, or warn.
BAD_DTYPES = {"null": None, "dict": {"": ""}, "unclosed-tuple": "(2,", "comma": ",", "negative-shape": "(-1,)i4",
              "huge-shape": "(99999999999,)i4", "deprecated-alias": "a"}
#: DType values for the structured headers: valid, unsupported and malformed ones.
DTYPE_VALUES = st.sampled_from(["uint8", "uint16", "int32", "float32", "float64", "uint12", "", "float", "S8",
                                "object", "U4", "bool", "complex64", "datetime64", "i4,i4", "V8", ">u2", "<f8",
                                *BAD_DTYPES.values()])


@st.composite
def structured_headers(draw: st.DrawFn) -> bytes:
    """A valid header whose JSON values were replaced, removed or added, with a correct preamble."""
    doc = _document(draw(st.sampled_from(HEADERS)))
    for key in draw(st.lists(st.sampled_from(sorted(doc) + ["BlockfsRecords", "extra"]), max_size=3)):
        if draw(st.booleans()):
            doc[key] = draw(DTYPE_VALUES if key == "DType" else JSON_VALUES)
        else:
            doc.pop(key, None)
    value: Any = doc if draw(st.integers(0, 9)) else draw(JSON_VALUES)
    text = json.dumps(value).encode()
    padding = draw(st.sampled_from([0, 0, 1, 100]))
    return fmt.PREAMBLE.pack(fmt.MAGIC, len(text), fmt.PREAMBLE.size + len(text) + padding) + text + bytes(padding)


RANDOM_HEADERS = st.binary(max_size=600) | st.binary(max_size=200).map(lambda b: fmt.MAGIC + b)
MUTATED_HEADERS = st.sampled_from(HEADERS).flatmap(mutated)


def assert_sane(layout: fmt.Layout, start: int, data: bytes) -> None:
    """An accepted header must describe a usable layout."""
    json_len = int.from_bytes(data[8:12], "little")
    assert start >= fmt.PREAMBLE.size + json_len
    for value in (layout.x_extent, layout.y_extent, layout.z_extent, layout.x_block_size, layout.y_block_size,
                  layout.z_block_size, layout.x_stride, layout.y_stride, layout.z_stride):
        assert isinstance(value, int) and 1 <= value <= fmt.MAX_HEADER_INT
    assert 1 <= layout.entry_size <= 8 and layout.n_offset_bits + layout.n_size_bits <= fmt.MAX_ENTRY_BITS
    assert layout.compression in fmt.COMPRESSORS
    assert layout.block_filenames and all(isinstance(n, str) and n for n in layout.block_filenames)
    assert layout.n_entries >= 1 and layout.max_block_bytes >= 1
    assert start + layout.n_entries * layout.entry_size <= 2**62


# -- directory-file headers -----------------------------------------------------------------

def _decode(data: bytes) -> None:
    result = call(lambda: fmt.decode_header(data, "fuzz.blockfs"), BlockfsError, traced=True)
    if not isinstance(result, BlockfsError):
        assert_sane(*result, data)


@pytest.mark.slow
@MANY
@given(RANDOM_HEADERS)
def test_decode_header_random_bytes(data: bytes) -> None:
    _decode(data)


@pytest.mark.slow
@MANY
@given(MUTATED_HEADERS)
def test_decode_header_mutated(data: bytes) -> None:
    _decode(data)


@pytest.mark.slow
@MANY
@given(structured_headers())
def test_decode_header_structured(data: bytes) -> None:
    _decode(data)


def test_valid_headers_decode() -> None:
    """The seeds of the fuzzing are themselves valid, so mutations start from real headers."""
    assert len(HEADERS) >= 4
    for header in HEADERS:
        layout, start = fmt.decode_header(header, "seed.blockfs")
        assert start == len(header)
        assert_sane(layout, start, header)


def _preamble(text: bytes) -> bytes:
    return fmt.PREAMBLE.pack(fmt.MAGIC, len(text), fmt.PREAMBLE.size + len(text)) + text


def test_decode_header_deeply_nested_json() -> None:
    with pytest.raises(BlockfsError):
        fmt.decode_header(_preamble(b"[" * 100_000), "nested.blockfs")


def test_decode_header_overlong_integer() -> None:
    doc = _document(HEADERS[0])
    text = json.dumps(doc).replace('"XExtent": 100', '"XExtent": ' + "9" * 5000).encode()
    with pytest.raises(BlockfsError):
        fmt.decode_header(_preamble(text), "long.blockfs")


@pytest.mark.parametrize("name", sorted(BAD_DTYPES))
def test_decode_header_rejects_bad_dtype_values(name: str) -> None:
    doc = dict(_document(HEADERS[0]), DType=BAD_DTYPES[name])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(BlockfsError):
            fmt.decode_header(_preamble(json.dumps(doc).encode()), "dtype.blockfs")


def test_decode_header_rejects_compression_level_above_9() -> None:
    doc = dict(_document(HEADERS[0]), CompressionLvl=100)
    with pytest.raises(BlockfsError):
        fmt.decode_header(_preamble(json.dumps(doc).encode()), "level.blockfs")


# -- Directory.open on damaged files --------------------------------------------------------

@pytest.fixture(scope="module")
def volumes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Small volumes, with and without records, every block written once."""
    folder = tmp_path_factory.mktemp("fuzz-volumes")
    made = {}
    for name, with_records in (("records", True), ("plain", False)):
        path = folder / name / "volume.blockfs"
        path.parent.mkdir()
        d = Directory(40, 24, 20, DTYPE, str(path), n_filenames=2, x_block_size=16, y_block_size=16,
                      z_block_size=16, records=with_records).create()
        for origin in block_origins((20, 24, 40), 16):
            d.write_block(block_content(d.layout.entry_index(*origin), 1, d.get_block_size(*origin)), *origin)
        d.close()
        made[name] = path
    return made


def _open(path: Path) -> None:
    def body() -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # a shard name that resolves beside the file
            volume = Directory.open(str(path))
        try:
            assert volume.shape == volume.layout.shape and volume.dtype == volume.layout.dtype
            assert str(path) in repr(volume) and isinstance(volume.metadata, dict)
        finally:
            volume.close()

    call(body, BlockfsError, traced=True)


def _bound_first_entry(data: bytes) -> bytes:
    """Keep the preamble's first-entry offset D within the file (D far beyond it is covered by
    test_open_does_not_allocate_what_the_preamble_claims)."""
    if len(data) < 16:
        return data
    start = int.from_bytes(data[12:16], "little")
    if start <= len(data) + 4096:
        return data
    return data[:12] + (start % (len(data) + 4096)).to_bytes(4, "little") + data[16:]


@pytest.mark.slow
@MANY
@given(data=st.data())
def test_open_damaged_directory_file(tmp_path: Path, volumes: dict[str, Path], data: st.DataObject) -> None:
    sources = [p.read_bytes() for p in volumes.values()] + HEADERS
    content = data.draw(st.sampled_from(sources).flatmap(mutated) | RANDOM_HEADERS | structured_headers())
    path = tmp_path / "damaged.blockfs"
    path.write_bytes(_bound_first_entry(content))
    _open(path)


@pytest.mark.parametrize("claim", ["first-entry-offset", "json-length"])
def test_open_does_not_allocate_what_the_preamble_claims(tmp_path: Path, claim: str) -> None:
    header = bytearray(HEADERS[0])
    header[12:16] = (0xFFFF_FFF0).to_bytes(4, "little")
    if claim == "json-length":
        header[8:12] = (0xFFFF_FF00).to_bytes(4, "little")
    path = tmp_path / "claims.blockfs"
    path.write_bytes(bytes(header))
    _open(path)


# -- records ----------------------------------------------------------------------------------

def _decode_record(raw: bytes) -> records.Record | ChecksumError:
    result = call(lambda: records.decode(raw, "fuzz"), ChecksumError)
    if isinstance(result, records.Record):
        assert raw[:4] == records.MAGIC and crc32c.crc32c(raw[:28]) == struct.unpack_from("<I", raw, 28)[0]
    return result


PAYLOADS = st.binary(max_size=300)
ENTRIES = st.integers(0, 2**64 - 1)


@pytest.mark.slow
@MANY
@given(st.binary(max_size=64) | st.binary(max_size=40).map(lambda b: records.MAGIC + b))
def test_record_decode_random_bytes(raw: bytes) -> None:
    _decode_record(raw)


@pytest.mark.slow
@MANY
@given(st.tuples(ENTRIES, PAYLOADS).flatmap(lambda ep: mutated(records.encode(*ep) + ep[1])))
def test_record_decode_mutated(raw: bytes) -> None:
    _decode_record(raw)


@pytest.mark.slow
@MANY
@given(ENTRIES, PAYLOADS, st.data())
def test_record_any_single_byte_change_is_caught(entry: int, payload: bytes, data: st.DataObject) -> None:
    head = records.encode(entry, payload)
    assert records.decode(head, "fuzz") == records.Record(entry, len(payload), crc32c.crc32c(payload))
    raw = bytearray(head + payload)
    position = data.draw(st.integers(0, len(raw) - 1))
    raw[position] ^= data.draw(st.integers(1, 255))
    if position < records.HEADER_SIZE:
        assert isinstance(_decode_record(bytes(raw)), ChecksumError)
    with pytest.raises(ChecksumError):
        records.verify(bytes(raw), entry, len(payload), "fuzz")


@st.composite
def shards(draw: st.DrawFn) -> tuple[bytes, list[tuple[int, int, bytes]]]:
    """Shard bytes made of sound records, torn records and garbage; and where each sound record is."""
    data = bytearray()
    placed = []
    for kind in draw(st.lists(st.sampled_from(["record", "record", "torn", "garbage", "magic"]), max_size=8)):
        if kind == "record":
            entry, payload = draw(ENTRIES), draw(PAYLOADS)
            placed.append((len(data), entry, payload))
            data += records.encode(entry, payload) + payload
        elif kind == "torn":
            payload = draw(PAYLOADS)
            whole = records.encode(draw(ENTRIES), payload) + payload
            data += whole[:draw(st.integers(0, len(whole) - 1))]
        elif kind == "garbage":
            data += draw(st.binary(min_size=1, max_size=100))
        else:
            data += records.MAGIC
    return bytes(data), placed


def _scan(data: bytes) -> dict[int, records.Record]:
    """Walk ``data``; the stretches must tile it exactly and every record must be sound."""
    stretches = call(lambda: list(records.scan(data, "fuzz")), ())
    position = 0
    found = {}
    for offset, record, length in stretches:
        assert offset == position and length > 0, stretches
        position += length
        if record is None:
            following = data.find(records.MAGIC, offset + 1)
            assert offset + length == (len(data) if following < 0 else following)
        else:
            assert length == records.HEADER_SIZE + record.length
            assert records.decode(data[offset:offset + records.HEADER_SIZE], "fuzz") == record
            assert crc32c.crc32c(data[offset + records.HEADER_SIZE:offset + length]) == record.crc
            found[offset] = record
    assert position == len(data)
    return found


@pytest.mark.slow
@MANY
@given(st.binary(max_size=2000) | shards().map(lambda s: s[0]) | shards().flatmap(lambda s: mutated(s[0], 6)))
def test_scan_tiles_random_and_mutated_shards(data: bytes) -> None:
    _scan(data)


@pytest.mark.slow
@MANY
@given(shards(), st.data())
def test_scan_finds_every_intact_record(shard: tuple[bytes, list[tuple[int, int, bytes]]],
                                        data: st.DataObject) -> None:
    """Flipped bytes lose only the records they hit: every other record is still found."""
    content, placed = shard
    raw = bytearray(content)
    flipped = set(data.draw(st.lists(st.integers(0, max(len(raw) - 1, 0)), max_size=3))) if raw else set()
    for position in flipped:
        raw[position] ^= 0xFF
    found = _scan(bytes(raw))
    for offset, entry, payload in placed:
        if not any(offset <= p < offset + records.HEADER_SIZE + len(payload) for p in flipped):
            assert found.get(offset) == records.Record(entry, len(payload), crc32c.crc32c(payload)), offset


# -- damaged indexes of valid volumes -----------------------------------------------------------

@contextlib.contextmanager
def damaged_index(path: Path, data: st.DataObject) -> Iterator[bytes]:
    """Mutate the entries (not the header) of a volume's index for the duration of the block."""
    pristine = path.read_bytes()
    start = int.from_bytes(pristine[12:16], "little")
    entries = data.draw(mutated(pristine[start:], 4) | st.binary(max_size=len(pristine) - start + 16))
    path.write_bytes(pristine[:start] + entries)
    try:
        yield pristine[:start] + entries
    finally:
        path.write_bytes(pristine)


def read_every_block(path: Path, exact: bool) -> dict[tuple[int, int, int], str]:
    """Read each block alone and the volume as a whole; {origin: "right" | "zeros" | "error" | "other"}.

    Only blockfs errors may be raised. With ``exact``, a block that reads must be right or zeros.
    """
    outcome = {}
    with Directory.open(str(path)) as volume:
        for origin in block_origins(volume.shape, volume.x_block_size):
            right = block_content(volume.layout.entry_index(*origin), 1, volume.get_block_size(*origin))
            got = call(lambda origin=origin: volume.read_block(*origin), BlockfsError)
            if isinstance(got, BlockfsError):
                outcome[origin] = "error"
            elif np.array_equal(got, right):
                outcome[origin] = "right"
            elif not got.any():
                outcome[origin] = "zeros"
            else:
                assert not exact, f"block {origin} read as wrong data"
                outcome[origin] = "other"
        whole = call(lambda: volume[:, :, :], BlockfsError)
        if isinstance(whole, np.ndarray):
            assert "error" not in outcome.values(), "a block that fails alone must fail within a region"
            for x, y, z in outcome:
                dz, dy, dx = volume.get_block_size(x, y, z)
                piece = whole[z:z + dz, y:y + dy, x:x + dx]
                assert np.array_equal(piece, volume.read_block(x, y, z)), (x, y, z)
    return outcome


@pytest.mark.slow
@FEWER
@given(data=st.data())
def test_damaged_index_reads_right_zeros_or_error(volumes: dict[str, Path], data: st.DataObject) -> None:
    with damaged_index(volumes["records"], data):
        read_every_block(volumes["records"], exact=True)


@pytest.mark.slow
@FEWER
@given(data=st.data())
def test_damaged_index_without_records_raises_only_blockfs_errors(volumes: dict[str, Path],
                                                                   data: st.DataObject) -> None:
    with damaged_index(volumes["plain"], data):
        read_every_block(volumes["plain"], exact=False)


@pytest.mark.slow
@examples(1 / 10)
@given(data=st.data())
def test_check_finds_every_block_a_damaged_index_breaks(volumes: dict[str, Path], data: st.DataObject) -> None:
    path = volumes["records"]
    with damaged_index(path, data):
        outcome = read_every_block(path, exact=True)
        report = call(lambda: check_volume(str(path)), ())
        named = {p.block for p in report.problems}
        broken = {origin for origin, how in outcome.items() if how != "right"}
        assert broken <= named, (broken, report.problems)
        assert report.healthy == (not broken), report.problems


def test_damaged_entry_claiming_a_huge_size(tmp_path: Path) -> None:
    doc = dict(_document(HEADERS[1]), NOffsetBits=20, NSizeBits=40, BlockFilenames=["volume.blockfs.0"])
    text = json.dumps(doc).encode()
    entry = (32 | (2**38) << 20).to_bytes(8, "little")
    path = tmp_path / "volume.blockfs"
    path.write_bytes(_preamble(text) + entry)
    (tmp_path / "volume.blockfs.0").write_bytes(bytes(100))
    with Directory.open(str(path)) as volume:
        call(lambda: volume.read_block(0, 0, 0), BlockfsError, traced=True)
