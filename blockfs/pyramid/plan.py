"""What a pyramid build does, decided before it starts: levels, their shapes, and the subtree tasks.

Every level has the level-1 block shape, so block (i, j, k) of level L covers exactly blocks
(2i..2i+1, 2j..2j+1, 2k..2k+1) of level L-1: the blocks form an octree. A *task* is the subtree
under one block of the task level: it reads each level-1 block under it once and writes each block
of levels 2..task level under it once. Tasks are independent, so they may run in any order, in any
process (or on any MPI rank); the few blocks above the task level are built from the tasks'
results at the end. All coordinates here are (z, y, x).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import os
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from ..errors import InvalidArgumentError
from ..remote import absolute
from ..volume import open_volume
from .folder import level_path
from .reduce import Method

Index = tuple[int, int, int]
#: Aim for at least this many tasks per worker, so that uneven subtrees still balance.
TASKS_PER_WORKER = 4


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


@dataclass(frozen=True)
class Plan:
    """A pyramid build: source, destination, method, levels and tasks (picklable, for workers)."""

    source: str
    dest: str
    shape: tuple[int, int, int]
    block: tuple[int, int, int]
    dtype: str
    method: str
    levels: int
    voxel_size_um: tuple[float, float, float]
    task_level: int
    compression: str
    compression_level: int
    records: bool
    metadata: dict = field(default_factory=dict)

    def factor(self, level: int) -> int:
        return 2 ** (level - 1)

    def level_shape(self, level: int) -> tuple[int, int, int]:
        return tuple(_ceil_div(n, self.factor(level)) for n in self.shape)  # type: ignore[return-value]

    def grid(self, level: int) -> tuple[int, int, int]:
        return tuple(_ceil_div(n, b) for n, b in zip(self.level_shape(level), self.block))  # type: ignore[return-value]

    def n_blocks(self, level: int) -> int:
        return math.prod(self.grid(level))

    def path(self, level: int) -> str:
        return level_path(self.dest, self.factor(level))

    def blocks(self, level: int) -> list[Index]:
        """Every block index of a level, z-major."""
        return list(itertools.product(*(range(n) for n in self.grid(level))))  # type: ignore[arg-type]

    def children(self, level: int, index: Index) -> list[tuple[Index, Index]]:
        """(octant, child index) of the blocks of ``level - 1`` under block ``index`` of ``level``."""
        grid = self.grid(level - 1)
        out = []
        for octant in itertools.product((0, 1), repeat=3):
            child = tuple(2 * i + d for i, d in zip(index, octant))
            if all(c < n for c, n in zip(child, grid)):
                out.append((octant, child))
        return out  # type: ignore[return-value]

    def origin(self, level: int, index: Index) -> tuple[int, int, int]:
        """First voxel (z, y, x), in that level, of a block."""
        return tuple(i * b for i, b in zip(index, self.block))  # type: ignore[return-value]

    def block_shape(self, level: int, index: Index) -> tuple[int, int, int]:
        return tuple(min(b, n - o) for b, n, o in zip(self.block, self.level_shape(level),
                                                       self.origin(level, index)))  # type: ignore[return-value]

    def region(self, level: int, index: Index) -> tuple[slice, slice, slice]:
        """The voxels (z, y, x slices), in that level, of a block."""
        return tuple(slice(o, o + n) for o, n in zip(self.origin(level, index),
                                                     self.block_shape(level, index)))  # type: ignore[return-value]

    def level1_blocks_under(self, level: int, index: Index) -> int:
        """How many level-1 block positions lie under a block of ``level``."""
        span = 2 ** (level - 1)
        return math.prod(max(0, min(n, (i + 1) * span) - i * span) for i, n in zip(index, self.grid(1)))

    @property
    def tasks(self) -> list[Index]:
        """The task blocks (of ``task_level``), in the order the top levels consume them."""
        return self.blocks(self.task_level)

    @property
    def subtree_levels(self) -> range:
        """The levels the tasks write: 2 to the task level."""
        return range(2, self.task_level + 1)

    @property
    def top_levels(self) -> range:
        """The levels built from the tasks' results at the end: above the task level."""
        return range(self.task_level + 1, self.levels + 1)

    def task_key(self, index: Index) -> str:
        return f"{self.task_level}_{index[0]}_{index[1]}_{index[2]}"

    def make_method(self) -> Method:
        return Method(self.method, np.dtype(self.dtype))


