"""The blosc codecs of the side-by-side comparison: one compressor at one level, byte shuffle, typesize 2.

A codec is written ``cname:level`` on the command line, e.g. ``lz4:5``; every peer, limit and
blockfs volume of one comparison uses the same codec on the same data.
"""

from __future__ import annotations

from dataclasses import dataclass

#: Compressors that c-blosc 1.x, tensorstore, zarr, zarrs and hdf5plugin all name the same way.
CNAMES = ("blosclz", "lz4", "lz4hc", "zlib", "zstd")


@dataclass(frozen=True)
class Codec:
    """A blosc compressor and level (byte shuffle, the dtype's item size as typesize)."""

    cname: str
    clevel: int

    @property
    def label(self) -> str:
        """``lz4 5``: how the codec is named in the tables and goals."""
        return f"{self.cname} {self.clevel}"

    @property
    def spec(self) -> str:
        """``lz4:5``: how the codec is written on the command line."""
        return f"{self.cname}:{self.clevel}"


LZ4_5 = Codec("lz4", 5)  # zarr-python's default
LZ4_1 = Codec("lz4", 1)
ZSTD_5 = Codec("zstd", 5)  # blockfs's default
DEFAULT = (LZ4_5, LZ4_1, ZSTD_5)


def parse_codec(text: str) -> Codec:
    """A codec from ``cname:level``, e.g. ``zstd:5``."""
    cname, _, level = text.strip().partition(":")
    if cname not in CNAMES or not level.isdigit() or not 1 <= int(level) <= 9:
        raise ValueError(f"a codec must be cname:level with cname one of {', '.join(CNAMES)} and level 1 to 9, "
                         f"e.g. lz4:5; got {text.strip()!r}.")
    return Codec(cname, int(level))


def parse_codecs(text: str) -> list[Codec]:
    """Codecs from a comma-separated list such as ``lz4:5,lz4:1,zstd:5``, each at most once."""
    codecs = [parse_codec(item) for item in text.split(",") if item.strip()]
    if not codecs:
        raise ValueError(f"no codec given; got {text!r}.")
    twice = sorted({c.spec for c in codecs if codecs.count(c) > 1})
    if twice:
        raise ValueError(f"codecs listed twice: {', '.join(twice)}; got {text!r}.")
    return codecs
