"""TIFF planes: one 2-D plane per file, zlib-compressed, BigTIFF when a plane needs it."""

from __future__ import annotations

import numpy as np
import tifffile

#: Planes larger than this are written as BigTIFF (4 GiB, less room for the header and strip tables).
BIGTIFF_THRESHOLD = 2**32 - 2**25


def needs_bigtiff(nbytes: int) -> bool:
    """True if a plane of ``nbytes`` bytes does not fit a classic TIFF (32-bit offsets)."""
    return nbytes > BIGTIFF_THRESHOLD


def write_tiff(path: str, plane: np.ndarray, level: int) -> None:
    """One plane as a TIFF file, zlib-compressed at ``level`` (0: uncompressed)."""
    options = {"compression": "zlib", "compressionargs": {"level": level}} if level else {"compression": None}
    tifffile.imwrite(path, plane, bigtiff=needs_bigtiff(plane.nbytes), photometric="minisblack", maxworkers=1,
                     **options)
