"""Blosc compression of blocks: compressor names, and calls that depend on no process-wide setting.

Every block is compressed and decompressed by c-blosc 1.x's context calls (``blosc_compress_ctx``,
``blosc_decompress_ctx``, through imagecodecs) with exactly one internal thread and the GIL
released. So nothing another library or the user sets for the whole process — python-blosc's
``set_nthreads`` or ``set_releasegil``, ``BLOSC_NTHREADS`` and the other ``BLOSC_*`` variables —
changes the bytes blockfs writes or the threads it runs, and importing blockfs changes no such
setting either. Parallelism comes from blockfs's own threads and processes, and forked children
never inherit a blosc thread pool. The frames are c-blosc 1.x frames (format version 2, typesize =
the dtype's item size, byte shuffle), which any python-blosc reads.
"""

from __future__ import annotations

import enum
import struct

import imagecodecs
import numpy as np

from .errors import CorruptBlockError, UnsupportedCompressionError

BLOSC_HEADER_BYTES = 16
_SHUFFLE = imagecodecs.BLOSC.SHUFFLE.SHUFFLE
#: A blosc 1.x header after its 4 bytes of version, codec version, flags and type size: the
#: uncompressed size, the block size and the compressed size, little-endian.
_SIZES = struct.Struct("<4xIII")


class Compression(enum.Enum):
    """Blosc compressors a volume may use (the JSON ``Compression`` value)."""

    zstd = "zstd"
    blosclz = "blosclz"
    lz4 = "lz4"
    lz4hc = "lz4hc"
    zlib = "zlib"
    snappy = "snappy"


def check_compression(compression: Compression | str, level: int, where: str) -> tuple[str, int]:
    """(compressor name, level) if python-blosc (what readers of the format use) can decode them, else raise."""
    import blosc  # here, not at the top: python-blosc imports its own tests, a tenth of a second at every start
    name = compression.value if isinstance(compression, Compression) else compression
    available = blosc.compressor_list()
    if name not in available:
        raise UnsupportedCompressionError(
            f"{where}: compressor {name!r} is not available in this blosc build; use one of {', '.join(available)}.")
    if isinstance(level, bool) or not isinstance(level, int) or not 0 <= level <= 9:
        raise UnsupportedCompressionError(f"{where}: compression_level {level!r} must be an integer from 0 to 9.")
    return name, level


def compress(block: np.ndarray, compressor: str, level: int) -> bytes:
    """One blosc buffer of a C-contiguous block, byte-shuffled with the dtype's item size, on this thread."""
    # imagecodecs' stub takes only bytes-like data (the call takes any buffer) and gives bytes | bytearray (bytes
    # when out= is not given)
    return imagecodecs.blosc_encode(block, level, compressor=compressor,  # type: ignore[arg-type,return-value]
                                    typesize=block.dtype.itemsize, shuffle=_SHUFFLE, numthreads=1)


def compress_into(block: np.ndarray, compressor: str, level: int, out: memoryview) -> memoryview:
    """:func:`compress` into ``out`` (room for the block and blosc's 16 bytes of overhead); the part of it filled.

    blosc is given exactly that room: given more, it may keep a compressed buffer larger than the copy it
    would otherwise fall back to, beyond what the index allows a block."""
    room = out[:block.nbytes + BLOSC_HEADER_BYTES]
    # imagecodecs' stub takes only bytes-like data and a bytearray as out= (the call takes any writable buffer)
    filled = imagecodecs.blosc_encode(block, level, compressor=compressor,  # type: ignore[arg-type]
                                      typesize=block.dtype.itemsize, shuffle=_SHUFFLE, numthreads=1,
                                      out=room)  # type: ignore[arg-type]
    return memoryview(filled)


def blosc_sizes(data: bytes | memoryview) -> tuple[int, int]:
    """(the bytes a blosc buffer's header says it decompresses to, its compressed bytes); (-1, -1) for a
    buffer shorter than the header."""
    if len(data) < BLOSC_HEADER_BYTES:
        return -1, -1
    expands, _, cbytes = _SIZES.unpack_from(data)
    return expands, cbytes


def sizes_agree(data: bytes | memoryview, nbytes: int) -> bool:
    """Whether ``data`` is one blosc buffer of exactly its length that decompresses to ``nbytes``."""
    return blosc_sizes(data) == (nbytes, len(data))


def check_sizes(data: bytes | memoryview, nbytes: int, where: str) -> None:
    """Raise unless ``data`` is one blosc buffer of exactly its length that decompresses to ``nbytes``."""
    if sizes_agree(data, nbytes):
        return
    if len(data) < BLOSC_HEADER_BYTES:
        raise CorruptBlockError(f"{where}: not a blosc buffer ({len(data)} bytes, shorter than its header).")
    expands, _, cbytes = _SIZES.unpack_from(data)
    raise CorruptBlockError(
        f"{where}: the blosc header says {cbytes} compressed bytes decompressing to {expands}, but the block "
        f"is {len(data)} bytes and should decompress to {nbytes}.")


def decompress_into(data: bytes | memoryview, out: np.ndarray, where: object) -> None:
    """Decompress one blosc buffer into the C-contiguous array ``out`` on this thread; raise if it does not fit.

    The buffer's own header must agree with its length and with ``out``, so damaged bytes raise
    instead of being read past their end. ``where`` names the block in a message, formatted only when one is raised.
    """
    if not sizes_agree(data, out.nbytes):  # the message is formatted only when it is needed
        check_sizes(data, out.nbytes, f"{where} (shape {out.shape}, {out.dtype})")
    try:
        # imagecodecs' stub takes only bytes-like data; numpy's stubs give ndarray __buffer__ only on Python 3.12+
        imagecodecs.blosc_decode(data, numthreads=1, out=memoryview(out).cast("B"))  # type: ignore[arg-type]
    except Exception as exc:
        raise CorruptBlockError(f"{where}: blosc cannot decompress the block ({exc}).") from None
