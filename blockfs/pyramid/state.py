"""A pyramid folder while it is built: the journal, level 1 placed, empty coarser levels.

Order of work, so that nothing looks finished before it is:

1. ``DEST/.pyramid-build/plan.json`` (the journal: the build's parameters) marks DEST half-built;
2. level 1 is placed (hard links of the source's shards, else copies, downloaded first for a source
   read by URL; its directory file rewritten to name them absolutely), assembled in the journal and
   moved into ``1_1_1`` at once, unless the source is DEST's own level 1, which is kept as it is; the
   coarser levels are created empty; ``ready`` records that;
3. finished tasks are recorded in batches, each after one fsync of the levels' files: one
   ``done/<first task>.npz`` per batch holds each task's contribution to the level above;
4. the levels above the task level are built, ``info`` is written (atomically), the journal removed.

A folder with ``info`` is finished; one with a journal and no ``info`` is half-built, and
``--resume`` continues it from the tasks not yet done (or starts it again if it has no plan yet).
What DEST owns and what ``--overwrite`` removes of it: :mod:`.owned`.
"""

from __future__ import annotations

import json
import os
import shutil
from typing import Any

import numpy as np

from .. import remote
from ..errors import InvalidArgumentError, VolumeExistsError
from ..ops.relocate import locate_shards, read_directory_file, relocate
from ..ops.transfer import Placement, place
from ..progress import PlacingProgress, same_file_system
from ..storage import atomic_write, fsync_folder, naming
from ..writable import create_volume
from .folder import LEVEL_FILE, is_pyramid, level_key, make_info, write_info
from .owned import (
    JOURNAL,
    PLAN_FILE,
    clear,
    level1_is_source,
    named_files,
    protect_source,
    pyramid_levels,
    remove_level,
)
from .plan import Index, Plan, make_plan

READY_FILE = "ready"
DONE = "done"
#: Where a source read by URL is downloaded, in the journal, before it becomes level 1.
DOWNLOAD = "source"
#: Bytes of a remote source fetched per request when it is downloaded.
DOWNLOAD_PIECE = 16 * 1024 * 1024
#: Plan values that a resumed build must share with the interrupted one.
RESUME_KEYS = ("source", "shape", "block", "dtype", "method", "levels", "voxel_size_um")


def journal(plan: Plan, *parts: str) -> str:
    return os.path.join(plan.dest, JOURNAL, *parts)


def is_half_built(dest: str) -> bool:
    return os.path.isdir(os.path.join(dest, JOURNAL)) and not is_pyramid(dest)


def _plan_record(plan: Plan) -> dict:
    record = {key: getattr(plan, key) for key in RESUME_KEYS + ("task_level",)}
    return json.loads(json.dumps(record))  # tuples as lists, as they come back from the file


def stored_task_level(plan: Plan) -> int:
    """The task level of the interrupted build in ``plan.dest``; raise if its parameters differ."""
    path = journal(plan, PLAN_FILE)
    try:
        with open(path, encoding="utf-8") as f:
            stored = json.load(f)
    except (OSError, ValueError) as exc:
        raise InvalidArgumentError(f"{path}: the journal of the interrupted build is unreadable ({exc}); "
                                   "rebuild with --overwrite.") from None
    wanted = _plan_record(plan)
    differ = [f"{key} {stored.get(key)!r} (now {wanted[key]!r})" for key in RESUME_KEYS
              if stored.get(key) != wanted[key]]
    if differ:
        raise InvalidArgumentError(f"{plan.dest}: the interrupted build had {', '.join(differ)}; resume with the "
                                   "same source and options, or rebuild with --overwrite.")
    return int(stored["task_level"])


