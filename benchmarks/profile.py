"""Where the time goes: CPU per write path, and the steps blockfs adds to reading a block.

    python -m benchmarks.profile [--size 1G] [--data microscopy] [--rounds 3]

*Write*: the compress limit and each blockfs write path (one shard per core), interleaved: wall
time and the CPU time of this process, its children and the writers (children of the launcher), at the
fastest round.
``busy`` = CPU / (wall x cores) says whether the path kept every core working, ``CPU x limit`` how
much CPU it spends beyond compression alone.

*Read*: on one thread, every block of a volume written from the main process: the full-read
limit's steps (decompress, place into the output) against blockfs's ``read_into``, and the steps
blockfs adds, each timed alone over the same blocks (``pread`` of the record and payload out of
the page cache, CRC32C). *Random* ``read_block``: median over random blocks against decompressing
the same blocks from memory, with the median ``pread`` of those blocks.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import time
from collections.abc import Callable

import numpy as np
import psutil

from blockfs import Directory, launcher, records
from blockfs.selection import projections

from .blockfs_bench import WriteConfig, fork_pool_alone, new_volume, remove_volume, write_once
from .data import BLOCK_SHAPE, DTYPE, Dataset, make_dataset, parse_size
from .limits import LimitMeter, decompress_block
from .measure import settle


def _cpu() -> float:
    """CPU seconds of this process, its ended children and the writers its launcher forked and reaped."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    seconds = own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime
    forker = launcher.running()
    if forker is not None:
        times = psutil.Process(forker.process.pid).cpu_times()
        seconds += times.user + times.system + times.children_user + times.children_system
    return seconds


def write_paths(ds: Dataset, meter: LimitMeter, folder: str, rounds: int) -> None:
    cores = os.cpu_count() or 1
    path = os.path.join(folder, "profile.blockfs")

    def blockfs(config: WriteConfig) -> Callable[[], float]:
        def run() -> float:
            seconds = write_once(ds, path, config, folder)[0]
            remove_volume(path, config.shards)
            return seconds
        return run

    paths = {"limit: compress, all cores": meter.sample_compress,
             "main process, writer processes": blockfs(WriteConfig("main", 1, cores)),
             "main process, 1 shard": blockfs(WriteConfig("main", 1, 1)),
             f"fork Pool of {cores}": blockfs(WriteConfig("pool", cores, cores)),
             f"{cores} independent processes": blockfs(WriteConfig("processes", cores, cores))}
    fixed = {"writers started and closed": lambda: _no_blocks(ds, path, WriteConfig("main", 1, cores)),
             f"fork Pool of {cores} started and ended": lambda: fork_pool_alone(cores)}
    best: dict[str, tuple[float, float]] = {}
    for _ in range(rounds):
        for name, run in (paths | fixed).items():
            settle(ds.nbytes)
            before = _cpu()
            wall = run()
            best[name] = min(best.get(name, (wall, _cpu() - before)), (wall, _cpu() - before))
    limit_wall, limit_cpu = best["limit: compress, all cores"]
    print(f"\nWrite, {ds.label} {ds.kind}, {cores} cores, fastest of {rounds} rounds")
    print(f"{'path':34s} {'wall ms':>8s} {'x limit':>8s} {'CPU s':>6s} {'busy':>5s} {'CPU x limit':>12s}")
    for name in paths:
        wall, cpu = best[name]
        print(f"{name:34s} {wall * 1000:8.0f} {limit_wall / wall:8.2f} {cpu:6.2f} {cpu / wall / cores:5.0%} "
              f"{cpu / limit_cpu:12.2f}")
    print(f"Fixed costs in this process (it holds the {ds.label} of blocks), no block written:")
    for name in fixed:
        wall, cpu = best[name]
        print(f"{name:34s} {wall * 1000:8.0f} ms wall, {cpu * 1000:.0f} ms CPU")


def _no_blocks(ds: Dataset, path: str, config: WriteConfig) -> float:
    """Seconds to start a volume's writer processes and close it, writing nothing."""
    d = new_volume(ds, path, config.shards, durable=False)
    start = time.perf_counter()
    d.start_writer_processes()
    d.close()
    seconds = time.perf_counter() - start
    remove_volume(path, config.shards)
    return seconds


def _median_us(action: Callable[[int], object], items: range | list[int]) -> float:
    times = []
    for i in items:
        start = time.perf_counter_ns()
        action(i)
        times.append((time.perf_counter_ns() - start) / 1000)
    return statistics.median(times)


