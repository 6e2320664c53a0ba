"""Zarr metadata and chunks for a blockfs volume or pyramid: the zarr view, the server and to-zarr share it.

Public functions and types:

- ``open_source(source) -> Source``: a volume path, pyramid folder, ``Volume`` or ``Pyramid`` as
  its levels (finest first), voxel size and name;
- ``array_metadata(volume, zarr_format, shard_blocks=None) -> dict``: ``.zarray`` (v2) or an array's
  ``zarr.json`` (v3; sharded when ``shard_blocks`` is given);
- ``group_metadata(source, zarr_format) -> dict[str, dict]``: the group documents by key, with
  OME-Zarr ``multiscales`` (0.4 in ``.zattrs`` on v2, 0.5 in ``zarr.json`` on v3);
- ``chunk_block(volume, (cz, cy, cx)) -> BlockProjection | None``: the block a chunk is;
- ``chunk_bytes(volume, (cz, cy, cx)) -> bytes | None``: a chunk's bytes (see its docstring);
- ``as_chunk(volume, block, payload) -> bytes | None``: the chunk of a block whose stored bytes were read;
- ``written_chunks(volume)``: the (cz, cy, cx) of every written block, from the index;
- ``parse_chunk_key(key, zarr_format) -> (cz, cy, cx) | None``: chunk coordinates from
  ``"cz.cy.cx"`` (v2) or ``"c/cz/cy/cx"`` (v3);
- ``ZarrView``: a whole zarr hierarchy over a source, answering ``get(key) -> bytes | None``.

Nothing here caches: every call reads the volume's index and shards afresh.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..codec import compress, decompress_into
from ..errors import InvalidArgumentError
from ..pyramid import Pyramid, is_pyramid, open_pyramid
from ..selection import BlockProjection, projections
from ..volume import Volume, open_volume

#: The blosc codec an edge block is re-encoded with: fast, and any blosc reader decodes it.
EDGE_CNAME, EDGE_CLEVEL = "lz4", 1
#: Metadata key of a volume's voxel size in micrometres, (x, y, z).
VOXEL_SIZE_KEY = "voxel_size_um"
ZARR_FORMATS = (2, 3)

SourceLike = str | os.PathLike | Volume | Pyramid


@dataclass(frozen=True)
class Source:
    """What a zarr hierarchy is made of: levels finest first, their voxel sizes, a name."""

    levels: tuple[Volume, ...]
    #: Each level's voxel size in micrometres, (z, y, x).
    voxel_sizes_um: tuple[tuple[float, float, float], ...]
    name: str
    #: Whether the source is a pyramid folder (a group) rather than one volume (an array).
    is_pyramid: bool


def _level_volume(level: Any) -> Volume:
    """A pyramid level as a :class:`Volume` (a level opened as a ``Directory`` carries its own)."""
    return level if isinstance(level, Volume) else level.volume


def open_source(source: SourceLike) -> Source:
    """Open a volume path, a pyramid folder, a ``Volume`` or a ``Pyramid`` read as zarr."""
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        source = open_pyramid(path) if is_pyramid(path) else open_volume(path)
    if isinstance(source, Pyramid):
        sizes = tuple(tuple(r / 1000 for r in reversed(res)) for res in source.resolutions_nm)
        name = os.path.basename(os.path.normpath(source.root))
        # the levels' voxel sizes are (x, y, z) triples
        return Source(tuple(map(_level_volume, source.levels)), sizes, name, True)  # type: ignore[arg-type]
    voxel = source.metadata.get(VOXEL_SIZE_KEY, [1.0, 1.0, 1.0])
    if not (isinstance(voxel, list) and len(voxel) == 3 and all(isinstance(v, (int, float)) and v > 0 for v in voxel)):
        raise InvalidArgumentError(f"{source.path}: metadata {VOXEL_SIZE_KEY!r} must be three positive "
                                   f"numbers (x, y, z) in micrometres; got {voxel!r}.")
    name = os.path.splitext(os.path.basename(source.path))[0]
    # mypy types a tuple built from a generator as tuple[int, ...]; it has three items here
    return Source((source,), (tuple(float(v) for v in reversed(voxel)),), name, False)  # type: ignore[arg-type]


def _fill_value(dtype: np.dtype) -> Any:
    if dtype.kind == "b":
        return False
    if dtype.kind == "c":
        return [0.0, 0.0]
    return 0.0 if dtype.kind == "f" else 0


def _v3_codecs(volume: Volume) -> list[dict[str, Any]]:
    """bytes + blosc with the volume's compressor: how a stored block is encoded."""
    dtype = volume.dtype
    endian = {"name": "bytes", "configuration": {"endian": "little"}} if dtype.itemsize > 1 else {"name": "bytes"}
    blosc = {"name": "blosc", "configuration": {
        "cname": volume.layout.compression, "clevel": volume.layout.compression_level, "shuffle": "shuffle",
        "typesize": dtype.itemsize, "blocksize": 0}}
    return [endian, blosc]


