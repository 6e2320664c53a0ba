"""Who may use a volume at once: the lock protocol on its index file.

Every process that has a volume open for writing (a ``Directory`` created or opened "r+", each
writer process, each forked or unrelated producer, each MPI rank) holds a *shared* ``flock`` on the
index file for as long as it may write. An offline operation that rewrites or replaces the index
or copies or moves the shards (repair, mv, cp, rebase, create over an existing volume) takes it *exclusively*.
Neither waits: a process that cannot have the lock it needs raises :class:`VolumeBusyError`, so
repair can never run under a live writer, and no writer can start during a repair.

A lock belongs to a file, not a path, and these operations replace the index by renaming a new
file over it. So a lock counts only once the path is seen to still lead to the locked file; when it
does not, the file was replaced meanwhile and the lock is taken again on the new one.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
from collections.abc import Iterator

from .errors import VolumeBusyError
from .format import open_regular

#: How often a lock is taken again when the index keeps being replaced under it.
_ATTEMPTS = 20


def same_file(fd: int, path: str) -> bool:
    """Whether ``path`` (still) leads to the file open as ``fd``."""
    try:
        here, there = os.fstat(fd), os.stat(path)
    except FileNotFoundError:
        return False
    return (here.st_dev, here.st_ino) == (there.st_dev, there.st_ino)


def holders(fd: int) -> dict[int, bool]:
    """{pid: whether its lock is exclusive} of the processes holding a flock on the file open as ``fd``
    (from /proc/locks; empty where there is none)."""
    info = os.fstat(fd)
    device = f"{os.major(info.st_dev):02x}:{os.minor(info.st_dev):02x}:{info.st_ino}"
    try:
        with open("/proc/locks") as f:
            lines = f.read().splitlines()
    except OSError:
        return {}
    found: dict[int, bool] = {}
    for line in lines:
        fields = line.split()
        if "->" not in fields and len(fields) >= 6 and fields[1] == "FLOCK" and fields[5] == device:
            found[int(fields[4])] = found.get(int(fields[4]), False) or fields[3] == "WRITE"
    return found


def _busy(path: str, fd: int, doing: str) -> VolumeBusyError:
    found = holders(fd)
    alone = sorted(pid for pid, exclusive in found.items() if exclusive)
    pids = alone or sorted(found)
    who = f" (pid {', '.join(map(str, pids))})" if pids else ""
    if alone or not found:
        return VolumeBusyError(f"{path}: an offline operation (repair, mv, rebase or create) holds the volume{who}; "
                               f"{doing} is refused until it ends. Try again then.")
    return VolumeBusyError(f"{path}: the volume is open for writing by a process{who}; {doing} needs it alone. "
                           "Close its writers (Directory.close()) and run it again.")


def lock_index(path: str, exclusive: bool, doing: str, flags: int = os.O_RDWR) -> int:
    """Open the index at ``path`` and lock it shared (to write blocks) or ``exclusive`` (offline), never waiting.

    Returns the descriptor, which holds the lock until it is closed. ``doing`` names what needs the
    lock in the :class:`VolumeBusyError` raised when another process holds a conflicting one.
    """
    mode = fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH
    for _ in range(_ATTEMPTS):
        fd = open_regular(path, flags)
        try:
            fcntl.flock(fd, mode | fcntl.LOCK_NB)
        except BlockingIOError:
            error = _busy(path, fd, doing)
            os.close(fd)
            raise error from None
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):  # no locks here: go on without
                return open_regular(path, flags)
            raise
        if same_file(fd, path):
            return fd
        os.close(fd)  # replaced between open and lock: lock the new file
    raise VolumeBusyError(f"{path}: the index file was replaced {_ATTEMPTS} times while {doing} tried to lock it; "
                          "another process keeps rewriting it. Try again when it is done.")


def share(fd: int, path: str, doing: str) -> None:
    """Turn the exclusive lock of ``fd`` into a shared one (a new volume's creator starting to write)."""
    fcntl.flock(fd, fcntl.LOCK_SH)
    if not same_file(fd, path):
        raise VolumeBusyError(f"{path}: another process replaced the index while {doing}; nothing of it is used. "
                              "Run it again once that process is done.")


def reopen_shared(fd: int, path: str, doing: str) -> int:
    """A shared-locked descriptor opened by ``path`` for the file ``fd`` holds (which it replaces and closes).

    A file published by a link from a temporary name stays known to the system by that name
    through ``fd``; the new descriptor carries its real name.
    """
    share(fd, path, doing)
    new = lock_index(path, False, doing)
    here, there = os.fstat(fd), os.fstat(new)
    os.close(fd)
    if (here.st_dev, here.st_ino) != (there.st_dev, there.st_ino):
        os.close(new)
        raise VolumeBusyError(f"{path}: another process replaced the index while {doing}; nothing of it is used. "
                              "Run it again once that process is done.")
    return new


@contextlib.contextmanager
def exclusively(path: str, doing: str) -> Iterator[int]:
    """Hold the index at ``path`` exclusively for an offline operation; yields the descriptor (read-only)."""
    fd = lock_index(path, True, doing, os.O_RDONLY)
    try:
        yield fd
    finally:
        os.close(fd)
