"""Import a zarr v2/v3 array or OME-Zarr image into a blockfs volume or pyramid folder.

When a chunk (or a shard's inner chunk) has the block's shape and is blosc-encoded (zarr v2
``blosc`` compressor; zarr v3 ``bytes`` + ``blosc``, sharded or not), its bytes are stored as they
are; edge chunks are cropped and recompressed, and any other codec or chunking is transcoded
block by block through zarr-python. Missing chunks stay unwritten blocks (fill value 0). Every stored
chunk is decompressed first, so a damaged one is named (its path in the source) and never stored.

A volume is created with the header's incomplete mark (:mod:`blockfs.marks`), blanked once every
block is stored, indexed and fsynced; a pyramid folder also carries ``blockfs-from-zarr.incomplete``
until its ``info`` is written. A re-run replaces its own incomplete output, without ``--overwrite``.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, cast

import blosc
import numpy as np
import zarr
from tqdm import tqdm
from zarr.core.buffer import default_buffer_prototype
from zarr.core.sync import sync

from .. import marks
from ..codec import decompress_into
from ..errors import CorruptBlockError, FormatError, InvalidArgumentError
from ..format import is_volume, read_directory_file
from ..pyramid.folder import INFO_NAME, LEVEL_FILE, is_pyramid, level_key
from ..storage import mark_complete, naming
from ..threads import ordered_map
from ..volume import Volume, open_volume
from ..writable import WritableVolume, create_volume
from .shard import decode_index, inner_chunk
from .tools import has_marker, marked_folder, replaceable
from .zarr_format import VOXEL_SIZE_KEY, chunk_block

UNIT_TO_UM = {"nanometer": 1e-3, "micrometer": 1.0, "millimeter": 1e3, None: 1.0}
TOOL = "blockfs from-zarr"
#: How to go on from a damaged source chunk.
DAMAGED_FIX = "Restore it from a good copy of the source, then run blockfs from-zarr again."


@dataclass(frozen=True)
class Level:
    """One zarr array to import, its voxel size (x, y, z) in micrometres and its pyramid factor."""

    array: zarr.Array
    voxel_size_um: tuple[float, float, float]
    factor: int


@dataclass(frozen=True)
class Passthrough:
    """How stored chunks become blocks: the key grid, whether keys are shards, and the index layout."""

    grid: tuple[int, int, int]
    shard_blocks: tuple[int, int, int] | None
    index_location: str
    index_checksum: bool


def _multiscale(attrs: dict[str, Any]) -> dict[str, Any] | None:
    found = attrs.get("ome", {}).get("multiscales") or attrs.get("multiscales")
    return found[0] if isinstance(found, list) and found else None


def open_levels(source: str) -> tuple[list[Level], dict[str, Any]]:
    """The arrays of a zarr array or OME-Zarr image (finest first) and the blockfs metadata it carries."""
    try:
        node = zarr.open(source, mode="r")
    except (FileNotFoundError, ValueError, KeyError) as exc:
        raise FormatError(f"{source}: not a zarr array or group ({exc}); pass the folder holding zarr.json "
                          "or .zarray/.zgroup.") from None
    if isinstance(node, zarr.Array):
        return [Level(node, (1.0, 1.0, 1.0), 1)], {}
    attrs: dict[str, Any] = dict(node.attrs)  # JSON from the source, checked as it is read
    multiscale = _multiscale(attrs)
    if multiscale is None:
        raise FormatError(f"{source}: a zarr group without OME-Zarr multiscales; pass the path of one of its "
                          "arrays instead.")
    names = [axis["name"] if isinstance(axis, dict) else axis for axis in multiscale.get("axes", ["z", "y", "x"])]
    if names != ["z", "y", "x"]:
        raise FormatError(f"{source}: the image has axes {names}; only 3D images with axes z, y, x can be "
                          "imported.")
    units = [UNIT_TO_UM.get(axis.get("unit"), 1.0) if isinstance(axis, dict) else 1.0
             for axis in multiscale.get("axes", [])] or [1.0] * 3
    levels = []
    for dataset in multiscale["datasets"]:
        scale = next((t["scale"] for t in dataset.get("coordinateTransformations", []) if t["type"] == "scale"),
                     [1.0, 1.0, 1.0])
        size = tuple(float(s) * u for s, u in zip(reversed(scale), reversed(units)))
        levels.append((node[dataset["path"]], size))
    finest = levels[0][1][0]
    # node[...] is an Array here, and size has three items
    found = [Level(array, size, round(size[0] / finest)) for array, size in levels]  # type: ignore[arg-type]
    return found, attrs.get("blockfs", {})


def passthrough(array: zarr.Array, block_shape: tuple[int, int, int]) -> Passthrough | None:
    """How to pass ``array``'s stored chunks through as blocks, or None if they must be transcoded."""
    meta: dict[str, Any] = array.metadata.to_dict()
    if tuple(array.chunks) != tuple(block_shape) or meta.get("fill_value") not in (0, None):
        return None  # (a missing chunk of a non-zero fill must be written out)
    if meta["zarr_format"] == 2:
        blosc_only = (meta.get("compressor") or {}).get("id") == "blosc" and not meta.get("filters") and \
            meta.get("order", "C") == "C" and str(meta["dtype"])[:1] in "<|"
        grid = tuple(-(-n // c) for n, c in zip(array.shape, array.chunks))
        # mypy types a tuple built from a generator as tuple[int, ...]; it has three items here
        return Passthrough(grid, None, "end", False) if blosc_only else None  # type: ignore[arg-type]
    codecs = meta["codecs"]
    shard, location, checksum = None, "end", False
    if len(codecs) == 1 and codecs[0]["name"] == "sharding_indexed":
        config = codecs[0]["configuration"]
        index_names = [c["name"] for c in config.get("index_codecs", [])]
        if index_names not in (["bytes"], ["bytes", "crc32c"]):
            return None
        assert array.shards is not None  # a sharding_indexed codec means the array has shards
        shard = tuple(s // c for s, c in zip(array.shards, array.chunks))
        codecs, location, checksum = config["codecs"], config.get("index_location", "end"), "crc32c" in index_names
    if [c["name"] for c in codecs] != ["bytes", "blosc"] or \
            codecs[0].get("configuration", {}).get("endian", "little") != "little":
        return None
    outer = array.shards or array.chunks
    grid = tuple(-(-n // c) for n, c in zip(array.shape, outer))
    # mypy types a tuple built from a generator as tuple[int, ...]; it has three items here
    return Passthrough(grid, shard, location, checksum)  # type: ignore[arg-type]


def _key_path(array: zarr.Array, key: tuple[int, ...]) -> str:
    """Where the chunk (or shard) ``key`` of ``array`` is stored: its path in a local store, else store and key."""
    name = array.metadata.encode_chunk_key(key)
    name = f"{array.path}/{name}" if array.path else name
    root = getattr(array.store, "root", None)
    return os.path.join(os.fspath(root), name) if root is not None else f"{array.store}/{name}"


def chunk_name(array: zarr.Array, chunk: tuple[int, ...]) -> str:
    """The stored chunk at chunk-grid position ``chunk``, for messages: its key's path, and in a shard its place."""
    if array.shards is None:
        return _key_path(array, chunk)
    per_shard = [s // c for s, c in zip(array.shards, array.chunks)]
    shard = tuple(c // n for c, n in zip(chunk, per_shard))
    inner = tuple(c % n for c, n in zip(chunk, per_shard))
    return f"{_key_path(array, shard)} (its inner chunk {inner})"


def _get(array: zarr.Array, key: tuple[int, ...]) -> bytes | None:
    """The stored bytes of the chunk (or shard) ``key``; None if missing."""
    name = array.metadata.encode_chunk_key(key)
    with naming(_key_path(array, key)):
        buffer = sync(array.store.get(f"{array.path}/{name}" if array.path else name, default_buffer_prototype()))
    return None if buffer is None else buffer.to_bytes()


def _store(array: zarr.Array, volume: WritableVolume, chunk: tuple[int, ...], data: bytes) -> None:
    """Store one full-size blosc chunk as the block at ``chunk``, once it decompresses: as it is, or cropped
    at the edge."""
    full = np.empty(volume.block_shape, volume.dtype)
    try:
        decompress_into(data, full, f"{chunk_name(array, chunk)}: zarr chunk {chunk}")
    except CorruptBlockError as exc:
        raise CorruptBlockError(f"{exc} The source chunk is damaged. {DAMAGED_FIX}") from None
    block = chunk_block(volume, chunk)  # type: ignore[arg-type]  # a chunk key of a 3D array has three items
    assert block is not None  # the callers pass chunks of the grid
    if block.shape == volume.block_shape:
        volume.write_block_payload(data, *block.origin)
    else:
        volume.write_block(full[tuple(slice(0, n) for n in block.shape)], *block.origin)


def _copy_key(array: zarr.Array, volume: WritableVolume, plan: Passthrough, key: tuple[int, ...]) -> int:
    """Pass through the chunk or shard at ``key``; return the blocks written."""
    data = _get(array, key)
    if data is None:
        return 0
    if plan.shard_blocks is None:
        _store(array, volume, key, data)
        return 1
    n = math.prod(plan.shard_blocks)
    try:
        index = decode_index(data, n, plan.index_location, plan.index_checksum, _key_path(array, key))
    except CorruptBlockError as exc:
        raise CorruptBlockError(f"{exc} {DAMAGED_FIX}") from None
    written = 0
    for position, inner in enumerate(np.ndindex(*plan.shard_blocks)):
        chunk = tuple(k * s + i for k, s, i in zip(key, plan.shard_blocks, inner))
        part = inner_chunk(data, index, position)
        if part is not None and all(c < g for c, g in zip(chunk, volume.layout.grid)):
            _store(array, volume, chunk, part)
            written += 1
    return written


def transcode_step(array: zarr.Array, block_shape: tuple[int, int, int]) -> tuple[int, int, int]:
    """The side of the regions a transcode reads: whole blocks covering at least one zarr chunk, so
    that each chunk is decoded a few times at most."""
    # mypy types a tuple built from a generator as tuple[int, ...]; it has three items here
    return tuple(-(-c // b) * b for c, b in zip(array.chunks, block_shape))  # type: ignore[return-value]


def _damaged(array: zarr.Array, region: tuple[slice, ...]) -> CorruptBlockError | None:
    """The error naming the first chunk of ``region`` that zarr-python cannot read alone; None if each reads."""
    first, last = ([r.start // c for r, c in zip(region, array.chunks)],
                   [-(-min(r.stop, n) // c) for r, c, n in zip(region, array.chunks, array.shape)])
    for offset in np.ndindex(*(b - a for a, b in zip(first, last))):
        chunk = tuple(a + o for a, o in zip(first, offset))
        try:
            array[tuple(slice(c * n, (c + 1) * n) for c, n in zip(chunk, array.chunks))]
        except OSError:
            raise
        except Exception as exc:  # a codec's own error: numcodecs and zarr raise many kinds
            return CorruptBlockError(f"{chunk_name(array, chunk)}: zarr chunk {chunk}: zarr-python cannot decode "
                                     f"it ({type(exc).__name__}: {exc}). The source chunk is damaged. {DAMAGED_FIX}")
    return None


def _read_region(array: zarr.Array, region: tuple[slice, ...]) -> np.ndarray:
    """``array[region]``; a chunk zarr-python cannot decode raises :class:`CorruptBlockError` naming it."""
    try:
        # zarr's stubs return "array or scalar"; a tuple of slices always reads an ndarray
        return cast(np.ndarray, array[region])
    except OSError:
        raise
    except Exception as exc:  # a codec's own error: numcodecs and zarr raise many kinds
        damaged = _damaged(array, region)
        if damaged is None:
            raise
        raise damaged from exc


def _transcode_region(array: zarr.Array, volume: WritableVolume, step: tuple[int, ...], region: tuple[int, ...]
                      ) -> int:
    """Read one region of whole blocks through zarr-python and write its blocks, leaving all-zero ones out."""
    box = tuple(slice(r * s, min((r + 1) * s, n)) for r, s, n in zip(region, step, volume.shape))
    data = _read_region(array, box)
    written = 0
    for part in volume.iter_projections(box):
        block = data[part.out_selection]
        if block.any():
            volume.write_block(block, *part.origin)
            written += 1
    return written


def _began_here(path: str) -> bool:
    """Whether ``path`` is a volume that this tool began and did not finish (its header's incomplete mark)."""
    try:
        mark = read_directory_file(path).layout.marks.get(marks.INCOMPLETE_KEY)
    except (OSError, FormatError):
        return False
    return isinstance(mark, dict) and mark.get("tool") == TOOL


def import_array(array: zarr.Array, dest: str, workers: int | None, silent: bool, label: str, replace: bool,
                 **create_kwargs: Any) -> Volume:
    """Write one zarr array as a new blockfs volume at ``dest`` (block shape = chunk shape by default),
    replacing the volume there when ``replace``; marked incomplete until every block is stored.
    ``create_kwargs`` go to :func:`blockfs.create_volume`."""
    if array.ndim != 3:
        raise InvalidArgumentError(f"{dest}: the zarr array has shape {array.shape}; only 3D (z, y, x) arrays "
                                   "can be imported.")
    meta: dict[str, Any] = array.metadata.to_dict()
    compressor: dict[str, Any] = meta.get("compressor") or next((c["configuration"] for c in _inner_codecs(meta)
                                                 if c["name"] == "blosc"), {})
    kwargs: dict[str, Any] = {"block_shape": tuple(array.chunks)}
    if compressor.get("id", "blosc") == "blosc" and compressor.get("cname") in blosc.compressor_list():
        kwargs.update(compression=compressor["cname"], compression_level=int(compressor.get("clevel", 5)))
    kwargs.update(create_kwargs)
    volume = create_volume(dest, array.shape, array.dtype, overwrite=replace, incomplete=TOOL, **kwargs)
    try:
        plan = passthrough(array, volume.layout.block_shape)
        if plan is not None:
            keys: Iterator[tuple[int, ...]] = np.ndindex(*plan.grid)
            total = math.prod(plan.grid)
            task = lambda key: _copy_key(array, volume, plan, key)  # noqa: E731
        else:
            step = transcode_step(array, volume.layout.block_shape)
            keys = np.ndindex(*(-(-n // s) for n, s in zip(array.shape, step)))
            total = math.prod(-(-n // s) for n, s in zip(array.shape, step))
            task = lambda key: _transcode_region(array, volume, step, key)  # noqa: E731
        with tqdm(total=total, unit="chunk" if plan else "region", desc=label, disable=silent) as bar:
            for _ in ordered_map(task, keys, workers):
                bar.update()
    finally:
        volume.close()
    mark_complete(dest, durable=volume.durable)
    return open_volume(dest)


def _inner_codecs(meta: dict[str, Any]) -> list[dict[str, Any]]:
    codecs = meta.get("codecs") or []
    if len(codecs) == 1 and codecs[0]["name"] == "sharding_indexed":
        return codecs[0]["configuration"]["codecs"]
    return codecs


def write_info(root: str, levels: list[tuple[Level, Volume]]) -> None:
    """The pyramid's ``info`` file (precomputed-tif layout) for its written levels."""
    volume = levels[0][1]
    scales = [{"key": level_key(level.factor), "size": list(reversed(v.shape)),
               "resolution": [s * 1000 for s in level.voxel_size_um],
               "chunk_sizes": [list(reversed(v.block_shape))], "encoding": "raw",
               "voxel_offset": [0, 0, 0]} for level, v in levels]
    info = {"data_type": volume.dtype.name, "num_channels": 1, "type": "image", "scales": scales}
    path = os.path.join(root, INFO_NAME)
    with naming(path), open(path, "w", encoding="utf-8") as f:
        json.dump(info, f, indent=2)


def _single(chosen: Level, metadata: dict[str, Any], dest: str, overwrite: bool, workers: int | None,
            silent: bool, create_kwargs: dict[str, Any]) -> Volume:
    """Import one level as the volume ``dest``; over this tool's own incomplete volume, with as many shards."""
    replace = replaceable(dest, overwrite, is_volume, _began_here)
    if replace and _began_here(dest):
        create_kwargs.setdefault("shards", len(read_directory_file(dest).layout.block_filenames))
    meta = {**metadata, **create_kwargs.pop("metadata", {}), VOXEL_SIZE_KEY: list(chosen.voxel_size_um)}
    return import_array(chosen.array, dest, workers, silent, "from-zarr", replace, metadata=meta, **create_kwargs)


def _pyramid(levels: list[Level], metadata: dict[str, Any], dest: str, overwrite: bool, workers: int | None,
             silent: bool, create_kwargs: dict[str, Any]) -> list[Volume]:
    """Import every level into the pyramid folder ``dest``, written anew under this tool's marker."""
    replaceable(dest, overwrite, is_pyramid, has_marker(TOOL))
    written = []
    with marked_folder(dest, TOOL):
        for i, lv in enumerate(levels):
            path = os.path.join(os.path.abspath(dest), level_key(lv.factor), LEVEL_FILE)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            shards = create_kwargs.get("shards")
            kwargs = {**create_kwargs, "shards": shards if isinstance(shards, int) else None,  # beside each level
                      "metadata": {**metadata, **create_kwargs.get("metadata", {}),
                                   VOXEL_SIZE_KEY: list(lv.voxel_size_um)}}
            written.append((lv, import_array(lv.array, path, workers, silent, f"level {i}", False, **kwargs)))
        write_info(dest, written)
    return [d for _, d in written]


def from_zarr(source: str | os.PathLike, dest: str | os.PathLike, level: int | None = None, pyramid: bool = False,
              overwrite: bool = False, workers: int | None = None, silent: bool = True,
              **create_kwargs: Any) -> Volume | list[Volume]:
    """Import a zarr array or one level (default 0) of an OME-Zarr image as a volume at ``dest``, or with
    ``pyramid=True`` every level as a pyramid folder ``dest``. ``create_kwargs`` (``block_shape`` (z, y, x),
    ``shards``, ``compression``, ...) go to :func:`blockfs.create_volume`.

    An existing output is replaced with ``overwrite``; this tool's own incomplete output (an
    interrupted or failed run) is replaced without it.
    """
    source, dest = os.fspath(source), os.fspath(dest)
    if pyramid and level is not None:
        raise InvalidArgumentError(f"{source}: pass either a level or pyramid=True (--level or --pyramid), not both.")
    levels, metadata = open_levels(source)
    if not pyramid:
        index = level or 0
        if not 0 <= index < len(levels):
            raise InvalidArgumentError(f"{source}: level {index} does not exist; the image has levels 0 to "
                                       f"{len(levels) - 1}.")
        return _single(levels[index], metadata, dest, overwrite, workers, silent, create_kwargs)
    bad = [lv.factor for lv in levels if lv.factor < 1 or lv.factor & (lv.factor - 1)]
    if bad:
        raise FormatError(f"{source}: level scale factors {bad} are not powers of 2; a blockfs pyramid needs "
                          "levels 2x apart. Import single levels with --level instead.")
    return _pyramid(levels, metadata, dest, overwrite, workers, silent, create_kwargs)
