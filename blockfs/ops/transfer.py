"""Move or copy a volume into a folder, rewriting its shard names.

The new directory file names its shards by their absolute paths in the destination, so readers
that open names as stored (the earlier blockfs did, relative to the working directory) find them
from anywhere. The index, bit widths, strides and application metadata are kept exactly.

What a move takes: only the volume's own files. The index and every shard must be regular files
(not symbolic links) directly in the index's folder, and no other index file in that folder may
name one of the shards (repair's backups of the index stay behind). Otherwise
:class:`ForeignShardError` is raised before anything is touched.
A copy takes any volume, and writes only inside the destination folder.

Both are offline operations: the source's index is held exclusively (:mod:`blockfs.locking`) from
start to end, so they refuse to start while any process has the volume open for writing, and no
writer starts meanwhile; every file they create is locked as well until they end. Order of work:

1. each shard goes to ``DEST/.NAME.partial``: a hard link when moving within one file system,
   else a copy, fsynced; then the new index goes to ``DEST/.INDEX.partial``, fsynced;
2. each shard partial is linked to its name, then the index: a volume exists at DEST only once
   every byte of it is there and durable;
3. the shards' partial names are removed; when moving, the source's shards and then its index;
4. last, the index's partial name.

A failure before step 2 ends removes everything it made. A run killed at any point leaves a
complete volume at the source or at DEST (or both), and the files it made are found and used by a
re-run: partials whose run has ended (their lock is free) are replaced, shard names that are links
to them are its output, and a run killed after step 2 is finished by the re-run (the index
partial, a link to the new index, says that DEST holds its output). On a file system without hard
links the files are renamed into place instead, and such a re-run may find shard files it refuses
to overwrite.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
import stat
from collections.abc import Callable
from dataclasses import dataclass

from .. import locking
from ..errors import (
    BlockfsError,
    ForeignShardError,
    InvalidArgumentError,
    MissingShardError,
    VolumeBusyError,
    VolumeExistsError,
)
from ..format import MAGIC, DirectoryFile
from ..progress import PlacingProgress, same_file_system
from ..storage import file_identity, fsync_folder, link_exclusive, named, shadowing_copy
from .relocate import (
    NO_LOCKS,
    Shard,
    header_with_names,
    locate_shards,
    new_locked_file,
    read_directory_file,
    write_index,
)

#: Bytes per copy call; the progress bar advances by at most this much at a time.
COPY_CHUNK = 64 << 20
#: Bytes compared per read when telling whether an index at the destination is this run's output.
COMPARE_CHUNK = 1 << 20
#: errno values with which ``copy_file_range`` says "not between these files": copy by hand instead.
NO_COPY_RANGE = (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EBADF, errno.EPERM)
PARTIAL_SUFFIX = ".partial"


@dataclass(frozen=True)
class Placement:
    """One file of the volume and where it goes."""

    source: str
    target: str
    size: int


@dataclass(frozen=True)
class Plan:
    """A volume and the files it becomes in the destination folder."""

    source: str
    header: DirectoryFile
    shards: list[Shard]
    dest: str
    prog: str

    @property
    def new_index(self) -> str:
        return os.path.join(self.dest, os.path.basename(self.source))

    @property
    def targets(self) -> list[str]:
        """The new shard files, in the order of the stored names."""
        return [os.path.join(self.dest, os.path.basename(s.path)) for s in self.shards]


def partial_path(target: str) -> str:
    """The hidden name a file of the new volume is written under until it is complete: ``.NAME.partial``."""
    folder, name = os.path.split(target)
    return os.path.join(folder, f".{name}{PARTIAL_SUFFIX}")


@dataclass
class _File:
    """A file of the new volume: its name, and the descriptor holding the lock of the file written for it."""

    target: str
    fd: int | None = None

    @property
    def partial(self) -> str:
        return partial_path(self.target)

    def ours(self, path: str) -> bool:
        """Whether ``path`` leads to this run's file (the one locked by ``fd``)."""
        return self.fd is not None and locking.same_file(self.fd, path)

    def remove(self, path: str) -> None:
        if self.ours(path):
            os.unlink(path)

    def release(self) -> None:
        """Close the descriptor, giving up the lock."""
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def _is_partial(name: str) -> bool:
    """Whether a file name is one a file is written under until it is complete."""
    return name.startswith(".") and name.endswith(PARTIAL_SUFFIX)


