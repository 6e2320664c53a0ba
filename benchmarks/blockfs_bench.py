"""blockfs on the benchmark data: the write matrix, the reads, and the memory of both.

Writes go through the ways the README shows:

- ``main``: the process that called ``start_writer_processes()`` calls ``write_block`` (from 1, 2
  or 4 producer threads); blocks are handed to the writer processes (one per shard, whichever is
  free takes the next block);
- ``pool``: a fork ``multiprocessing.Pool`` of N producers calls ``write_block`` on a module-level
  Directory (after ``start_writer_processes()``, as in the README); each producer compresses and
  appends its blocks itself;
- ``forkserver``: the same with a forkserver Pool, which receives the Directory through its
  initializer (it pickles by reopening the volume) and reads the blocks from a memory-mapped
  ``.npy`` file, as forkserver children inherit no memory;
- ``processes``: N unrelated processes, each ``Directory.open(path, "r+")``, write every Nth
  block from that ``.npy`` file; the clock starts once all of them have opened the volume.

Each timed write runs from ``start_writer_processes()`` (``processes``: from the start signal) to
the end of the owner's ``close()``. The volume is created (empty) before the clock starts and is
``durable=False`` unless the row says otherwise.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from blockfs import Directory

from .codec import ZSTD_5, Codec
from .data import BLOCK, BLOCK_BYTES, DTYPE, Dataset
from .measure import MB, Figure, PeakRss, median, percentile, settle

QUEUE_DEPTH = 10
REGION = 100
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: The Directory and blocks that forked producers use: set before the Pool forks.
_state: dict[str, object] = {}


MODES = {"main": "main process", "pool": "fork Pool", "forkserver": "forkserver Pool",
         "processes": "independent processes"}


@dataclass(frozen=True)
class WriteConfig:
    mode: str  # a key of MODES
    producers: int
    shards: int
    durable: bool = False
    codec: Codec = ZSTD_5

    @property
    def label(self) -> str:
        return f"{MODES[self.mode]}, {self.producers} producer{'s' if self.producers > 1 else ''}, " \
               f"{self.shards} shard{'s' if self.shards > 1 else ''}{', durable' if self.durable else ''}"


@dataclass
class WriteResult:
    kind: str
    nbytes: int
    config: WriteConfig
    seconds: list[float] = field(default_factory=list)
    owner_growth: int = 0
    writer_growth: int = 0
    producer_growth: int = 0
    on_disk: int = 0
    files: int = 0

    @property
    def figure(self) -> Figure:
        return Figure(self.seconds)

    @property
    def mbps(self) -> float:
        """MB/s at the fastest repeat."""
        return self.nbytes / min(self.seconds) / MB

    memory_bound: int = 0  # bytes the owner may hold for blocks in flight (main process only)


def matrix(quick: bool, kind: str) -> list[WriteConfig]:
    """The write configurations to run for one data kind (the side-by-side comparison has the README's)."""
    cores = os.cpu_count() or 1
    if quick or kind == "random":
        return [WriteConfig("main", 1, 1), WriteConfig("main", 2, 2), WriteConfig("pool", 2, 1)]
    return [WriteConfig(mode, producers, shards) for mode, producers in (("main", 1), ("pool", 2))
            for shards in (1, 2, 4)] + [WriteConfig("main", 2, cores), WriteConfig("pool", 4, cores)] + \
        [WriteConfig(mode, cores, cores) for mode in ("forkserver", "processes")]


def new_volume(ds: Dataset, path: str, shards: int, durable: bool, codec: Codec = ZSTD_5) -> Directory:
    z, y, x = ds.shape
    d = Directory(x, y, z, DTYPE, path, n_filenames=shards, compression=codec.cname, compression_level=codec.clevel,
                  durable=durable)
    d.create(overwrite=True)
    return d


def volume_files(path: str, shards: int) -> list[str]:
    return [path] + [f"{path}.{i}" for i in range(shards)]


def remove_volume(path: str, shards: int) -> None:
    for name in volume_files(path, shards):
        if os.path.exists(name):
            os.unlink(name)


def _pool_write(i: int, x: int, y: int, z: int) -> None:
    _state["volume"].write_block(_state["blocks"][i], x, y, z)


def _attach(volume: Directory, blocks_file: str) -> None:
    """Pool initializer of a forkserver producer: the Directory (reopened by pickling) and the blocks."""
    _state.update(volume=volume, blocks=np.load(blocks_file, mmap_mode="r"))


def _producer_pid(_: int) -> int:
    time.sleep(0.01)
    return os.getpid()


def _start_forkserver_pool(d: Directory, ds: Dataset, config: WriteConfig, folder: str) -> Any:
    """A forkserver Pool whose every worker has received the Directory and mapped the blocks."""
    pool = multiprocessing.get_context("forkserver").Pool(config.producers, initializer=_attach,
                                                          initargs=(d, ds.blocks_file(folder)))
    seen: set[int] = set()
    while len(seen) < config.producers:  # each worker has imported, attached and answered
        seen.update(pool.map(_producer_pid, range(4 * config.producers), chunksize=1))
    return pool


def fork_pool_alone(processes: int) -> float:
    """Seconds to fork a Pool from this process, run one trivial task per worker and end it: what
    the fork Pool write path pays before and after its blocks, growing with this process's memory."""
    start = time.perf_counter()
    with multiprocessing.get_context("fork").Pool(processes) as pool:
        pool.map(abs, range(processes), chunksize=1)
    return time.perf_counter() - start


def _write_from_pool(d: Directory, ds: Dataset, producers: int, pool: Any, sampler: PeakRss) -> None:
    """The README pattern: a fork Pool of ``producers`` (``pool`` None) or the given Pool calls ``write_block``."""
    writers = {w.process.pid for w in d.writers}
    args = [(i, x, y, z) for i, (z, y, x) in enumerate(ds.origins)]
    if pool is None:
        _state.update(volume=d, blocks=ds.blocks)
        pool = multiprocessing.get_context("fork").Pool(producers)
    try:
        with pool:
            for child in multiprocessing.active_children():
                if child.pid not in writers:
                    sampler.watch(f"producer {child.pid}", child.pid)
            pool.starmap(_pool_write, args)
    finally:
        _state.clear()


_INDEPENDENT = """
import sys, numpy as np
sys.path.insert(0, sys.argv[1])
from blockfs import Directory
path, blocks_file, k, n = sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
origins = [tuple(o) for o in np.load(sys.argv[6])]
blocks = np.load(blocks_file, mmap_mode="r")
d = Directory.open(path, "r+", durable=False)
print("ready", flush=True)
sys.stdin.readline()
for i in range(k, len(origins), n):
    z, y, x = origins[i]
    d.write_block(blocks[i], x, y, z)
d.close()
print("done", flush=True)
"""


def _start_independent(path: str, ds: Dataset, config: WriteConfig, folder: str) -> list[subprocess.Popen]:
    """Unrelated writer processes that have opened the volume and wait for a line on stdin to start."""
    origins = os.path.join(folder, f"{ds.kind}-{ds.nbytes}-origins.npy")
    np.save(origins, np.array(ds.origins))
    children = [subprocess.Popen([sys.executable, "-c", _INDEPENDENT, ROOT, path, ds.blocks_file(folder), str(k),
                                  str(config.producers), origins], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                 text=True) for k in range(config.producers)]
    for child in children:
        if child.stdout.readline().strip() != "ready":
            raise RuntimeError(f"{path}: an independent writer process failed to open the volume")
    return children


def _finish_independent(children: list[subprocess.Popen]) -> None:
    for child in children:
        child.stdin.write("go\n")
        child.stdin.flush()
    for child in children:
        done = child.stdout.readline().strip()
        child.wait()
        if done != "done" or child.returncode:
            raise RuntimeError(f"an independent writer process failed (exit status {child.returncode})")


def _write_from_threads(d: Directory, ds: Dataset, producers: int) -> None:
    failures: list[BaseException] = []

    def produce(first: int) -> None:
        try:
            for i in range(first, len(ds.blocks), producers):
                z, y, x = ds.origins[i]
                d.write_block(ds.blocks[i], x, y, z)
        except BaseException as exc:  # re-raised below, in the calling thread
            failures.append(exc)

    if producers == 1:
        produce(0)
    else:
        threads = [threading.Thread(target=produce, args=(k,), name=f"producer-{k}") for k in range(producers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    if failures:
        raise failures[0]


def in_flight_bound(d: Directory, producers: int) -> int:
    """Bytes of blocks the owner may hold in flight: the writers' shared-memory slots
    (``queue_depth + threads + 1`` blocks per writer), plus one block being copied by each producer thread."""
    return sum(writer.slot_bytes for writer in d.writers) + producers * BLOCK_BYTES


def write_once(ds: Dataset, path: str, config: WriteConfig, folder: str | None = None
               ) -> tuple[float, PeakRss, int]:
    """Write every block of ``ds`` into a new volume at ``path``; (seconds, memory samples, bound).

    Producers that start an interpreter (a forkserver Pool, independent processes) start, import
    and open the volume before the clock starts. ``folder`` holds the ``.npy`` file of the blocks
    they read (default: the volume's folder)."""
    folder = folder or os.path.dirname(os.path.abspath(path))
    d = new_volume(ds, path, config.shards, config.durable, config.codec)
    sampler = PeakRss(0.02)
    sampler.watch("owner", os.getpid())
    bound = 0
    children = _start_independent(path, ds, config, folder) if config.mode == "processes" else []
    pool = _start_forkserver_pool(d, ds, config, folder) if config.mode == "forkserver" else None
    for child in children:
        sampler.watch(f"producer {child.pid}", child.pid)
    sampler.start()
    try:
        start = time.perf_counter()
        if config.mode == "processes":
            _finish_independent(children)
        else:
            d.start_writer_processes(queue_depth=QUEUE_DEPTH)
            for k, writer in enumerate(d.writers):
                sampler.watch(f"writer {k}", writer.process.pid)
            if config.mode == "main":
                bound = in_flight_bound(d, config.producers)
                _write_from_threads(d, ds, config.producers)
            else:
                _write_from_pool(d, ds, config.producers, pool, sampler)
        d.close()
        seconds = time.perf_counter() - start
    finally:
        sampler.stop()
        d.close()
        if pool is not None:
            pool.terminate()
        for child in children:
            child.kill()
            child.wait()
            for stream in (child.stdin, child.stdout):
                stream.close()
    return seconds, sampler, bound


def write_matrix(ds: Dataset, folder: str, configs: list[WriteConfig], repeats: int, sample_limit, log
                 ) -> list[WriteResult]:
    """Every configuration once per round, ``repeats`` rounds, the order rotating; the compress limit
    (``sample_limit()``) is sampled once per round among them."""
    results = [WriteResult(ds.kind, ds.nbytes, config) for config in configs]
    path = os.path.join(folder, "write.blockfs")
    steps: list[WriteResult | None] = [None, *results]
    for r in range(repeats):
        for result in steps[r % len(steps):] + steps[:r % len(steps)]:
            settle(ds.nbytes)
            if result is None:
                sample_limit()
                continue
            config = result.config
            seconds, sampler, result.memory_bound = write_once(ds, path, config)
            result.seconds.append(seconds)
            result.owner_growth = max(result.owner_growth, sampler.growth("owner"))
            result.writer_growth = max(result.writer_growth, sampler.max_growth("writer"))
            result.producer_growth = max(result.producer_growth, sampler.max_growth("producer"))
            result.files = len(volume_files(path, config.shards))
            result.on_disk = sum(os.path.getsize(p) for p in volume_files(path, config.shards))
            remove_volume(path, config.shards)
    for result in results:
        log(f"  write {result.config.label}: {result.mbps:,.0f} MB/s best (owner +{result.owner_growth / 2**20:.1f} "
            f"MiB, writer +{result.writer_growth / 2**20:.1f} MiB)")
    return results


# -- reading ---------------------------------------------------------------------------------------


@dataclass
class ReadResult:
    kind: str
    nbytes: int
    shards: int
    full: list[float] = field(default_factory=list)
    full_unverified: list[float] = field(default_factory=list)
    blockwise: list[float] = field(default_factory=list)
    random_us: list[float] = field(default_factory=list)
    random_unverified_us: list[float] = field(default_factory=list)
    region_ms: list[float] = field(default_factory=list)
    region_bytes: int = 0
    reader_full: dict = field(default_factory=dict)
    reader_blocks: dict = field(default_factory=dict)
    correct: bool = False

    def mbps(self, seconds: list[float]) -> float:
        """MB/s at the fastest repeat."""
        return self.nbytes / min(seconds) / MB

    @property
    def verify_cost(self) -> float:
        """Extra time of a verified full read over an unverified one, in percent."""
        return (median(self.full) / median(self.full_unverified) - 1) * 100

    @property
    def region_mbps(self) -> float:
        return self.region_bytes / (median(self.region_ms) / 1000) / MB


def _time_calls(calls, action) -> list[float]:
    """Microseconds of ``action(*args)`` for each args in ``calls``."""
    times = []
    for args in calls:
        start = time.perf_counter_ns()
        action(*args)
        times.append((time.perf_counter_ns() - start) / 1000)
    return times


def read_benchmark(ds: Dataset, folder: str, repeats: int, n_random: int, n_regions: int, log) -> ReadResult:
    """Reads of a volume written with one shard per core from the main process (writing is untimed)."""
    shards = os.cpu_count() or 1
    path = os.path.join(folder, "read.blockfs")
    write_once(ds, path, WriteConfig("main", 1, shards))
    result = ReadResult(ds.kind, ds.nbytes, shards)
    verified, unverified = Directory.open(path), Directory.open(path, verify=False)
    try:
        result.correct = ds.matches(verified[:, :, :])
        for _ in range(repeats):
            for d, times in ((verified, result.full), (unverified, result.full_unverified)):
                settle(ds.nbytes)
                start = time.perf_counter()
                data = d[:, :, :]
                times.append(time.perf_counter() - start)
                del data
        for _ in range(repeats):
            settle(ds.nbytes)
            start = time.perf_counter()
            for z, y, x in ds.origins:
                verified.read_block(x, y, z)
            result.blockwise.append(time.perf_counter() - start)

        rng = np.random.default_rng(1)
        picks = [ds.origins[i][::-1] for i in rng.integers(0, len(ds.origins), n_random)]
        _time_calls(picks[:100], verified.read_block)  # warm up
        result.random_us = _time_calls(picks, verified.read_block)
        _time_calls(picks[:100], unverified.read_block)
        result.random_unverified_us = _time_calls(picks, unverified.read_block)

        size = [min(REGION, n) for n in ds.shape]
        result.region_bytes = int(np.prod(size)) * DTYPE.itemsize
        starts = [tuple(int(rng.integers(0, n - s + 1)) for n, s in zip(ds.shape, size)) for _ in range(n_regions)]
        boxes = [(tuple(slice(a, a + s) for a, s in zip(st, size)),) for st in starts]
        _time_calls(boxes[:5], verified.__getitem__)
        result.region_ms = [t / 1000 for t in _time_calls(boxes, verified.__getitem__)]
    finally:
        verified.close()
        unverified.close()
    result.reader_full = reader_rss(path, "full")
    result.reader_blocks = reader_rss(path, "blocks")
    remove_volume(path, shards)
    log(f"  read: full {result.mbps(result.full):,.0f} MB/s (unverified {result.mbps(result.full_unverified):,.0f}), "
        f"block by block {result.mbps(result.blockwise):,.0f} MB/s, read_block median "
        f"{median(result.random_us):.0f} us p99 {percentile(result.random_us, 99):.0f} us, "
        f"100^3 regions {median(result.region_ms):.2f} ms{'' if result.correct else ', DATA MISMATCH'}")
    return result


def reader_rss(path: str, what: str) -> dict:
    """Peak RSS of a fresh process that opens the volume and reads it whole (``full``) or block by block."""
    code = ("import sys; sys.path.insert(0, sys.argv[1]); from benchmarks.blockfs_bench import reader_child; "
            "reader_child(sys.argv[2], sys.argv[3])")
    done = subprocess.run([sys.executable, "-c", code, ROOT, path, what], capture_output=True, text=True, cwd=ROOT)
    if done.returncode:
        raise RuntimeError(f"{path}: the reader process for a {what} read failed (exit status "
                           f"{done.returncode}):\n{done.stderr.strip()}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _high_water_mark() -> int:
    """Peak RSS of this process in bytes (VmHWM: unlike ru_maxrss it starts afresh at exec)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("VmHWM not found in /proc/self/status")


def reader_child(path: str, what: str) -> None:
    """Body of :func:`reader_rss`: print {"baseline": bytes, "peak": bytes, "output": bytes} as JSON."""
    d = Directory.open(path)
    d.read_block(0, 0, 0)
    d[0:BLOCK + 1, 0:BLOCK + 1, 0:BLOCK + 1]  # starts the read thread pool
    baseline = _high_water_mark()
    output = 0
    if what == "full":
        data = d[:, :, :]
        output = data.nbytes
    else:
        z_extent, y_extent, x_extent = d.shape
        for z in range(0, z_extent, BLOCK):
            for y in range(0, y_extent, BLOCK):
                for x in range(0, x_extent, BLOCK):
                    d.read_block(x, y, z)
    peak = _high_water_mark()
    d.close()
    print(json.dumps({"baseline": baseline, "peak": peak, "output": output}))


@dataclass
class ScaleResult:
    """blockfs's main-process write and full read of one data set, for throughput across sizes."""

    kind: str
    nbytes: int
    write: Figure = field(default_factory=Figure)
    read: Figure = field(default_factory=Figure)
    correct: bool | None = None


def scale_run(ds: Dataset, folder: str, repeats: int, meter, log) -> ScaleResult:
    """The main-process write (one shard per core) and ``d[:, :, :]``, interleaved with the compress
    and decompress + place limits (sampled into ``meter``), ``repeats`` rounds."""
    cores = os.cpu_count() or 1
    config = WriteConfig("main", 1, cores)
    path = os.path.join(folder, "scale.blockfs")
    result = ScaleResult(ds.kind, ds.nbytes)
    for r in range(repeats):
        settle(ds.nbytes)
        meter.sample_compress()
        settle(ds.nbytes)
        result.write.add(write_once(ds, path, config, folder)[0])
        settle(ds.nbytes)
        meter.sample_place()
        settle(ds.nbytes)
        start = time.perf_counter()
        with Directory.open(path) as d:
            data = d[:, :, :]
        result.read.add(time.perf_counter() - start)
        if r == 0:
            result.correct = ds.matches(data)
        del data
        remove_volume(path, cores)
    log(f"  scale: write {ds.nbytes / result.write.min / MB:,.0f} MB/s, full read "
        f"{ds.nbytes / result.read.min / MB:,.0f} MB/s{'' if result.correct else ', DATA MISMATCH'}")
    return result
