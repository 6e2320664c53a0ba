"""Memory of the write path: 1 GiB of sample blocks through the writer processes.

The main process generates 64^3 uint16 microscopy-like blocks one at a time (never the whole
volume) and hands each to ``write_block``, which copies it into a free slot of its writer's shared
memory. A sampler thread records the resident set size (RSS) of the main process and of every
writer process every 50 ms. Each writer has ``queue_depth + threads + 1`` slots of one block, so what
is in flight is bounded by ``sum of the writers' slots``: the main process (which
touches every slot) should grow by about that much, each writer by its own slots plus a
block's compression buffers, whatever the volume's size.

Run on demand (not part of the test suite):

    python benchmarks/writer_memory.py                 # 1 GiB, 2 shards, queue_depth 10
    python benchmarks/writer_memory.py --gib 0.25 --verify
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from blockfs import Directory
from blockfs.sample import microscopy_block

BLOCK = 64
MIB = 2**20


class PeakRss(threading.Thread):
    """Peak RSS (and the first sample) of some processes, sampled every ``interval`` seconds."""

    def __init__(self, pids: dict[str, int], interval: float):
        super().__init__(daemon=True)
        self.processes = {name: psutil.Process(pid) for name, pid in pids.items()}
        self.interval = interval
        self.first: dict[str, int] = {}
        self.peak = dict.fromkeys(pids, 0)
        self.samples = 0
        self._done = threading.Event()

    def sample(self) -> None:
        for name, process in self.processes.items():
            try:
                rss = process.memory_info().rss
            except (psutil.NoSuchProcess, psutil.ZombieProcess):
                continue
            self.first.setdefault(name, rss)
            self.peak[name] = max(self.peak[name], rss)
        self.samples += 1

    def run(self) -> None:
        while not self._done.is_set():
            self.sample()
            self._done.wait(self.interval)

    def stop(self) -> None:
        self._done.set()
        self.join()


def volume_extents(gib: float) -> tuple[int, int, int]:
    """(x, y, z) extents of whole 64^3 uint16 blocks holding about ``gib`` GiB: 16 x 16 x n blocks."""
    blocks = max(1, round(gib * 2**30 / (BLOCK**3 * 2)))
    z_blocks = max(1, math.ceil(blocks / 256))
    return 16 * BLOCK, 16 * BLOCK, z_blocks * BLOCK


def run(folder: str, gib: float, shards: int, queue_depth: int, interval: float, verify: bool) -> int:
    x_extent, y_extent, z_extent = volume_extents(gib)
    path = os.path.join(folder, "writer-memory.blockfs")
    d = Directory(x_extent, y_extent, z_extent, np.uint16, path, n_filenames=shards, x_block_size=BLOCK,
                  y_block_size=BLOCK, z_block_size=BLOCK)
    d.create(overwrite=True)
    origins = [(x, y, z) for z in range(0, z_extent, BLOCK) for y in range(0, y_extent, BLOCK)
               for x in range(0, x_extent, BLOCK)]
    block_bytes = BLOCK**3 * 2

    d.start_writer_processes(queue_depth=queue_depth)
    pids = {"main": os.getpid(), **{f"writer {w.number}": w.process.pid for w in d.writers}}
    sampler = PeakRss(pids, interval)
    sampler.sample()
    sampler.start()
    generating = 0.0
    start = time.perf_counter()
    try:
        for x, y, z in origins:
            t = time.perf_counter()
            block = microscopy_block((z, y, x), (BLOCK, BLOCK, BLOCK), seed=0)
            generating += time.perf_counter() - t
            d.write_block(block, x, y, z)
            del block
        d.close()
    finally:
        seconds = time.perf_counter() - start
        sampler.stop()
        d.close()
    sampler.sample()

    total = len(origins) * block_bytes
    on_disk = sum(os.path.getsize(p) for p in [path, *(f"{path}.{i}" for i in range(shards))])
    bound = sum(w.slot_bytes for w in d.writers)
    print(f"volume          {z_extent} x {y_extent} x {x_extent} (z, y, x) uint16, {len(origins)} blocks of "
          f"{BLOCK}^3, {shards} shards, zstd 5, queue_depth {queue_depth}")
    print(f"total bytes     {total:,} ({total / 2**30:.2f} GiB uncompressed, {on_disk / MIB:,.0f} MiB on disk, "
          f"ratio {total / on_disk:.2f})")
    print(f"seconds         {seconds:.2f}: generating blocks in the main process {generating:.2f}, "
          f"waiting in write_block and close() {seconds - generating:.2f}")
    print(f"throughput      {total / 1e6 / seconds:,.0f} MB/s end to end "
          f"({'bound by block generation' if generating > seconds / 2 else 'bound by the writers'})")
    print(f"samples         {sampler.samples} (every {interval * 1000:.0f} ms)")
    for name in pids:
        growth = sampler.peak[name] - sampler.first[name]
        print(f"peak RSS        {name:<9} {sampler.peak[name] / MIB:7.1f} MiB "
              f"(at start {sampler.first[name] / MIB:6.1f} MiB, growth {growth / MIB:+6.1f} MiB)")
    print(f"bound           (queue_depth + threads + 1) x block bytes per writer = {bound:,} bytes "
          f"({bound / MIB:.1f} MiB) of shared slots")

    if verify:
        mismatched = 0
        with Directory.open(path, "r") as reader:
            for x, y, z in origins:
                expected = microscopy_block((z, y, x), (BLOCK, BLOCK, BLOCK), seed=0)
                mismatched += int(np.count_nonzero(reader.read_block(x, y, z) != expected))
        print(f"verify          {'ok' if not mismatched else f'{mismatched} voxels differ'}")
        if mismatched:
            return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     epilog="example: python benchmarks/writer_memory.py --gib 1 --shards 2")
    parser.add_argument("--gib", type=float, default=1.0, help="uncompressed data to write (default: %(default)s)")
    parser.add_argument("--shards", type=int, default=2, help="shards, one writer each (default: %(default)s)")
    parser.add_argument("--queue-depth", type=int, default=10, help="blocks waiting per writer (default: %(default)s)")
    parser.add_argument("--interval", type=float, default=0.05, help="sampling period, s (default: %(default)s)")
    parser.add_argument("--output", help="folder for the volume (default: a temporary folder, removed afterwards)")
    parser.add_argument("--verify", action="store_true", help="read every block back and compare it")
    args = parser.parse_args(argv)
    if args.output:
        os.makedirs(args.output, exist_ok=True)
        return run(args.output, args.gib, args.shards, args.queue_depth, args.interval, args.verify)
    folder = tempfile.mkdtemp(prefix="blockfs-writer-memory-")
    try:
        return run(folder, args.gib, args.shards, args.queue_depth, args.interval, args.verify)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
