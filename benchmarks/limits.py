"""The machine's limits for these blocks, measured in the same run as everything they scale.

- compress / decompress: blosc (zstd 5, byte shuffle, typesize 2, as blockfs writes) of the same
  blocks on all cores, once with threads (one blosc thread per call, the GIL released) and once
  with a fork Pool over chunks of blocks; the better of the two is the limit;
- one block's decompress time on one core (the floor for a random ``read_block``);
- memcpy: numpy copy of 1 GiB between preallocated arrays, one thread;
- disk: the compressed bytes written with ``os.pwrite`` into two files by two threads, with and
  without fsync.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import blosc
import numpy as np

from .data import BLOCK_SHAPE, DTYPE, Dataset
from .measure import MB, median

CNAME = "zstd"
CLEVEL = 5
SHUFFLE = blosc.SHUFFLE
MEMCPY_BYTES = 2**30
DISK_FILES = 2

blosc.set_releasegil(True)
blosc.set_nthreads(1)

#: What forked pool workers read: set before the pool forks, inherited copy-on-write.
_shared: dict[str, object] = {}


def compress_block(block: np.ndarray) -> bytes:
    return blosc.compress_ptr(block.ctypes.data, block.size, typesize=block.dtype.itemsize, clevel=CLEVEL,
                              shuffle=SHUFFLE, cname=CNAME)


def chunk_ranges(count: int, parts: int) -> list[tuple[int, int]]:
    """``parts`` contiguous (lo, hi) ranges covering ``range(count)``, none empty."""
    parts = max(1, min(parts, count))
    bounds = [count * i // parts for i in range(parts + 1)]
    return [(lo, hi) for lo, hi in zip(bounds, bounds[1:]) if hi > lo]


def _compress_range(lo: int, hi: int) -> int:
    blocks = _shared["blocks"]
    return sum(len(compress_block(blocks[i])) for i in range(lo, hi))


def _decompress_range(lo: int, hi: int) -> int:
    out = _shared.get("out")
    if out is None:
        out = _shared["out"] = np.zeros(BLOCK_SHAPE, DTYPE)
    compressed = _shared["compressed"]
    for i in range(lo, hi):
        blosc.decompress_ptr(compressed[i], out.ctypes.data)
    return hi - lo


@dataclass
class Limits:
    """Samples of the limits for one data set, as MB/s of uncompressed voxels; figures are medians.

    Samples are taken at the start of the data set's section (full passes over every block) and
    again between the measurements they scale (passes over an evenly strided subset of blocks), so
    that load from other processes on the machine weighs on the limits as it does on the rest.
    """

    kind: str
    nbytes: int
    compressed_bytes: int
    workers: int
    compress_threads: list[float] = field(default_factory=list)
    compress_processes: list[float] = field(default_factory=list)
    decompress_threads: list[float] = field(default_factory=list)
    decompress_processes: list[float] = field(default_factory=list)
    block_decompress: list[float] = field(default_factory=list)  # microseconds per block, one core
    disk_seconds: list[float] = field(default_factory=list)
    disk_fsync_seconds: list[float] = field(default_factory=list)

    def rate(self, seconds: float) -> float:
        """MB/s of uncompressed voxels for writing or reading the whole data set in ``seconds``."""
        return self.nbytes / seconds / MB

    @property
    def ratio(self) -> float:
        return self.nbytes / self.compressed_bytes

    @property
    def samples(self) -> int:
        return len(self.compress_processes)

    @property
    def compress(self) -> float:
        """The compress limit: the better of threads and processes."""
        return max(median(self.compress_threads), median(self.compress_processes))

    @property
    def compress_how(self) -> str:
        return "threads" if median(self.compress_threads) >= median(self.compress_processes) else "processes"

    @property
    def decompress(self) -> float:
        return max(median(self.decompress_threads), median(self.decompress_processes))

    @property
    def decompress_how(self) -> str:
        return "threads" if median(self.decompress_threads) >= median(self.decompress_processes) else "processes"

    @property
    def block_decompress_us(self) -> float:
        return median(self.block_decompress)

    @property
    def disk(self) -> float:
        """Disk write limit without fsync, as MB/s of the uncompressed voxels those bytes hold."""
        return self.rate(median(self.disk_seconds))

    @property
    def disk_fsync(self) -> float:
        return self.rate(median(self.disk_fsync_seconds))

    @property
    def disk_raw(self) -> float:
        """MB/s of compressed bytes actually written, without fsync."""
        return self.compressed_bytes / median(self.disk_seconds) / MB

    @property
    def disk_fsync_raw(self) -> float:
        return self.compressed_bytes / median(self.disk_fsync_seconds) / MB


def _threads_compress(executor: ThreadPoolExecutor, blocks: list[np.ndarray], ranges) -> list[bytes]:
    def work(span: tuple[int, int]) -> list[bytes]:
        return [compress_block(blocks[i]) for i in range(*span)]

    out: list[bytes] = []
    for part in executor.map(work, ranges):
        out.extend(part)
    return out


def _threads_decompress(executor: ThreadPoolExecutor, compressed: list[bytes], outs: list[np.ndarray],
                        ranges) -> None:
    def work(span: tuple[int, int]) -> None:
        for i in range(*span):
            blosc.decompress_ptr(compressed[i], outs[i].ctypes.data)

    for _ in executor.map(work, ranges):
        pass


def block_decompress_us(compressed: list[bytes], samples: int = 256, passes: int = 3) -> float:
    """Median time to decompress one block on one core, in microseconds (data in cache)."""
    out = np.ones(BLOCK_SHAPE, DTYPE)
    step = max(1, len(compressed) // samples)
    chosen = compressed[::step][:samples]
    times = []
    for _ in range(passes):
        for data in chosen:
            start = time.perf_counter_ns()
            blosc.decompress_ptr(data, out.ctypes.data)
            times.append((time.perf_counter_ns() - start) / 1000)
    return median(times)


def disk_write(compressed: list[bytes], folder: str, fsync: bool) -> float:
    """Seconds to write the compressed bytes into ``DISK_FILES`` files, one thread each, then unlink."""
    paths = [os.path.join(folder, f"disk-limit-{i}.bin") for i in range(DISK_FILES)]
    for path in paths:
        if os.path.exists(path):
            os.unlink(path)

    def work(i: int) -> None:
        fd = os.open(paths[i], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            offset = 0
            for data in compressed[i::DISK_FILES]:
                view = memoryview(data)
                while view:
                    written = os.pwrite(fd, view, offset)
                    view, offset = view[written:], offset + written
            if fsync:
                os.fsync(fd)
        finally:
            os.close(fd)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(DISK_FILES)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seconds = time.perf_counter() - start
    for path in paths:
        os.unlink(path)
    return seconds


def memcpy_mbps(repeats: int, nbytes: int = MEMCPY_BYTES) -> float:
    """MB/s of one numpy copy between two preallocated, already faulted-in arrays."""
    src = np.ones(nbytes // 8, np.uint64)
    dst = np.ones_like(src)
    times = []
    for _ in range(max(repeats, 1)):
        start = time.perf_counter()
        np.copyto(dst, src)
        times.append(time.perf_counter() - start)
    del src, dst
    return nbytes / median(times) / MB


class LimitMeter:
    """Measures the limits of one data set: full passes first, then cheaper samples on request."""

    SUBSET = 256  # blocks in a later sample (128 MiB of voxels)

    def __init__(self, ds: Dataset, folder: str, workers: int | None = None):
        self.ds = ds
        self.folder = folder
        self.workers = workers or os.cpu_count() or 1
        step = max(1, len(ds.blocks) // self.SUBSET)
        self._subset = list(range(0, len(ds.blocks), step))[:self.SUBSET]
        self._subset_compressed: list[bytes] = []
        self.limits: Limits | None = None

    def _pass(self, blocks: list[np.ndarray], compressed: list[bytes] | None, what: str
              ) -> tuple[float, float, list[bytes]]:
        """(threads MB/s, processes MB/s, compressed blocks) of one pass of ``what`` over ``blocks``."""
        nbytes = sum(b.nbytes for b in blocks)
        ranges = chunk_ranges(len(blocks), self.workers * 4)
        with ThreadPoolExecutor(self.workers, thread_name_prefix="limit") as executor:
            if what == "compress":
                _threads_compress(executor, blocks, ranges[:self.workers])  # warm up
                start = time.perf_counter()
                compressed = _threads_compress(executor, blocks, ranges)
                threads = time.perf_counter() - start
            else:
                outs = [np.ones(BLOCK_SHAPE, DTYPE) for _ in blocks]  # preallocated and faulted in
                start = time.perf_counter()
                _threads_decompress(executor, compressed, outs, ranges)
                threads = time.perf_counter() - start
                if not all(np.array_equal(a, b) for a, b in zip(outs, blocks)):
                    raise AssertionError("blosc round trip changed the data")
                del outs
        _shared.update(blocks=blocks, compressed=compressed)
        try:
            with multiprocessing.get_context("fork").Pool(self.workers) as pool:
                work = _compress_range if what == "compress" else _decompress_range
                pool.starmap(work, ranges[:self.workers])  # warm up
                start = time.perf_counter()
                pool.starmap(work, ranges)
                processes = time.perf_counter() - start
        finally:
            _shared.clear()
        return nbytes / threads / MB, nbytes / processes / MB, compressed

    def measure(self, repeats: int) -> Limits:
        """Full passes over every block: ``repeats`` of each limit."""
        blocks = self.ds.blocks
        lim = Limits(self.ds.kind, self.ds.nbytes, 0, self.workers)
        compressed: list[bytes] = []
        for _ in range(repeats):
            t, p, compressed = self._pass(blocks, None, "compress")
            lim.compress_threads.append(t)
            lim.compress_processes.append(p)
        lim.compressed_bytes = sum(len(c) for c in compressed)
        for _ in range(repeats):
            t, p, _ = self._pass(blocks, compressed, "decompress")
            lim.decompress_threads.append(t)
            lim.decompress_processes.append(p)
        lim.block_decompress.append(block_decompress_us(compressed))
        for _ in range(repeats):
            lim.disk_seconds.append(disk_write(compressed, self.folder, fsync=False))
            lim.disk_fsync_seconds.append(disk_write(compressed, self.folder, fsync=True))
        self._subset_compressed = [compressed[i] for i in self._subset]
        self.limits = lim
        return lim

    def sample_compress(self) -> None:
        """One more compress sample (threads and processes) on the subset of blocks."""
        t, p, _ = self._pass([self.ds.blocks[i] for i in self._subset], None, "compress")
        self.limits.compress_threads.append(t)
        self.limits.compress_processes.append(p)

    def sample_decompress(self) -> None:
        """One more decompress sample (all cores, and one block on one core) on the subset."""
        t, p, _ = self._pass([self.ds.blocks[i] for i in self._subset], self._subset_compressed, "decompress")
        self.limits.decompress_threads.append(t)
        self.limits.decompress_processes.append(p)
        self.limits.block_decompress.append(block_decompress_us(self._subset_compressed))
