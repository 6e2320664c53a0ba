"""What the server serves under one name: a volume or pyramid's levels, and their chunks by URL part.

Every read goes to the files afresh (the index entry, then the block), so blocks written while the
volume is served appear on the next request. Each answer carries a version, the index entry's
(offset, size): a rewritten block is appended elsewhere, so its version, and the ETag made from it,
changes. Only edge blocks, which must be re-encoded for zarr, are cached (bounded, by version).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from typing import Any

from ..directory import Directory
from ..errors import InvalidArgumentError
from ..interop.zarr_format import ZarrView, chunk_bytes, chunk_origin, is_edge, open_source
from ..pyramid import is_pyramid, level_key, open_pyramid
from .cache import ByteCache

#: Names a volume may be served under: one URL path segment of safe characters.
NAME_PATTERN = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*")
#: A precomputed chunk name, ``x0-x1_y0-y1_z0-z1``.
PRECOMPUTED_CHUNK = re.compile(r"([0-9]+)-([0-9]+)_([0-9]+)-([0-9]+)_([0-9]+)-([0-9]+)")

#: (offset, size) of a block's index entry; (0, 0) for a block never written.
Version = tuple[int, int]


@dataclass
class Chunk:
    """One answer: the body (None for a missing chunk) and the version its ETag is made from."""

    body: bytes | None
    version: Version

    @property
    def etag(self) -> str:
        return f'"{self.version[0]:x}-{self.version[1]:x}"'


@dataclass
class ServedVolume:
    """A volume or pyramid served under ``name``: precomputed ``info``, zarr v2 and v3 views."""

    name: str
    levels: tuple[Directory, ...]
    keys: tuple[str, ...]
    info: dict[str, Any]
    zarr: dict[int, ZarrView]
    voxel_size_um: tuple[float, float, float]

    @property
    def info_bytes(self) -> bytes:
        return json.dumps(self.info, indent=1).encode("utf-8")

    def version(self, level: int, origin: tuple[int, int, int]) -> Version:
        """The index entry (offset, size) of the block at first voxel ``origin`` (x, y, z) of a level."""
        volume = self.levels[level]
        return volume.store.entry(volume.layout.entry_index(*origin))

    def precomputed_origin(self, key: str, chunk_name: str) -> tuple[int, tuple[int, int, int]] | None:
        """(level, first voxel (x, y, z)) of a precomputed chunk URL part; None unless it is exactly one block."""
        match = PRECOMPUTED_CHUNK.fullmatch(chunk_name)
        if key not in self.keys or match is None:
            return None
        level = self.keys.index(key)
        lay = self.levels[level].layout
        x0, x1, y0, y1, z0, z1 = map(int, match.groups())
        for start, stop, block, extent in ((x0, x1, lay.x_block_size, lay.x_extent),
                                           (y0, y1, lay.y_block_size, lay.y_extent),
                                           (z0, z1, lay.z_block_size, lay.z_extent)):
            if start % block or not start < extent or stop != min(start + block, extent):
                return None
        return level, (x0, y0, z0)

    def precomputed_chunk(self, level: int, origin: tuple[int, int, int]) -> Chunk:
        """A block as precomputed ``raw``: its voxels in C order (z, y, x), zeros if never written."""
        version = self.version(level, origin)
        return Chunk(self.levels[level].read_block(*origin).tobytes(), version)

    def zarr_chunk(self, zarr_format: int, key: str, edges: ByteCache) -> Chunk | None:
        """A zarr chunk by key (``<level>/<cz>.<cy>.<cx>`` or ``<level>/c/<cz>/<cy>/<cx>``); None if no chunk."""
        found = self.zarr[zarr_format].locate(key)
        if found is None:
            return None
        volume, chunk = found
        origin = chunk_origin(volume, chunk)
        if origin is None:
            return None
        level = self.levels.index(volume)
        version = self.version(level, origin)
        if not version[1]:
            return Chunk(None, version)
        if not is_edge(volume, chunk):
            return Chunk(chunk_bytes(volume, chunk), version)
        cache_key = (self.name, level, chunk, version)
        body = edges.get(cache_key)
        if body is None:
            body = chunk_bytes(volume, chunk)
            if body is not None:
                edges.put(cache_key, body)
        return Chunk(body, version)

    def close(self) -> None:
        for level in self.levels:
            level.close()


def default_name(path: str) -> str:
    """A pyramid folder's name, or a volume's index file name without its extension."""
    path = os.path.normpath(os.path.abspath(path))
    return os.path.basename(path) if os.path.isdir(path) else os.path.splitext(os.path.basename(path))[0]


def check_name(name: str, path: str) -> str:
    if not NAME_PATTERN.fullmatch(name):
        raise InvalidArgumentError(f"{path}: cannot serve it as {name!r}: a name is letters, digits, '.', '_' and "
                                   "'-', not starting with '.' or '-'; pass another with --name.")
    return name


def _precomputed_info(levels: tuple[Directory, ...], keys: tuple[str, ...],
                      voxel_sizes_um: tuple[tuple[float, float, float], ...]) -> dict[str, Any]:
    """A precomputed ``info`` for volumes without one: an image with one scale per level."""
    scales = [{"key": key, "size": [lay.x_extent, lay.y_extent, lay.z_extent],
               "resolution": [round(v * 1000, 6) for v in reversed(size)],
               "chunk_sizes": [[lay.x_block_size, lay.y_block_size, lay.z_block_size]],
               "encoding": "raw", "voxel_offset": [0, 0, 0]}
              for key, lay, size in zip(keys, (level.layout for level in levels), voxel_sizes_um)]
    return {"@type": "neuroglancer_multiscale_volume", "data_type": levels[0].dtype.name, "num_channels": 1,
            "type": "image", "scales": scales}


def open_served(path: str, name: str | None = None) -> ServedVolume:
    """Open a volume's index file or a pyramid folder to serve it under ``name`` (default from the path)."""
    name = check_name(default_name(path) if name is None else name, path)
    if is_pyramid(path):
        pyramid = open_pyramid(path)
        source = open_source(pyramid)
        keys, info = tuple(pyramid.keys), pyramid.info
    else:
        source = open_source(path)
        keys = (level_key(1),)
        info = _precomputed_info(source.levels, keys, source.voxel_sizes_um)
    views = {fmt: ZarrView(source, fmt, group=True) for fmt in (2, 3)}
    served = ServedVolume(name, source.levels, keys, info, views,
                          tuple(reversed(source.voxel_sizes_um[0])))  # type: ignore[arg-type]
    return served
