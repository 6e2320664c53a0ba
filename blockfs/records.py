"""Block records: a checksummed header written just before each block's payload in its shard.

The index entry points at the payload, so readers of plain blockfs 1.0.0 see exactly the bytes
they expect; the record lets a reader verify a block's bytes and position, and lets ``repair``
rebuild the index from the shards alone. See docs/FORMAT.md, "Extension: block records".

    offset size type    meaning
    0      4    bytes   magic 42 46 52 43 ("BFRC")
    4      2    uint16  record version (1)
    6      2    uint16  header size in bytes (32)
    8      8    uint64  entry index of the block
    16     8    uint64  payload length in bytes
    24     4    uint32  CRC32C of the payload
    28     4    uint32  CRC32C of header bytes 0-27
"""

from __future__ import annotations

import mmap
import struct
from collections.abc import Iterator
from dataclasses import dataclass

import crc32c

from .errors import ChecksumError

MAGIC = b"BFRC"
VERSION = 1
HEADER = struct.Struct("<4sHHQQII")
HEADER_SIZE = HEADER.size
_CHECKED = HEADER_SIZE - 4
#: JSON metadata key announcing that every block in the volume has a record.
METADATA_KEY = "BlockfsRecords"
METADATA_VALUE = {"version": VERSION, "header_size": HEADER_SIZE, "checksum": "crc32c"}


def checksum(data: bytes | memoryview, release_gil: bool = False) -> int:
    """CRC32C of ``data``, keeping the GIL unless told: hashing a block takes microseconds, less than
    handing the GIL to another thread and waiting to get it back (which stalls parallel reads); threads
    that do little else, such as scans of whole shards, hash in parallel with ``release_gil``."""
    return crc32c.crc32c(data, gil_release_mode=1 if release_gil else 0)


@dataclass(frozen=True)
class Record:
    """A record header as found in a shard."""

    entry: int
    length: int
    crc: int


def encode(entry: int, payload: bytes | memoryview) -> bytes:
    """The record header for ``payload`` of block ``entry``."""
    head = HEADER.pack(MAGIC, VERSION, HEADER_SIZE, entry, len(payload), checksum(payload), 0)[:_CHECKED]
    return head + struct.pack("<I", checksum(head))


def starts_record(raw: bytes | memoryview) -> bool:
    """Whether ``raw`` begins with the record magic (a record, sound or damaged, starts here)."""
    return bytes(raw[:len(MAGIC)]) == MAGIC


def decode(raw: bytes | memoryview, where: object) -> Record:
    """Parse and check a record header; raise :class:`ChecksumError` if it is not a sound one."""
    if len(raw) < HEADER_SIZE:
        raise ChecksumError(f"{where}: {len(raw)} bytes is too short for a {HEADER_SIZE}-byte block record.")
    magic, version, size, entry, length, crc, head_crc = HEADER.unpack_from(raw)
    if magic != MAGIC:
        raise ChecksumError(f"{where}: no block record here (found {bytes(magic)!r}, expected {MAGIC!r}).")
    if checksum(raw[:_CHECKED]) != head_crc:
        raise ChecksumError(f"{where}: the block record header fails its checksum; the header is damaged.")
    if version != VERSION or size != HEADER_SIZE:
        raise ChecksumError(f"{where}: block record version {version} with header size {size} is not supported.")
    return Record(entry, length, crc)


def verify(raw: bytes | memoryview, entry: int, length: int, where: object) -> memoryview:
    """Check a record header plus payload read from a shard; return the payload."""
    record = decode(raw, where)
    if record.entry != entry or record.length != length:
        raise ChecksumError(f"{where}: the record belongs to entry {record.entry} with {record.length} bytes, "
                            f"but the index expects entry {entry} with {length} bytes; the index or shard is damaged.")
    payload = memoryview(raw)[HEADER_SIZE:HEADER_SIZE + length]
    if len(payload) != length or checksum(payload) != record.crc:
        raise ChecksumError(f"{where}: the block's bytes fail their CRC32C; the shard is damaged.")
    return payload


def _sound_record_at(data: memoryview, position: int, where: str) -> Record | None:
    """The record at ``position`` if its header and payload are both intact."""
    try:
        record = decode(data[position:position + HEADER_SIZE], where)
    except ChecksumError:
        return None
    end = position + HEADER_SIZE + record.length
    if end > len(data) or checksum(data[position + HEADER_SIZE:end], release_gil=True) != record.crc:
        return None
    return record


def scan(data: bytes | mmap.mmap, where: str) -> Iterator[tuple[int, Record | None, int]]:
    """Walk a shard's bytes (``bytes`` or an ``mmap``): yield (offset, record or None, length).

    A sound record with an intact payload yields (its offset, the record, header + payload
    length). Bytes that are not one (a torn tail, damage, data written without records) yield
    (offset, None, length up to the next record magic or the end).
    """
    with memoryview(data) as view:  # slices of a view copy nothing; the view is let go when the walk ends
        position = 0
        while position < len(view):
            record = _sound_record_at(view, position, where)
            if record is None:
                following = data.find(MAGIC, position + 1)
                stop = len(view) if following < 0 else following
                yield position, None, stop - position
                position = stop
            else:
                yield position, record, HEADER_SIZE + record.length
                position += HEADER_SIZE + record.length
