"""``blockfs repair`` needs the volume alone: refused under live writers, and no writer starts while it runs.

* Repair (the command, and the library call) against a live writer pool is refused with
  ``blockfs repair: <volume>: ... open for writing by ...``, and every block written reads back
  after close().
* While a real repair runs (stopped with SIGSTOP while it holds the lock, and at the moment its new
  index has been renamed into place), a writer's ``Directory.open(path, "r+")``, a writer in a
  process of its own, and a fresh ``create()`` over the volume are refused.
* SIGKILL of ``blockfs repair`` at seeded random moments leaves the old volume or the repaired one,
  never a mixture; repair and check run again, no block that read before is lost, no lock remains.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from crash_writer import DTYPE, block_content
from helpers import block_origins
from repair_volumes import build, damage, opened, readable, run_blockfs, state

import blockfs
from blockfs import Directory
from blockfs.ops import repair as repair_module
from blockfs.ops.repair import repair_volume
from blockfs.storage import fsync_folder

pytestmark = pytest.mark.timeout(180)

BLOCKFS = Path(sys.executable).with_name("blockfs")
#: 512 blocks of 32^3, as in the report of repair under live writers.
POOL_SHAPE, POOL_BLOCK = (256, 256, 256), 32
#: A volume whose repair holds the lock for some 70 ms here: 8192 blocks of 8^3.
BIG_SHAPE, BIG_BLOCK = (128, 128, 256), 8
#: The blocks of the kill trials' volume whose newest copy is damaged: one was written twice, one once.
ROLLED_BACK, LOST = (0, 0, 0), (8, 8, 8)
KILL_SEED, KILL_TRIALS = 20261207, 16

#: The volume the producers of the pool test write into (the README's module-level Directory pattern).
VOLUME: Directory | None = None


def _content(origin: tuple[int, int, int]) -> np.ndarray:
    assert VOLUME is not None
    return block_content(VOLUME.layout.entry_index(*origin), 1, VOLUME.get_block_size(*origin))


def _produce(origin: tuple[int, int, int]) -> None:
    """A producer's task: write one block."""
    assert VOLUME is not None
    VOLUME.write_block(_content(origin), *origin)


def _is_busy_refusal(result: subprocess.CompletedProcess, path: Path) -> bool:
    return (result.returncode == 1 and result.stderr.startswith(f"blockfs repair: {path}: ")
            and "open for writing by a process (pid " in result.stderr)


# -- repair under live writers --------------------------------------------------------------

@pytest.mark.parametrize("producers", ["main", "pool"])
def test_repair_is_refused_while_writers_run(tmp_path: Path, producers: str) -> None:
    global VOLUME
    path = tmp_path / "volume.blockfs"
    z, y, x = POOL_SHAPE
    VOLUME = Directory(x, y, z, DTYPE, str(path), n_filenames=2, x_block_size=POOL_BLOCK, y_block_size=POOL_BLOCK,
                       z_block_size=POOL_BLOCK).create()
    identity = os.stat(path).st_ino
    origins = block_origins(POOL_SHAPE, POOL_BLOCK)
    attempts: list[subprocess.CompletedProcess] = []
    writing = threading.Event()

    def repair_meanwhile() -> None:
        while writing.is_set() or not attempts:
            attempts.append(run_blockfs("repair", "--silent", str(path)))

    VOLUME.start_writer_processes()
    writing.set()
    repairs = threading.Thread(target=repair_meanwhile)
    repairs.start()
    try:
        if producers == "pool":
            with multiprocessing.get_context("fork").Pool(2) as pool:
                pool.map(_produce, origins, chunksize=8)
        else:
            for origin in origins:
                _produce(origin)
        writing.clear()
        repairs.join(120)
        refused = [a for a in attempts if _is_busy_refusal(a, path)]
        assert refused == attempts, [(a.returncode, a.stdout, a.stderr) for a in attempts if a not in refused][:2]
        with pytest.raises(blockfs.VolumeBusyError, match=rf"^{re.escape(str(path))}: the volume is open for "
                                                          rf"writing by a process \(pid [0-9, ]*\b{os.getpid()}\b"):
            repair_volume(str(path))
    finally:
        writing.clear()
        repairs.join(120)
        VOLUME.close()
    assert os.stat(path).st_ino == identity and not list(tmp_path.glob("*.bak*")), "a refused repair changed files"

    with opened(path) as volume:
        for origin in origins:
            expected = block_content(volume.layout.entry_index(*origin), 1, volume.get_block_size(*origin))
            assert np.array_equal(volume.read_block(*origin), expected), f"block {origin} was lost"
    assert run_blockfs("check", "--silent", str(path)).returncode == 0
    after = run_blockfs("repair", "--silent", str(path))
    assert after.returncode == 0 and "nothing changed" in after.stdout, after.stdout + after.stderr
    print(f"\n{producers}: {len(attempts)} repairs refused while {len(origins)} blocks were written")


