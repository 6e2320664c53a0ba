"""What ``blockfs info`` says about a pyramid folder: its levels, shapes, factors and blocks written."""

from __future__ import annotations

import os
from typing import Any

from .. import remote
from ..errors import FormatError
from ..ops.info import describe_volume, human
from .folder import LEVEL_FILE, is_pyramid, read_info
from .owned import JOURNAL


def describe_pyramid(root: str) -> dict[str, Any]:
    """The pyramid's ``info`` and, per level, what ``blockfs info`` reports of its volume."""
    root = remote.absolute(root)
    if not is_pyramid(root):
        if os.path.isdir(os.path.join(root, JOURNAL)):
            raise FormatError(f"{root}: an interrupted pyramid build, not a finished pyramid; continue it with "
                              "blockfs pyramid SOURCE DEST --resume.")
        raise FormatError(f"{root}: a folder without a pyramid 'info' file; give a volume's .blockfs file or a "
                          "pyramid folder.")
    info = read_info(root)
    levels = []
    for scale in info["scales"]:
        volume = describe_volume(os.path.join(root, scale["key"], LEVEL_FILE))
        levels.append({"key": scale["key"], "factor": [int(f) for f in scale["key"].split("_")],
                       "resolution_nm": scale["resolution"], **volume})
    return {"path": root, "type": info.get("type"), "data_type": info.get("data_type"), "info": info,
            "levels": levels, "bytes_on_disk": sum(level["bytes_on_disk"] for level in levels)}


def format_pyramid(description: dict[str, Any]) -> str:
    """The report ``blockfs info`` prints for a pyramid folder."""
    levels = description["levels"]
    lines = [f"pyramid       {description['path']}",
             f"levels        {len(levels)}, {description['data_type']}, type {description['type']}",
             f"on disk       {human(description['bytes_on_disk'])} (level 1 may share its shards with the source)"]
    for level in levels:
        z, y, x = level["shape_zyx"]
        bz, by, bx = level["block_size_zyx"]
        rx, ry, rz = level["resolution_nm"]
        lines.append(f"  {level['key']:<12} {z} x {y} x {x} (z, y, x), blocks {bz}x{by}x{bx}, resolution "
                     f"{rx:g} x {ry:g} x {rz:g} nm (x, y, z); written {level['blocks_written']} of "
                     f"{level['blocks_total']} blocks")
    return "\n".join(lines)
