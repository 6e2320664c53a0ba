"""Who may use a volume at once (blockfs.locking): writers share it, offline operations and creates
over it need it alone, and a reader never mixes two volumes' bytes.

Real processes throughout: creators racing on one path, a creator killed with SIGKILL part way, a
writer refused while another process holds the volume alone.
"""

from __future__ import annotations

import collections
import contextlib
import json
import multiprocessing
import random
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest

import blockfs
from blockfs import Directory, StaleVolumeError, VolumeBusyError, locking
from blockfs.format import read_directory_file
from blockfs.marks import INCOMPLETE_KEY

SIDE, BLOCK = 96, 32
#: A process that creates the volume at argv[1], fills every block with argv[2], and closes it; it
#: waits for the wall-clock time argv[3] first (so that racers start together), writes records unless
#: argv[4] is "plain", pauses argv[5] seconds after each block, marks the volume incomplete while it
#: writes, and prints what happened as JSON.
CREATOR = f"""
import json, sys, time
import numpy as np
from blockfs import Directory, StaleVolumeError, VolumeBusyError
from blockfs.storage import mark_complete
path, value, start, kind, pause = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4], float(sys.argv[5])
time.sleep(max(0.0, start - time.time()))
try:
    d = Directory({SIDE}, {SIDE}, {SIDE}, np.uint16, path, n_filenames=2, x_block_size={BLOCK},
                  y_block_size={BLOCK}, z_block_size={BLOCK}, records=kind != "plain")
    d.create(incomplete="the creator")
    print("created", flush=True)
    block = np.full(({BLOCK},) * 3, value, np.uint16)
    for z in range(0, {SIDE}, {BLOCK}):
        for y in range(0, {SIDE}, {BLOCK}):
            for x in range(0, {SIDE}, {BLOCK}):
                d.write_block(block, x, y, z)
                time.sleep(pause)
    d.close()
    mark_complete(path)
except VolumeBusyError as exc:
    print(json.dumps({{"busy": str(exc)}}))
    sys.exit(3)
except StaleVolumeError as exc:  # another creator replaced it between close() and the mark
    print(json.dumps({{"replaced": str(exc)}}))
    sys.exit(3)
print(json.dumps({{"wrote": value}}))
"""


