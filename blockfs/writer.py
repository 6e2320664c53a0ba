"""The writer process pool: one process per shard, fed through shared memory and two pipes.

The process that starts the pool owns it. Its ``write_block`` takes a free slot number from the
writer's ``free`` pipe, copies the block into that slot of memory shared with the writer (a memfd),
and writes (slot, entry, shape) to the writer's ``q_in`` pipe. The writer's threads compress
straight from the slots (the GIL released) and append the blocks in the order they were queued, so
the last write of a block wins, handing each slot back once its block is appended. A block crosses between processes as one
memory copy, with no queue thread and no pickling, and at most ``queue_depth + threads + 1`` blocks
per writer are in flight. Writers are forked by this process's launcher (:mod:`blockfs.launcher`),
never from the owner itself, so starting and ending them costs the same in an owner of any size.

A writer that fails records the cause in the shared memory and exits; one that is killed is seen
through its exit code (recorded there by the launcher) and through the end of its ``free`` pipe.
Either way the owner raises :class:`WriterError` on its next write and at ``close()``, and never
waits on a dead writer. A writer whose owner dies sees it through a pidfd of the owner, and exits.
"""

from __future__ import annotations

import fcntl
import math
import mmap
import os
import select
import signal
import struct
import termios
import threading
from multiprocessing import util
from typing import Any

import numpy as np

from .errors import MissingShardError, WriterError
from .format import Layout
from .launcher import STATUS, Child, launcher
from .store import BlockStore, StoreSpec

#: How long one blocking step waits before checking the writers' health again, in seconds.
POLL_SECONDS = 0.2
#: The shared memory of a writer: the launcher's record of how it ended, why it failed (UTF-8, NUL
#: ended), then the block slots from the second page on.
_ERROR_AT = STATUS.size
_SLOTS_AT = mmap.PAGESIZE
_MISSING = f"{MissingShardError.__name__}: "
#: A queued block: its slot (-1: stop), its entry and its shape (z, y, x). Far below PIPE_BUF, so
#: every write and read of one message is whole, from any number of threads and processes.
_BLOCK = struct.Struct("<qqiii")
_SLOT = struct.Struct("<q")
_STOP = -1


class MessagePipe:
    """A pipe of fixed-size messages between the owner and one writer."""

    def __init__(self, message: struct.Struct, read_fd: int = -1, write_fd: int = -1):
        """A new pipe, or (given its descriptors) one end of a pipe made elsewhere."""
        self._message = message
        self.read_fd, self.write_fd = os.pipe() if read_fd < 0 and write_fd < 0 else (read_fd, write_fd)

    def qsize(self) -> int:
        """Messages written and not yet read (as ``multiprocessing.Queue.qsize``)."""
        fd = self.write_fd if self.write_fd >= 0 else self.read_fd
        waiting = fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0")
        return struct.unpack("i", waiting)[0] // self._message.size

    def put(self, *values: int) -> None:
        os.write(self.write_fd, self._message.pack(*values))

    def get(self) -> tuple[int, ...] | None:
        """The next message; None at the end (every writing end closed). Raises BlockingIOError
        when the reading end is non-blocking and the pipe is empty."""
        data = os.read(self.read_fd, self._message.size)
        return self._message.unpack(data) if data else None

    def wait_readable(self, seconds: float | None, unless: int = -1) -> bool:
        """Whether a message (or the end) can be read within ``seconds`` (None: however long it takes),
        and before descriptor ``unless`` (if given) becomes readable. poll(): any descriptor number."""
        poller = select.poll()
        poller.register(self.read_fd, select.POLLIN)
        if unless >= 0:
            poller.register(unless, select.POLLIN)
        ready = dict(poller.poll(None if seconds is None else seconds * 1000))
        return self.read_fd in ready

    def keep_only(self, end: str) -> None:
        """Close the other end in this process ("read" keeps the reading end)."""
        other = "write_fd" if end == "read" else "read_fd"
        os.close(getattr(self, other))
        setattr(self, other, -1)

    def close(self) -> None:
        for name in ("read_fd", "write_fd"):
            fd = getattr(self, name)
            if fd >= 0:
                os.close(fd)
                setattr(self, name, -1)


def _slot_view(memory: np.ndarray, layout: Layout, slot: int, shape: tuple[int, ...]) -> np.ndarray:
    """The block-shaped array in one slot (room for one full block) of a writer's shared memory."""
    start = _SLOTS_AT + slot * layout.max_block_bytes
    return memory[start:start + math.prod(shape) * layout.dtype.itemsize].view(layout.dtype).reshape(shape)


def _record_failure(memory: np.ndarray, text: str) -> None:
    encoded = text.encode("utf-8", "replace")[:_SLOTS_AT - _ERROR_AT - 1]
    memory[_ERROR_AT:_ERROR_AT + len(encoded) + 1] = np.frombuffer(encoded + b"\0", np.uint8)


def _recorded_failure(memory: np.ndarray) -> bytes:
    text = memory[_ERROR_AT:_SLOTS_AT].tobytes()
    return text[:text.index(b"\0")] if b"\0" in text else text


