"""kill -9 during a pyramid build (once tasks are recorded, after delays spread over a build, before each of
its changes to the file system), then the re-run a user would type: the source is untouched and the result
equals an uninterrupted build."""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from blockfs import Directory
from blockfs.pyramid import open_pyramid, state
from blockfs.pyramid.build import build_pyramid
from blockfs.pyramid.plan import make_plan

pytestmark = pytest.mark.timeout(240)
SHAPE, BLOCK = (128, 256, 256), 16


def blockfs(*args: object, **kwargs) -> subprocess.Popen:
    exe = Path(sys.executable).with_name("blockfs")
    return subprocess.Popen([str(exe), *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            **kwargs)


def make_source(path: Path, shape: tuple[int, int, int] = SHAPE) -> None:
    d = Directory(shape[2], shape[1], shape[0], np.uint16, str(path), n_filenames=2, x_block_size=BLOCK,
                  y_block_size=BLOCK, z_block_size=BLOCK).create()
    d.start_writer_processes()
    for z, y, x in itertools.product(*(range(0, n, BLOCK) for n in shape)):
        if (x + y) % 96:  # some columns of blocks stay unwritten
            d.write_block(np.random.default_rng([z, y, x]).integers(0, 4000, (BLOCK,) * 3, dtype=np.uint16), x, y, z)
    d.close()


def entries(dest: Path, keys: list[str]) -> dict[str, bytes]:
    """The index entries of the task-level blocks that finished tasks wrote."""
    out = {}
    for key in keys:
        level, iz, iy, ix = map(int, key.split("_"))
        f = 2 ** (level - 1)
        with Directory.open(str(dest / f"{f}_{f}_{f}" / "precomputed.blockfs")) as d:
            at = d.offsetof(ix * BLOCK, iy * BLOCK, iz * BLOCK)
        with open(dest / f"{f}_{f}_{f}" / "precomputed.blockfs", "rb") as index:
            index.seek(at)
            out[key] = index.read(d.layout.entry_size)
    return out


def test_kill_during_build_then_resume_equals_an_uninterrupted_build(tmp_path: Path) -> None:
    source, dest, reference = tmp_path / "source.blockfs", tmp_path / "pyramid", tmp_path / "reference"
    make_source(source)
    build_pyramid(source, reference, n_workers=2)
    done = dest / ".pyramid-build" / "done"
    plan = make_plan(source, dest, n_workers=2)
    # The library call behind `blockfs pyramid`, recording every finished task at once.
    build = "import sys; from blockfs.pyramid import build_pyramid; build_pyramid(*sys.argv[1:], checkpoint_seconds=0)"
    process = subprocess.Popen([sys.executable, "-c", build, str(source), str(dest)], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while (not done.is_dir() or len(state.finished(plan)) < 4) and time.monotonic() < deadline:
            assert process.poll() is None, process.communicate()
            time.sleep(0.005)
    finally:
        os.killpg(process.pid, signal.SIGKILL)  # the build and its workers, at once
        process.communicate(timeout=60)
    finished = sorted(state.finished(plan))
    assert not (dest / "info").exists(), "an interrupted build must not look finished"
    assert 4 <= len(finished) < len(plan.tasks) and plan.task_level >= 2
    before = entries(dest, finished)

    refused = blockfs("pyramid", source, dest, "--silent")
    _, err = refused.communicate(timeout=60)
    assert refused.returncode == 1 and "--resume" in err and "--overwrite" in err, err

    resumed = blockfs("pyramid", source, dest, "--n-workers", 2, "--resume", "--silent")
    _, err = resumed.communicate(timeout=120)
    assert resumed.returncode == 0, err
    assert entries(dest, finished) == before  # the finished subtrees were not built again
    assert not (dest / ".pyramid-build").exists()
    assert_same_pyramid(dest, reference)


def assert_same_pyramid(ours: Path, theirs: Path) -> None:
    """The same info file, and every level the same voxels and the same blocks written."""
    assert json.loads((ours / "info").read_text()) == json.loads((theirs / "info").read_text())
    a_levels, b_levels = open_pyramid(ours).levels, open_pyramid(theirs).levels
    assert len(a_levels) == len(b_levels)
    for level, (a, b) in enumerate(zip(a_levels, b_levels), 1):
        np.testing.assert_array_equal(a[...], b[...], err_msg=f"level {level}")
        written = [[x.read_block_payload(*o) is not None for o in itertools.product(
            *(range(0, n, BLOCK) for n in reversed(x.shape)))] for x in (a, b)]
        assert written[0] == written[1], f"level {level}: different blocks written"


def interrupt_a_build(source: Path, dest: Path) -> tuple[subprocess.Popen, list, str]:
    """Start ``blockfs pyramid`` and press Ctrl-C once its workers run (again, as a person would, if the
    first press fell into the workers' start-up, where Python drops it)."""
    import psutil

    process = blockfs("pyramid", source, dest, "--n-workers", 2, "--silent", start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        workers: list = []
        while len(workers) < 2 and time.monotonic() < deadline and process.poll() is None:
            workers = psutil.Process(process.pid).children()
            time.sleep(0.005)
        for _ in range(3):
            if process.poll() is not None:
                break
            os.killpg(process.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        _, err = process.communicate(timeout=60)
    return process, workers, err


def test_ctrl_c_stops_the_build_and_its_workers_then_resume_finishes(tmp_path: Path) -> None:
    import psutil

    source, dest, reference = tmp_path / "source.blockfs", tmp_path / "pyramid", tmp_path / "reference"
    make_source(source)
    build_pyramid(source, reference, n_workers=2)
    for _ in range(3):  # a build that finished before the interrupt landed is tried again
        process, workers, err = interrupt_a_build(source, dest)
        if process.returncode != 0:
            break
        shutil.rmtree(dest)
    assert process.returncode == 130 and "--resume" in err and str(dest) in err, err
    assert not (dest / "info").exists()
    assert not [w for w in workers if w.is_running() and w.status() != psutil.STATUS_ZOMBIE]
    resumed = blockfs("pyramid", source, dest, "--resume", "--silent")
    _, err = resumed.communicate(timeout=120)
    assert resumed.returncode == 0, err
    for a, b in zip(open_pyramid(dest).levels, open_pyramid(reference).levels):
        np.testing.assert_array_equal(a[...], b[...])


# -- kill -9 at many points ------------------------------------------------------------------

KILL_SHAPE = (64, 128, 128)  # 256 blocks: a build of under a second, half of it starting Python
KILL_TRIALS = 20
#: What each trial runs: a new pyramid, --overwrite of one, --overwrite of one from its own level 1.
MODES = ("new", "overwrite", "in place")


def files_of(volume: Path) -> dict[str, tuple[int, str]]:
    """A volume's directory file and shards: (inode, sha256) by path."""
    paths = [str(volume), *Directory.open(str(volume)).shard_paths]
    return {p: (os.stat(p).st_ino, hashlib.sha256(Path(p).read_bytes()).hexdigest()) for p in paths}


def state_of(dest: Path) -> str:
    """Where a build stood when it was killed, as the folder shows it."""
    build = dest / ".pyramid-build"
    if (dest / "info").exists():
        return "finished" + (" (journal left)" if build.exists() else "")
    if not dest.is_dir() or not any(dest.iterdir()):
        return "not started"
    if not (build / "plan.json").exists():
        return "journal without a plan"
    if not (build / "ready").exists():
        return "levels being placed"
    return "tasks running" if not any((build / "done").iterdir()) else "tasks recorded"


def kill_after(seconds: float, *args: object) -> int:
    """Run ``blockfs ARGS``, kill -9 it and its workers after ``seconds``; its exit status (-9 if killed)."""
    process = blockfs(*args, start_new_session=True)
    try:
        process.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
    process.communicate(timeout=60)
    return process.returncode


def test_kill_at_many_points_leaves_the_source_and_a_pyramid_a_rerun_finishes(tmp_path: Path) -> None:
    """kill -9 of ``blockfs pyramid`` after delays spread over a whole build, for each way to run it:
    the source stays bit-identical, and the re-run a user would type gives the uninterrupted pyramid."""
    source, reference = tmp_path / "source.blockfs", tmp_path / "reference"
    make_source(source, KILL_SHAPE)
    source_files = files_of(source)
    started = time.monotonic()
    uninterrupted = blockfs("pyramid", source, reference, "--n-workers", 2, "--silent")
    assert uninterrupted.wait(timeout=120) == 0, uninterrupted.communicate()
    uninterrupted.communicate()
    seconds = time.monotonic() - started
    states: Counter[str] = Counter()
    for trial in range(KILL_TRIALS):
        mode, dest = MODES[trial % len(MODES)], tmp_path / f"trial{trial}"
        given = dest / "1_1_1" / "precomputed.blockfs" if mode == "in place" else source
        if mode != "new":
            build_pyramid(source, dest, method="max", n_workers=2)  # the previous pyramid, other voxels
        kept = files_of(given)
        command = ["pyramid", given, dest, "--n-workers", 2, "--silent", *(["--overwrite"] if mode != "new" else [])]
        status = kill_after(seconds * (0.2 + 0.7 * trial / (KILL_TRIALS - 1)), *command)
        state = state_of(dest) if status else "finished before the kill"
        assert files_of(given) == kept and files_of(source) == source_files, f"trial {trial} ({mode}, {state})"
        if state.startswith("finished") and status:  # the previous pyramid or the new one, whole
            levels = [level[...] for level in open_pyramid(dest).levels]  # every block reads (and checks)
            new = np.array_equal(levels[1], open_pyramid(reference).levels[1][...])
            states[f"{state}: {'the new' if new else 'the previous'} pyramid"] += 1
        else:
            states[state] += 1
        if status and not (mode == "new" and state.startswith("finished")):  # the command again, as a user would
            rerun = blockfs(*command, *(["--resume"] if mode == "new" else []))
            _, err = rerun.communicate(timeout=120)
            assert rerun.returncode == 0, f"trial {trial} ({mode}, killed when {state}): {err}"
        assert_same_pyramid(dest, reference)
        assert files_of(given) == kept and files_of(source) == source_files, f"trial {trial} ({mode}, {state})"
    print(f"kill trials: a build of {seconds:.2f} s, {KILL_TRIALS} kills: {dict(states)}")
    assert len(states) >= 3, f"the kills fell at too few points of the build: {dict(states)}"


SWEEP_SHAPE = (32, 32, 64)  # 16 blocks, 3 levels: some 70 changes to the file system per build


def test_a_kill_before_any_change_leaves_what_a_rerun_finishes(tmp_path: Path) -> None:
    """kill -9 just before each change that ``blockfs pyramid --overwrite`` makes to the file system, in
    turn (one worker, so that the order is fixed), over a previous pyramid and from its own level 1; the
    re-run alternates --resume and --overwrite (a finished folder: --overwrite). A new build's changes
    are those of an overwrite after its clearing."""
    source, reference = tmp_path / "source.blockfs", tmp_path / "reference"
    make_source(source, SWEEP_SHAPE)
    source_files = files_of(source)
    build_pyramid(source, reference, n_workers=1)
    states: Counter[str] = Counter()
    with open(tmp_path / "killer.log", "w") as log, subprocess.Popen(
            [sys.executable, str(Path(__file__).with_name("pyramid_killer.py"))], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=log, text=True) as killer:

        def pyramid(n: int, *args: object) -> tuple[int, int | None]:
            """``blockfs pyramid ARGS`` killed before its n-th change: (exit status, changes if not killed)."""
            killer.stdin.write(json.dumps([n, *map(str, args), "--n-workers", "1", "--silent"]) + "\n")
            killer.stdin.flush()
            status, changes = json.loads(killer.stdout.readline())
            return status, changes

        for mode in MODES[1:]:
            for n in itertools.count(1):
                dest = tmp_path / f"{mode}-{n}"
                given = dest / "1_1_1" / "precomputed.blockfs" if mode == "in place" else source
                build_pyramid(source, dest, method="max", n_workers=1)
                kept = files_of(given)
                status, changes = pyramid(n, given, dest, "--overwrite")
                if status == 0:  # fewer changes than n: every point of this mode is done
                    assert changes == n - 1, (mode, n, changes)
                    break
                assert status == -signal.SIGKILL, (mode, n, status, (tmp_path / "killer.log").read_text())
                state = state_of(dest)
                states[state] += 1
                assert files_of(given) == kept and files_of(source) == source_files, (mode, n, state)
                again = "--resume" if n % 2 and not state.startswith("finished") else "--overwrite"
                status, _ = pyramid(0, given, dest, again)
                assert status == 0, (mode, n, state, again, (tmp_path / "killer.log").read_text())
                assert_same_pyramid(dest, reference)
                assert files_of(given) == kept and files_of(source) == source_files, (mode, n, state)
                shutil.rmtree(dest)
        killer.stdin.close()
    print(f"kill sweep: {sum(states.values())} kills: {dict(states)}")
