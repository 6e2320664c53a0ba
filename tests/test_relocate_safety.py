"""blockfs-mv, blockfs-cp and blockfs-rebase where a careless copy, a live writer, a full disk or a kill
would cost data: the tools run as installed commands on real volumes, beside real processes.

* A move takes only the volume's own files: never the shards of the volume a ``cp -r`` copy still
  names, a file outside its folder, a symbolic link, or the shards another index there names.
* mv, cp and rebase refuse a volume that a process has open for writing (a ``Directory`` opened
  "r+", a writer pool), and writers cannot start while they run.
* A full disk is reported naming the file, and leaves nothing behind; a run killed at any moment
  leaves a complete volume at the source or the destination, never an output that opens as one
  while incomplete, and the re-run completes.
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import selectors
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from helpers import console, mounted, unavailable
from terminal import open_terminal, read_all
from volumes import make_volume as write_volume

from blockfs import Directory
from blockfs.ops.relocate import read_directory_file, relocate

pytestmark = pytest.mark.timeout(300)

#: A volume that takes a moment to copy: 4 shards of 16 MiB of incompressible blocks.
BIG_SHAPE = (128, 512, 512)
BIG_BLOCK = 64
#: Holds the volume open for writing (with writer processes if asked) until its stdin closes.
HOLDER = """
import sys
from blockfs import Directory
d = Directory.open(sys.argv[1], "r+")
if sys.argv[2] == "pool":  # the writers open the volume as they store blocks: rewrite each with its own voxels
    d.start_writer_processes()
    for z in range(0, d.z_extent, d.z_block_size):
        for y in range(0, d.y_extent, d.y_block_size):
            for x in range(0, d.x_extent, d.x_block_size):
                d.write_block(d.read_block(x, y, z), x, y, z)
print("ready", flush=True)
sys.stdin.read()
d.close()
"""
#: Tries to open the volume for writing; prints the error it gets.
WRITER_PROBE = """
import sys, warnings
warnings.simplefilter("ignore")
from blockfs import Directory, VolumeBusyError
try:
    Directory.open(sys.argv[1], "r+").close()
except VolumeBusyError as exc:
    print(exc)
    sys.exit(3)
"""
KILL_SEED = 20261207
KILL_TRIALS = 20


# -- helpers -------------------------------------------------------------------------------------


def tool(name: str) -> str:
    return str(Path(sys.executable).with_name(name))


def files_in(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (hidden ones too) with its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def make_volume(folder: Path, **kwargs: Any) -> tuple[Path, np.ndarray]:
    """A small random volume written in ``folder`` (created) under its absolute path."""
    folder.mkdir(parents=True, exist_ok=True)
    return write_volume(folder.resolve(), **kwargs)


def big_volume(folder: Path, seed: int = 0, name: str = "volume.blockfs") -> tuple[Path, np.ndarray]:
    """A 64 MiB volume of incompressible blocks in 4 shards, written in ``folder`` (created)."""
    folder.mkdir(parents=True, exist_ok=True)
    expected = np.random.default_rng(seed).integers(0, 1 << 16, BIG_SHAPE, dtype=np.uint16)
    path = folder.resolve() / name
    z, y, x = BIG_SHAPE
    d = Directory(x, y, z, "uint16", str(path), n_filenames=4, x_block_size=BIG_BLOCK, y_block_size=BIG_BLOCK,
                  z_block_size=BIG_BLOCK, compression="lz4", compression_level=1)
    d.create()
    for bz in range(0, z, BIG_BLOCK):
        for by in range(0, y, BIG_BLOCK):
            for bx in range(0, x, BIG_BLOCK):
                d.write_block(expected[bz:bz + BIG_BLOCK, by:by + BIG_BLOCK, bx:bx + BIG_BLOCK], bx, by, bz)
    d.close()
    return path, expected


def linked_copy(index: Path, folder: Path) -> Path:
    """A volume in ``folder`` whose shards are hard links of ``index``'s, named relative to its folder."""
    folder.mkdir()
    with Directory.open(str(index)) as d:
        shards = [Path(p) for p in d.shard_paths]
    for shard in shards:
        os.link(shard, folder / shard.name)
    relocate(str(index), [s.name for s in shards], str(folder / index.name))
    return folder / index.name


