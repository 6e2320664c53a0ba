"""Collective volumes: every rank of an MPI communicator writes blocks of one volume.

:func:`create_collective` and :func:`open_collective` (``Directory(...).create(comm=comm)`` and
``Directory.open(path, "r+", comm=comm)``) are collective and give the volume a
:class:`CollectiveWriter`; then any rank may ``write_block`` any block,
and ``close()`` (collective) returns on every rank once every block written by any rank is in
its shard and indexed.

- **One owner per shard.** Shard ``s`` belongs to rank ``s % size``. Only its owner opens it for
  writing and appends to it, at an end offset it tracks itself, so no file lock is ever taken.
- **Blocks travel compressed.** The rank that has a block compresses it (with its record); if
  another rank owns the block's shard, the encoded bytes go there in one message: the 8-byte entry
  number, then exactly the bytes the owner appends. Sends are synchronous-mode (``Issend``) and at
  most ``window`` are in flight per rank, so a rank holds at most ``window`` encoded blocks for
  others, whatever the eager limits of the network; a rank serves the messages sent to it whenever
  it writes, waits for a send, or closes.
- **One index writer.** Owners keep (entry, offset, size) of what they appended; ``close()``
  gathers these on rank 0 after every owner has fsynced its shards, and rank 0 alone writes the
  index entries, in one contiguous write, and fsyncs it. No two ranks ever write the same file, so
  the volume is safe on NFS (close-to-open consistency, no shared pages) and Lustre/GPFS (no
  extent-lock ping-pong between nodes).
- **Crashes.** Until ``close()`` the new blocks are in their shards, each behind its record, but
  not yet indexed: after a rank dies (Open MPI then ends the whole job) ``blockfs repair`` indexes
  every block whose record reached a shard.
- **Failures** (a full disk, an entry that does not fit) stop the failing owner's appends; the
  owner keeps receiving so no sender waits, and ``close()`` raises :class:`WriterError` on every
  rank after indexing what was written.
"""

from __future__ import annotations

import contextlib
import os
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

from .. import records
from ..errors import BlockfsError, WriterError, describe
from ..format import Layout, pack_entry
from ..storage import pwrite_all
from ..store import BlockStore
from ..volume import Volume, open_volume
from ..writable import WritableVolume, create_from_layout, open_writable

T = TypeVar("T")

TAG_BLOCK = 1
TAG_DONE = 2
#: what precedes the encoded block in a message: its entry number
ENTRY = struct.Struct("<Q")
#: encoded blocks a rank may have in flight to other ranks
DEFAULT_WINDOW = 8
#: the longest nap while waiting for a peer (a wait starts with much shorter ones)
MAX_NAP = 0.002


@dataclass
class Traffic:
    """What one rank's writer did: blocks appended here, and blocks routed to other ranks."""

    local_blocks: int = 0
    received_blocks: int = 0
    routed_blocks: int = 0
    #: bytes handed to MPI for routed blocks: entry numbers, records and compressed payloads
    routed_bytes: int = 0
    #: the compressed payloads alone of the routed blocks
    routed_payload_bytes: int = 0
    #: the most sends this rank had in flight at once (at most the window)
    peak_in_flight: int = 0


def together(comm: Any, step: Callable[[], T]) -> T:
    """Run ``step`` on every rank; if it raises a blockfs or OS error on any, every rank raises the first."""
    result, error = None, None
    try:
        result = step()
    except (BlockfsError, OSError) as exc:
        error = exc
    first = next((e for e in comm.allgather(error) if e is not None), None)
    if first is not None:
        raise first
    return result  # type: ignore[return-value]  # no rank failed, so step() returned and result is its T


