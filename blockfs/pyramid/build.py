"""Building a pyramid in one pass, in octree order, in bounded memory, in parallel over subtrees.

``build_pyramid`` does it all, in a pool of processes or, given ``ranks``, on MPI ranks
(:mod:`.ranked`). For splitting the work otherwise (e.g. across machines sharing the destination's
file system) its steps are public: :func:`make_plan`, :func:`state.prepare` once,
:func:`build_tasks` on any share of :func:`state.pending` tasks anywhere, then :func:`finish` once.
How a task builds its blocks, and in how much memory: :mod:`.octree`.
"""

from __future__ import annotations

import contextlib
import ctypes
import multiprocessing
import os
import signal
import time
from collections.abc import Generator, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool

from tqdm import tqdm

from ..errors import WriterError
from ..parallel.mpi import SOLO, Ranks
from ..progress import disabled
from ..volume import open_volume
from ..writable import open_writable
from . import state
from .octree import TaskResult, build_task, build_top
from .plan import Index, Plan, largest_first, make_plan
from .ranked import build_on_ranks

#: Default seconds between recording batches of finished tasks (each costs an fsync of every level file).
CHECKPOINT_SECONDS = 1.0


def run_task(plan: Plan, index: Index) -> TaskResult:
    """Build the subtree under block ``index`` of the task level in this process.

    Writes go straight to the shards from this process (levels opened with ``open_writable``);
    :func:`build_tasks` makes them durable and records the task as done.
    """
    with contextlib.ExitStack() as stack:
        source = open_volume(plan.path(1))
        stack.callback(source.close)
        volumes = {level: stack.enter_context(open_writable(plan.path(level), durable=False))
                   for level in plan.subtree_levels}
        return build_task(plan, index, source, volumes)


def _worker_init() -> None:
    """Leave Ctrl-C to the parent, which stops the workers; die with the parent if it is killed."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    with contextlib.suppress(OSError, AttributeError):  # Linux: prctl(PR_SET_PDEATHSIG, SIGKILL)
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)


def _checkpoint(plan: Plan, results: list[TaskResult]) -> list[TaskResult]:
    """Make the blocks of ``results`` durable (one fsync of each file of their levels), then record them done."""
    for level in plan.subtree_levels:
        with open_writable(plan.path(level), durable=False) as volume:
            volume.sync()
    state.record_done(plan, [(result.index, result.reduced) for result in results])
    return results


def _run(plan: Plan, tasks: list[Index], n_workers: int) -> Generator[TaskResult, None, None]:
    """Each task's result as it finishes: in this process for one worker, else in a pool of processes."""
    if n_workers == 1:
        yield from (run_task(plan, index) for index in tasks)
        return
    with ProcessPoolExecutor(n_workers, mp_context=multiprocessing.get_context("fork"),
                             initializer=_worker_init) as pool:
        futures = [pool.submit(run_task, plan, index) for index in tasks]
        try:
            for future in as_completed(futures):
                yield future.result()
        except BrokenProcessPool as exc:
            raise WriterError(f"{plan.dest}: a pyramid worker process died ({exc}); the finished tasks are "
                              "recorded: continue with --resume.") from None
        except BaseException:  # Ctrl-C, a failed task: stop the other tasks now, not when they end
            for process in list(getattr(pool, "_processes", {}).values()):
                process.kill()  # the pool then fails the pending tasks itself
            raise


def build_tasks(plan: Plan, tasks: Iterable[Index], n_workers: int | None = None,
                checkpoint_seconds: float = CHECKPOINT_SECONDS) -> Iterator[TaskResult]:
    """Run ``tasks`` on ``n_workers`` processes (all cores by default), yielding each once it is recorded.

    Finished tasks are recorded in batches, at most every ``checkpoint_seconds``, each after one
    fsync of the levels' files: an interruption loses the tasks finished since the last batch.
    With one worker the tasks run in this process. A worker that dies (killed, out of memory)
    raises :class:`WriterError`.
    """
    tasks = largest_first(plan, tasks)
    unrecorded: list[TaskResult] = []
    last = time.monotonic()
    with contextlib.closing(_run(plan, tasks, min(n_workers or os.cpu_count() or 1, max(1, len(tasks))))) as results:
        for i, result in enumerate(results, 1):
            unrecorded.append(result)
            if time.monotonic() - last >= checkpoint_seconds or i == len(tasks):
                yield from _checkpoint(plan, unrecorded)
                unrecorded, last = [], time.monotonic()


def finish(plan: Plan) -> None:
    """Build the levels above the task level from the journal, write ``info``, remove the journal."""
    if plan.top_levels:
        with contextlib.ExitStack() as stack:
            build_top(plan, {level: stack.enter_context(open_writable(plan.path(level))) for level in plan.top_levels})
    state.complete(plan)


def build_pyramid(source: str | os.PathLike, dest: str | os.PathLike, levels: int | None = None,
                  method: str = "mean", voxel_size_um: tuple[float, float, float] | None = None,
                  n_workers: int | None = None, overwrite: bool = False, resume: bool = False,
                  silent: bool = False, checkpoint_seconds: float = CHECKPOINT_SECONDS, ranks: Ranks = SOLO) -> str:
    """Build a pyramid of the volume ``source`` (its directory file) in the folder ``dest``; return ``dest``.

    ``levels`` defaults to the number of levels until the coarsest fits in one block;
    ``voxel_size_um`` (x, y, z) to the source's ``voxel_size_um`` metadata, else 1, 1, 1. An
    existing pyramid in ``dest`` is an error unless ``overwrite``; an interrupted build is an
    error unless ``resume`` (continue it) or ``overwrite`` (start again); an interruption loses at
    most the work of the last ``checkpoint_seconds``. The source is never changed: ``dest``'s own
    level 1 as the source is kept and the coarser levels rebuilt from it; a source with other files
    among what the build would remove or write is refused (:mod:`blockfs.pyramid.owned`). Progress
    bars go to stderr when it is a terminal, unless ``silent``.

    ``n_workers`` processes (default: the number of CPUs) share the tasks, and each level has as
    many shard files. On MPI ``ranks`` (every rank calls it) each rank works in one process and
    ``n_workers`` sets only the shard files; any rank's failure raises on every rank (:mod:`.ranked`).
    """
    n_workers = n_workers or os.cpu_count() or 1
    quiet = silent or ranks.rank != 0

    def start() -> Plan:
        plan = make_plan(source, dest, levels, method, voxel_size_um, ranks.size if ranks.parallel else n_workers)
        return state.prepare(plan, overwrite, resume, n_workers, quiet)

    if ranks.parallel:
        return build_on_ranks(ranks, start, checkpoint_seconds, quiet)
    plan = start()
    todo = state.pending(plan)
    total = sum(plan.level1_blocks_under(plan.task_level, t) for t in plan.tasks)
    done = total - sum(plan.level1_blocks_under(plan.task_level, t) for t in todo)
    with tqdm(total=total, initial=done, unit="block", disable=disabled(silent),
              desc=f"blockfs pyramid: {plan.levels} levels, level-1 blocks") as bar:
        for result in build_tasks(plan, todo, n_workers, checkpoint_seconds):
            bar.update(result.level1_blocks)
    finish(plan)
    return plan.dest
