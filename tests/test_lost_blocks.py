"""What repair cannot save stays visible, and a missing shard is never taken for an empty one.

* A block with no complete copy left: repair exits 3, records it in the header (BlockfsLost), and
  ``check`` (exit 1, naming it) and ``info`` report it until it is written again or the loss is
  accepted with ``blockfs repair --accept-loss``; a later loss is merged with the recorded one.
  ``ChecksumError`` names the volume and the block's (x, y, z).
* A missing shard: repair refuses (naming it and the way on), unless ``--drop-missing-shards``;
  ``check`` reports it even when no entry points into it; an empty shard is fine.
* ``check`` and ``info`` report an incomplete volume and a ``cp -r`` copy that uses the original's
  shards, and open such volumes without a warning (warnings are errors here).
"""

from __future__ import annotations

import functools
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import spec_decoder
from crash_writer import DTYPE, block_content
from helpers import in_process
from repair_volumes import build, damage, names_block, opened, run_blockfs, state
from volumes import make_volume

import blockfs
import blockfs.storage
from blockfs import Directory
from blockfs.cli import main as blockfs_main
from blockfs.ops.repair import repair_volume

pytestmark = pytest.mark.timeout(120)

#: ``blockfs ...`` in this process, where a warning would be an error
call = functools.partial(in_process, blockfs_main)
LOST, LATER = (32, 0, 0), (64, 32, 32)
#: The header keys of docs/FORMAT.md section 11
LOST_KEY, INCOMPLETE_KEY = "BlockfsLost", "BlockfsIncomplete"


def check_json(path: Path) -> tuple[int, dict]:
    result = run_blockfs("check", "--json", "--silent", str(path))
    return result.returncode, json.loads(result.stdout)


def kinds(report: dict) -> set[tuple[str, tuple[int, int, int] | None]]:
    """(kind, block) of every problem of a ``check --json`` report."""
    return {(p["kind"], tuple(p["block"]) if p["block"] else None) for p in report["problems"]}


def info_json(path: Path) -> dict:
    result = call("info", "--json", path)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


# -- blocks repair could not save --------------------------------------------------------------

def test_a_lost_block_stays_reported_until_rewritten_or_accepted(tmp_path: Path) -> None:
    path = tmp_path / "volume.blockfs"
    content = build(path)
    damage(path, LOST)

    found = call("check", "--silent", path)
    assert found.returncode == 1 and names_block(found.stdout, LOST), found.stdout
    with Directory.open(str(path)) as volume, pytest.raises(blockfs.ChecksumError) as error:
        volume.read_block(*LOST)
    assert str(error.value).startswith(f"{path}: ") and names_block(str(error.value), LOST), str(error.value)

    repaired = run_blockfs("repair", "--silent", str(path))
    assert repaired.returncode == 3, repaired.stdout + repaired.stderr
    assert "now reads as zeros" in repaired.stdout and names_block(repaired.stdout, LOST), repaired.stdout
    assert state(path)[1] == {LOST}
    code, report = check_json(path)
    assert code == 1 and kinds(report) == {("lost-block", LOST)}, report["problems"]
    text = call("check", "--silent", path)
    assert text.returncode == 1 and names_block(text.stdout, LOST) and "lost-block" in text.stdout, text.stdout
    assert info_json(path)["lost_blocks"] == [list(LOST)]
    shown = call("info", path).stdout
    assert "lost          1 blocks" in shown and names_block(shown, LOST), shown
    with pytest.warns(blockfs.LostBlocksWarning):
        Directory.open(str(path)).close()
    with opened(path) as volume:
        assert not volume.read_block(*LOST).any()

    again = run_blockfs("repair", "--silent", str(path))
    assert again.returncode == 3 and "nothing changed" in again.stdout, again.stdout + again.stderr
    damage(path, LATER)
    assert run_blockfs("repair", "--silent", str(path)).returncode == 3
    assert state(path)[1] == {LOST, LATER}, "a later loss must be merged with the recorded one"

    with opened(path, "r+") as volume:
        volume.write_block(content[LOST], *LOST)
    code, report = check_json(path)
    assert code == 1 and kinds(report) == {("lost-block", LATER)}, "a block written again is no longer lost"

    meta, _, _ = spec_decoder.read_index(path)
    entries = state(path)[0]
    accepted = run_blockfs("repair", "--accept-loss", "--silent", str(path))
    assert accepted.returncode == 0, accepted.stdout + accepted.stderr
    after, _, _ = spec_decoder.read_index(path)
    assert state(path) == (entries, set()) and after == {k: v for k, v in meta.items() if k != LOST_KEY}
    assert check_json(path)[0] == 0
    assert info_json(path)["lost_blocks"] == []
    with opened(path) as volume:
        assert np.array_equal(volume.read_block(*LOST), content[LOST])


