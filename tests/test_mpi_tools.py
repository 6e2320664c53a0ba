"""The tools under ``mpiexec -n 3`` give what a serial run gives.

from-tif: the same header and every block compressed to the same bytes; blockfs2tif and
blockfs2jp2k: byte-identical plane files; pyramid: every level as from-tif's volume, the same
info file, also when resuming a build. Failures: every rank stops, the message is printed once.
"""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
import tifffile

import pyramid_reference as ref
from mpi_run import TIMEOUT, environment, mpiexec, require_mpi, run, tool

from blockfs import Directory
from blockfs.pyramid import open_pyramid, state
from blockfs.pyramid.build import build_tasks
from blockfs.pyramid.plan import Plan, make_plan
from blockfs.volume import Volume

SHAPE = (37, 50, 70)  # z, y, x: 37 planes in 5 slabs of 8, the last one short
BLOCKS = "8,16,16"


@pytest.fixture(autouse=True)
def mpi() -> None:
    require_mpi()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """37 TIFF planes of noise."""
    folder = tmp_path_factory.mktemp("tiff")
    rng = np.random.default_rng(3)
    for z in range(SHAPE[0]):
        tifffile.imwrite(folder / f"img_{z}.tif", rng.integers(0, 3000, SHAPE[1:], dtype=np.uint16))
    return folder


