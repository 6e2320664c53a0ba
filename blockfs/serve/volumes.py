"""What the server serves under one name: a volume or pyramid's levels, and their chunks by URL part.

Every read goes to the files afresh (the index entry, then the block at it), so blocks written while
the volume is served appear on the next request. Each answer carries a version, the index entry's
(offset, size) its body was read at (one index read per request): a rewritten block is appended
elsewhere, so its version, and the ETag made from it, changes. Only edge blocks, which must be
re-encoded for zarr, are cached (bounded, by version).

A served volume remembers the identity (device, inode; for a URL, size and ETag) of the files it was
opened from, its index files and a pyramid's ``info``, and holds its index files open, so that a volume replaced at the
same path (``create_volume`` renames a new index into place) is told apart from it; ETags and
cache keys carry that identity too.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from .. import remote
from ..codec import decompress_into
from ..errors import InvalidArgumentError
from ..interop.zarr_format import ZarrView, as_chunk, chunk_block, is_edge, open_source
from ..pyramid import is_pyramid, level_key, open_pyramid
from ..pyramid.folder import INFO_NAME, LEVEL_FILE, read_info
from ..selection import BlockProjection
from ..volume import Volume
from .cache import ByteCache

#: Names a volume may be served under: one URL path segment of safe characters.
NAME_PATTERN = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*")
#: A precomputed chunk name, ``x0-x1_y0-y1_z0-z1``.
PRECOMPUTED_CHUNK = re.compile(r"([0-9]+)-([0-9]+)_([0-9]+)-([0-9]+)_([0-9]+)-([0-9]+)")
#: A number longer than any chunk coordinate can be (int64): a key holding one names no chunk, and is
#: never handed to int(), which refuses more than 4,300 digits and is slow well before that.
TOO_LONG_NUMBER = re.compile(r"[0-9]{19}")
#: The zarr format of each zarr route.
ZARR_FORMATS = {"zarr": 2, "zarr3": 3}
#: How often a volume is opened again when its files keep changing while it is being opened.
OPEN_ATTEMPTS = 5

#: (offset, size) of a block's index entry; (0, 0) for a block never written.
Version = tuple[int, int]
#: A block on a level's grid: (level, (cz, cy, cx)).
Address = tuple[int, tuple[int, int, int]]
#: (path, device, inode) of each file a volume is opened from.
Identity = tuple[tuple[str, int, int], ...]


@dataclass
class Chunk:
    """One answer: the body (None for a missing chunk), the version and the volume's tag its ETag is made from."""

    body: bytes | None
    version: Version
    tag: str

    @property
    def etag(self) -> str:
        return f'"{self.tag}-{self.version[0]:x}-{self.version[1]:x}"'


def volume_files(path: str) -> list[str]:
    """The files a volume or pyramid at ``path`` is opened from: its index files, and a pyramid's info first."""
    if not is_pyramid(path):
        return [path]
    return [os.path.join(path, INFO_NAME)] + [os.path.join(path, scale["key"], LEVEL_FILE)
                                              for scale in read_info(path)["scales"]]


def file_identity(name: str) -> tuple[str, int, int]:
    """(name, device, inode) of a file; for a URL, (url, size, a digest of its ETag), as its server answers."""
    if remote.is_url(name):
        size, etag = remote.head(name)
        return name, size, int.from_bytes(hashlib.blake2b((etag or "").encode("utf-8"), digest_size=7).digest(), "big")
    info = os.stat(name)
    return name, info.st_dev, info.st_ino


def volume_identity(path: str) -> Identity | None:
    """:func:`file_identity` of each file of the volume at ``path``; None when one of them is missing."""
    try:
        return tuple(file_identity(name) for name in volume_files(path))
    except (FileNotFoundError, NotADirectoryError):
        return None


