"""File access for one volume: the index file and the shard files.

All I/O is positioned (``os.pread``/``os.pwrite``), so threads share nothing, and file
descriptors are opened per process, so forked children never share a file position or a lock
with their parent. Appends to a shard hold an exclusive ``flock`` on it, which makes appends from
unrelated processes safe.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import functools
import os
import shutil
import stat
import sys
import threading
import uuid
import weakref
from collections.abc import Callable, Iterator, Sequence
from typing import NamedTuple

from . import locking
from .errors import BlockfsError, StaleVolumeError, VolumeExistsError
from .format import PREAMBLE, open_regular, read_directory_file
from .marks import INCOMPLETE_KEY, without_incomplete

#: errno values with which ``os.link`` says "hard links are not possible here", not "it failed".
NO_LINK_ERRNOS = {errno.EXDEV, errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK, errno.ENOSYS, errno.EACCES}


def named(exc: OSError, path: str) -> OSError:
    """``exc``, naming ``path`` if it names no file (as a failed ``os.write``, ``file.write`` or ``os.fsync``
    on a full disk does not)."""
    if exc.filename is not None or isinstance(exc, BlockfsError):
        return exc
    return type(exc)(exc.errno, exc.strerror or str(exc), path)


@contextlib.contextmanager
def naming(path: str) -> Iterator[None]:
    """Name ``path`` in an OSError raised in the block without a file name (see :func:`named`)."""
    try:
        yield
    except OSError as exc:
        raise named(exc, path) from None


#: Free bytes below which a file system counts as full, for :func:`full_disk_note`.
FULL_BELOW = 256 << 10


def full_disk_note(path: str) -> str:
    """"; No space left on device" when the file system that holds ``path`` is (nearly) full, else "": for
    the write errors of libraries that do not say why (OpenJPEG, HDF5)."""
    folder = path if os.path.isdir(path) else os.path.dirname(os.path.abspath(path))
    try:
        full = shutil.disk_usage(folder).free < FULL_BELOW
    except OSError:
        return ""
    return f"; {os.strerror(errno.ENOSPC)}" if full else ""


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


def publish_file(temporary: str, target: str, exclusive: bool) -> None:
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
        publish_file(temporary, path, exclusive)
    finally:
        if os.path.lexists(temporary):
            os.unlink(temporary)
    if durable:
        fsync_folder(folder)


def file_identity(info: os.stat_result) -> tuple[int, int]:
    """(st_dev, st_ino): which file a path or descriptor leads to."""
    return info.st_dev, info.st_ino


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


def _close_all(fds: dict[str, int], pid: int) -> None:
    """Close the descriptors ``fds`` if this is the process ``pid`` that opened them."""
    if pid == os.getpid():
        for fd in fds.values():
            with contextlib.suppress(OSError):
                os.close(fd)
    fds.clear()


class _PerProcessFds:
    """File descriptors opened lazily, reopened after a fork, and closed with their owner."""

    def __init__(self, flags: int):
        self._flags = flags
        self._fds: dict[str, int] = {}
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._finalizer = weakref.finalize(self, _close_all, self._fds, self._pid)

    def _forked(self) -> None:
        self._finalizer.detach()
        self._fds, self._pid, self._lock = {}, os.getpid(), threading.Lock()
        self._finalizer = weakref.finalize(self, _close_all, self._fds, self._pid)

    def get(self, path: str, opener: Callable[[str, int], int] | None = None) -> int:
        """The descriptor of ``path``, opened on first use (by ``opener(path, flags)`` if given)."""
        if self._pid != os.getpid():
            self._forked()
        fd = self._fds.get(path)
        if fd is None:
            with self._lock:
                fd = self._fds.get(path)
                if fd is None:
                    fd = self._fds[path] = (opener or _open_cloexec)(path, self._flags)
        return fd

    def adopt(self, path: str, fd: int) -> None:
        """Use the already open ``fd`` for ``path`` in this process."""
        if self._pid != os.getpid():
            self._forked()
        with self._lock:
            old = self._fds.pop(path, None)
            self._fds[path] = fd
        if old is not None:
            os.close(old)

    def opened(self) -> dict[str, int]:
        """The descriptors this process has opened, by path."""
        return self._fds if self._pid == os.getpid() else {}

    def close(self) -> None:
        with self._lock:
            opened = dict(self.opened())
            self._fds.clear()
        for fd in opened.values():
            os.close(fd)


def _open_cloexec(path: str, flags: int) -> int:
    return os.open(path, flags | os.O_CLOEXEC)


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


#: A durable volume's shard bytes are handed to the disk in runs of about this many as they are appended.
WRITE_BACK_BYTES = 8 * 1024 * 1024
#: sync_file_range(2)'s flag: start writing the range's dirty pages out, and return.
_SYNC_FILE_RANGE_WRITE = 2


@functools.cache
def _sync_file_range() -> Callable[[int, int, int, int], int] | None:
    """libc's sync_file_range, which os does not offer; None where there is none (not Linux)."""
    if not sys.platform.startswith("linux"):
        return None
    call = ctypes.CDLL(None, use_errno=True).sync_file_range
    call.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    return call