# -- writers while repair runs -------------------------------------------------------------------

def _holders(path: Path) -> list[int]:
    """The processes holding a flock on the index file now at ``path``, read from /proc/locks."""
    info = os.stat(path)
    inode = f"{os.major(info.st_dev):02x}:{os.minor(info.st_dev):02x}:{info.st_ino}"
    with open("/proc/locks") as f:
        rows = [line.split() for line in f]
    return [int(r[4]) for r in rows if "->" not in r and len(r) > 5 and r[1] == "FLOCK" and r[5] == inode]


def _stopped_repair(path: Path) -> subprocess.Popen:
    """``blockfs repair`` of ``path``, stopped (SIGSTOP) while it holds the volume's lock."""
    proc = subprocess.Popen([str(BLOCKFS), "repair", "--silent", str(path)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    while proc.poll() is None and proc.pid not in _holders(path):
        time.sleep(0.001)
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGSTOP)
        if proc.pid in _holders(path):
            return proc
        os.kill(proc.pid, signal.SIGCONT)
    out, err = proc.communicate(timeout=60)
    pytest.fail(f"blockfs repair was never seen holding the lock of {path} (exit status {proc.returncode}): "
                f"{out}{err}")


def _writer_in_a_process(path: Path) -> subprocess.CompletedProcess:
    code = ("import sys, numpy as np, blockfs\n"
            "try:\n"
            "    d = blockfs.Directory.open(sys.argv[1], 'r+')\n"
            "except blockfs.VolumeBusyError as exc:\n"
            "    print(exc); sys.exit(3)\n"
            "d.write_block(np.ones(d.get_block_size(0, 0, 0), d.dtype), 0, 0, 0)\n"
            "d.close()\n")
    return subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=60)


def _assert_writers_refused(path: Path, pid: int) -> None:
    """A writer opening the volume, one in another process, and a create() over it are all refused."""
    with pytest.raises(blockfs.VolumeBusyError, match=rf"holds the volume \(pid {pid}\)"):
        Directory.open(str(path), "r+")
    other = _writer_in_a_process(path)
    assert other.returncode == 3 and f"(pid {pid})" in other.stdout, other.stdout + other.stderr
    z, y, x = BIG_SHAPE
    with pytest.raises(blockfs.VolumeBusyError):
        Directory(x, y, z, DTYPE, str(path), n_filenames=2, x_block_size=BIG_BLOCK, y_block_size=BIG_BLOCK,
                  z_block_size=BIG_BLOCK).create()


def test_writers_are_refused_while_repair_runs(tmp_path: Path) -> None:
    path = tmp_path / "volume.blockfs"
    expected = build(path, BIG_SHAPE, BIG_BLOCK, rewritten=((0, 0, 0),))
    damage(path, (0, 0, 0))  # repair has work: it rolls the block back to its first copy
    expected[(0, 0, 0)] = block_content(0, 1, expected[(0, 0, 0)].shape)
    proc = _stopped_repair(path)
    try:
        _assert_writers_refused(path, proc.pid)
    finally:
        os.kill(proc.pid, signal.SIGCONT)
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, out + err
    assert run_blockfs("check", "--silent", str(path)).returncode == 0
    with opened(path, "r+") as volume:  # the lock is gone with the repair
        for origin, block in expected.items():
            assert np.array_equal(volume.read_block(*origin), block), origin


