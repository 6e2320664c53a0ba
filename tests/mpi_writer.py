"""One rank of a collective write, run by the MPI tests as ``mpiexec -n N python mpi_writer.py ...``.

Each block is written by the rank after its shard's owner (with one rank, by that rank), so each
block travels to its owner, unless ``--local`` is given. Every block's voxels follow from its
origin alone (:func:`block_content`), so the test regenerates them to check every voxel.

``--opens LOG`` records, through a Python audit hook, every file this rank opens: one JSON line
per open with its path, flags or mode, and the phase ("create" until ``create`` returns, then
"write"). ``--kill-rank R --kill-after K`` makes rank R print "killed at <time.time()>" and SIGKILL itself
after its K-th block
(``--slow S`` naps S seconds after each block, so the others are mid-write when it dies; with
``--slow-rank R`` only rank R naps, so it rarely serves the others' messages). At the
end rank 0 prints one JSON line: each rank's writer traffic, or how its writes failed.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time

import numpy as np

SHAPE = (40, 72, 88)  # z, y, x: edge blocks are partial on every axis
BLOCK = 16


def block_content(origin: tuple[int, int, int], shape: tuple[int, int, int]) -> np.ndarray:
    """The voxels of the block whose first voxel is ``origin`` (z, y, x): noise seeded by the origin."""
    return np.random.default_rng(list(origin)).integers(0, 3000, shape, dtype=np.uint16)


def expected_volume() -> np.ndarray:
    volume = np.zeros(SHAPE, np.uint16)
    for z in range(0, SHAPE[0], BLOCK):
        for y in range(0, SHAPE[1], BLOCK):
            for x in range(0, SHAPE[2], BLOCK):
                shape = tuple(min(BLOCK, n - o) for n, o in zip(SHAPE, (z, y, x)))
                volume[z:z + shape[0], y:y + shape[1], x:x + shape[2]] = block_content((z, y, x), shape)
    return volume


def record_opens(log: str, phase: list[str]) -> None:
    """Append one JSON line per file opened by this process to ``log``."""
    out = open(log, "a", buffering=1)

    def hook(event: str, args: tuple) -> None:
        if event == "open" and isinstance(args[0], (str, bytes, os.PathLike)):
            path = os.fsdecode(args[0])
            if path != log:
                out.write(json.dumps({"path": os.path.abspath(path), "mode": args[1], "flags": args[2],
                                      "phase": phase[0]}) + "\n")

    sys.addaudithook(hook)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("volume")
    parser.add_argument("--shards", type=int, default=3)
    parser.add_argument("--local", action="store_true", help="write the blocks this rank owns instead")
    parser.add_argument("--opens")
    parser.add_argument("--kill-rank", type=int, default=-1)
    parser.add_argument("--kill-after", type=int, default=0)
    parser.add_argument("--slow", type=float, default=0.0)
    parser.add_argument("--slow-rank", type=int, default=None, help="only this rank naps (--slow)")
    parser.add_argument("--no-records", action="store_true")
    parser.add_argument("--open", action="store_true", help="open the existing volume (r+) instead of creating it")
    parser.add_argument("--offset-bits", type=int, default=None, help="too few make appends fail")
    args = parser.parse_args()
    from mpi4py import MPI

    from blockfs import Directory, WriterError

    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    phase = ["create"]
    if args.opens:
        record_opens(f"{args.opens}.{rank}", phase)
    if args.open:
        d = Directory.open(args.volume, "r+", comm=comm)
    else:
        d = Directory(SHAPE[2], SHAPE[1], SHAPE[0], np.uint16, args.volume, n_filenames=args.shards,
                      x_block_size=BLOCK, y_block_size=BLOCK, z_block_size=BLOCK,
                      n_offset_bits=args.offset_bits, records=not args.no_records).create(comm=comm)
    phase[0] = "write"
    writer = d.writable.sink
    mine = []
    for z in range(0, SHAPE[0], BLOCK):
        for y in range(0, SHAPE[1], BLOCK):
            for x in range(0, SHAPE[2], BLOCK):
                owner = writer.owner(d.layout.entry_index(x, y, z))
                if (owner if args.local else (owner + 1) % size) == rank:
                    mine.append((x, y, z))
    failed = []
    for count, (x, y, z) in enumerate(mine, 1):
        try:
            d.write_block(block_content((z, y, x), d.get_block_size(x, y, z)), x, y, z)
        except WriterError as exc:  # this rank's own appends failed: the others hear of it at close()
            failed.append(str(exc))
            break
        if rank == args.kill_rank and count == args.kill_after:
            print(f"killed at {time.time()}", flush=True)
            os.kill(os.getpid(), signal.SIGKILL)
        if args.slow_rank in (None, rank):
            time.sleep(args.slow)
    report = {"rank": rank, "blocks": len(mine)}
    try:
        d.close()
        report.update(vars(writer.traffic))
    except WriterError as exc:
        report.update(failed_at_write=failed, failed_at_close=str(exc))
    reports = comm.gather(report, root=0)  # one line from rank 0: ranks' prints may interleave
    if rank == 0:
        print(json.dumps(reports), flush=True)
    return 3 if "failed_at_close" in report else 0

if __name__ == "__main__":
    sys.exit(main())