def start_write_back(fd: int, start: int, end: int) -> bool:
    """Start writing the bytes [start, end) of ``fd`` to the disk without waiting for them, so that the fsync
    of a durable close finds most of them written; whether the kernel took the request (best effort: a
    platform without the call, or a file that is not a regular one, says no and nothing else changes)."""
    call = _sync_file_range()
    return call is not None and call(fd, start, end - start, _SYNC_FILE_RANGE_WRITE) == 0


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


def incomplete_by(path: str) -> str | None:
    """The tool that marked the volume at ``path`` incomplete (see :mod:`blockfs.marks`); None if it is not."""
    try:
        state = read_directory_file(path).layout.marks
    except (OSError, BlockfsError):
        return None
    value = state.get(INCOMPLETE_KEY)
    return None if value is None else str(value.get("tool", "")) if isinstance(value, dict) else ""


def mark_complete(path: str, durable: bool = True) -> bool:
    """Blank out the header's incomplete mark in place: the last step of a tool that wrote the volume.

    Returns False when the volume carries no such mark. The header keeps its length, so the entries
    stay where they are; with ``durable`` the index is fsynced before (the blocks' entries) and after.
    It writes as a writer does, under the shared lock (:mod:`blockfs.locking`); a volume that another
    process replaced after this one wrote it is never marked (:class:`StaleVolumeError`).
    """
    fd = locking.lock_index(path, False, "marking the volume complete")
    try:
        header = read_directory_file(path)
        text = without_incomplete(header.json_text)
        if text is None:
            return False
        if file_identity(os.fstat(fd)) != header.identity:
            raise StaleVolumeError(f"{path}: the index was replaced while it was being marked complete; "
                                   "run the tool that writes it again.")
        if durable:
            _fsync(fd, path)
        pwrite_all(fd, text.encode("utf-8"), PREAMBLE.size)
        if durable:
            _fsync(fd, path)
    finally:
        os.close(fd)
    return True


