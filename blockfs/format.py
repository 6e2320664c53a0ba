"""The blockfs 1.0.0 on-disk format as constants and pure functions (see docs/FORMAT.md).

The directory file is ``MAGIC``, two little-endian uint32 (the JSON length M and the offset D of
the first entry), M bytes of UTF-8 JSON, then one fixed-size entry per block position. An entry is
a little-endian unsigned integer holding the block's offset in its shard (low bits) and its
compressed size (next bits).
"""

from __future__ import annotations

import json
import math
import os
import re
import stat
import struct
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import marks, records
from .errors import BlockfsError, EntryOverflowError, FormatError, UnsupportedDTypeError

MAGIC = b"BlockFS\x00"
VERSION = "1.0.0"
PREAMBLE = struct.Struct("<8sII")
BLOSC_MAX_OVERHEAD = 16
MAX_ENTRY_BITS = 64
#: Largest integer a header value may hold, so that all arithmetic stays within int64.
MAX_HEADER_INT = 2**40
#: Most bytes c-blosc 1.x puts in one buffer (its BLOSC_MAX_BUFFERSIZE, INT_MAX less the overhead): every
#: block is one such buffer, so no block can hold more voxel bytes.
BLOSC_MAX_BYTES = 2**31 - 1 - BLOSC_MAX_OVERHEAD
#: Most bytes the index may span (D plus every entry position): file offsets and int64 arithmetic keep headroom.
MAX_INDEX_BYTES = 2**62
#: Most bytes a whole volume may hold, so that it can be one array (numpy sizes are int64).
MAX_VOLUME_BYTES = 2**63 - 1
COMPRESSORS = ("zstd", "blosclz", "lz4", "lz4hc", "zlib", "snappy")

FORMAT_KEYS = (
    "XBlockSize", "YBlockSize", "ZBlockSize", "XExtent", "YExtent", "ZExtent", "DType",
    "NOffsetBits", "NSizeBits", "XStride", "YStride", "ZStride", "BlockFilenames",
    "Compression", "CompressionLvl", "Version",
)
#: Keys of this implementation's extensions: an old reader takes them for application metadata.
EXTENSION_KEYS = (records.METADATA_KEY, *marks.KEYS)
RESERVED_KEYS = FORMAT_KEYS + EXTENSION_KEYS
_INT_KEYS = tuple(k for k in FORMAT_KEYS if k not in ("DType", "BlockFilenames", "Compression", "Version"))


#: A field in numpy's deprecated code for bytes ("a4", "<a", "(2,)a8"), which numpy parses with a warning.
_BYTES_ALIAS = re.compile(r"(?:^|,)\s*(?:\([^)]*\))?\s*[<>=|]?a\d*\s*(?:,|$)")


def check_dtype(dtype: Any, where: str) -> np.dtype:
    """Return ``dtype`` as a numpy dtype if blockfs can store it, else raise naming ``where``."""
    if isinstance(dtype, str) and _BYTES_ALIAS.search(dtype):
        raise UnsupportedDTypeError(f"{where}: dtype {dtype!r} is numpy's deprecated code 'a' for bytes, which "
                                    "cannot be stored; use a numeric dtype such as 'uint16'.")
    try:
        dt: np.dtype = np.dtype(dtype)
    except Exception as exc:  # numpy's parser raises TypeError, ValueError or SyntaxError
        raise UnsupportedDTypeError(f"{where}: dtype {dtype!r} is not a numpy dtype ({exc}); "
                                    "use e.g. 'uint16'.") from None
    if dt.kind not in "biufc" or dt.fields is not None or dt.subdtype is not None:
        raise UnsupportedDTypeError(f"{where}: dtype {dt!r} cannot be stored; use a numeric dtype such as 'uint16' "
                                    "or 'float32'.")
    if not dt.isnative and dt.itemsize > 1:
        raise UnsupportedDTypeError(f"{where}: dtype {dt.str!r} is not in native byte order; use "
                                    f"{dt.newbyteorder('=').name!r}.")
    return dt