def reads_as(index: Path, expected: np.ndarray) -> bool:
    """Whether the volume opens without a warning and every voxel is as written (raises if it differs)."""
    if not index.exists():
        return False
    with Directory.open(str(index)) as d:
        np.testing.assert_array_equal(d[...], expected)
    return True


@contextlib.contextmanager
def small_disk(folder: Path, size: str) -> Iterator[Path]:
    """``folder`` (created) as a tmpfs of ``size``; mounting needs root."""
    folder.mkdir()
    with mounted(folder, "-t", "tmpfs", "-o", f"size={size}", "tmpfs") as ok:
        if not ok:
            unavailable("cannot mount a tmpfs (it needs root)")
        yield folder


def resize(folder: Path, size: str) -> None:
    subprocess.run(["mount", "-o", f"remount,size={size}", str(folder)], check=True, capture_output=True, timeout=60)


@contextlib.contextmanager
def holding(index: Path, how: str) -> Iterator[subprocess.Popen]:
    """Another process with the volume open for writing ("open": Directory.open "r+"; "pool": with writers)."""
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(index), how], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert line == "ready\n", f"the holder did not start: {line}{proc.stderr.read()}"
        yield proc
    finally:
        proc.stdin.close()
        assert proc.wait(timeout=60) == 0, proc.stderr.read()
        proc.stdout.close()
        proc.stderr.close()


def names_and_shards(folder: Path, index: Path) -> tuple[list[str], list[str]]:
    """The files under ``folder``, and the shard names the index at ``index`` records."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")), read_directory_file(index).names


def holders(fd: int) -> set[int]:
    """Process ids holding a flock on the file open as ``fd`` (read from /proc/locks here, not by blockfs)."""
    info = os.fstat(fd)
    device = f"{os.major(info.st_dev):02x}:{os.minor(info.st_dev):02x}:{info.st_ino}"
    with open("/proc/locks") as f:
        lines = [line.split() for line in f]
    return {int(fields[4]) for fields in lines
            if len(fields) >= 6 and "->" not in fields and fields[1] == "FLOCK" and fields[5] == device}


def holders_of(path: Path) -> set[int]:
    fd = os.open(path, os.O_RDONLY)
    try:
        return holders(fd)
    finally:
        os.close(fd)


def wait_until(predicate: Callable[[], bool], what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.01)


def probe_writer(index: Path) -> subprocess.CompletedProcess[str]:
    """Try, in another process, to open the volume for writing."""
    return subprocess.run([sys.executable, "-c", WRITER_PROBE, str(index)], capture_output=True, text=True,
                          timeout=120)


@dataclass
class Run:
    """A tool run in the background, and what it printed on stderr once it has ended."""

    proc: subprocess.Popen
    stderr: str = ""


@contextlib.contextmanager
def stopped_while_holding(argv: list[str], path: Path) -> Iterator[Run]:
    """Run a tool and stop it (SIGSTOP) as soon as it holds a lock on the file at ``path`` (which it may
    create); it goes on when the block ends, which waits for it to end."""
    run = Run(subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))
    fd = None
    try:
        while fd is None or run.proc.pid not in holders(fd):
            if run.proc.poll() is not None:
                pytest.fail(f"{argv[0]} ended (status {run.proc.returncode}) without being seen holding a lock on "
                            f"{path}")
            if fd is None:
                with contextlib.suppress(FileNotFoundError):
                    fd = os.open(path, os.O_RDONLY)
            time.sleep(0.0005)
        os.kill(run.proc.pid, signal.SIGSTOP)
        yield run
    finally:
        if fd is not None:
            os.close(fd)
        if run.proc.returncode is None:
            os.kill(run.proc.pid, signal.SIGCONT)
        run.stderr = run.proc.communicate(timeout=120)[1]


def complete(index: Path, expected: np.ndarray) -> bool:
    """Whether a whole volume is at ``index``: it and all its shards exist, and every voxel reads as written."""
    if not index.exists():
        return False
    with Directory.open(str(index)) as d:
        if not all(os.path.exists(p) for p in d.shard_paths):
            return False
        np.testing.assert_array_equal(d[...], expected)
    return True


def names_of(index: Path, n_files: int = 4) -> list[str]:
    return [index.name] + [f"{index.name}.{i}" for i in range(n_files)]


# -- 1. a move takes only the volume's own files -----------------------------------------------------


def test_mv_of_a_cp_r_copy_refuses_and_keeps_the_original(tmp_path: Path) -> None:
    """The copy names the original's shards: moving it would take them (the original no longer read)."""
    original, expected = make_volume(tmp_path / "orig", name="v.blockfs")
    shutil.copytree(tmp_path / "orig", tmp_path / "copy")
    copy = tmp_path / "copy" / "v.blockfs"
    before_orig, before_copy = files_in(tmp_path / "orig"), files_in(tmp_path / "copy")
    result = console("blockfs", "mv", copy, tmp_path / "moved")
    assert result.returncode == 1
    message = result.stderr
    assert message.startswith(f"blockfs mv: {copy}: blockfs mv moves only a volume's own files"), message
    for i in range(2):
        assert f"{original}.{i} lies outside {copy.parent}" in message
        assert f"{copy}.{i}, beside the index, is unused" in message
    assert f"Run blockfs-rebase {copy}" in message and "blockfs-cp" in message and "Nothing was moved" in message
    assert files_in(tmp_path / "orig") == before_orig and files_in(tmp_path / "copy") == before_copy
    assert not (tmp_path / "moved").exists()
    assert reads_as(original, expected)

    # What the message says to do works: rebase the copy, then it moves on its own files only.
    assert console("blockfs", "rebase", copy, "--silent").returncode == 0
    result = console("blockfs", "mv", copy, tmp_path / "moved", "--silent")
    assert result.returncode == 0, result.stderr
    assert list((tmp_path / "copy").iterdir()) == []
    assert files_in(tmp_path / "orig") == before_orig
    assert reads_as(original, expected) and reads_as(tmp_path / "moved" / "v.blockfs", expected)


