"""The block store of one volume: its index entries and the stored bytes of its blocks.

A :class:`StoreSpec` is a small, frozen, picklable description of a volume's files; every process,
thread pool, MPI rank or worker that needs the volume builds a :class:`BlockStore` from it, which
opens its own file descriptors on demand (see :mod:`blockfs.storage`).
"""

from __future__ import annotations

import dataclasses
import threading
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple, TypeVar

import numpy as np

from . import marks, records
from .codec import check_sizes, compress_into, decompress_into
from .errors import CorruptBlockError, MissingShardError, ReadOnlyError, ShardLocationWarning
from .format import DirectoryFile, Layout, pack_entries, pack_entry, read_directory_file, unpack_entries, unpack_entry
from .remote import Prefetch, RemoteFiles, is_url, read_header, shard_urls
from .storage import VolumeFiles, pwrite_all, resolve_shard_path, shadowing_copy

T = TypeVar("T")
#: Each thread's buffer for encoding the blocks it stores.
_encoding = threading.local()


def record_bytes(layout: Layout) -> int:
    """The bytes of the record before each block's payload (0 for a volume without records)."""
    return records.HEADER_SIZE if layout.records else 0


def encoded_bytes(layout: Layout) -> int:
    """Room for the largest encoded block: its record and its compressed bytes."""
    return record_bytes(layout) + layout.max_block_bytes


def encode_into(layout: Layout, entry: int, block: np.ndarray, buffer: memoryview) -> tuple[memoryview, int]:
    """Compress a C-contiguous block into ``buffer`` (of :func:`encoded_bytes`) behind room for its record,
    and write the record: (the part of ``buffer`` to append, the payload's offset within it)."""
    payload_at = record_bytes(layout)
    payload = compress_into(block, layout.compression, layout.compression_level, buffer[payload_at:])
    if payload_at:
        buffer[:payload_at] = records.encode(entry, payload)
    return buffer[:payload_at + len(payload)], payload_at


class StoredBlock(NamedTuple):
    """Where a stored block is, as error messages name it (the volume, the block's first voxel, the
    shard and offset); formatted only when one is raised."""

    shard_path: str
    offset: int
    size: int
    entry: int
    index_path: str
    layout: Layout

    def __str__(self) -> str:
        origin = _origin(self.layout, self.entry)
        block = "" if origin is None else " (x={}, y={}, z={})".format(*origin)
        return (f"{self.index_path}: block{block} in {self.shard_path} at offset {self.offset}, size {self.size} "
                f"(entry {self.entry})")


def _origin(layout: Layout, entry: int) -> tuple[int, int, int] | None:
    """First voxel (x, y, z) of the block whose entry is ``entry``; None if no block has it.

    Entries number the blocks in mixed radix, so dividing by the strides, the largest first, gives
    the block's coordinates (an axis of one block contributes nothing, whatever its stride).
    """
    counts = tuple(reversed(layout.grid))
    strides = (layout.x_stride, layout.y_stride, layout.z_stride)
    coords, rest = [0, 0, 0], entry
    for stride, axis in sorted(((s, a) for a, s in enumerate(strides) if counts[a] > 1), reverse=True):
        coords[axis], rest = divmod(rest, stride)
    if rest or any(c >= n for c, n in zip(coords, counts)):
        return None
    return coords[0] * layout.x_block_size, coords[1] * layout.y_block_size, coords[2] * layout.z_block_size


@dataclass(frozen=True)
class StoreSpec:
    """Where a volume's files are and how its index is laid out."""

    index_path: str
    shard_paths: tuple[str, ...]
    layout: Layout
    directory_offset: int
    writable: bool = False
    durable: bool = True
    #: The places looked at for each shard, named when one is missing.
    looked_at: tuple[tuple[str, ...], ...] = ()
    #: (st_dev, st_ino) of the index file the layout was read from; a replaced index is then detected.
    index_identity: tuple[int, int] | None = None
    #: A volume read by URL (see :mod:`blockfs.remote`): its index's ETag when opened, and the index's size.
    index_version: str | None = None
    index_size: int = 0

    @property
    def remote(self) -> bool:
        """Whether the volume's files are at URLs."""
        return is_url(self.index_path)

    def read_only(self) -> StoreSpec:
        """This spec with ``writable`` off."""
        return dataclasses.replace(self, writable=False)


