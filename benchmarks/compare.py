"""blockfs side by side with the limits and the peers: same process, same data, interleaved rounds.

One comparison runs one blosc codec (``codec.Codec``), the same for every contender. Each round
writes the same in-memory volume once with every contender — the compress and the compress +
append limits, the blockfs write paths (fork Pool producers and a main-process producer with
writer processes, each with ``durable=False`` and ``durable=True``; forkserver Pool producers;
independent processes), tensorstore (``file_io_sync`` off and on), zarr-python with zarrs,
zarr-python, h5py — then reads each store back whole once (blockfs also into a caller's buffer),
beside the decompress limits (the pread one reading the files of that round's compress +
append), and times forking the fork Pool rows' Pool alone (no blocks), the part of those rows
this process's memory decides.
The order of the contenders rotates from round to round; before every timed step come
``os.sync()``, a garbage collection and a touch of as much memory as the volume (see
``measure.back_memory``). The first round's reads are compared with the data.

Finally blockfs's full read is timed again in a fresh interpreter that imports only blockfs, so
the report shows whether running the other stores first in the same process changes it.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from blockfs import Directory

from . import peers as peer_module
from .blockfs_bench import WriteConfig, fork_pool_alone, remove_volume, volume_files, write_once
from .codec import Codec
from .data import Dataset
from .limits import LimitMeter, Limits
from .measure import Figure, settle

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: Names of the rows the report and the goals look up.
COMPRESS = "limit: compress, one block per thread, all cores"
COMPRESS_APPEND = "limit: compress + append to one file per core (page cache, no fsync)"
PLACE = "limit: decompress + place into a new array"
PREAD_PLACE = "limit: pread from the page cache + decompress + place"
DECOMPRESS = "limit: decompress only (into preallocated blocks)"
MAIN_WRITE = "blockfs, main-process producer, writer processes"
FULL_READ = "blockfs `d[:, :, :]` (verified)"
READ_INTO = "blockfs `read_into` a caller's buffer (verified)"
#: How the report and the goals name each limit a store is measured against.
LIMIT_LABELS = {COMPRESS: "compress", COMPRESS_APPEND: "compress + append", PLACE: "decompress + place",
                PREAD_PLACE: "pread + decompress + place"}


@dataclass
class Row:
    """One contender's figures on one data set."""

    name: str
    role: str  # "limit", "blockfs" or "peer"
    how: str
    sync: str  # "no sync", "sync at end", "-"
    write: Figure | None = None
    read: Figure | None = None
    on_disk: int = 0
    files: int = 0
    correct: bool | None = None
    faults: list[int] = field(default_factory=list)  # minor page faults per read


@dataclass
class Comparison:
    kind: str
    nbytes: int
    shape: tuple[int, int, int]
    limits: Limits
    rows: list[Row] = field(default_factory=list)
    fresh_read: Figure = field(default_factory=Figure)
    fresh_faults: list[int] = field(default_factory=list)
    #: forking the fork Pool rows' Pool from this process and ending it, no blocks written
    fork_pool: Figure = field(default_factory=Figure)
    load: tuple[tuple[float, ...], tuple[float, ...]] = ((), ())

    @property
    def codec(self) -> Codec:
        return self.limits.codec

    def row(self, name: str) -> Row | None:
        return next((r for r in self.rows if r.name == name), None)

    def fork_pool_row(self) -> Row | None:
        """blockfs's fork Pool write without sync."""
        return next((r for r in self.rows if r.name.startswith("blockfs, fork Pool") and r.sync == "no sync"), None)

    def without_pool_fork(self, row: Row) -> float | None:
        """A fork Pool row's fastest write less the fastest fork and end of its Pool alone, in seconds."""
        if row.write is None or not row.write.samples or not self.fork_pool.samples:
            return None
        return row.write.min - self.fork_pool.min


def _faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def _timed(action: Callable[[], object], nbytes: int) -> tuple[float, object]:
    settle(nbytes)
    start = time.perf_counter()
    result = action()
    return time.perf_counter() - start, result


@dataclass
class _BlockfsWriter:
    row: Row
    config: WriteConfig
    path: str

    def write(self, ds: Dataset) -> float:
        settle(ds.nbytes)
        return write_once(ds, self.path, self.config, os.path.dirname(self.path))[0]


