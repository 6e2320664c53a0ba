"""Writing one volume from many producers: forked, spawned, forkserver and unrelated processes.

Every test rebuilds the volume it expects (sample blocks are deterministic in their origin, seed
and version) and compares every voxel of what reads back from a fresh read-only open.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pytest

import producers
import spec_decoder
from helpers import origins_of

from blockfs import Directory
from blockfs.ops.check import check_volume
from blockfs.sample import microscopy_block

pytestmark = pytest.mark.timeout(120)

SEED = 11
#: (x, y, z) extents: 4 x 3 x 3 blocks of 64^3, the last ones truncated on every axis.
EXTENTS = (200, 150, 130)
POOL_SECONDS = 60


def new_volume(tmp_path: Path, extents: tuple[int, int, int] = EXTENTS, name: str = "volume.blockfs",
               **kwargs: Any) -> Directory:
    d = Directory(*extents, np.uint16, str(tmp_path / name), **({"n_filenames": 2} | kwargs), x_block_size=64,
                  y_block_size=64, z_block_size=64)
    return d.create()


def assert_volume_equals(path: str, expected: np.ndarray) -> None:
    """Every voxel of the volume at ``path``, opened read-only afresh, equals ``expected``."""
    with Directory.open(path, "r") as reader:
        assert reader.shape == expected.shape
        got = reader[:, :, :]
    assert got.dtype == expected.dtype
    mismatched = int(np.count_nonzero(got != expected))
    assert mismatched == 0, f"{path}: {mismatched} of {expected.size} voxels differ"


# -- the README pattern ---------------------------------------------------------------------

def test_readme_pattern_fork_pool(tmp_path: Path) -> None:
    d = new_volume(tmp_path)
    with producers.module_directory(d):
        d.start_writer_processes()
        assert len(d.writers) == 2
        jobs = [(x, y, z, SEED) for x, y, z in origins_of(d)]
        with producers.pool_of("fork", 2) as pool:
            pids = pool.starmap_async(producers.write_sample, jobs).get(timeout=POOL_SECONDS)
        d.close()
    assert len(pids) == 36
    assert os.getpid() not in pids, "the blocks must have been written by the pool workers"
    assert_volume_equals(d.directory_filename, producers.expected_volume(d, SEED))


# -- spawn and forkserver workers that receive the Directory through an initializer -----

@pytest.mark.parametrize("method", ["spawn", "forkserver"])
def test_pool_initializer_producers(tmp_path: Path, method: str) -> None:
    d = new_volume(tmp_path)
    try:
        d.start_writer_processes()
        origins = origins_of(d)
        mine = origins[::5]  # the owner writes some blocks through its writers meanwhile
        theirs = [o for o in origins if o not in mine]
        with producers.pool_of(method, 2, initializer=producers.init, initargs=(d,)) as pool:
            pid, mode, path = pool.apply_async(producers.describe_directory).get(timeout=POOL_SECONDS)
            assert (mode, path) == ("r+", d.directory_filename) and pid != os.getpid()
            result = pool.starmap_async(producers.write_sample, [(x, y, z, SEED) for x, y, z in theirs])
            for x, y, z in mine:
                d.write_block(producers.sample_block(x, y, z, d.get_block_size(x, y, z), SEED), x, y, z)
            pids = result.get(timeout=POOL_SECONDS)
        d.close()
    finally:
        d.close()
    assert os.getpid() not in pids and len(pids) == len(theirs)
    assert_volume_equals(d.directory_filename, producers.expected_volume(d, SEED))


# -- unrelated processes writing the same volume at the same time ------------------------------

@pytest.mark.parametrize("use_writers", [True, False], ids=["writer-processes", "direct"])
def test_three_unrelated_processes(tmp_path: Path, use_writers: bool) -> None:
    d = new_volume(tmp_path)
    d.close()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(producers.TESTS_DIR), str(producers.REPO_ROOT)]))
    code = "import json, sys, producers; producers.unrelated_writer(**json.loads(sys.argv[1]))"
    go_file = tmp_path / "go"
    jobs = []
    try:
        for worker in range(3):
            args = {"path": d.directory_filename, "worker": worker, "n_workers": 3, "seed": SEED,
                    "use_writers": use_writers, "go_file": str(go_file),
                    "ready_file": str(tmp_path / f"ready-{worker}")}
            jobs.append(subprocess.Popen([sys.executable, "-c", code, json.dumps(args)], cwd=producers.REPO_ROOT,
                                         env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
        deadline = time.monotonic() + 60
        while not all((tmp_path / f"ready-{w}").exists() for w in range(3)):
            assert all(job.poll() is None for job in jobs), "a writer job exited before it was ready"
            assert time.monotonic() < deadline, "the writer jobs did not get ready"
            time.sleep(0.01)
        go_file.touch()  # all three are running: let them write at once
        outputs = [job.communicate(timeout=60) for job in jobs]
    finally:
        for job in jobs:
            if job.poll() is None:
                job.kill()
                job.communicate()
    for job, (out, err) in zip(jobs, outputs):
        assert job.returncode == 0, err
        assert "wrote 12 blocks" in out
    assert_volume_equals(d.directory_filename, producers.expected_volume(d, SEED))


# -- the same block written many times: the last write wins --------------------------------

def test_last_write_wins_many_versions(tmp_path: Path) -> None:
    versions = 300
    d = new_volume(tmp_path, n_offset_bits=32)  # 300 copies of a block outgrow the earlier rule's widths
    origins = origins_of(d)
    owner_blocks = [origins[0], origins[3]]   # shards 0 and 1, through the writer processes
    producer_blocks = [origins[1], origins[2]]  # shards 1 and 0, appended directly by forked workers
    with producers.module_directory(d):
        d.start_writer_processes(queue_depth=4)
        for x, y, z in origins[4:]:
            d.write_block(producers.sample_block(x, y, z, d.get_block_size(x, y, z), SEED), x, y, z)
        with producers.pool_of("fork", 2) as pool:
            result = pool.starmap_async(producers.write_versions,
                                        [(x, y, z, SEED, versions) for x, y, z in producer_blocks], chunksize=1)
            bases = {o: producers.sample_block(*o, d.get_block_size(*o), SEED) for o in owner_blocks}
            for version in range(versions):
                for (x, y, z), base in bases.items():
                    d.write_block(producers.version_block(base, version), x, y, z)
            pids = result.get(timeout=POOL_SECONDS)
        d.close()
    assert os.getpid() not in pids
    # every version was appended (nothing was skipped or overwritten in place)
    smallest = min(len(np.asarray(b).tobytes()) for b in bases.values()) // 8
    assert all(os.path.getsize(p) > 2 * versions * smallest for p in (f"{d.directory_filename}.0",
                                                                      f"{d.directory_filename}.1"))
    last = {o: versions - 1 for o in owner_blocks + producer_blocks}
    assert_volume_equals(d.directory_filename, producers.expected_volume(d, SEED, last))


def test_one_shard_compresses_on_every_core_and_the_last_write_wins(tmp_path: Path) -> None:
    """One shard, so its writer compresses on several threads: a slow block queued before a fast
    version of the same block must still be appended first, so the fast (later) one wins."""
    d = new_volume(tmp_path, n_filenames=1, n_offset_bits=32)
    origins = origins_of(d)
    # sparse photon counts take zstd about 14x longer than a sample block
    slow = [np.random.default_rng(k).poisson(5, d.get_block_size(*o)).astype(np.uint16)
            for k, o in enumerate(origins[:2])]
    try:
        d.start_writer_processes(queue_depth=4)
        assert [w.threads for w in d.writers] == [max(1, os.cpu_count() or 1)]
        for version in range(40):
            for k, (x, y, z) in enumerate(origins[:2]):
                d.write_block(slow[k], x, y, z)
                d.write_block(producers.sample_block(x, y, z, d.get_block_size(x, y, z), SEED, version), x, y, z)
        for x, y, z in origins[2:]:
            d.write_block(producers.sample_block(x, y, z, d.get_block_size(x, y, z), SEED), x, y, z)
    finally:
        d.close()
    assert_volume_equals(d.directory_filename, producers.expected_volume(d, SEED, {o: 39 for o in origins[:2]}))


def test_a_stalled_writer_does_not_hold_up_the_others(tmp_path: Path) -> None:
    """A writer with nothing of its own to do takes its neighbours' blocks, and any writer appends to any
    shard: with one writer stopped (SIGSTOP), the owner queues every block of both shards through the other one."""
    d = new_volume(tmp_path, extents=(256, 256, 256))  # 64 blocks, 8 slots in all
    origins = origins_of(d)
    try:
        d.start_writer_processes(queue_depth=2)
        stalled, running = d.writers
        os.kill(stalled.process.pid, signal.SIGSTOP)
        try:
            for x, y, z in origins:
                d.write_block(producers.sample_block(x, y, z, d.get_block_size(x, y, z), SEED), x, y, z)
            deadline = time.monotonic() + 30
            while (stored := sum(spec_decoder.entry(d.directory_filename, d.layout.entry_index(*o))[1] > 0
                                 for o in origins)) < len(origins) - stalled.threads:
                assert time.monotonic() < deadline, f"{stored} of {len(origins)} blocks stored"
                time.sleep(0.05)
        finally:
            os.kill(stalled.process.pid, signal.SIGCONT)
        d.close()
    finally:
        d.close()
    assert_volume_equals(d.directory_filename, producers.expected_volume(d, SEED))


def test_callers_poll_the_queue_size(tmp_path: Path) -> None:
    """``writers[i].q_in.qsize()`` (as pipelines poll it) counts the blocks queued for writer i's shard and not
    yet taken."""
    d = new_volume(tmp_path)
    origins = origins_of(d)
    try:
        d.start_writer_processes(queue_depth=2)
        for writer in d.writers:
            os.kill(writer.process.pid, signal.SIGSTOP)
        try:
            for x, y, z in origins[:5]:
                d.write_block(producers.sample_block(x, y, z, d.get_block_size(x, y, z), SEED), x, y, z)
            queued = [sum(d.layout.shard_of(d.layout.entry_index(*o)) == k for o in origins[:5]) for k in range(2)]
            assert queued == [3, 2]
            assert [w.q_in.qsize() for w in d.writers] == queued
        finally:
            for writer in d.writers:
                os.kill(writer.process.pid, signal.SIGCONT)
        deadline = time.monotonic() + 30
        while any(w.q_in.qsize() for w in d.writers):
            assert time.monotonic() < deadline, "the writers never took the queued blocks"
            time.sleep(0.01)
        for x, y, z in origins[5:]:
            d.write_block(producers.sample_block(x, y, z, d.get_block_size(x, y, z), SEED), x, y, z)
        d.close()
        assert [w.q_in.qsize() for w in d.writers] == [0, 0]  # nothing is queued once closed
    finally:
        d.close()
    assert_volume_equals(d.directory_filename, producers.expected_volume(d, SEED))


def test_writers_exit_when_their_owner_is_killed(tmp_path: Path) -> None:
    path = tmp_path / "volume.blockfs"
    script = (f"import sys, time, numpy as np; sys.path.insert(0, {str(producers.REPO_ROOT)!r}); "
              "from blockfs import Directory; "
              f"d = Directory(256, 256, 256, np.uint16, {str(path)!r}, n_filenames=2).create(); "
              "d.start_writer_processes(); "
              "[d.write_block(np.full((64, 64, 64), k, np.uint16), 64 * (k % 4), 64 * (k // 4 % 4), 0) "
              "for k in range(16)]; "
              "print(*[w.process.pid for w in d.writers], flush=True); time.sleep(60)")
    owner = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        writer_pids = [int(p) for p in owner.stdout.readline().split()]
        assert len(writer_pids) == 2
        writers = [psutil.Process(pid) for pid in writer_pids]
        launcher = psutil.Process(writers[0].ppid())
        assert launcher.ppid() == owner.pid
        owner.kill()
        owner.wait(10)
        gone, alive = psutil.wait_procs([*writers, launcher], timeout=10)
        assert not alive, f"writer processes or their launcher {[p.pid for p in alive]} outlived their killed owner"
    finally:
        owner.kill()
        owner.stdout.close()


def test_writers_work_above_descriptor_1024(tmp_path: Path) -> None:
    """A pipeline with many files open: the writers' pipes get descriptor numbers select() cannot take."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 2048:
        pytest.fail(f"this test needs RLIMIT_NOFILE of at least 2048; the hard limit is {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 2048), hard))
    held = [os.open(os.devnull, os.O_RDONLY) for _ in range(1100)]
    try:
        d = new_volume(tmp_path)
        try:
            d.start_writer_processes(queue_depth=2)
            assert min(w.q_in.write_fd for w in d.writers) > 1024
            for x, y, z in origins_of(d):
                d.write_block(producers.sample_block(x, y, z, d.get_block_size(x, y, z), SEED), x, y, z)
        finally:
            d.close()
    finally:
        for fd in held:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert_volume_equals(d.directory_filename, producers.expected_volume(d, SEED))


# -- without writer processes, writes are synchronous ---------------------------------------

def test_synchronous_writes_without_writer_processes(tmp_path: Path) -> None:
    children_before = {p.pid for p in psutil.Process().children(recursive=True)}
    d = new_volume(tmp_path)
    reader = Directory.open(d.directory_filename, "r")
    try:
        assert d.writers == []
        block = producers.sample_block(64, 0, 0, (64, 64, 64), SEED, version=5)
        d.write_block(block, 64, 0, 0)
        np.testing.assert_array_equal(reader.read_block(64, 0, 0), block)  # on disk when write_block returns

        region = np.concatenate([producers.sample_block(x, 0, 0, (64, 64, 64), SEED) for x in (0, 64)], axis=2)
        d[0:64, 0:64, 0:128] = region
        np.testing.assert_array_equal(reader[0:64, 0:64, 0:128], region)
        edge = producers.sample_block(192, 128, 128, (2, 22, 8), SEED)
        d[128:130, 128:150, 192:200] = edge
        np.testing.assert_array_equal(reader[128:, 128:, 192:], edge)

        done = {(0, 0, 0), (64, 0, 0), (192, 128, 128)}
        for x, y, z in origins_of(d):
            if (x, y, z) not in done:
                d.write_block(producers.sample_block(x, y, z, d.get_block_size(x, y, z), SEED), x, y, z)
        assert {p.pid for p in psutil.Process().children(recursive=True)} <= children_before, \
            "writing without start_writer_processes() must not start processes"
        np.testing.assert_array_equal(reader[:, :, :], producers.expected_volume(d, SEED))
        d.close()
    finally:
        reader.close()
        d.close()
    assert_volume_equals(d.directory_filename, producers.expected_volume(d, SEED))


# -- memory is bounded by the queues --------------------------------------------------------

class MemorySampler(threading.Thread):
    """Peak RSS and USS of some processes, sampled every ``interval`` seconds."""

    def __init__(self, pids: list[int], interval: float = 0.05):
        super().__init__(daemon=True)
        self.processes = {pid: psutil.Process(pid) for pid in pids}
        self.interval = interval
        self.first: dict[int, int] = {}
        self.peak_rss = dict.fromkeys(pids, 0)
        self.peak_uss = dict.fromkeys(pids, 0)
        self.samples = 0
        self._stop_event = threading.Event()

    def sample(self) -> None:
        for pid, process in self.processes.items():
            try:
                info = process.memory_full_info()
            except (psutil.NoSuchProcess, psutil.ZombieProcess):
                continue
            self.first.setdefault(pid, info.rss)
            self.peak_rss[pid] = max(self.peak_rss[pid], info.rss)
            self.peak_uss[pid] = max(self.peak_uss[pid], info.uss)
        self.samples += 1

    def run(self) -> None:
        while not self._stop_event.is_set():
            self.sample()
            self._stop_event.wait(self.interval)

    def stop(self) -> None:
        self._stop_event.set()
        self.join(10)
        self.sample()


def test_writer_memory_is_bounded(tmp_path: Path) -> None:
    mib = 2**20
    queue_depth = 4
    d = new_volume(tmp_path, extents=(512, 512, 512))  # 512 blocks of 512 KiB: 256 MiB
    origins = origins_of(d)
    bases = [microscopy_block((0, 0, 64 * i), (64, 64, 64), SEED) for i in range(8)]

    def block(k: int) -> np.ndarray:
        return producers.version_block(bases[k % len(bases)], k)

    try:
        d.start_writer_processes(queue_depth=queue_depth)
        writer_pids = [w.process.pid for w in d.writers]
        sampler = MemorySampler([os.getpid(), *writer_pids])
        sampler.sample()
        main_before = sampler.first[os.getpid()]
        sampler.start()
        start = time.perf_counter()
        for k, (x, y, z) in enumerate(origins):
            d.write_block(block(k), x, y, z)
        d.close()
        seconds = time.perf_counter() - start
        sampler.stop()
    finally:
        d.close()
    written = len(origins) * 64**3 * 2
    assert written == 256 * mib
    assert sampler.samples >= 5, "too few memory samples to say anything"
    main_growth = sampler.peak_rss[os.getpid()] - main_before
    report = (f"{written / mib:.0f} MiB in {seconds:.1f} s; main +{main_growth / mib:.0f} MiB; writers peak RSS "
              f"{[round(sampler.peak_rss[p] / mib) for p in writer_pids]} MiB, peak USS "
              f"{[round(sampler.peak_uss[p] / mib) for p in writer_pids]} MiB, growth "
              f"{[round((sampler.peak_rss[p] - sampler.first[p]) / mib) for p in writer_pids]} MiB")
    for pid in writer_pids:
        # a forked writer's RSS counts the pages it shares with this (large) test process; its own are USS
        assert sampler.peak_uss[pid] < 100 * mib, report
        # a writer that kept its blocks would grow by its half of the data (128 MiB)
        assert sampler.peak_rss[pid] - sampler.first[pid] < 64 * mib, report
    # unbounded queues would buffer most of the 256 MiB in this process's feeder threads
    in_flight = queue_depth * len(writer_pids) * 64**3 * 2
    assert main_growth < 4 * in_flight + 16 * mib, report

    with Directory.open(d.directory_filename, "r") as reader:
        for z in range(0, 512, 64):
            slab = reader[z:z + 64]
            expected = np.empty_like(slab)
            for k, (x, y, bz) in enumerate(origins):
                if bz == z:
                    expected[:, y:y + 64, x:x + 64] = block(k)
            mismatched = int(np.count_nonzero(slab != expected))
            assert mismatched == 0, f"slab z={z}: {mismatched} voxels differ"


@pytest.mark.parametrize("records", [True, False])
def test_blocks_compressed_by_the_producer_when_the_writers_are_behind(tmp_path: Path, records: bool) -> None:
    """With the writers stopped, their queues fill and ``write_block`` compresses the blocks into their slots
    itself (edge blocks too); the writers then only append them, and every block reads back and checks sound."""
    d = new_volume(tmp_path, records=records)
    origins = origins_of(d)  # 4 x 3 x 3 blocks of 64^3, the last of each axis cut short
    try:
        d.start_writer_processes(queue_depth=4)  # compressed by the producer from 2 blocks waiting per writer on
        for writer in d.writers:
            os.kill(writer.process.pid, signal.SIGSTOP)
        try:
            for x, y, z in origins[:12]:
                d.write_block(producers.sample_block(x, y, z, d.get_block_size(x, y, z), SEED), x, y, z)
            pool = d.writable.sink
            encoded = [bytes(pool._slot_memory[slot][:4]) == b"BFRC" for slot in pool._queued]
            if records:
                assert sum(encoded) == 12 - 2 * 2, "the blocks past the first two per writer were not compressed"
        finally:
            for writer in d.writers:
                os.kill(writer.process.pid, signal.SIGCONT)
        for x, y, z in origins[12:]:
            d.write_block(producers.sample_block(x, y, z, d.get_block_size(x, y, z), SEED), x, y, z)
        d.close()
    finally:
        d.close()
    assert_volume_equals(d.directory_filename, producers.expected_volume(d, SEED))
    report = check_volume(d.directory_filename, deep=True)
    assert not report.problems and not report.damaged, report
