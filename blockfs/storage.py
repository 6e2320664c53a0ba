"""File access for one volume: the index file and the shard files.

All I/O is positioned (``os.pread``/``os.pwrite``), so threads share nothing, and file
descriptors are opened per process, so forked children never share a file position or a lock
with their parent. Appends to a shard hold an exclusive ``flock`` on it, which makes appends from
unrelated processes safe.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat
import threading
import uuid
from typing import Callable, Iterator, NamedTuple

from .errors import VolumeExistsError

#: errno values with which ``os.link`` says "hard links are not possible here", not "it failed".
NO_LINK_ERRNOS = {errno.EXDEV, errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK, errno.ENOSYS, errno.EACCES}


def fsync_folder(folder: str) -> None:
    """Make a rename or link in ``folder`` durable, where the platform allows it (errors are ignored)."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def link_exclusive(source: str, target: str) -> bool:
    """Hard-link ``source`` as ``target``, never replacing a file (:class:`VolumeExistsError` if one is there).

    Returns False, having done nothing, on a file system without hard links (FAT, some NFS mounts).
    """
    try:
        os.link(source, target)
    except FileExistsError:
        raise VolumeExistsError(f"{target}: already exists; it was not overwritten.") from None
    except OSError as exc:
        if exc.errno not in NO_LINK_ERRNOS:
            raise
        return False
    return True


def _publish(temporary: str, target: str, exclusive: bool) -> None:
    """Move a finished temporary file to ``target``; with ``exclusive``, never replace a file."""
    if exclusive:
        if link_exclusive(temporary, target):
            os.unlink(temporary)
            return
        if os.path.lexists(target):
            raise VolumeExistsError(f"{target}: already exists; it was not overwritten.")
    os.replace(temporary, target)


@contextlib.contextmanager
def atomic_write(path: str, exclusive: bool = False, like: str | None = None, durable: bool = True,
                 suffix: str = ".tmp") -> Iterator[str]:
    """Yield a new temporary file's path beside ``path``; when the block ends, it takes ``path``'s place.

    Readers see the old file or the new one, never a mixture. The file is fsynced before it is
    published (and the folder after) unless ``durable`` is False; it gets the permissions of the
    file ``like`` if given. The temporary name ends in ``suffix`` (image writers choose the
    format by it). With ``exclusive`` an existing ``path`` is an error
    (:class:`VolumeExistsError`) and is left alone. On any error the temporary file is removed.
    """
    folder, name = os.path.split(os.path.abspath(path))
    temporary = os.path.join(folder, f".{name}.{uuid.uuid4().hex[:12]}{suffix}")
    os.close(os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666))
    try:
        yield temporary
        if like is not None:
            os.chmod(temporary, stat.S_IMODE(os.stat(like).st_mode))
        if durable:
            fd = os.open(temporary, os.O_RDONLY | os.O_CLOEXEC)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _publish(temporary, path, exclusive)
    finally:
        if os.path.lexists(temporary):
            os.unlink(temporary)
    if durable:
        fsync_folder(folder)


class ResolvedShard(NamedTuple):
    """Where a stored shard name leads."""

    path: str
    looked_at: list[str]
    #: found only as the same base name beside the directory file: the stored name is stale
    fallback: bool


def resolve_shard_path(directory_path: str, name: str) -> ResolvedShard:
    """Where shard ``name`` of the volume at ``directory_path`` is, and the places looked at.

    An absolute name is used if it exists; a relative one is tried against the directory file's
    folder, then the working directory. Otherwise the same base name beside the directory file is
    used (``fallback``; the caller decides whether to warn). The first candidate is returned when
    nothing exists.
    """
    folder = os.path.dirname(os.path.abspath(directory_path))
    candidates = [name] if os.path.isabs(name) else [os.path.join(folder, name), os.path.abspath(name)]
    candidates = list(dict.fromkeys(candidates))
    beside = os.path.join(folder, os.path.basename(name))
    for path in candidates:
        if os.path.exists(path):
            return ResolvedShard(path, candidates, False)
    if os.path.exists(beside):
        return ResolvedShard(beside, candidates + [beside], True)
    return ResolvedShard(candidates[0], list(dict.fromkeys(candidates + [beside])), False)


def shadowing_copy(directory_path: str, name: str, found: str) -> str | None:
    """The shard file beside the directory file when an absolute ``name`` resolved elsewhere.

    That is what a volume copied with ``cp -r`` looks like: its stored names still reach the
    original's shards, while its own copies sit unused beside it.
    """
    beside = os.path.join(os.path.dirname(os.path.abspath(directory_path)), os.path.basename(name))
    if not os.path.isabs(name) or not os.path.exists(found) or not os.path.exists(beside):
        return None
    return None if os.path.samefile(found, beside) else beside


