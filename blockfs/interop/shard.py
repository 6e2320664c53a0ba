"""The zarr v3 ``sharding_indexed`` layout: inner chunks back to back, then an index of
(offset, nbytes) uint64 pairs per inner chunk in C order, then the index's CRC32C (the
``bytes`` + ``crc32c`` index codecs). A missing inner chunk has offset and nbytes 2**64 - 1.
"""

from __future__ import annotations

import crc32c
import numpy as np

from ..errors import CorruptBlockError

MISSING = np.uint64(2**64 - 1)
CRC_BYTES = 4


def encode_shard(chunks: dict[int, bytes], n_inner: int) -> list[bytes]:
    """The pieces of a shard file (index at the end) holding ``chunks`` by C-order position."""
    index = np.full((n_inner, 2), MISSING, "<u8")
    pieces, offset = [], 0
    for position in sorted(chunks):
        data = chunks[position]
        index[position] = offset, len(data)
        pieces.append(data)
        offset += len(data)
    raw = index.tobytes()
    return [*pieces, raw, crc32c.crc32c(raw).to_bytes(CRC_BYTES, "little")]


def decode_index(shard: bytes, n_inner: int, location: str, checksum: bool, where: str) -> np.ndarray:
    """(offset, nbytes) of each inner chunk of a shard, checked against the index's CRC32C."""
    size = n_inner * 16 + (CRC_BYTES if checksum else 0)
    if len(shard) < size:
        raise CorruptBlockError(f"{where}: {len(shard)} bytes is too short for a shard index of {n_inner} chunks.")
    raw = shard[-size:] if location == "end" else shard[:size]
    index = np.frombuffer(raw[:n_inner * 16], "<u8").reshape(n_inner, 2)
    if checksum and crc32c.crc32c(raw[:n_inner * 16]).to_bytes(CRC_BYTES, "little") != raw[n_inner * 16:]:
        raise CorruptBlockError(f"{where}: the shard index fails its CRC32C; the shard is damaged.")
    return index


def inner_chunk(shard: bytes, index: np.ndarray, position: int) -> bytes | None:
    """The bytes of the inner chunk at C-order ``position``; None if missing."""
    offset, nbytes = index[position]
    if offset == MISSING and nbytes == MISSING:
        return None
    return shard[int(offset):int(offset) + int(nbytes)]
