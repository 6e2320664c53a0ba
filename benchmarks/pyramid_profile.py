"""Where a pyramid build's time goes, beside its limit (decompress level 1 + compress the output).

    python -m benchmarks.pyramid_profile [--size 1G] [--rounds 3]

*Phases*: ``build_pyramid`` (5 levels, all cores) in a fresh process, as ``benchmarks.pyramid_bench``
runs it, with the time of its steps: ``prepare`` (the folder, level 1 linked, the empty levels), the
tasks (the subtrees in the worker pool; the checkpoints run meanwhile in the main process), the final
checkpoint and ``finish`` (the top levels, ``info``), and the CPU seconds of its workers and of its
main process. The limit runs after each build, its CPU taken as its wall time on every core.

*Steps*: every task once more, in this process (one worker), each step timed over all of them:
reading a level-1 block (against decompressing the same stored bytes alone), reducing it, finishing
an output block, writing it (against compressing the same block alone), and the rest.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Iterator
from typing import Any

from blockfs.pyramid import build, reduce, state
from blockfs.pyramid.plan import make_plan
from blockfs.volume import Volume
from blockfs.writable import WritableVolume

from .data import make_dataset, parse_size
from .measure import settle
from .pyramid_bench import LEVELS, limit, write_source

#: The build in a fresh process, its steps timed by wrapping them; prints one JSON object of seconds.
PHASES = """
import json, resource, sys, time
from blockfs.pyramid import build, state
seconds, marks = {"checkpoints": 0.0}, {}
def timed(name, function):
    def call(*args, **kwargs):
        begin = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            seconds[name] = seconds.get(name, 0.0) + time.perf_counter() - begin
    return call
def results(*args, run=build._run):
    marks["pool"] = time.perf_counter()
    for result in run(*args):
        marks["last result"] = time.perf_counter()
        yield result
build._run, build._checkpoint = results, timed("checkpoints", build._checkpoint)
state.prepare, build.finish = timed("prepare", state.prepare), timed("finish", build.finish)
start = time.perf_counter()
build.build_pyramid(sys.argv[1], sys.argv[2], levels=int(sys.argv[3]), overwrite=True, silent=True)
end = time.perf_counter()
seconds["tasks"] = marks["last result"] - marks["pool"]
seconds["after the last task"] = end - marks["last result"]
workers, main = resource.getrusage(resource.RUSAGE_CHILDREN), resource.getrusage(resource.RUSAGE_SELF)
seconds["workers CPU"] = workers.ru_utime + workers.ru_stime
seconds["main CPU"] = main.ru_utime + main.ru_stime
seconds["total"] = end - start
print(json.dumps(seconds))
"""


def phases(source: str, dest: str, rounds: int, nbytes: int) -> None:
    cores = os.cpu_count() or 1
    for r in range(rounds):
        settle(nbytes)
        out = subprocess.run([sys.executable, "-c", PHASES, source, dest, str(LEVELS)], capture_output=True,
                             text=True, check=True).stdout
        seconds = json.loads(out)
        settle(nbytes)
        decompress, compress, _ = limit(source, dest, cores)
        bound = decompress + compress
        print(f"round {r + 1}: build {seconds['total']:.3f} s = {seconds['total'] / bound:.2f}x the limit "
              f"{bound:.3f} s (decompress {decompress:.3f} + compress {compress:.3f}); "
              + ", ".join(f"{k} {v:.3f}" for k, v in seconds.items() if k != "total")
              + f"; workers' CPU {seconds['workers CPU'] / (bound * cores):.2f}x the limit's")


@contextlib.contextmanager
def _timing(where: Any, name: str, totals: dict[str, float], calls: dict[str, int]) -> Iterator[None]:
    """Add the seconds of every call of ``where.name`` to ``totals[name]`` while inside."""
    function = getattr(where, name)

    def call(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            totals[name] += time.perf_counter() - start
            calls[name] += 1

    setattr(where, name, call)
    try:
        yield
    finally:
        setattr(where, name, function)


def steps(source: str, dest: str) -> None:
    plan = state.prepare(make_plan(source, dest, LEVELS, n_workers=os.cpu_count()), overwrite=True)
    totals: dict[str, float] = defaultdict(float)
    calls: dict[str, int] = defaultdict(int)
    with contextlib.ExitStack() as stack:
        for where, name in [(Volume, "read_block_into"), (reduce, "_sum"), (reduce.Method, "finish"),
                            (WritableVolume, "write_block"), (build, "run_task")]:
            stack.enter_context(_timing(where, name, totals, calls))
        for _ in build.build_tasks(plan, plan.tasks, n_workers=1):  # in this process, recorded as done
            pass
    build.finish(plan)
    decompressing, compressing, outputs = limit(source, dest, 1)
    total = totals.pop("run_task")
    print(f"tasks serially: {total:.3f} s over {calls['run_task']} tasks; of which")
    for name, seconds in totals.items():
        print(f"  {name}: {seconds:.3f} s over {calls[name]} calls ({seconds / calls[name] * 1e6:.0f} us each)")
    print(f"  the rest (the octree's Python, assembling accumulators, opening levels): "
          f"{total - sum(totals.values()):.3f} s")
    print(f"on one thread alone: decompressing every level-1 block {decompressing:.3f} s, compressing all "
          f"{outputs} output blocks (the tasks' and the top levels') {compressing:.3f} s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.pyramid_profile", description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=parse_size, default=parse_size("1G"))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--scratch", default="/tmp")
    args = parser.parse_args(argv)
    folder = os.path.join(args.scratch, f"blockfs-pyramid-profile-{os.getpid()}")
    os.makedirs(folder)
    try:
        source, dest = os.path.join(folder, "source.blockfs"), os.path.join(folder, "pyramid")
        ds = make_dataset("microscopy", args.size)
        write_source(ds, source)
        del ds
        phases(source, dest, args.rounds, args.size)
        steps(source, dest)
    finally:
        shutil.rmtree(folder)
    return 0


if __name__ == "__main__":
    sys.exit(main())
