"""Where the blockfs 1.0.0 fixture volumes live, and what their manifest says.

The fixtures are volumes written by the earlier blockfs implementation. They are not part of the
repository: CI keeps them in ``shared/fixtures/blockfs-1.0.0`` beside the clone, and the
``BLOCKFS_FIXTURES`` environment variable points elsewhere. They must never be written to.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
ENV_VAR = "BLOCKFS_FIXTURES"


def fixtures_dir() -> Path:
    """The folder holding manifest.json and the fixture volumes (it may not exist)."""
    configured = os.environ.get(ENV_VAR)
    if configured:
        return Path(configured)
    return REPO_ROOT.parent / "shared" / "fixtures" / "blockfs-1.0.0"


def require_fixtures() -> Path:
    """Return the fixtures folder; skip the test if it is absent, or fail under CI."""
    folder = fixtures_dir()
    if (folder / "manifest.json").is_file():
        return folder
    message = (f"blockfs fixtures not found at {folder}; set {ENV_VAR} to the folder holding "
               "manifest.json (blockfs-1.0.0/ of the shared fixtures)")
    if os.environ.get("CI"):
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def fixture_cases() -> list[dict[str, Any]]:
    """The manifest's cases, or an empty list if the fixtures are absent."""
    manifest = fixtures_dir() / "manifest.json"
    if not manifest.is_file():
        return []
    with open(manifest, encoding="utf-8") as f:
        cases: list[dict[str, Any]] = json.load(f)["cases"]
    return cases


def case_ids() -> list[str]:
    """Test ids for :func:`fixture_cases`, or one placeholder id when there are none."""
    return [case["name"] for case in fixture_cases()] or ["no-fixtures"]


def case_params() -> list[dict[str, Any] | None]:
    """Parameters for ``pytest.mark.parametrize``: the cases, or ``[None]`` when absent.

    A single ``None`` keeps the test collected, so that :func:`require_fixtures` can skip it or,
    under CI, fail it, instead of pytest silently collecting nothing.
    """
    return list(fixture_cases()) or [None]


def copy_volume(case: dict[str, Any], dest: Path) -> Path:
    """Copy one fixture volume into ``dest`` and return the copy's directory file.

    The shard names stored in the fixtures are relative, so the copy resolves its shards beside
    its own directory file.
    """
    folder = require_fixtures()
    dest.mkdir(parents=True, exist_ok=True)
    for name in [case["directory_file"], *case["block_files"]]:
        (dest / name).write_bytes((folder / name).read_bytes())
        (dest / name).chmod(0o644)
    return dest / case["directory_file"]


def _header(data: bytes) -> tuple[int, int, dict[str, Any]]:
    """(M, D, JSON) of a directory file's bytes."""
    json_len = int.from_bytes(data[8:12], "little")
    start = int.from_bytes(data[12:16], "little")
    return json_len, start, json.loads(data[16:16 + json_len])


def drop_last_entry(directory_file: Path) -> None:
    """Shorten a directory file by its last entry, as a writer that never wrote that block would."""
    data = directory_file.read_bytes()
    _, _, meta = _header(data)
    entry_size = -(-(meta["NOffsetBits"] + meta["NSizeBits"]) // 8)
    directory_file.write_bytes(data[:-entry_size])


def pad_header(directory_file: Path, extra: int, fill: int = 0xA5) -> None:
    """Insert ``extra`` bytes of ``fill`` between the JSON and the entries, raising D to match."""
    data = directory_file.read_bytes()
    json_len, start, _ = _header(data)
    preamble = data[:12] + (start + extra).to_bytes(4, "little")
    directory_file.write_bytes(preamble + data[16:start] + bytes([fill]) * extra + data[start:])


def rewrite_names(directory_file: Path, names: list[str]) -> None:
    """Replace BlockFilenames in a directory file, keeping its entries (moved to the new D)."""
    data = directory_file.read_bytes()
    _, start, meta = _header(data)
    meta["BlockFilenames"] = names
    text = json.dumps(meta).encode("utf-8")
    directory_file.write_bytes(data[:8] + len(text).to_bytes(4, "little") + (16 + len(text)).to_bytes(4, "little")
                               + text + data[start:])