def test_the_lost_mark_moves_the_entries_and_keeps_the_incomplete_mark_first(tmp_path: Path) -> None:
    """The new header is longer, so D moves; the entries follow it; an incomplete mark stays the first key."""
    path = tmp_path / "volume.blockfs"
    z, y, x = 64, 64, 96
    d = Directory(x, y, z, DTYPE, str(path), n_filenames=2, x_block_size=32, y_block_size=32,
                  z_block_size=32, metadata={"scope": "light sheet"}).create(incomplete="blockfs test-import")
    content = {}
    for origin in [(0, 0, 0), LOST, LATER]:
        content[origin] = block_content(d.layout.entry_index(*origin), 1, d.get_block_size(*origin))
        d.write_block(content[origin], *origin)
    d.close()
    damage(path, LOST)
    _, d_before, _ = spec_decoder.read_index(path)
    assert repair_volume(str(path)).unsaved == [LOST]
    meta, d_after, index = spec_decoder.read_index(path)
    assert d_after > d_before and index[16:].decode("latin-1").startswith('{"BlockfsIncomplete"')
    assert meta["scope"] == "light sheet" and meta[LOST_KEY]["blocks"] == [list(LOST)]
    assert meta[LOST_KEY]["by"] == "blockfs repair"
    assert blockfs.storage.mark_complete(str(path))
    assert INCOMPLETE_KEY not in spec_decoder.read_index(path)[0]
    with opened(path) as volume:
        for origin in [(0, 0, 0), LATER]:
            assert np.array_equal(volume.read_block(*origin), content[origin]), origin
    assert kinds(check_json(path)[1]) == {("lost-block", LOST)}


# -- missing shards ------------------------------------------------------------------------------

def test_repair_refuses_a_missing_shard_unless_told_to_drop_it(tmp_path: Path) -> None:
    path = tmp_path / "volume.blockfs"
    content = build(path, n_files=3)
    shard, away = tmp_path / "volume.blockfs.1", tmp_path / "unmounted"
    with Directory.open(str(path)) as volume:
        held = sorted(o for o in content if volume.layout.entry_index(*o) % 3 == 1)
    shard.rename(away)
    index = path.read_bytes()

    refused = run_blockfs("repair", "--silent", str(path))
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert refused.stderr.startswith(f"blockfs repair: {path}: 1 of 3 shard files are missing: shard "
                                     f"'volume.blockfs.1' (looked at {shard}"), refused.stderr
    assert f"holding {len(held)} indexed blocks" in refused.stderr and "--drop-missing-shards" in refused.stderr
    with pytest.raises(blockfs.MissingShardError):
        repair_volume(str(path))
    assert path.read_bytes() == index and not list(tmp_path.glob("*.bak*")), "a refused repair changed files"
    code, report = check_json(path)
    assert code == 1 and ("missing-shard", None) in kinds(report)

    dropped = run_blockfs("repair", "--drop-missing-shards", "--silent", str(path))
    assert dropped.returncode == 3, dropped.stdout + dropped.stderr
    assert f"shard 'volume.blockfs.1' is missing ({shard}); its {len(held)} indexed blocks" in dropped.stdout
    assert state(path)[1] == set(held)
    code, report = check_json(path)
    assert code == 1 and kinds(report) == {("missing-shard", None)} | {("lost-block", o) for o in held}
    info = info_json(path)
    assert info["missing_shards"] == ["volume.blockfs.1"] and info["lost_blocks"] == [list(o) for o in held]

    away.rename(shard)  # the file system is back: its records are found again, nothing stays lost
    back = run_blockfs("repair", "--silent", str(path))
    assert back.returncode == 0, back.stdout + back.stderr
    assert state(path)[1] == set() and check_json(path)[0] == 0
    with opened(path) as volume:
        for origin, block in content.items():
            assert np.array_equal(volume.read_block(*origin), block), origin


