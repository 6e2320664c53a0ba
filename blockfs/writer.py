"""The writer process pool: a few processes that compress and append the blocks their owner queues.

The process that starts the pool owns it. Its ``write_block`` takes a free slot number from the
pool's ``free`` pipe, copies the block into that slot of memory shared with the writers (a memfd),
and writes (slot, entry, shape) to the ``q_in`` pipe of the writer of the block's shard. An idle
writer thread takes the next block of its own shard, compresses it straight from the slot (the GIL
released), appends it to the shard (under the shard's lock) and hands the slot back. So the writers
of a pool never wait for each other's lock. When a writer is behind, ``write_block`` compresses
the block into the slot itself instead of copying it (in parallel with the writers, and with no
copy), and the writer only appends it. A writer whose own queue is empty takes blocks queued
for the next :data:`NEIGHBOURS` shards too (any writer may append to any shard), so a writer that
lags never holds up the others. The owner queues a block only once any earlier block of the same
entry has been appended, so the last write of a block wins. A block crosses between processes as
one memory copy, with no queue thread and no pickling, and the slots (``queue_depth + threads + 1``
per writer) bound the blocks in flight. Writers are forked by this process's launcher
(:mod:`blockfs.launcher`), never from the owner itself, so starting and ending them costs the same
in an owner of any size.

A block a writer cannot store (disk full, no permission) is recorded in the writer's own page of
shared memory (the first such cause), and the writer goes on storing the others. A writer that is
killed is seen through its exit code (recorded there by the launcher); the blocks it held are lost.
Either way the owner raises :class:`WriterError` on its next write and at ``close()``, and never
waits on a dead writer, while the writers still running store what was queued. A writer whose owner
dies sees it through a pidfd of the owner, and exits.
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

from .errors import InvalidArgumentError, MissingShardError, WriterError
from .format import Layout
from .launcher import STATUS, Child, launcher
from .store import BlockStore, StoreSpec, encode_into, encoded_bytes, record_bytes

#: How long one blocking step waits before checking the writers' health again, in seconds.
POLL_SECONDS = 0.2
#: How many other shards' queues a writer takes blocks from when its own is empty (the next ones, in a ring).
NEIGHBOURS = 3
#: How long an idle writer thread first waits on its own queue before it looks at its neighbours'; each
#: idle wait doubles it, up to POLL_SECONDS, and a block taken starts it again.
STEAL_SECONDS = 0.001
#: A writer's own page of shared memory: the launcher's record of how it ended, then why it failed
#: (UTF-8, NUL ended).
_ERROR_AT = STATUS.size
_STATUS_BYTES = mmap.PAGESIZE
_MISSING = f"{MissingShardError.__name__}: "
#: A queued block: its slot, its entry, its shape (z, y, x) and the bytes of it encoded in the slot (0: the slot
#: holds its voxels). Far below PIPE_BUF, so every write and read of one message is whole, from any number of
#: threads and processes.
_BLOCK = struct.Struct("<qqiiii")
_SLOT = struct.Struct("<q")


class MessagePipe:
    """A pipe of fixed-size messages between the owner and one writer."""

    def __init__(self, message: struct.Struct, read_fd: int = -1, write_fd: int = -1):
        """A new pipe, or (given its descriptors) one end of a pipe made elsewhere."""
        self._message = message
        self.message_size = message.size
        self.read_fd, self.write_fd = os.pipe() if read_fd < 0 and write_fd < 0 else (read_fd, write_fd)

    def qsize(self) -> int:
        """Messages written and not yet read (as ``multiprocessing.Queue.qsize``); 0 once closed."""
        fd = self.write_fd if self.write_fd >= 0 else self.read_fd
        if fd < 0:
            return 0
        waiting = fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0")
        return int(struct.unpack("i", waiting)[0]) // self._message.size

    def put(self, *values: int) -> None:
        os.write(self.write_fd, self._message.pack(*values))

    def get(self) -> tuple[int, ...] | None:
        """The next message; None at the end (every writing end closed). Raises BlockingIOError
        when the reading end is non-blocking and the pipe is empty."""
        data = os.read(self.read_fd, self._message.size)
        return self._message.unpack(data) if data else None

    def get_waiting(self, most: int) -> list[tuple[int, ...]] | None:
        """Every message waiting, up to ``most``, in one read; None at the end. Raises BlockingIOError
        when the reading end is non-blocking and the pipe is empty."""
        data = os.read(self.read_fd, most * self._message.size)
        return list(self._message.iter_unpack(data)) if data else None

    def wait_readable(self, seconds: float) -> None:
        """Return once a message (or the end) can be read, or after ``seconds``. poll(): any descriptor number."""
        poller = select.poll()
        poller.register(self.read_fd, select.POLLIN)
        poller.poll(seconds * 1000)

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


def _slot_bytes(slots: np.ndarray, layout: Layout, slot: int) -> memoryview:
    """One slot of the shared slot memory: room for a block's voxels, or for it encoded."""
    size = encoded_bytes(layout)
    return slots[slot * size:(slot + 1) * size].data