def check_destination(plan: Plan, overwrite: bool, resume: bool) -> bool:
    """Whether to resume; clears DEST for ``overwrite``; raises when DEST holds something else, or when
    the build would remove or rewrite a file of the source (see :mod:`.owned`)."""
    dest = plan.dest
    if not os.path.exists(dest):
        if not os.path.isdir(os.path.dirname(dest)):
            raise FileNotFoundError(2, "its parent folder does not exist; create it first", dest)
        return False
    if not os.path.isdir(dest):
        raise NotADirectoryError(20, "exists and is not a folder; a pyramid is a folder", dest)
    finished, half = is_pyramid(dest), is_half_built(dest)
    if not (finished or half):
        if os.listdir(dest):
            raise VolumeExistsError(f"{dest}: the folder is not empty and holds no pyramid; choose an empty or new "
                                    "folder.")
        return False
    if finished and not overwrite:
        raise VolumeExistsError(f"{dest}: a finished pyramid is already there; pass --overwrite (overwrite=True) "
                                "to rebuild it, or choose another folder.")
    if half and not (resume or overwrite):
        raise VolumeExistsError(f"{dest}: holds an interrupted pyramid build; pass --resume to continue it or "
                                "--overwrite to start again.")
    levels = pyramid_levels(dest, level1_is_source(plan))
    protect_source(plan, levels, named_files(dest))
    if half and resume and os.path.exists(journal(plan, PLAN_FILE)):
        return True
    clear(dest, levels)
    return False


def download(plan: Plan, silent: bool = True) -> tuple[str, list[str]]:
    """Copy the source read by URL, its directory file and then its shards (under their stored base names), into
    the journal: (the directory file's copy, the shards' copies in the order of the names)."""
    folder = journal(plan, DOWNLOAD)
    shutil.rmtree(folder, ignore_errors=True)  # a download cut short by an interruption
    os.makedirs(folder)
    header, version = remote.read_header(plan.source)
    urls = remote.shard_urls(plan.source, header.names)
    copies = [os.path.join(folder, os.path.basename(url)) for url in urls]
    if len(set(copies)) != len(copies):
        raise InvalidArgumentError(f"{plan.source}: its shard files must have distinct base names to become level 1.")
    sizes = [remote.head(url)[0] for url in urls]
    index = os.path.join(folder, os.path.basename(plan.source))
    with PlacingProgress([header.file_size, *sizes], False, silent, "blockfs pyramid: level 1, downloading") as bar:
        _download_file(plan.source, header.file_size, index, bar, version)  # as it was when read_header read it
        for url, size, copy in zip(urls, sizes, copies):
            _download_file(url, size, copy, bar)
    return index, copies


def _download_file(url: str, size: int, path: str, bar: PlacingProgress, version: str | None = None) -> None:
    """Write the first ``size`` bytes of the object at ``url`` into the new file ``path``, fsynced; with
    ``version``, only while the object has that ETag."""
    with naming(path), open(path, "xb") as f:
        for start in range(0, size, DOWNLOAD_PIECE):
            data = remote.get_range(url, start, min(start + DOWNLOAD_PIECE, size), version)[0]
            f.write(data)
            bar.copied(len(data))
        f.flush()
        os.fsync(f.fileno())


def place_level1(plan: Plan, silent: bool = True) -> None:
    """Put the source at level 1: its shards hard-linked (else copied; downloaded first from a URL) and its
    directory file rewritten to name them, in the journal, then moved into ``1_1_1`` at once."""
    folder = os.path.dirname(plan.path(1))
    staging = journal(plan, level_key(1))
    shutil.rmtree(staging, ignore_errors=True)  # a placement cut short by an interruption
    os.makedirs(staging)
    if remote.is_url(plan.source):
        source, shards = download(plan, silent)
    else:
        source = plan.source
        shards = [s.path for s in locate_shards(source, read_directory_file(source).names) if s.exists]
    header = read_directory_file(source)
    placements = [Placement(path, os.path.join(staging, os.path.basename(path)), os.path.getsize(path))
                  for path in shards]
    if len(placements) != len(header.names) or len({p.target for p in placements}) != len(placements):
        raise InvalidArgumentError(f"{plan.source}: its shard files must all exist and have distinct base names "
                                   "to become level 1 (run blockfs check on it).")
    if any(os.path.basename(p.target) == LEVEL_FILE for p in placements):
        raise InvalidArgumentError(f"{plan.source}: a shard is named {LEVEL_FILE}, the name of level 1's directory "
                                   "file; rename the volume with blockfs-mv first.")
    by_file = same_file_system([p.source for p in placements], staging)
    with PlacingProgress([p.size for p in placements], by_file, silent, "blockfs pyramid: level 1") as bar:
        for placement in placements:
            with naming(placement.target):
                place(placement, True, bar)  # a hard link within one file system, else a copy
    fsync_folder(staging)
    index = os.path.join(staging, LEVEL_FILE)
    with naming(index):
        relocate(source, [os.path.join(folder, os.path.basename(p.target)) for p in placements], index,
                 exclusive=True)
    os.rename(staging, folder)
    fsync_folder(plan.dest)
    shutil.rmtree(journal(plan, DOWNLOAD), ignore_errors=True)


