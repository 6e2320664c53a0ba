"""A small process that forks the writer processes, so that they do not fork from their owner.

Forking copies the page tables of the process that forks, and a child's exit tears its copy down:
from an owner holding gigabytes of arrays that costs a tenth of a second or more per volume
written, however few blocks it writes. So each owner process starts one launcher, a fresh
interpreter (spawned without copying the owner), the first time it starts writers. The launcher
forks every writer from its own small address space, gives the owner a pidfd of each, records how
each one ended in the first bytes of the memory it shares with its owner, and exits once its owner
has gone and its writers have ended.

Requests are pickled ``(target, args)`` pairs with descriptors attached, sent over a private
``AF_UNIX`` socket pair; the child runs ``target(memory, descriptors, owner_pidfd, *args)``.
"""

from __future__ import annotations

import mmap
import os
import pickle
import select
import selectors
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from multiprocessing import util
from typing import Any

from .errors import WriterError

#: The first bytes of a child's shared memory: whether the launcher recorded its end, and its exit code.
STATUS = struct.Struct("<qq")
#: How long the owner waits, after a child has ended, for the launcher to record how.
RECORD_SECONDS = 2.0
_MESSAGE_BYTES = 1 << 16
_SERVE = ("import sys; sys.path.insert(0, sys.argv[3]); from blockfs.launcher import serve; "
          "serve(int(sys.argv[1]), int(sys.argv[2]))")


class Child:
    """A process the launcher forked, as its owner sees it (``pid``, ``exitcode``, ``is_alive``, ``join``)."""

    def __init__(self, pid: int, pidfd: int, memory: mmap.mmap, launcher: Launcher):
        self.pid = pid
        self._pidfd = pidfd
        self._memory = memory
        self._launcher = launcher
        self._unrecorded = False
        self._code: int | None = None

    @property
    def exitcode(self) -> int | None:
        """None while the child runs; its exit code (minus the signal that ended it) once it has ended."""
        if self._code is None:
            self._code = self._ended()
        return self._code

    def _ended(self) -> int | None:
        recorded, code = STATUS.unpack_from(self._memory)
        if recorded:
            return int(code)
        if self._pidfd < 0 or not _readable(self._pidfd, 0):
            return None
        deadline = time.monotonic() + RECORD_SECONDS
        while time.monotonic() < deadline and self._launcher.alive():
            time.sleep(0.001)
            recorded, code = STATUS.unpack_from(self._memory)
            if recorded:
                return int(code)
        self._unrecorded = True
        return 1

    @property
    def end_unrecorded(self) -> bool:
        """True when the child has ended and the launcher (gone itself) could not record how."""
        return self._unrecorded

    def is_alive(self) -> bool:
        return self.exitcode is None

    def watch(self, poller: select.poll) -> None:
        """Register this child with ``poller``, which then reports it readable once the child has ended."""
        poller.register(self._pidfd, select.POLLIN)

    def join(self, timeout: float | None = None) -> None:
        """Wait until the child has ended, at most ``timeout`` seconds."""
        if self._pidfd >= 0:
            _readable(self._pidfd, timeout)

    def release(self) -> None:
        """Close the pidfd (the exit code stays readable from the shared memory)."""
        if self._pidfd >= 0:
            os.close(self._pidfd)
            self._pidfd = -1


def _readable(fd: int, timeout: float | None) -> bool:
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(None if timeout is None else timeout * 1000))


class Launcher:
    """The owner's end of its launcher process."""

    def __init__(self) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        package_parent = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        self.owner_pid = os.getpid()
        self.process = subprocess.Popen(
            [sys.executable, "-c", _SERVE, str(theirs.fileno()), str(self.owner_pid), package_parent],
            pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL)
        theirs.close()
        self._socket = ours
        self._lock = threading.Lock()
        # at exit after the writer pools (priority 100), which end the children
        self.close = util.Finalize(None, _end, args=(ours, self.process), exitpriority=1)

    def alive(self) -> bool:
        return self.process.poll() is None

    def start(self, target: Callable[..., None], args: tuple[Any, ...], memory_fd: int, memory: mmap.mmap,
              fds: list[int]) -> Child:
        """Fork a child that runs ``target(memory, fds, owner_pidfd, *args)``; ``memory`` (a mapping of
        ``memory_fd``) starts with :data:`STATUS`, where the launcher records how the child ended."""
        request = pickle.dumps((target, args))
        with self._lock:
            try:
                socket.send_fds(self._socket, [request], [memory_fd, *fds])
                reply, pidfds, _, _ = socket.recv_fds(self._socket, _MESSAGE_BYTES, 1)
            except OSError as exc:
                raise WriterError(f"the blockfs launcher process ({self.process.pid}) is not answering: {exc}") from exc
        if not reply:
            raise WriterError(f"the blockfs launcher process ({self.process.pid}) has exited "
                              f"(status {self.process.wait()}); see the error above")
        outcome, value = pickle.loads(reply)
        if outcome != "started":
            raise WriterError(f"the blockfs launcher process could not start a writer: {value}")
        return Child(value, pidfds[0], memory, self)