@dataclass(frozen=True)
class Layout:
    """Everything the directory file's JSON says about a volume."""

    x_extent: int
    y_extent: int
    z_extent: int
    dtype: np.dtype
    x_block_size: int
    y_block_size: int
    z_block_size: int
    n_offset_bits: int
    n_size_bits: int
    x_stride: int
    y_stride: int
    z_stride: int
    block_filenames: tuple[str, ...]
    compression: str
    compression_level: int
    metadata: dict[str, Any] = field(default_factory=dict)
    #: Whether every block's payload is preceded by a checksummed record (an extension).
    records: bool = False
    #: The header's state marks (:mod:`blockfs.marks`): not part of the layout, so not compared.
    marks: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def entry_size(self) -> int:
        """Bytes per index entry."""
        return (self.n_offset_bits + self.n_size_bits + 7) // 8

    @property
    def shape(self) -> tuple[int, int, int]:
        """Volume shape in (z, y, x) order."""
        return (self.z_extent, self.y_extent, self.x_extent)

    @property
    def block_shape(self) -> tuple[int, int, int]:
        """Full block shape in (z, y, x) order."""
        return (self.z_block_size, self.y_block_size, self.x_block_size)

    @property
    def grid(self) -> tuple[int, int, int]:
        """Number of blocks along (z, y, x)."""
        # three axes, which mypy cannot see through zip
        return tuple(-(-n // b) for n, b in zip(self.shape, self.block_shape))  # type: ignore[return-value]

    @property
    def n_entries(self) -> int:
        """Number of entry positions the index can address (largest entry index + 1)."""
        nz, ny, nx = self.grid
        return (nx - 1) * self.x_stride + (ny - 1) * self.y_stride + (nz - 1) * self.z_stride + 1

    @property
    def max_block_bytes(self) -> int:
        """Largest compressed size of one block: its voxels plus blosc's header overhead."""
        return math.prod(self.block_shape) * self.dtype.itemsize + BLOSC_MAX_OVERHEAD

    def entry_index(self, x: int, y: int, z: int) -> int:
        """Entry index of the block whose first voxel is (x, y, z)."""
        return (x // self.x_block_size * self.x_stride + y // self.y_block_size * self.y_stride
                + z // self.z_block_size * self.z_stride)

    def shard_of(self, entry: Any) -> Any:
        """The shard (index into ``block_filenames``) that holds block ``entry`` (an int or an int array)."""
        return entry % len(self.block_filenames)

    def entry_position(self, entry: int, directory_offset: int) -> int:
        """Byte position of entry ``entry`` in a directory file whose entries start at ``directory_offset``."""
        return directory_offset + entry * self.entry_size

    def block_shape_at(self, x: int, y: int, z: int) -> tuple[int, int, int]:
        """Shape (z, y, x) of the block at (x, y, z): full size, truncated at the volume's edges."""
        return (min(self.z_block_size, self.z_extent - z), min(self.y_block_size, self.y_extent - y),
                min(self.x_block_size, self.x_extent - x))

    @property
    def n_blocks(self) -> int:
        """Number of block positions."""
        return math.prod(self.grid)

    def entries_within(self, index_bytes: int) -> int:
        """How many entry positions ``index_bytes`` bytes of entries reach: those after are absent (empty).

        A last entry cut short counts: readers take its missing bytes as zeros.
        """
        return min(self.n_entries, -(-max(0, index_bytes) // self.entry_size))

    def _axes_by_stride(self) -> list[tuple[int, int, int]]:
        """(stride, blocks, axis 0/1/2 for x/y/z) of the axes with more than one block, largest stride first."""
        axes = zip((self.x_stride, self.y_stride, self.z_stride), reversed(self.grid), range(3))
        return sorted((a for a in axes if a[1] > 1), reverse=True)

    def blocks_of(self, entries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(which of ``entries`` number a block position, the first voxels (x, y, z) of those blocks).

        Entries outside [0, n_entries) number none.

        Strides that pass :func:`check_limits` number the blocks in mixed radix, so dividing by each
        stride, the largest first, recovers the block coordinates.
        """
        rest = np.array(entries, np.int64).ravel()
        coords = np.zeros((rest.size, 3), np.int64)
        inside = (rest >= 0) & (rest < self.n_entries)
        for stride, blocks, axis in self._axes_by_stride():
            coords[:, axis], rest = np.divmod(rest, stride)
            inside &= coords[:, axis] < blocks
        inside &= rest == 0
        return inside, coords[inside] * np.array([self.x_block_size, self.y_block_size, self.z_block_size], np.int64)

    def block_entries(self, stop: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(entry index, first voxel (x, y, z)) of every block position whose entry is below ``stop`` (default:
        all), as arrays in entry order; the work and memory are those of ``stop`` entries."""
        entries = np.arange(self.n_entries if stop is None else min(stop, self.n_entries), dtype=np.int64)
        inside, origins = self.blocks_of(entries)
        return entries[inside], origins


def _overlapping_strides(layout: Layout) -> str | None:
    """Why the strides give two block positions one entry (or interleave them), or None if they do not.

    Ordered by stride, each axis must step past every entry the faster axes reach: then entry
    numbers are distinct, and :meth:`Layout.blocks_of` can invert them.
    """
    reach = 0
    for stride, blocks, axis in reversed(layout._axes_by_stride()):
        if stride <= reach:
            return (f"{'XYZ'[axis]}Stride {stride} does not step past entry {reach}, which the axes of smaller "
                    "strides already reach, so the entry numbers of different blocks overlap or interleave")
        reach += stride * (blocks - 1)
    return None


def _limit_broken(layout: Layout, directory_offset: int) -> tuple[str, str] | None:
    """(what is wrong, the header keys at fault) for the first limit of :func:`check_limits` the layout breaks."""
    bits = layout.n_offset_bits + layout.n_size_bits
    block_bytes = layout.max_block_bytes - BLOSC_MAX_OVERHEAD
    block = f"a block of {' x '.join(map(str, layout.block_shape))} (z, y, x) {layout.dtype.name} voxels"
    volume_bytes = math.prod(layout.shape) * layout.dtype.itemsize
    capacity = len(layout.block_filenames) * max(1, (1 << layout.n_offset_bits) // BLOSC_MAX_OVERHEAD)
    overlap = _overlapping_strides(layout)
    if bits > MAX_ENTRY_BITS:
        return (f"NOffsetBits + NSizeBits = {bits} exceeds {MAX_ENTRY_BITS}, the widest entry (8 bytes) there is",
                "NOffsetBits or NSizeBits")
    if block_bytes > BLOSC_MAX_BYTES:
        return (f"{block} is {block_bytes} bytes, more than the {BLOSC_MAX_BYTES} bytes one blosc buffer (one "
                "block) can hold", "block sizes or DType")
    if block_bytes >> layout.n_size_bits:
        return (f"NSizeBits is {layout.n_size_bits}, so a block is at most {(1 << layout.n_size_bits) - 1} bytes, but "
                f"{block} is {block_bytes} bytes uncompressed (that needs NSizeBits >= {block_bytes.bit_length()})",
                "NSizeBits or block sizes")
    if volume_bytes > MAX_VOLUME_BYTES:
        return (f"the volume of {' x '.join(map(str, layout.shape))} (z, y, x) {layout.dtype.name} voxels is "
                f"{volume_bytes} bytes, more than a 64-bit size can count", "extents")
    if overlap is not None:
        return overlap, "strides"
    if directory_offset + layout.n_entries * layout.entry_size > MAX_INDEX_BYTES:
        return (f"its {layout.n_entries} entry positions of {layout.entry_size} bytes would span more than "
                f"2**{MAX_INDEX_BYTES.bit_length() - 1} bytes of index, more than a file offset can address",
                "strides, extents or block sizes")
    if layout.n_blocks > capacity:
        return (f"its {layout.n_blocks} block positions cannot all be written: with NOffsetBits "
                f"{layout.n_offset_bits}, {len(layout.block_filenames)} shard(s) hold at most {capacity} blocks "
                f"(each at least a {BLOSC_MAX_OVERHEAD}-byte blosc header, starting below 2**{layout.n_offset_bits})",
                "NOffsetBits, extents or block sizes")
    return None


def check_limits(layout: Layout, directory_offset: int, where: str, error: type[BlockfsError] = FormatError) -> None:
    """Raise ``error`` naming ``where`` if the layout is one no volume can have (docs/FORMAT.md, section 9.5).

    The limits follow from the format's own arithmetic: an entry is at most 64 bits; a block is one
    c-blosc 1.x buffer, and its uncompressed bytes fit the size field; the volume and the index are
    addressable with 64-bit integers; distinct blocks have distinct entries; and every block
    position can be written, its payload (at least a blosc header, whose 16 bytes are c-blosc's
    BLOSC_MAX_OVERHEAD) starting below 2**NOffsetBits in a shard without overlapping another's.
    """
    broken = _limit_broken(layout, directory_offset)
    if broken is not None:
        reason, keys = broken
        fix = f"the header's {keys} are damaged" if error is FormatError else "choose other values"
        raise error(f"{where}: {reason}; {fix}.")


def default_strides(x_extent: int, y_extent: int, x_block_size: int, y_block_size: int) -> tuple[int, int, int]:
    """Entry strides (x, y, z) as the field writes them: x fastest, then y, then z."""
    y_stride = -(-x_extent // x_block_size)
    return 1, y_stride, y_stride * -(-y_extent // y_block_size)


def field_bit_widths(extents_xyz: tuple[int, int, int], block_sizes_xyz: tuple[int, int, int],
                     strides_xyz: tuple[int, int, int], itemsize: int, n_files: int) -> tuple[int, int]:
    """(NOffsetBits, NSizeBits) by the rule the earlier implementation used."""
    block_bytes = math.prod(block_sizes_xyz) * itemsize + BLOSC_MAX_OVERHEAD
    size_bits = int(math.floor(math.log2(block_bytes))) + 1
    last = sum((n + b - 1) // b * s for n, b, s in zip(extents_xyz, block_sizes_xyz, strides_xyz))
    offset_bits = int(math.floor(math.log2(max(1, last * block_bytes // n_files)))) + 1
    return offset_bits, size_bits


def _axis_sums(n_blocks: int, block: int, extent: int, stride: int, n_files: int) -> tuple[np.ndarray, np.ndarray]:
    """Per residue r of ``(i * stride) % n_files``: how many blocks i lie along one axis, and their sizes' sum."""
    residue = np.arange(n_blocks, dtype=np.int64) * stride % n_files
    sizes = np.minimum(block, extent - np.arange(n_blocks, dtype=np.int64) * block)
    return (np.bincount(residue, minlength=n_files).astype(object),
            np.bincount(residue, weights=sizes, minlength=n_files).astype(np.int64).astype(object))


def _cyclic(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cyclic convolution of two per-residue tables (object arrays: exact Python integers)."""
    full = np.convolve(a, b)
    out: np.ndarray = full[:len(a)].copy()
    out[:len(a) - 1] += full[len(a):]
    return out


def full_write_end(extents_xyz: tuple[int, int, int], block_sizes_xyz: tuple[int, int, int],
                   strides_xyz: tuple[int, int, int], itemsize: int, n_files: int, record_bytes: int) -> int:
    """The largest payload offset one write of every block, each incompressible, can reach in a shard.

    A shard receives, for each block position mapped to it, ``record_bytes`` plus the block's bytes
    plus blosc's overhead; the last payload appended starts that much before the shard's end, at
    the latest just before a payload of the smallest block.
    """
    per_axis = [_axis_sums(-(-n // b), b, n, s, n_files) for n, b, s in zip(extents_xyz, block_sizes_xyz, strides_xyz)]
    counts = _cyclic(_cyclic(per_axis[0][0], per_axis[1][0]), per_axis[2][0])
    voxels = _cyclic(_cyclic(per_axis[0][1], per_axis[1][1]), per_axis[2][1])
    ends = voxels * itemsize + counts * (record_bytes + BLOSC_MAX_OVERHEAD)
    smallest = math.prod(n - (-(-n // b) - 1) * b for n, b in zip(extents_xyz, block_sizes_xyz))
    return max(0, int(max(ends)) - smallest * itemsize - BLOSC_MAX_OVERHEAD)


def default_bit_widths(extents_xyz: tuple[int, int, int], block_sizes_xyz: tuple[int, int, int],
                       strides_xyz: tuple[int, int, int], itemsize: int, n_files: int, with_records: bool
                       ) -> tuple[int, int]:
    """(NOffsetBits, NSizeBits) this implementation writes: exactly the earlier rule's, unless a shard
    could not hold one full write of incompressible blocks (plus their records); then the fewest
    offset bits that can (docs/FORMAT.md, section 9.1)."""
    offset_bits, size_bits = field_bit_widths(extents_xyz, block_sizes_xyz, strides_xyz, itemsize, n_files)
    end = full_write_end(extents_xyz, block_sizes_xyz, strides_xyz, itemsize, n_files,
                         records.HEADER_SIZE if with_records else 0)
    return max(offset_bits, end.bit_length()), size_bits


def encode_header(layout: Layout, directory_offset: int | None = None) -> bytes:
    """The directory file's bytes before the first entry."""
    doc: dict[str, Any] = {key: layout.marks[key] for key in marks.KEYS if key in layout.marks}  # the first keys
    doc.update(layout.metadata)
    doc.update({
        "XBlockSize": layout.x_block_size, "YBlockSize": layout.y_block_size, "ZBlockSize": layout.z_block_size,
        "XExtent": layout.x_extent, "YExtent": layout.y_extent, "ZExtent": layout.z_extent,
        "DType": layout.dtype.name, "NOffsetBits": layout.n_offset_bits, "NSizeBits": layout.n_size_bits,
        "XStride": layout.x_stride, "YStride": layout.y_stride, "ZStride": layout.z_stride,
        "BlockFilenames": list(layout.block_filenames), "Compression": layout.compression,
        "CompressionLvl": layout.compression_level, "Version": VERSION,
    })
    if layout.records:
        doc[records.METADATA_KEY] = records.METADATA_VALUE
    text = json.dumps(doc).encode("utf-8")
    start = PREAMBLE.size + len(text) if directory_offset is None else directory_offset
    if start < PREAMBLE.size + len(text):
        raise FormatError(f"directory_offset {directory_offset} is smaller than the header "
                          f"({PREAMBLE.size + len(text)} bytes); pass directory_offset=None.")
    return PREAMBLE.pack(MAGIC, len(text), start) + text + bytes(start - PREAMBLE.size - len(text))


def read_preamble(data: bytes, path: str) -> tuple[int, int]:
    """(M, D) from the first 16 bytes of a directory file."""
    if len(data) < PREAMBLE.size:
        raise FormatError(f"{path}: {len(data)} bytes is too short for a blockfs directory file "
                          f"(at least {PREAMBLE.size}); is the file truncated?")
    magic, json_len, start = PREAMBLE.unpack_from(data)
    if magic != MAGIC:
        raise FormatError(f"{path}: starts with {magic!r}, not {MAGIC!r}: not a blockfs directory file; "
                          "pass the .blockfs index file, not a shard or another file.")
    if start < PREAMBLE.size + json_len:
        raise FormatError(f"{path}: first entry offset {start} lies inside the {json_len}-byte JSON header; "
                          "the header is damaged.")
    return json_len, start


def decode_header(data: bytes, path: str) -> tuple[Layout, int]:
    """(Layout, D) from a directory file's leading bytes (at least its preamble and JSON)."""
    json_len, start = read_preamble(data, path)
    text = data[PREAMBLE.size:PREAMBLE.size + json_len]
    if len(text) < json_len:
        raise FormatError(f"{path}: the header announces {json_len} bytes of JSON but the file holds only "
                          f"{len(text)}; the file is truncated.")
    try:
        doc = json.loads(text.decode("utf-8"))
    except (ValueError, RecursionError) as exc:  # bad UTF-8 or JSON, absurd nesting or numbers
        raise FormatError(f"{path}: the JSON header does not parse ({str(exc)[:200]}); "
                          "the header is damaged.") from None
    if not isinstance(doc, dict):
        raise FormatError(f"{path}: the JSON header is a {type(doc).__name__}, not an object.")
    missing = [k for k in FORMAT_KEYS if k not in doc and k != "Version"]
    if missing:
        raise FormatError(f"{path}: the JSON header lacks {', '.join(missing)}; not a complete blockfs header.")
    for key in _INT_KEYS:
        value = doc[key]
        if (not isinstance(value, int) or isinstance(value, bool)
                or not (0 if key == "CompressionLvl" else 1) <= value <= MAX_HEADER_INT):
            raise FormatError(f"{path}: {key} is {value!r}; it must be a positive integer "
                              f"below 2**{MAX_HEADER_INT.bit_length()}.")
    names = doc["BlockFilenames"]
    if not isinstance(names, list) or not names or not all(isinstance(n, str) and n for n in names):
        raise FormatError(f"{path}: BlockFilenames is {names!r}; it must be a non-empty list of file names.")
    if doc["CompressionLvl"] > 9:
        raise FormatError(f"{path}: CompressionLvl is {doc['CompressionLvl']}; blosc levels run from 0 to 9.")
    if doc["Compression"] not in COMPRESSORS:
        raise FormatError(f"{path}: Compression is {doc['Compression']!r}; expected one of {', '.join(COMPRESSORS)}.")
    if doc["NOffsetBits"] + doc["NSizeBits"] > MAX_ENTRY_BITS:
        raise FormatError(f"{path}: NOffsetBits + NSizeBits = {doc['NOffsetBits'] + doc['NSizeBits']} exceeds "
                          f"{MAX_ENTRY_BITS}; such entries are not supported.")
    if doc.get("Version", VERSION) != VERSION:
        raise FormatError(f"{path}: Version is {doc['Version']!r}; this blockfs reads {VERSION!r}.")
    has_records = records.METADATA_KEY in doc
    if has_records and doc[records.METADATA_KEY] != records.METADATA_VALUE:
        raise FormatError(f"{path}: {records.METADATA_KEY} is {doc[records.METADATA_KEY]!r}; this blockfs reads "
                          f"{records.METADATA_VALUE!r}. Upgrade blockfs to read this volume.")
    if not isinstance(doc["DType"], str):
        raise FormatError(f"{path}: DType is {doc['DType']!r}; it must be a numpy dtype name such as \"uint16\".")
    try:
        dtype = check_dtype(doc["DType"], path)
    except UnsupportedDTypeError as exc:
        raise FormatError(f"{exc} (the header's DType)") from None
    layout = Layout(
        x_extent=doc["XExtent"], y_extent=doc["YExtent"], z_extent=doc["ZExtent"], dtype=dtype,
        x_block_size=doc["XBlockSize"], y_block_size=doc["YBlockSize"], z_block_size=doc["ZBlockSize"],
        n_offset_bits=doc["NOffsetBits"], n_size_bits=doc["NSizeBits"],
        x_stride=doc["XStride"], y_stride=doc["YStride"], z_stride=doc["ZStride"],
        block_filenames=tuple(names), compression=doc["Compression"], compression_level=doc["CompressionLvl"],
        metadata={k: v for k, v in doc.items() if k not in RESERVED_KEYS}, records=has_records,
        marks={k: doc[k] for k in marks.KEYS if k in doc},
    )
    check_limits(layout, start, path)
    return layout, start


@dataclass(frozen=True)
class DirectoryFile:
    """A directory file's header as found on disk."""

    path: str
    layout: Layout
    json_text: str
    directory_offset: int
    file_size: int
    #: (st_dev, st_ino) of the file the header was read from
    identity: tuple[int, int] = (0, 0)

    @property
    def names(self) -> tuple[str, ...]:
        """Shard names as stored."""
        return self.layout.block_filenames

    @property
    def index_bytes(self) -> int:
        """Bytes from D to the end of the file: the entries present, whatever their number."""
        return max(0, self.file_size - self.directory_offset)

    @property
    def entries_in_file(self) -> int:
        """Entry positions present in the file; those after are absent (never written)."""
        return self.layout.entries_within(self.index_bytes)


_FILE_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
               (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def open_regular(path: str, flags: int = os.O_RDONLY, what: str = "a blockfs directory file",
                 devices: bool = False) -> int:
    """A descriptor, opened with ``flags``, of the regular file (or, with ``devices``, the device) at ``path``;
    anything else is refused as not ``what`` (:class:`FormatError`).

    The file is opened without blocking, so a FIFO is refused at once instead of waiting for a writer.
    """
    fd = os.open(path, flags | os.O_NONBLOCK | os.O_CLOEXEC)
    mode = os.fstat(fd).st_mode
    if not (stat.S_ISREG(mode) or devices and (stat.S_ISCHR(mode) or stat.S_ISBLK(mode))):
        os.close(fd)
        kind = next((name for test, name in _FILE_KINDS if test(mode)), "a special file")
        raise FormatError(f"{path}: is {kind}, not a regular file, so not {what}; pass the volume's .blockfs "
                          "index file, and keep its shards as regular files.")
    os.set_blocking(fd, True)
    return fd


def is_volume(path: str) -> bool:
    """Whether ``path`` is a blockfs directory file (which ``create_volume(overwrite=True)`` replaces)."""
    if not os.path.isfile(path):
        return False
    with open(path, "rb") as f:
        return f.read(len(MAGIC)) == MAGIC


def read_directory_file(path: str | os.PathLike[str]) -> DirectoryFile:
    """The header of the directory file at ``path``: the one header reader of blockfs."""
    path = os.fspath(path)
    with os.fdopen(open_regular(path), "rb") as f:
        head = f.read(PREAMBLE.size)
        json_len, start = read_preamble(head, path)
        info = os.fstat(f.fileno())
        size = info.st_size
        if start > size:
            raise FormatError(f"{path}: the header announces {json_len} bytes of JSON and entries from byte "
                              f"{start}, but the file has {size} bytes; the file is truncated or its header is "
                              "damaged.")
        head += f.read(json_len)
    layout, start = decode_header(head, path)
    return DirectoryFile(path, layout, head[PREAMBLE.size:].decode("utf-8"), start, size,
                         (info.st_dev, info.st_ino))


def pack_entry(layout: Layout, offset: int, size: int, where: str) -> bytes:
    """The bytes of one entry; raise naming the fix if the offset or size does not fit its bits."""
    if offset >> layout.n_offset_bits:
        wider = max(offset.bit_length(), layout.n_offset_bits + 2)
        raise EntryOverflowError(
            f"{where}: block offset {offset} does not fit in the {layout.n_offset_bits} bits of NOffsetBits; the "
            "shard has grown past what the index can address (blocks rewritten many times). Write into a volume "
            f"created with a wider field, Directory(..., n_offset_bits={wider}), e.g. by copying this volume's "
            "blocks into one; nothing of this block was written.")
    if size >> layout.n_size_bits:
        raise EntryOverflowError(
            f"{where}: block size {size} does not fit in the {layout.n_size_bits} bits of NSizeBits; create the "
            f"volume with n_size_bits={size.bit_length()} or more (or leave n_size_bits unset); nothing of this "
            "block was written.")
    return (offset | size << layout.n_offset_bits).to_bytes(layout.entry_size, "little")


def unpack_entry(raw: bytes, layout: Layout) -> tuple[int, int]:
    """(offset, size) of one entry's bytes."""
    value = int.from_bytes(raw, "little")
    return value & ((1 << layout.n_offset_bits) - 1), (value >> layout.n_offset_bits) & ((1 << layout.n_size_bits) - 1)


def unpack_entries(raw: bytes, layout: Layout) -> tuple[np.ndarray, np.ndarray]:
    """(offsets, sizes) as uint64 arrays for consecutive entries in ``raw``."""
    n = len(raw) // layout.entry_size
    padded = np.zeros((n, 8), np.uint8)
    padded[:, :layout.entry_size] = np.frombuffer(raw, np.uint8, n * layout.entry_size).reshape(n, layout.entry_size)
    values = padded.view("<u8").ravel()
    offsets = values & np.uint64((1 << layout.n_offset_bits) - 1)
    sizes = (values >> np.uint64(layout.n_offset_bits)) & np.uint64((1 << layout.n_size_bits) - 1)
    return offsets, sizes


def pack_entries(offsets: np.ndarray, sizes: np.ndarray, layout: Layout) -> bytes:
    """The bytes of consecutive entries; every offset and size must fit its bits."""
    if offsets.size and (int(offsets.max()) >> layout.n_offset_bits or int(sizes.max()) >> layout.n_size_bits):
        raise EntryOverflowError(f"an offset or size does not fit the {layout.n_offset_bits} offset and "
                                 f"{layout.n_size_bits} size bits of the index; copy the volume into one with a "
                                 "larger n_offset_bits=")
    values: np.ndarray = offsets.astype(np.uint64) | (sizes.astype(np.uint64) << np.uint64(layout.n_offset_bits))
    return values.astype("<u8").view(np.uint8).reshape(-1, 8)[:, :layout.entry_size].tobytes()