def create_levels(plan: Plan, n_shards: int) -> None:
    """Create levels 2..N empty, with the source's block size, compression and records."""
    for level in range(2, plan.levels + 1):
        factor = plan.factor(level)
        metadata = {**plan.metadata, "voxel_size_um": [v * factor for v in plan.voxel_size_um],
                    "pyramid": {"level": level, "factor": factor, "method": plan.method}}
        path = plan.path(level)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with naming(path):
            create_volume(path, plan.level_shape(level), plan.dtype, plan.block,
                          max(1, min(n_shards, plan.n_blocks(level))), compression=plan.compression,
                          compression_level=plan.compression_level, metadata=metadata, records=plan.records).close()


def start(plan: Plan, n_shards: int, silent: bool = True) -> None:
    """Make ``plan.dest`` ready for the tasks (after :func:`check_destination`), unless it already is."""
    ready = journal(plan, READY_FILE)
    if os.path.exists(ready):
        return
    os.makedirs(journal(plan, DONE), exist_ok=True)
    path = journal(plan, PLAN_FILE)
    with naming(path), atomic_write(path) as temporary, open(temporary, "w", encoding="utf-8") as f:
        json.dump(_plan_record(plan), f)
    keep_level1 = level1_is_source(plan)
    for folder, files in pyramid_levels(plan.dest, keep_level1).items():  # made by a start cut short
        remove_level(folder, files)
    if not keep_level1:
        place_level1(plan, silent)
    create_levels(plan, n_shards)
    with naming(ready), atomic_write(ready):
        pass


def prepare(plan: Plan, overwrite: bool = False, resume: bool = False, n_shards: int | None = None,
            silent: bool = True) -> Plan:
    """Check and set up ``plan.dest``; returns the plan to run (a resumed build keeps its task level)."""
    if check_destination(plan, overwrite, resume):
        plan = make_plan(plan.source, plan.dest, plan.levels, plan.method, plan.voxel_size_um,
                         task_level=stored_task_level(plan))
    start(plan, n_shards or os.cpu_count() or 1, silent)
    return plan


def record_done(plan: Plan, results: list[tuple[Index, np.ndarray | None]]) -> None:
    """Record finished tasks with their contributions to the level above (None: nothing written), at once."""
    path = journal(plan, DONE, plan.task_key(results[0][0]) + ".npz")
    with naming(path), atomic_write(path) as temporary, open(temporary, "wb") as f:
        arrays: dict[str, Any] = {plan.task_key(index): np.empty(0, plan.dtype) if reduced is None else reduced
                                  for index, reduced in results}
        np.savez(f, **arrays)


def finished(plan: Plan) -> dict[str, str]:
    """The tasks already done (task key -> the journal file that holds its result)."""
    folder = journal(plan, DONE)
    done = {}
    for name in sorted(os.listdir(folder)):
        if name.endswith(".npz"):
            with np.load(os.path.join(folder, name)) as batch:
                done.update(dict.fromkeys(batch.files, os.path.join(folder, name)))
    return done


def pending(plan: Plan) -> list[Index]:
    """The tasks not yet done."""
    done = finished(plan)
    return [t for t in plan.tasks if plan.task_key(t) not in done]


def load_done(plan: Plan, done: dict[str, str], index: Index) -> np.ndarray | None:
    """A finished task's contribution to the level above; None if nothing is written under it."""
    key = plan.task_key(index)
    with np.load(done[key]) as batch:
        reduced = batch[key]
    return None if reduced.size == 0 else reduced


def remove_journal(plan: Plan) -> None:
    shutil.rmtree(journal(plan))
    fsync_folder(plan.dest)


def complete(plan: Plan) -> None:
    """Write ``info`` (the pyramid is then finished), remove the journal."""
    kind = "segmentation" if plan.method == "mode" else "image"
    write_info(plan.dest, make_info(plan.dtype, kind, plan.shape, plan.block, plan.voxel_size_um, plan.levels))
    remove_journal(plan)
