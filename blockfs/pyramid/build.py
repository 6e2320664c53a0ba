"""Building a pyramid in one pass, in octree order, in bounded memory, in parallel over subtrees.

``build_pyramid`` does it all. For splitting the work across machines (e.g. MPI ranks sharing the
destination's file system) its steps are public: :func:`make_plan`, :func:`prepare` once,
:func:`build_tasks` on any share of :func:`pending` tasks anywhere, then :func:`finish` once; or,
writing through volumes the caller opens (collectively, :mod:`blockfs.parallel.pyramid`),
:func:`build_task` per task, then :func:`build_top` and :func:`complete` once.

Memory: a task descends the octree depth first. At each level on its path it holds one block of
accumulators (the block being assembled from its eight children), plus, transiently, one level-1
block, its accumulators, a finished output block and its compressed bytes: see
:func:`worker_memory_bound`, whatever the volume's size.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import math
import multiprocessing
import os
import signal
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

import numpy as np
from tqdm import tqdm

from ..codec import decompress_into
from ..directory import Directory
from ..errors import WriterError
from ..progress import disabled
from . import state
from .folder import make_info, write_info
from .plan import Index, Plan, make_plan
from .reduce import Method, footprint_counts

Leaf = Callable[[Index], "np.ndarray | None"]


#: Blocks of 8-byte voxels a worker holds beyond the accumulators of its path: the level-1 block and
#: its accumulators, the child's reduction, and the temporaries of finishing one output block.
TRANSIENT_BLOCKS = 8


def worker_memory_bound(block_shape: tuple[int, int, int], levels: int) -> int:
    """Bytes a worker needs at most beyond the interpreter: (levels + 8) blocks of 8-byte voxels."""
    return (levels + TRANSIENT_BLOCKS) * math.prod(block_shape) * 8


#: Default seconds between recording batches of finished tasks (each costs an fsync of every level file).
CHECKPOINT_SECONDS = 1.0


@dataclass(frozen=True)
class TaskResult:
    """A finished task: its block of the task level, the level-1 block positions under it, and its
    contribution to the level above (None: nothing written under it)."""

    index: Index
    level1_blocks: int
    reduced: np.ndarray | None


class _Builder:
    """Builds blocks from ``leaf_level`` up, writing every block of levels 2 and above that it completes."""

    def __init__(self, plan: Plan, leaf_level: int, leaf: Leaf, volumes: dict[int, Directory]):
        self.plan, self.leaf_level, self.leaf, self.volumes = plan, leaf_level, leaf, volumes
        self.method: Method = plan.make_method()

    def reduced(self, level: int, index: Index) -> np.ndarray | None:
        """The accumulators that block ``index`` of ``level`` gives the level above; None if nothing is under it."""
        if level == self.leaf_level:
            return self.leaf(index)
        plan = self.plan
        acc: np.ndarray | None = None
        half = [b // 2 for b in plan.block]
        for octant, child in plan.children(level, index):
            part = self.reduced(level - 1, child)
            if part is None:
                continue
            if acc is None:
                acc = np.zeros(plan.block_shape(level, index), self.method.acc_dtype)
            z, y, x = (o * h for o, h in zip(octant, half))
            acc[z:z + part.shape[0], y:y + part.shape[1], x:x + part.shape[2]] = part
        if acc is None:
            return None
        origin = plan.origin(level, index)
        block = self.method.finish(acc, lambda: footprint_counts(origin, acc.shape, plan.factor(level), plan.shape))
        self.volumes[level].write_block(block, origin[2], origin[1], origin[0])
        del block
        return self.method.reduce(acc) if level < plan.levels else acc[:0, :0, :0]


def _level1_leaf(plan: Plan, volume: Directory, method: Method) -> Leaf:
    def leaf(index: Index) -> np.ndarray | None:
        z, y, x = plan.origin(1, index)
        payload = volume.read_block_payload(x, y, z)
        if payload is None:
            return None
        block = np.empty(plan.block_shape(1, index), plan.dtype)
        decompress_into(payload, block, f"{volume.directory_filename}: block at (x={x}, y={y}, z={z})")
        return method.reduce(block)

    return leaf


def build_task(plan: Plan, index: Index, source: Directory, volumes: dict[int, Directory]) -> TaskResult:
    """Build the subtree under block ``index`` of the task level from level 1 (``source``), writing
    its blocks into ``volumes`` (:attr:`Plan.subtree_levels`, opened ``r+``, serially or collectively)."""
    builder = _Builder(plan, 1, _level1_leaf(plan, source, plan.make_method()), volumes)
    reduced = builder.reduced(plan.task_level, index)
    return TaskResult(index, plan.level1_blocks_under(plan.task_level, index), reduced)


def run_task(plan: Plan, index: Index) -> TaskResult:
    """Build the subtree under block ``index`` of the task level in this process.

    Writes go straight to the shards from this process (``Directory.write_block`` on a volume
    opened ``r+``); :func:`build_tasks` makes them durable and records the task as done.
    """
    with contextlib.ExitStack() as stack:
        source = stack.enter_context(Directory.open(plan.path(1)))
        volumes = {level: stack.enter_context(Directory.open(plan.path(level), "r+", durable=False))
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
        Directory.open(plan.path(level), "r+").close()
    state.record_done(plan, [(result.index, result.reduced) for result in results])
    return results


def _run(plan: Plan, tasks: list[Index], n_workers: int) -> Iterator[TaskResult]:
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


def largest_first(plan: Plan, tasks: Iterable[Index]) -> list[Index]:
    """``tasks``, the largest subtrees first, so that the last ones to finish are small."""
    return sorted(tasks, key=lambda t: -plan.level1_blocks_under(plan.task_level, t))


def pending(plan: Plan) -> list[Index]:
    """The tasks not yet done."""
    done = state.finished(plan)
    return [t for t in plan.tasks if plan.task_key(t) not in done]


def prepare(plan: Plan, overwrite: bool = False, resume: bool = False, n_shards: int | None = None,
            silent: bool = True) -> Plan:
    """Check and set up ``plan.dest``; returns the plan to run (a resumed build keeps its task level)."""
    if state.check_destination(plan, overwrite, resume):
        task_level = state.stored_task_level(plan)
        plan = make_plan(plan.source, plan.dest, plan.levels, plan.method, plan.voxel_size_um, task_level=task_level)
    state.start(plan, n_shards or os.cpu_count() or 1, silent)
    return plan


def build_top(plan: Plan, volumes: dict[int, Directory]) -> None:
    """Build the levels above the task level from the tasks' results in the journal, writing into
    ``volumes`` (:attr:`Plan.top_levels`, opened ``r+``, serially or collectively)."""
    builder = _Builder(plan, plan.task_level, functools.partial(state.load_done, plan, state.finished(plan)), volumes)
    for index in plan.blocks(plan.levels):
        builder.reduced(plan.levels, index)


def complete(plan: Plan) -> None:
    """Write ``info`` (the pyramid is then finished), remove the journal."""
    kind = "segmentation" if plan.method == "mode" else "image"
    write_info(plan.dest, make_info(plan.dtype, kind, plan.shape, plan.block, plan.voxel_size_um, plan.levels))
    state.remove_journal(plan)


def finish(plan: Plan) -> None:
    """Build the levels above the task level from the journal, write ``info``, remove the journal."""
    if plan.top_levels:
        with contextlib.ExitStack() as stack:
            build_top(plan, {level: stack.enter_context(Directory.open(plan.path(level), "r+"))
                             for level in plan.top_levels})
    complete(plan)


def build_pyramid(source: str | os.PathLike, dest: str | os.PathLike, levels: int | None = None,
                  method: str = "mean", voxel_size_um: tuple[float, float, float] | None = None,
                  n_workers: int | None = None, overwrite: bool = False, resume: bool = False,
                  silent: bool = False, checkpoint_seconds: float = CHECKPOINT_SECONDS) -> str:
    """Build a pyramid of the volume ``source`` (its directory file) in the folder ``dest``; return ``dest``.

    ``levels`` defaults to the number of levels until the coarsest fits in one block;
    ``voxel_size_um`` (x, y, z) to the source's ``voxel_size_um`` metadata, else 1, 1, 1. An
    existing pyramid in ``dest`` is an error unless ``overwrite``; an interrupted build is an
    error unless ``resume`` (continue it) or ``overwrite`` (start again); an interruption loses at
    most the work of the last ``checkpoint_seconds``. The source is never changed: ``dest``'s own
    level 1 as the source is kept and the coarser levels rebuilt from it; a source with other files
    among what the build would remove or write is refused (:mod:`blockfs.pyramid.owned`). Progress
    bars go to stderr when it is a terminal, unless ``silent``.
    """
    n_workers = n_workers or os.cpu_count() or 1
    plan = prepare(make_plan(source, dest, levels, method, voxel_size_um, n_workers), overwrite, resume, n_workers,
                   silent)
    todo = pending(plan)
    total = sum(plan.level1_blocks_under(plan.task_level, t) for t in plan.tasks)
    done = total - sum(plan.level1_blocks_under(plan.task_level, t) for t in todo)
    with tqdm(total=total, initial=done, unit="block", disable=disabled(silent),
              desc=f"blockfs pyramid: {plan.levels} levels, level-1 blocks") as bar:
        for result in build_tasks(plan, todo, n_workers, checkpoint_seconds):
            bar.update(result.level1_blocks)
    finish(plan)
    return plan.dest