def _slot_view(slots: np.ndarray, layout: Layout, slot: int, shape: tuple[int, ...]) -> np.ndarray:
    """The block-shaped array in one slot of the shared slot memory."""
    start = slot * encoded_bytes(layout)
    return slots[start:start + math.prod(shape) * layout.dtype.itemsize].view(layout.dtype).reshape(shape)


def _record_failure(status: np.ndarray, text: str) -> None:
    """Record why a writer failed; the first byte last, so the owner, which may look at any moment,
    sees the whole text or none of it."""
    encoded = np.frombuffer(text.encode("utf-8", "replace")[:_STATUS_BYTES - _ERROR_AT - 1] + b"\0", np.uint8)
    status[_ERROR_AT + 1:_ERROR_AT + len(encoded)] = encoded[1:]
    status[_ERROR_AT] = encoded[0]


def _recorded_failure(status: np.ndarray) -> bytes:
    if not status[_ERROR_AT]:
        return b""
    text = status[_ERROR_AT:_STATUS_BYTES].tobytes()
    return text[:text.index(b"\0")] if b"\0" in text else text


def run_writer(status: mmap.mmap, fds: list[int], owner: int, spec: StoreSpec, threads: int) -> None:
    """A writer process (forked by the launcher): store the blocks queued for its shard (``fds[3]``), and for
    its neighbours' (``fds[4:]``) when it has none, from the slots (``fds[0]``), handing slots back on
    ``free`` (``fds[1]``), until the stop pipe (``fds[2]``) says stop and its queue is empty, or the owner
    (pidfd) has gone."""
    slots_fd, free, stop, *queues = fds
    slots = mmap.mmap(slots_fd, 0)
    os.close(slots_fd)
    for fd in queues:
        os.set_blocking(fd, False)  # other threads and writers read the same pipes: a message seen may be taken
    _WriterProcess(np.frombuffer(status, np.uint8), np.frombuffer(slots, np.uint8),
                   [MessagePipe(_BLOCK, read_fd=fd) for fd in queues], MessagePipe(_SLOT, write_fd=free), stop,
                   owner, threads).run(spec)
    STATUS.pack_into(status, 0, 1, 0)  # a clean end, known to the owner even if the launcher has gone