class _PerProcessFds:
    """File descriptors opened lazily and reopened after a fork."""

    def __init__(self, flags: int):
        self._flags = flags
        self._fds: dict[str, int] = {}
        self._pid = os.getpid()
        self._lock = threading.Lock()

    def get(self, path: str) -> int:
        if self._pid != os.getpid():
            self._fds, self._pid, self._lock = {}, os.getpid(), threading.Lock()
        fd = self._fds.get(path)
        if fd is None:
            with self._lock:
                fd = self._fds.get(path)
                if fd is None:
                    fd = self._fds[path] = os.open(path, self._flags | os.O_CLOEXEC)
        return fd

    def opened(self) -> dict[str, int]:
        """The descriptors this process has opened, by path."""
        return self._fds if self._pid == os.getpid() else {}

    def close(self) -> None:
        with self._lock:
            opened, self._fds = self.opened(), {}
        for fd in opened.values():
            os.close(fd)


def pread_exact(fd: int, size: int, offset: int) -> bytes:
    """Up to ``size`` bytes at ``offset``: fewer only at the end of the file."""
    data = os.pread(fd, size, offset)
    while len(data) < size:
        more = os.pread(fd, size - len(data), offset + len(data))
        if not more:
            break
        data += more
    return data


_scratch = threading.local()


def pread_into_scratch(fd: int, size: int, offset: int) -> memoryview:
    """Up to ``size`` bytes at ``offset`` in this thread's reusable buffer (fewer only at the end of
    the file). The view is valid until this thread's next call: use it, don't keep it."""
    buffer = getattr(_scratch, "buffer", None)
    if buffer is None or len(buffer) < size:
        buffer = _scratch.buffer = bytearray(size)
    view = memoryview(buffer)[:size]
    done = 0
    while done < size:
        n = os.preadv(fd, [view[done:]], offset + done)
        if not n:
            break
        done += n
    return view[:done]


def pwrite_all(fd: int, data: bytes | memoryview, offset: int) -> None:
    """Write all of ``data`` at ``offset`` (a short write is continued, a failing one raises)."""
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view, offset = view[written:], offset + written


def _fsync(fd: int, path: str) -> None:
    try:
        os.fsync(fd)
    except OSError as exc:
        raise OSError(exc.errno, exc.strerror, path) from None


class VolumeFiles:
    """The index file and shard files of one volume, open for reading or for writing."""

    def __init__(self, index_path: str, shard_paths: list[str], writable: bool):
        self.index_path = index_path
        self.shard_paths = shard_paths
        self.writable = writable
        self._fds = _PerProcessFds(os.O_RDWR if writable else os.O_RDONLY)
        self._append_locks = [threading.Lock() for _ in shard_paths]

    def index_fd(self) -> int:
        return self._fds.get(self.index_path)

    def shard_fd(self, shard: int) -> int:
        return self._fds.get(self.shard_paths[shard])

    def read_index(self, offset: int, size: int) -> bytes:
        """Index bytes at ``offset``, zero-filled past the end of the file (unwritten entries)."""
        data = pread_exact(self.index_fd(), size, offset)
        return data + bytes(size - len(data))

    def read_shard(self, shard: int, offset: int, size: int) -> memoryview:
        """Shard bytes in this thread's reusable buffer; see :func:`pread_into_scratch`."""
        return pread_into_scratch(self.shard_fd(shard), size, offset)

    def append(self, shard: int, data: bytes, entry_at: int, make_entry: Callable[[int], bytes]) -> int:
        """Append ``data`` to a shard, then point the index entry at ``entry_at`` to it.

        Both happen under the shard's lock, so the last writer of a block wins everywhere.
        ``make_entry(offset)`` may raise (an offset too large) before anything is written. A write
        that fails part way is cut back off the shard. Returns the offset of ``data``.
        """
        fd = self.shard_fd(shard)
        with self._append_locks[shard]:
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                offset = os.fstat(fd).st_size
                entry = make_entry(offset)
                try:
                    pwrite_all(fd, data, offset)
                except OSError as exc:
                    self._cut_back(fd, offset)
                    raise OSError(exc.errno, exc.strerror, self.shard_paths[shard]) from None
                previous = self.read_index(entry_at, len(entry))
                try:
                    pwrite_all(self.index_fd(), entry, entry_at)
                except OSError as exc:
                    # Leave no trace: the old entry back (in case part was written), the block cut off.
                    with contextlib.suppress(OSError):
                        pwrite_all(self.index_fd(), previous, entry_at)
                    self._cut_back(fd, offset)
                    raise OSError(exc.errno, exc.strerror, self.index_path) from None
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
        return offset

    @staticmethod
    def _cut_back(fd: int, size: int) -> None:
        """Best effort: drop bytes a failed append left at the end of a shard."""
        with contextlib.suppress(OSError):
            os.ftruncate(fd, size)

    def sync(self, every: bool = False) -> None:
        """fsync the shards, then the index, that this process has open (regular files only).

        With ``every``, also the volume's files this process has not opened: other processes (forked
        producers, say) may have written them through descriptors of their own.
        """
        opened = self._fds.opened()
        for path in self.shard_paths + [self.index_path]:
            if path in opened:
                if stat.S_ISREG(os.fstat(opened[path]).st_mode):
                    _fsync(opened[path], path)
            elif every and os.path.isfile(path):
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
                try:
                    _fsync(fd, path)
                finally:
                    os.close(fd)

    def close(self) -> None:
        self._fds.close()
