"""Collective volumes under real ``mpiexec``: ranks write blocks whose shards other ranks own.

Each job runs tests/mpi_writer.py on N ranks (see its docstring). The tests check every voxel
through the library and through the independent spec decoder (the earlier release's view), the
files every rank opened, a rank killed with SIGKILL mid-write, and failures reaching every rank.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import mpi_writer
import spec_decoder
from mpi_run import mpiexec, require_mpi

from blockfs import Directory, records
from blockfs.ops.repair import repair_volume

SCRIPT = Path(mpi_writer.__file__)
SHARDS = 3
#: seconds from a rank's SIGKILL to the end of the job (Open MPI ends it within about 1.5 s here)
KILLED_JOB_SECONDS = 15


@pytest.fixture(autouse=True)
def mpi() -> None:
    require_mpi()


def _write(ranks: int, volume: Path, *options: object) -> list[dict]:
    """Run the writer on ``ranks`` ranks; return each rank's JSON report, by rank."""
    result, _ = mpiexec(ranks, [sys.executable, SCRIPT, volume, "--shards", SHARDS, *options])
    assert result.returncode == 0, result.stderr
    reports = _reports(result.stdout)
    assert [r["rank"] for r in reports] == list(range(ranks)), result.stdout
    return reports


def _reports(stdout: str) -> list[dict]:
    """The ranks' reports, from the JSON line that rank 0 prints."""
    return next(json.loads(line) for line in stdout.splitlines() if line.startswith("["))


def _opens(log: Path, rank: int) -> list[dict]:
    with open(f"{log}.{rank}") as f:
        return [json.loads(line) for line in f]


def _for_writing(opened: dict) -> bool:
    """Whether an open was for writing: builtin open() gives its mode, os.open() its flags."""
    if isinstance(opened["mode"], str):
        return any(c in opened["mode"] for c in "wax+")
    return bool(opened["flags"] & (os.O_WRONLY | os.O_RDWR))


def _origins(d: Directory) -> list[tuple[int, int, int]]:
    """First voxels (x, y, z) of every block of the volume."""
    return [tuple(int(c) for c in origin) for origin in d.layout.block_entries()[1]]


def _expected_block(block: np.ndarray, x: int, y: int, z: int) -> np.ndarray:
    return mpi_writer.expected_volume()[z:z + block.shape[0], y:y + block.shape[1], x:x + block.shape[2]]


@pytest.mark.parametrize("ranks", [1, 2, 4])
def test_blocks_from_non_owners_read_back_exactly(tmp_path: Path, ranks: int) -> None:
    volume = tmp_path / "v.blockfs"
    reports = _write(ranks, volume, "--opens", tmp_path / "opens")
    expected = mpi_writer.expected_volume()

    with Directory.open(volume) as d:
        assert np.array_equal(d[...], expected)
        sizes = [len(d.read_block_payload(x, y, z)) for x, y, z in _origins(d)]
    old_view, _ = spec_decoder.read_volume(volume)
    assert np.array_equal(old_view, expected)

    n_blocks = len(sizes)
    routed = sum(r["routed_blocks"] for r in reports)
    if ranks == 1:
        assert reports[0]["local_blocks"] == n_blocks and routed == 0
    else:  # every block was made by a rank that does not own its shard, and travelled compressed
        assert routed == n_blocks and sum(r["local_blocks"] for r in reports) == 0
        assert sum(r["received_blocks"] for r in reports) == n_blocks
        assert sum(r["routed_payload_bytes"] for r in reports) == sum(sizes)
        overhead = records.HEADER_SIZE + 8  # the block's record and its entry number
        assert sum(r["routed_bytes"] for r in reports) == sum(sizes) + overhead * n_blocks


def test_sends_are_bounded_while_an_owner_is_busy(tmp_path: Path) -> None:
    """Rank 0 naps after each of its blocks, so it serves messages rarely: the others stop at the window."""
    from blockfs.parallel.collective import DEFAULT_WINDOW

    volume = tmp_path / "v.blockfs"
    reports = _write(3, volume, "--slow", 0.05, "--slow-rank", 0)
    assert all(r["peak_in_flight"] <= DEFAULT_WINDOW for r in reports), reports
    assert max(r["peak_in_flight"] for r in reports[1:]) == DEFAULT_WINDOW, reports  # the bound was reached
    with Directory.open(volume) as d:
        assert np.array_equal(d[...], mpi_writer.expected_volume())


def test_volumes_without_records(tmp_path: Path) -> None:
    volume = tmp_path / "v.blockfs"
    reports = _write(2, volume, "--no-records")
    assert sum(r["routed_blocks"] for r in reports) == sum(r["blocks"] for r in reports)
    with Directory.open(volume) as d:
        assert not d.records
        assert np.array_equal(d[...], mpi_writer.expected_volume())
    assert np.array_equal(spec_decoder.read_volume(volume)[0], mpi_writer.expected_volume())


