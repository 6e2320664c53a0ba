"""The writer process pool: one process per shard, fed by a bounded multiprocessing queue.

The process that starts the pool owns it. Its ``write_block`` copies the block into a free slot of
the writer's shared memory and queues (slot, shape, entry) on the writer's ``q_in``; the writer
compresses straight from the slot, hands the slot back, then appends and indexes the block. So a
block crosses between processes as one memory copy, and at most ``queue_depth + 2`` blocks per
writer are in flight. A writer that fails records the cause in shared memory and stops; one that
is killed is seen through its exit code. Either way the owner raises :class:`WriterError` on its
next write and at ``close()``, and never waits on a dead writer.
"""

from __future__ import annotations

import multiprocessing
import os
import queue
import signal
from multiprocessing import shared_memory, util
from typing import Any

import numpy as np

from .errors import MissingShardError, WriterError
from .format import Layout
from .store import BlockStore, StoreSpec

#: How long one blocking step waits before checking the writers' health again, in seconds.
POLL_SECONDS = 0.2
_ERROR_BYTES = 4096
_MISSING = f"{MissingShardError.__name__}: "


def _context() -> Any:
    """fork where the platform has it (no re-import of the caller's main module), else spawn."""
    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("fork" if "fork" in methods else "spawn")


def _slot_view(memory: shared_memory.SharedMemory, layout: Layout, slot: int, shape: tuple[int, ...]) -> np.ndarray:
    """The block-shaped array in one slot (room for one full block) of a writer's shared memory."""
    return np.ndarray(shape, layout.dtype, buffer=memory.buf, offset=slot * layout.max_block_bytes)


def _run_writer(q_in: Any, free: Any, n_slots: int, memory: shared_memory.SharedMemory, error: Any,
                spec: StoreSpec, owner_pid: int) -> None:
    """Body of a writer process: hand out the free slots, then store blocks until the ``None`` sentinel."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the owner, which drains us
    for slot in range(n_slots):  # here, so the owner starts no queue thread before it forks the writers
        free.put(slot)
    store = BlockStore(spec)
    try:
        while True:
            try:
                item = q_in.get(timeout=1.0)
            except queue.Empty:
                if os.getppid() != owner_pid:
                    return
                continue
            try:
                if item is None:
                    if spec.durable:
                        store.sync()
                    return
                slot, shape, entry = item
                data, payload_at = store.encode(entry, _slot_view(memory, spec.layout, slot, shape))
                free.put(slot)
                store.append(entry, data, payload_at)
            except Exception as exc:
                error.value = f"{type(exc).__name__}: {exc}".encode("utf-8", "replace")[:_ERROR_BYTES - 1]
                return
    finally:
        store.close()


class BlockWriter:
    """One writer process, its input queue ``q_in`` and its shared block slots, for one shard."""

    def __init__(self, ctx: Any, spec: StoreSpec, shard: int, queue_depth: int, owner_pid: int):
        self.shard = shard
        self.shard_path = spec.shard_paths[shard]
        self.q_in = ctx.Queue(maxsize=queue_depth)
        self._free = ctx.Queue()
        self._layout = spec.layout
        n_slots = queue_depth + 2
        self._memory = shared_memory.SharedMemory(create=True, size=n_slots * spec.layout.max_block_bytes)
        self._error = ctx.RawArray("c", _ERROR_BYTES)
        self.process = ctx.Process(target=_run_writer, name=f"blockfs-writer-{shard}",
                                   args=(self.q_in, self._free, n_slots, self._memory, self._error, spec, owner_pid))

    def failure(self) -> str | None:
        """Why this writer stopped early, or None while it is healthy or after a clean stop."""
        if self._error.value:
            cause = self._error.value.decode("utf-8", "replace").removeprefix(_MISSING)
            return f"writer for shard {self.shard_path} failed: {cause}"
        code = self.process.exitcode
        if code:
            cause = f"signal {signal.Signals(-code).name}" if code < 0 else f"exit status {code}"
            return f"writer for shard {self.shard_path} died ({cause}); blocks queued for it were not written"
        return None

    def _wait(self, take: Any) -> Any:
        """Run a blocking ``take(timeout)`` without ever waiting on a writer that failed or stopped."""
        while True:
            self.raise_if_failed()
            if self.process.exitcode is not None:
                raise WriterError(f"writer for shard {self.shard_path} has stopped; the volume was closed")
            try:
                return take(POLL_SECONDS)
            except (queue.Full, queue.Empty):
                continue

    def submit(self, block: np.ndarray, entry: int) -> None:
        """Copy ``block`` (cast to the volume's dtype) into a free slot and queue it."""
        slot = self._wait(lambda timeout: self._free.get(timeout=timeout))
        _slot_view(self._memory, self._layout, slot, block.shape)[...] = block
        self._wait(lambda timeout: self.q_in.put((slot, block.shape, entry), timeout=timeout))

    def stop(self) -> None:
        """Queue the sentinel that makes the writer sync and exit."""
        self._wait(lambda timeout: self.q_in.put(None, timeout=timeout))

    def raise_if_failed(self) -> None:
        reason = self.failure()
        if reason is not None:
            self.q_in.cancel_join_thread()  # a dead reader must not hang our exit
            raise self.error_class()(reason)

    def error_class(self) -> type[WriterError] | type[MissingShardError]:
        """:class:`MissingShardError` when the writer stopped for a missing shard (as a direct write raises)."""
        return MissingShardError if self._error.value.startswith(_MISSING.encode()) else WriterError

    def release(self) -> None:
        """Free the queues and the shared memory once the process has ended."""
        for q in (self.q_in, self._free):
            q.cancel_join_thread()
            q.close()
        self._memory.close()
        self._memory.unlink()


class WriterPool:
    """Writer processes for every shard of one volume, owned by the process that started them."""

    def __init__(self, spec: StoreSpec, queue_depth: int):
        ctx = _context()
        self.owner_pid = os.getpid()
        self._layout = spec.layout
        self.writers = [BlockWriter(ctx, spec, i, queue_depth, self.owner_pid) for i in range(len(spec.shard_paths))]
        for writer in self.writers:
            writer.process.start()
        self._finalizer = util.Finalize(None, self.close, kwargs={"quiet": True}, exitpriority=100)
        self._closed = False

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
