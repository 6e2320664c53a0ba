"""blockfs pyramid on a full disk: the message names the file being written, and --resume then finishes."""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import re
from pathlib import Path

import numpy as np
import pytest

from helpers import console

from blockfs import Directory
from blockfs.pyramid import open_pyramid
from blockfs.pyramid.build import build_pyramid
from blockfs.pyramid.plan import make_plan
from blockfs.pyramid.state import prepare

pytestmark = pytest.mark.timeout(180)

SHAPE, BLOCK = (80, 96, 96), 16  # 1.4 MiB of incompressible uint16: fits a 2 MiB disk, its pyramid too
FULL = re.compile(r"blockfs pyramid: (/\S+): No space left on device")


def make_source(path: Path) -> Path:
    d = Directory(SHAPE[2], SHAPE[1], SHAPE[0], np.uint16, str(path), n_filenames=2, x_block_size=BLOCK,
                  y_block_size=BLOCK, z_block_size=BLOCK).create()
    for z, y, x in itertools.product(*(range(0, n, BLOCK) for n in SHAPE)):
        d.write_block(np.random.default_rng([z, y, x]).integers(0, 1 << 16, (BLOCK,) * 3, dtype=np.uint16), x, y, z)
    d.close()
    return path


def digest(volume: Path) -> dict[str, str]:
    """sha256 of a volume's directory file and of each of its shards."""
    paths = [str(volume), *Directory.open(str(volume)).shard_paths]
    return {p: hashlib.sha256(Path(p).read_bytes()).hexdigest() for p in paths}


def fill(folder: Path, leave_kib: int) -> Path:
    """A file that takes the free space of ``folder``'s file system but ``leave_kib`` KiB."""
    ballast = folder / "ballast"
    st = os.statvfs(folder)
    with open(ballast, "wb") as f:
        f.write(bytes(max(0, st.f_bavail * st.f_frsize - leave_kib * 1024)))
    return ballast


def pyramid(*args: object) -> tuple[int, str]:
    result = console("blockfs", "pyramid", *args, "--n-workers", 2, "--silent")
    return result.returncode, result.stderr


def assert_names_a_file_in(err: str, dest: Path) -> None:
    """``blockfs pyramid: FILE: No space left on device``, one line, FILE a file in ``dest``."""
    match = FULL.fullmatch(err.strip())
    assert match, f"the message does not name the file being written: {err!r}"
    named = Path(match.group(1))
    assert named.resolve().is_relative_to(dest.resolve()) and named.parent.is_dir(), err


def assert_same_pyramid(ours: Path, theirs: Path) -> None:
    assert json.loads((ours / "info").read_text()) == json.loads((theirs / "info").read_text())
    for level, (a, b) in enumerate(zip(open_pyramid(ours).levels, open_pyramid(theirs).levels), 1):
        np.testing.assert_array_equal(a[...], b[...], err_msg=f"level {level}")


@pytest.mark.parametrize("tiny_disk", ["tmpfs"], indirect=True)
@pytest.mark.parametrize("source_on, leave_kib", [("another disk", 512), ("the full disk", 0),
                                                  ("the full disk", 8), ("the full disk", 64)])
def test_a_full_disk_names_the_file(tiny_disk: tuple[Path, str], tmp_path: Path, source_on: str,
                                    leave_kib: int) -> None:
    """The source copied to level 1 (from another disk) or hard-linked there; the space runs out in the
    copy, the journal, the coarser levels' directory files or their shards."""
    folder, _ = tiny_disk
    source = make_source((tmp_path if source_on == "another disk" else folder) / "source.blockfs")
    build_pyramid(source, tmp_path / "reference", n_workers=2)
    before = digest(source)
    dest = folder / "pyramid"
    ballast = fill(folder, leave_kib)
    code, err = pyramid(source, dest)
    assert code == 1
    assert_names_a_file_in(err, dest)
    assert digest(source) == before
    os.unlink(ballast)
    code, err = pyramid(source, dest, "--resume")
    assert code == 0, err
    assert_same_pyramid(dest, tmp_path / "reference")
    assert digest(source) == before


@pytest.mark.parametrize("tiny_disk", ["dev-full"], indirect=True)
def test_a_full_shard_of_a_coarser_level_is_named(tiny_disk: tuple[Path, str], tmp_path: Path) -> None:
    """A level-2 shard on a device that is always full (/dev/full), written by the worker processes."""
    folder, _ = tiny_disk
    source = make_source(tmp_path / "source.blockfs")
    build_pyramid(source, tmp_path / "reference", n_workers=2)
    dest = folder / "pyramid"
    prepare(make_plan(source, dest, n_workers=2), n_shards=2)  # a build made ready, its tasks not yet run
    shard = dest / "2_2_2" / "precomputed.blockfs.0"
    shard.unlink()
    shard.symlink_to("/dev/full")
    code, err = pyramid(source, dest, "--resume")
    assert code == 1 and err.strip() == f"blockfs pyramid: {shard}: No space left on device", err
    shard.unlink()
    shard.touch()
    code, err = pyramid(source, dest, "--resume")
    assert code == 0, err
    assert_same_pyramid(dest, tmp_path / "reference")