#: Entries this close together are read from the index in one call (bytes read past beat a second call).
RUN_GAP = 64


def spec_for(path: str, layout: Layout, directory_offset: int, writable: bool = False, durable: bool = True,
             identity: tuple[int, int] | None = None, resolve: bool = True, warn_depth: int = 3) -> StoreSpec:
    """The spec of the volume whose index at ``path`` has this layout.

    With ``resolve``, each shard is looked for where its stored name says, then beside the index
    (a moved volume), with a :class:`ShardLocationWarning` when the fallback is taken or when a
    copy's own shard sits beside it while the stored name leads elsewhere; without, the stored
    names are the paths (a volume being created).
    """
    if not resolve:
        return StoreSpec(path, layout.block_filenames, layout, directory_offset, writable, durable,
                         tuple((name,) for name in layout.block_filenames), identity)
    resolved = [resolve_shard_path(path, name) for name in layout.block_filenames]
    for name, shard in zip(layout.block_filenames, resolved):
        if shard.fallback:
            warnings.warn(f"{path}: shard {name!r} not found; using {shard.path} beside the directory file "
                          "(run blockfs-rebase to record the new location)", ShardLocationWarning,
                          stacklevel=warn_depth)
        else:
            copy = shadowing_copy(path, name, shard.path)
            if copy is not None:
                warnings.warn(f"{path}: shard {name!r} lies outside this volume's folder, though {copy} sits beside "
                              "it; if the volume was copied (cp -r), it is using the original's shards. Run "
                              f"blockfs-rebase {path} to use its own.", ShardLocationWarning, stacklevel=warn_depth)
    return StoreSpec(path, tuple(s.path for s in resolved), layout, directory_offset, writable, durable,
                     tuple(tuple(s.looked_at) for s in resolved), identity)


def resolve_spec(path: str, writable: bool = False, durable: bool = True, warn_depth: int = 2) -> StoreSpec:
    """The spec of the volume at ``path``, from its header, with its shards found (see :func:`spec_for`).

    A URL's shards are its stored file names beside it (see :func:`blockfs.remote.shard_urls`).
    """
    if is_url(path):
        if writable:
            raise ReadOnlyError(f"{path}: a volume read by URL is read-only; copy it to a disk to change it.")
        return url_spec(*read_header(path))
    header = read_directory_file(path)
    return spec_for(path, header.layout, header.directory_offset, writable, durable, header.identity,
                    warn_depth=warn_depth + 1)


def url_spec(header: DirectoryFile, version: str | None) -> StoreSpec:
    """The read-only spec of a volume at a URL, from its header and the index's ETag (``version``)."""
    urls = shard_urls(header.path, header.names)
    return StoreSpec(header.path, urls, header.layout, header.directory_offset, looked_at=tuple((u,) for u in urls),
                     index_version=version, index_size=header.file_size)


