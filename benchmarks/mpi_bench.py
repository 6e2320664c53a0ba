"""Collective writes over MPI: ``mpiexec -n 2`` with every block produced on a rank that does not own
its shard, against the compress limit of the same blocks, and the bytes MPI carried.

The parent saves the data set's blocks to one ``.npy`` file; each rank loads the blocks it
produces (those whose shard the other rank owns) into memory before any clock starts. A timed
write runs from a barrier after ``create(comm=...)`` to the end of the collective ``close()`` (the
slowest rank's time), into a ``durable=False`` volume with 2 shards, as the write matrix does.
After each write the same ranks compress the same blocks once more, without writing or sending
(the slowest rank's time again): the compress limit of the same processes, measured right next to
the write, so that load from other jobs on the machine weighs on both alike. The machine-wide
limit (blosc on all cores, benchmarks/limits.py) is reported beside it.
Each rank reports its writer's traffic; the bytes handed to MPI must equal the compressed payloads
of the routed blocks plus, per block, its 32-byte record and 8-byte entry number.

Run on its own (measures the compress limit itself, and samples it again after each write)::

    python -m benchmarks.mpi_bench --size 256M --kind microscopy

or through ``python -m benchmarks`` (``--only mpi``), which uses the limit measured in its run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field

import numpy as np

from .data import BLOCK, DTYPE, KINDS, Dataset, make_dataset, parse_size, size_label
from .measure import MB, Figure

RANKS = 2
SHARDS = 2
TIMEOUT = 1800
MPI_ENV = {"OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
           "OMPI_MCA_rmaps_base_oversubscribe": "1"}
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: per routed block, besides its compressed payload: the block's record and its entry number
OVERHEAD = 32 + 8


@dataclass
class MpiResult:
    kind: str
    nbytes: int
    seconds: Figure = field(default_factory=Figure)
    compress_seconds: Figure = field(default_factory=Figure)
    routed_blocks: int = 0
    blocks: int = 0
    routed_bytes: int = 0
    routed_payload_bytes: int = 0
    stored_payload_bytes: int = 0
    correct: bool = False

    @property
    def mbps(self) -> float:
        """At the fastest round."""
        return self.nbytes / self.seconds.min / MB

    @property
    def compress_mbps(self) -> float:
        """The same ranks compressing the same blocks, nothing else, at the fastest round."""
        return self.nbytes / self.compress_seconds.min / MB

    @property
    def bytes_match(self) -> bool:
        """MPI carried exactly the routed blocks' compressed bytes (plus records and entry numbers)."""
        return (self.routed_blocks == self.blocks
                and self.routed_payload_bytes == self.stored_payload_bytes
                and self.routed_bytes == self.routed_payload_bytes + OVERHEAD * self.routed_blocks)

    @property
    def traffic(self) -> str:
        """What MPI carried, against the routed blocks' compressed bytes."""
        return (f"{self.routed_bytes:,} bytes for {self.routed_blocks} blocks = their compressed "
                f"{self.routed_payload_bytes:,} bytes + {OVERHEAD} per block "
                f"({'exact' if self.bytes_match else 'MISMATCH'}); {self.nbytes / max(1, self.routed_bytes):.2f}x "
                "less than the voxels")

    def summary(self, compress_limit: Figure) -> str:
        """One line, on the fastest rounds (``python -m benchmarks.mpi_bench``)."""
        return (f"mpiexec -n {RANKS}, every block routed: {self.mbps:,.0f} MB/s (rounds spread "
                f"{self.seconds.spread:.0%}) = {self.mbps / self.compress_mbps:.2f}x the same ranks only compressing "
                f"({self.compress_mbps:,.0f} MB/s, interleaved with the writes) and "
                f"{compress_limit.min / self.seconds.min:.2f}x the machine's compress limit "
                f"({self.nbytes / compress_limit.min / MB:,.0f} MB/s); MPI carried {self.traffic}; read back "
                f"{'equal' if self.correct else 'WRONG'}")


def missing() -> str | None:
    """Why the MPI benchmark cannot run here, or None."""
    if shutil.which("mpiexec") is None:
        return "mpiexec is not on PATH (apt-get install openmpi-bin)"
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        return f"mpi4py is not installed in {sys.prefix} (pip install mpi4py)"
    return None


