"""Move or copy a volume into a folder, rewriting its shard names.

The new directory file names its shards by their absolute paths in the destination, so readers
that open names as stored (the earlier blockfs did, relative to the working directory) find them
from anywhere. The index, bit widths, strides and application metadata are kept exactly.

Order of work, so that a failure at any point leaves the source volume whole and readable:
every shard is placed in the destination first (a hard link when moving within one file system,
else a copy), then the new directory file is written there atomically, and only then, when
moving, are the source files removed (directory file first). A failure before that point
removes what was placed in the destination and leaves the source untouched.
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass

from tqdm import tqdm

from ..errors import InvalidArgumentError, MissingShardError, VolumeExistsError
from ..progress import byte_progress
from ..storage import fsync_folder, link_exclusive
from .relocate import locate_shards, read_directory_file, relocate

#: Bytes per copy call; the progress bar advances by at most this much at a time.
COPY_CHUNK = 64 << 20


@dataclass(frozen=True)
class Placement:
    """One file of the volume and where it goes."""

    source: str
    target: str
    size: int


def _plan(source: str, dest: str, move: bool) -> tuple[list[Placement], str, list[str]]:
    """Check everything before touching anything: (shard placements, new directory file, new names)."""
    header = read_directory_file(source)
    shards = locate_shards(source, header.names)
    missing = [s for s in shards if not s.exists]
    if missing:
        s = missing[0]
        raise MissingShardError(f"{source}: shard {s.name!r} is missing (looked at {', '.join(s.looked_at)}); "
                                f"{len(missing)} of {len(shards)} shards are missing; nothing was "
                                f"{'moved' if move else 'copied'}.")
    if os.path.exists(dest) and not os.path.isdir(dest):
        raise NotADirectoryError(errno.ENOTDIR, "exists and is not a folder; give the folder to put the volume in",
                                 dest)
    if not os.path.isdir(dest) and not os.path.isdir(os.path.dirname(dest)):
        raise FileNotFoundError(errno.ENOENT, f"its parent folder {os.path.dirname(dest)} does not exist; "
                                "create it first (only the last folder of the destination is created)", dest)
    new_index = os.path.join(dest, os.path.basename(source))
    placements = [Placement(s.path, os.path.join(dest, os.path.basename(s.path)), os.path.getsize(s.path))
                  for s in shards]
    targets = [new_index] + [p.target for p in placements]
    clash = next((t for i, t in enumerate(targets) if t in targets[:i]), None)
    if clash is not None:
        raise InvalidArgumentError(f"{source}: two files of the volume would both become {clash}; "
                                   "their base names must differ.")
    if os.path.isdir(dest) and os.path.samefile(os.path.dirname(os.path.abspath(source)), dest):
        raise VolumeExistsError(f"{new_index}: the volume is already in {dest}; choose another folder.")
    for target in targets:
        if os.path.lexists(target):
            raise VolumeExistsError(f"{target}: already exists; a volume at the destination is never "
                                    "overwritten: remove it or choose another folder.")
    if move:
        for folder in sorted({os.path.dirname(os.path.abspath(p)) for p in [source] + [s.path for s in shards]}):
            if not os.access(folder, os.W_OK | os.X_OK):
                raise PermissionError(errno.EACCES, "not writable, so the volume's files cannot be removed from "
                                      "it; nothing was moved (blockfs-cp copies without removing)", folder)
    return placements, new_index, [os.path.abspath(p.target) for p in placements]


def _copy_file(source: str, target: str, bar: tqdm) -> None:
    """Copy ``source`` to a new file ``target`` (never replacing one), fsynced, with its mode."""
    with open(source, "rb") as src:
        mode = stat.S_IMODE(os.fstat(src.fileno()).st_mode)
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            os.fchmod(fd, mode)
            position = 0
            in_kernel = hasattr(os, "copy_file_range")
            while True:
                if in_kernel:
                    try:
                        n = os.copy_file_range(src.fileno(), fd, COPY_CHUNK, position, position)
                    except OSError as exc:
                        if exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP,
                                             errno.ENOTSUP, errno.EBADF, errno.EPERM):
                            raise
                        in_kernel = False
                        continue
                else:
                    chunk = os.pread(src.fileno(), min(COPY_CHUNK, 8 << 20), position)
                    n = len(chunk)
                    view = memoryview(chunk)
                    while view:
                        view = view[os.pwrite(fd, view, position + n - len(view)):]
                if not n:
                    break
                position += n
                bar.update(n)
            os.fsync(fd)
        finally:
            os.close(fd)


def _place(placement: Placement, move: bool, bar: tqdm) -> None:
    """Put one shard at its target: a hard link when moving within a file system, else a copy."""
    if move and link_exclusive(placement.source, placement.target):
        bar.update(placement.size)
        return
    try:
        _copy_file(placement.source, placement.target, bar)
    except FileExistsError:
        raise VolumeExistsError(f"{placement.target}: already exists; it was not overwritten.") from None


def transfer(source: str, dest: str, move: bool, silent: bool = True, prog: str = "blockfs") -> str:
    """Move (``move=True``) or copy the volume whose directory file is ``source`` into folder ``dest``.

    Returns the new directory file's path. Raises before changing anything if the source is
    incomplete, the destination's parent folder is missing, or any file of the volume already
    exists at the destination.
    """
    source, dest = os.fspath(source), os.path.abspath(os.fspath(dest))
    placements, new_index, new_names = _plan(source, dest, move)
    created_folder = not os.path.isdir(dest)
    if created_folder:
        os.mkdir(dest)
    made: list[str] = []
    total = sum(p.size for p in placements) + os.path.getsize(source)
    try:
        with byte_progress(total, silent, f"{prog}: {'moving' if move else 'copying'}") as bar:
            for placement in placements:
                _place(placement, move, bar)
                made.append(placement.target)
            fsync_folder(dest)
            relocate(source, new_names, new_index, exclusive=True, on_bytes=bar.update)
            made.append(new_index)
            bar.update(total - bar.n)
    except BaseException:
        for path in reversed(made):
            try:
                os.unlink(path)
            except OSError:
                pass
        if created_folder:
            try:
                os.rmdir(dest)
            except OSError:
                pass
        raise
    if move:
        for path in [source] + [p.source for p in placements]:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
            except OSError as exc:
                raise OSError(exc.errno, f"the volume is complete at {new_index}, but removing this source file "
                                         f"failed ({exc.strerror}); remove it by hand", path) from None
        for folder in {os.path.dirname(os.path.abspath(p)) for p in [source] + [p.source for p in placements]}:
            fsync_folder(folder)
    return new_index
