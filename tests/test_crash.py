"""Crashes and concurrent readers, with real processes and real files.

* A writer process tree (``crash_writer.py`` and its writer processes or helper) is killed with
  SIGKILL at seeded random moments. Afterwards ``check_volume`` reports only unindexed records,
  ``repair_volume`` rebuilds the index, and every block reads as one of the versions written for
  it or as zeros. Acknowledged writes (logged after ``write_block`` returned) survive, and every
  complete record found in the shards (counted here with ``blockfs.records.scan``) is indexed.
* Readers running while another process rewrites blocks never see a partial or mixed block.
"""

from __future__ import annotations

import multiprocessing
import os
import random
import re
import selectors
import shutil
import signal
import subprocess
import sys
import threading
import time
import warnings
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import blosc
import numpy as np
import psutil
import pytest

import crash_writer
import spec_decoder
from crash_writer import block_content, version_of
from helpers import block_origins, mounted, unavailable

from blockfs import BlockfsError, Directory, LostBlocksWarning, records
from blockfs.ops.check import check_volume
from blockfs.ops.repair import repair_volume

WRITER = Path(crash_writer.__file__).resolve()
KILL_SEED = 20240611
KILL_TRIALS = 24
MIN_DELAY, MAX_DELAY = 0.05, 1.5
#: At most this many kills on the sync disk to find one that leaves a complete record unindexed.
SYNC_TRIALS = 10
#: Problems a crash may leave: a complete record written but not yet indexed. Anything else
#: (an entry pointing at bad bytes, past the end, at another block's record) breaks the rule
#: that data reaches the shard before its entry points at it.
CRASH_PROBLEMS = {"unindexed-record"}


# -- helpers -----------------------------------------------------------------------------------

def new_volume(folder: Path) -> Path:
    """An empty volume of the shape crash_writer writes, with offset room for many rewrites."""
    z, y, x = crash_writer.SHAPE
    path = folder / "volume.blockfs"
    Directory(x, y, z, crash_writer.DTYPE, str(path), n_filenames=2, x_block_size=crash_writer.BLOCK,
              y_block_size=crash_writer.BLOCK, z_block_size=crash_writer.BLOCK, n_offset_bits=40, compression="lz4",
              compression_level=1).create().close()
    return path


