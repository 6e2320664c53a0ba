"""A scale model of the write paths past this machine's cores, from per-block costs measured here.

    python -m benchmarks.scale_model [--size 512M] [--repeats 5]

Measured on the microscopy sample (64^3 uint16 blocks), each the minimum of ``--repeats``:

- *compress*: one thread's CPU per block for each codec (c-blosc's context call, one block at a time);
- *main path, codec taken out*: the main-process write path (producer threads calling ``write_block``,
  one writer process per shard) on a volume whose codec is blosc level 0 (a copy): CPU per block of the
  owner process (the producers' hand-off: the copy into a slot and the message) and of the writer
  processes (the copy, CRC32C, the append). The owner's hand-off without its copy is measured on the
  same number of 16^3 blocks (8 KiB, so the copy is next to nothing), from one producer thread and from
  two (which adds the GIL's hand-over between them);
- *append*: processes appending blocks encoded beforehand (``BlockStore.append``: the shard's lock, the
  pwrite of the block and of its index entry), N at once on one shard and on one shard each.

From these, the cores each resource can feed before it saturates: the owner (one process, so
``compress / hand-off``, its copies made by the producer threads in parallel), one shard's lock when
every producer appends to it (``compress / append``), and the page cache (the append rate of N
processes on N shards, against the stored bytes each core compresses per second).
"""

from __future__ import annotations

import argparse
import multiprocessing
import multiprocessing.synchronize
import os
import resource
import tempfile
import threading
import time
from dataclasses import dataclass

import numpy as np
import psutil

from blockfs import Directory
from blockfs.codec import compress
from blockfs.writable import open_writable

from .data import BLOCK, DTYPE, Dataset, make_dataset, parse_size

#: (label, blosc compressor, level) of the codecs modelled.
CODECS = (("zstd 5", "zstd", 5), ("lz4 5", "lz4", 5), ("lz4 1", "lz4", 1))
QUEUE_DEPTH = 10
#: The edge of the blocks whose hand-off is measured without a copy worth the name (16^3 uint16: 8 KiB).
HAND_OFF_EDGE = 16
#: The codec of the blocks the append figures write (their stored size decides the page cache's bytes).
APPENDED = "lz4 1"


@dataclass
class Costs:
    """Seconds per block (CPU unless named otherwise) and bytes per block as stored."""

    compress: dict[str, float]
    stored: dict[str, float]
    copy: float  # one thread's CPU to copy a block into a reused buffer
    owner: float  # the owner's CPU per 64^3 block, one producer thread
    hand_off: dict[int, float]  # producer threads -> the owner's CPU per 8 KiB block: its work besides the copy
    writers: float
    append_alone: float  # wall time of one process's append
    one_shard: dict[int, float]  # N processes on one shard: wall seconds per block
    own_shards: dict[int, float]  # N processes, a shard each


def _cpu(who: int) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def _settled_cpu(processes: list[psutil.Process], quiet: float = 0.05) -> float:
    """The processes' CPU seconds, read once they have used none for ``quiet`` seconds."""
    def total() -> float:
        return sum(sum(p.cpu_times()[:2]) for p in processes)
    now = total()
    while True:
        time.sleep(quiet)
        then, now = now, total()
        if now == then:
            return now


def compress_costs(ds: Dataset, repeats: int) -> tuple[dict[str, float], dict[str, float]]:
    """Each codec's CPU seconds per block on one thread, and its mean stored bytes per block."""
    seconds, stored = {}, {}
    for label, name, level in CODECS:
        best = float("inf")
        for _ in range(repeats):
            start = time.thread_time()
            sizes = [len(compress(block, name, level)) for block in ds.blocks]
            best = min(best, time.thread_time() - start)
        seconds[label], stored[label] = best / len(ds.blocks), float(np.mean(sizes))
    return seconds, stored