def transfer(source: str, dest: str, move: bool, silent: bool = True, prog: str = "blockfs") -> str:
    """Move (``move=True``) or copy the volume whose directory file is ``source`` into folder ``dest``.

    Returns the new directory file's path. Raises before changing anything if the source is
    incomplete, open for writing, or (moving) not made of its own files only; if the destination's
    parent folder is missing; or if a volume or any file of the volume is at the destination and is
    not the output of an interrupted run of this tool.
    """
    source, dest = os.fspath(source), os.path.abspath(os.fspath(dest))
    with contextlib.ExitStack() as held:  # every lock of this run, released when it ends
        held.enter_context(locking.exclusively(source, prog))
        plan = _plan(source, dest, prog)
        files = [_File(t) for t in plan.targets + [plan.new_index]]
        for f in files:
            held.callback(f.release)
        done = _inspect(plan, files)
        if not done:
            _check_complete(plan, move)
        if move:
            _check_own(plan)
        if not done:
            _build(plan, files, move, silent)
        index = files.pop()
        for f in files:
            f.remove(f.partial)
        if move:
            _remove_source(plan)
        index.remove(index.partial)  # last: while it is there, a re-run can tell that DEST holds its output
        fsync_folder(dest)
    return plan.new_index


def _plan(source: str, dest: str, prog: str) -> Plan:
    """Read the source's header and check the destination's shape; raise before anything is touched."""
    header = read_directory_file(source)
    plan = Plan(source, header, locate_shards(source, header.names), dest, prog)
    if os.path.exists(dest) and not os.path.isdir(dest):
        raise NotADirectoryError(errno.ENOTDIR, "exists and is not a folder; give the folder to put the volume in",
                                 dest)
    if not os.path.isdir(dest) and not os.path.isdir(os.path.dirname(dest)):
        raise FileNotFoundError(errno.ENOENT, f"its parent folder {os.path.dirname(dest)} does not exist; "
                                "create it first (only the last folder of the destination is created)", dest)
    names = [plan.new_index] + plan.targets
    names += [partial_path(n) for n in names]
    clash = next((n for i, n in enumerate(names) if n in names[:i]), None)
    if clash is not None:
        raise InvalidArgumentError(f"{source}: two files of the volume would both become {clash}; "
                                   "their base names must differ.")
    if os.path.isdir(dest) and os.path.samefile(os.path.dirname(os.path.abspath(source)), dest):
        raise VolumeExistsError(f"{plan.new_index}: the volume is already in {dest}; choose another folder.")
    return plan


def _check_complete(plan: Plan, move: bool) -> None:
    missing = [s for s in plan.shards if not s.exists]
    if missing:
        s = missing[0]
        raise MissingShardError(f"{plan.source}: shard {s.name!r} is missing (looked at {', '.join(s.looked_at)}); "
                                f"{len(missing)} of {len(plan.shards)} shards are missing; nothing was "
                                f"{'moved' if move else 'copied'}.")


# -- what is at the destination ------------------------------------------------------------------


def _inspect(plan: Plan, files: list[_File]) -> bool:
    """Lock what an interrupted run left at the destination; True if it is this run's finished output.

    Raises if any other file is where the volume's files go; :func:`_build` removes the leftovers.
    """
    for f in files:
        f.fd = _claim(f)
    index = files[-1]
    if os.path.lexists(index.target):
        if index.ours(index.target) and _is_output(plan, index.target):
            return True
        raise VolumeExistsError(f"{index.target}: already exists; a volume at the destination is never "
                                "overwritten: remove it or choose another folder.")
    for f in files:
        if os.path.lexists(f.target) and not f.ours(f.target):
            raise VolumeExistsError(f"{f.target}: already exists; a volume at the destination is never "
                                    "overwritten: remove it or choose another folder.")
    return False


