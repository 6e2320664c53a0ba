"""A minimal blockfs 1.0.0 reader written only from docs/FORMAT.md (sections 1 to 8).

It shares no code with the ``blockfs`` package, so tests can check the library's output and the
spec against each other. It favours plainness over speed: whole files are read into memory.
"""

from __future__ import annotations

import json
import math
import os
import struct
from typing import Any

import blosc
import numpy as np

MAGIC = bytes.fromhex("426C6F636B465300")
FORMAT_KEYS = frozenset({
    "XExtent", "YExtent", "ZExtent", "XBlockSize", "YBlockSize", "ZBlockSize", "DType",
    "NOffsetBits", "NSizeBits", "XStride", "YStride", "ZStride", "BlockFilenames",
    "Compression", "CompressionLvl", "Version",
})


def _read_shard(name: str, folder: str, cache: dict[str, bytes]) -> bytes:
    """The bytes of shard ``name``; a relative name is taken against ``folder``."""
    path = name if os.path.isabs(name) else os.path.join(folder, name)
    if path not in cache:
        with open(path, "rb") as f:
            cache[path] = f.read()
    return cache[path]


def read_index(directory_path: str | os.PathLike[str]) -> tuple[dict[str, Any], int, bytes]:
    """(JSON header, D: where the entries start, the whole directory file) of a volume."""
    with open(directory_path, "rb") as f:
        index = f.read()
    magic, m, d = struct.unpack_from("<8sII", index, 0)
    if magic != MAGIC or d < 16 + m:
        raise ValueError(f"{directory_path}: not a blockfs 1.0.0 directory file")
    meta: dict[str, Any] = json.loads(index[16:16 + m].decode("utf-8"))
    if meta["Version"] != "1.0.0":
        raise ValueError(f"{directory_path}: Version {meta['Version']!r}")
    return meta, d, index


def decode_entry(meta: dict[str, Any], d: int, index: bytes, e: int) -> tuple[int, int]:
    """(offset, size) of entry ``e``; (0, 0) for an entry past the end of the file."""
    off_bits, size_bits = meta["NOffsetBits"], meta["NSizeBits"]
    entry_size = math.ceil((off_bits + size_bits) / 8)
    pos = d + e * entry_size
    if pos + entry_size > len(index):
        return 0, 0
    v = int.from_bytes(index[pos:pos + entry_size], "little")
    return v & ((1 << off_bits) - 1), (v >> off_bits) & ((1 << size_bits) - 1)


def entry(directory_path: str | os.PathLike[str], e: int) -> tuple[int, int]:
    """(offset, size) of entry ``e`` of a volume's index (section 4)."""
    return decode_entry(*read_index(directory_path), e)


def read_volume(directory_path: str | os.PathLike[str], as_stored: bool = False) -> tuple[np.ndarray, dict[str, Any]]:
    """Decode a whole volume: its (z, y, x) array and its application metadata (section 3.3).

    ``as_stored`` opens the shard names exactly as stored, relative ones against the working
    directory, as the earlier release did; by default relative names are taken against the
    directory file's folder."""
    meta, d, index = read_index(directory_path)
    extent = (meta["ZExtent"], meta["YExtent"], meta["XExtent"])
    bsize = (meta["ZBlockSize"], meta["YBlockSize"], meta["XBlockSize"])
    stride = (meta["ZStride"], meta["YStride"], meta["XStride"])
    dtype = np.dtype(meta["DType"]).newbyteorder("<")
    names: list[str] = meta["BlockFilenames"]
    folder = os.getcwd() if as_stored else os.path.dirname(os.path.abspath(directory_path))
    shards: dict[str, bytes] = {}
    volume = np.zeros(extent, dtype)
    for z in range(0, extent[0], bsize[0]):
        for y in range(0, extent[1], bsize[1]):
            for x in range(0, extent[2], bsize[2]):
                e = (z // bsize[0]) * stride[0] + (y // bsize[1]) * stride[1] + (x // bsize[2]) * stride[2]
                offset, size = decode_entry(meta, d, index, e)
                if size == 0:
                    continue  # empty entry, or past the end of the file: missing block
                shard = _read_shard(names[e % len(names)], folder, shards)
                if offset + size > len(shard):
                    raise ValueError(f"block ({x}, {y}, {z}): bytes [{offset}, {offset + size}) beyond its shard")
                shape = tuple(min(b, n - c) for b, n, c in zip(bsize, extent, (z, y, x)))
                raw = blosc.decompress(shard[offset:offset + size])
                block = np.frombuffer(raw, dtype).reshape(shape)
                volume[z:z + shape[0], y:y + shape[1], x:x + shape[2]] = block
    app = {k: v for k, v in meta.items() if k not in FORMAT_KEYS}
    return volume.astype(dtype.newbyteorder("="), copy=False), app
