"""``blockfs check`` beside reading the shard files whole (``cat`` to /dev/null), the page cache warm for both.

    python -m benchmarks.check_speed [--size 4G] [--data microscopy] [--repeats 7] [--scratch /tmp]

A volume of ``--size`` of voxels (64^3 blocks, one shard per core, with records) is written once;
then, in interleaved rounds, each after one untimed ``cat`` of every file: ``cat`` of the index and
the shards, the ``blockfs check`` command (a new interpreter, its start included), ``check_volume``
in this process, and ``check_volume(deep=True)`` (every block decompressed too). Goal: the check
at >= 0.8x the speed of ``cat``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from blockfs import create_volume
from blockfs.ops.check import check_volume

from .data import BLOCK, DTYPE, KINDS, make_dataset, parse_size
from .measure import Figure, shown

#: The check's speed against cat's that the goal asks for.
GOAL = 0.8


def write(path: str, kind: str, nbytes: int) -> int:
    """Write the volume; its stored bytes (index and shards)."""
    ds = make_dataset(kind, nbytes)
    with create_volume(path, ds.shape, DTYPE, (BLOCK,) * 3, durable=False) as volume, \
            ThreadPoolExecutor(os.cpu_count()) as pool:
        list(pool.map(lambda i: volume.write_block(ds.blocks[i], *reversed(ds.origins[i])), range(len(ds.blocks))))
    return sum(os.path.getsize(f) for f in files(path))


def files(path: str) -> list[str]:
    """The volume's index and shard files."""
    folder, name = os.path.split(path)
    return [os.path.join(folder, n) for n in sorted(os.listdir(folder)) if n.startswith(name)]


def contenders(path: str) -> dict[str, Callable[[], object]]:
    cat = ["cat", *files(path)]

    def healthy(deep: bool) -> None:
        if not check_volume(path, deep=deep).healthy:
            raise RuntimeError(f"{path}: check found problems")

    return {
        "cat (index and shards to /dev/null)": lambda: subprocess.run(cat, stdout=subprocess.DEVNULL, check=True),
        "`blockfs check` (new interpreter)": lambda: subprocess.run(
            [sys.executable, "-m", "blockfs.cli", "check", path, "--silent"], stdout=subprocess.DEVNULL, check=True),
        "`check_volume(path)` in process": lambda: healthy(False),
        "`check_volume(path, deep=True)`": lambda: healthy(True),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.check_speed", description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=parse_size, default=parse_size("4G"), help="voxel bytes (default: 4G)")
    parser.add_argument("--data", choices=sorted(KINDS), default="microscopy", help="data kind (default: microscopy)")
    parser.add_argument("--repeats", type=int, default=7, help="interleaved rounds (default: 7)")
    parser.add_argument("--scratch", default=None, help="folder for the volume (default: a temporary one)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(dir=args.scratch) as folder:
        path = os.path.join(folder, "check.blockfs")
        stored = write(path, args.data, args.size)
        runs = contenders(path)
        figures = {name: Figure() for name in runs}
        for r in range(args.repeats):
            names = list(runs)
            for name in names[r % len(names):] + names[:r % len(names)]:
                subprocess.run(["cat", *files(path)], stdout=subprocess.DEVNULL, check=True)  # the page cache warm
                start = time.perf_counter()
                runs[name]()
                figures[name].add(time.perf_counter() - start)
    cat = figures[next(iter(runs))]
    print(f"{args.size / 2**30:g} GiB {args.data} ({stored / 2**30:.2f} GiB stored), {args.repeats} rounds, "
          f"{os.cpu_count()} cores\n")
    print("| what | ms min / median (spread) | GB/s at min | x cat (goal >= 0.8x) |\n|---|---|---|---|")
    for name, figure in figures.items():
        ratio = cat.min / figure.min
        verdict = "" if figure is cat else f"{ratio:.2f}x {'met' if ratio >= GOAL else 'missed'}"
        print(f"| {name} | {shown(figure)} | {stored / figure.min / 1e9:.1f} | {verdict} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