def test_every_shard_missing(tmp_path: Path) -> None:
    path = tmp_path / "volume.blockfs"
    build(path)
    for shard in tmp_path.glob("volume.blockfs.*"):
        shard.rename(tmp_path / f"away-{shard.name}")
    refused = run_blockfs("repair", "--silent", str(path))
    assert refused.returncode == 1 and "2 of 2 shard files are missing" in refused.stderr, refused.stderr
    accepted = run_blockfs("repair", "--drop-missing-shards", "--accept-loss", "--silent", str(path))
    assert accepted.returncode == 0, accepted.stdout + accepted.stderr
    assert state(path)[1] == set() and not any(size for _, size in state(path)[0])
    checked = call("check", "--silent", path)
    assert checked.returncode == 1 and "healthy" not in checked.stdout, checked.stdout
    assert checked.stdout.count("missing-shard") == 2, checked.stdout
    assert "2 MISSING" in call("info", path).stdout


def test_check_reports_a_missing_shard_that_no_entry_points_into(tmp_path: Path) -> None:
    path = tmp_path / "volume.blockfs"
    d = Directory(96, 32, 32, DTYPE, str(path), n_filenames=3, x_block_size=32, y_block_size=32,
                  z_block_size=32).create()
    for x in (0, 32):  # entries 0 and 1: shard 2 stays empty
        d.write_block(block_content(x // 32, 1, (32, 32, 32)), x, 0, 0)
    d.close()
    empty = tmp_path / "volume.blockfs.2"
    assert empty.stat().st_size == 0
    assert call("check", "--silent", path).returncode == 0, "an empty shard is fine"
    empty.unlink()
    code, report = check_json(path)
    assert code == 1 and kinds(report) == {("missing-shard", None)}, report["problems"]
    assert report["problems"][0]["shard"] == str(empty)


# -- incomplete volumes and copies ---------------------------------------------------------------

def test_check_and_info_report_an_incomplete_volume(tmp_path: Path) -> None:
    path = tmp_path / "volume.blockfs"
    d = Directory(64, 32, 32, DTYPE, str(path), n_filenames=2, x_block_size=32, y_block_size=32,
                  z_block_size=32).create(incomplete="blockfs test-import")
    d.write_block(block_content(0, 1, (32, 32, 32)), 0, 0, 0)
    d.close()
    why = blockfs.marks.describe_incomplete(spec_decoder.read_index(path)[0][INCOMPLETE_KEY])
    checked = call("check", "--silent", path)
    assert checked.returncode == 1 and f"incomplete: {why}" in checked.stdout, checked.stdout
    assert "blockfs test-import began writing it" in why
    assert info_json(path)["incomplete"] == why
    assert f"INCOMPLETE: {why}" in call("info", path).stdout
    assert blockfs.storage.mark_complete(str(path))
    assert call("check", "--silent", path).returncode == 0
    assert info_json(path)["incomplete"] is None


def test_info_and_check_flag_a_copy_that_uses_the_originals_shards(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    source, _ = make_volume(tmp_path / "a")
    shutil.copytree(tmp_path / "a", tmp_path / "copy")
    copy = tmp_path / "copy" / source.name
    info = info_json(copy)
    assert info["foreign_shards"] == [f"{source}.{i}" for i in range(2)], info["foreign_shards"]
    assert [s["copy_beside"] for s in info["shards"]] == [f"{copy}.{i}" for i in range(2)]
    assert [s["path"] for s in info["shards"]] == [f"{source}.{i}" for i in range(2)]
    assert call("info", copy).stdout.count("ANOTHER VOLUME'S SHARD") == 2
    code, report = check_json(copy)
    assert code == 1 and kinds(report) == {("foreign-shard", None)}, report["problems"]
    assert all(f"blockfs rebase {copy}" in p["detail"] for p in report["problems"])
    assert info_json(source)["foreign_shards"] == [] and check_json(source)[0] == 0
    assert call("check", "--silent", copy).returncode == 1  # in this process: no warning either
