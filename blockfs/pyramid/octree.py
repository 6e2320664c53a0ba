"""Building a pyramid's blocks: a subtree from level 1 up, or the levels above the task level.

Memory: a task descends the octree depth first. At each level on its path it holds one block of
accumulators (the block being assembled from its eight children), plus, transiently, one level-1
block, its accumulators, a finished output block and its compressed bytes: see
:func:`worker_memory_bound`, whatever the volume's size.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ..volume import Volume
from ..writable import WritableVolume
from . import state
from .plan import Index, Plan
from .reduce import Method, footprint_counts

Leaf = Callable[[Index], "np.ndarray | None"]

#: Blocks of 8-byte voxels a worker holds beyond the accumulators of its path: the level-1 block and
#: its accumulators, the child's reduction, and the temporaries of finishing one output block.
TRANSIENT_BLOCKS = 8


def worker_memory_bound(block_shape: tuple[int, int, int], levels: int) -> int:
    """Bytes a worker needs at most beyond the interpreter: (levels + 8) blocks of 8-byte voxels."""
    return (levels + TRANSIENT_BLOCKS) * math.prod(block_shape) * 8


@dataclass(frozen=True)
class TaskResult:
    """A finished task: its block of the task level, the level-1 block positions under it, and its
    contribution to the level above (None: nothing written under it)."""

    index: Index
    level1_blocks: int
    reduced: np.ndarray | None


class _Builder:
    """Builds blocks from ``leaf_level`` up, writing every block of levels 2 and above that it completes."""

    def __init__(self, plan: Plan, leaf_level: int, leaf: Leaf, volumes: dict[int, WritableVolume]):
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
        z, y, x = origin = plan.origin(level, index)
        block = self.method.finish(acc, lambda: footprint_counts(origin, acc.shape, plan.factor(level), plan.shape))
        self.volumes[level].write_block(block, x, y, z)
        del block
        return self.method.reduce(acc) if level < plan.levels else acc[:0, :0, :0]


def _level1_leaf(plan: Plan, volume: Volume, method: Method) -> Leaf:
    """A level-1 block's reduction (None if it was never written), read into one reused buffer."""
    buffer = np.empty(math.prod(plan.block), plan.dtype)

    def leaf(index: Index) -> np.ndarray | None:
        (z, y, x), shape = plan.origin(1, index), plan.block_shape(1, index)
        block = buffer[:math.prod(shape)].reshape(shape)
        return method.reduce(block) if volume.read_block_into(block, x, y, z) else None

    return leaf


def build_task(plan: Plan, index: Index, source: Volume, volumes: dict[int, WritableVolume]) -> TaskResult:
    """Build the subtree under block ``index`` of the task level from level 1 (``source``), writing
    its blocks into ``volumes`` (:attr:`Plan.subtree_levels`, open for writing, serially or collectively)."""
    builder = _Builder(plan, 1, _level1_leaf(plan, source, plan.make_method()), volumes)
    reduced = builder.reduced(plan.task_level, index)
    return TaskResult(index, plan.level1_blocks_under(plan.task_level, index), reduced)


def build_top(plan: Plan, volumes: dict[int, WritableVolume]) -> None:
    """Build the levels above the task level from the tasks' results in the journal, writing into
    ``volumes`` (:attr:`Plan.top_levels`, open for writing, serially or collectively)."""
    builder = _Builder(plan, plan.task_level, functools.partial(state.load_done, plan, state.finished(plan)), volumes)
    for index in plan.blocks(plan.levels):
        builder.reduced(plan.levels, index)
