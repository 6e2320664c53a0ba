"""The launcher: writers fork from it, not from their owner; it ends with its owner; losing it loses no block."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest

import producers
from helpers import origins_of
from test_writers import new_volume

from blockfs import Directory
from blockfs.errors import WriterError
from blockfs.launcher import Launcher

pytestmark = pytest.mark.timeout(120)

SEED = 5
MIB = 2**20


def write_all(d: Directory, origins: list[tuple[int, int, int]]) -> None:
    for x, y, z in origins:
        d.write_block(producers.sample_block(x, y, z, d.get_block_size(x, y, z), SEED), x, y, z)


def launcher_of(d: Directory) -> psutil.Process:
    parents = {psutil.Process(w.process.pid).ppid() for w in d.writers}
    assert len(parents) == 1, f"the writers have different parents: {parents}"
    return psutil.Process(parents.pop())


def test_writers_fork_from_a_launcher_and_carry_none_of_the_owners_memory(tmp_path: Path) -> None:
    held = np.ones(512 * MIB // 8, np.uint64)  # 512 MiB the owner has touched
    d = new_volume(tmp_path)
    try:
        d.start_writer_processes(queue_depth=2)
        launcher = launcher_of(d)
        assert launcher.pid != os.getpid() and launcher.ppid() == os.getpid()
        for w in d.writers:
            rss = psutil.Process(w.process.pid).memory_info().rss
            assert rss < 256 * MIB, f"writer {w.process.pid} maps {rss / MIB:.0f} MiB: forked from the owner?"
        write_all(d, origins_of(d))
    finally:
        d.close()
    assert int(held[-1]) == 1
    assert_volume_is_the_sample(d)


def test_the_launcher_is_shared_and_exits_with_its_owner(tmp_path: Path) -> None:
    script = (f"import sys, numpy as np; sys.path.insert(0, {str(producers.REPO_ROOT)!r}); "
              "from blockfs import Directory; import psutil\n"
              "parents = set()\n"
              "for name in ('a', 'b'):\n"
              f"    d = Directory(128, 128, 128, np.uint16, {str(tmp_path)!r} + f'/{{name}}.blockfs',\n"
              "                  n_filenames=2).create()\n"
              "    d.start_writer_processes()\n"
              "    d.write_block(np.ones((64, 64, 64), np.uint16), 0, 0, 0)\n"
              "    parents |= {psutil.Process(w.process.pid).ppid() for w in d.writers}\n"
              "    d.close()\n"
              "print(*parents, flush=True)\n")
    owner = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert owner.returncode == 0, owner.stderr
    parents = [int(p) for p in owner.stdout.split()]
    assert len(parents) == 1, f"two volumes in one owner used launchers {parents}"
    deadline = time.monotonic() + 10
    while psutil.pid_exists(parents[0]) and psutil.Process(parents[0]).status() != psutil.STATUS_ZOMBIE:
        assert time.monotonic() < deadline, f"launcher {parents[0]} outlived its owner by 10 s"
        time.sleep(0.05)
    for name in ("a", "b"):
        with Directory.open(str(tmp_path / f"{name}.blockfs")) as reader:
            assert reader.read_block(0, 0, 0).min() == 1


def kill_the_launcher(d: Directory) -> psutil.Process:
    launcher = launcher_of(d)
    launcher.send_signal(signal.SIGKILL)
    launcher.wait(10)
    return launcher


def assert_volume_is_the_sample(d: Directory) -> None:
    with Directory.open(d.directory_filename) as reader:
        np.testing.assert_array_equal(reader[:, :, :], producers.expected_volume(reader, SEED))


def test_a_launcher_killed_mid_write_loses_no_block(tmp_path: Path) -> None:
    d = new_volume(tmp_path)
    origins = origins_of(d)
    try:
        d.start_writer_processes(queue_depth=2)
        write_all(d, origins[:10])
        launcher = kill_the_launcher(d)
        write_all(d, origins[10:])
    finally:
        d.close()  # the writers end cleanly; that they have no launcher left to record it is no error
    assert_volume_is_the_sample(d)
    again = new_volume(tmp_path, name="again.blockfs")
    try:
        again.start_writer_processes(queue_depth=2)  # a new launcher
        assert launcher_of(again).pid != launcher.pid
        write_all(again, origins)
    finally:
        again.close()
    assert_volume_is_the_sample(again)


def test_a_writer_killed_after_its_launcher_is_reported_without_a_hang(tmp_path: Path) -> None:
    d = new_volume(tmp_path)
    origins = origins_of(d)
    try:
        d.start_writer_processes(queue_depth=2)
        write_all(d, origins[:4])
        kill_the_launcher(d)
        victim = d.writers[1]
        os.kill(victim.process.pid, signal.SIGKILL)
        started = time.monotonic()
        with pytest.raises(WriterError) as raised:
            write_all(d, origins[4:])
        assert victim.name in str(raised.value) and "launcher" in str(raised.value), raised.value
        with pytest.raises(WriterError, match="launcher"):
            d.close()
        assert time.monotonic() - started < 30
    finally:
        d.close()


def test_a_dead_launcher_is_a_writer_error_not_a_file_error() -> None:
    """The launcher's failures are blockfs's own (WriterError), not OSErrors naming no file."""
    dead = Launcher()
    dead.process.kill()
    dead.process.wait()
    memory_fd = os.memfd_create("status")
    try:
        with pytest.raises(WriterError, match="launcher process"):
            dead.start(print, (), memory_fd, None, [])  # type: ignore[arg-type]  # never reaches the child
    finally:
        os.close(memory_fd)
        dead.close()