def run(ds: Dataset, folder: str, repeats: int, log=print) -> MpiResult:
    """Write ``ds`` collectively on 2 ranks ``repeats`` times; check the bytes sent and every voxel."""
    work = tempfile.mkdtemp(prefix="mpi-", dir=folder)
    try:
        blocks = os.path.join(work, "blocks.npy")
        np.save(blocks, np.stack(ds.blocks))
        volume = os.path.join(work, "v.blockfs")
        command = ["mpiexec", "-n", str(RANKS), sys.executable, "-m", "benchmarks.mpi_bench", "--rank-job",
                   blocks, volume, "--shape", ",".join(map(str, ds.shape)), "--repeats", str(repeats)]
        env = {**os.environ, **MPI_ENV, "PYTHONPATH": os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")])}
        done = subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT, env=env, cwd=ROOT)
        if done.returncode != 0:
            raise RuntimeError(f"mpiexec failed ({done.returncode}): {done.stderr[-2000:]}")
        reports = next(json.loads(line) for line in done.stdout.splitlines() if line.startswith("["))
        result = MpiResult(ds.kind, ds.nbytes, seconds=Figure(reports[0]["seconds"]),
                           compress_seconds=Figure(reports[0]["compress_seconds"]), blocks=len(ds.blocks))
        for key in ("routed_blocks", "routed_bytes", "routed_payload_bytes"):
            setattr(result, key, sum(r[key] for r in reports))
        from blockfs import Directory

        with Directory.open(volume) as d:
            result.stored_payload_bytes = sum(len(d.read_block_payload(x, y, z)) for z, y, x in ds.origins)
            result.correct = ds.matches(d[...])
        log(f"  mpi write: {result.mbps:,.0f} MB/s ({result.mbps / result.compress_mbps:.2f}x the same ranks only "
            f"compressing), {result.routed_bytes:,} bytes over MPI for {result.routed_blocks} routed blocks")
        return result
    finally:
        shutil.rmtree(work, ignore_errors=True)


def rank_job(blocks_path: str, volume: str, shape: tuple[int, int, int], repeats: int) -> None:
    """One rank: load the blocks it produces, then write them ``repeats`` times, timed collectively."""
    from mpi4py import MPI

    from blockfs import Directory
    from blockfs.codec import compress

    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    origins = [(z, y, x) for z in range(0, shape[0], BLOCK) for y in range(0, shape[1], BLOCK)
               for x in range(0, shape[2], BLOCK)]
    stored = np.load(blocks_path, mmap_mode="r")
    seconds: list[float] = []
    compress_seconds: list[float] = []
    mine: list[int] = []
    blocks: list[np.ndarray] = []
    for _ in range(repeats):
        d = Directory(shape[2], shape[1], shape[0], DTYPE, volume, n_filenames=SHARDS, x_block_size=BLOCK,
                      y_block_size=BLOCK, z_block_size=BLOCK, durable=False).create(overwrite=True, comm=comm)
        writer = d.writable.sink
        if not mine:  # the blocks whose shard the next rank owns: every block is routed
            mine = [i for i, (z, y, x) in enumerate(origins)
                    if (writer.owner(d.layout.entry_index(x, y, z)) + 1) % size == rank]
            blocks = [np.array(stored[i]) for i in mine]
        comm.Barrier()
        start = MPI.Wtime()
        for i, block in zip(mine, blocks):
            z, y, x = origins[i]
            d.write_block(block, x, y, z)
        d.close()
        seconds.append(comm.allreduce(MPI.Wtime() - start, op=MPI.MAX))
        comm.Barrier()
        start = MPI.Wtime()
        for block in blocks:
            compress(block, d.layout.compression, d.layout.compression_level)
        compress_seconds.append(comm.allreduce(MPI.Wtime() - start, op=MPI.MAX))
    reports = comm.gather({"rank": rank, "seconds": seconds, "compress_seconds": compress_seconds,
                           **vars(writer.traffic)}, root=0)
    if rank == 0:  # one line: the ranks' prints could interleave
        print(json.dumps(reports), flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.mpi_bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rank-job", nargs=2, metavar=("BLOCKS_NPY", "VOLUME"), help=argparse.SUPPRESS)
    parser.add_argument("--shape", help=argparse.SUPPRESS)
    parser.add_argument("--size", default="256M", help="data size (default: %(default)s)")
    parser.add_argument("--kind", default="microscopy", choices=tuple(KINDS))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--scratch", default=tempfile.gettempdir())
    args = parser.parse_args(argv)
    if args.rank_job:
        rank_job(*args.rank_job, tuple(int(n) for n in args.shape.split(",")), args.repeats)
        return 0
    from .limits import LimitMeter

    ds = make_dataset(args.kind, parse_size(args.size))
    folder = tempfile.mkdtemp(prefix="blockfs-mpi-bench-", dir=args.scratch)
    try:
        meter = LimitMeter(ds, folder)
        results = []
        for _ in range(args.repeats):  # the limit sampled between the writes, under the same load
            results.append(run(ds, folder, 1))
            meter.sample_compress()
        result = results[0]
        for other in results[1:]:
            result.seconds.seconds += other.seconds.seconds
            result.compress_seconds.seconds += other.compress_seconds.seconds
            result.correct = result.correct and other.correct
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    print(f"{size_label(ds.nbytes)} {ds.kind}: {result.summary(meter.limits.compress)}")
    return 0 if result.bytes_match and result.correct else 1


if __name__ == "__main__":
    sys.exit(main())