def start_writer(path: Path, mode: str, *extra: str) -> subprocess.Popen:
    """Start crash_writer in a session of its own and wait until it says it is ready."""
    proc = subprocess.Popen([sys.executable, str(WRITER), str(path), "--mode", mode, *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    with selectors.DefaultSelector() as selector:
        selector.register(proc.stdout, selectors.EVENT_READ)
        if not selector.select(timeout=60):
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            pytest.fail("the writer did not become ready within 60 s")
    line = proc.stdout.readline()
    if line.strip() != "ready":
        proc.wait(timeout=60)
        pytest.fail(f"the writer failed to start ({proc.returncode}): {line}{proc.stderr.read()}")
    return proc


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes in a process group."""
    alive = []
    for proc in psutil.process_iter(["pid", "status"]):
        try:
            if os.getpgid(proc.pid) == pgid and proc.info["status"] != psutil.STATUS_ZOMBIE:
                alive.append(proc.pid)
        except (ProcessLookupError, psutil.Error):
            continue
    return alive


def kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL the writer's whole process group and wait until none of it runs any more."""
    pgid = proc.pid
    os.killpg(pgid, signal.SIGKILL)
    proc.wait(timeout=30)
    stderr = proc.stderr.read()
    proc.stdout.close()
    proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL, f"the writer ended on its own ({proc.returncode}):\n{stderr}"
    deadline = time.monotonic() + 30
    while group_members(pgid):
        assert time.monotonic() < deadline, f"processes {group_members(pgid)} survived SIGKILL of their group"
        time.sleep(0.02)


def block_shapes(path: Path) -> dict[int, tuple[int, int, int]]:
    """{entry: block shape (z, y, x)} of every block position."""
    with Directory.open(str(path)) as volume:
        return {volume.layout.entry_index(*o): volume.get_block_size(*o)
                for o in block_origins(volume.shape, volume.x_block_size)}


@dataclass(frozen=True)
class Copy:
    """A sound record found in a shard: where its payload is, and which version it holds."""

    offset: int
    length: int
    version: int | None


def sound_records(path: Path) -> tuple[dict[int, list[Copy]], int]:
    """Every sound record in the volume's shards, as {entry: [copies in shard order]}, each
    decoded straight from the shard with blosc, and the number of stretches that are not a
    sound record (torn or damaged)."""
    shapes = block_shapes(path)
    with Directory.open(str(path)) as volume:
        shard_paths = volume.shard_paths
    found: dict[int, list[Copy]] = {}
    torn = 0
    for shard, shard_path in enumerate(shard_paths):
        data = Path(shard_path).read_bytes()
        position = 0
        for offset, record, length in records.scan(data, shard_path):
            assert offset == position and length > 0, "scan must tile the shard"
            position += length
            if record is None:
                torn += 1
                continue
            assert record.entry in shapes and record.entry % len(shard_paths) == shard, record
            start = offset + records.HEADER_SIZE
            block = np.frombuffer(blosc.decompress(data[start:start + record.length]), crash_writer.DTYPE)
            version = version_of(block.reshape(shapes[record.entry]), record.entry)
            found.setdefault(record.entry, []).append(Copy(start, record.length, version))
        assert position == len(data)
    return found, torn


def read_versions(path: Path) -> dict[int, int]:
    """{entry: version} of every block, read with read_block and again as one region: the two
    must agree, and each block must be a version of itself or zeros."""
    versions: dict[int, int] = {}
    with Directory.open(str(path)) as volume:
        whole = volume[:, :, :]
        for x, y, z in block_origins(volume.shape, volume.x_block_size):
            entry = volume.layout.entry_index(x, y, z)
            block = volume.read_block(x, y, z)
            dz, dy, dx = block.shape
            version = version_of(block, entry)
            assert version is not None, f"block (x={x}, y={y}, z={z}) holds garbage"
            assert np.array_equal(whole[z:z + dz, y:y + dy, x:x + dx], block), (x, y, z)
            versions[entry] = version
    return versions


def logged_versions(log: Path) -> dict[int, int]:
    """The newest acknowledged version of each entry, from the writer's log."""
    newest: dict[int, int] = {}
    if not log.exists():
        return newest
    for line in log.read_text().splitlines(keepends=True):
        if not line.endswith("\n"):
            continue  # a line cut short by the kill
        entry, version = map(int, line.split())
        newest[entry] = max(newest.get(entry, 0), version)
    return newest


# -- kill -9 at random moments --------------------------------------------------------------

def _trials() -> list[tuple[int, str, str, float]]:
    """(trial, writer mode, disk, delay before the kill): every combination, seeded delays."""
    rng = random.Random(KILL_SEED)
    return [(i, ("direct", "pool")[i % 2], ("page-cache", "sync")[i // 2 % 2],
             round(rng.uniform(MIN_DELAY, MAX_DELAY), 3)) for i in range(KILL_TRIALS)]


@pytest.fixture(scope="module")
def sync_disk(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path | None]:
    """An ext4 file system on a loop device mounted with ``-o sync``: every write waits for the
    device, so a kill lands between a block's append and its index entry far more often than on
    the page cache. None where it cannot be made (the trials then run on the page cache)."""
    base = tmp_path_factory.mktemp("sync-disk")
    image, mount_point = base / "disk.img", base / "mnt"
    mount_point.mkdir()
    with open(image, "wb") as f:
        f.truncate(512 << 20)

    try:
        made = subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], capture_output=True, timeout=120).returncode == 0
    except OSError:
        made = False
    try:
        with mounted(mount_point, "-o", "loop,sync", str(image)) as ok:
            yield mount_point if made and ok else None
    finally:
        image.unlink()


@dataclass
class TrialOutcome:
    mode: str
    disk: str
    delay: float
    present: int = 0
    missing: int = 0
    versions: tuple[int, int] = (0, 0)
    records_found: int = 0
    torn: int = 0
    unindexed: int = 0
    entries_changed: int = 0
    acknowledged: int = 0


@pytest.mark.slow
@pytest.mark.timeout(120)
@pytest.mark.parametrize("trial, mode, disk, delay", _trials(),
                         ids=[f"trial{i:02d}-{m}-{k}-{d}s" for i, m, k, d in _trials()])
def test_kill_9_then_check_repair_and_read(tmp_path: Path, sync_disk: Path | None, trial: int, mode: str, disk: str,
                                           delay: float) -> None:
    if disk == "sync" and sync_disk is None:
        disk = "page-cache (no sync disk)"
    folder = sync_disk / f"trial{trial:02d}" if disk == "sync" and sync_disk is not None else tmp_path / "volume"
    print(f"\n{run_trial(folder, tmp_path / 'acknowledged.log', mode, disk, delay)}")


def run_trial(folder: Path, log: Path, mode: str, disk: str, delay: float) -> TrialOutcome:
    """:func:`kill_trial` in ``folder``, removed afterwards (shards grow to tens of MiB per trial)."""
    folder.mkdir()
    try:
        return kill_trial(folder, log, mode, disk, delay)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def kill_trial(folder: Path, log: Path, mode: str, disk: str, delay: float) -> TrialOutcome:
    path = new_volume(folder)
    proc = start_writer(path, mode, *(("--log", str(log)) if mode == "direct" else ()))
    try:
        time.sleep(delay)
    finally:
        kill_tree(proc)
    outcome = TrialOutcome(mode, disk, delay)
    index_before = path.read_bytes()
    shapes = block_shapes(path)

    # check reports only the problem a crash may cause (in-process: the trial is about the volume;
    # the console tools are tested in test_integrity.py)
    report = check_volume(str(path))
    assert {p.kind for p in report.problems} <= CRASH_PROBLEMS, report.problems
    flagged = {p.entry for p in report.problems}
    assert all(p.block is not None and len(p.block) == 3 for p in report.problems)

    # every block reads as a version or zeros, before repair too
    before = read_versions(path)

    # what the shards hold: every sound record is a version of its block
    found, outcome.torn = sound_records(path)
    for entry, copies in found.items():
        assert all(c.version for c in copies), f"entry {entry}: a sound record holds garbage: {copies}"
    last = {entry: copies[-1] for entry, copies in found.items()}
    stale = {entry for entry, copy in last.items() if spec_decoder.entry(path, entry) != (copy.offset, copy.length)}
    assert flagged == stale, "check must flag exactly the blocks whose newest record is not indexed"
    outcome.records_found, outcome.unindexed = len(last), len(stale)

    repaired = repair_volume(str(path))
    assert repaired.blocks_indexed == len(last), "repair must index every entry that has a complete record"
    assert repaired.entries_changed == len(stale), repaired
    outcome.entries_changed = repaired.entries_changed
    backups = sorted(folder.glob("volume.blockfs.bak*"))
    if stale:
        assert backups == [Path(repaired.backup)] and backups[0].read_bytes() == index_before, \
            "the old index must be kept"
    else:
        assert repaired.backup is None and not backups
        assert path.read_bytes() == index_before

    after_check = check_volume(str(path))
    assert after_check.healthy, after_check.problems

    after = read_versions(path)
    for entry in shapes:
        assert after[entry] == (last[entry].version if entry in last else 0), \
            f"entry {entry}: repair must index its newest complete record"
        assert before[entry] <= after[entry], f"entry {entry}: repair went back to an older version"
    if mode == "direct":
        acknowledged = logged_versions(log)
        outcome.acknowledged = sum(1 for line in log.read_text().splitlines() if line.strip())
        for entry, version in acknowledged.items():
            assert before[entry] >= version, f"entry {entry}: acknowledged version {version} lost before repair"
            assert after[entry] >= version, f"entry {entry}: acknowledged version {version} lost by repair"
    present = [v for v in after.values() if v]
    outcome.present, outcome.missing = len(present), len(after) - len(present)
    outcome.versions = (min(present, default=0), max(present, default=0))
    return outcome


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_a_kill_on_the_sync_disk_leaves_a_record_for_repair(tmp_path: Path, sync_disk: Path | None) -> None:
    """Kill trials on the sync disk, until one lands between a block's append and its index entry:
    within a few seeded trials at least one must, so that the trials really exercise repair."""
    if sync_disk is None:
        unavailable("no sync disk (a loop-mounted ext4 needs root, mkfs.ext4 and mount)")
    rng = random.Random(KILL_SEED)
    outcomes = []
    for trial in range(SYNC_TRIALS):
        mode = ("direct", "pool")[trial % 2]
        outcome = run_trial(sync_disk / f"repairable{trial:02d}", tmp_path / f"acknowledged{trial}.log", mode, "sync",
                            round(rng.uniform(MIN_DELAY, MAX_DELAY), 3))
        outcomes.append(outcome)
        if outcome.unindexed:
            return
    pytest.fail(f"no kill of {SYNC_TRIALS} on the sync disk landed between an append and its index entry: {outcomes}")


# -- torn tails, made on purpose -----------------------------------------------------------

def test_repair_recovers_every_complete_record_after_torn_tails(tmp_path: Path) -> None:
    """Cut shards at seeded random points (inside headers, inside payloads, between records)
    and add a half-written record: repair indexes exactly the last complete record of each
    entry, and every block then reads as that version."""
    path = new_volume(tmp_path)
    done = subprocess.run([sys.executable, str(WRITER), str(path), "--mode", "direct", "--versions", "3",
                           "--seconds", "60"], check=False, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "done 3 3" in done.stdout, done.stderr
    volume = Directory.open(str(path))
    shard_paths = volume.shard_paths
    entries = {o: volume.layout.entry_index(*o) for o in block_origins(crash_writer.SHAPE, crash_writer.BLOCK)}
    volume.close()
    pristine = {p: Path(p).read_bytes() for p in shard_paths}
    index = path.read_bytes()
    rng = random.Random(7)
    for cut in range(6):
        for shard_path, data in pristine.items():
            keep = rng.randrange(len(data) // 3, len(data))
            torn_head = records.encode(0, b"x" * 1000)[:rng.randrange(1, records.HEADER_SIZE)]
            Path(shard_path).write_bytes(data[:keep] + (torn_head if cut % 2 else b""))
        path.write_bytes(index)
        for backup in tmp_path.glob("volume.blockfs.bak*"):
            backup.unlink()
        found, torn = sound_records(path)
        assert torn >= 1 or cut % 2 == 0
        last = {entry: copies[-1] for entry, copies in found.items()}

        assert not check_volume(str(path)).healthy, "an index pointing past the cut must be reported"
        repaired = repair_volume(str(path))
        assert repaired.blocks_indexed == len(last)
        # every block was indexed before the cut: those left without a complete copy are recorded as lost
        lost = {o for o in block_origins(crash_writer.SHAPE, crash_writer.BLOCK) if entries[o] not in last}
        assert set(repaired.unsaved) == lost, (cut, repaired.unsaved)
        report = check_volume(str(path))
        assert {(p.kind, p.block) for p in report.problems} == {("lost-block", o) for o in lost}, report.problems
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", LostBlocksWarning)  # expected where blocks were lost
            volume = Directory.open(str(path))
        with volume:
            for origin in block_origins(crash_writer.SHAPE, crash_writer.BLOCK):
                entry = volume.layout.entry_index(*origin)
                got = volume.read_block(*origin)
                if entry in last:
                    assert last[entry].version and version_of(got, entry) == last[entry].version, (cut, origin)
                    assert spec_decoder.entry(path, entry) == (last[entry].offset, last[entry].length)
                else:
                    assert not got.any(), (cut, origin)


# -- readers while a writer writes ----------------------------------------------------------

class Monitor:
    """Checks every piece a reader sees, and remembers the versions seen per block."""

    def __init__(self, volume: Directory):
        self.volume = volume
        self.origins = block_origins(volume.shape, volume.x_block_size)
        self.entries = {o: volume.layout.entry_index(*o) for o in self.origins}
        self.lock = threading.Lock()
        self.seen: dict[int, set[int]] = {e: set() for e in self.entries.values()}
        self.reads = Counter()
        self.errors: list[str] = []

    def check_piece(self, newest: dict[int, int], origin: tuple[int, int, int], piece: np.ndarray,
                    where: tuple[slice, ...], how: str) -> None:
        entry = self.entries[origin]
        version = version_of(piece, entry, self.volume.get_block_size(*origin), where)
        if version is None:
            raise AssertionError(f"{how}: block {origin} is partial or mixed")
        if version < newest.get(entry, 0):
            raise AssertionError(f"{how}: block {origin} went back from version {newest[entry]} to {version}")
        newest[entry] = version
        with self.lock:
            self.seen[entry].add(version)
            self.reads[how] += 1

    def run(self, how: str, stop: threading.Event, seed: int) -> None:
        rng = random.Random(seed)
        newest: dict[int, int] = {}  # per reader: versions never go back
        shape = self.volume.shape
        bz, by, bx = self.volume.get_block_size(0, 0, 0)
        try:
            while not stop.is_set():
                if how == "read_block":
                    origin = rng.choice(self.origins)
                    block = self.volume.read_block(*origin)
                    self.check_piece(newest, origin, block, (slice(None),) * 3, how)
                    continue
                start = [rng.randrange(n) for n in shape]
                stop_at = [rng.randrange(a + 1, n + 1) for a, n in zip(start, shape)]
                if rng.random() < 0.1:
                    start, stop_at = [0, 0, 0], list(shape)
                region = self.volume[start[0]:stop_at[0], start[1]:stop_at[1], start[2]:stop_at[2]]
                for origin in self.origins:
                    x, y, z = origin
                    lo = [max(a, o) for a, o in zip(start, (z, y, x))]
                    hi = [min(b, o + n) for b, o, n in zip(stop_at, (z, y, x), (bz, by, bx))]
                    if any(h <= low for low, h in zip(lo, hi)):
                        continue
                    piece = region[tuple(slice(low - a, h - a) for low, h, a in zip(lo, hi, start))]
                    where = tuple(slice(low - o, h - o) for low, h, o in zip(lo, hi, (z, y, x)))
                    self.check_piece(newest, origin, piece, where, how)
        except (AssertionError, BlockfsError) as exc:
            with self.lock:
                self.errors.append(f"{type(exc).__name__}: {exc}")
            stop.set()


def _reader_process(path: str, seconds: float, result: Any) -> None:
    """A reader in a process of its own: read_block in a loop; report the first failure."""
    volume = Directory.open(path)
    monitor = Monitor(volume)
    stop = threading.Event()
    timer = threading.Timer(seconds, stop.set)
    timer.start()
    monitor.run("read_block", stop, seed=99)
    timer.cancel()
    result.put((monitor.errors[:1], sum(monitor.reads.values()), max(len(v) for v in monitor.seen.values())))


@pytest.mark.timeout(120)
@pytest.mark.parametrize("mode", ["direct", "pool"])
def test_readers_never_see_a_partial_block(tmp_path: Path, mode: str) -> None:
    path = new_volume(tmp_path)
    volume = Directory.open(str(path))  # opened before anything was written
    monitor = Monitor(volume)
    ctx = multiprocessing.get_context("fork")
    result = ctx.Queue()
    reader = ctx.Process(target=_reader_process, args=(str(path), 4.0, result))
    reader.start()
    writer = subprocess.Popen([sys.executable, str(WRITER), str(path), "--mode", mode, "--seconds", "2.5"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    stop = threading.Event()
    threads = [threading.Thread(target=monitor.run, args=(how, stop, seed))
               for seed, how in enumerate(["read_block", "region", "region"])]
    for thread in threads:
        thread.start()
    try:
        out, err = writer.communicate(timeout=90)
    finally:
        if writer.returncode is None:
            os.killpg(writer.pid, signal.SIGKILL)
            writer.wait()
        stop.set()
        for thread in threads:
            thread.join(60)
    assert writer.returncode == 0, err
    errors, process_reads, process_versions = result.get(timeout=60)
    reader.join(60)
    assert reader.exitcode == 0
    assert not monitor.errors, monitor.errors[:3]
    assert not errors, errors
    assert monitor.reads["read_block"] > 100 and monitor.reads["region"] > 100, monitor.reads
    assert process_reads > 100
    # the readers really ran while blocks changed under them
    assert max(len(v) for v in monitor.seen.values()) >= 3, monitor.seen
    assert process_versions >= 3
    print(f"\n{mode}: {dict(monitor.reads)} pieces checked in threads, {process_reads} blocks in a reader process, "
          f"up to {max(len(v) for v in monitor.seen.values())} versions of one block seen")

    # once the writer is done, the reader opened before it sees the final versions
    done = re.search(r"done (\d+) (\d+)", out)
    assert done is not None, out
    mine, theirs = crash_writer.split(monitor.origins, volume.y_block_size)
    final = {**{o: int(done.group(1)) for o in mine}, **{o: int(done.group(2)) for o in theirs}}
    for origin, version in final.items():
        block = volume.read_block(*origin)
        assert np.array_equal(block, block_content(monitor.entries[origin], version, block.shape)), origin
    volume.close()
