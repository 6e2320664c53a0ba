"""JPEG 2000 planes (lossless, or lossy at a PSNR) through glymur, and a plan that fits a memory budget."""

from __future__ import annotations

import contextlib
import math
import os
from dataclasses import dataclass

import numpy as np

from ..errors import InvalidArgumentError, MissingDependencyError

#: dtypes glymur can write
JP2K_DTYPES = (np.dtype(np.uint8), np.dtype(np.uint16))
#: OpenJPEG's working memory while it encodes one plane, in bytes per voxel (measured: 8-10)
ENCODER_BYTES_PER_VOXEL = 10
#: OpenJPEG's default number of resolution levels; each halves the plane, so a side needs 2**(n-1) voxels
DEFAULT_RESOLUTIONS = 6
GB = 1e9


@dataclass(frozen=True)
class Plan:
    """How many planes to read per slab and to encode at once."""

    depth: int
    workers: int
    nbytes: int  # the estimated peak of planes and encoders


def plan(shape_zyx: tuple[int, int, int], dtype: np.dtype, z_block_size: int, n_workers: int,
         memory: float | None, where: str) -> Plan:
    """The thickest slab (at most one block deep) and most workers that fit ``memory`` bytes."""
    voxels = shape_zyx[1] * shape_zyx[2]
    plane, encoder = voxels * np.dtype(dtype).itemsize, voxels * ENCODER_BYTES_PER_VOXEL
    most = min(z_block_size, shape_zyx[0])
    if memory is None:
        workers = min(n_workers, most)
        return Plan(most, workers, most * plane + workers * encoder)
    # Encoding is the slow part: keep the workers, and thin the slab (re-reading blocks) first.
    for workers in range(min(n_workers, most), 0, -1):
        depth = min(most, int(memory - workers * encoder) // plane)
        if depth >= workers:
            return Plan(depth, workers, depth * plane + workers * encoder)
    need = plane + encoder
    raise InvalidArgumentError(f"{where}: --memory {memory / GB:g} GB cannot hold one {shape_zyx[1]}x{shape_zyx[2]} "
                               f"{np.dtype(dtype).name} plane and its encoder (about {need / GB:.3g} GB); "
                               "give at least that.")


def resolutions(shape_yx: tuple[int, ...]) -> int:
    """OpenJPEG's default of 6 resolution levels, fewer for planes under 32 voxels a side."""
    return min(DEFAULT_RESOLUTIONS, int(math.log2(max(1, min(shape_yx)))) + 1)


def write_jp2k(path: str, plane: np.ndarray, psnr: float | None) -> None:
    """One plane as JPEG 2000 (a new file at ``path``): lossless, or lossy at ``psnr`` dB."""
    import glymur

    with contextlib.suppress(FileNotFoundError):  # glymur parses a file already there instead of replacing it
        os.unlink(path)
    options = {} if psnr is None else {"psnr": [psnr]}
    glymur.Jp2k(path, data=plane, numres=resolutions(plane.shape), **options)


def check_glymur() -> None:
    """Raise if glymur is missing or has no OpenJPEG library to write with."""
    try:
        import glymur
    except ImportError as exc:
        raise MissingDependencyError(f"glymur is not installed ({exc}); install it with: pip install glymur packaging"
                                     ) from None
    if glymur.version.openjpeg_version_tuple < (2, 3, 0):
        raise MissingDependencyError(f"glymur {glymur.__version__} found OpenJPEG {glymur.version.openjpeg_version}, "
                                     "which cannot write; install OpenJPEG 2.3 or newer "
                                     "(Debian: apt-get install libopenjp2-7).")