def _blockfs_rows(folder: str, workers: int, codec: Codec) -> list[_BlockfsWriter]:
    made = []
    for mode, label, durabilities in (("pool", f"blockfs, fork Pool of {workers} producers", (False, True)),
                                      ("main", MAIN_WRITE, (False, True)),
                                      ("forkserver", f"blockfs, forkserver Pool of {workers} producers", (False,)),
                                      ("processes", f"blockfs, {workers} independent processes", (False,))):
        for durable in durabilities:
            config = WriteConfig(mode, 1 if mode == "main" else workers, workers, durable, codec)
            how = f"{workers} shards, queue_depth 10, durable={durable}"
            row = Row(f"{label}{', durable' if durable else ''}", "blockfs", how,
                      "sync at end" if durable else "no sync", Figure())
            made.append(_BlockfsWriter(row, config, os.path.join(folder, f"cmp-{mode}-{int(durable)}.blockfs")))
    return made


def fresh_process_reads(path: str, repeats: int, nbytes: int) -> tuple[list[float], list[int]]:
    """Seconds and minor page faults of ``repeats`` full reads in a new interpreter that imports only blockfs."""
    code = ("import json, os, resource, sys, time\nsys.path.insert(0, sys.argv[1])\nfrom blockfs import Directory\n"
            "from benchmarks.measure import settle\n"
            "times, faults = [], []\nfor _ in range(int(sys.argv[3])):\n    settle(int(sys.argv[4]))\n"
            "    f = resource.getrusage(resource.RUSAGE_SELF).ru_minflt\n    start = time.perf_counter()\n"
            "    with Directory.open(sys.argv[2]) as d:\n        data = d[:, :, :]\n"
            "    times.append(time.perf_counter() - start)\n"
            "    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f)\n    del data\n"
            "print(json.dumps([times, faults]))")
    done = subprocess.run([sys.executable, "-c", code, ROOT, path, str(repeats), str(nbytes)], capture_output=True,
                          text=True,
                          timeout=600, cwd=ROOT)
    if done.returncode:
        raise RuntimeError(f"{path}: the fresh reader process failed:\n{done.stderr.strip()}")
    times, faults = json.loads(done.stdout.strip().splitlines()[-1])
    return times, faults


Sampling = list[tuple[Row, Callable[[], float]]]


def _limit_rows(meter: LimitMeter) -> tuple[Sampling, Sampling]:
    """The limits' rows with the calls that sample them: (write limits, read limits)."""
    how = f"{meter.workers} threads, c-blosc context calls, 1 blosc thread each, GIL released"
    files = f"{how}; os.pwrite to / os.preadv from one file per thread in the benchmark's folder"
    writes = [(Row(COMPRESS, "limit", how, "-", Figure()), meter.sample_compress),
              (Row(COMPRESS_APPEND, "limit", files, "no sync", Figure()), meter.sample_compress_append)]
    reads = [(Row(PLACE, "limit", how, "-", None, Figure()), meter.sample_place),
             (Row(PREAD_PLACE, "limit", files, "-", None, Figure()), meter.sample_pread_place),
             (Row(DECOMPRESS, "limit", how, "-", None, Figure()), meter.sample_decompress)]
    return writes, reads


def _settled(sample: Callable[[], float], nbytes: int) -> Callable[[], float]:
    """``sample`` preceded by the settling that comes before every timed step."""
    def action() -> float:
        settle(nbytes)
        return sample()
    return action