@pytest.mark.parametrize("spelling", ["relative", "absolute"])
def test_mv_never_takes_a_file_outside_the_volume(spelling: str, tmp_path: Path) -> None:
    """An index whose shard name leads out of its folder: mv refuses; cp copies it into DEST only."""
    index, _ = make_volume(tmp_path / "vol", n_files=1, name="v.blockfs")
    victim = tmp_path / "victim" / "notes.txt"
    victim.parent.mkdir()
    victim.write_bytes(b"a lab notebook, not a shard")
    relocate(str(index), ["../victim/notes.txt" if spelling == "relative" else str(victim)])
    before = files_in(tmp_path)
    result = console("blockfs-mv", index, tmp_path / "moved", "--silent")
    assert result.returncode == 1
    assert result.stderr.startswith(f"blockfs-mv: {index}: blockfs-mv moves only a volume's own files")
    stored = " (stored as '../victim/notes.txt')" if spelling == "relative" else ""
    assert f"here {victim}{stored} lies outside {index.parent}." in result.stderr, result.stderr
    assert files_in(tmp_path) == before

    result = console("blockfs-cp", index, tmp_path / "copied", "--silent")
    assert result.returncode == 0, result.stderr
    assert files_in(tmp_path / "copied") == {"v.blockfs": (tmp_path / "copied" / "v.blockfs").read_bytes(),
                                             "notes.txt": b"a lab notebook, not a shard"}
    assert {k: v for k, v in files_in(tmp_path).items() if not k.startswith("copied/")} == before


def test_mv_refuses_shards_another_index_names(tmp_path: Path) -> None:
    """``cp v.blockfs w.blockfs`` in one folder: two indexes share the shards; moving either would break the other."""
    index, expected = make_volume(tmp_path / "vol", name="v.blockfs")
    other = tmp_path / "vol" / "w.blockfs"
    shutil.copyfile(index, other)
    before = files_in(tmp_path / "vol")
    for moved, sharer in [(index, other), (other, index)]:
        result = console("blockfs-mv", moved, tmp_path / "moved", "--silent")
        assert result.returncode == 1
        assert f"{index}.0 is also a shard of {sharer}" in result.stderr, result.stderr
        assert files_in(tmp_path / "vol") == before
    assert reads_as(index, expected) and reads_as(other, expected)