def read_steps(ds: Dataset, folder: str, rounds: int) -> None:
    cores = os.cpu_count() or 1
    path = os.path.join(folder, "profile-read.blockfs")
    write_once(ds, path, WriteConfig("main", 1, cores), folder)
    try:
        with Directory.open(path) as d:
            store, layout = d.store, d.layout
            parts = list(projections(layout, (0, 0, 0), layout.shape))
            where = [store.entry(p.entry) for p in parts]
            payloads = [d.read_block_payload(*p.origin) for p in parts]
            out = np.ones(d.shape, d.dtype)
            scratch = np.empty(BLOCK_SHAPE, DTYPE)
            n = len(parts)
            fds = [store.shard_fd(layout.shard_of(p.entry)) for p in parts]
            buffer = bytearray(layout.max_block_bytes + records.HEADER_SIZE)
            head = records.HEADER_SIZE if layout.records else 0

            def limit_steps() -> tuple[float, float]:
                decompress = place = 0.0
                for k, p in enumerate(parts):
                    t0 = time.perf_counter()
                    decompress_block(payloads[k], scratch)
                    t1 = time.perf_counter()
                    out[p.out_selection] = scratch
                    decompress, place = decompress + t1 - t0, place + time.perf_counter() - t1
                return decompress, place

            def timed(action: Callable[[int], object]) -> float:
                start = time.perf_counter()
                for k in range(n):
                    action(k)
                return time.perf_counter() - start

            steps: dict[str, list[float]] = {}
            for _ in range(rounds):
                decompress, place = limit_steps()
                steps.setdefault("limit: decompress", []).append(decompress)
                steps.setdefault("limit: place into the output", []).append(place)
                steps.setdefault("blockfs read_into, 1 thread", []).append(_one_thread(lambda: d.read_into(out)))
                steps.setdefault("pread of record + payload", []).append(timed(
                    lambda k: os.preadv(fds[k], [memoryview(buffer)[:where[k][1] + head]], where[k][0] - head)))
                steps.setdefault("CRC32C of the payload", []).append(timed(lambda k: records.checksum(payloads[k])))
            print(f"\nRead steps on one thread, {ds.label} {ds.kind}, {n} blocks, fastest of {rounds} rounds, "
                  "us per block")
            best = {name: min(times) / n * 1e6 for name, times in steps.items()}
            for name, us in best.items():
                print(f"{name:34s} {us:8.1f}")
            limit = best["limit: decompress"] + best["limit: place into the output"]
            added = best["blockfs read_into, 1 thread"] - limit
            rest = added - best["pread of record + payload"] - best["CRC32C of the payload"]
            print(f"{'blockfs adds to the limit':34s} {added:8.1f} (pread and CRC32C above, the rest {rest:.1f}: "
                  "Python, index entries, scratch copies)")

            rng = np.random.default_rng(1)
            picks = [int(i) for i in rng.integers(0, n, 1000)]
            decompress = _median_us(lambda k: decompress_block(payloads[k], scratch), picks)
            read_block = _median_us(lambda k: d.read_block(*parts[k].origin), picks)
            pread = _median_us(lambda k: os.preadv(fds[k], [memoryview(buffer)[:where[k][1] + head]],
                                                   where[k][0] - head), picks)
            print(f"\nRandom read_block, 1000 blocks: median {read_block:.0f} us; decompressing the same blocks from "
                  f"memory {decompress:.0f} us; pread of them {pread:.0f} us")
    finally:
        remove_volume(path, cores)


def _one_thread(action: Callable[[], object]) -> float:
    """Seconds of ``action`` with blockfs reading on the calling thread only."""
    real = os.cpu_count
    os.cpu_count = lambda: 1  # blockfs shares a read among as many threads as cores
    try:
        start = time.perf_counter()
        action()
        return time.perf_counter() - start
    finally:
        os.cpu_count = real


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.profile", description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=parse_size, default=parse_size("1G"))
    parser.add_argument("--data", default="microscopy")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--scratch", default="/tmp")
    args = parser.parse_args(argv)
    ds = make_dataset(args.data, args.size)
    folder = os.path.join(args.scratch, f"blockfs-profile-{os.getpid()}")
    os.makedirs(folder)
    try:
        write_paths(ds, LimitMeter(ds, folder), folder, args.rounds)
        read_steps(ds, folder, args.rounds)
    finally:
        for name in os.listdir(folder):
            os.unlink(os.path.join(folder, name))
        os.rmdir(folder)
    return 0


if __name__ == "__main__":
    sys.exit(main())
