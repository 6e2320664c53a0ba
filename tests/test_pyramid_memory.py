"""A pyramid worker's peak memory stays under the stated bound, whatever the volume's size.

The largest possible task (the whole volume as one subtree, every level on the path) runs in a
fresh process, as a pool worker runs it; the process reports its peak resident set size (VmHWM
of its own address space: ``ru_maxrss`` would count the pytest process it was started from)
minus its resident set size just before the task.
"""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from blockfs import Directory
from blockfs.pyramid.octree import worker_memory_bound
from blockfs.pyramid.plan import make_plan
from blockfs.pyramid.state import prepare

pytestmark = pytest.mark.timeout(240)
BLOCK = 64

WORKER = """
import json, sys
import psutil
from blockfs.pyramid.build import run_task
from blockfs.pyramid.plan import make_plan
source, dest, levels = sys.argv[1], sys.argv[2], int(sys.argv[3])
plan = make_plan(source, dest, task_level=levels)
before = psutil.Process().memory_info().rss
run_task(plan, plan.tasks[0])
with open("/proc/self/status") as f:
    peak = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))
print(json.dumps({"growth": peak - before}))
"""


def make_source(path: Path, shape: tuple[int, int, int]) -> None:
    """A uint16 volume of noisy blocks (compressible, like microscopy), written by writer processes."""
    d = Directory(shape[2], shape[1], shape[0], np.uint16, str(path), n_filenames=2, x_block_size=BLOCK,
                  y_block_size=BLOCK, z_block_size=BLOCK).create()
    d.start_writer_processes()
    for z, y, x in itertools.product(*(range(0, n, BLOCK) for n in shape)):
        rng = np.random.default_rng([z, y, x])
        d.write_block(rng.integers(100, 140, (BLOCK,) * 3, dtype=np.uint16), x, y, z)
    d.close()


def worker_growth(tmp_path: Path, shape: tuple[int, int, int]) -> tuple[int, int]:
    """(peak growth of a worker building the whole volume as one task, the stated bound)."""
    source, dest = tmp_path / "source.blockfs", tmp_path / "pyramid"
    make_source(source, shape)
    plan = make_plan(source, dest)
    plan = prepare(make_plan(source, dest, task_level=plan.levels))
    result = subprocess.run([sys.executable, "-c", WORKER, str(source), str(dest), str(plan.levels)],
                            capture_output=True, text=True, timeout=200)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)["growth"], worker_memory_bound(plan.block, plan.levels)


@pytest.mark.parametrize("shape", [(128, 256, 256), (256, 512, 512)], ids=["16MiB", "128MiB"])
def test_worker_peak_memory_is_under_the_bound(tmp_path: Path, shape: tuple[int, int, int]) -> None:
    growth, bound = worker_growth(tmp_path, shape)
    volume = np.prod(shape) * 2
    print(f"{volume / 2**20:.0f} MiB volume: worker grew {growth / 2**20:.1f} MiB, bound {bound / 2**20:.0f} MiB")
    assert 0 < growth <= bound