def test_mv_of_a_repaired_volume_leaves_repairs_backups_behind(tmp_path: Path) -> None:
    """repair keeps the old index as v.blockfs.bak (naming the same shards): that backup is the volume's own,
    so mv moves the volume and leaves the backups in place, outdated."""
    index, expected = make_volume(tmp_path / "vol", name="v.blockfs")
    for backup in ("v.blockfs.bak", "v.blockfs.bak1"):
        shutil.copyfile(index, tmp_path / "vol" / backup)
    result = console("blockfs-mv", index, tmp_path / "moved", "--silent")
    assert result.returncode == 0, result.stderr
    assert reads_as(tmp_path / "moved" / "v.blockfs", expected)
    assert sorted(p.name for p in (tmp_path / "vol").iterdir()) == ["v.blockfs.bak", "v.blockfs.bak1"]


def test_mv_refuses_a_symbolic_link_for_a_shard(tmp_path: Path) -> None:
    index, expected = make_volume(tmp_path / "vol", name="v.blockfs")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    os.rename(f"{index}.1", elsewhere / "v.blockfs.1")
    os.symlink(elsewhere / "v.blockfs.1", f"{index}.1")
    before = files_in(tmp_path)
    result = console("blockfs-mv", index, tmp_path / "moved", "--silent")
    assert result.returncode == 1
    assert f"{index}.1 is a symbolic link" in result.stderr, result.stderr
    assert files_in(tmp_path) == before
    assert reads_as(index, expected)


# -- 3. offline: never beside a writer -----------------------------------------------------------------


TOOLS = {
    "mv": lambda index, tmp: ["blockfs-mv", index, tmp / "moved"],
    "cp": lambda index, tmp: ["blockfs-cp", index, tmp / "copied"],
    "rebase": lambda index, tmp: ["blockfs-rebase", index],
}


@pytest.mark.parametrize("how", ["open", "pool"])
@pytest.mark.parametrize("command", sorted(TOOLS))
def test_refused_while_open_for_writing(command: str, how: str, tmp_path: Path) -> None:
    index, expected = make_volume(tmp_path / "a", name="v.blockfs")
    os.rename(tmp_path / "a", tmp_path / "vol")  # moved by hand, so that rebase has work to do
    index = tmp_path / "vol" / "v.blockfs"
    before = names_and_shards(tmp_path, index)
    argv = TOOLS[command](index, tmp_path)
    with holding(index, how) as holder:
        if how == "pool":
            wait_until(lambda: len(holders_of(index)) > 1, "the writer processes hold the volume")
        result = console(*argv, "--silent")
        assert result.returncode == 1
        assert result.stderr.startswith(f"{argv[0]}: {index}: the volume is open for writing by a process (pid "), \
            result.stderr
        pids = [int(p) for p in re.search(r"\(pid ([\d, ]+)\)", result.stderr).group(1).split(", ")]
        assert holder.pid in pids
        if how == "pool":
            assert len(pids) > 1, "the writer processes hold the volume too"
        assert f"{argv[0]} needs it alone" in result.stderr
        assert names_and_shards(tmp_path, index) == before
    result = console(*argv, "--silent")  # the writer has closed the volume
    assert result.returncode == 0, result.stderr
    final = {"mv": tmp_path / "moved" / index.name, "cp": tmp_path / "copied" / index.name, "rebase": index}
    assert reads_as(final[command], expected)


def long_index_volume(folder: Path) -> Path:
    """A volume whose index takes a moment to copy: a grid of 16.7 million blocks, the last one written."""
    folder.mkdir()
    d = Directory(2048, 2048, 2048, "uint8", str(folder / "volume.blockfs"), n_filenames=2, x_block_size=8,
                  y_block_size=8, z_block_size=8)
    d.create()
    d.write_block(np.full((8, 8, 8), 7, np.uint8), 2040, 2040, 2040)
    d.close()
    return folder / "volume.blockfs"


