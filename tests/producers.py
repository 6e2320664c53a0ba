"""Producer functions for the write-path tests, importable by child processes.

Forked, spawned and forkserver pool workers, and unrelated interpreters started with
``python -c``, all import this module by name (``producers``), so everything a child runs lives
here rather than in a test module. Block contents are deterministic functions of the block's
origin, a seed and a version, so the parent can rebuild what every child wrote and compare it
voxel by voxel.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

TESTS_DIR = Path(__file__).resolve().parent
REPO_ROOT = TESTS_DIR.parent

if str(REPO_ROOT) not in sys.path:  # unrelated interpreters may start with only tests/ on the path
    sys.path.insert(0, str(REPO_ROOT))

from helpers import origins_of  # noqa: E402

from blockfs import Directory  # noqa: E402
from blockfs.sample import microscopy_block, random_block  # noqa: E402

#: The module-level Directory of the README pattern: set before a fork Pool starts, or by
#: :func:`init` in each worker of a spawn/forkserver Pool.
DIRECTORY: Any = None


# -- what a block holds ------------------------------------------------------------------------

def block_shape(directory: Any, x: int, y: int, z: int) -> tuple[int, int, int]:
    """Shape (z, y, x) of the block at (x, y, z), truncated at the volume's edges."""
    return (min(directory.z_block_size, directory.z_extent - z), min(directory.y_block_size, directory.y_extent - y),
            min(directory.x_block_size, directory.x_extent - x))


def version_block(base: np.ndarray, version: int) -> np.ndarray:
    """``base`` changed in a way that differs for every version (and is never ``base`` itself)."""
    mask = np.uint16((version * 40503 + 1) & 0xFFFF or 1)
    return base ^ mask


def sample_block(x: int, y: int, z: int, shape: tuple[int, int, int], seed: int, version: int | None = None
                 ) -> np.ndarray:
    """The sample block at (x, y, z); a distinct variant of it for each ``version``."""
    base = microscopy_block((z, y, x), shape, seed)
    return base if version is None else version_block(base, version)


def expected_volume(directory: Any, seed: int, versions: dict[tuple[int, int, int], int] | None = None
                    ) -> np.ndarray:
    """The whole volume as it must read back when every block holds :func:`sample_block`.

    ``versions`` maps a block's origin (x, y, z) to the version last written there.
    """
    versions = versions or {}
    out = np.zeros((directory.z_extent, directory.y_extent, directory.x_extent), np.uint16)
    for x, y, z in origins_of(directory):
        dz, dy, dx = block_shape(directory, x, y, z)
        out[z:z + dz, y:y + dy, x:x + dx] = sample_block(x, y, z, (dz, dy, dx), seed, versions.get((x, y, z)))
    return out


# -- pool workers ------------------------------------------------------------------------------

def init(directory: Any) -> None:
    """Pool initializer: keep the Directory this worker received (by pickling) as the module's."""
    global DIRECTORY
    DIRECTORY = directory


def write_sample(x: int, y: int, z: int, seed: int) -> int:
    """Write the sample block at (x, y, z) into the module-level Directory; return this pid."""
    d = DIRECTORY
    d.write_block(sample_block(x, y, z, block_shape(d, x, y, z), seed), x, y, z)
    return os.getpid()


def describe_directory() -> tuple[int, str | None, str]:
    """(pid, mode, path) of the module-level Directory as this process sees it."""
    return os.getpid(), DIRECTORY.mode, DIRECTORY.directory_filename


def write_versions(x: int, y: int, z: int, seed: int, versions: int) -> int:
    """Write ``versions`` different variants of one block, in order; return this pid."""
    d = DIRECTORY
    base = sample_block(x, y, z, block_shape(d, x, y, z), seed)
    for version in range(versions):
        d.write_block(version_block(base, version), x, y, z)
    return os.getpid()


def random_sample(x: int, y: int, z: int, shape: tuple[int, int, int], seed: int) -> np.ndarray:
    """Incompressible content for the block at (x, y, z)."""
    return random_block((z, y, x), shape, seed)


# -- unrelated processes -----------------------------------------------------------------------

def unrelated_writer(path: str, worker: int, n_workers: int, seed: int, use_writers: bool, go_file: str,
                     ready_file: str) -> None:
    """Body of an independent ``python -c`` job: write every ``n_workers``-th block of a volume.

    The job opens the volume itself, optionally starts its own writer processes, announces that
    it is ready, waits for ``go_file`` so that all jobs write at the same time, then writes block
    ``k`` for every ``k % n_workers == worker`` and closes the volume.
    """
    d = Directory.open(path, "r+")
    if use_writers:
        d.start_writer_processes(queue_depth=4)
    Path(ready_file).touch()
    deadline = time.monotonic() + 60
    while not os.path.exists(go_file):
        if time.monotonic() > deadline:
            raise SystemExit(f"{go_file}: never appeared")
        time.sleep(0.005)
    written = 0
    for k, (x, y, z) in enumerate(origins_of(d)):
        if k % n_workers == worker:
            d.write_block(sample_block(x, y, z, block_shape(d, x, y, z), seed), x, y, z)
            written += 1
    d.close()
    print(f"worker {worker} pid {os.getpid()} wrote {written} blocks", flush=True)


@contextlib.contextmanager
def pool_of(method: str, processes: int = 2, **kwargs: Any) -> Iterator[Any]:
    """A Pool of the given start method, joined on success and terminated on failure."""
    pool = multiprocessing.get_context(method).Pool(processes, **kwargs)
    try:
        yield pool
    except BaseException:
        pool.terminate()
        pool.join()
        raise
    pool.close()
    pool.join()


@contextlib.contextmanager
def module_directory(d: Directory) -> Iterator[Directory]:
    """Make ``d`` the module-level Directory of this module (the README pattern); close it after."""
    global DIRECTORY
    DIRECTORY = d
    try:
        yield d
    finally:
        DIRECTORY = None
        d.close()


def attach_and_write(path: str, extents: tuple[int, int, int], seed: int) -> int:
    """In a worker: build a fresh Directory(...) for ``path`` (never create()d here) and write its
    first block, as the README pattern's module-level Directory does under spawn; return this pid."""
    d = Directory(*extents, np.uint16, path, n_filenames=2, x_block_size=64, y_block_size=64, z_block_size=64)
    d.write_block(sample_block(0, 0, 0, block_shape(d, 0, 0, 0), seed), 0, 0, 0)
    return os.getpid()
