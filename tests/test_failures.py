"""Writers that die or fail: SIGKILL, disk full, no permission. Errors surface; nothing hangs.

Each test bounds every wait (pytest timeout, ``get(timeout=...)``, deadlines on polling loops)
and checks every voxel of what reads back: blocks that were acknowledged and indexed must hold
exactly what was written, and everything else must read as zeros, never as garbage.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

import producers
import spec_decoder
from helpers import origins_of

from blockfs import Directory, WriterError

pytestmark = pytest.mark.timeout(120)

SEED = 23
POOL_SECONDS = 60
#: How soon a failed writer must turn into an exception in the producer.
DETECT_SECONDS = 5.0


# -- helpers -----------------------------------------------------------------------------------

def new_volume(folder: Path, extents: tuple[int, int, int] = (256, 256, 128), name: str = "volume.blockfs"
               ) -> Directory:
    d = Directory(*extents, np.uint16, str(folder / name), n_filenames=2, x_block_size=64, y_block_size=64,
                  z_block_size=64)
    return d.create()


def shard_of(d: Directory, x: int, y: int, z: int) -> int:
    entry = (d.offsetof(x, y, z) - d.directory_offset) // entry_size(d)
    return entry % len(d.block_filenames)


def entry_size(d: Directory) -> int:
    return (d.n_offset_bits + d.n_size_bits + 7) // 8


def index_entry(d: Directory, x: int, y: int, z: int) -> tuple[int, int]:
    """(offset, size) of a block's entry, decoded from the directory file's bytes (docs/FORMAT.md)."""
    return spec_decoder.entry(d.directory_filename, d.layout.entry_index(x, y, z))


def sample(d: Directory, x: int, y: int, z: int, version: int | None = None) -> np.ndarray:
    return producers.sample_block(x, y, z, d.get_block_size(x, y, z), SEED, version)


def check_blocks(path: str, allowed: Callable[[tuple[int, int, int]], list[np.ndarray]]) -> dict[str, int]:
    """Read the whole volume afresh, read-only; each block must equal one of ``allowed(origin)``.

    A block that equals none of them fails the test. Returns how many blocks matched which option
    (``"0"``, ``"1"``, ...), so callers can insist on a particular one.
    """
    counts: dict[str, int] = {}
    with Directory.open(path, "r") as reader:
        volume = reader[:, :, :]
        for x, y, z in origins_of(reader):
            dz, dy, dx = reader.get_block_size(x, y, z)
            got = volume[z:z + dz, y:y + dy, x:x + dx]
            options = allowed((x, y, z))
            for i, option in enumerate(options):
                if np.array_equal(got, option):
                    counts[str(i)] = counts.get(str(i), 0) + 1
                    break
            else:
                raise AssertionError(f"{path}: block (x={x}, y={y}, z={z}) holds none of the {len(options)} "
                                     "contents it may hold")
    return counts


def wait_until(condition: Callable[[], bool], seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"timed out after {seconds} s waiting until {what}"
        time.sleep(0.01)


def block_visible(path: str, origin: tuple[int, int, int], block: np.ndarray) -> bool:
    with Directory.open(path, "r") as reader:
        x, y, z = origin
        return np.array_equal(reader.read_block(x, y, z), block)


def close_raises(d: Directory, *fragments: str) -> str:
    """close() raises WriterError containing every fragment, promptly; a second close() is a no-op."""
    start = time.monotonic()
    with pytest.raises(WriterError) as info:
        d.close()
    assert time.monotonic() - start < 30, "close() took too long"
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, message
    start = time.monotonic()
    d.close()
    assert time.monotonic() - start < 1
    return message


# -- a writer killed with SIGKILL -----------------------------------------------------------

def test_writer_killed_with_sigkill(tmp_path: Path) -> None:
    """Every write after the kill is refused, naming the dead writer; the other writer stores what
    was queued, so at most the blocks the dead one held (one per thread) are lost."""
    d = new_volume(tmp_path, extents=(256, 256, 256))  # 64 blocks
    origins = origins_of(d)
    acked: dict[tuple[int, int, int], np.ndarray] = {}
    try:
        d.start_writer_processes(queue_depth=2)
        victim = d.writers[0]
        for origin in origins[:8]:
            acked[origin] = sample(d, *origin)
            d.write_block(acked[origin], *origin)
        for origin in origins[:2]:
            wait_until(lambda origin=origin: block_visible(d.directory_filename, origin, acked[origin]), 10,
                       f"block {origin} is stored")
        for origin in origins[8:14]:  # keep the writers busy, then kill one mid-write
            acked[origin] = sample(d, *origin)
            d.write_block(acked[origin], *origin)
        os.kill(victim.process.pid, signal.SIGKILL)
        killed_at = time.monotonic()

        first_error: tuple[float, str] | None = None
        for origin in origins[14:]:
            block = sample(d, *origin)
            try:
                d.write_block(block, *origin)
            except WriterError as exc:
                if first_error is None:
                    first_error = (time.monotonic() - killed_at, str(exc))
            else:
                assert first_error is None, "a write was accepted after the dead writer was reported"
                acked[origin] = block
        assert first_error is not None, "no write_block call reported the dead writer"
        seconds, message = first_error
        assert seconds < DETECT_SECONDS, message
        for fragment in (f"pid {victim.process.pid}", d.directory_filename, "SIGKILL"):
            assert fragment in message, message
        close_raises(d, f"pid {victim.process.pid}", "SIGKILL")
    finally:
        with contextlib.suppress(WriterError):
            d.close()

    counts = check_blocks(d.directory_filename, lambda o: [acked[o], np.zeros_like(acked[o])] if o in acked
                          else [np.zeros(d.get_block_size(*o), np.uint16)])
    assert counts.get("1", 0) <= victim.threads, f"{counts}: more blocks lost than the dead writer held"
    for origin in origins[:2]:  # stored before the kill
        assert block_visible(d.directory_filename, origin, acked[origin]), origin


# -- disk full ------------------------------------------------------------------------------

def fill_disk(folder: Path, kind: str, extents: tuple[int, int, int]) -> Directory:
    """A volume in ``folder`` whose shard 0 (at least) runs out of space."""
    d = new_volume(folder, extents=extents)
    if kind == "dev-full":
        shard = d.block_filenames[0]
        os.remove(shard)
        os.symlink("/dev/full", shard)
    return d


def random_block(d: Directory, origin: tuple[int, int, int]) -> np.ndarray:
    return producers.random_sample(*origin, d.get_block_size(*origin), SEED)


def check_after_disk_full(d: Directory, header: bytes, written: dict[tuple[int, int, int], np.ndarray],
                          kind: str) -> None:
    """The directory file is intact and every indexed block decodes to what was written."""
    with open(d.directory_filename, "rb") as f:
        assert f.read(len(header)) == header, "the directory file's header changed"
    n_entries = len(origins_of(d))
    assert os.path.getsize(d.directory_filename) <= d.directory_offset + n_entries * entry_size(d)
    ends = dict.fromkeys(range(len(d.block_filenames)), 0)
    indexed = 0
    for origin in origins_of(d):
        offset, size = index_entry(d, *origin)
        if size:
            assert origin in written, f"block {origin} is indexed but write_block never accepted it"
            shard = shard_of(d, *origin)
            ends[shard] = max(ends[shard], offset + size)
            indexed += 1
    # /dev/full refuses the very first block of its shard; a real small disk takes some first.
    assert indexed >= 1 or kind == "dev-full", "nothing was stored before the disk filled up"
    assert indexed < n_entries, "the disk never filled up"
    if kind == "tmpfs":
        for shard, end in ends.items():  # a failed append was cut back off the shard
            assert os.path.getsize(d.block_filenames[shard]) == end, d.block_filenames[shard]

    def allowed(origin: tuple[int, int, int]) -> list[np.ndarray]:
        zeros = np.zeros(d.get_block_size(*origin), np.uint16)
        return [written[origin]] if index_entry(d, *origin)[1] else [zeros]

    check_blocks(d.directory_filename, allowed)


def test_disk_full_through_writer_processes(tiny_disk: tuple[Path, str]) -> None:
    folder, kind = tiny_disk
    d = fill_disk(folder, kind, extents=(256, 256, 64))  # 16 incompressible blocks: 8 MiB on a 2 MiB disk
    with open(d.directory_filename, "rb") as f:
        header = f.read(d.directory_offset)
    written: dict[tuple[int, int, int], np.ndarray] = {}
    messages: list[str] = []
    try:
        d.start_writer_processes(queue_depth=2)
        for origin in origins_of(d):
            block = random_block(d, origin)
            try:
                d.write_block(block, *origin)
            except WriterError as exc:
                messages.append(str(exc))
            else:
                written[origin] = block
        messages.append(close_raises(d, "No space left on device"))
    finally:
        with contextlib.suppress(WriterError):
            d.close()
    for message in messages:
        assert "No space left on device" in message, message
        assert any(shard in message for shard in d.block_filenames), message
    assert d.block_filenames[0] in messages[-1] or kind == "tmpfs"
    check_after_disk_full(d, header, written, kind)


def test_disk_full_direct_writes(tiny_disk: tuple[Path, str]) -> None:
    folder, kind = tiny_disk
    d = fill_disk(folder, kind, extents=(256, 256, 64))
    with open(d.directory_filename, "rb") as f:
        header = f.read(d.directory_offset)
    written: dict[tuple[int, int, int], np.ndarray] = {}
    failure: Exception | None = None
    try:
        for origin in origins_of(d):
            block = random_block(d, origin)
            try:
                d.write_block(block, *origin)
            except Exception as exc:  # which exception it is, is what the test checks
                failure = exc
                break
            written[origin] = block
    finally:
        d.close()
    assert failure is not None, "write_block never reported the full disk"
    assert isinstance(failure, OSError), f"a full disk must raise OSError, not {failure!r}"
    assert failure.errno == errno.ENOSPC or "No space left on device" in str(failure), repr(failure)
    check_after_disk_full(d, header, written, kind)


# -- no permission -------------------------------------------------------------------------

def _chattr(flag: str, path: str) -> bool:
    chattr = shutil.which("chattr")
    if chattr is None:
        return False
    return subprocess.run([chattr, flag, path], capture_output=True, timeout=30).returncode == 0


@pytest.mark.parametrize("how", ["immutable", "directory"])
def test_unwritable_shard(tmp_path: Path, how: str) -> None:
    d = new_volume(tmp_path)  # 32 blocks, 16 per shard
    shard0 = d.block_filenames[0]
    origins = origins_of(d)
    acked: dict[tuple[int, int, int], np.ndarray] = {}
    immutable = False
    try:
        if how == "directory":  # root may write any file, but not into a directory as if it were one
            os.remove(shard0)
            os.mkdir(shard0)
            cause = "Is a directory"
        d.start_writer_processes(queue_depth=2)
        if how == "immutable":  # immutable binds root too
            immutable = _chattr("+i", shard0)
            if not immutable:
                pytest.skip(f"{shard0}: this file system does not support chattr +i")
            cause = "Operation not permitted"
        refused: list[str] = []
        deadline = time.monotonic() + 30
        for origin in origins:
            block = sample(d, *origin)
            try:
                d.write_block(block, *origin)
            except WriterError as exc:
                refused.append(str(exc))
            else:
                assert not refused, "a write was accepted after a writer reported its failure"
                acked[origin] = block
            assert time.monotonic() < deadline
        assert refused, "no write_block call reported the failed writer"
        for message in refused:
            assert shard0 in message and cause in message, message
        close_raises(d, shard0, cause)
    finally:
        if immutable:
            _chattr("-i", shard0)
        with contextlib.suppress(WriterError):
            d.close()
    # the writers went on storing every block of the healthy shard they had been given
    counts = check_blocks(d.directory_filename, lambda o: [acked[o]] if o in acked and shard_of(d, *o) == 1
                          else [np.zeros(d.get_block_size(*o), np.uint16)])
    assert counts == {"0": len(origins)}


# -- a writer failure during the README pattern does not hang the forked producers ---------

def test_readme_pattern_survives_killed_writer(tmp_path: Path) -> None:
    d = new_volume(tmp_path, extents=(200, 150, 130))
    with producers.module_directory(d):
        d.start_writer_processes()
        victim = d.writers[0]
        jobs = [(x, y, z, SEED) for x, y, z in origins_of(d)]
        with producers.pool_of("fork", 2) as pool:
            result = pool.starmap_async(producers.write_sample, jobs, chunksize=2)
            os.kill(victim.process.pid, signal.SIGKILL)
            pids = result.get(timeout=POOL_SECONDS)  # the producers append directly: they finish
        victim.process.join(DETECT_SECONDS)
        x, y, z = next(o for o in origins_of(d) if shard_of(d, *o) == 0)
        with pytest.raises(WriterError, match="SIGKILL"):
            d.write_block(sample(d, x, y, z), x, y, z)
        close_raises(d, victim.name, "SIGKILL")
    assert os.getpid() not in pids
    check_blocks(d.directory_filename, lambda o: [sample(d, *o)])


def test_readme_pattern_with_unwritable_shard(tmp_path: Path) -> None:
    d = new_volume(tmp_path, extents=(200, 150, 130))
    shard0 = d.block_filenames[0]
    os.remove(shard0)
    os.mkdir(shard0)
    origins = origins_of(d)
    with producers.module_directory(d):
        d.start_writer_processes()
        first = next(o for o in origins if shard_of(d, *o) == 0)
        d.write_block(sample(d, *first), *first)  # the writer that takes it fails on it
        wait_until(lambda: any(w.failure() is not None for w in d.writers), DETECT_SECONDS,
                   "a writer reports its failure")
        with producers.pool_of("fork", 2) as pool:
            # chunksize=1: a failed task must not take the healthy shard's blocks of its chunk with it
            result = pool.starmap_async(producers.write_sample, [(x, y, z, SEED) for x, y, z in origins],
                                        chunksize=1)
            with pytest.raises(OSError) as info:  # the producers' own appends fail too, and say so
                result.get(timeout=POOL_SECONDS)
        assert shard0 in str(info.value) and info.value.errno == errno.EISDIR, repr(info.value)
        close_raises(d, shard0, "Is a directory")
    check_blocks(d.directory_filename, lambda o: [sample(d, *o)] if shard_of(d, *o) == 1
                 else [np.zeros(d.get_block_size(*o), np.uint16)])