class BlockStore:
    """Entry lookup, stored-byte reads, block loads and appends for one volume, in this process."""

    def __init__(self, spec: StoreSpec):
        self.spec = spec
        self.layout = spec.layout
        self._files: VolumeFiles | RemoteFiles = (
            RemoteFiles(spec.index_path, spec.shard_paths, spec.index_version, spec.index_size) if spec.remote
            else VolumeFiles(spec.index_path, list(spec.shard_paths), spec.writable, spec.index_identity,
                             write_back=spec.writable and spec.durable))

    def __reduce__(self) -> tuple[type[BlockStore], tuple[StoreSpec]]:
        return BlockStore, (self.spec,)

    # -- the index -------------------------------------------------------------------------------

    def entry(self, entry: int) -> tuple[int, int]:
        """(offset, size) of one entry; (0, 0) when it lies past the end of the index file."""
        lay = self.layout
        return unpack_entry(self._files.read_index(lay.entry_position(entry, self.spec.directory_offset),
                                                   lay.entry_size), lay)

    def entries(self, first: int, count: int) -> tuple[np.ndarray, np.ndarray]:
        """(offsets, sizes) of ``count`` consecutive entries from entry ``first``, read in one call."""
        lay = self.layout
        raw = self._files.read_index(lay.entry_position(first, self.spec.directory_offset), count * lay.entry_size)
        return unpack_entries(raw, lay)

    def lookup(self, entries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(offsets, sizes) of the given entries (any order), reading only the runs of the index they lie in.

        Entries closer than :data:`RUN_GAP` entries apart are read in one call, so a region read
        costs a few calls, and a column ``v[:, y, x]`` reads its own entries, not the whole index.
        """
        wanted = np.asarray(entries, np.int64).ravel()
        offsets = np.zeros(wanted.size, np.uint64)
        sizes = np.zeros(wanted.size, np.uint64)
        if not wanted.size:
            return offsets, sizes
        order = np.argsort(wanted, kind="stable")
        ordered = wanted[order]
        breaks = np.flatnonzero(np.diff(ordered) > RUN_GAP) + 1
        runs = np.split(np.arange(ordered.size), breaks)
        lay, at = self.layout, self.spec.directory_offset
        self._files.preload_index([(lay.entry_position(int(ordered[run[0]]), at),
                                    (int(ordered[run[-1]]) - int(ordered[run[0]]) + 1) * lay.entry_size)
                                   for run in runs])
        for run in runs:
            first, last = int(ordered[run[0]]), int(ordered[run[-1]])
            run_offsets, run_sizes = self.entries(first, last - first + 1)
            offsets[order[run]] = run_offsets[ordered[run] - first]
            sizes[order[run]] = run_sizes[ordered[run] - first]
        return offsets, sizes

    def write_entries(self, first: int, offsets: np.ndarray, sizes: np.ndarray) -> None:
        """Overwrite consecutive entries from entry ``first``."""
        pwrite_all(self._files.index_fd(), pack_entries(offsets, sizes, self.layout),
                   self.layout.entry_position(first, self.spec.directory_offset))

    def unsaved_blocks(self) -> list[tuple[int, int, int]]:
        """First voxels (x, y, z) of the blocks repair recorded as lost that are still unwritten."""
        lay = self.layout
        recorded = marks.lost_blocks(lay.marks.get(marks.LOST_KEY))
        inside = [b for b in recorded if all(c < n and c % s == 0 for c, n, s in
                                             zip(b, (lay.x_extent, lay.y_extent, lay.z_extent),
                                                 (lay.x_block_size, lay.y_block_size, lay.z_block_size)))]
        return [b for b in inside if not self.entry(lay.entry_index(*b))[1]]

    # -- reading blocks --------------------------------------------------------------------------

    def _where(self, entry: int, offset: int, size: int) -> StoredBlock:
        return StoredBlock(self.spec.shard_paths[self.layout.shard_of(entry)], offset, size, entry,
                           self.spec.index_path, self.layout)

    def _span(self, offset: int, size: int, verify: bool) -> tuple[int, int]:
        """(where in its shard, how many bytes) :meth:`read_stored` reads for an entry (offset, size): with
        ``verify`` on a volume with records, the record before the payload too."""
        head = records.HEADER_SIZE if self.layout.records and verify and offset >= records.HEADER_SIZE else 0
        return offset - head, size + head

    def prefetch(self, entries: np.ndarray, offsets: np.ndarray, sizes: np.ndarray, verify: bool
                 ) -> Prefetch | None:
        """For a volume read by URL, the stored bytes of these blocks (in the order they will be read), fetched
        ahead in merged requests (see :class:`blockfs.remote.Prefetch`); None for files on a disk, read as needed."""
        if not isinstance(self._files, RemoteFiles):
            return None
        lay = self.layout
        wanted = [(lay.shard_of(int(e)), *self._span(int(o), int(s), verify))
                  for e, o, s in zip(entries, offsets, sizes) if s]
        return Prefetch(self._files, wanted)

    def read_stored(self, entry: int, offset: int, size: int, nbytes: int, verify: bool,
                    fetched: Prefetch | None = None) -> tuple[memoryview, bool]:
        """(the stored, compressed bytes an entry (offset, size) points at, whether a record vouched for them).

        The view lies in this thread's reusable buffer: use it before this thread's next read. With
        ``verify`` on a volume with records, a record before the payload must name this entry and
        length and its CRC32C must match, else :class:`ChecksumError`. Where no record starts there
        (a block written by a writer without records, such as an earlier release), the payload's
        blosc header must instead say ``size`` bytes decompressing to ``nbytes``, else
        :class:`CorruptBlockError`. A missing shard raises :class:`MissingShardError`. ``fetched`` may hold
        the bytes already (see :meth:`prefetch`).
        """
        lay = self.layout
        where = self._where(entry, offset, size)
        if size > lay.max_block_bytes:
            raise CorruptBlockError(f"{where}: {size} bytes is more than a block can compress to "
                                    f"({lay.max_block_bytes}); the index is damaged.")
        start, length = self._span(offset, size, verify)
        head = offset - start
        shard = lay.shard_of(entry)
        try:
            data = None if fetched is None else fetched.take(shard, start, length)
            if data is None:
                data = self._files.read_shard(shard, start, length)
        except FileNotFoundError:
            raise self.missing_shard(entry) from None
        if len(data) < size + head:
            raise CorruptBlockError(f"{where} points past the end of the shard ({offset - head + len(data)} bytes); "
                                    "the shard is truncated or the index is damaged (run blockfs check).")
        if head and records.starts_record(data):
            return records.verify(data, entry, size, where), True
        payload = data[head:]
        if lay.records and verify:
            check_sizes(payload, nbytes, f"{where}, written without a block record")
        return payload, False

    def with_retry(self, entry: int, where: tuple[int, int], read: Callable[[int, int], T]) -> T | None:
        """``read(offset, size)`` of an entry's block; None if it was never written.

        A writer may repoint the entry between reading it and reading the block: a block that fails
        its checks is retried once with the entry as it is now. A volume read by URL fetches its index
        page anew for that, so one rewritten on the server raises :class:`StaleVolumeError`.
        """
        offset, size = where
        if not size:
            return None
        try:
            return read(offset, size)
        except CorruptBlockError:
            self._files.revalidate()
            now = self.entry(entry)
            if now == (offset, size) or not now[1]:
                raise
            return read(*now)

    def payload(self, entry: int, nbytes: int, verify: bool, where: tuple[int, int] | None = None
                ) -> tuple[tuple[int, int], bytes | None]:
        """(the entry's (offset, size), the stored bytes of block ``entry`` (``nbytes`` uncompressed) read there).

        ``where`` is the entry as the caller already read it; without, it is read here, once. The
        pair returned is the one the bytes came from, also after :meth:`with_retry` retried at a
        repointed entry; the bytes are None for a block never written.
        """
        used = self.entry(entry) if where is None else where

        def read(offset: int, size: int) -> bytes:
            nonlocal used
            used = (offset, size)
            return bytes(self.read_stored(entry, offset, size, nbytes, verify)[0])
        data = self.with_retry(entry, used, read)
        return used, data

    def load(self, entry: int, offset: int, size: int, out: np.ndarray, verify: bool,
             fetched: Prefetch | None = None, decode: bool = True) -> bool:
        """Decompress the block an entry (offset, size) points at into the C-contiguous ``out``.

        Returns whether a record vouched for the block; see :meth:`read_stored` for ``verify`` and
        ``fetched``. The entry is read again and the block retried once if its checksum fails meanwhile.
        Without ``decode``, a block its record vouches for is only checked (its CRC32C, and its blosc
        header's sizes against the entry and ``out``), not decompressed: what ``blockfs check`` does.
        """
        def read(o: int, s: int) -> bool:
            payload, recorded = self.read_stored(entry, o, s, out.nbytes, verify, fetched)
            if recorded and not decode:
                check_sizes(payload, out.nbytes, f"{self._where(entry, o, s)} (shape {out.shape}, {out.dtype})")
            else:
                decompress_into(payload, out, self._where(entry, o, s))
            return recorded
        return bool(self.with_retry(entry, (offset, size), read))

    # -- writing blocks --------------------------------------------------------------------------

    def encode(self, entry: int, block: np.ndarray) -> tuple[bytes, int]:
        """(the bytes to append for a C-contiguous block, the payload's offset within them)."""
        data, payload_at = encode_into(self.layout, entry, block, memoryview(bytearray(encoded_bytes(self.layout))))
        return bytes(data), payload_at

    def append(self, entry: int, data: bytes | memoryview, payload_at: int) -> None:
        """Append encoded block bytes to the block's shard under its lock, then point the entry at the payload.

        A write that fails part way is rolled back: the shard cut back, the old entry restored.
        """
        lay = self.layout
        shard = lay.shard_of(entry)
        where = f"{self.spec.shard_paths[shard]} (entry {entry})"
        try:
            self._files.append(shard, data, lay.entry_position(entry, self.spec.directory_offset),
                               lambda offset: pack_entry(lay, offset + payload_at, len(data) - payload_at, where))
        except FileNotFoundError as exc:
            if exc.filename == self.spec.index_path:
                raise
            raise self.missing_shard(entry) from None

    def store(self, entry: int, block: np.ndarray) -> None:
        """Compress a C-contiguous block and append it (after its record) to its shard, then index it.

        The block is encoded in this thread's buffer, used again for every block: no allocation, no copy."""
        buffer = getattr(_encoding, "buffer", None)
        if buffer is None or len(buffer) < encoded_bytes(self.layout):
            buffer = _encoding.buffer = memoryview(bytearray(encoded_bytes(self.layout)))
        self.append(entry, *encode_into(self.layout, entry, block, buffer))

    def missing_shard(self, entry: int) -> MissingShardError:
        """The error for a shard of ``entry`` that cannot be found, naming where it was looked for."""
        shard = self.layout.shard_of(entry)
        looked = self.spec.looked_at[shard] if self.spec.looked_at else (self.spec.shard_paths[shard],)
        return MissingShardError(
            f"{self.spec.index_path}: shard {self.layout.block_filenames[shard]!r} of entry {entry} is missing "
            f"(looked at {', '.join(looked)}); restore it beside the directory file or run blockfs-rebase.")

    # -- lifetime ----------------------------------------------------------------------------------

    def shard_fd(self, shard: int) -> int:
        """This process's descriptor of a shard file (for callers that append on their own, such as MPI ranks)."""
        return self._files.shard_fd(shard)

    def index_fd(self) -> int:
        """This process's descriptor of the index file (for a writable store, holding its shared lock)."""
        return self._files.index_fd()

    def adopt_index(self, fd: int) -> None:
        """Use ``fd``, a new index file its creator has locked, as this process's index descriptor."""
        self._files.adopt_index(fd)
        self.spec = dataclasses.replace(self.spec, index_identity=self._files.identity)

    def sync(self, every: bool = False) -> None:
        """fsync the shards, then the index, that this process has open (with ``every``: all of them)."""
        self._files.sync(every)

    def close(self) -> None:
        """Close this process's descriptors (they reopen on the next use)."""
        self._files.close()