class _WriterProcess:
    """What runs in a writer process: threads that each take a queued block, compress and append it."""

    def __init__(self, status: np.ndarray, slots: np.ndarray, queues: list[MessagePipe], free: MessagePipe, stop: int,
                 owner: int, threads: int):
        self.status = status
        self.slots = slots
        self.queues = queues  # this writer's own first, then its neighbours'
        self.free = free
        self.stop = stop
        self.owner = owner
        self.threads = threads
        self._failing = threading.Lock()

    def run(self, spec: StoreSpec) -> None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the owner, which stops us
        self._guard(self._open, spec)
        threads = [threading.Thread(target=self._guard, args=(self._serve,), name=f"blockfs-compress-{i}")
                   for i in range(self.threads)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if spec.durable:
            self._guard(self.store.sync)
        self.store.close()

    def _open(self, spec: StoreSpec) -> None:
        self.store = BlockStore(spec)

    def _waiting_block(self) -> tuple[int, ...] | None:
        """A block waiting in this writer's queue, else in a neighbour's; None when they are empty."""
        for queue in self.queues:
            try:
                message = queue.get()
            except BlockingIOError:
                continue  # empty, or another thread or writer took it
            if message is not None:  # None: the owner's end is closed, which its pidfd tells
                return message
        return None

    def _next(self, waiting: select.poll) -> tuple[int, ...] | None:
        """The next block to store; None once the owner has said stop and the queues are empty, or has gone.

        ``waiting`` polls this writer's own queue, the stop pipe and the owner's pidfd; the neighbours'
        queues are looked at after each wait, which grows while nothing comes.
        """
        stopping, seconds = False, STEAL_SECONDS
        while (message := self._waiting_block()) is None:
            if stopping:
                return None
            ready = dict(waiting.poll(seconds * 1000))
            if self.owner in ready:
                return None
            stopping, seconds = self.stop in ready, min(2 * seconds, POLL_SECONDS)
        return message

    def _serve(self) -> None:
        waiting = select.poll()  # one per thread: a poll object is not shared between threads
        for fd in (self.queues[0].read_fd, self.stop, self.owner):
            waiting.register(fd, select.POLLIN)
        while (message := self._next(waiting)) is not None:
            slot, entry, z, y, x, encoded = message
            layout = self.store.layout
            try:
                if encoded:  # compressed by the producer: only to be appended
                    self.store.append(entry, _slot_bytes(self.slots, layout, slot)[:encoded], record_bytes(layout))
                else:
                    self.store.store(entry, _slot_view(self.slots, layout, slot, (z, y, x)))
            except Exception as exc:  # the owner stops taking blocks; the ones queued are still stored
                self._record_first(exc)
            finally:
                self.free.put(slot)

    def _record_first(self, exc: BaseException) -> None:
        with self._failing:
            if not _recorded_failure(self.status):
                _record_failure(self.status, f"{type(exc).__name__}: {exc}")

    def _guard(self, step: Any, *args: Any) -> None:
        """Run a step; if it fails, record why and end the process (the owner reports it)."""
        try:
            step(*args)
        except BaseException as exc:
            self._record_first(exc)
            os._exit(1)


class BlockWriter:
    """One writer process of a pool, as its owner sees it: its ``process``, its health, and the ``q_in`` pipe
    of its shard's blocks."""

    def __init__(self, spec: StoreSpec, number: int, count: int, threads: int, q_in: MessagePipe, fds: list[int],
                 slot_bytes: int):
        self.number = number
        self.threads = threads
        self.q_in = q_in  # compatibility: callers poll writers[i].q_in.qsize()
        #: This writer's share of the pool's slot memory.
        self.slot_bytes = slot_bytes
        status_fd = os.memfd_create(f"blockfs-writer-{number}", os.MFD_CLOEXEC)
        try:
            os.ftruncate(status_fd, _STATUS_BYTES)
            mapping = mmap.mmap(status_fd, _STATUS_BYTES)
            self.memory = np.frombuffer(mapping, np.uint8)
            self.process: Child = launcher().start(run_writer, (spec, threads), status_fd, mapping, fds)
        finally:
            os.close(status_fd)
        self.name = f"writer {number + 1} of {count} (pid {self.process.pid}) of {spec.index_path}"

    def failure(self) -> str | None:
        """What went wrong in this writer (the first block it could not store, or its death), or None."""
        code = self.process.exitcode  # first: a writer that dies of a failure records it before it exits
        recorded = _recorded_failure(self.memory)
        if recorded:
            cause = recorded.decode("utf-8", "replace").removeprefix(_MISSING)
            return f"{self.name} failed: {cause}"
        if code:
            cause = (f"signal {signal.Signals(-code).name}" if code < 0 else
                     "cause unknown: the launcher process that started it had ended" if self.process.end_unrecorded
                     else f"exit status {code}")
            return f"{self.name} died ({cause}); the blocks it was storing were not written"
        return None

    def raise_if_failed(self) -> None:
        reason = self.failure()
        if reason is not None:
            raise self.error_class()(reason)
        if self.process.exitcode is not None:
            raise WriterError(f"{self.name} has stopped; the volume was closed")

    def error_class(self) -> type[WriterError] | type[MissingShardError]:
        """:class:`MissingShardError` when the writer stopped for a missing shard (as a direct write raises)."""
        return MissingShardError if _recorded_failure(self.memory).startswith(_MISSING.encode()) else WriterError


class WriterPool:
    """The writer processes of one volume, one per shard, owned by the process that started them.

    Each writer compresses on ``ceil(cores / shards)`` threads, so the pool uses every core.
    """

    shards_synced_by_owners = False  # the writers leave fsync to the owner's close()

    def __init__(self, spec: StoreSpec, queue_depth: int):
        self.owner_pid = os.getpid()
        self.index_path = spec.index_path
        self._layout = spec.layout
        self._block_shape = spec.layout.block_shape
        self._encode_from = max(1, queue_depth // 2)
        count = len(spec.shard_paths)
        threads = max(1, -(-(os.cpu_count() or 1) // count))
        per_writer = queue_depth + threads + 1
        n_slots = count * per_writer
        self.writers: list[BlockWriter] = []
        self._closed = False
        self._lock = threading.Lock()
        self._n_slots = n_slots
        self._ended = select.poll()  # every writer's pidfd: readable once it has ended
        self._spare: list[int] = []  # free slots read from the pipe and not used yet
        self._queued: dict[int, int] = {}  # slot -> entry of the block queued in it, until it comes back
        self._slot_of: dict[int, int] = {}  # entry -> its slot, while a block of it is queued
        self.queues = [MessagePipe(_BLOCK) for _ in range(count)]  # each shard's, read first by its writer
        self.free = MessagePipe(_SLOT)
        stop_read, self._stop = os.pipe()  # written once by close(); never read, so it stays readable
        self._finalizer = util.Finalize(None, self.close, kwargs={"quiet": True}, exitpriority=100)
        slots_fd = os.memfd_create("blockfs-slots", os.MFD_CLOEXEC)
        try:
            os.ftruncate(slots_fd, n_slots * encoded_bytes(spec.layout))
            self.slots = np.frombuffer(mmap.mmap(slots_fd, n_slots * encoded_bytes(spec.layout)), np.uint8)
            # each slot as a whole block and as bytes, made once
            self._full_slots = [_slot_view(self.slots, spec.layout, slot, spec.layout.block_shape)
                                for slot in range(n_slots)]
            self._slot_memory = [_slot_bytes(self.slots, spec.layout, slot) for slot in range(n_slots)]
            for pipe in (self.free, *self.queues):
                _hold(pipe, n_slots)
            for slot in range(n_slots):
                self.free.put(slot)
            for number in range(count):
                taken = [self.queues[(number + k) % count].read_fd for k in range(min(count, NEIGHBOURS + 1))]
                self.writers.append(BlockWriter(spec, number, count, threads, self.queues[number],
                                                [slots_fd, self.free.write_fd, stop_read, *taken],
                                                per_writer * encoded_bytes(spec.layout)))
                self.writers[-1].process.watch(self._ended)
        except BaseException:
            self.close(quiet=True)  # the writers already started
            raise
        finally:
            os.close(slots_fd)
            os.close(stop_read)
        for queue in self.queues:
            queue.keep_only("write")
        self.free.keep_only("read")
        os.set_blocking(self.free.read_fd, False)

    @property
    def is_owner(self) -> bool:
        """True in the process that started the pool (forked children write on their own)."""
        return os.getpid() == self.owner_pid and not self._closed

    def submit(self, block: np.ndarray, entry: int) -> None:
        """Put ``block`` (cast to the volume's dtype) into a free slot and queue it for the writers.

        The block is copied into the slot, for a writer to compress; but when its writer is behind (half
        of ``queue_depth`` blocks wait for it), this thread compresses it into the slot itself, alongside
        the writers, and the writer only appends it."""
        with self._lock:
            slot = self._slot_for(entry)
        queue = self.queues[self._layout.shard_of(entry)]
        try:
            if queue.qsize() >= self._encode_from and block.flags.c_contiguous:
                encoded = len(encode_into(self._layout, entry, block, self._slot_memory[slot])[0])
            else:
                view = self._full_slots[slot] if block.shape == self._block_shape else \
                    _slot_view(self.slots, self._layout, slot, block.shape)
                view[...] = block
                encoded = 0
        except BaseException:  # nothing was queued: the slot is free again (Ctrl-C in a copy, say)
            with self._lock:
                self._release(slot)
            raise
        try:
            queue.put(slot, entry, *block.shape, encoded)
        except BrokenPipeError:  # every writer that takes this shard's blocks has exited
            raise self._stopped() from None

    def _slot_for(self, entry: int) -> int:
        """A free slot for a block of ``entry``, once any block of it queued earlier has been appended (the
        writers store blocks in any order, so this is what makes the last write win). Raises once a
        writer has failed, so no block is taken after that."""
        self._raise_if_failed()
        while entry in self._slot_of or not self._spare:
            self._take_returned_slots()
        slot = self._spare.pop()
        self._queued[slot] = entry
        self._slot_of[entry] = slot
        return slot

    def _take_returned_slots(self) -> None:
        """Take every slot the writers have handed back, in one read; wait while they are busy, never
        on a failed one."""
        while True:
            try:
                messages = self.free.get_waiting(self._n_slots)
            except BlockingIOError:
                self.free.wait_readable(POLL_SECONDS)
                self._raise_if_failed()
                continue
            if messages is None:  # every writer's end is closed: they have exited
                raise self._stopped()
            for (slot,) in messages:
                self._release(slot)
            return

    def _release(self, slot: int) -> None:
        """Make ``slot`` free again, and the entry it held free to be queued anew."""
        entry = self._queued.pop(slot, None)
        if entry is not None:
            del self._slot_of[entry]
        self._spare.append(slot)

    def _raise_if_failed(self) -> None:
        """Raise if a writer has failed or ended: its own page records a failure, or its pidfd says it
        has ended (one poll of every writer, so checking before each block costs one system call)."""
        if self._ended.poll(0) or any(writer.memory[_ERROR_AT] for writer in self.writers):
            for writer in self.writers:
                writer.raise_if_failed()

    def _stopped(self) -> WriterError:
        """The error for writers that have all exited: a writer's own failure if one failed."""
        self._raise_if_failed()
        return WriterError(f"the writers of {self.index_path} have stopped; the volume was closed")

    def close(self, quiet: bool = False) -> None:
        """Stop every writer after the pool has stored what it was given; raise if any failed."""
        if self._closed or os.getpid() != self.owner_pid:
            return
        self._closed = True
        self._finalizer.cancel()
        try:
            os.write(self._stop, b"\0")  # every writer thread ends once no block is left for it
        except BrokenPipeError:
            pass  # every writer has exited; each says why below
        failures, classes = [], set()
        for writer in self.writers:
            while writer.process.is_alive():
                writer.process.join(POLL_SECONDS)
            reason = writer.failure()
            if reason is not None:
                classes.add(writer.error_class())
                failures.append(reason)
            writer.process.release()
        for pipe in (*self.queues, self.free):
            pipe.close()
        os.close(self._stop)
        if failures and not quiet:
            raise (MissingShardError if classes == {MissingShardError} else WriterError)("; ".join(failures))


def _hold(pipe: MessagePipe, messages: int) -> None:
    """Make ``pipe`` hold ``messages`` unread messages, so writing them never blocks."""
    needed = messages * pipe.message_size
    if needed > fcntl.fcntl(pipe.write_fd, fcntl.F_GETPIPE_SZ):
        try:
            fcntl.fcntl(pipe.write_fd, fcntl.F_SETPIPE_SZ, needed)
        except OSError as exc:
            raise InvalidArgumentError(f"{messages} writer slots need a pipe of {needed} bytes, more than this system "
                             f"allows ({exc.strerror}); pass a smaller queue_depth") from None
