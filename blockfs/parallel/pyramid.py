"""The pyramid builder under mpiexec: ``mpiexec -n N blockfs pyramid`` on N ranks.

Rank 0 checks the destination and prepares it (journal, level 1, empty coarser levels). The
subtree tasks not yet done, largest first, are dealt in rounds of one per rank (:func:`rounds`):
in a round every rank opens levels 2..task level collectively (:mod:`blockfs.parallel.collective`),
builds its subtree in its own process, and closes them collectively, so blocks reach their
shard's owner compressed, no file lock is taken, and every block of the round is on disk and
indexed when close returns. Only then are the round's tasks recorded in the journal (by rank 0,
one file per round, the tasks' results gathered to it), so ``--resume`` (serial or under
mpiexec) redoes at most the round that was cut short, and only rank 0 ever lists the journal.
Rank 0 then builds the levels above the task level (opened collectively too) and writes ``info``.
The result equals a serial run's with as many shards: the same blocks, compressed to the same
bytes, and the same info file.
"""

from __future__ import annotations

import os
from typing import Callable, TypeVar

from tqdm import tqdm

from ..cli_support import describe
from ..directory import Directory
from ..errors import BlockfsError, WriterError
from ..pyramid import state
from ..pyramid.build import TaskResult, build_task, build_top, complete, largest_first, pending, prepare
from ..pyramid.plan import Index, Plan, make_plan
from .mpi import EXPECTED, Ranks, rounds

T = TypeVar("T")
PROG = "blockfs pyramid"


def collectively(ranks: Ranks, plan: Plan, levels: range, work: Callable[[dict[int, Directory]], T]) -> T | None:
    """Open ``levels`` "r+" on every rank, run ``work(volumes)`` here, close them on every rank.

    Raises on every rank if ``work`` or a close failed on any; the blocks written are indexed then too.
    """
    volumes = {level: Directory.open(plan.path(level), "r+", comm=ranks.comm) for level in levels}
    result, error = None, None
    try:
        result = work(volumes)
    except EXPECTED as exc:
        error = describe(exc)
    for volume in volumes.values():
        try:
            volume.close()  # collective: every rank comes here, whatever happened to it
        except EXPECTED as exc:
            error = error or describe(exc)
    ranks.agree(error, WriterError)
    return result


def _build_round(ranks: Ranks, plan: Plan, source: Directory, task: Index | None) -> None:
    """One round: this rank builds ``task`` (None: nothing), every rank closes, then rank 0 records the round."""
    result: TaskResult | None = collectively(
        ranks, plan, plan.subtree_levels, lambda volumes: None if task is None else build_task(plan, task, source, volumes))
    results = ranks.comm.gather(result, root=0) if ranks.parallel else [result]
    done = [(r.index, r.reduced) for r in results or [] if r is not None]  # None on ranks other than 0
    ranks.attempt(lambda: state.record_done(plan, done) if done else None, kind=WriterError)


def build_pyramid_ranked(source: str | os.PathLike, dest: str | os.PathLike, ranks: Ranks, levels: int | None = None,
                         method: str = "mean", voxel_size_um: tuple[float, float, float] | None = None,
                         n_shards: int | None = None, overwrite: bool = False, resume: bool = False,
                         silent: bool = True) -> str:
    """Build a pyramid of ``source`` in ``dest`` as :func:`blockfs.pyramid.build_pyramid` does, on ``ranks``.

    Every rank of ``ranks`` calls it; ``n_shards`` shard files per level (default: the number of
    CPUs). Raises on every rank if any rank fails; the tasks recorded so far stay for ``resume``.
    """
    quiet = silent or ranks.rank != 0

    def start() -> tuple[Plan, list[Index]] | None:
        if ranks.rank != 0:
            return None
        plan = prepare(make_plan(source, dest, levels, method, voxel_size_um, ranks.size), overwrite, resume, n_shards,
                       quiet)
        return plan, largest_first(plan, pending(plan))

    started = ranks.attempt(start, kind=BlockfsError)
    plan, todo = ranks.comm.bcast(started, root=0) if ranks.parallel else started  # type: ignore[misc]
    blocks = {task: plan.level1_blocks_under(plan.task_level, task) for task in plan.tasks}
    level1 = ranks.attempt(lambda: Directory.open(plan.path(1)), kind=BlockfsError)
    with level1, tqdm(total=sum(blocks.values()), initial=sum(blocks.values()) - sum(blocks[t] for t in todo),
                      unit="block", disable=quiet,
                      desc=f"{PROG} (rank 0 of {ranks.size}): {plan.levels} levels, level-1 blocks") as bar:
        for batch, task in rounds(todo, ranks):
            _build_round(ranks, plan, level1, task)
            bar.update(sum(blocks[t] for t in batch))
    if plan.top_levels:
        collectively(ranks, plan, plan.top_levels, lambda volumes: build_top(plan, volumes) if ranks.rank == 0 else None)
    ranks.attempt(lambda: complete(plan) if ranks.rank == 0 else None, kind=BlockfsError)
    return plan.dest
