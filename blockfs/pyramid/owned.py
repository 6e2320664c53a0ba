"""What a pyramid folder owns, what ``--overwrite`` removes of it, and the source it must never touch.

A pyramid folder's own files are the ones this tool (or ``blockfs from-zarr --pyramid``) writes:
``info``, the journal folder, and in each level folder (``{f}_{f}_{f}``) its directory file, the
shards that file names there, shards by this tool's names (``precomputed.blockfs.N``) and the
temporary files of an interrupted atomic write of either. Anything else in a level folder makes
``--overwrite`` refuse before it removes anything; anything else beside the levels is left alone.

The source is never removed or written: a source whose directory file is the folder's own level 1
(by any name: a symlink, a hard link) keeps that level as it is and the coarser levels are rebuilt
from it; a source with any other file among what the build would remove or write is refused.
"""

from __future__ import annotations

import os
import re
import shutil

from ..errors import FormatError, InvalidArgumentError, VolumeExistsError
from ..ops.relocate import locate_shards, read_directory_file
from ..remote import is_url
from ..storage import fsync_folder
from .folder import INFO_NAME, LEVEL_FILE, level_key
from .plan import Plan

JOURNAL = ".pyramid-build"
PLAN_FILE = "plan.json"
LEVEL_FOLDER = re.compile(r"\d+_\d+_\d+")
_TEMPORARY = r"\.[0-9a-f]{12}\.tmp"  # storage.atomic_write's name: .<name>.<12 hex digits>.tmp
_SHARD = rf"{re.escape(LEVEL_FILE)}(?:\.\d+)?"  # the directory file or a shard by this tool's name
_LEVEL_OWN = re.compile(rf"{_SHARD}|\.{_SHARD}{_TEMPORARY}")
_INFO_TEMPORARY = re.compile(rf"\.{INFO_NAME}{_TEMPORARY}")

#: Each level folder a build would remove, with its own files.
Levels = dict[str, list[str]]


def level1_is_source(plan: Plan) -> bool:
    """Whether the source is the destination's own level 1 (its directory file, by any name)."""
    try:
        return os.path.samefile(plan.source, plan.path(1))
    except OSError:
        return False


def level_files(folder: str) -> list[str]:
    """The own files of the level folder ``folder``; raise, naming it, if it holds anything else."""
    index = os.path.join(folder, LEVEL_FILE)
    named: set[str] = set()
    try:
        named = {os.path.realpath(s.path) for s in locate_shards(index, read_directory_file(index).names)}
    except (FormatError, OSError):  # no readable directory file: its shards then count as foreign
        pass
    files = []
    for name in sorted(os.listdir(folder)):
        path = os.path.join(folder, name)
        if os.path.isdir(path) and not os.path.islink(path) or not (
                _LEVEL_OWN.fullmatch(name) or os.path.realpath(path) in named):
            raise VolumeExistsError(f"{path}: not a file of the pyramid in {os.path.dirname(folder)}; blockfs "
                                    "pyramid removes only the pyramid's own files, so move it out of that folder "
                                    "first.")
        files.append(path)
    return files


def pyramid_levels(dest: str, keep_level1: bool) -> Levels:
    """The level folders in ``dest`` (but level 1 if ``keep_level1``), each with its own files."""
    levels = {}
    for name in sorted(os.listdir(dest)):
        folder = os.path.join(dest, name)
        if not LEVEL_FOLDER.fullmatch(name) or (keep_level1 and name == level_key(1)):
            continue
        if os.path.islink(folder) or not os.path.isdir(folder):
            raise VolumeExistsError(f"{folder}: named like a pyramid level but not a folder (a link or a file), so "
                                    "not the pyramid's; move it out of that folder first.")
        levels[folder] = level_files(folder)
    return levels


def named_files(dest: str) -> list[str]:
    """``info``, its interrupted temporaries and every file of the journal: the files replaced only by name."""
    files = [os.path.join(dest, n) for n in os.listdir(dest) if n == INFO_NAME or _INFO_TEMPORARY.fullmatch(n)]
    for root, _, names in os.walk(os.path.join(dest, JOURNAL)):
        files += [os.path.join(root, n) for n in names]
    return files


def _identity(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def protect_source(plan: Plan, levels: Levels, named: list[str]) -> None:
    """Refuse a build that would lose or change a file of its source.

    Level 1 and ``named`` files are only removed or replaced by name, so they must not be one of the
    source's names (by real path); the coarser levels' files are written in place (on a resumed
    build), so they must not be one of the source's files under any name (by inode).
    """
    if is_url(plan.source):
        return  # a source read by URL has no files here
    header = read_directory_file(plan.source)
    source = [plan.source] + [s.path for s in locate_shards(plan.source, header.names) if s.exists]
    by_name = {os.path.realpath(p): p for p in source}
    by_inode = {key: p for p in source if (key := _identity(p)) is not None}
    level1 = os.path.dirname(plan.path(1))
    clash = [(path, by_name[os.path.realpath(path)]) for folder, files in levels.items() if folder == level1
             for path in files if os.path.realpath(path) in by_name]
    clash += [(path, by_name[os.path.realpath(path)]) for path in named if os.path.realpath(path) in by_name]
    clash += [(path, by_inode[key]) for folder, files in levels.items() if folder != level1
              for path in files if (key := _identity(path)) is not None and key in by_inode]
    if clash:
        path, mine = clash[0]
        same = "" if path == mine else f" (the same file as {path})"
        raise InvalidArgumentError(
            f"{plan.source}: the source's file {mine}{same} is part of the pyramid in {plan.dest}, which this build "
            f"would remove or rewrite; nothing was changed. Give {plan.path(1)} as the source to rebuild the coarser "
            "levels from level 1, copy the volume out of the folder first (blockfs-cp), or choose another output "
            "folder.")


def remove_level(folder: str, files: list[str]) -> None:
    """Remove a level folder's own ``files``, its directory file last (until then it names the shards,
    which makes them the pyramid's), then the folder."""
    for path in sorted(files, key=lambda p: os.path.basename(p) == LEVEL_FILE):
        os.unlink(path)
    os.rmdir(folder)


def _remove(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    else:
        os.unlink(path)


def clear(dest: str, levels: Levels) -> None:
    """Remove the pyramid (finished or not) in ``dest``: its ``info``, journal and ``levels``, nothing else.

    The journal folder is made first and stays, and its plan goes before ``info``: an interruption
    leaves the previous pyramid whole, or a half-built folder without a plan, which a re-run
    (``--resume`` or ``--overwrite``) starts again.
    """
    folder = os.path.join(dest, JOURNAL)
    os.makedirs(folder, exist_ok=True)
    fsync_folder(dest)
    for path in (os.path.join(folder, PLAN_FILE), os.path.join(dest, INFO_NAME)):
        if os.path.lexists(path):
            os.unlink(path)
            fsync_folder(os.path.dirname(path))
    for name in os.listdir(folder):
        _remove(os.path.join(folder, name))
    for level, files in levels.items():
        remove_level(level, files)
    for name in os.listdir(dest):
        if _INFO_TEMPORARY.fullmatch(name):
            os.unlink(os.path.join(dest, name))
    fsync_folder(dest)
