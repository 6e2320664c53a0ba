"""Pyramid builds: ``blockfs pyramid`` (one pass) against its limit, a level-by-level build, tensorstore.

For one data set (the microscopy-like volume), with the same levels (5) and the same exact mean:

- one pass: ``build_pyramid`` in a fresh process (so its workers are small forks), timed inside it;
  a sampler records the peak resident set size of its worker processes;
- limit: decompress every level-1 block plus compress every output block, on all cores, the way
  benchmarks/limits.py measures (one block per thread at a time, c-blosc context calls with one
  blosc thread, GIL released), from payloads and arrays held in memory;
- level by level: each level read back from the one below and written with the same library
  (``Directory`` slicing and ``write_block``), a fork pool over the blocks of each level, each level
  fsynced when done;
- tensorstore: its ``downsample`` driver (``mean``) over level 1 stored as zarr3 sharded, writing each
  level into a zarr3 sharded store (64^3 chunks, blosc zstd 5); level 1 is stored before the clock
  starts. Its levels are read back and compared with ours, voxel for voxel.

Each of the repeats is a round that runs every contender once, with ``measure.settle`` (sync,
garbage collection, the volume's size of memory touched) before each; figures give the minimum,
the median and the spread, and the goals compare minimum times, unless a figure spreads over 20%.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import itertools
import json
import multiprocessing
import os
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field

import numpy as np
import psutil

from blockfs import Directory
from blockfs.pyramid import open_pyramid
from blockfs.pyramid.octree import worker_memory_bound
from blockfs.pyramid.reduce import Method, footprint_counts

from .data import BLOCK, BLOCK_SHAPE, Dataset, size_label
from .limits import compress_block, decompress_block, on_all_cores
from .measure import MB, MIB, Figure, settle, shown
from .peers import SHARD

LEVELS = 5
KIND = "microscopy"
LIMIT_RATIO = 1.25
LEVEL_BY_LEVEL_RATIO = 3.0
TENSORSTORE_RATIO = 2.0
FLAT = 0.10

BUILD = """
import json, sys, time
from blockfs.pyramid.build import build_pyramid
start = time.perf_counter()
build_pyramid(sys.argv[1], sys.argv[2], levels=int(sys.argv[3]), overwrite=True)
print(json.dumps({"seconds": time.perf_counter() - start}))
"""


@dataclass
class PyramidResult:
    nbytes: int
    shape: tuple[int, int, int]
    one_pass: Figure = field(default_factory=Figure)
    limit_decompress: Figure = field(default_factory=Figure)
    limit_compress: Figure = field(default_factory=Figure)
    level_by_level: Figure = field(default_factory=Figure)
    tensorstore: Figure = field(default_factory=Figure)
    tensorstore_note: str = ""
    tensorstore_equal: bool | None = None
    worker_peak_rss: int = 0
    worker_bound: int = 0
    output_blocks: int = 0

    @property
    def limit(self) -> Figure:
        """Decompress plus compress, round by round."""
        return Figure([d + c for d, c in zip(self.limit_decompress.seconds, self.limit_compress.seconds)])


def _peak_children_rss(process: psutil.Process, done: threading.Event, peak: list[int]) -> None:
    """Sample the RSS of ``process``'s children every 10 ms; look for new children only every 0.25 s
    (listing children scans every process on the machine, which would steal CPU from the build)."""
    children: list[psutil.Process] = []
    next_scan = 0.0
    while not done.wait(0.01):
        if time.monotonic() >= next_scan:
            try:
                children = process.children(recursive=True)
            except psutil.NoSuchProcess:
                return
            next_scan = time.monotonic() + (0.25 if children else 0.02)
        for child in children:
            try:
                peak[0] = max(peak[0], child.memory_info().rss)
            except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
                pass


def one_pass(source: str, dest: str) -> tuple[float, int]:
    """(seconds, peak RSS of a worker) of ``build_pyramid`` in a fresh process."""
    process = psutil.Popen([sys.executable, "-c", BUILD, source, dest, str(LEVELS)], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
    done, peak = threading.Event(), [0]
    sampler = threading.Thread(target=_peak_children_rss, args=(process, done, peak), daemon=True)
    sampler.start()
    out, err = process.communicate(timeout=3600)
    done.set()
    sampler.join()
    if process.returncode:
        raise RuntimeError(f"blockfs pyramid failed: {err}")
    return json.loads(out)["seconds"], peak[0]


def limit(source: str, dest: str, threads: int) -> tuple[float, float, int]:
    """(seconds to decompress every level-1 block, to compress every output block, output blocks)."""
    level1 = Directory.open(source)
    payloads = [level1.read_block_payload(x, y, z) for z, y, x in itertools.product(
        *(range(0, n, BLOCK) for n in level1.shape))]
    local = threading.local()

    def decompress(i: int) -> None:
        if not hasattr(local, "block"):
            local.block = np.empty(BLOCK_SHAPE, level1.dtype)
        decompress_block(payloads[i], local.block)

    decompress_seconds = on_all_cores(len(payloads), decompress, threads)
    blocks = []
    for volume in open_pyramid(dest).levels[1:]:
        for z, y, x in itertools.product(*(range(0, n, BLOCK) for n in volume.shape)):
            blocks.append(np.ascontiguousarray(volume[z:z + BLOCK, y:y + BLOCK, x:x + BLOCK]))
    return decompress_seconds, on_all_cores(len(blocks), lambda i: compress_block(blocks[i]), threads), len(blocks)


_opened: dict[tuple[str, str], Directory] = {}


def _volume(path: str, mode: str) -> Directory:
    """A pool worker's volume, opened once per process."""
    if (path, mode) not in _opened:
        _opened[(path, mode)] = Directory.open(path, mode)
    return _opened[(path, mode)]


