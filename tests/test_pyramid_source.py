"""blockfs pyramid never removes or changes its source, and --overwrite removes only the pyramid's own files."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

import pyramid_reference as ref
from helpers import console

from blockfs import Directory
from blockfs.pyramid import open_pyramid
from blockfs.pyramid.build import build_pyramid

pytestmark = pytest.mark.timeout(180)

SHAPE, BLOCK = (16, 24, 32), (4, 6, 8)
Snapshot = dict[str, tuple[int, str]]


def snapshot(folder: Path) -> Snapshot:
    """Every file and link under ``folder``: (inode, sha256 of its bytes, or where the link points)."""
    out = {}
    for root, dirs, files in os.walk(folder):
        for name in files + [d for d in dirs if os.path.islink(os.path.join(root, d))]:
            path = Path(root, name)
            what = "-> " + os.readlink(path) if path.is_symlink() else hashlib.sha256(path.read_bytes()).hexdigest()
            out[str(path.relative_to(folder))] = (os.lstat(path).st_ino, what)
    return out


def pyramid(*args: object) -> tuple[int, str]:
    """``blockfs pyramid ARGS --silent`` as typed in a shell: (exit status, stderr)."""
    result = console("blockfs", "pyramid", *args, "--silent")
    return result.returncode, result.stderr


def make_source(tmp_path: Path) -> Path:
    source = tmp_path / "source.blockfs"
    ref.write_volume(source, ref.sample(SHAPE, "uint16"), BLOCK, lambda z, y, x: (z, y, x) == (4, 6, 8))
    return source


def assert_levels_equal(ours: Path, theirs: Path) -> None:
    assert json.loads((ours / "info").read_text()) == json.loads((theirs / "info").read_text())
    a, b = open_pyramid(ours), open_pyramid(theirs)
    assert len(a.levels) == len(b.levels)
    for level, (x, y) in enumerate(zip(a.levels, b.levels), 1):
        np.testing.assert_array_equal(x[...], y[...], err_msg=f"level {level}")


def level1_source(kind: str, dest: Path, tmp_path: Path) -> Path:
    """Level 1's directory file of ``dest`` by its own path, a symlink to it or a hard link of it."""
    index = dest / "1_1_1" / "precomputed.blockfs"
    if kind == "path":
        return index
    other = tmp_path / f"{kind}.blockfs"
    (os.symlink if kind == "symlink" else os.link)(index, other)
    return other


@pytest.mark.parametrize("kind", ["path", "symlink", "hardlink"])
def test_level1_as_the_source_keeps_it_and_rebuilds_the_coarser_levels(tmp_path: Path, kind: str) -> None:
    """`blockfs pyramid P/1_1_1/precomputed.blockfs P --overwrite` (the issue's command, by any name)."""
    source = make_source(tmp_path)
    dest, reference = tmp_path / "pyramid", tmp_path / "reference"
    build_pyramid(source, dest, method="max", n_workers=2)  # then rebuilt with mean: the levels must change
    build_pyramid(source, reference, n_workers=2)
    level1 = level1_source(kind, dest, tmp_path)
    before = snapshot(dest / "1_1_1")
    code, err = pyramid(level1, dest, "--overwrite", "--n-workers", 2)
    assert code == 0, err
    assert snapshot(dest / "1_1_1") == before, "level 1 (the source) changed"
    assert sorted(os.listdir(dest)) == ["1_1_1", "2_2_2", "4_4_4", "info"]
    assert_levels_equal(dest, reference)


def test_a_from_zarr_pyramid_keeps_its_only_copy_of_level1(tmp_path: Path) -> None:
    """After `blockfs from-zarr --pyramid` level 1 is the only copy of the data; rebuilding from it keeps it."""
    ref.require("zarr")
    source = make_source(tmp_path)
    built, reference = tmp_path / "built", tmp_path / "reference"
    build_pyramid(source, built, n_workers=2)
    build_pyramid(source, reference, n_workers=2)
    result = console("blockfs", "to-zarr", built, tmp_path / "image.ome.zarr", "--silent")
    assert result.returncode == 0, result.stderr
    imported = tmp_path / "imported"
    result = console("blockfs", "from-zarr", tmp_path / "image.ome.zarr", imported, "--pyramid", "--silent")
    assert result.returncode == 0, result.stderr
    before = snapshot(imported / "1_1_1")
    code, err = pyramid(imported / "1_1_1" / "precomputed.blockfs", imported, "--overwrite", "--n-workers", 2)
    assert code == 0, err
    assert snapshot(imported / "1_1_1") == before
    for ours, theirs in zip(open_pyramid(imported).levels, open_pyramid(reference).levels):
        np.testing.assert_array_equal(ours[...], theirs[...])


def _level2(dest: Path, tmp_path: Path) -> Path:
    return dest / "2_2_2" / "precomputed.blockfs"


def _symlink_to_level2(dest: Path, tmp_path: Path) -> Path:
    os.symlink(_level2(dest, tmp_path), tmp_path / "link.blockfs")
    return tmp_path / "link.blockfs"


def _hardlink_of_level2(dest: Path, tmp_path: Path) -> Path:
    os.link(_level2(dest, tmp_path), tmp_path / "hard.blockfs")
    return tmp_path / "hard.blockfs"


