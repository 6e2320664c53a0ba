"""A writer that the crash and concurrency tests run as a child process, and the content it writes.

Every block's content is determined by (entry, version): the high 16 bits of each uint32 voxel
are the version (1-65535) and the low 16 bits are noise seeded by the entry, scrambled by the
version. So any piece of a block names the version it claims to be, and can be compared voxel for voxel with
what that version wrote; a piece of one block copied into another, or a mix of two versions,
matches nothing.

Run as a script::

    python crash_writer.py VOLUME --mode {direct,pool} [--log LOG] [--seconds S] [--versions N]

It opens an existing volume for writing and rewrites all its blocks, version 1, 2, ... up to
``--versions``. With ``--seconds`` it stops at the first version boundary after that long, closes
the volume and prints ``done A B``, the last versions completed by this process and by the helper
(direct mode); without it, it sleeps after the last version until it is killed. It prints
``ready`` once the volume is open (and the writer processes are started).

``--mode direct``: two processes (this one and a forked helper) write disjoint halves of the
blocks straight into the shards; after each ``write_block`` returns, the line ``entry version``
is appended to ``--log`` and fsynced, so the log lists only acknowledged writes.
``--mode pool``: this process starts the writer processes and queues every block to them.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
import time
from collections.abc import Sequence

import numpy as np

from helpers import block_origins

SEED = 4
MAX_VERSION = 65535
#: The volume the crash tests write: (z, y, x), block edge and dtype.
SHAPE = (64, 96, 96)
BLOCK = 32
DTYPE = np.uint32


def _noise(entry: int, shape: tuple[int, ...]) -> np.ndarray:
    """The low bytes of every version of a block, drawn once per (entry, shape) and kept."""
    key = (entry, shape)
    if key not in _NOISE:
        _NOISE[key] = np.random.default_rng([SEED, entry]).integers(0, 1 << 16, shape, dtype=np.uint32)
    return _NOISE[key]


_NOISE: dict[tuple[int, tuple[int, ...]], np.ndarray] = {}


def block_content(entry: int, version: int, shape: Sequence[int]) -> np.ndarray:
    """What version ``version`` (1-65535) of the block at ``entry`` holds, as a (z, y, x) array."""
    if not 1 <= version <= MAX_VERSION:
        raise ValueError(f"version {version} is outside 1-{MAX_VERSION}")
    low = _noise(entry, tuple(shape)) ^ np.uint32(version * 40503 & 0xFFFF)
    return low | np.uint32(version << 16)


def version_of(block: np.ndarray, entry: int, full_shape: Sequence[int] | None = None,
               where: tuple[slice, ...] | None = None) -> int | None:
    """The version that ``block`` is (0 for all zeros), or None if it is no version of this entry.

    ``block`` may be a piece ``full[where]`` of a block whose full shape is ``full_shape``.
    """
    if block.size == 0:
        raise ValueError("an empty piece names no version")
    if not block.any():
        return 0
    version = int(block.flat[0]) >> 16
    if not 1 <= version <= MAX_VERSION:
        return None
    full = block_content(entry, version, block.shape if full_shape is None else full_shape)
    expected = full if where is None else full[where]
    return version if expected.shape == block.shape and np.array_equal(block, expected) else None


def _log_line(fd: int, entry: int, version: int) -> None:
    os.write(fd, f"{entry} {version}\n".encode())
    os.fsync(fd)


def _write_versions(directory: object, origins: list[tuple[int, int, int]], versions: int, log_fd: int | None,
                    deadline: float | None) -> int:
    """Write every block of ``origins`` as version 1, 2, ...; return the last version completed."""
    done = 0
    for version in range(1, versions + 1):
        if deadline is not None and time.monotonic() > deadline:
            break
        for x, y, z in origins:
            shape = directory.get_block_size(x, y, z)  # type: ignore[attr-defined]
            entry = directory.layout.entry_index(x, y, z)  # type: ignore[attr-defined]
            directory.write_block(block_content(entry, version, shape), x, y, z)  # type: ignore[attr-defined]
            if log_fd is not None:
                _log_line(log_fd, entry, version)
        done = version
    return done


def split(origins: list[tuple[int, int, int]], y_block: int) -> tuple[list, list]:
    """The blocks the main process and the helper write in direct mode: alternate block rows,
    so that both processes append to every shard."""
    return ([o for o in origins if (o[1] // y_block) % 2 == 0], [o for o in origins if (o[1] // y_block) % 2 == 1])


def _helper(path: str, origins: list[tuple[int, int, int]], versions: int, log: str | None,
            deadline: float | None, completed: object) -> None:
    from blockfs import Directory

    log_fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644) if log else None
    directory = Directory.open(path, "r+")
    completed.value = _write_versions(directory, origins, versions, log_fd, deadline)  # type: ignore[attr-defined]
    directory.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("volume")
    parser.add_argument("--mode", choices=("direct", "pool"), required=True)
    parser.add_argument("--log", help="append 'entry version' after each acknowledged write (direct mode)")
    parser.add_argument("--seconds", type=float, help="stop after this long and close the volume")
    parser.add_argument("--versions", type=int, default=MAX_VERSION)
    args = parser.parse_args(argv)

    from blockfs import Directory

    directory = Directory.open(args.volume, "r+")
    origins = block_origins(directory.shape, directory.x_block_size)
    deadline = None if args.seconds is None else time.monotonic() + args.seconds
    log_fd = os.open(args.log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644) if args.log else None
    helper = None
    ctx = multiprocessing.get_context("fork")
    completed = ctx.Value("i", 0)
    if args.mode == "pool":
        directory.start_writer_processes(queue_depth=4)
        mine = origins
    else:
        mine, theirs = split(origins, directory.y_block_size)
        helper = ctx.Process(target=_helper, args=(args.volume, theirs, args.versions, args.log, deadline, completed))
        helper.start()
    print("ready", flush=True)
    done = _write_versions(directory, mine, args.versions, log_fd, deadline)
    if helper is not None:
        helper.join()
        if helper.exitcode:
            print(f"helper exited with status {helper.exitcode}", file=sys.stderr)
            return 1
    if args.seconds is None:
        while True:  # wait to be killed
            time.sleep(1)
    directory.close()
    print(f"done {done} {completed.value if helper is not None else done}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