def _creator(path: Path, value: int, start: float, records: bool = True, pause: float = 0.0) -> subprocess.Popen:
    argv = [sys.executable, "-c", CREATOR, str(path), str(value), repr(start), "records" if records else "plain",
            repr(pause)]
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _values(path: Path) -> set[int]:
    """The distinct voxel values of the volume at ``path`` (complete or not)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", blockfs.IncompleteVolumeWarning)
        with Directory.open(str(path)) as d:
            return set(np.unique(d[...]).tolist())


def _make(path: Path, value: int, records: bool = True) -> None:
    with Directory(SIDE, SIDE, SIDE, np.uint16, str(path), n_filenames=2, x_block_size=BLOCK, y_block_size=BLOCK,
                   z_block_size=BLOCK, records=records).create() as d:
        d[...] = np.full((SIDE,) * 3, value, np.uint16)


def test_concurrent_creates_never_mix(tmp_path: Path) -> None:
    """Two or three processes create and fill one path at the same moment, 24 times: every time, the
    volume is wholly one creator's, that creator succeeded, and every other one either finished before
    it started or was refused with VolumeBusyError; blockfs check calls the result healthy."""
    outcomes = {"refused": 0, "serialised": 0}
    for trial in range(24):
        path = tmp_path / f"race{trial}" / "v.blockfs"
        path.parent.mkdir()
        if trial % 2:
            _make(path, 99)  # half the races are creates over an existing volume
        start = time.time() + 0.3
        racers = [_creator(path, value, start) for value in range(1, 2 + trial % 2 + 1)]
        results = {}
        for value, process in enumerate(racers, 1):
            out, err = process.communicate(timeout=60)
            assert process.returncode in (0, 3), err
            results[value] = json.loads(out.strip().splitlines()[-1])  # after "created", if it did
        values = _values(path)
        assert len(values) == 1, (trial, values, results)  # never a mix of two creators' blocks
        (winner,) = values
        assert results[winner] == {"wrote": winner}, (trial, results)
        losers = [r for v, r in results.items() if v != winner]
        outcomes["refused"] += sum("wrote" not in r for r in losers)
        outcomes["serialised"] += sum("wrote" in r for r in losers)
        for r in losers:
            assert "wrote" in r or "replaced" in r or "holds the volume" in r["busy"] \
                or "open for writing" in r["busy"] or "replaced the index" in r["busy"], r
        assert INCOMPLETE_KEY not in read_directory_file(str(path)).layout.marks
        check = subprocess.run([sys.executable, "-m", "blockfs.cli", "check", "--silent", str(path)],
                               capture_output=True, text=True, timeout=60)
        assert check.returncode == 0, check.stdout + check.stderr
    print(f"24 races: losers refused {outcomes['refused']}, serialised {outcomes['serialised']}")
    assert outcomes["refused"] > 0, outcomes  # the races did overlap


def test_create_killed_over_an_existing_volume_leaves_the_old_or_the_new_volume(tmp_path: Path) -> None:
    """SIGKILL a create() over a filled volume at 16 points: afterwards the volume is the old one
    whole, or the new one (marked incomplete unless it finished; never old blocks among new ones),
    and a new writer can open it (no lock is left behind)."""
    rng = random.Random(7)
    seen: collections.Counter[str] = collections.Counter()
    for trial in range(16):
        path = tmp_path / f"kill{trial}" / "v.blockfs"
        path.parent.mkdir()
        _make(path, 99)
        process = _creator(path, 5, time.time(), pause=0.01)
        if trial % 4:  # while it writes (27 blocks, 10 ms apart), else at any moment from its start
            assert process.stdout.readline() == "created\n"
            time.sleep(rng.uniform(0.0, 0.3))
        else:
            time.sleep(rng.uniform(0.0, 0.5))
        process.send_signal(signal.SIGKILL)
        process.communicate(timeout=60)
        values = _values(path) if path.exists() else set()
        marks = read_directory_file(str(path)).layout.marks
        if values == {99}:
            seen["old"] += 1
        else:
            assert values <= {0, 5}, (trial, values)  # the new volume: its blocks, or zeros where none yet
            seen["new, incomplete" if INCOMPLETE_KEY in marks else "new, complete"] += 1
            if INCOMPLETE_KEY not in marks:
                assert values == {5}
        with pytest.warns(blockfs.IncompleteVolumeWarning) if INCOMPLETE_KEY in marks else contextlib.nullcontext():
            Directory.open(str(path), "r+").close()
    print(f"16 kills of create() over a volume: {sorted(seen.items())}")
    assert seen["new, incomplete"], seen


def _hold_alone(path: str, ready: multiprocessing.synchronize.Event, done: multiprocessing.synchronize.Event) -> None:
    with locking.exclusively(path, "a test's offline operation"):
        ready.set()
        done.wait(30)


def test_writers_are_refused_while_an_offline_operation_holds_the_volume(tmp_path: Path) -> None:
    path = str(tmp_path / "v.blockfs")
    _make(tmp_path / "v.blockfs", 3)
    context = multiprocessing.get_context("spawn")
    ready, done = context.Event(), context.Event()
    holder = context.Process(target=_hold_alone, args=(path, ready, done))
    holder.start()
    try:
        assert ready.wait(30)
        with pytest.raises(VolumeBusyError, match=rf"offline operation.*pid {holder.pid}"):
            Directory.open(path, "r+")
        with pytest.raises(VolumeBusyError, match="offline operation"):
            Directory(SIDE, SIDE, SIDE, np.uint16, path, n_filenames=2, x_block_size=BLOCK, y_block_size=BLOCK,
                      z_block_size=BLOCK).create()
        assert _values(tmp_path / "v.blockfs") == {3}  # reading goes on
    finally:
        done.set()
        holder.join(30)
    Directory.open(path, "r+").close()


def test_an_offline_operation_is_refused_while_a_process_writes(tmp_path: Path) -> None:
    path = str(tmp_path / "v.blockfs")
    _make(tmp_path / "v.blockfs", 3)
    writer = subprocess.Popen([sys.executable, "-c",
                               "import sys, blockfs; d = blockfs.Directory.open(sys.argv[1], 'r+');"
                               " print('open', flush=True); sys.stdin.read()", path],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout.readline() == "open\n"
        with pytest.raises(VolumeBusyError, match=rf"open for writing by a process \(pid {writer.pid}\)"):
            with locking.exclusively(path, "the test"):
                pass
    finally:
        writer.communicate("", timeout=30)
    with locking.exclusively(path, "the test"):
        pass


@pytest.mark.parametrize("records", [False, True], ids=["plain", "records"])
@pytest.mark.parametrize("opened", ["nothing", "one shard"])
def test_a_reader_opened_before_a_replacement_never_reads_the_new_volume(tmp_path: Path, records: bool,
                                                                         opened: str) -> None:
    """A reader of volume A, then create() replaces A by B (same layout, other values): the reader goes on
    reading A where it has A's files open, and raises StaleVolumeError where it would have to open B's."""
    path = tmp_path / "v.blockfs"
    _make(path, 1, records)
    reader = Directory.open(str(path))
    if opened == "one shard":
        assert reader.read_block(0, 0, 0).max() == 1  # the index and shard 0 are now open
    other = _creator(path, 2, time.time(), records)
    assert other.communicate(timeout=60)[0].split() == ["created", '{"wrote":', "2}"]
    if opened == "one shard":
        assert reader.read_block(0, 0, 0).max() == 1  # A's own files: A's bytes
        with pytest.raises(StaleVolumeError, match="replaced"):
            reader.read_block(BLOCK, 0, 0)  # in shard 1, never opened: it would be B's
    else:
        with pytest.raises(StaleVolumeError, match=r"replaced.*open it again"):
            reader.read_block(0, 0, 0)
    assert _values(path) == {2}
