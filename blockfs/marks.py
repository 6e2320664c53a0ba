"""Marks in a volume's header for states that an earlier reader need not understand.

- ``BlockfsIncomplete``: a tool has created the volume and not yet finished writing it. It is the
  first key of the JSON text, and finishing blanks it out in place (the key, its value and the comma
  after them become spaces), so the header keeps its length and the entries their place.
- ``BlockfsLost``: the blocks (by first voxel) that repair could not save; they read as zeros, and ``check``
  and ``info`` report each until it is written again or the loss is accepted.

An earlier reader takes both for application metadata (docs/FORMAT.md section 11).
"""

from __future__ import annotations

import datetime
import json
import os
from typing import Any

INCOMPLETE_KEY = "BlockfsIncomplete"
LOST_KEY = "BlockfsLost"
KEYS = (INCOMPLETE_KEY, LOST_KEY)


def incomplete(tool: str) -> dict[str, Any]:
    """The value that marks a volume as being written by ``tool`` (e.g. "blockfs from-zarr")."""
    now = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat()
    return {"tool": tool, "since": now, "host": os.uname().nodename, "pid": os.getpid()}


def describe_incomplete(value: Any) -> str:
    """Why an incomplete volume is so, for messages."""
    tool = value.get("tool", "a tool") if isinstance(value, dict) else "a tool"
    since = f" at {value['since']}" if isinstance(value, dict) and "since" in value else ""
    return (f"{tool} began writing it{since} and has not finished (it was interrupted or is still running); "
            "run it again to resume or replace the volume")


def lost(blocks: list[tuple[int, int, int]], by: str) -> dict[str, Any]:
    """The value that records the blocks at first voxels ``blocks`` (x, y, z) as lost by ``by``."""
    now = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat()
    return {"blocks": [list(b) for b in sorted(set(map(tuple, blocks)))], "by": by, "at": now}


def lost_blocks(value: Any) -> list[tuple[int, int, int]]:
    """First voxels (x, y, z) a ``BlockfsLost`` value names (none for a value this blockfs does not understand)."""
    blocks = value.get("blocks") if isinstance(value, dict) else None
    if not isinstance(blocks, list):
        return []
    return [tuple(b) for b in blocks if isinstance(b, list) and len(b) == 3
            and all(isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in b)]


def without_incomplete(json_text: str) -> str | None:
    """``json_text`` with its leading ``BlockfsIncomplete`` key blanked out (same length); None if it has none."""
    prefix = "{" + json.dumps(INCOMPLETE_KEY) + ":"
    if not json_text.startswith(prefix):
        return None
    decoder = json.JSONDecoder()
    start = len(prefix)
    while json_text[start:start + 1].isspace():
        start += 1
    _, end = decoder.raw_decode(json_text, start)
    while json_text[end:end + 1].isspace():
        end += 1
    if json_text[end:end + 1] != ",":
        return None
    return "{" + " " * end + json_text[end + 1:]