class CollectiveWriter:
    """The write path of a volume shared by the ranks of ``comm``."""

    is_owner = True  # write_block hands this rank's blocks to submit()
    shards_synced_by_owners = True  # close() fsyncs each shard on its owner rank only
    writers: list = []  # no writer processes

    def __init__(self, comm: Any, store: BlockStore, window: int = DEFAULT_WINDOW):
        from mpi4py import MPI

        self._mpi = MPI
        self.comm = comm.Dup()  # our own context: our messages never match the application's
        self.rank, self.size = self.comm.Get_rank(), self.comm.Get_size()
        self._store, self._layout = store, store.layout
        layout = store.layout
        self._durable, self._window = store.spec.durable, window
        self._payload_at = records.HEADER_SIZE if layout.records else 0
        self._ends: dict[int, int] = {}  # shard -> where its next block goes (owned shards only)
        self._appended: list[tuple[int, int, int]] = []  # (entry, payload offset, payload size)
        self._sends: list[tuple[Any, bytes]] = []  # requests in flight and the buffers they read
        self._inbox = bytearray(ENTRY.size + self._payload_at + layout.max_block_bytes)  # one message at a time
        self._done_from = 0
        self._error: str | None = None
        self._lock = threading.Lock()  # write_block may come from several threads; MPI sees one at a time
        self.traffic = Traffic()

    def owner(self, entry: int) -> int:
        """The rank that appends block ``entry`` to its shard."""
        return self._layout.shard_of(entry) % self.size

    # -- writing -----------------------------------------------------------------------------

    def submit(self, array: np.ndarray, entry: int) -> None:
        """Compress block ``entry`` here, then append it (our shard) or send it to its shard's owner."""
        data, _ = self._store.encode(entry, np.ascontiguousarray(array, dtype=self._layout.dtype))
        with self._lock:
            owner = self.owner(entry)
            if owner == self.rank:
                self._append(entry, data)
                self.traffic.local_blocks += 1
            else:
                self._send(owner, entry, data)
            self._serve()
            if self._error is not None:
                raise WriterError(f"{self._error} (rank {self.rank} of {self.size}); the other ranks learn of it "
                                  "at close()")

    def _send(self, owner: int, entry: int, data: bytes) -> None:
        buffer = ENTRY.pack(entry) + data
        self._wait(lambda: len(self._sends) < self._window)
        self._sends.append((self.comm.Issend([buffer, self._mpi.BYTE], dest=owner, tag=TAG_BLOCK), buffer))
        self.traffic.peak_in_flight = max(self.traffic.peak_in_flight, len(self._sends))
        self.traffic.routed_blocks += 1
        self.traffic.routed_bytes += len(buffer)
        self.traffic.routed_payload_bytes += len(data) - self._payload_at

    def _append(self, entry: int, data: bytes | memoryview) -> None:
        """Append an encoded block to its shard, which this rank owns; remember where it went."""
        if self._error is not None:
            return  # after a failure this rank only drains its messages, so that no sender waits
        shard = self._layout.shard_of(entry)
        path = self._store.spec.shard_paths[shard]
        fd = offset = None
        try:
            fd = self._store.shard_fd(shard)
            offset = self._ends[shard] if shard in self._ends else os.fstat(fd).st_size
            size = len(data) - self._payload_at
            pack_entry(self._layout, offset + self._payload_at, size, f"{path} (entry {entry})")  # fits, or raises
            pwrite_all(fd, data, offset)
        except (BlockfsError, OSError) as exc:
            if fd is not None and offset is not None:
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, offset)  # best effort: no torn block left at the end
            self._error = describe(exc) if describe(exc).startswith(path) else f"{path}: {describe(exc)}"
            return
        self._ends[shard] = offset + len(data)
        self._appended.append((entry, offset + self._payload_at, size))

    def _serve(self) -> bool:
        """Receive every message waiting for this rank; return whether there was any."""
        MPI, status, got = self._mpi, self._mpi.Status(), False
        while True:
            message = self.comm.Improbe(MPI.ANY_SOURCE, MPI.ANY_TAG, status)
            if message is None:
                return got
            got = True
            buffer = memoryview(self._inbox)[:status.Get_count(MPI.BYTE)]
            message.Recv([buffer, MPI.BYTE])
            if status.Get_tag() == TAG_DONE:
                self._done_from += 1
            else:
                (entry,) = ENTRY.unpack_from(buffer)
                self._append(entry, buffer[ENTRY.size:])
                self.traffic.received_blocks += 1

    def _wait(self, ready: Callable[[], bool]) -> None:
        """Serve messages and complete sends until ``ready()``; nap briefly while nothing moves.

        A peer that dies does not leave this waiting: Open MPI ends every rank of the job.
        """
        nap = 1e-5
        while True:
            pending = [(r, b) for r, b in self._sends if not r.Test()]
            moved = len(pending) < len(self._sends)
            self._sends = pending
            moved = self._serve() or moved
            if ready():
                return
            nap = 1e-5 if moved else min(nap * 2, MAX_NAP)
            time.sleep(nap)

    # -- closing -----------------------------------------------------------------------------

    def close(self) -> None:
        """Collective: deliver every block, fsync the owned shards, then rank 0 writes the index.

        Raises :class:`WriterError` on every rank if any rank failed to append.
        """
        with self._lock:
            self._wait(lambda: not self._sends)
            for peer in range(self.size):
                if peer != self.rank:
                    self._sends.append((self.comm.Issend([b"", self._mpi.BYTE], dest=peer, tag=TAG_DONE), b""))
            self._wait(lambda: not self._sends and self._done_from == self.size - 1)
            try:
                if self._durable and self._error is None:
                    self._store.sync()
            except OSError as exc:
                self._error = describe(exc)
            errors = self.comm.allgather(self._error)
            appended = self.comm.gather(np.array(self._appended, np.uint64).reshape(-1, 3), root=0)
            failure = None
            if self.rank == 0:
                try:
                    self._write_index(appended)
                except (BlockfsError, OSError) as exc:
                    failure = describe(exc)
            failure = self.comm.bcast(failure, root=0)
            self.comm.Free()
        problems = [f"rank {r}: {e}" for r, e in enumerate(errors) if e] + ([f"rank 0: {failure}"] if failure else [])
        if problems:
            raise WriterError(f"{self._store.spec.index_path}: blocks could not be written: {'; '.join(problems)}. The "
                              "blocks that were written are indexed; write the others again.")

    def _write_index(self, appended: list[np.ndarray]) -> None:
        """Rank 0: point the entries at what every owner appended, in one write, then fsync."""
        rows = np.concatenate(appended)
        if not len(rows):
            return
        entries = rows[:, 0].astype(np.int64)
        last = len(entries) - 1 - np.unique(entries[::-1], return_index=True)[1]  # an owner's last copy wins
        entries, offsets, sizes = entries[last], rows[last, 1], rows[last, 2]
        first, stop = int(entries.min()), int(entries.max()) + 1
        old_offsets, old_sizes = self._store.entries(first, stop - first)
        old_offsets[entries - first], old_sizes[entries - first] = offsets, sizes
        self._store.write_entries(first, old_offsets, old_sizes)
        if self._durable:
            os.fsync(self._store.index_fd())


