"""Blosc compression of blocks: compressor names, and thread- and fork-safe calls.

blosc runs single-threaded per call with the GIL released, so parallelism comes from our own
threads and processes, and forked children never inherit a blosc thread pool.
"""

from __future__ import annotations

import enum

import blosc
import numpy as np

from .errors import CorruptBlockError, UnsupportedCompressionError

BLOSC_HEADER_BYTES = 16

blosc.set_releasegil(True)
blosc.set_nthreads(1)


class Compression(enum.Enum):
    """Blosc compressors a volume may use (the JSON ``Compression`` value)."""

    zstd = "zstd"
    blosclz = "blosclz"
    lz4 = "lz4"
    lz4hc = "lz4hc"
    zlib = "zlib"
    snappy = "snappy"


def check_compression(compression: "Compression | str", level: int, where: str) -> tuple[str, int]:
    """(compressor name, level) if this blosc can write them, else raise."""
    name = compression.value if isinstance(compression, Compression) else compression
    available = blosc.compressor_list()
    if name not in available:
        raise UnsupportedCompressionError(
            f"{where}: compressor {name!r} is not available in this blosc build; use one of {', '.join(available)}.")
    if isinstance(level, bool) or not isinstance(level, int) or not 0 <= level <= 9:
        raise UnsupportedCompressionError(f"{where}: compression_level {level!r} must be an integer from 0 to 9.")
    return name, level


def compress(block: np.ndarray, compressor: str, level: int) -> bytes:
    """One blosc buffer of a C-contiguous block, byte-shuffled with the dtype's item size."""
    return blosc.compress_ptr(block.ctypes.data, block.size, typesize=block.dtype.itemsize, clevel=level,
                              shuffle=blosc.SHUFFLE, cname=compressor)


def check_sizes(data: bytes | memoryview, nbytes: int, where: str) -> None:
    """Raise unless ``data`` is one blosc buffer of exactly its length that decompresses to ``nbytes``."""
    try:
        expands, cbytes, _ = blosc.get_cbuffer_sizes(bytes(data[:BLOSC_HEADER_BYTES]))
    except Exception as exc:  # blosc raises its own untyped error for bad headers
        raise CorruptBlockError(f"{where}: not a blosc buffer ({exc}).") from None
    if len(data) < BLOSC_HEADER_BYTES or cbytes != len(data) or expands != nbytes:
        raise CorruptBlockError(
            f"{where}: the blosc header says {cbytes} compressed bytes decompressing to {expands}, but the block "
            f"is {len(data)} bytes and should decompress to {nbytes}.")


def decompress_into(data: bytes | memoryview, out: np.ndarray, where: str) -> None:
    """Decompress one blosc buffer into the C-contiguous array ``out``; raise if it does not fit.

    The buffer's own header must agree with its length and with ``out``, so damaged bytes raise
    instead of being read past their end.
    """
    check_sizes(data, out.nbytes, f"{where} (shape {out.shape}, {out.dtype})")
    try:
        blosc.decompress_ptr(data, out.ctypes.data)
    except Exception as exc:
        raise CorruptBlockError(f"{where}: blosc cannot decompress the block ({exc}).") from None
