"""A pyramid folder: ``info`` plus one blockfs volume per level, as precomputed-tif lays it out.

    <root>/info                              JSON: data type, and one "scale" per level
    <root>/1_1_1/precomputed.blockfs         level 1, full resolution (factor 1)
    <root>/{f}_{f}_{f}/precomputed.blockfs   level with factor f = 2**(level - 1)
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

from .. import remote
from ..errors import FormatError
from ..storage import atomic_write, naming
from ..volume import Volume, open_volume

INFO_NAME = "info"
LEVEL_FILE = "precomputed.blockfs"


def level_key(factor: int) -> str:
    """The folder name (and ``info`` key) of the level downsampled by ``factor`` on every axis."""
    return f"{factor}_{factor}_{factor}"


def level_path(root: str | os.PathLike, factor: int) -> str:
    """The index file of the level with ``factor`` under a pyramid folder."""
    return os.path.join(os.fspath(root), level_key(factor), LEVEL_FILE)


def is_pyramid(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a folder (or the URL of one) with a pyramid ``info`` file."""
    info = os.path.join(os.fspath(path), INFO_NAME)
    return remote.exists(info) if remote.is_url(info) else os.path.isfile(info)


def _read(path: str) -> bytes:
    if remote.is_url(path):
        return remote.read_object(path)
    with open(path, "rb") as f:
        return f.read()


def read_info(root: str | os.PathLike) -> dict[str, Any]:
    """The ``info`` JSON of a pyramid folder (or the URL of one), checked for the keys a reader needs."""
    path = os.path.join(os.fspath(root), INFO_NAME)
    try:
        info = json.loads(_read(path).decode("utf-8"))
    except ValueError as exc:
        raise FormatError(f"{path}: not a JSON pyramid info file ({exc}); rebuild it with blockfs pyramid.") from None
    scales = info.get("scales") if isinstance(info, dict) else None
    if not isinstance(scales, list) or not scales or not all(
            isinstance(s, dict) and isinstance(s.get("key"), str) and isinstance(s.get("resolution"), list)
            for s in scales):
        raise FormatError(f"{path}: 'scales' must be a non-empty list of objects with 'key' and 'resolution'; "
                          "rebuild the info file with blockfs pyramid.")
    return info


@dataclass(frozen=True)
class Pyramid:
    """An opened pyramid folder: its ``info`` and each level as a read-only volume, finest first."""

    root: str
    info: dict[str, Any]
    levels: tuple[Volume, ...]

    @property
    def keys(self) -> list[str]:
        """Each level's folder name, e.g. ``"2_2_2"``."""
        return [scale["key"] for scale in self.info["scales"]]

    @property
    def resolutions_nm(self) -> list[tuple[float, float, float]]:
        """Each level's voxel size in nanometres, (x, y, z)."""
        return [tuple(float(r) for r in scale["resolution"]) for scale in self.info["scales"]]  # type: ignore[misc]

    @property
    def voxel_size_um(self) -> tuple[float, float, float]:
        """Level 1's voxel size in micrometres, (x, y, z)."""
        return tuple(r / 1000 for r in self.resolutions_nm[0])  # type: ignore[return-value]


def open_pyramid(root: str | os.PathLike, verify: bool = True) -> Pyramid:
    """Open every level of the pyramid folder ``root`` (or at the URL ``root``) read-only."""
    info = read_info(root)
    levels = []
    for scale in info["scales"]:
        path = os.path.join(os.fspath(root), scale["key"], LEVEL_FILE)
        if not (remote.exists(path) if remote.is_url(path) else os.path.exists(path)):
            raise FormatError(f"{path}: level {scale['key']!r} named in the pyramid's info file is missing; "
                              "rebuild it with blockfs pyramid --resume.")
        levels.append(open_volume(path, verify))
    return Pyramid(os.fspath(root), info, tuple(levels))


def make_info(dtype: str, kind: str, shape_zyx: tuple[int, int, int], block_zyx: tuple[int, int, int],
              voxel_size_um: tuple[float, float, float], levels: int) -> dict[str, Any]:
    """The ``info`` JSON of a pyramid of ``levels`` levels, as precomputed-tif writes it (all triples x, y, z).

    ``kind`` is ``"image"`` or ``"segmentation"``; ``voxel_size_um`` is level 1's (x, y, z) voxel size.
    """
    scales = []
    for level in range(1, levels + 1):
        factor = 2 ** (level - 1)
        scales.append({
            "key": level_key(factor),
            "size": [-(-n // factor) for n in reversed(shape_zyx)],
            "resolution": [round(v * 1000 * factor, 6) for v in voxel_size_um],
            "chunk_sizes": [list(reversed(block_zyx))],
            "encoding": "raw",
            "voxel_offset": [0, 0, 0],
        })
    return {"data_type": dtype, "num_channels": 1, "type": kind, "scales": scales}


def write_info(root: str | os.PathLike, info: dict[str, Any]) -> None:
    """Write ``info`` into the pyramid folder ``root`` atomically (a reader sees no file or the whole file)."""
    path = os.path.join(os.fspath(root), INFO_NAME)
    with naming(path), atomic_write(path) as temporary, open(temporary, "w", encoding="utf-8") as f:
        json.dump(info, f, indent=1)
