"""The machine's limits for these blocks, measured the way the fastest peer works.

One thread per core pulls the next block from a shared counter (one block per task, no batching,
nothing else in the loop) and calls c-blosc's context API with one internal thread and the GIL
released, on every block of the data set, with the meter's codec (byte shuffle, typesize 2, as
every store here writes):

- compress: into new bytes, nothing else;
- compress + append: each thread appends its compressed blocks with ``os.pwrite`` to its own
  file in the benchmark's folder (page cache, no fsync), what a write without sync must do;
- decompress + place: decompress each block into the thread's scratch block and copy it into a
  new (z, y, x) array, what a full read returns (the issue's "decompress + place" limit);
- pread + decompress + place: the same, each block's bytes first read with ``os.preadv`` at its
  known offset in those files (page cache) into the thread's scratch buffer;
- decompress only: into one preallocated array per block (no placing; shown for reference);
- one block's decompress time on one core (the floor for a random ``read_block``);
- disk: the compressed bytes written with ``os.pwrite`` into two files by two threads, with and
  without fsync.

Each limit is measured once per round of the side-by-side comparison, interleaved with the stores
it scales, so load from other processes weighs on it as on them. A store that beats a limit shows
that the limit is wrong, and the report says so.
"""

from __future__ import annotations

import itertools
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import imagecodecs
import numpy as np

from .codec import ZSTD_5, Codec
from .data import BLOCK, BLOCK_SHAPE, DTYPE, Dataset
from .measure import MB, Figure

DISK_FILES = 2
MEMCPY_BYTES = 2**30


def compress_block(block: np.ndarray, codec: Codec = ZSTD_5) -> bytes:
    return imagecodecs.blosc_encode(block, codec.clevel, compressor=codec.cname, typesize=block.dtype.itemsize,
                                    shuffle=imagecodecs.BLOSC.SHUFFLE.SHUFFLE, numthreads=1)


def decompress_block(data: bytes | memoryview, out: np.ndarray) -> None:
    imagecodecs.blosc_decode(data, numthreads=1, out=memoryview(out).cast("B"))


def pwrite_all(fd: int, data: bytes, offset: int) -> int:
    """Write all of ``data`` at ``offset``; the offset just past it."""
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view, offset = view[written:], offset + written
    return offset


def pread_into(fd: int, view: memoryview, offset: int) -> None:
    """Fill ``view`` with the bytes of ``fd`` at ``offset``."""
    done = 0
    while done < len(view):
        n = os.preadv(fd, [view[done:]], offset + done)
        if n == 0:
            raise EOFError(f"fd {fd}: {len(view)} bytes at offset {offset} reach past the end of the file.")
        done += n


