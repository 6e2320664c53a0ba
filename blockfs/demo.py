"""The demo: write a ~1 GiB microscopy-like volume with parallel writers, read it back, verify, build its pyramid.

Run ``make demo`` (or ``python -m blockfs.demo --help``).
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import shlex
import shutil
import sys
import time
from typing import Any

import numpy as np
from tqdm import tqdm

from .cli._support import number, run_tool
from .pyramid import open_pyramid
from .pyramid.build import build_pyramid
from .sample import microscopy_block
from .volume import open_volume
from .writable import create_volume

BLOCK = 64


def _generate(origin: tuple[int, int, int]) -> tuple[tuple[int, int, int], np.ndarray]:
    return origin, microscopy_block(origin, (BLOCK, BLOCK, BLOCK), seed=0)


def _tool() -> list[str]:
    """The command that runs the ``blockfs`` tool of this installation from any folder, without activation."""
    script = os.path.join(os.path.dirname(os.path.abspath(sys.executable)), "blockfs")
    if os.access(script, os.X_OK):
        return [script]
    return [os.path.abspath(sys.executable), "-m", "blockfs"]


def next_steps(pyramid: str) -> list[tuple[str, str]]:
    """The commands (each runnable as printed, from any folder) that look at the demo's pyramid, with what they do."""
    tool, folder = _tool(), os.path.abspath(pyramid)
    return [(shlex.join([*tool, "info", folder]), "its levels, shapes and blocks"),
            (shlex.join([*tool, "view", folder]), "Neuroglancer: prints a URL to open (a browser opens if there is "
                                                  "a display); Ctrl-C stops it")]


def run(output: str, shape: tuple[int, int, int], silent: bool) -> dict[str, Any]:
    """Generate, write, read back and verify a sample volume; return the figures."""
    origins = [(z, y, x) for z in range(0, shape[0], BLOCK) for y in range(0, shape[1], BLOCK)
               for x in range(0, shape[2], BLOCK)]
    expected = np.empty(shape, np.uint16)
    with multiprocessing.get_context("fork").Pool() as pool:
        for (z, y, x), block in tqdm(pool.imap_unordered(_generate, origins, chunksize=8), total=len(origins),
                                     desc="generating", unit="block", disable=silent):
            expected[z:z + BLOCK, y:y + BLOCK, x:x + BLOCK] = block
    os.makedirs(output, exist_ok=True)
    path = os.path.join(output, "sample.blockfs")
    volume = create_volume(path, shape, np.uint16, (BLOCK, BLOCK, BLOCK),
                           metadata={"voxel_size_um": [1.8, 1.8, 2.0], "source": "blockfs.demo"})
    start = time.perf_counter()
    volume.start_writers()
    for z, y, x in tqdm(origins, desc="writing", unit="block", disable=silent):
        volume.write_block(expected[z:z + BLOCK, y:y + BLOCK, x:x + BLOCK], x, y, z)
    volume.close()
    write_seconds = time.perf_counter() - start

    reader = open_volume(path)
    start = time.perf_counter()
    mismatched = 0
    for z in tqdm(range(0, shape[0], BLOCK), desc="reading", unit="slab", disable=silent):
        mismatched += int(np.count_nonzero(reader[z:z + BLOCK] != expected[z:z + BLOCK]))
    read_seconds = time.perf_counter() - start
    shards = reader.store.spec.shard_paths
    on_disk = sum(os.path.getsize(p) for p in [path, *shards])
    reader.close()
    if mismatched:
        raise SystemExit(f"blockfs demo: {path}: {mismatched} voxels differ from what was written")
    start = time.perf_counter()
    pyramid = build_pyramid(path, os.path.join(output, "pyramid"), overwrite=True, silent=silent)
    pyramid_seconds = time.perf_counter() - start
    return {"path": path, "voxels": expected.size, "bytes": expected.nbytes, "on_disk": on_disk,
            "write_seconds": write_seconds, "read_seconds": read_seconds, "shards": len(shards),
            "pyramid": pyramid, "pyramid_seconds": pyramid_seconds,
            "levels": [v.shape for v in open_pyramid(pyramid).levels]}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="blockfs-demo", description=__doc__.splitlines()[0],
        epilog="example: python -m blockfs.demo --output demo-output --size-gib 0.25")
    parser.add_argument("--output", default="demo-output", help="folder for the volume (default: %(default)s)")
    parser.add_argument("--size-gib", type=number(float, "expected a positive number of GiB", low=0, above=True),
                        default=1.0, help="approximate volume size (default: 1)")
    parser.add_argument("--silent", action="store_true", help="no progress bars")
    return parser


def main(argv: list[str] | None = None) -> int:
    """blockfs demo: write, read back and verify a sample volume; print the figures and what to try next."""
    parser = build_parser()

    def body(args: argparse.Namespace) -> int:
        side = max(BLOCK, int(round((args.size_gib * 2**30 / 2 / 2) ** (1 / 3) / BLOCK)) * BLOCK)
        shape = (side, 2 * side, side)
        if shutil.disk_usage(os.path.dirname(os.path.abspath(args.output))).free < 2 * np.prod(shape) * 2:
            print(f"{parser.prog}: {args.output}: not enough free disk for a {args.size_gib} GiB volume",
                  file=sys.stderr)
            return 1
        r = run(args.output, shape, args.silent)
        mb = r["bytes"] / 1e6
        print(f"\nwrote and verified {r['voxels']:,} voxels (z, y, x = {shape}, uint16, 64^3 blocks, zstd 5, "
              f"{r['shards']} shards)")
        print(f"  data            {r['bytes'] / 2**20:,.0f} MiB uncompressed, {r['on_disk'] / 2**20:,.0f} MiB on disk "
              f"(compression ratio {r['bytes'] / r['on_disk']:.2f})")
        print(f"  write           {mb / r['write_seconds']:,.0f} MB/s ({r['write_seconds']:.1f} s, parallel writers)")
        print(f"  read + verify   {mb / r['read_seconds']:,.0f} MB/s ({r['read_seconds']:.1f} s)")
        print(f"  pyramid         {len(r['levels'])} levels (mean), {mb / r['pyramid_seconds']:,.0f} MB/s "
              f"({r['pyramid_seconds']:.1f} s); coarsest {' x '.join(map(str, r['levels'][-1]))} (z, y, x)")
        print(f"  pyramid folder  {os.path.abspath(r['pyramid'])}")
        print("\nnext steps (each command runs as printed, from any folder):")
        for command, what in next_steps(r["pyramid"]):
            print(f"  $ {command}\n      {what}")
        bin_dir = os.path.dirname(os.path.abspath(sys.executable))
        if os.path.isfile(os.path.join(bin_dir, "activate")):
            print(f"the tools are in {bin_dir}; `. {shlex.quote(os.path.join(bin_dir, 'activate'))}` puts them on "
                  "PATH for this shell (then `blockfs view ...` as the README writes it)")
        return 0

    return run_tool(parser, body, argv)


if __name__ == "__main__":
    sys.exit(main())