def array_metadata(volume: Volume, zarr_format: int, shard_blocks: int | None = None) -> dict[str, Any]:
    """The array document of a volume: chunks are its blocks, or shards of ``shard_blocks``^3 blocks (v3)."""
    check_zarr_format(zarr_format)
    lay = volume.layout
    if zarr_format == 2:
        if shard_blocks is not None:
            raise InvalidArgumentError(f"{volume.path}: sharding needs zarr format 3; "
                                       "drop --shard-blocks or use --zarr-format 3.")
        return {"zarr_format": 2, "shape": list(lay.shape), "chunks": list(lay.block_shape),
                "dtype": volume.dtype.str, "compressor": {
                    "id": "blosc", "cname": lay.compression, "clevel": lay.compression_level, "shuffle": 1,
                    "blocksize": 0},
                "fill_value": _fill_value(volume.dtype), "order": "C", "filters": None, "dimension_separator": "."}
    codecs = _v3_codecs(volume)
    chunk_shape = list(lay.block_shape)
    if shard_blocks is not None:
        chunk_shape = [b * shard_blocks for b in lay.block_shape]
        codecs = [{"name": "sharding_indexed", "configuration": {
            "chunk_shape": list(lay.block_shape), "codecs": codecs,
            "index_codecs": [{"name": "bytes", "configuration": {"endian": "little"}}, {"name": "crc32c"}],
            "index_location": "end"}}]
    return {"zarr_format": 3, "node_type": "array", "shape": list(lay.shape), "data_type": volume.dtype.name,
            "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": chunk_shape}},
            "chunk_key_encoding": {"name": "default", "configuration": {"separator": "/"}},
            "fill_value": _fill_value(volume.dtype), "codecs": codecs, "attributes": {},
            "dimension_names": ["z", "y", "x"]}


def multiscales(source: Source) -> dict[str, Any]:
    """One OME-Zarr ``multiscales`` entry: a dataset "i" per level, scale and centring translation."""
    finest = source.voxel_sizes_um[0]
    datasets = [{"path": str(i), "coordinateTransformations": [
        {"type": "scale", "scale": list(size)},
        {"type": "translation", "translation": [(s - f) / 2 for s, f in zip(size, finest)]}]}
        for i, size in enumerate(source.voxel_sizes_um)]
    axes = [{"name": name, "type": "space", "unit": "micrometer"} for name in "zyx"]
    return {"name": source.name, "axes": axes, "datasets": datasets}


def group_metadata(source: Source, zarr_format: int) -> dict[str, dict[str, Any]]:
    """The root group's documents by key, with the OME-Zarr multiscales and level 0's blockfs metadata."""
    check_zarr_format(zarr_format)
    extra = {"blockfs": source.levels[0].metadata} if source.levels[0].metadata else {}
    if zarr_format == 2:
        return {".zgroup": {"zarr_format": 2},
                ".zattrs": {"multiscales": [{"version": "0.4", **multiscales(source)}], **extra}}
    return {"zarr.json": {"zarr_format": 3, "node_type": "group", "attributes": {
        "ome": {"version": "0.5", "multiscales": [multiscales(source)]}, **extra}}}


def check_zarr_format(zarr_format: int) -> None:
    if zarr_format not in ZARR_FORMATS:
        raise InvalidArgumentError(f"zarr format {zarr_format!r} is not supported; use 2 or 3.")


def chunk_block(volume: Volume, chunk: tuple[int, int, int]) -> BlockProjection | None:
    """The block at chunk (cz, cy, cx) (its origin, entry and shape), or None outside the grid."""
    if not all(0 <= c < n for c, n in zip(chunk, volume.grid)):
        return None
    start = tuple(c * b for c, b in zip(chunk, volume.block_shape))
    return next(projections(volume.layout, start, tuple(a + 1 for a in start)))


def is_edge(volume: Volume, block: BlockProjection) -> bool:
    """Whether ``block`` is truncated by the volume's edge."""
    return block.shape != volume.block_shape


def pad_edge(volume: Volume, block: BlockProjection, payload: bytes) -> bytes:
    """An edge block's stored bytes decompressed, zero-padded to a full block and re-encoded (lz4, level 1)."""
    data = np.empty(block.shape, volume.dtype)
    decompress_into(payload, data, "{}: block at (x={}, y={}, z={})".format(volume.path, *block.origin))
    full = np.zeros(volume.block_shape, volume.dtype)
    full[tuple(slice(0, n) for n in block.shape)] = data
    return compress(full, EDGE_CNAME, EDGE_CLEVEL)


