"""Progress bars, with the tools run as processes: none (and no escape codes) when stderr is not a
terminal; on a pseudo-terminal a bar that ends at its total and counts what is done (hard links in
files, not bytes)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from terminal import open_terminal, read_all

from blockfs import Directory

pytestmark = pytest.mark.timeout(180)

BLOCK = 8
SHAPE = (32, 64, 64)  # (z, y, x): 4 x 8 x 8 = 256 blocks
N_BLOCKS = 256
N_SHARDS = 3
#: The build's bar: levels until the coarsest fits in one block (64 / 8 = 2 ** 3).
PYRAMID_BAR = "blockfs pyramid: 4 levels, level-1 blocks"
#: A bar's count: "12/256".
COUNT = re.compile(r"(\d+)/(\d+)")


def tool(main: str) -> tuple[str, str]:
    """Arguments of python that run ``main`` of :mod:`blockfs.cli.mv` (blockfs-mv, blockfs-cp) on the rest."""
    return "-c", f"import sys; from blockfs.cli.mv import {main}; sys.exit({main}())"


def make_volume(path: Path) -> Path:
    """A volume of :data:`N_BLOCKS` random blocks in :data:`N_SHARDS` shards."""
    rng = np.random.default_rng(0)
    z, y, x = SHAPE
    with Directory(x, y, z, np.uint16, str(path), n_filenames=N_SHARDS, x_block_size=BLOCK, y_block_size=BLOCK,
                   z_block_size=BLOCK).create() as volume:
        for bz in range(0, z, BLOCK):
            for by in range(0, y, BLOCK):
                for bx in range(0, x, BLOCK):
                    volume.write_block(rng.integers(0, 4000, (BLOCK,) * 3, np.uint16), bx, by, bz)
    return path


def run_piped(*argv: str) -> subprocess.CompletedProcess[str]:
    """Run ``python argv...`` with stdout and stderr captured (not a terminal)."""
    result = subprocess.run([sys.executable, *argv], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return result


def run_in_terminal(*argv: str, timeout: float = 120) -> str:
    """Run ``python argv...`` with stdout and stderr on a pseudo-terminal; what it wrote there."""
    controller, terminal = open_terminal()
    try:
        proc = subprocess.Popen([sys.executable, *argv], stdin=subprocess.DEVNULL, stdout=terminal, stderr=terminal)
    finally:
        os.close(terminal)
    text = read_all(controller).decode(errors="replace")
    assert proc.wait(timeout=timeout) == 0, text
    return text


def bar_states(output: str, desc: str) -> list[str]:
    """Every drawing of the bar named ``desc`` (tqdm redraws after a carriage return)."""
    return [part for part in re.split(r"[\r\n]+", output) if part.lstrip().startswith(desc)]


def final_count(output: str, desc: str) -> tuple[int, int]:
    """(count, total) of the last drawing of the bar ``desc``."""
    states = bar_states(output, desc)
    assert states, f"no {desc!r} bar in:\n{output}"
    done, total = COUNT.search(states[-1]).groups()  # type: ignore[union-attr]
    return int(done), int(total)


def test_check_without_a_terminal_writes_no_bars_or_escape_codes(tmp_path: Path) -> None:
    volume = make_volume(tmp_path / "v.blockfs")
    result = run_piped("-m", "blockfs", "check", str(volume))
    assert "\x1b" not in result.stderr and "\r" not in result.stderr, repr(result.stderr)
    assert "checking" not in result.stderr and "scanning shards" not in result.stderr, result.stderr


def test_check_in_a_terminal_ends_each_bar_at_its_total(tmp_path: Path) -> None:
    """The walk over the shards checks a healthy volume's recorded blocks: no block is read again, so no
    "checking" bar; --deep decompresses every block after the walk."""
    volume = make_volume(tmp_path / "v.blockfs")
    output = run_in_terminal("-m", "blockfs", "check", str(volume))
    assert final_count(output, "scanning shards") == (N_SHARDS, N_SHARDS)
    assert not bar_states(output, "checking"), output
    deep = run_in_terminal("-m", "blockfs", "check", "--deep", str(volume))
    assert final_count(deep, "scanning shards") == (N_SHARDS, N_SHARDS)
    assert final_count(deep, "checking") == (N_BLOCKS, N_BLOCKS)
    assert "\x1b[A" not in output + deep  # one bar at a time: none drawn nested above another


def test_a_move_within_one_file_system_counts_linked_files(tmp_path: Path) -> None:
    volume = make_volume(tmp_path / "v.blockfs")
    output = run_in_terminal(*tool("main"), str(volume), str(tmp_path / "moved"))
    assert (tmp_path / "moved" / "v.blockfs").exists()
    states = bar_states(output, "blockfs-mv: moving")
    assert final_count(output, "blockfs-mv: moving") == (N_SHARDS + 1, N_SHARDS + 1)  # the shards and the index
    assert all("B/s" not in s and "file" in s for s in states), states


def test_a_move_without_a_terminal_writes_nothing_on_stderr(tmp_path: Path) -> None:
    volume = make_volume(tmp_path / "v.blockfs")
    result = run_piped(*tool("main"), str(volume), str(tmp_path / "moved"))
    assert result.stderr == ""


def test_a_copy_counts_bytes_to_their_total(tmp_path: Path) -> None:
    volume = make_volume(tmp_path / "v.blockfs")
    copy = run_in_terminal(*tool("copy_main"), str(volume), str(tmp_path / "copied"))
    states = bar_states(copy, "blockfs-cp: copying")
    assert states and "100%" in states[-1] and "B/s" in states[-1], states


def test_pyramid_level_1_bar_counts_linked_files(tmp_path: Path) -> None:
    volume = make_volume(tmp_path / "v.blockfs")
    output = run_in_terminal("-m", "blockfs", "pyramid", str(volume), str(tmp_path / "pyr"), "--n-workers", "1")
    states = bar_states(output, "blockfs pyramid: level 1")
    assert final_count(output, "blockfs pyramid: level 1") == (N_SHARDS, N_SHARDS)
    assert all("B/s" not in s for s in states), states
    assert final_count(output, PYRAMID_BAR) == (N_BLOCKS, N_BLOCKS)


def test_pyramid_without_a_terminal_writes_no_bars(tmp_path: Path) -> None:
    volume = make_volume(tmp_path / "v.blockfs")
    result = run_piped("-m", "blockfs", "pyramid", str(volume), str(tmp_path / "pyr"), "--n-workers", "1")
    assert "\x1b" not in result.stderr and "\r" not in result.stderr and "level" not in result.stderr, result.stderr


LIBRARY_CALLS = textwrap.dedent("""
    import sys
    import dask.array as da
    import blockfs
    from blockfs.pyramid.build import build_pyramid

    if __name__ == "__main__":
        out = sys.argv[1]
        array = da.random.default_rng(0).integers(0, 4000, (32, 64, 64), chunks=(16, 32, 32)).astype("uint16")
        blockfs.write_dask(array, out + "/d.blockfs", x_block_size=8, y_block_size=8, z_block_size=8,
                           task_bytes=2 * 16 ** 3)
        build_pyramid(out + "/d.blockfs", out + "/pyr", n_workers=1)
""")


def test_write_dask_and_build_pyramid_show_bars_in_a_terminal(tmp_path: Path) -> None:
    script = tmp_path / "calls.py"
    script.write_text(LIBRARY_CALLS)
    output = run_in_terminal(str(script), str(tmp_path))
    assert final_count(output, f"writing {tmp_path}/d.blockfs") == (N_BLOCKS, N_BLOCKS)
    assert final_count(output, PYRAMID_BAR) == (N_BLOCKS, N_BLOCKS)


def test_write_dask_and_build_pyramid_are_quiet_without_a_terminal(tmp_path: Path) -> None:
    script = tmp_path / "calls.py"
    script.write_text(LIBRARY_CALLS)
    result = run_piped(str(script), str(tmp_path))
    assert result.stderr == ""