def largest_first(plan: Plan, tasks: Iterable[Index]) -> list[Index]:
    """``tasks``, the largest subtrees first, so that the last ones to finish are small."""
    return sorted(tasks, key=lambda t: -plan.level1_blocks_under(plan.task_level, t))


def default_levels(shape: tuple[int, ...], block: tuple[int, ...]) -> int:
    """Levels until the coarsest one fits in one block."""
    levels = 1
    while any(_ceil_div(n, 2 ** (levels - 1)) > b for n, b in zip(shape, block)):
        levels += 1
    return levels


def choose_task_level(plan_levels: int, n_blocks: list[int], n_workers: int) -> int:
    """The coarsest level with at least ``TASKS_PER_WORKER`` blocks per worker (level 1 if none)."""
    want = TASKS_PER_WORKER * n_workers
    return max((level for level in range(1, plan_levels + 1) if n_blocks[level - 1] >= want), default=1)


def voxel_size_from(metadata: dict) -> tuple[float, float, float]:
    """The voxel size (x, y, z) in micrometres from a volume's metadata (``voxel_size_um``), else 1, 1, 1."""
    value = metadata.get("voxel_size_um")
    if isinstance(value, (list, tuple)) and len(value) == 3 and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 for v in value):
        return tuple(float(v) for v in value)  # type: ignore[return-value]
    return (1.0, 1.0, 1.0)


def make_plan(source: str | os.PathLike, dest: str | os.PathLike, levels: int | None = None, method: str = "mean",
              voxel_size_um: tuple[float, float, float] | None = None, n_workers: int | None = None,
              task_level: int | None = None) -> Plan:
    """Plan a pyramid of the volume ``source`` (its directory file) in the folder ``dest``."""
    source = absolute(os.fspath(source))
    lay = open_volume(source).layout
    odd = [b for b in lay.block_shape if b % 2]
    if odd:
        raise InvalidArgumentError(f"{source}: block size {lay.block_shape} (z, y, x) has an odd side; a pyramid "
                                   "needs even block sizes. Copy the volume into even blocks (e.g. 64) first.")
    if levels is None:
        levels = default_levels(lay.shape, lay.block_shape)
    if isinstance(levels, bool) or not isinstance(levels, int) or not 1 <= levels <= 32:
        raise InvalidArgumentError(f"{source}: levels must be an integer from 1 to 32; got {levels!r}.")
    if voxel_size_um is None:
        voxel_size_um = voxel_size_from(lay.metadata)
    voxel_size_um = tuple(float(v) for v in voxel_size_um)  # type: ignore[assignment]
    if len(voxel_size_um) != 3 or not all(v > 0 and math.isfinite(v) for v in voxel_size_um):
        raise InvalidArgumentError(f"{source}: voxel size must be three positive numbers (x, y, z) in "
                                   f"micrometres; got {voxel_size_um!r}.")
    method_ = Method(method, lay.dtype)
    method_.check_sums(math.prod(min(n, 2 ** (levels - 1)) for n in lay.shape), source)
    plan = Plan(source, os.path.abspath(os.fspath(dest)), lay.shape, lay.block_shape, lay.dtype.name, method,
                levels, voxel_size_um, 1, lay.compression, lay.compression_level, lay.records, dict(lay.metadata))
    if task_level is None:
        workers = n_workers or os.cpu_count() or 1
        task_level = choose_task_level(levels, [plan.n_blocks(level) for level in range(1, levels + 1)], workers)
    if not 1 <= task_level <= levels:
        raise InvalidArgumentError(f"{source}: task level must be from 1 to {levels}; got {task_level!r}.")
    return dataclasses.replace(plan, task_level=task_level)