@dataclass
class ServedVolume:
    """A volume or pyramid served under ``name``: precomputed ``info``, zarr v2 and v3 views."""

    name: str
    levels: tuple[Volume, ...]
    keys: tuple[str, ...]
    info: dict[str, Any]
    zarr: dict[int, ZarrView]
    voxel_size_um: tuple[float, float, float]
    #: the index file or pyramid folder served, absolute
    path: str
    #: the files it was opened from, as they were then
    identity: Identity

    @property
    def info_bytes(self) -> bytes:
        return json.dumps(self.info, indent=1).encode("utf-8")

    @property
    def tag(self) -> str:
        """A short digest of :attr:`identity`, part of every ETag: a replaced volume's chunks get new ones."""
        return hashlib.blake2b(repr(self.identity).encode("utf-8"), digest_size=6).hexdigest()

    def locate(self, route: str, key: str) -> Address | None:
        """The block that ``key`` names on ``route`` ("precomputed", "zarr" or "zarr3"); None if it names none.

        A precomputed key is ``<scale key>/<x0>-<x1>_<y0>-<y1>_<z0>-<z1>`` and must be exactly one block;
        a zarr key is ``<level>/<cz>.<cy>.<cx>`` (v2) or ``<level>/c/<cz>/<cy>/<cx>`` (v3).
        """
        if TOO_LONG_NUMBER.search(key):
            return None
        if route == "precomputed":
            return self._precomputed_address(*key.partition("/")[::2])
        found = self.zarr[ZARR_FORMATS[route]].locate(key)
        if found is None or chunk_block(*found) is None:
            return None
        volume, chunk = found
        return self.levels.index(volume), chunk

    def _precomputed_address(self, key: str, chunk_name: str) -> Address | None:
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
        return level, (z0 // lay.z_block_size, y0 // lay.y_block_size, x0 // lay.x_block_size)

    def block(self, address: Address) -> tuple[Volume, BlockProjection]:
        """The level and the block that ``address`` (as :meth:`locate` gave it) names."""
        level, chunk = address
        volume = self.levels[level]
        # a chunk of the grid always has a block
        return volume, chunk_block(volume, chunk)  # type: ignore[return-value]

    def version(self, address: Address) -> Version:
        """The index entry (offset, size) of the block at ``address``, as it is now."""
        volume, block = self.block(address)
        return volume.store.entry(block.entry)

    def read(self, route: str, address: Address, edges: ByteCache) -> Chunk:
        """The chunk at ``address`` as ``route`` serves it (body None for a missing zarr chunk)."""
        if route == "precomputed":
            return self._precomputed_chunk(address)
        return self._zarr_chunk(address, edges)

    def _precomputed_chunk(self, address: Address) -> Chunk:
        """A block as precomputed ``raw``: its voxels in C order (z, y, x), zeros if never written."""
        volume, block = self.block(address)
        version, payload = volume.read_block_payload_at(*block.origin)
        data = np.zeros(block.shape, volume.dtype)
        if payload is not None:
            decompress_into(payload, data, "{}: block at (x={}, y={}, z={})".format(volume.path, *block.origin))
        return Chunk(data.tobytes(), version, self.tag)

    def _zarr_chunk(self, address: Address, edges: ByteCache) -> Chunk:
        """A zarr chunk: a full block's stored bytes, an edge block padded and re-encoded (cached by version)."""
        volume, block = self.block(address)
        if not is_edge(volume, block):
            version, body = volume.read_block_payload_at(*block.origin)
            return Chunk(body, version, self.tag)
        version = volume.store.entry(block.entry)
        if not version[1]:
            return Chunk(None, version, self.tag)
        body = edges.get((self.name, self.identity, address, version))
        if body is None:
            version, payload = volume.read_block_payload_at(*block.origin, where=version)
            body = as_chunk(volume, block, payload)
            if body is not None:
                edges.put((self.name, self.identity, address, version), body)
        return Chunk(body, version, self.tag)

    def close(self) -> None:
        for level in self.levels:
            level.close()


def default_name(path: str) -> str:
    """A pyramid folder's name, or a volume's index file name without its extension."""
    if remote.is_url(path):
        last = urlsplit(path).path.rstrip("/").rsplit("/", 1)[-1]
        return os.path.splitext(last)[0] if last.endswith(".blockfs") else last
    path = os.path.normpath(os.path.abspath(path))
    return os.path.basename(path) if os.path.isdir(path) else os.path.splitext(os.path.basename(path))[0]


def check_name(name: str, path: str) -> str:
    if not NAME_PATTERN.fullmatch(name):
        raise InvalidArgumentError(f"{path}: cannot serve it as {name!r}: a name is letters, digits, '.', '_' and "
                                   "'-', not starting with '.' or '-'; pass another with --name.")
    return name


def _precomputed_info(levels: tuple[Volume, ...], keys: tuple[str, ...],
                      voxel_sizes_um: tuple[tuple[float, float, float], ...]) -> dict[str, Any]:
    """A precomputed ``info`` for volumes without one: an image with one scale per level."""
    scales = [{"key": key, "size": [lay.x_extent, lay.y_extent, lay.z_extent],
               "resolution": [round(v * 1000, 6) for v in reversed(size)],
               "chunk_sizes": [[lay.x_block_size, lay.y_block_size, lay.z_block_size]],
               "encoding": "raw", "voxel_offset": [0, 0, 0]}
              for key, lay, size in zip(keys, (level.layout for level in levels), voxel_sizes_um)]
    return {"@type": "neuroglancer_multiscale_volume", "data_type": levels[0].dtype.name, "num_channels": 1,
            "type": "image", "scales": scales}


def _open(path: str, name: str, identity: Identity) -> ServedVolume:
    """Open the volume or pyramid at ``path``, holding its index files open."""
    if is_pyramid(path):
        pyramid = open_pyramid(path)
        source = open_source(pyramid)
        keys, info = tuple(pyramid.keys), pyramid.info
    else:
        source = open_source(path)
        keys = (level_key(1),)
        info = _precomputed_info(source.levels, keys, source.voxel_sizes_um)
    try:
        for level in source.levels:
            if not level.store.spec.remote:
                level.store.index_fd()  # held: the inode cannot be reused while it is served
        views = {fmt: ZarrView(source, fmt, group=True) for fmt in (2, 3)}
    except BaseException:
        for level in source.levels:
            level.close()
        raise
    return ServedVolume(name, source.levels, keys, info, views,
                        # the voxel sizes are (x, y, z) triples
                        tuple(reversed(source.voxel_sizes_um[0])), path, identity)  # type: ignore[arg-type]


def open_served(path: str, name: str | None = None) -> ServedVolume:
    """Open a volume's index file or a pyramid folder to serve it under ``name`` (default from the path).

    Its files are looked at before and after opening: if they changed meanwhile (a volume being
    replaced), it is opened again, so :attr:`ServedVolume.identity` is always that of what it read.
    """
    name = check_name(default_name(path) if name is None else name, path)
    path = remote.absolute(path)
    for _ in range(OPEN_ATTEMPTS):
        before = volume_identity(path)
        served = _open(path, name, before or ())
        if before is not None and volume_identity(path) == before:
            return served
        served.close()
    raise InvalidArgumentError(f"{path}: its files changed each of the {OPEN_ATTEMPTS} times it was opened; "
                               "serve it once whatever is replacing it has finished.")
