"""The pyramid build on MPI ranks: ``mpiexec -n N blockfs pyramid`` (``build_pyramid(..., ranks=...)``).

Rank 0 checks the destination and prepares it (journal, level 1, empty coarser levels). The
subtree tasks not yet done, largest first, are dealt in rounds of one per rank (:func:`rounds`).
Every rank builds its tasks in its own process, writing levels 2..task level opened
collectively (:mod:`blockfs.parallel.collective`): blocks reach their shard's owner compressed
and no file lock is taken. At each checkpoint (every ``checkpoint_seconds`` by rank 0's clock,
and after the last round) the levels are closed collectively, so every block written so far is
on disk and indexed, and only then does rank 0 record the tasks since the last checkpoint in the
journal (their results gathered to it): ``--resume`` (serial or under mpiexec) redoes only the
tasks built since. Rank 0 then builds the levels above the task level (opened collectively too)
and writes ``info``. The result equals a serial run's with as many shards: the same blocks,
compressed to the same bytes, and the same info file.
"""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import Callable, Iterator
from typing import TypeVar

from tqdm import tqdm

from ..errors import USER_ERRORS, BlockfsError, WriterError, describe
from ..parallel.collective import open_collective
from ..parallel.mpi import Ranks, rounds
from ..volume import Volume, open_volume
from ..writable import WritableVolume
from . import state
from .octree import TaskResult, build_task, build_top
from .plan import Index, Plan, largest_first

T = TypeVar("T")


def _open(ranks: Ranks, plan: Plan, levels: range) -> dict[int, WritableVolume]:
    return {level: open_collective(plan.path(level), "r+", ranks.comm) for level in levels}  # type: ignore[misc]


def _close(volumes: dict[int, WritableVolume], error: str | None) -> str | None:
    """Close ``volumes`` (collective: every rank comes here, whatever happened to it); ``error``, else the first
    failure of a close."""
    for volume in volumes.values():
        try:
            volume.close()
        except USER_ERRORS as exc:
            error = error or describe(exc)
    return error


def collectively(ranks: Ranks, plan: Plan, levels: range,
                 work: Callable[[dict[int, WritableVolume]], T]) -> T | None:
    """Open ``levels`` for writing on every rank, run ``work(volumes)`` here, close them on every rank.

    Raises on every rank if ``work`` or a close failed on any; the blocks written are indexed then too.
    """
    volumes = _open(ranks, plan, levels)
    result, error = None, None
    try:
        result = work(volumes)
    except USER_ERRORS as exc:
        error = describe(exc)
    ranks.agree(_close(volumes, error), WriterError)
    return result


def _record(plan: Plan, parts: list[list[TaskResult]] | None) -> None:
    """Rank 0: record the tasks every rank finished (``parts``: None on the other ranks)."""
    done = [(result.index, result.reduced) for part in parts or [] for result in part]
    if done:
        state.record_done(plan, done)


def build_rounds(ranks: Ranks, plan: Plan, source: Volume, todo: list[Index],
                 checkpoint_seconds: float) -> Iterator[list[Index]]:
    """Build this rank's tasks of ``todo``, one task per rank per round, into the levels opened
    collectively; yield, at each checkpoint, the tasks of every rank since the last one.

    A checkpoint comes once ``checkpoint_seconds`` have passed on rank 0's clock, after the last
    round, and when a task failed on any rank: the levels are closed collectively (every block of
    those rounds is then on disk and indexed), and only then does rank 0 record the tasks. A
    failure then raises on every rank.
    """
    work = list(rounds(todo, ranks))
    volumes: dict[int, WritableVolume] = {}
    built: list[TaskResult] = []  # this rank's since the last checkpoint
    tasks: list[Index] = []  # every rank's since the last checkpoint
    last = time.monotonic()
    for i, (batch, task) in enumerate(work, 1):
        volumes = volumes or _open(ranks, plan, plan.subtree_levels)
        error = None
        try:
            if task is not None:
                built.append(build_task(plan, task, source, volumes))
        except USER_ERRORS as exc:
            error = describe(exc)
        tasks += batch
        due = i == len(work) or time.monotonic() - last >= checkpoint_seconds
        votes = ranks.comm.allgather((error, due)) if ranks.parallel else [(error, due)]
        if not votes[0][1] and not any(e for e, _ in votes):
            continue
        ranks.agree(_close(volumes, error), WriterError)
        volumes = {}
        parts = ranks.comm.gather(built, root=0) if ranks.parallel else [built]
        ranks.attempt(functools.partial(_record, plan, parts), kind=WriterError)
        yield tasks
        built, tasks, last = [], [], time.monotonic()


def build_on_ranks(ranks: Ranks, start: Callable[[], Plan], checkpoint_seconds: float, quiet: bool) -> str:
    """The build on ``ranks`` (every rank calls it): rank 0 runs ``start`` (make and prepare the plan),
    then the ranks share its pending tasks, and rank 0 builds the top levels and writes ``info``.

    Raises on every rank if any rank fails; the tasks recorded so far stay for ``resume``.
    """
    def begin() -> tuple[Plan, list[Index]] | None:
        if ranks.rank != 0:
            return None
        plan = start()
        return plan, largest_first(plan, state.pending(plan))

    started = ranks.attempt(begin, kind=BlockfsError)
    plan, todo = ranks.comm.bcast(started, root=0) if ranks.parallel else started  # type: ignore[misc]
    blocks = {task: plan.level1_blocks_under(plan.task_level, task) for task in plan.tasks}
    level1 = ranks.attempt(lambda: open_volume(plan.path(1)), kind=BlockfsError)
    with contextlib.closing(level1), tqdm(
            total=sum(blocks.values()), initial=sum(blocks.values()) - sum(blocks[t] for t in todo), unit="block",
            disable=quiet, desc=f"blockfs pyramid (rank 0 of {ranks.size}): {plan.levels} levels, level-1 blocks"
    ) as bar:
        for recorded in build_rounds(ranks, plan, level1, todo, checkpoint_seconds):
            bar.update(sum(blocks[t] for t in recorded))
    if plan.top_levels:
        collectively(ranks, plan, plan.top_levels,
                     lambda volumes: build_top(plan, volumes) if ranks.rank == 0 else None)
    ranks.attempt(lambda: state.complete(plan) if ranks.rank == 0 else None, kind=BlockfsError)
    return plan.dest