def _claim(f: _File) -> int | None:
    """Lock the partial file an earlier run left for ``f``; None if there is none.

    Raises :class:`VolumeBusyError` while the run that writes it is still going.
    """
    try:
        fd = os.open(f.partial, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno != errno.ELOOP:
            raise
        raise VolumeExistsError(f"{f.partial}: a symbolic link, where the partial copy of {f.target} is written; "
                                "remove it.") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise VolumeExistsError(f"{f.partial}: not a regular file, where the partial copy of {f.target} is "
                                    "written; remove it.")
        _lock_partial(fd, f)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _lock_partial(fd: int, f: _File) -> None:
    """Lock the open partial file ``fd`` exclusively, and check that it is still at its name."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        pids = ", ".join(map(str, sorted(locking.holders(fd))))
        raise VolumeBusyError(f"{f.partial}: another blockfs-cp or blockfs-mv (pid {pids or 'unknown'}) is writing "
                              f"{f.target}; wait until it ends, or choose another folder.") from None
    except OSError as exc:
        if exc.errno not in NO_LOCKS:
            raise
    if not locking.same_file(fd, f.partial):
        raise VolumeBusyError(f"{f.partial}: another blockfs-cp or blockfs-mv replaced it meanwhile; wait until it "
                              "ends, or choose another folder.")


def _is_output(plan: Plan, path: str) -> bool:
    """Whether the volume at ``path`` is what this run writes: the source's index with the new shard names."""
    if not all(os.path.isfile(t) for t in plan.targets):
        return False
    header = header_with_names(plan.header, [os.path.abspath(t) for t in plan.targets])
    with open(plan.source, "rb") as src, open(path, "rb") as out:
        if out.read(len(header)) != header:
            return False
        src.seek(plan.header.directory_offset)
        while True:
            chunk = src.read(COMPARE_CHUNK)
            if out.read(len(chunk) or 1) != chunk:
                return False
            if not chunk:
                return True


# -- what a move may remove ----------------------------------------------------------------------


def _check_own(plan: Plan) -> None:
    """Raise :class:`ForeignShardError` unless every file a move removes is the volume's own."""
    folder = os.path.dirname(os.path.abspath(plan.source))
    others = _shards_of_other_volumes(plan.source, folder)
    problems = [f"{plan.source} is a symbolic link (move the file it points to)"] if os.path.islink(plan.source) else []
    for s in plan.shards:
        reason = _why_not_own(s, folder, others) if s.exists else None
        if reason is not None:
            copy = shadowing_copy(plan.source, s.name, s.path)
            unused = f" (while {copy}, beside the index, is unused: a copy made with cp -r)" if copy else ""
            where = os.path.realpath(s.path) if reason.startswith("lies") else s.path
            stored = "" if s.name == where else f" (stored as {s.name!r})"
            problems.append(f"{where}{stored} {reason}{unused}")
    if problems:
        raise ForeignShardError(
            f"{plan.source}: {plan.prog} moves only a volume's own files (the index and its shards, regular files "
            f"directly in {folder}, named by no other index file there), and removes nothing else; here "
            f"{'; '.join(problems)}. Nothing was moved. Run blockfs-rebase {plan.source} to point the volume at the "
            "shard files beside it, or copy it with blockfs-cp, which never removes the source.")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise PermissionError(errno.EACCES, "not writable, so the volume's files cannot be removed from "
                              "it; nothing was moved (blockfs-cp copies without removing)", folder)


def _why_not_own(shard: Shard, folder: str, others: dict[tuple[int, int], str]) -> str | None:
    if os.path.islink(shard.path):
        return "is a symbolic link"
    if not os.path.samefile(os.path.dirname(os.path.abspath(shard.path)), folder):
        return f"lies outside {folder}"
    other = others.get(file_identity(os.stat(shard.path)))
    return None if other is None else f"is also a shard of {other}"


def _shards_of_other_volumes(source: str, folder: str) -> dict[tuple[int, int], str]:
    """{(st_dev, st_ino): index} of the shard files that the other index files in ``folder`` name."""
    found: dict[tuple[int, int], str] = {}
    with os.scandir(folder) as entries:
        for entry in entries:
            if (_is_partial(entry.name) or _is_backup(entry.name, source) or not entry.is_file(follow_symlinks=False)
                    or _same(entry.path, source)):
                continue
            with contextlib.suppress(OSError, ValueError):  # unreadable or damaged: not a volume that reads
                with open(entry.path, "rb") as f:
                    if f.read(len(MAGIC)) != MAGIC:
                        continue
                header = read_directory_file(entry.path)
                for s in locate_shards(entry.path, header.names):
                    if s.exists:
                        found[file_identity(os.stat(s.path))] = entry.path
    return found


def _is_backup(name: str, source: str) -> bool:
    """Whether ``name`` is one of blockfs repair's backups of the index ``source`` (SOURCE.bak, .bak1, ...):
    those name the volume's own shards, and stay behind, outdated, when it moves."""
    return re.fullmatch(re.escape(os.path.basename(source)) + r"\.bak\d*", name) is not None


def _same(a: str, b: str) -> bool:
    return file_identity(os.stat(a)) == file_identity(os.stat(b))


# -- writing the new volume ----------------------------------------------------------------------


def _build(plan: Plan, files: list[_File], move: bool, silent: bool) -> None:
    """Write every file under its partial name, then give the shards and, last, the index their names.

    First removes what an interrupted run left (:func:`_inspect` locked it). A failure removes
    everything this run made, and the folder if it made that.
    """
    for f in files:
        f.remove(f.target)
        f.remove(f.partial)
        f.release()
    made_folder = not os.path.isdir(plan.dest)
    if made_folder:
        os.mkdir(plan.dest)
    placements = [Placement(s.path, t, os.path.getsize(s.path)) for s, t in zip(plan.shards, plan.targets)]
    sizes = [p.size for p in placements] + [plan.header.index_bytes]
    by_file = move and same_file_system([p.source for p in placements], plan.dest)
    try:
        with PlacingProgress(sizes, by_file, silent, f"{plan.prog}: {'moving' if move else 'copying'}") as bar:
            for f, placement in zip(files, placements):
                f.fd = _stage(placement, f, move, bar)
            index = files[-1]
            index.fd = _new_partial(index)
            write_index(plan.header, [os.path.abspath(t) for t in plan.targets], index.fd, index.target,
                        on_bytes=bar.copied)
            bar.placed(plan.header.index_bytes, linked=False)
            fsync_folder(plan.dest)
            for f in files:
                _publish(f)
            fsync_folder(plan.dest)
    except BaseException as exc:
        for f in reversed(files):
            f.remove(f.target)
            f.remove(f.partial)
        if made_folder:
            with contextlib.suppress(OSError):
                os.rmdir(plan.dest)
        if isinstance(exc, OSError) and not isinstance(exc, BlockfsError):
            raise OSError(exc.errno, f"{exc.strerror or exc}; nothing was left in {plan.dest}, and the source is as "
                          "it was", exc.filename) from None
        raise


def _new_partial(f: _File) -> int:
    """Create ``f``'s partial file, locked; raise if another run holds that name."""
    try:
        fd = new_locked_file(f.partial)
    except FileExistsError:
        raise VolumeBusyError(f"{f.partial}: another blockfs-cp or blockfs-mv is writing {f.target}; wait until "
                              "it ends, or choose another folder.") from None
    except OSError as exc:
        raise named(exc, f.target) from None
    if not locking.same_file(fd, f.partial):
        os.close(fd)
        raise VolumeBusyError(f"{f.partial}: another blockfs-cp or blockfs-mv replaced it meanwhile; wait until it "
                              "ends, or choose another folder.")
    return fd


def _stage(placement: Placement, f: _File, move: bool, bar: PlacingProgress) -> int:
    """Put a shard's bytes under its partial name; returns the partial's locked descriptor.

    Moving within one file system makes a hard link; otherwise the bytes are copied and fsynced.
    """
    if move and link_exclusive(placement.source, f.partial):
        fd = _claim(f)
        if fd is None or file_identity(os.fstat(fd)) != file_identity(os.stat(placement.source)):
            if fd is not None:
                os.close(fd)
            raise VolumeBusyError(f"{f.partial}: another blockfs-cp or blockfs-mv replaced it meanwhile; wait "
                                  "until it ends, or choose another folder.")
        bar.placed(placement.size, linked=True)
        return fd
    fd = _new_partial(f)
    try:
        _copy_into(placement.source, fd, placement.target, bar.copied)
    except BaseException:
        os.close(fd)
        os.unlink(f.partial)
        raise
    bar.placed(placement.size, linked=False)
    return fd


def _copy_into(source: str, fd: int, where: str, on_bytes: Callable[[int], object]) -> None:
    """Copy the file ``source`` into the empty file open as ``fd``, with its mode, and fsync it;
    ``on_bytes(n)`` after each ``n`` bytes.

    An error reading names ``source``, any other names ``where``.
    """
    with open(source, "rb") as src:
        os.fchmod(fd, stat.S_IMODE(os.fstat(src.fileno()).st_mode))
        position, in_kernel = 0, hasattr(os, "copy_file_range")
        try:
            while True:
                if in_kernel:
                    try:
                        n = os.copy_file_range(src.fileno(), fd, COPY_CHUNK, position, position)
                    except OSError as exc:
                        if exc.errno not in NO_COPY_RANGE:
                            raise
                        in_kernel = False
                        continue
                else:
                    n = _copy_by_hand(src.fileno(), fd, position, source)
                if not n:
                    break
                position += n
                on_bytes(n)
            os.fsync(fd)
        except OSError as exc:
            raise named(exc, where) from None


def _copy_by_hand(src: int, fd: int, position: int, source: str) -> int:
    """Copy up to 8 MiB at ``position`` with pread and pwrite; returns the bytes copied (0 at the end)."""
    try:
        chunk = os.pread(src, min(COPY_CHUNK, 8 << 20), position)
    except OSError as exc:
        raise named(exc, source) from None
    view = memoryview(chunk)
    while view:
        view = view[os.pwrite(fd, view, position + len(chunk) - len(view)):]
    return len(chunk)


def _publish(f: _File) -> None:
    """Give a written file its name, keeping the partial name too (a hard link), never replacing a file.

    Where there are no hard links, the partial file is renamed.
    """
    try:
        if link_exclusive(f.partial, f.target):
            return
        if os.path.lexists(f.target):
            raise VolumeExistsError(f"{f.target}: already exists; it was not overwritten.")
        os.rename(f.partial, f.target)
    except OSError as exc:
        raise named(exc, f.target) from None


def place(placement: Placement, move: bool, bar: PlacingProgress) -> None:
    """Put one shard at its target: a hard link when moving within a file system, else a copy (never replacing)."""
    if move and link_exclusive(placement.source, placement.target):
        bar.placed(placement.size, linked=True)
        return
    try:
        fd = os.open(placement.target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except FileExistsError:
        raise VolumeExistsError(f"{placement.target}: already exists; it was not overwritten.") from None
    try:
        _copy_into(placement.source, fd, placement.target, bar.copied)
    finally:
        os.close(fd)
    bar.placed(placement.size, linked=False)


# -- finishing a move ----------------------------------------------------------------------------


def _remove_source(plan: Plan) -> None:
    """Remove the moved volume's files: its shards first, so that a re-run can finish an interrupted move."""
    folder = os.path.dirname(os.path.abspath(plan.source))
    for s in plan.shards:
        if s.exists:
            _remove_source_file(s.path, plan)
    fsync_folder(folder)
    _remove_source_file(plan.source, plan)
    fsync_folder(folder)


def _remove_source_file(path: str, plan: Plan) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise OSError(exc.errno, f"the volume is complete at {plan.new_index}, but removing this source file failed "
                                 f"({exc.strerror}); run {plan.prog} again once it can be removed (that finishes the "
                                 "move), or remove it by hand", path) from None