@pytest.mark.parametrize("command", sorted(TOOLS))
def test_no_writer_starts_while_it_runs(command: str, tmp_path: Path) -> None:
    """Stopped while it holds the volume, the tool keeps a writer in another process from opening it."""
    if command == "rebase":
        long_index_volume(tmp_path / "a")
        os.rename(tmp_path / "a", tmp_path / "vol")  # moved by hand: rebase rewrites the index
        index = tmp_path / "vol" / "volume.blockfs"
    else:
        index, _ = big_volume(tmp_path / "vol")
    with small_disk(tmp_path / "tmpfs", "256M") as disk:  # mv copies across file systems
        argv = [tool(f"blockfs-{command}"), *map(str, TOOLS[command](index, disk)[1:]), "--silent"]
        with stopped_while_holding(argv, index) as run:
            probe = probe_writer(index)
            assert probe.returncode == 3, probe.stdout + probe.stderr
            assert probe.stdout.startswith(f"{index}: an offline operation (repair, mv, rebase or create) holds the "
                                           f"volume (pid {run.proc.pid})"), probe.stdout
        assert run.proc.returncode == 0, run.stderr
        final = disk / "moved" / index.name if command == "mv" else index
        assert probe_writer(final).returncode == 0  # once it has ended, writers start again


# -- 6 and 16. a full disk, an interrupted run --------------------------------------------------------


@pytest.mark.parametrize("command", ["blockfs-cp", "blockfs-mv"])
def test_disk_full_names_the_file_and_leaves_nothing(command: str, tmp_path: Path) -> None:
    """A 64 MiB volume onto a 2 MiB disk (mv across file systems copies), then onto a larger one."""
    source, expected = big_volume(tmp_path / "vol")
    before = files_in(tmp_path / "vol")
    with small_disk(tmp_path / "tmpfs", "2M") as disk:
        dest = disk / "dest"
        result = console(command, source, dest, "--silent")
        assert result.returncode == 1
        assert re.fullmatch(rf"{command}: {re.escape(str(dest))}/volume\.blockfs\.\d: No space left on device; "
                            rf"nothing was left in {re.escape(str(dest))}, and the source is as it was\n",
                            result.stderr), result.stderr
        assert list(disk.iterdir()) == []
        with pytest.raises(FileNotFoundError):
            Directory.open(str(dest / source.name))
        assert files_in(tmp_path / "vol") == before
        assert reads_as(source, expected)

        resize(disk, "256M")
        result = console(command, source, dest, "--silent")  # the re-run finds nothing in its way
        assert result.returncode == 0, result.stderr
        assert sorted(p.name for p in dest.iterdir()) == names_of(source)
        assert reads_as(dest / source.name, expected)
    if command == "blockfs-cp":
        assert files_in(tmp_path / "vol") == before
    else:
        assert list((tmp_path / "vol").iterdir()) == []


def test_a_killed_copy_leaves_nothing_in_the_way(tmp_path: Path) -> None:
    """SIGKILL once the first file appears at the destination: no volume there, and the re-run completes."""
    source, expected = big_volume(tmp_path / "vol")
    dest = tmp_path / "dest"
    proc = subprocess.Popen([tool("blockfs-cp"), str(source), str(dest), "--silent"], stderr=subprocess.DEVNULL)
    while not (dest.is_dir() and any(dest.iterdir())):
        assert proc.poll() is None, f"blockfs-cp ended ({proc.returncode}) before it wrote a file"
        time.sleep(0.0005)
    proc.kill()
    assert proc.wait(timeout=60) == -signal.SIGKILL
    assert any(dest.iterdir()), "the kill left nothing to recognise"
    with pytest.raises(FileNotFoundError):
        Directory.open(str(dest / source.name))
    result = console("blockfs-cp", source, dest, "--silent")
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in dest.iterdir()) == names_of(source)
    assert reads_as(dest / source.name, expected)


