"""Index bytes a region read costs: a z-column, a row of blocks and one block of a large, sparse volume.

    python -m benchmarks.index_reads [--side 10000] [--block 64]

The volume is created empty (its index is a header and a hole), so any side costs no disk; one block
is written where the reads cross. Every ``pread`` of the index is counted.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Callable

import numpy as np

from blockfs import create_volume, open_volume
from blockfs.storage import VolumeFiles


def counted(read: Callable[[], object]) -> tuple[int, int, float]:
    """(index bytes, index reads, seconds) of ``read()``."""
    sizes: list[int] = []
    real = VolumeFiles.read_index

    def counting(self: VolumeFiles, offset: int, size: int) -> bytes:
        sizes.append(size)
        return real(self, offset, size)

    VolumeFiles.read_index = counting  # type: ignore[method-assign]  # counted for this call only
    try:
        start = time.perf_counter()
        read()
        return sum(sizes), len(sizes), time.perf_counter() - start
    finally:
        VolumeFiles.read_index = real  # type: ignore[method-assign]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.index_reads", description=__doc__.split("\n\n")[0])
    parser.add_argument("--side", type=int, default=10_000, help="voxels a side (default: 10000)")
    parser.add_argument("--block", type=int, default=64, help="block side (default: 64)")
    args = parser.parse_args(argv)
    middle = args.side // 2 // args.block * args.block
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "sparse.blockfs")
        with create_volume(path, (args.side,) * 3, "uint16", (args.block,) * 3, shards=2) as volume:
            volume.write_block(np.ones((args.block,) * 3, np.uint16), middle, middle, 0)
        volume = open_volume(path)
        print(f"{args.side}^3 uint16 in {args.block}^3 blocks: grid {volume.grid}, "
              f"{volume.layout.entry_size} bytes per index entry")
        near = slice(middle, middle + args.block)
        for what, region in [("column v[:, y, x]", np.s_[:, middle, middle]),
                             ("row of blocks v[0:b, y:y+b, :]", np.s_[0:args.block, near, :]),
                             ("one block", np.s_[0:args.block, near, near])]:
            size, reads, seconds = counted(lambda region=region: volume[region])
            print(f"  {what:32} {size:>12,} index bytes in {reads:>4} reads, {seconds * 1e3:8.1f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