def test_no_writer_starts_in_the_new_index(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """At the moment repair has renamed its new index into place (and until it returns), the new index
    is held too: a writer is refused there."""
    path = tmp_path / "volume.blockfs"
    build(path, rewritten=((32, 0, 0),))
    damage(path, (32, 0, 0))
    old = os.stat(path).st_ino
    seen: list[tuple[int, subprocess.CompletedProcess]] = []
    def probe(folder: str) -> None:
        fsync_folder(folder)
        with pytest.raises(blockfs.VolumeBusyError, match=rf"holds the volume \(pid {os.getpid()}\)"):
            Directory.open(str(path), "r+")
        seen.append((os.stat(path).st_ino, _writer_in_a_process(path)))

    monkeypatch.setattr(repair_module, "fsync_folder", probe, raising=False)
    repair_volume(str(path))
    assert seen, "repair wrote no new index (or not through fsync_folder, which the probe stands in for)"
    (renamed_to, other), = seen
    assert renamed_to != old, "the probe ran before the new index was in place"
    assert other.returncode == 3 and f"(pid {os.getpid()})" in other.stdout, other.stdout + other.stderr
    with opened(path, "r+"):
        pass


# -- SIGKILL of repair -------------------------------------------------------------------------

def _damaged(folder: Path) -> Path:
    """A volume with a block to roll back (its newest copy damaged) and one to lose (its only copy)."""
    folder.mkdir()
    path = folder / "volume.blockfs"
    build(path, BIG_SHAPE, BIG_BLOCK, rewritten=(ROLLED_BACK,))
    damage(path, ROLLED_BACK)
    damage(path, LOST)
    return path


def _start_repair(path: Path) -> tuple[subprocess.Popen, float]:
    """``blockfs repair`` of ``path``, once it holds the lock (or has ended); and when it was seen holding it."""
    proc = subprocess.Popen([str(BLOCKFS), "repair", "--silent", str(path)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    while proc.poll() is None and proc.pid not in _holders(path):
        time.sleep(0.001)
    return proc, time.monotonic()


def _kill_repair_at(path: Path, delay: float, locked: bool) -> tuple[str, bool]:
    """Start ``blockfs repair`` and SIGKILL it ``delay`` seconds after it started or, with ``locked``, after it
    was seen holding the lock; (how it ended, whether it held the lock just before the kill)."""
    if locked:
        proc, since = _start_repair(path)
    else:
        proc = subprocess.Popen([str(BLOCKFS), "repair", "--silent", str(path)], stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True)
        since = time.monotonic()
    time.sleep(max(0.0, since + delay - time.monotonic()))
    holding = proc.poll() is None and proc.pid in _holders(path)
    proc.kill()
    _, err = proc.communicate(timeout=60)
    if proc.returncode != -signal.SIGKILL:
        assert proc.returncode == 3, err
        return "finished", False
    return "killed", holding


def _locked_time(path: Path) -> float:
    """How long ``blockfs repair`` of ``path`` holds the lock (from when it is first seen holding it)."""
    proc, since = _start_repair(path)
    while proc.poll() is None and proc.pid in _holders(path):
        time.sleep(0.001)
    held = time.monotonic() - since
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 3, f"repair of a volume with a lost block exited {proc.returncode}: {err}"
    return held


def test_sigkill_of_repair_leaves_the_old_volume_or_the_repaired_one(tmp_path: Path) -> None:
    template = _damaged(tmp_path / "template")
    before, readable_before = state(template), readable(template)
    window = statistics.median(  # of three runs: the machine is shared
        _locked_time(Path(shutil.copytree(template.parent, tmp_path / f"reference{i}")) / template.name)
        for i in range(3))
    repaired = state(tmp_path / "reference0" / template.name)
    assert repaired != before and repaired[1] == {LOST}

    rng = random.Random(KILL_SEED)
    start = time.monotonic()
    tally = dict.fromkeys(["old", "repaired", "killed while holding the lock", "finished"], 0)
    for trial in range(KILL_TRIALS):
        path = Path(shutil.copytree(template.parent, tmp_path / f"trial{trial:02d}")) / template.name
        # three kills in four are timed from when repair holds the lock (a third of them land after it
        # let go); the others from its start
        locked = trial % 4 != 3
        ended, holding = _kill_repair_at(path, rng.uniform(0, 1.5 * window if locked else 0.4), locked)
        now = state(path)
        assert now in (before, repaired), f"trial {trial}: the index is neither the old one nor the repaired one"
        tally["old" if now == before else "repaired"] += 1
        tally["finished"] += ended == "finished"
        tally["killed while holding the lock"] += holding
        with opened(path, "r+") as volume:  # no lock is left behind
            for origin, block in readable_before.items():
                assert np.array_equal(volume.read_block(*origin), block), f"trial {trial}: block {origin} was lost"
        again = run_blockfs("repair", "--silent", str(path))
        assert again.returncode == 3, again.stdout + again.stderr
        assert state(path) == repaired, f"trial {trial}: repair after the kill did not reach the repaired volume"
        check = run_blockfs("check", "--json", "--silent", str(path))
        assert check.returncode == 1, check.stdout + check.stderr
        assert {p["kind"] for p in json.loads(check.stdout)["problems"]} == {"lost-block"}, check.stdout
        shutil.rmtree(path.parent)
    assert time.monotonic() - start < 150
    assert tally["killed while holding the lock"] >= 2, tally  # the delays vary with the load of the machine
    assert tally["old"] and tally["repaired"], tally
    print(f"\n{KILL_TRIALS} kills of blockfs repair (which holds the lock for {window:.3f} s) in "
          f"{time.monotonic() - start:.1f} s: {tally}")