def _produce(d: Directory, blocks: list[np.ndarray], origins: list[tuple[int, ...]], first: int, step: int) -> None:
    for i in range(first, len(blocks), step):
        d.write_block(blocks[i], *reversed(origins[i]))


def copy_cost(ds: Dataset, repeats: int) -> float:
    """One thread's CPU seconds per block to copy a block into a buffer used again for every block (the
    owner's copy into a slot; numpy lets go of the GIL for it, so producer threads copy in parallel)."""
    slot = np.empty_like(ds.blocks[0])
    best = float("inf")
    for _ in range(repeats):
        start = time.thread_time()
        for block in ds.blocks:
            slot[...] = block
        best = min(best, time.thread_time() - start)
    return best / len(ds.blocks)


def main_path_costs(ds: Dataset, folder: str, repeats: int, producers: int = 1, edge: int = BLOCK
                    ) -> tuple[float, float]:
    """(owner CPU, writers' CPU) per block of the main-process path on a level-0 (copying) codec, from
    ``producers`` threads, on as many blocks as ``ds`` has of ``edge``^3 voxels."""
    owner, writers = float("inf"), float("inf")
    blocks = ds.blocks if edge == BLOCK else [block[:edge, :edge, :edge].copy() for block in ds.blocks]
    z, y, x = (n // BLOCK * edge for n in ds.shape)
    origins = [tuple(o // BLOCK * edge for o in origin) for origin in ds.origins]
    for _ in range(repeats):
        d = Directory(x, y, z, DTYPE, os.path.join(folder, "main.blockfs"), n_filenames=os.cpu_count() or 1,
                      x_block_size=edge, y_block_size=edge, z_block_size=edge,
                      compression="lz4", compression_level=0, durable=False)
        d.create(overwrite=True)
        d.start_writer_processes(queue_depth=QUEUE_DEPTH)
        pool = [psutil.Process(writer.process.pid) for writer in d.writers]
        children, mine = _settled_cpu(pool), _cpu(resource.RUSAGE_SELF)

        threads = [threading.Thread(target=_produce, args=(d, blocks, origins, k, producers))
                   for k in range(producers)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        spent = _cpu(resource.RUSAGE_SELF) - mine
        written = _settled_cpu(pool) - children  # once the writers have taken every block
        d.close()
        owner = min(owner, spent / len(blocks))
        writers = min(writers, written / len(blocks))
    return owner, writers


def _append_all(path: str, jobs: list[tuple[int, bytes, int]], start: multiprocessing.synchronize.Event) -> None:
    store = open_writable(path, durable=False).store
    start.wait()
    for entry, data, payload_at in jobs:
        store.append(entry, data, payload_at)


def append_seconds(ds: Dataset, folder: str, processes: int, shards: int) -> float:
    """Wall seconds per block of ``processes`` processes appending every block (encoded beforehand, lz4 1)."""
    path = os.path.join(folder, f"append-{processes}-{shards}.blockfs")
    z, y, x = ds.shape
    d = Directory(x, y, z, DTYPE, path, n_filenames=shards, compression="lz4", compression_level=1, durable=False)
    d.create(overwrite=True)
    store = d.writable.store
    layout = store.layout
    encoded = []
    for block, (bz, by, bx) in zip(ds.blocks, ds.origins):
        entry = layout.entry_index(bx, by, bz)
        encoded.append((entry, *store.encode(entry, block)))
    d.close()
    context = multiprocessing.get_context("fork")
    start = context.Event()
    # with a shard each, process k appends the blocks of shard k; on one shard, every processes-th block
    parts = ([[job for job in encoded if layout.shard_of(job[0]) == k] for k in range(processes)] if shards > 1
             else [encoded[k::processes] for k in range(processes)])
    workers = [context.Process(target=_append_all, args=(path, part, start)) for part in parts]
    for worker in workers:
        worker.start()
    time.sleep(0.5)  # every process has opened the volume
    began = time.perf_counter()
    start.set()
    for worker in workers:
        worker.join()
    return (time.perf_counter() - began) / sum(map(len, parts))


def measure(ds: Dataset, folder: str, repeats: int) -> Costs:
    compressing, stored = compress_costs(ds, repeats)
    copying = copy_cost(ds, repeats)
    owner, writers = main_path_costs(ds, folder, repeats)
    hand_off = {n: main_path_costs(ds, folder, repeats, n, HAND_OFF_EDGE)[0] for n in (1, 2)}
    cores = os.cpu_count() or 1
    counts = sorted({1, cores, 2 * cores})
    one_shard = {n: min(append_seconds(ds, folder, n, 1) for _ in range(repeats)) for n in counts}
    own_shards = {n: min(append_seconds(ds, folder, n, n) for _ in range(repeats)) for n in counts if n > 1}
    return Costs(compressing, stored, copying, owner, hand_off, writers, one_shard[1], one_shard, own_shards)


def report(costs: Costs, ds: Dataset) -> str:
    us = 1e6
    lines = [f"Scale model inputs ({len(ds.blocks)} blocks of 64^3 uint16 microscopy, {os.cpu_count()} cores):", "",
             "| per block | us |", "|---|---|"]
    lines += [f"| compress, {label}, one thread (CPU) | {s * us:,.0f} |" for label, s in costs.compress.items()]
    lines += [f"| copy into a reused buffer, one thread (CPU) | {costs.copy * us:,.1f} |",
              f"| main path owner, codec taken out, one producer thread (CPU) | {costs.owner * us:,.1f} |"]
    lines += [f"| main path owner's hand-off of an 8 KiB block, {n} producer thread{'s' * (n > 1)} (CPU) | "
              f"{seconds * us:,.1f} |" for n, seconds in costs.hand_off.items()]
    lines += [f"| main path writers, codec taken out (CPU) | {costs.writers * us:,.1f} |",
              f"| append, one process alone (wall) | {costs.append_alone * us:,.1f} |"]
    lines += [f"| append, {n} processes on one shard (wall per block) | {s * us:,.1f} |"
              for n, s in costs.one_shard.items() if n > 1]
    lines += [f"| append, {n} processes on a shard each (wall per block) | {s * us:,.1f} |"
              for n, s in costs.own_shards.items()]
    page_cache = costs.stored[APPENDED] / min(costs.own_shards.values())  # bytes/s at the best rate seen
    serial = costs.hand_off[1]  # the owner's work besides the copy, which producer threads make in parallel
    lines += ["", f"Owner: {serial * us:,.1f} us per block besides its copy of the block "
              f"({(costs.owner - serial) * us:,.1f} us, which producer threads make in parallel); "
              f"{costs.hand_off[2] * us:,.1f} us from two producer threads.", "",
              "| codec | stored KiB per block | cores the owner feeds (one producer thread) | "
              "cores the owner feeds (producers copying in parallel) | the same, hand-off as from two threads | "
              "cores one shared shard takes | cores the page cache takes (at the append rate seen) |",
              "|---|---|---|---|---|---|---|"]
    for label, seconds in costs.compress.items():
        bytes_per_core = costs.stored[label] / seconds
        lines.append(f"| {label} | {costs.stored[label] / 1024:,.0f} | {seconds / costs.owner:,.0f} | "
                     f"{seconds / serial:,.0f} | {seconds / costs.hand_off[2]:,.0f} | "
                     f"{seconds / costs.append_alone:,.0f} | {page_cache / bytes_per_core:,.0f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.scale_model", description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=parse_size, default=parse_size("512M"), help="voxel bytes (default: 512M)")
    parser.add_argument("--repeats", type=int, default=5, help="repeats of each figure, the minimum kept (default 5)")
    args = parser.parse_args(argv)
    ds = make_dataset("microscopy", args.size)
    with tempfile.TemporaryDirectory() as folder:
        costs = measure(ds, folder, args.repeats)
    print(report(costs, ds))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