def on_all_cores(count: int, work: Callable[[int], None], workers: int) -> float:
    """Seconds for ``workers`` threads to run ``work(i)`` for every i in range(count), one i at a time."""
    counter = itertools.count()
    failures: list[BaseException] = []

    def run() -> None:
        try:
            for i in iter(counter.__next__, None):
                if i >= count:
                    return
                work(i)
        except BaseException as exc:  # re-raised in the caller
            failures.append(exc)

    threads = [threading.Thread(target=run, name=f"limit-{k}") for k in range(workers)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seconds = time.perf_counter() - start
    if failures:
        raise failures[0]
    return seconds


@dataclass
class Limits:
    """Samples (seconds for the whole data set) of the limits of one data set."""

    kind: str
    nbytes: int
    workers: int
    codec: Codec = ZSTD_5
    compressed_bytes: int = 0
    compress: Figure = field(default_factory=Figure)
    compress_append: Figure = field(default_factory=Figure)
    decompress: Figure = field(default_factory=Figure)
    place: Figure = field(default_factory=Figure)
    pread_place: Figure = field(default_factory=Figure)
    block_decompress: list[float] = field(default_factory=list)  # microseconds per block, one core
    disk_seconds: float = 0.0
    disk_fsync_seconds: float = 0.0

    def rate(self, seconds: float) -> float:
        return self.nbytes / seconds / MB

    @property
    def ratio(self) -> float:
        return self.nbytes / self.compressed_bytes

    @property
    def block_decompress_us(self) -> float:
        return float(np.median(self.block_decompress))

    @property
    def disk(self) -> float:
        """Disk write limit without fsync, as MB/s of the voxels those bytes hold."""
        return self.rate(self.disk_seconds)

    @property
    def disk_fsync(self) -> float:
        return self.rate(self.disk_fsync_seconds)


class LimitMeter:
    """Measures the limits of one data set with one codec; each ``sample_*`` call adds one sample."""

    def __init__(self, ds: Dataset, folder: str, workers: int | None = None, codec: Codec = ZSTD_5):
        self.ds = ds
        self.folder = folder
        self.codec = codec
        self.workers = workers or os.cpu_count() or 1
        self.compressed = [compress_block(b, codec) for b in ds.blocks[:self.workers]]  # warm up
        self.compressed = self._compress()[1]
        self.limits = Limits(ds.kind, ds.nbytes, self.workers, codec, sum(len(c) for c in self.compressed))
        self._outs = [np.ones(BLOCK_SHAPE, DTYPE) for _ in ds.blocks]  # preallocated and faulted in
        self._files = [os.path.join(folder, f"limit-append-{ds.kind}-{ds.nbytes}-{codec.cname}-{codec.clevel}-{k}.bin")
                       for k in range(self.workers)]
        self._appended: list[tuple[int, int, int]] = []  # (file, offset, size) of each block, once appended

    def _compress(self) -> tuple[float, list[bytes]]:
        blocks, codec = self.ds.blocks, self.codec
        out: list[bytes] = [b""] * len(blocks)

        def work(i: int) -> None:
            out[i] = compress_block(blocks[i], codec)

        return on_all_cores(len(blocks), work, self.workers), out

    def sample_compress(self) -> float:
        seconds = self._compress()[0]
        self.limits.compress.add(seconds)
        return seconds

    def _compress_append(self) -> float:
        """Seconds to compress every block and append it to the calling thread's own file (no fsync)."""
        blocks, codec, local = self.ds.blocks, self.codec, threading.local()
        fds = [os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644) for path in self._files]
        files, ends = itertools.count(), [0] * len(fds)
        appended = [(0, 0, 0)] * len(blocks)

        def work(i: int) -> None:
            k = getattr(local, "file", None)
            if k is None:
                k = local.file = next(files)
            data = compress_block(blocks[i], codec)
            appended[i] = (k, ends[k], len(data))
            ends[k] = pwrite_all(fds[k], data, ends[k])

        try:
            seconds = on_all_cores(len(blocks), work, self.workers)
        finally:
            for fd in fds:
                os.close(fd)
        self._appended = appended
        return seconds

    def sample_compress_append(self) -> float:
        seconds = self._compress_append()
        self.limits.compress_append.add(seconds)
        return seconds

    def sample_decompress(self) -> float:
        compressed, outs = self.compressed, self._outs
        seconds = on_all_cores(len(compressed), lambda i: decompress_block(compressed[i], outs[i]), self.workers)
        self.limits.decompress.add(seconds)
        return seconds

    def _place(self, payload: Callable[[int], bytes | memoryview], figure: Figure) -> float:
        """Seconds to decompress every block (its bytes from ``payload(i)``) and place it into a new
        (z, y, x) array, which the first sample of ``figure`` checks against the data."""
        origins, local = self.ds.origins, threading.local()
        holder: list[np.ndarray] = []

        def work(i: int) -> None:
            scratch = getattr(local, "block", None)
            if scratch is None:
                scratch = local.block = np.empty(BLOCK_SHAPE, DTYPE)
            decompress_block(payload(i), scratch)
            z, y, x = origins[i]
            holder[0][z:z + BLOCK, y:y + BLOCK, x:x + BLOCK] = scratch

        start = time.perf_counter()
        holder.append(np.empty(self.ds.shape, DTYPE))
        on_all_cores(len(origins), work, self.workers)
        seconds = time.perf_counter() - start
        if not figure.samples and not self.ds.matches(holder[0]):
            raise AssertionError(f"blosc {self.codec.label}: the round trip changed the data")
        figure.add(seconds)
        return seconds

    def sample_place(self) -> float:
        """Decompress + place from the compressed bytes in memory."""
        return self._place(self.compressed.__getitem__, self.limits.place)

    def sample_pread_place(self) -> float:
        """pread + decompress + place from the files of the last compress + append (appended untimed if none)."""
        if not self._appended:
            self._compress_append()
        appended, local = self._appended, threading.local()
        largest = max(size for _, _, size in appended)
        fds = [os.open(path, os.O_RDONLY) for path in self._files]

        def payload(i: int) -> memoryview:
            buffer = getattr(local, "buffer", None)
            if buffer is None:
                buffer = local.buffer = memoryview(bytearray(largest))
            k, offset, size = appended[i]
            pread_into(fds[k], buffer[:size], offset)
            return buffer[:size]

        try:
            return self._place(payload, self.limits.pread_place)
        finally:
            for fd in fds:
                os.close(fd)

    def sample_block_decompress(self, samples: int = 256) -> None:
        """One core, one block at a time: median microseconds over an evenly strided subset."""
        out = np.ones(BLOCK_SHAPE, DTYPE)
        step = max(1, len(self.compressed) // samples)
        times = []
        for data in self.compressed[::step][:samples]:
            start = time.perf_counter_ns()
            decompress_block(data, out)
            times.append((time.perf_counter_ns() - start) / 1000)
        self.limits.block_decompress.append(float(np.median(times)))

    def measure_disk(self) -> None:
        self.limits.disk_seconds = disk_write(self.compressed, self.folder, fsync=False)
        self.limits.disk_fsync_seconds = disk_write(self.compressed, self.folder, fsync=True)

    def remove_files(self) -> None:
        """Unlink the files of the compress + append limit."""
        for path in self._files:
            if os.path.exists(path):
                os.unlink(path)
        self._appended = []


def disk_write(compressed: list[bytes], folder: str, fsync: bool) -> float:
    """Seconds to write the compressed bytes into ``DISK_FILES`` files, one thread each, then unlink."""
    paths = [os.path.join(folder, f"disk-limit-{i}.bin") for i in range(DISK_FILES)]

    def work(i: int) -> None:
        fd = os.open(paths[i], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            offset = 0
            for data in compressed[i::DISK_FILES]:
                offset = pwrite_all(fd, data, offset)
            if fsync:
                os.fsync(fd)
        finally:
            os.close(fd)

    os.sync()
    seconds = on_all_cores(DISK_FILES, work, DISK_FILES)
    for path in paths:
        os.unlink(path)
    return seconds


def memcpy_mbps(repeats: int, nbytes: int = MEMCPY_BYTES) -> float:
    """MB/s of one numpy copy between two preallocated, already faulted-in arrays (best of ``repeats``)."""
    src = np.ones(nbytes // 8, np.uint64)
    dst = np.ones_like(src)
    times = []
    for _ in range(max(repeats, 1)):
        start = time.perf_counter()
        np.copyto(dst, src)
        times.append(time.perf_counter() - start)
    del src, dst
    return nbytes / min(times) / MB