def as_chunk(volume: Volume, block: BlockProjection, payload: bytes | None) -> bytes | None:
    """The zarr chunk of a block whose stored bytes are ``payload`` (None if never written): see :func:`chunk_bytes`."""
    if payload is None or not is_edge(volume, block):
        return payload
    return pad_edge(volume, block, payload)


def chunk_bytes(volume: Volume, chunk: tuple[int, int, int]) -> bytes | None:
    """The zarr chunk (cz, cy, cx) of a volume, blosc-encoded, or None when it is a missing key.

    A full block's stored payload is returned unchanged (CRC-checked when the volume has records);
    an edge block is decompressed, zero-padded to the full chunk shape and re-encoded with lz4 at
    level 1; a never-written block or a chunk outside the grid is None (readers use fill value 0).
    """
    block = chunk_block(volume, chunk)
    return None if block is None else as_chunk(volume, block, volume.read_block_payload(*block.origin))


def written_chunks(volume: Volume) -> Iterator[tuple[int, int, int]]:
    """(cz, cy, cx) of every written block, z-major, looking up the index one plane of blocks at a time."""
    lay = volume.layout
    nz, ny, nx = lay.grid
    gy, gx = (a.ravel() for a in np.meshgrid(np.arange(ny), np.arange(nx), indexing="ij"))
    plane = gy * lay.y_stride + gx * lay.x_stride
    for cz in range(nz):
        _, sizes = volume.store.lookup(plane + cz * lay.z_stride)
        for i in np.flatnonzero(sizes):
            yield cz, int(gy[i]), int(gx[i])


def parse_chunk_key(key: str, zarr_format: int) -> tuple[int, int, int] | None:
    """(cz, cy, cx) from a chunk key, ``"cz.cy.cx"`` on v2 or ``"c/cz/cy/cx"`` on v3; None if it is not one."""
    if zarr_format == 3:
        if not key.startswith("c/"):
            return None
        parts = key[2:].split("/")
    else:
        parts = key.split(".")
    if len(parts) != 3 or not all(p.isdigit() and p.isascii() for p in parts):
        return None
    return tuple(int(p) for p in parts)  # type: ignore[return-value]  # the key was checked to have three parts


def _dumps(document: dict[str, Any]) -> bytes:
    return json.dumps(document, indent=2).encode("utf-8")


class ZarrView:
    """A read-only zarr hierarchy over a blockfs source: metadata documents and chunks by key.

    A single volume is an array at the root unless ``group=True``; a pyramid is always a group
    with one array per level ("0" finest). ``get(key)`` is thread-safe and the view pickles
    cheaply (its volumes reopen their files).
    """

    def __init__(self, source: SourceLike | Source, zarr_format: int = 2, group: bool | None = None):
        check_zarr_format(zarr_format)
        self.source = source if isinstance(source, Source) else open_source(source)
        self.zarr_format = zarr_format
        self.group = self.source.is_pyramid if group is None else bool(group) or self.source.is_pyramid
        self.metadata: dict[str, bytes] = {}
        array_name = ".zarray" if zarr_format == 2 else "zarr.json"
        if self.group:
            self.metadata.update((k, _dumps(v)) for k, v in group_metadata(self.source, zarr_format).items())
            for i, level in enumerate(self.source.levels):
                self.metadata[f"{i}/{array_name}"] = _dumps(array_metadata(level, zarr_format))
        else:
            self.metadata[array_name] = _dumps(array_metadata(self.source.levels[0], zarr_format))

    def locate(self, key: str) -> tuple[Volume, tuple[int, int, int]] | None:
        """(volume, chunk) that a chunk key names, or None if it names no chunk."""
        level = 0
        if self.group:
            head, _, key = key.partition("/")
            if not (head.isdigit() and head.isascii() and int(head) < len(self.source.levels)):
                return None
            level = int(head)
        chunk = parse_chunk_key(key, self.zarr_format)
        return None if chunk is None else (self.source.levels[level], chunk)

    def get(self, key: str) -> bytes | None:
        """The bytes at ``key``: a metadata document or a chunk; None for a missing key."""
        if key in self.metadata:
            return self.metadata[key]
        found = self.locate(key)
        return None if found is None else chunk_bytes(*found)

    def chunk_keys(self) -> Iterator[str]:
        """The key of every chunk that exists (every written block), array by array."""
        separator = "." if self.zarr_format == 2 else "/"
        for path, volume in self.arrays.items():
            prefix = (f"{path}/" if path else "") + ("c/" if self.zarr_format == 3 else "")
            for chunk in written_chunks(volume):
                yield prefix + separator.join(map(str, chunk))

    @property
    def arrays(self) -> dict[str, Volume]:
        """Each array's path in the hierarchy ("" for a root array) and its volume."""
        if not self.group:
            return {"": self.source.levels[0]}
        return {str(i): level for i, level in enumerate(self.source.levels)}