def test_a_second_run_into_the_same_folder_is_refused_while_the_first_writes(tmp_path: Path) -> None:
    """Copies of two volumes of one name into one folder: the second finds the first's locked partial file."""
    first, expected = big_volume(tmp_path / "a")
    second, _ = make_volume(tmp_path / "b", name=first.name, n_files=4)
    before = files_in(tmp_path / "b")
    dest = tmp_path / "dest"
    partial = dest / f".{first.name}.0.partial"
    with stopped_while_holding([tool("blockfs-cp"), str(first), str(dest), "--silent"], partial) as run:
        result = console("blockfs-cp", second, dest, "--silent")
        assert result.returncode == 1
        assert result.stderr.startswith(f"blockfs-cp: {partial}: another blockfs-cp or blockfs-mv (pid "
                                        f"{run.proc.pid}) is writing {dest / first.name}.0; wait until it ends"), \
            result.stderr
    assert run.proc.returncode == 0, run.stderr
    assert sorted(p.name for p in dest.iterdir()) == names_of(first)
    assert reads_as(dest / first.name, expected)
    assert files_in(tmp_path / "b") == before


def test_a_rerun_finishes_a_move_killed_after_it_published(tmp_path: Path) -> None:
    """What a move killed while removing its source leaves: the new volume with its index's partial name
    (a second link to it), the source with a shard gone. The re-run removes the rest of the source."""
    source, expected = make_volume(tmp_path / "vol", name="v.blockfs", n_files=3)
    assert console("blockfs-cp", source, tmp_path / "dest", "--silent").returncode == 0
    index = tmp_path / "dest" / "v.blockfs"
    os.link(index, tmp_path / "dest" / ".v.blockfs.partial")
    os.unlink(f"{source}.0")
    result = console("blockfs-mv", source, tmp_path / "dest", "--silent")
    assert result.returncode == 0, result.stderr
    assert list((tmp_path / "vol").iterdir()) == []
    assert sorted(p.name for p in (tmp_path / "dest").iterdir()) == names_of(index, 3)
    assert reads_as(index, expected)


def test_a_finished_looking_destination_of_another_volume_is_not_taken(tmp_path: Path) -> None:
    """The same state, but the source has changed since (a block rewritten): the destination is not its output."""
    source, _ = make_volume(tmp_path / "vol", name="v.blockfs")
    assert console("blockfs-cp", source, tmp_path / "dest", "--silent").returncode == 0
    os.link(tmp_path / "dest" / "v.blockfs", tmp_path / "dest" / ".v.blockfs.partial")
    with Directory.open(str(source), "r+") as d:
        d.write_block(np.zeros(d.get_block_size(0, 0, 0), d.dtype), 0, 0, 0)
    before = files_in(tmp_path)
    result = console("blockfs-mv", source, tmp_path / "dest", "--silent")
    assert result.returncode == 1
    assert result.stderr.startswith(f"blockfs-mv: {tmp_path / 'dest' / 'v.blockfs'}: already exists; a volume at "
                                    "the destination is never overwritten"), result.stderr
    assert files_in(tmp_path) == before


@pytest.mark.parametrize("command", ["blockfs-mv", "blockfs-cp"])
def test_help_states_the_rules(command: str) -> None:
    text = " ".join(console(command, "--help").stdout.split())
    assert "written under a hidden name (.NAME.partial)" in text and "the directory file last" in text
    assert "while any process has it open for writing it refuses" in text
    if command == "blockfs-mv":
        assert ("It moves only the volume's own files: the directory file and the shards must be regular files (not "
                "symbolic links) directly in the directory file's folder, and no other directory file there may "
                "name one of the shards (repair's backups, NAME.bak*, stay behind).") in text
        assert "run blockfs-rebase on it first, or copy it with blockfs-cp" in text


# -- SIGKILL trials -----------------------------------------------------------------------------------


def start_and_wait_for_output(argv: list[str]) -> tuple[subprocess.Popen, int]:
    """Start a tool with stderr on a pseudo-terminal, so that its progress bar is on, and return once it
    has printed something (it has begun): the process and the terminal's controlling end."""
    controller, terminal = open_terminal()
    try:
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=terminal)
    finally:
        os.close(terminal)
    with selectors.DefaultSelector() as selector:
        selector.register(controller, selectors.EVENT_READ)
        if not selector.select(timeout=60) or not os.read(controller, 1):
            proc.kill()
            proc.wait()
            os.close(controller)
            pytest.fail(f"{argv[0]} printed nothing within 60 s")
    return proc, controller