def publish_index(path: str, header: bytes, replace: bool, doing: str) -> int:
    """Put a new index file holding ``header`` at ``path``; return its descriptor, locked exclusively.

    The file is written and locked under a temporary name, then linked (or, when ``replace``,
    renamed) into place, so no other process ever finds it unlocked. An index already at ``path``
    is an error (:class:`VolumeExistsError`) without ``replace``, and is replaced only while this
    process holds it exclusively, so never under a process writing into it, and never by two
    processes at once (:class:`VolumeBusyError` for the other).
    """
    folder, name = os.path.split(os.path.abspath(path))
    temporary = os.path.join(folder, f".{name}.{uuid.uuid4().hex[:12]}.tmp")
    fd = os.open(temporary, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        pwrite_all(fd, header, 0)
        while not _link_new(temporary, path, replace):
            try:
                with locking.exclusively(path, doing):
                    os.replace(temporary, path)
                break
            except FileNotFoundError:  # removed meanwhile: link it again
                continue
    except BaseException:
        os.close(fd)
        raise
    finally:
        if os.path.lexists(temporary):
            os.unlink(temporary)
    return fd


def _link_new(temporary: str, path: str, replace: bool) -> bool:
    """Link ``temporary`` as ``path`` if nothing is there; False when a file is there (or links are not
    possible) and ``replace`` allows replacing it."""
    try:
        if link_exclusive(temporary, path):
            return True
    except VolumeExistsError:
        if not replace:
            raise
        return False
    if not os.path.lexists(path):  # a file system without hard links
        os.replace(temporary, path)
        return True
    if not replace:
        raise VolumeExistsError(f"{path}: already exists; it was not overwritten.")
    return False


class VolumeFiles:
    """The index file and shard files of one volume, open for reading or for writing.

    A process writing holds a shared lock on the index while its descriptor is open
    (:mod:`blockfs.locking`). ``identity`` (st_dev, st_ino) is the index file the volume's header
    was read from: an index found replaced by another file, when this process opens it or a shard,
    raises :class:`StaleVolumeError` instead of mixing two volumes' bytes.
    """

    def __init__(self, index_path: str, shard_paths: list[str], writable: bool,
                 identity: tuple[int, int] | None = None, write_back: bool = False):
        self.index_path = index_path
        self.shard_paths = shard_paths
        self.writable = writable
        self.identity = identity
        self._fds = _PerProcessFds(os.O_RDWR if writable else os.O_RDONLY)
        self._append_locks = [threading.Lock() for _ in shard_paths]
        #: With ``write_back``: where each shard's bytes not yet handed to the disk begin (:func:`start_write_back`).
        self._written_back: list[int] | None = [0] * len(shard_paths) if write_back else None

    def _open_index(self, path: str, flags: int) -> int:
        fd = (locking.lock_index(path, False, "writing blocks") if self.writable
              else open_regular(path, flags))
        if self.identity is not None and file_identity(os.fstat(fd)) != self.identity:
            os.close(fd)
            raise self._stale()
        return fd

    def _stale(self) -> StaleVolumeError:
        return StaleVolumeError(f"{self.index_path}: the index file was replaced (by create, repair or rebase) since "
                                "this volume was opened; open it again to read or write the volume there now.")

    def index_fd(self) -> int:
        return self._fds.get(self.index_path, self._open_index)

    def adopt_index(self, fd: int) -> None:
        """Use ``fd`` (a new volume's index, already locked by its creator) as this process's index descriptor."""
        self.identity = file_identity(os.fstat(fd))
        self._fds.adopt(self.index_path, fd)

    def shard_fd(self, shard: int) -> int:
        index = self.index_fd()

        def open_shard(path: str, flags: int) -> int:
            # read from, a shard must be a regular file; written to, it may be a device (/dev/full, say)
            fd = open_regular(path, flags, "a shard file", devices=self.writable)
            if not locking.same_file(index, self.index_path):
                os.close(fd)
                raise self._stale()
            return fd
        return self._fds.get(self.shard_paths[shard], open_shard)

    def read_index(self, offset: int, size: int) -> bytes:
        """Index bytes at ``offset``, zero-filled past the end of the file (unwritten entries)."""
        data = pread_exact(self.index_fd(), size, offset)
        return data + bytes(size - len(data))

    def preload_index(self, spans: Sequence[tuple[int, int]]) -> None:
        """Nothing to do: index reads from a disk cost little each (a volume read by URL fetches its pages here)."""

    def revalidate(self) -> None:
        """Nothing is cached: the next read sees the files as they are."""

    def read_shard(self, shard: int, offset: int, size: int) -> memoryview:
        """Shard bytes in this thread's reusable buffer; see :func:`pread_into_scratch`."""
        return pread_into_scratch(self.shard_fd(shard), size, offset)

    def append(self, shard: int, data: bytes | memoryview, entry_at: int, make_entry: Callable[[int], bytes]) -> int:
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
            end = offset + len(data)
            if self._written_back is not None and end - self._written_back[shard] >= WRITE_BACK_BYTES:
                start_write_back(fd, self._written_back[shard], end)
                self._written_back[shard] = end
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