def _index_whose_shards_are_level1(dest: Path, tmp_path: Path) -> Path:
    """A copy of level 1's directory file: its own file, but its shards are level 1's, inside DEST."""
    shutil.copy(dest / "1_1_1" / "precomputed.blockfs", tmp_path / "copy.blockfs")
    return tmp_path / "copy.blockfs"


def _volume_in_the_journal(dest: Path, tmp_path: Path) -> Path:
    (dest / ".pyramid-build").mkdir()
    return make_source(dest / ".pyramid-build")


INSIDE: dict[str, Callable[[Path, Path], Path]] = {
    "level 2": _level2, "symlink to level 2": _symlink_to_level2, "hard link of level 2": _hardlink_of_level2,
    "shards in level 1": _index_whose_shards_are_level1, "volume in the journal": _volume_in_the_journal}


@pytest.mark.parametrize("case", INSIDE)
def test_a_source_inside_what_overwrite_replaces_is_refused_and_nothing_changes(tmp_path: Path, case: str) -> None:
    source = make_source(tmp_path)
    dest = tmp_path / "pyramid"
    build_pyramid(source, dest, n_workers=2)
    inside = INSIDE[case](dest, tmp_path)
    Directory.open(str(inside)).close()  # a volume that opens
    before = snapshot(tmp_path)
    code, err = pyramid(inside, dest, "--overwrite")
    assert code == 1 and err.startswith(f"blockfs pyramid: {inside}: ") and len(err.splitlines()) == 1, err
    assert str(dest) in err and "1_1_1/precomputed.blockfs" in err and "another output folder" in err, err
    assert snapshot(tmp_path) == before
    code, err = pyramid(inside, dest, "--resume")  # nothing to resume: the pyramid is finished
    assert code == 1 and snapshot(tmp_path) == before


def test_a_half_built_destination_protects_its_source_too(tmp_path: Path) -> None:
    """An interrupted build (no info yet) resumed or overwritten with a source inside it."""
    source = make_source(tmp_path)
    dest = tmp_path / "pyramid"
    build_pyramid(source, dest, n_workers=2)
    (dest / ".pyramid-build").mkdir()
    os.unlink(dest / "info")
    before = snapshot(tmp_path)
    for option in ("--overwrite", "--resume"):
        code, err = pyramid(_level2(dest, tmp_path), dest, option)
        assert code == 1 and "another output folder" in err, err
        assert snapshot(tmp_path) == before


@pytest.mark.parametrize("where", ["1_1_1/notes.txt", "2_2_2/notes.txt", "4_4_4/analysis/cells.csv",
                                   "16_16_16/mine.bin", "2_2_2/volume/source.blockfs"])
def test_overwrite_refuses_a_level_folder_holding_other_files(tmp_path: Path, where: str) -> None:
    source = make_source(tmp_path)
    dest = tmp_path / "pyramid"
    build_pyramid(source, dest, n_workers=2)
    foreign = dest / where
    foreign.parent.mkdir(parents=True, exist_ok=True)
    if foreign.suffix == ".blockfs":  # the output folder is a parent of the source's folder
        make_source(foreign.parent)
        source = foreign
    else:
        foreign.write_text("not the pyramid's")
    before = snapshot(tmp_path)
    code, err = pyramid(source, dest, "--overwrite")
    entry = dest / where.split("/")[0] / where.split("/")[1]
    assert code == 1 and err.startswith(f"blockfs pyramid: {entry}: ") and "move it out of that folder" in err, err
    assert snapshot(tmp_path) == before


def test_overwrite_leaves_other_files_beside_the_levels_alone(tmp_path: Path) -> None:
    """The output folder is also the source's own folder, with notes of its own: only the pyramid is replaced."""
    dest = tmp_path / "pyramid"
    build_pyramid(make_source(tmp_path), dest, method="max", n_workers=2)
    source = make_source(dest)  # the source now lives in the pyramid folder itself
    (dest / "notes").mkdir()
    (dest / "notes" / "scope.txt").write_text("lightsheet, 1.8 um")
    build_pyramid(source, tmp_path / "reference", n_workers=2)
    mine = {name: value for name, value in snapshot(dest).items() if name.startswith(("source.blockfs", "notes"))}
    code, err = pyramid(source, dest, "--overwrite", "--n-workers", 2)
    assert code == 0, err
    after = snapshot(dest)
    assert {name: after[name] for name in mine} == mine
    assert_levels_equal(dest, tmp_path / "reference")
    for shard in Directory.open(str(dest / "1_1_1" / "precomputed.blockfs")).shard_paths:
        assert os.path.samefile(shard, dest / os.path.basename(shard))  # level 1 links the source's shards


def test_the_sources_own_folder_without_a_pyramid_is_refused(tmp_path: Path) -> None:
    """The output folder is the folder of the source: a plain one, or level 1 of a pyramid."""
    folder = tmp_path / "volume"
    folder.mkdir()
    dest = tmp_path / "pyramid"
    build_pyramid(make_source(folder), dest, n_workers=2)
    level1 = dest / "1_1_1"
    for source, output in [(folder / "source.blockfs", folder), (level1 / "precomputed.blockfs", level1)]:
        before = snapshot(tmp_path)
        code, err = pyramid(source, output, "--overwrite")
        assert code == 1 and err.startswith(f"blockfs pyramid: {output}: ") and "not empty" in err, err
        assert snapshot(tmp_path) == before