@pytest.mark.parametrize("ranks", [2, 4])
def test_no_rank_opens_another_ranks_shard_for_writing(tmp_path: Path, ranks: int) -> None:
    volume = tmp_path / "v.blockfs"
    _write(ranks, volume, "--opens", tmp_path / "opens")
    shards = [str(volume) + f".{s}" for s in range(SHARDS)]
    for rank in range(ranks):
        writes = [o for o in _opens(tmp_path / "opens", rank) if _for_writing(o)]
        volume_files = {o["path"] for o in writes if o["path"] in shards + [str(volume)]}
        during_write = {o["path"] for o in writes if o["phase"] == "write"}
        owned = {shards[s] for s in range(SHARDS) if s % ranks == rank}
        # Rank 0 creates the (empty) files; nobody else opens any for writing but its own shards, and (to
        # write them) the index, whose shared lock every writing process holds (blockfs.locking)
        if rank != 0:
            assert volume_files - {str(volume)} == owned, (rank, volume_files)
            assert (str(volume) in volume_files) == bool(owned), (rank, volume_files)
        assert during_write & set(shards) == owned, (rank, during_write)


def test_open_r_plus_collectively_rewrites_blocks(tmp_path: Path) -> None:
    volume = tmp_path / "v.blockfs"
    z, y, x = mpi_writer.SHAPE
    b = mpi_writer.BLOCK
    with Directory(x, y, z, np.uint16, str(volume), n_filenames=SHARDS, x_block_size=b, y_block_size=b,
                   z_block_size=b).create() as d:
        d[...] = np.full(mpi_writer.SHAPE, 7, np.uint16)  # every block, to be replaced
    _write(2, volume, "--open")
    with Directory.open(volume) as d:
        assert np.array_equal(d[...], mpi_writer.expected_volume())


def test_a_rank_killed_mid_write_ends_the_job_and_repair_recovers_complete_blocks(tmp_path: Path) -> None:
    volume = tmp_path / "v.blockfs"
    result, _ = mpiexec(3, [sys.executable, SCRIPT, volume, "--shards", SHARDS, "--kill-rank", 1,
                            "--kill-after", 8, "--slow", 0.05])
    ended = time.time()
    assert result.returncode != 0, result.stdout
    assert "signal 9" in result.stderr, result.stderr
    killed = float(next(line.split()[-1] for line in result.stdout.splitlines() if line.startswith("killed at")))
    assert ended - killed < KILLED_JOB_SECONDS  # every rank is gone: mpiexec returned

    with Directory.open(volume) as d:  # the index is written at close: nothing is indexed yet
        layout, shard_paths = d.layout, d.shard_paths
        assert not d[...].any()
    complete = set()
    for path in shard_paths:
        with open(path, "rb") as f:
            complete |= {r.entry for _, r, _ in records.scan(f.read(), path) if r is not None}
    n_blocks = len(layout.block_entries()[0])
    assert 0 < len(complete) < n_blocks  # the job died part way

    result = repair_volume(str(volume))
    assert result.blocks_indexed == len(complete) and not result.damaged
    with Directory.open(volume) as d:
        for x, y, z in _origins(d):
            block = d.read_block(x, y, z)
            if layout.entry_index(x, y, z) in complete:
                assert np.array_equal(block, _expected_block(block, x, y, z)), (x, y, z)
            else:
                assert not block.any()


def test_a_failing_owner_fails_close_on_every_rank(tmp_path: Path) -> None:
    volume = tmp_path / "v.blockfs"
    # 12 offset bits: shards may hold 4 KiB, so each owner's appends fail after a block or two
    result, _ = mpiexec(3, [sys.executable, SCRIPT, volume, "--shards", SHARDS, "--offset-bits", 12])
    assert result.returncode != 0
    reports = _reports(result.stdout)
    assert [r["rank"] for r in reports] == [0, 1, 2], result.stdout + result.stderr
    for report in reports:
        assert "blocks could not be written" in report["failed_at_close"]
        assert str(volume) in report["failed_at_close"] and "offset" in report["failed_at_close"]
    with Directory.open(volume) as d:  # what was appended is indexed and reads back
        indexed = [d.read_block(x, y, z) for x, y, z in _origins(d) if d.read_block_payload(x, y, z)]
        assert indexed
        for x, y, z in _origins(d):
            block = d.read_block(x, y, z)
            assert not block.any() or np.array_equal(block, _expected_block(block, x, y, z))