def _collective(volume: WritableVolume, comm: Any, window: int) -> WritableVolume:
    """Give a writable volume the collective write path."""
    return volume.write_through(lambda store: CollectiveWriter(comm, store, window))


def create_collective(layout: Layout, path: str, comm: Any, overwrite: bool = True,
                      directory_offset: int | None = None, incomplete: str | None = None, verify: bool = True,
                      durable: bool = True, window: int = DEFAULT_WINDOW) -> WritableVolume:
    """Collective create: rank 0 makes the files (every rank raises its error, if any); then every
    rank writes the new volume through a :class:`CollectiveWriter`."""
    made = together(comm, lambda: create_from_layout(path, layout, directory_offset, overwrite, incomplete, verify,
                                                     durable) if comm.Get_rank() == 0 else None)
    spec = comm.bcast(made.store.spec if made is not None else None)
    return _collective(made if made is not None else WritableVolume(BlockStore(spec), verify), comm, window)


def open_collective(path: str, mode: str, comm: Any, verify: bool = True, durable: bool = True,
                    window: int = DEFAULT_WINDOW) -> Volume:
    """Collective open: in mode "r+" every rank then writes through a :class:`CollectiveWriter`."""
    if mode != "r+":
        return together(comm, lambda: open_volume(path, verify))
    return _collective(together(comm, lambda: open_writable(path, verify, durable)), comm, window)