def run_writer(mapping: mmap.mmap, fds: list[int], owner: int, spec: StoreSpec, threads: int) -> None:
    """A writer process (forked by the launcher): store the blocks queued on ``q_in`` (``fds[0]``),
    handing slots back on ``free`` (``fds[1]``), until told to stop or the owner (pidfd) has gone."""
    memory = np.frombuffer(mapping, np.uint8)
    _WriterProcess(memory, MessagePipe(_BLOCK, read_fd=fds[0]), MessagePipe(_SLOT, write_fd=fds[1]),
                   owner, threads).run(spec)
    STATUS.pack_into(mapping, 0, 1, 0)  # a clean end, known to the owner even if the launcher has gone


class _WriterProcess:
    """What runs in a writer process: threads that compress from the slots and append in queue order."""

    def __init__(self, memory: np.ndarray, q_in: MessagePipe, free: MessagePipe, owner: int, threads: int):
        self.memory = memory
        self.q_in = q_in
        self.free = free
        self.owner = owner
        self.threads = threads
        self._take = threading.Lock()
        self._order = threading.Lock()
        self._taken = 0
        self._appended = 0
        self._ready: dict[int, tuple[int, int, tuple[bytes, int] | Exception]] = {}
        self._appending = False

    def run(self, spec: StoreSpec) -> None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the owner, which stops us
        self._guard(self._open, spec)
        threads = [threading.Thread(target=self._work, name=f"blockfs-compress-{i}") for i in range(self.threads)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if spec.durable:
            self._guard(self.store.sync)
        self.store.close()

    def _open(self, spec: StoreSpec) -> None:
        self.store = BlockStore(spec)

    def _next(self) -> tuple[int, tuple[int, ...]] | None:
        """(sequence number, message) of the next queued block, or None: stop, or the owner is gone."""
        with self._take:
            if not self.q_in.wait_readable(None, unless=self.owner):
                return None
            message = self.q_in.get()
            if message is None or message[0] == _STOP:
                return None
            self._taken += 1
            return self._taken - 1, message

    def _work(self) -> None:
        self._guard(self._serve)

    def _serve(self) -> None:
        while (item := self._next()) is not None:
            number, (slot, entry, *shape) = item
            self._store_block(number, slot, entry, tuple(shape))

    def _store_block(self, number: int, slot: int, entry: int, shape: tuple[int, ...]) -> None:
        """Compress a block; then, unless another thread is appending, append the blocks that are ready
        in queue order. No thread waits for another's compression, and a slot is handed back once its
        block is appended, so the slots bound the blocks held, compressed or not."""
        encoded: tuple[bytes, int] | Exception
        try:
            encoded = self.store.encode(entry, _slot_view(self.memory, self.store.layout, slot, shape))
        except Exception as exc:  # raised in its turn, so the blocks queued before it are stored first
            encoded = exc
        with self._order:
            self._ready[number] = (slot, entry, encoded)
            if self._appending:
                return  # the appending thread takes this block in its turn
            self._appending = True
        while (ready := self._next_ready()) is not None:
            slot, entry, encoded = ready
            try:
                if isinstance(encoded, Exception):
                    raise encoded
                self.store.append(entry, *encoded)
            finally:
                self.free.put(slot)

    def _next_ready(self) -> tuple[int, int, tuple[bytes, int] | Exception] | None:
        """The next block in queue order if it is compressed; else None, and this thread stops appending."""
        with self._order:
            ready = self._ready.pop(self._appended, None)
            if ready is None:
                self._appending = False
            else:
                self._appended += 1
            return ready

    def _guard(self, step: Any, *args: Any) -> None:
        """Run a step; on failure record why and end the process (the owner reports it)."""
        try:
            step(*args)
        except BaseException as exc:
            _record_failure(self.memory, f"{type(exc).__name__}: {exc}")
            os._exit(1)


class BlockWriter:
    """One writer process, its ``q_in`` pipe of queued blocks and its shared block slots, for one shard."""

    def __init__(self, spec: StoreSpec, shard: int, queue_depth: int, threads: int):
        self.shard = shard
        self.shard_path = spec.shard_paths[shard]
        self.threads = threads
        self._layout = spec.layout
        n_slots = queue_depth + threads + 1
        self.slot_bytes = n_slots * spec.layout.max_block_bytes
        memory_fd = os.memfd_create(f"blockfs-writer-{shard}", os.MFD_CLOEXEC)
        try:
            os.ftruncate(memory_fd, _SLOTS_AT + self.slot_bytes)
            mapping = mmap.mmap(memory_fd, _SLOTS_AT + self.slot_bytes)
            self.memory = np.frombuffer(mapping, np.uint8)
            self.q_in = MessagePipe(_BLOCK)
            self.free = MessagePipe(_SLOT)
            for slot in range(n_slots):
                self.free.put(slot)
            self.process: Child = launcher().start(run_writer, (spec, threads), memory_fd, mapping,
                                                   [self.q_in.read_fd, self.free.write_fd])
        except BaseException:
            for pipe in ("q_in", "free"):
                if hasattr(self, pipe):
                    getattr(self, pipe).close()
            raise
        finally:
            os.close(memory_fd)
        self.q_in.keep_only("write")
        self.free.keep_only("read")
        os.set_blocking(self.free.read_fd, False)

    def failure(self) -> str | None:
        """Why this writer stopped early, or None while it is healthy or after a clean stop."""
        code = self.process.exitcode  # first: a writer records why it failed before it exits
        recorded = _recorded_failure(self.memory)
        if recorded:
            cause = recorded.decode("utf-8", "replace").removeprefix(_MISSING)
            return f"writer for shard {self.shard_path} failed: {cause}"
        if code:
            cause = (f"signal {signal.Signals(-code).name}" if code < 0 else
                     "cause unknown: the launcher process that started it had ended" if self.process.end_unrecorded
                     else f"exit status {code}")
            return f"writer for shard {self.shard_path} died ({cause}); blocks queued for it were not written"
        return None

    def _stopped(self) -> WriterError:
        self.process.join(POLL_SECONDS)
        self.raise_if_failed()
        return WriterError(f"writer for shard {self.shard_path} has stopped; the volume was closed")

    def _free_slot(self) -> int:
        """A free slot, waiting while the writer is busy but never on a writer that failed or stopped."""
        while True:
            self.raise_if_failed()
            if self.process.exitcode is not None:
                raise self._stopped()
            try:
                message = self.free.get()
            except BlockingIOError:
                self.free.wait_readable(POLL_SECONDS)
                continue
            if message is None:  # the writer's end is closed: it has exited
                raise self._stopped()
            return message[0]

    def submit(self, block: np.ndarray, entry: int) -> None:
        """Copy ``block`` (cast to the volume's dtype) into a free slot and queue it."""
        slot = self._free_slot()
        _slot_view(self.memory, self._layout, slot, block.shape)[...] = block
        try:
            self.q_in.put(slot, entry, *block.shape)
        except BrokenPipeError:  # the writer has exited
            raise self._stopped() from None

    def stop(self) -> None:
        """Queue the messages that make each of the writer's threads finish, and the writer sync and exit."""
        self.raise_if_failed()
        try:
            for _ in range(self.threads):
                self.q_in.put(_STOP, 0, 0, 0, 0)
        except BrokenPipeError:
            raise self._stopped() from None

    def raise_if_failed(self) -> None:
        reason = self.failure()
        if reason is not None:
            raise self.error_class()(reason)

    def error_class(self) -> type[WriterError] | type[MissingShardError]:
        """:class:`MissingShardError` when the writer stopped for a missing shard (as a direct write raises)."""
        return MissingShardError if _recorded_failure(self.memory).startswith(_MISSING.encode()) else WriterError

    def release(self) -> None:
        """Close the pipes and the pidfd once the process has ended (the memory goes with the last reference)."""
        self.q_in.close()
        self.free.close()
        self.process.release()


class WriterPool:
    """Writer processes for every shard of one volume, owned by the process that started them.

    Each writer compresses on ``ceil(cores / shards)`` threads, so one shard uses every core too.
    """

    def __init__(self, spec: StoreSpec, queue_depth: int):
        self.owner_pid = os.getpid()
        self._layout = spec.layout
        n_shards = len(spec.shard_paths)
        threads = max(1, -(-(os.cpu_count() or 1) // n_shards))
        self.writers: list[BlockWriter] = []
        self._closed = False
        self._finalizer = util.Finalize(None, self.close, kwargs={"quiet": True}, exitpriority=100)
        try:
            for shard in range(n_shards):
                self.writers.append(BlockWriter(spec, shard, queue_depth, threads))
        except BaseException:
            self.close(quiet=True)  # the writers already started
            raise

    @property
    def is_owner(self) -> bool:
        """True in the process that started the pool (forked children write on their own)."""
        return os.getpid() == self.owner_pid and not self._closed

    def submit(self, block: np.ndarray, entry: int) -> None:
        """Queue a block for the writer of its shard (the block is copied; the caller keeps it)."""
        self.writers[self._layout.shard_of(entry)].submit(block, entry)

    def close(self, quiet: bool = False) -> None:
        """Stop every writer after it has stored what it was given; raise if any failed."""
        if self._closed or os.getpid() != self.owner_pid:
            return
        self._closed = True
        self._finalizer.cancel()
        failures = []
        for writer in self.writers:
            try:
                writer.stop()
            except (WriterError, MissingShardError) as exc:
                failures.append(str(exc))
        classes = set()
        for writer in self.writers:
            while writer.process.is_alive():
                writer.process.join(POLL_SECONDS)
            reason = writer.failure()
            if reason is not None:
                classes.add(writer.error_class())
                if reason not in failures:
                    failures.append(reason)
            writer.release()
        if failures and not quiet:
            raise (MissingShardError if classes == {MissingShardError} else WriterError)("; ".join(failures))