def run(ds: Dataset, meter: LimitMeter, folder: str, repeats: int, peer_names: list[str],
        log: Callable[[str], None]) -> Comparison:
    """Every contender with the meter's codec, ``repeats`` interleaved rounds, on one data set (the
    limits sampled into ``meter``)."""
    workers, codec = meter.workers, meter.codec
    result = Comparison(ds.kind, ds.nbytes, ds.shape, meter.limits, load=(os.getloadavg(), ()))
    limit_writes, limit_reads = _limit_rows(meter)
    blockfs_writers = _blockfs_rows(folder, workers, codec)
    reader = blockfs_writers[2]  # main-process producer, no sync: one shard per core
    blockfs_read = Row(FULL_READ, "blockfs", "Directory.open(path)[:, :, :], CRC32C of every block checked", "-",
                       None, Figure())
    blockfs_read_into = Row(READ_INTO, "blockfs",
                            "Directory.open(path).read_into(out), `out` allocated and touched once before the rounds",
                            "-", None, Figure())
    stores = peer_module.make(peer_names, codec)
    peer_rows = {id(p): Row(p.name, "peer", p.how, "sync at end" if p.sync else "no sync", Figure(),
                            None if p.sync else Figure()) for p in stores}
    paths = {id(p): os.path.join(folder, f"cmp-peer-{k}") for k, p in enumerate(stores)}
    volume = ds.volume()
    result.rows = [row for row, _ in limit_writes + limit_reads] + [w.row for w in blockfs_writers] + \
        [blockfs_read, blockfs_read_into] + [peer_rows[id(p)] for p in stores]
    writes = [(row, _settled(sample, ds.nbytes)) for row, sample in limit_writes]
    writes += [(w.row, (lambda w=w: w.write(ds))) for w in blockfs_writers]
    writes += [(peer_rows[id(p)], (lambda p=p: _timed(lambda: (peer_module.remove(paths[id(p)]),
                                                               p.write(paths[id(p)], volume)), ds.nbytes)[0]))
               for p in stores]

    def read_blockfs() -> object:
        with Directory.open(reader.path) as d:
            return d[:, :, :]

    buffer = np.ones(ds.shape, volume.dtype)

    def read_into_blockfs() -> object:
        with Directory.open(reader.path) as d:
            return d.read_into(buffer)

    reads: list[tuple[Row, Callable[[], object]]] = [(blockfs_read, read_blockfs),
                                                     (blockfs_read_into, read_into_blockfs)]
    reads += [(peer_rows[id(p)], (lambda p=p: p.read(paths[id(p)]))) for p in stores if not p.sync]
    reads = [(row, _settled(sample, ds.nbytes)) for row, sample in limit_reads] + reads
    try:
        for r in range(repeats):
            shift = r % len(writes)
            for row, action in writes[shift:] + writes[:shift]:
                for w in blockfs_writers:  # a new volume each round, created before the clock
                    if w.row is row:
                        remove_volume(w.path, w.config.shards)
                row.write.add(action())
            shift = r % len(reads)
            for row, action in reads[shift:] + reads[:shift]:
                if row.role == "limit":
                    row.read.add(action())
                    continue
                faults = _faults()
                seconds, data = _timed(action, ds.nbytes)
                row.faults.append(_faults() - faults)
                row.read.add(seconds)
                if r == 0:
                    row.correct = ds.matches(data)
                del data
            settle(ds.nbytes)
            result.fork_pool.add(fork_pool_alone(workers))
            meter.sample_block_decompress()
            log(f"  round {r + 1}/{repeats}: write ms " + " / ".join(f"{row.write.seconds[-1] * 1000:.0f}"
                                                                    for row, _ in writes)
                + "; read ms " + " / ".join(f"{row.read.seconds[-1] * 1000:.0f}" for row in result.rows if row.read)
                + f"; fork Pool alone {result.fork_pool.seconds[-1] * 1000:.0f} ms")
        append = result.row(COMPRESS_APPEND)
        append.on_disk, append.files = meter.limits.compressed_bytes, workers
        for w in blockfs_writers:
            w.row.on_disk = sum(os.path.getsize(p) for p in volume_files(w.path, w.config.shards))
            w.row.files = len(volume_files(w.path, w.config.shards))
        for p in stores:
            peer_rows[id(p)].on_disk, peer_rows[id(p)].files = peer_module.footprint(paths[id(p)])
        times, faults = fresh_process_reads(reader.path, repeats, ds.nbytes)
        for seconds in times:
            result.fresh_read.add(seconds)
        result.fresh_faults = faults
    finally:
        for w in blockfs_writers:
            remove_volume(w.path, w.config.shards)
        for p in stores:
            peer_module.remove(paths[id(p)])
    result.load = (result.load[0], os.getloadavg())
    reader.row.correct = blockfs_read.correct
    log(f"  {codec.label}: blockfs full read: {blockfs_read.read.min * 1000:.0f} ms min in this process, "
        f"{result.fresh_read.min * 1000:.0f} ms min in a fresh one")
    return result
