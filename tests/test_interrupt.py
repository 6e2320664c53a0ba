"""Ctrl-C ends a tool promptly while it works: exit status 130, one line ``prog: ... interrupted``
on stderr, no traceback, and no process of it left behind, while its worker threads (tif, check)
or worker processes (pyramid) are busy.

Each tool runs as a real process in a session of its own; SIGINT goes to the whole session, as a
terminal's Ctrl-C does, or to the tool's process alone, as ``kill -INT`` does.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from helpers import require

from blockfs import Directory
from blockfs import format as fmt

pytestmark = pytest.mark.timeout(180)

BIN = Path(sys.executable).parent
#: Seconds from Ctrl-C to the end of the process that count as prompt (the tools allow themselves 3).
PROMPT = 8.0


def sparse_volume(path: Path) -> Path:
    """1024 x 1024 x 4096 (x, y, z) uint8 voxels with one block written: 4096 planes to export, made at once."""
    with Directory(1024, 1024, 4096, "uint8", str(path), n_filenames=2).create() as d:
        d.write_block(np.ones((64, 64, 64), np.uint8), 0, 0, 0)
    return path


def many_blocks(path: Path) -> Path:
    """A volume whose 200,000 entries all point at one stored block: checking it decompresses 200,000 blocks."""
    with Directory(64 * 100, 64 * 100, 64 * 20, "uint8", str(path), n_filenames=1, records=False).create() as d:
        d.write_block(np.arange(64**3, dtype=np.uint32).astype(np.uint8).reshape(64, 64, 64), 0, 0, 0)
    header = fmt.read_directory_file(str(path))
    layout, start = header.layout, header.directory_offset
    offset, size = fmt.unpack_entry(path.read_bytes()[start:start + layout.entry_size], layout)
    n = layout.n_entries
    entries = fmt.pack_entries(np.full(n, offset, np.uint64), np.full(n, size, np.uint64), layout)
    with open(path, "r+b") as f:
        f.seek(start)
        f.write(entries)
    return path


def exported_a_plane(folder: Path) -> Callable[[Any], bool]:
    return lambda process: any(folder.glob("p_*.tif"))


def reading_blocks(volume: Path) -> Callable[[Any], bool]:
    shard = f"{volume}.0"
    return lambda process: any(f.path == shard for f in process.open_files())


def workers_started(process: Any) -> bool:
    return len(process.children()) >= 2


#: name -> (volume maker, command line for the volume and an output folder, sign that the tool is at work
#: given the volume and the folder, prog)
CASES: dict[str, tuple[Callable[[Path], Path], Callable[[Path, Path], list[Any]],
                       Callable[[Path, Path], Callable[[Any], bool]], str]] = {
    "tif": (sparse_volume, lambda v, o: [BIN / "blockfs", "tif", "--input", v, "--output-pattern",
                                        o / "p_%04d.tif", "--n-workers", 2, "--silent"],
            lambda v, o: exported_a_plane(o), "blockfs tif"),
    "blockfs2tif": (sparse_volume, lambda v, o: [BIN / "blockfs2tif", "--input", v, "--output-pattern",
                                                o / "p_%04d.tif", "--silent"], lambda v, o: exported_a_plane(o),
                    "blockfs2tif"),
    "check": (many_blocks, lambda v, o: [BIN / "blockfs", "check", v, "--silent"], lambda v, o: reading_blocks(v),
              "blockfs check"),
    "pyramid": (many_blocks, lambda v, o: [BIN / "blockfs", "pyramid", v, o, "--n-workers", 2, "--silent"],
                lambda v, o: workers_started, "blockfs pyramid"),
}


def interrupt(argv: list[Any], working: Callable[[Any], bool], whole_session: bool
              ) -> tuple[int | None, str, float, list[Any], bool]:
    """Start ``argv``, press Ctrl-C once ``working(process)`` holds; (exit status or None if it had to be
    killed, stderr, seconds from Ctrl-C to exit, the processes it had started, whether it was still at work)."""
    psutil = require("psutil")
    process = subprocess.Popen([str(a) for a in argv], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        watched = psutil.Process(process.pid)
        deadline = time.monotonic() + 60
        with contextlib.suppress(psutil.NoSuchProcess):  # it ended by itself: then it was never at work
            while process.poll() is None and time.monotonic() < deadline and not working(watched):
                time.sleep(0.02)
        try:
            children = watched.children(recursive=True)
        except psutil.NoSuchProcess:
            children = []
        started = process.poll() is None
        with contextlib.suppress(ProcessLookupError):
            (os.killpg if whole_session else os.kill)(process.pid, signal.SIGINT)
        pressed = time.monotonic()
        try:
            status: int | None = process.wait(PROMPT + 20)
        except subprocess.TimeoutExpired:
            status = None
        seconds = time.monotonic() - pressed
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        _, err = process.communicate(timeout=60)
    return status, err, seconds, children, started


@pytest.mark.parametrize("whole_session", [True, False], ids=["ctrl-c", "kill-int"])
@pytest.mark.parametrize("name", sorted(CASES))
def test_ctrl_c_ends_a_working_tool(tmp_path: Path, name: str, whole_session: bool) -> None:
    make, argv, sign, prog = CASES[name]
    volume = make(tmp_path / "volume.blockfs")
    out = tmp_path / "out"
    status, err, seconds, children, started = interrupt(argv(volume, out), sign(volume, out), whole_session)
    assert started, f"{name} ended before it was interrupted: {err}"
    assert status == 130, f"exit status {status} after {seconds:.1f} s: {err}"
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{prog}: ") and "interrupted" in lines[0], err
    assert seconds < PROMPT
    assert not [c for c in children if c.is_running() and c.status() != "zombie"]
    if name in ("tif", "blockfs2tif"):
        assert 0 < len(list(out.glob("p_*.tif"))) < 4096