def _downsample_block(args: tuple[str, str, tuple[int, int, int]]) -> None:
    below_path, path, (z, y, x) = args
    below = _volume(below_path, "r")
    region = below[2 * z:2 * z + 2 * BLOCK, 2 * y:2 * y + 2 * BLOCK, 2 * x:2 * x + 2 * BLOCK]
    method = Method("mean", below.dtype)
    acc = method.reduce(region)
    block = method.finish(acc, lambda: footprint_counts((z, y, x), acc.shape, 2, below.shape))
    _volume(path, "r+").write_block(block, x, y, z)


def level_by_level(source: str, folder: str, processes: int) -> float:
    """Seconds to build levels 2..LEVELS, each from the one below, with a fork pool over its blocks."""
    shutil.rmtree(folder, ignore_errors=True)
    os.makedirs(folder)
    below = Directory.open(source)
    start = time.perf_counter()
    with multiprocessing.get_context("fork").Pool(processes) as pool:
        for level in range(2, LEVELS + 1):
            shape = tuple(-(-n // 2) for n in below.shape)
            path = os.path.join(folder, f"level{level}.blockfs")
            Directory(shape[2], shape[1], shape[0], below.dtype, path, n_filenames=processes, x_block_size=BLOCK,
                      y_block_size=BLOCK, z_block_size=BLOCK).create().close()
            origins = itertools.product(*(range(0, n, BLOCK) for n in shape))
            pool.map(_downsample_block, [(below.directory_filename, path, o) for o in origins], chunksize=4)
            Directory.open(path, "r+").close()  # durable, as the one-pass build is
            below = Directory.open(path)
    return time.perf_counter() - start


def _zarr3(ts, path: str, shape: tuple[int, ...], create: bool):
    spec = {"driver": "zarr3", "kvstore": {"driver": "file", "path": path}}
    if not create:
        return ts.open({**spec, "open": True}).result()
    inner = [{"name": "bytes", "configuration": {"endian": "little"}},
             {"name": "blosc", "configuration": {"cname": "zstd", "clevel": 5, "shuffle": "shuffle", "typesize": 2,
                                                 "blocksize": 0}}]
    metadata = {"shape": list(shape), "data_type": "uint16", "fill_value": 0,
                "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": [min(SHARD, -(-n // BLOCK) * BLOCK)
                                                                                   for n in shape]}},
                "codecs": [{"name": "sharding_indexed",
                            "configuration": {"chunk_shape": [BLOCK] * 3, "codecs": inner,
                                              "index_codecs": [{"name": "bytes", "configuration": {"endian": "little"}},
                                                               {"name": "crc32c"}]}}]}
    return ts.open({**spec, "metadata": metadata, "create": True, "delete_existing": True}).result()


def tensorstore_level1(ds: Dataset, folder: str):
    """Level 1 stored as zarr3 sharded for tensorstore's downsample driver, opened for reading."""
    import tensorstore as ts

    level1 = _zarr3(ts, os.path.join(folder, "level1"), ds.shape, True)
    level1.write(ds.volume()).result()
    return _zarr3(ts, os.path.join(folder, "level1"), ds.shape, False)


def tensorstore_build(level1, folder: str) -> float:
    """Seconds for tensorstore's downsample driver to write levels 2..LEVELS from ``level1``."""
    import tensorstore as ts

    start = time.perf_counter()
    for level in range(2, LEVELS + 1):
        view = ts.downsample(level1, [2 ** (level - 1)] * 3, "mean")
        out = _zarr3(ts, os.path.join(folder, f"level{level}"), view.shape, True)
        with ts.Transaction() as txn:
            out.with_transaction(txn).write(view).result()
    return time.perf_counter() - start


def tensorstore_equal(folder: str, ours: str) -> bool:
    """Whether tensorstore's levels hold the same voxels as ours."""
    import tensorstore as ts

    levels = open_pyramid(ours).levels
    return all(np.array_equal(_zarr3(ts, os.path.join(folder, f"level{level}"), (), False).read().result(),
                              levels[level - 1][...]) for level in range(2, LEVELS + 1))


def write_source(ds: Dataset, path: str) -> None:
    """The data set as the pyramid's source volume (64^3 blocks, blockfs's defaults)."""
    volume = Directory(ds.shape[2], ds.shape[1], ds.shape[0], np.uint16, path, x_block_size=BLOCK,
                       y_block_size=BLOCK, z_block_size=BLOCK).create()
    volume.start_writer_processes()
    for (z, y, x), block in zip(ds.origins, ds.blocks):
        volume.write_block(block, x, y, z)
    volume.close()


def run(ds: Dataset, folder: str, repeats: int, log) -> PyramidResult:
    """All pyramid figures for one data set."""
    threads = os.cpu_count() or 1
    work = os.path.join(folder, "pyramid")
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    source, dest = os.path.join(work, "source.blockfs"), os.path.join(work, "pyramid")
    write_source(ds, source)
    result = PyramidResult(ds.nbytes, ds.shape, worker_bound=worker_memory_bound(BLOCK_SHAPE, LEVELS))
    theirs = os.path.join(work, "tensorstore")
    level1 = None
    try:
        if importlib.util.find_spec("tensorstore") is None:
            result.tensorstore_note = "not installed (pip install tensorstore)"
            log("  pyramid: tensorstore's build skipped, not installed (pip install tensorstore)")
        else:
            level1 = tensorstore_level1(ds, theirs)
            result.tensorstore_note = f"tensorstore {importlib.metadata.version('tensorstore')}"
        ds.drop_volume()
        for r in range(repeats):
            settle(ds.nbytes)
            seconds, peak = one_pass(source, dest)
            result.one_pass.add(seconds)
            result.worker_peak_rss = max(result.worker_peak_rss, peak)
            settle(ds.nbytes)
            d, c, result.output_blocks = limit(source, dest, threads)
            result.limit_decompress.add(d)
            result.limit_compress.add(c)
            settle(ds.nbytes)
            result.level_by_level.add(level_by_level(source, os.path.join(work, "level-by-level"), threads))
            if level1 is not None:
                settle(ds.nbytes)
                result.tensorstore.add(tensorstore_build(level1, theirs))
            log(f"  pyramid round {r + 1}/{repeats}: one pass {seconds:.2f} s (worker peak RSS {peak / MIB:.0f} MiB), "
                f"limit {d + c:.2f} s (decompress {d:.2f} + compress {c:.2f}), level by level "
                f"{result.level_by_level.seconds[-1]:.2f} s"
                + (f", tensorstore {result.tensorstore.seconds[-1]:.2f} s" if level1 is not None else ""))
        if level1 is not None:
            result.tensorstore_equal = tensorstore_equal(theirs, dest)
            log(f"  pyramid: tensorstore's levels equal to ours: {result.tensorstore_equal}")
    finally:
        ds.drop_volume()
        shutil.rmtree(work, ignore_errors=True)
    return result


def _goal(name: str, target: str, measured: str, met: bool | None) -> list[str]:
    status = "not judged" if met is None else ("met" if met else "missed")
    return [f"| {name} | {target} | {measured} | **{status}** |"]


def _times(fast: Figure, slow: Figure) -> float | None:
    """How many times faster ``fast`` is, on minimum times; None when either spreads over 20%."""
    return slow.min / fast.min if fast.steady and slow.steady else None


def render(results: list[PyramidResult]) -> list[str]:
    """The report's pyramid section (empty when no pyramid was built)."""
    if not results:
        return []
    out = ["## Pyramid (`blockfs pyramid`, 5 levels, mean)", "",
           "One pass = `build_pyramid` in a fresh process on all cores; limit = decompress every level-1 block "
           "+ compress every output block on all cores; level by level = each level read back from the one "
           "below, same library, fork pool; tensorstore = its `downsample` driver (mean) over level 1 stored "
           "as zarr3 sharded, writing zarr3 sharded levels. Interleaved rounds; seconds min / median (spread), "
           "ratios on minimum times. Worker RSS = the peak resident set of a worker "
           "process (including the interpreter and what it shares with its parent).", "",
           "| size | one pass s | limit s | x limit | level by level s | x faster | tensorstore s | x faster | "
           "tensorstore levels equal | worker peak RSS MiB | stated bound (beyond the interpreter) MiB |",
           "|---|---|---|---|---|---|---|---|---|---|---|"]

    def ratio(value: float | None) -> str:
        return "not quoted" if value is None else f"{value:.2f}x"

    for r in results:
        ts = r.tensorstore if r.tensorstore.samples else None
        out.append(f"| {size_label(r.nbytes)} | {shown(r.one_pass, 1, 2)} | {shown(r.limit, 1, 2)} | "
                   f"{ratio(_times(r.limit, r.one_pass))} | {shown(r.level_by_level, 1, 2)} | "
                   f"{ratio(_times(r.one_pass, r.level_by_level))} | "
                   f"{shown(ts, 1, 2) if ts else r.tensorstore_note} | "
                   f"{ratio(_times(r.one_pass, ts)) if ts else '-'} | {r.tensorstore_equal} | "
                   f"{r.worker_peak_rss / MIB:.0f} | {r.worker_bound / MIB:.0f} |")
    judged = next((r for r in results if r.nbytes == 2**30), results[-1])
    ours = judged.one_pass.min
    out += ["", f"Goals, judged at {size_label(judged.nbytes)} ({judged.nbytes / ours / MB:,.0f} MB/s of level 1 "
            "at the fastest round):", "", "| goal | target | measured | status |", "|---|---|---|---|"]
    slower = _times(judged.limit, judged.one_pass)
    out += _goal("one pass vs its limit", f"<= {LIMIT_RATIO}x", ratio(slower),
                 None if slower is None else slower <= LIMIT_RATIO)
    faster = _times(judged.one_pass, judged.level_by_level)
    out += _goal("faster than level by level", f">= {LEVEL_BY_LEVEL_RATIO:.0f}x", ratio(faster),
                 None if faster is None else faster >= LEVEL_BY_LEVEL_RATIO)
    if judged.tensorstore.samples:
        faster = _times(judged.one_pass, judged.tensorstore)
        out += _goal("faster than tensorstore downsample", f">= {TENSORSTORE_RATIO:.0f}x", ratio(faster),
                     None if faster is None else faster >= TENSORSTORE_RATIO)
    else:
        out += _goal("faster than tensorstore downsample", f">= {TENSORSTORE_RATIO:.0f}x", judged.tensorstore_note,
                     None)
    peaks = [r.worker_peak_rss for r in results]
    flat = None if len(results) < 2 else max(peaks) <= (1 + FLAT) * min(peaks)
    out += _goal("worker peak RSS flat across sizes", f"within {FLAT:.0%}",
                 ", ".join(f"{size_label(r.nbytes)}: {r.worker_peak_rss / MIB:.0f} MiB" for r in results), flat)
    return out + [""]