@pytest.fixture(scope="module")
def serial_volume(stack: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    output = tmp_path_factory.mktemp("serial") / "v.blockfs"
    serial = run([tool("blockfs"), "from-tif", "--input", stack / "img_*.tif", "--output", output,
                  "--block-size", BLOCKS, "--n-workers", "3", "--silent"])
    assert serial.returncode == 0, serial.stderr
    return output


def _header(v: Volume) -> dict:
    """The JSON header, shard names reduced to their base names (the folders differ)."""
    with open(v.path, "rb") as f:
        raw = f.read(v.store.spec.directory_offset)
    meta = json.loads(raw[16:16 + int.from_bytes(raw[8:12], "little")])
    meta["BlockFilenames"] = [Path(n).name for n in meta["BlockFilenames"]]
    return meta


def _same_volume(a: Volume, b: Volume) -> None:
    """The same header (but the folders), voxels, and blocks: written or not, with the same bytes."""
    assert _header(a) == _header(b)
    assert np.array_equal(a[...], b[...])
    origins = [tuple(int(c) for c in o) for o in a.layout.block_entries()[1]]
    assert all(a.read_block_payload(*o) == b.read_block_payload(*o) for o in origins)


def test_from_tif_on_three_ranks_equals_serial(stack: Path, serial_volume: Path, tmp_path: Path) -> None:
    output = tmp_path / "v.blockfs"
    result, _ = mpiexec(3, [tool("blockfs"), "from-tif", "--input", stack / "img_*.tif", "--output", output,
                            "--block-size", BLOCKS, "--n-workers", "3"])
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("blockfs from-tif (rank 0 of 3)") >= 1  # rank 0's progress, and only rank 0's
    assert "rank 1" not in result.stderr and "rank 2" not in result.stderr
    with Directory.open(serial_volume) as a, Directory.open(output) as b:
        _same_volume(a.volume, b.volume)


@pytest.mark.parametrize("exporter, suffix", [("blockfs2tif", "tif"), ("blockfs2jp2k", "jp2")])
def test_exporters_on_three_ranks_equal_serial(serial_volume: Path, tmp_path: Path, exporter: str,
                                               suffix: str) -> None:
    serial = run([tool(exporter), "--input", serial_volume, "--output-pattern",
                  tmp_path / "serial" / f"img_%03d.{suffix}", "--silent"])
    assert serial.returncode == 0, serial.stderr
    result, _ = mpiexec(3, [tool(exporter), "--input", serial_volume, "--output-pattern",
                            tmp_path / "ranks" / f"img_%03d.{suffix}"])
    assert result.returncode == 0, result.stderr
    assert f"{exporter} (rank 0 of 3)" in result.stderr
    names = sorted(p.name for p in (tmp_path / "serial").iterdir())
    assert len(names) == SHAPE[0]
    assert sorted(p.name for p in (tmp_path / "ranks").iterdir()) == names
    for name in names:
        assert (tmp_path / "serial" / name).read_bytes() == (tmp_path / "ranks" / name).read_bytes(), name


def test_a_failure_stops_every_rank_and_is_printed_once(stack: Path, serial_volume: Path, tmp_path: Path) -> None:
    result, _ = mpiexec(3, [tool("blockfs"), "from-tif", "--input", stack / "img_*.tif", "--output", serial_volume,
                            "--block-size", BLOCKS, "--silent"])
    assert result.returncode == 1
    assert result.stderr.count("already exists") == 1, result.stderr
    missing = tmp_path / "missing.blockfs"
    result, _ = mpiexec(3, [tool("blockfs2tif"), "--input", missing, "--output-pattern", tmp_path / "t_%03d.tif"])
    assert result.returncode == 1
    assert result.stderr.count(f"blockfs2tif: {missing}: No such file or directory") == 1, result.stderr


def test_overwrite_replaces_a_volume_on_three_ranks(stack: Path, serial_volume: Path, tmp_path: Path) -> None:
    output = tmp_path / "v.blockfs"
    output.write_bytes(b"")  # an empty file where the volume goes: refused without --overwrite
    result, _ = mpiexec(3, [tool("blockfs"), "from-tif", "--input", stack / "img_*.tif", "--output", output,
                            "--block-size", BLOCKS, "--n-workers", "3", "--overwrite", "--silent"])
    assert result.returncode == 0, result.stderr
    with Directory.open(serial_volume) as a, Directory.open(output) as b:
        _same_volume(a.volume, b.volume)


def test_an_odd_plane_is_named_once_and_no_volume_is_left(tmp_path: Path) -> None:
    for z in range(7):
        tifffile.imwrite(tmp_path / f"img_{z}.tif", np.zeros((20, 30) if z != 5 else (20, 31), np.uint16))
    output = tmp_path / "out" / "v.blockfs"
    result, _ = mpiexec(3, [tool("blockfs"), "from-tif", "--input", tmp_path / "img_*.tif", "--output", output,
                            "--silent"])
    assert result.returncode == 1
    assert result.stderr.count(f"blockfs from-tif: {tmp_path / 'img_5.tif'}: the plane is 20x31") == 1, result.stderr
    assert not output.exists()


def test_tools_run_serially_without_a_launcher(serial_volume: Path, tmp_path: Path) -> None:
    """Outside mpiexec the tools never initialise MPI (mpi4py made unimportable)."""
    code = ("import sys; sys.modules['mpi4py'] = None\n"
            "from blockfs.blockfs2tif import main\n"
            "sys.exit(main(sys.argv[1:]))")
    result = run([sys.executable, "-c", code, "--input", serial_volume, "--output-pattern", tmp_path / "img_%03d.tif",
                  "--silent"])
    assert result.returncode == 0, result.stderr
    assert len(list(tmp_path.iterdir())) == SHAPE[0]


PYRAMID_SHAPE, PYRAMID_BLOCK = (45, 61, 83), (4, 6, 8)  # z, y, x: odd extents, 1,452 blocks, 5 levels


def _missing(z: int, y: int, x: int) -> bool:
    """The subtree of a level-3 block, and scattered blocks, unwritten."""
    return (z < 16 and 24 <= y < 48 and x < 32) or (z + y + x) % 7 == 0


@pytest.fixture(scope="module")
def pyramid_source(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A volume with missing blocks, and its pyramid built serially with 3 shards per level."""
    folder = tmp_path_factory.mktemp("pyramid")
    source, serial = folder / "source.blockfs", folder / "serial"
    ref.write_volume(source, ref.sample(PYRAMID_SHAPE, "uint16"), PYRAMID_BLOCK, _missing)
    result = run([tool("blockfs"), "pyramid", source, serial, "--n-workers", "3", "--silent"])
    assert result.returncode == 0, result.stderr
    return source, serial


def _same_pyramid(serial: Path, ranked: Path) -> None:
    assert (serial / "info").read_bytes() == (ranked / "info").read_bytes()
    assert not (ranked / ".pyramid-build").exists()
    a, b = open_pyramid(serial), open_pyramid(ranked)
    assert a.keys == b.keys and len(a.levels) == 5
    for x, y in zip(a.levels, b.levels):
        _same_volume(x, y)


def test_pyramid_on_three_ranks_equals_serial(pyramid_source: tuple[Path, Path], tmp_path: Path) -> None:
    source, serial = pyramid_source
    result, seconds = mpiexec(3, [tool("blockfs"), "pyramid", source, tmp_path / "ranked", "--n-workers", "3"])
    assert result.returncode == 0, result.stderr
    assert "blockfs pyramid (rank 0 of 3)" in result.stderr  # rank 0's progress, and only rank 0's
    assert "rank 1" not in result.stderr and "rank 2" not in result.stderr
    assert result.stdout.count("blockfs pyramid: wrote") == 1
    _same_pyramid(serial, tmp_path / "ranked")
    print(f"mpiexec -n 3 blockfs pyramid: {seconds:.1f} s")


def test_pyramid_on_three_ranks_resumes_an_interrupted_build(pyramid_source: tuple[Path, Path],
                                                             tmp_path: Path) -> None:
    """A build cut short after a few tasks, continued by the ranks, equals an uninterrupted one."""
    source, serial = pyramid_source
    dest = tmp_path / "ranked"
    plan = state.prepare(make_plan(source, dest, n_workers=3), n_shards=3)
    todo = state.pending(plan)
    assert len(list(build_tasks(plan, todo[:4], n_workers=1))) == 4 < len(todo)
    refused, _ = mpiexec(3, [tool("blockfs"), "pyramid", source, dest, "--n-workers", "3", "--silent"])
    assert refused.returncode == 1
    assert refused.stderr.count("pass --resume to continue it") == 1, refused.stderr
    result, _ = mpiexec(3, [tool("blockfs"), "pyramid", source, dest, "--n-workers", "3", "--resume", "--silent"])
    assert result.returncode == 0, result.stderr
    _same_pyramid(serial, dest)


def _subtree_blocks(plan: Plan, key: str) -> list[tuple[int, tuple[int, int, int]]]:
    """(level, first voxel z, y, x) of every block that task ``key`` writes."""
    top = tuple(int(i) for i in key.split("_")[1:])
    out = []
    for level in plan.subtree_levels:
        span = 2 ** (plan.task_level - level)
        ranges = (range(i * span, min((i + 1) * span, n)) for i, n in zip(top, plan.grid(level)))
        out += [(level, plan.origin(level, index)) for index in itertools.product(*ranges)]  # type: ignore[arg-type]
    return out


#: ``blockfs pyramid SOURCE DEST --n-workers 3`` under mpiexec, with a checkpoint after every round
RANKED_BUILD = ("import sys\n"
                "from blockfs.parallel.mpi import tool_ranks\n"
                "from blockfs.pyramid import build_pyramid\n"
                "build_pyramid(sys.argv[1], sys.argv[2], n_workers=3, silent=True, checkpoint_seconds=0,\n"
                "              ranks=tool_ranks('pyramid'))")


def test_pyramid_rank_killed_then_resumed_on_three_ranks(pyramid_source: tuple[Path, Path], tmp_path: Path) -> None:
    """SIGKILL to one rank ends the job; every task in the journal has its blocks indexed; --resume finishes."""
    source, serial = pyramid_source
    dest = tmp_path / "ranked"
    done = dest / ".pyramid-build" / "done"
    job = subprocess.Popen(["mpiexec", "-n", "3", sys.executable, "-c", RANKED_BUILD, str(source), str(dest)],
                           env=environment(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + TIMEOUT
        while not (done.is_dir() and any(done.glob("*.npz"))):  # the first checkpoint is recorded
            assert job.poll() is None and time.monotonic() < deadline, job.communicate()
            time.sleep(0.002)
        ranks = [p for p in psutil.Process(job.pid).children() if "pyramid" in " ".join(p.cmdline())]
        assert len(ranks) == 3
        ranks[1].kill()
        job.communicate(timeout=TIMEOUT)
    finally:
        if job.poll() is None:
            job.kill()
            job.communicate()
    assert job.returncode != 0 and not (dest / "info").exists()
    plan = make_plan(source, dest, n_workers=3)
    finished = state.finished(plan)
    assert 1 <= len(finished) < len(plan.tasks)
    levels = {level: (Directory.open(plan.path(level)), Directory.open(str(serial / key / "precomputed.blockfs")))
              for level, key in ((level, "_".join([str(plan.factor(level))] * 3)) for level in plan.subtree_levels)}
    for key in finished:  # recorded only once every block of the task is indexed
        for level, (z, y, x) in _subtree_blocks(plan, key):
            killed, reference = levels[level]
            assert killed.read_block_payload(x, y, z) == reference.read_block_payload(x, y, z), (key, level, z, y, x)
    for pair in levels.values():
        for volume in pair:
            volume.close()
    result, _ = mpiexec(3, [tool("blockfs"), "pyramid", source, dest, "--n-workers", "3", "--resume", "--silent"])
    assert result.returncode == 0, result.stderr
    _same_pyramid(serial, dest)