def finish(proc: subprocess.Popen, controller: int) -> int:
    read_all(controller)
    return proc.wait(timeout=120)


def kill_state(status: int, source: Path, dest: Path, published: bool) -> str:
    """Where a run was when it was killed, as seen from its files (for the trials' summary)."""
    if status == 0:
        return "ended before the kill"
    if not published:
        return "killed while copying" if partials(dest) else "killed before it wrote a file"
    if partials(dest) or source.exists() and len(list(source.parent.iterdir())) < 5:
        return "killed while finishing"
    return "killed after it finished"


def partials(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".partial")) if folder.is_dir() else []


@pytest.mark.slow
@pytest.mark.parametrize("command", ["blockfs-cp", "blockfs-mv"])
def test_killed_at_random_moments(command: str, tmp_path: Path) -> None:
    """SIGKILL at seeded random moments of a 64 MiB copy or move onto another file system (a tmpfs).

    After each kill: an index at the destination is a whole volume (else there is none), the source
    or the destination (at least one) is whole and reads back as written, and the re-run completes.
    """
    move = command == "blockfs-mv"
    pristine, expected = big_volume(tmp_path / "pristine")
    pristine_files = {p.name: p.stat().st_mtime_ns for p in pristine.parent.iterdir()}
    rng = random.Random(KILL_SEED)
    counts: Counter[str] = Counter()
    with small_disk(tmp_path / "tmpfs", "512M") as disk:
        def source_for(trial: str) -> Path:
            return linked_copy(pristine, tmp_path / trial) if move else pristine

        # One whole run, to know when it publishes the new volume and when it ends, from when it has begun.
        timed = source_for("timed")
        proc, terminal = start_and_wait_for_output([tool(command), str(timed), str(disk / "timed")])
        began = time.monotonic()
        while not (disk / "timed" / timed.name).exists():
            assert proc.poll() is None, "the timed run ended without publishing its volume"
            time.sleep(0.0005)
        published_after = time.monotonic() - began
        assert finish(proc, terminal) == 0
        ended_after = time.monotonic() - began
        shutil.rmtree(disk / "timed")
        if move:
            shutil.rmtree(timed.parent)

        for trial in range(KILL_TRIALS):
            source, dest = source_for(f"src{trial}"), disk / f"dest{trial}"
            proc, terminal = start_and_wait_for_output([tool(command), str(source), str(dest)])
            # Half the kills while it copies, half while it finishes (removes the source and partial names).
            time.sleep(rng.uniform(0, published_after) if trial % 2 else rng.uniform(published_after, ended_after))
            proc.kill()
            status = finish(proc, terminal)
            assert status in (0, -signal.SIGKILL)
            index = dest / source.name
            published = index.exists()
            counts[kill_state(status, source, dest, published)] += 1
            if not published:
                with pytest.raises(FileNotFoundError):
                    Directory.open(str(index))
            assert (complete(index, expected) if published else True), "an incomplete volume at the destination"
            assert complete(source, expected) or published, f"trial {trial}: no whole volume is left"

            unfinished = source.exists() if move else not published or partials(dest)
            if unfinished:
                result = console(command, source, dest, "--silent")
                assert result.returncode == 0, f"trial {trial}: the re-run failed:\n{result.stderr}"
            assert complete(index, expected)
            # A move killed after it removed the source leaves at most the index's partial name (a link to it).
            leftover = {f".{index.name}.partial"} if move and not unfinished else set()
            assert set(names_of(source)) <= {p.name for p in dest.iterdir()} <= set(names_of(source)) | leftover
            if move:
                assert list(source.parent.iterdir()) == []
                shutil.rmtree(source.parent)
            shutil.rmtree(dest)
    assert {p.name: p.stat().st_mtime_ns for p in pristine.parent.iterdir()} == pristine_files
    print(f"{command}: {KILL_TRIALS} trials of {sum(os.path.getsize(p) for p in pristine.parent.iterdir())} bytes, "
          f"published {published_after:.3f} s and ended {ended_after:.3f} s after the first output: {dict(counts)}")
    assert counts["killed while copying"] >= 1, f"no kill interrupted the copying: {dict(counts)}"