def _end(link: socket.socket, process: subprocess.Popen[bytes]) -> None:
    """Close the owner's end; the launcher then exits once its children have (waited for a few seconds)."""
    link.close()
    try:
        process.wait(RECORD_SECONDS)
    except subprocess.TimeoutExpired:
        pass


_launcher: Launcher | None = None
_launcher_lock = threading.Lock()


def running() -> Launcher | None:
    """This process's launcher if it has started one, else None."""
    return _launcher if _launcher is not None and _launcher.owner_pid == os.getpid() else None


def launcher() -> Launcher:
    """This process's launcher, started on first use (and again if it has exited, or in a forked child)."""
    global _launcher
    with _launcher_lock:
        if _launcher is None or _launcher.owner_pid != os.getpid() or not _launcher.alive():
            if _launcher is not None and _launcher.owner_pid == os.getpid():
                _launcher.close()
            _launcher = Launcher()
        return _launcher


# -- the launcher process -------------------------------------------------------------------------


class _Children:
    """The launcher's children: their pidfds and the memory where each one's end is recorded."""

    def __init__(self) -> None:
        self.selector = selectors.DefaultSelector()
        self.memory: dict[int, tuple[int, mmap.mmap]] = {}  # pidfd -> (pid, memory)

    def fork(self, link: socket.socket, owner: int, message: bytes, fds: list[int]) -> None:
        """Run one request: map its memory, fork the child, answer with its pid and a pidfd."""
        try:
            target, args = pickle.loads(message)
            memory = mmap.mmap(fds[0], 0)
            pid = os.fork()
            if pid == 0:
                os.close(fds[0])
                self._become_child(link, target, args, memory, fds[1:], owner)
            pidfd = os.pidfd_open(pid)
        except Exception as exc:  # told to the owner, which raises it
            link.send(pickle.dumps(("failed", f"{type(exc).__name__}: {exc}")))
            return
        finally:
            for fd in fds:  # the child has its own copies
                os.close(fd)
        self.memory[pidfd] = (pid, memory)
        self.selector.register(pidfd, selectors.EVENT_READ)
        socket.send_fds(link, [pickle.dumps(("started", pid))], [pidfd])

    def _become_child(self, link: socket.socket, target: Callable[..., None], args: tuple[Any, ...],
                      memory: mmap.mmap, fds: list[int], owner: int) -> None:
        code = 1
        try:
            link.close()
            self.selector.close()
            for pidfd, (_, other) in self.memory.items():
                os.close(pidfd)
                other.close()
            target(memory, fds, owner, *args)
            code = 0
        finally:
            os._exit(code)

    def reap(self, pidfd: int) -> None:
        """Record how the child ended, in its memory, and forget it."""
        pid, memory = self.memory.pop(pidfd)
        self.selector.unregister(pidfd)
        os.close(pidfd)
        _, status = os.waitpid(pid, 0)
        STATUS.pack_into(memory, 0, 1, os.waitstatus_to_exitcode(status))
        memory.close()


def serve(link_fd: int, owner_pid: int) -> None:
    """The launcher's loop: fork children on request until the owner has gone and every child has ended."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the owner, which stops the writers
    link = socket.socket(fileno=link_fd)
    try:
        owner = os.pidfd_open(owner_pid)
    except ProcessLookupError:
        return
    children = _Children()
    children.selector.register(link, selectors.EVENT_READ)
    children.selector.register(owner, selectors.EVENT_READ)
    serving = True
    while serving or children.memory:
        for key, _ in children.selector.select():
            if key.fileobj is link:
                message, fds, _, _ = socket.recv_fds(link, _MESSAGE_BYTES, 8)
                if message:
                    children.fork(link, owner, message, fds)
                    continue
            if key.fileobj in (link, owner):  # the owner has closed its end, or exited
                if serving:
                    children.selector.unregister(link)
                    children.selector.unregister(owner)
                    serving = False
            else:
                children.reap(key.fd)
