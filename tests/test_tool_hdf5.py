"""blockfs2hdf (blockfs2hdf5): the installed command under mpiexec, compared voxel by voxel with h5py.

These tests need Open MPI's ``mpiexec`` on PATH and h5py built against parallel HDF5 (``make install``
builds it). When either is missing they fail under CI (the ``CI`` environment variable is set) and
are skipped otherwise.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fixtures import case_ids, case_params, require_fixtures
from volumes import make_volume

from blockfs import Directory

TOOL = Path(sys.executable).with_name("blockfs2hdf")
TOOL5 = Path(sys.executable).with_name("blockfs2hdf5")
TIMEOUT = 120
BLOCK_SIZE_ATTR = "blockfs_block_size_zyx"
MPI_ENV = {"OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
           "OMPI_MCA_rmaps_base_oversubscribe": "1"}

#: the tool without MPI: mpi4py made unimportable before the tool is imported
NO_MPI = ("import sys; sys.modules['mpi4py'] = None\n"
          "from blockfs.blockfs2hdf5 import main\n"
          "sys.exit(main(sys.argv[1:]))")


def _missing_component() -> str | None:
    """Why the parallel export cannot be tested here, or None."""
    if shutil.which("mpiexec") is None:
        return "mpiexec is not on PATH (install openmpi-bin; make install does)"
    if not TOOL.exists():
        return f"{TOOL} is not installed (pip install -e .)"
    try:
        import h5py
    except ImportError:
        return "h5py is not installed (make install builds it against parallel HDF5)"
    if not h5py.get_config().mpi:
        return f"h5py {h5py.version.version} is built without parallel HDF5 (make install builds it with MPI)"
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        return "mpi4py is not installed"
    return None


@pytest.fixture(autouse=True)
def parallel_hdf5() -> None:
    """Skip (or, under CI, fail) every test here unless mpiexec and a parallel h5py are installed."""
    reason = _missing_component()
    if reason is None:
        return
    if os.environ.get("CI"):
        pytest.fail(f"blockfs2hdf cannot be tested: {reason}", pytrace=False)
    pytest.skip(reason)


def run(args: list[Any], ranks: int | None = None, command: list[str] | None = None
        ) -> subprocess.CompletedProcess[str]:
    """Run the installed tool (under ``mpiexec -n ranks`` if given) and return the finished process."""
    argv = [str(a) for a in (command or [str(TOOL)]) + list(args)]
    if ranks is not None:
        # by name: Open MPI takes an absolute mpiexec path as --prefix, and /bin/mpiexec gives "/"
        argv = ["mpiexec", "-n", str(ranks)] + argv
    env = {**os.environ, **MPI_ENV}
    return subprocess.run(argv, capture_output=True, text=True, timeout=TIMEOUT, env=env)


def ok(result: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert result.returncode == 0, f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    return result


def read(path: Path, name: str) -> tuple[np.ndarray, Any]:
    """The dataset's data and a description: (array, (dtype, chunks, compression, opts, attrs))."""
    import h5py

    with h5py.File(path, "r") as f:
        dset = f[name]
        attrs = {key: dset.attrs[key] for key in dset.attrs}
        return dset[...], (dset.dtype, dset.chunks, dset.compression, dset.compression_opts, attrs)


def assert_exact(path: Path, name: str, expected: np.ndarray) -> tuple[Any, ...]:
    data, info = read(path, name)
    assert data.shape == expected.shape
    assert data.dtype == expected.dtype
    np.testing.assert_array_equal(data, expected)
    return info


def snapshot(path: Path) -> tuple[bytes, int]:
    return path.read_bytes(), path.stat().st_mtime_ns


@pytest.mark.parametrize("ranks", [4, 1])
def test_every_voxel_under_mpiexec(tmp_path: Path, ranks: int) -> None:
    metadata = {"voxel_size": [1.8, 1.8, 2.0], "stain": "lectin", "channels": {"green": 488}}
    src, expected = make_volume(tmp_path, shape=(70, 90, 100), block=(32, 32, 32), dtype="uint16",
                                missing=((0, 0, 0), (96, 64, 32)), metadata=metadata)
    dest = tmp_path / "out.h5"
    result = ok(run([src, dest, "volume", "--silent"], ranks))
    assert "serially" not in result.stderr
    _, chunks, compression, _, attrs = assert_exact(dest, "volume", expected)
    assert chunks == (32, 32, 32)
    assert compression is None
    assert {k: json.loads(v) for k, v in attrs.items() if k != BLOCK_SIZE_ATTR} == metadata
    assert list(attrs[BLOCK_SIZE_ATTR]) == [32, 32, 32]


def test_chunks_clipped_to_the_shape_and_other_dtypes(tmp_path: Path) -> None:
    src, expected = make_volume(tmp_path, shape=(20, 90, 50), block=(32, 64, 16), dtype="float32")
    dest = tmp_path / "out.h5"
    ok(run([src, dest, "f", "--silent"], 4))
    _, chunks, _, _, attrs = assert_exact(dest, "f", expected)
    assert chunks == (20, 64, 16)
    assert list(attrs[BLOCK_SIZE_ATTR]) == [32, 64, 16]


@pytest.mark.parametrize("case", case_params(), ids=case_ids())
def test_fixture_volumes(tmp_path: Path, case: dict[str, Any] | None) -> None:
    folder = require_fixtures()
    assert case is not None
    expected = np.load(folder / case["expected_array"])
    dest = tmp_path / "fixture.h5"
    ok(run([folder / case["directory_file"], dest, f"/fixtures/{case['name']}", "--silent"], 4))
    _, chunks, _, _, attrs = assert_exact(dest, f"/fixtures/{case['name']}", expected)
    assert chunks == tuple(min(b, s) for b, s in zip(case["block_size_zyx"], case["shape_zyx"]))
    assert {k: json.loads(v) for k, v in attrs.items() if k != BLOCK_SIZE_ATTR} == case["metadata"]


def test_gzip_in_parallel(tmp_path: Path) -> None:
    src, expected = make_volume(tmp_path, shape=(70, 90, 100), block=(16, 32, 32), missing=((32, 32, 16),))
    dest = tmp_path / "out.h5"
    result = ok(run([src, dest, "gz", "--compression", "gzip", "--compression-opts", "6", "--silent"], 4))
    assert "serially" not in result.stderr
    _, chunks, compression, opts, _ = assert_exact(dest, "gz", expected)
    assert (chunks, compression, opts) == ((16, 32, 32), "gzip", 6)


def test_lzf_is_written_serially_and_reads_back(tmp_path: Path) -> None:
    # float noise does not shrink under lzf, so HDF5 stores those chunks raw, which parallel HDF5 mislabels
    src, expected = make_volume(tmp_path, shape=(40, 64, 70), block=(16, 32, 32), dtype="float32")
    dest = tmp_path / "out.h5"
    result = ok(run([src, dest, "lzf", "--compression", "lzf", "--silent"], 4))
    assert result.stderr.count("writing serially on rank 0 of 4") == 1, result.stderr
    _, _, compression, _, _ = assert_exact(dest, "lzf", expected)
    assert compression == "lzf"


def test_group_paths_and_a_second_dataset(tmp_path: Path) -> None:
    src0, expected0 = make_volume(tmp_path, shape=(33, 40, 50), block=(16, 16, 16), name="c0.blockfs", seed=1)
    src1, expected1 = make_volume(tmp_path, shape=(33, 40, 50), block=(16, 16, 16), name="c1.blockfs", seed=2)
    dest = tmp_path / "brain.h5"
    ok(run([src0, dest, "/raw/channel0", "--silent"], 4))
    ok(run([src1, dest, "/raw/channel1", "--silent"], 4))  # dest exists now: the dataset is added
    assert_exact(dest, "/raw/channel0", expected0)
    assert_exact(dest, "/raw/channel1", expected1)
    import h5py
    with h5py.File(dest, "r") as f:
        assert sorted(f["raw"]) == ["channel0", "channel1"]


def test_existing_dataset_is_an_error_and_the_file_is_unchanged(tmp_path: Path) -> None:
    src, expected = make_volume(tmp_path, shape=(20, 30, 40), block=(16, 16, 16))
    other, _ = make_volume(tmp_path, shape=(20, 30, 40), block=(16, 16, 16), name="other.blockfs", seed=5)
    dest = tmp_path / "out.h5"
    ok(run([src, dest, "/raw/volume", "--silent"]))
    before = snapshot(dest)
    result = run([other, dest, "/raw/volume", "--silent"])
    assert result.returncode == 1
    assert f"blockfs2hdf: {dest}: dataset /raw/volume exists" in result.stderr
    assert snapshot(dest) == before
    result = run([other, dest, "/raw/volume", "--silent"], 4)
    assert result.returncode != 0
    assert result.stderr.count(f"{dest}: dataset /raw/volume exists") == 1, result.stderr
    assert snapshot(dest) == before
    assert_exact(dest, "/raw/volume", expected)


def test_missing_input(tmp_path: Path) -> None:
    dest = tmp_path / "out.h5"
    missing = tmp_path / "nowhere.blockfs"
    result = run([missing, dest, "x"])
    assert result.returncode == 1
    assert str(missing) in result.stderr and result.stderr.startswith("blockfs2hdf: ")
    result = run([missing, dest, "x"], 4)
    assert result.returncode != 0
    assert result.stderr.count(f"blockfs2hdf: {missing}") == 1, result.stderr
    assert not dest.exists()


def test_bad_filter_and_name_are_reported_before_anything_is_written(tmp_path: Path) -> None:
    src, _ = make_volume(tmp_path, shape=(20, 30, 40), block=(16, 16, 16))
    dest = tmp_path / "out.h5"
    for args, words, ranks in [(["x", "--compression", "nosuchfilter"], "nosuchfilter", 4),
                               (["x", "--compression", "gzip", "--compression-opts", "12"], "gzip", None),
                               (["/"], "does not name a dataset", None)]:
        result = run([src, dest, *args], ranks)
        assert result.returncode != 0
        assert words in result.stderr and result.stderr.count("blockfs2hdf: ") == 1, result.stderr
        assert not dest.exists()
    result = run([src, tmp_path / "no" / "such" / "folder.h5", "x"])
    assert result.returncode == 1 and "does not exist" in result.stderr
    (tmp_path / "text.h5").write_text("not HDF5")
    result = run([src, tmp_path / "text.h5", "x"])
    assert result.returncode == 1 and "not an HDF5 file" in result.stderr
    assert (tmp_path / "text.h5").read_text() == "not HDF5"


def _damage_block(src: Path, x: int, y: int, z: int) -> None:
    """Overwrite the first bytes of one block's payload in its shard (found through its index entry)."""
    d = Directory.open(str(src))
    try:
        entry_size = -(-(d.n_offset_bits + d.n_size_bits) // 8)
        position = d.offsetof(x, y, z)
        entry = (position - d.directory_offset) // entry_size
        with open(src, "rb") as f:
            f.seek(position)
            value = int.from_bytes(f.read(entry_size), "little")
        offset = value & ((1 << d.n_offset_bits) - 1)
        shard = src.parent / Path(d.block_filenames[entry % len(d.block_filenames)]).name
    finally:
        d.close()
    with open(shard, "r+b") as f:
        f.seek(offset)
        f.write(b"\xff" * 16)


def test_a_damaged_block_on_one_rank_stops_every_rank(tmp_path: Path) -> None:
    # 9 rows of 32x32 blocks; row 1 (z=0, y=32) is rank 1's in the first round of four
    src, _ = make_volume(tmp_path, shape=(70, 90, 100), block=(32, 32, 32), n_files=1)
    _damage_block(src, 0, 32, 0)
    dest = tmp_path / "new.h5"
    result = run([src, dest, "x", "--silent"], 4)
    assert result.returncode != 0
    assert result.stderr.count("blockfs2hdf: ") == 1 and "volume.blockfs.0" in result.stderr, result.stderr
    assert not dest.exists()  # the file this run created is removed

    keep, kept = make_volume(tmp_path, shape=(20, 30, 40), block=(16, 16, 16), name="keep.blockfs")
    dest = tmp_path / "old.h5"
    ok(run([keep, dest, "keep", "--silent"], 4))
    result = run([src, dest, "x", "--compression", "gzip", "--silent"], 4)
    assert result.returncode != 0
    import h5py
    with h5py.File(dest, "r") as f:
        assert "x" not in f  # the partly written dataset is deleted
    assert_exact(dest, "keep", kept)


def test_serially_without_mpi(tmp_path: Path) -> None:
    src, expected = make_volume(tmp_path, shape=(40, 50, 60), block=(16, 32, 32), missing=((32, 0, 16),))
    dest = tmp_path / "out.h5"
    result = ok(run([src, dest, "/serial/volume", "--silent"], command=[sys.executable, "-c", NO_MPI]))
    assert result.stderr.count("note: mpi4py is not available") == 1, result.stderr
    assert "writing serially in one process" in result.stderr
    assert_exact(dest, "/serial/volume", expected)
    # started by mpiexec without mpi4py: rank 0 writes alone, the note is printed once
    ok(run([src, dest, "/serial/again", "--silent"], 3, command=[sys.executable, "-c", NO_MPI]))
    assert_exact(dest, "/serial/again", expected)


def test_progress_on_rank_0_and_both_command_names(tmp_path: Path) -> None:
    src, expected = make_volume(tmp_path, shape=(20, 30, 40), block=(16, 16, 16))
    dest = tmp_path / "out.h5"
    result = ok(run([src, dest, "a"], 2, command=[str(TOOL5)]))
    # one bar, from rank 0: it starts once at 0% (and may print 100% twice: at its last update and at close)
    assert result.stderr.count(" 0%|") == 1 and "100%" in result.stderr, result.stderr
    assert_exact(dest, "a", expected)
    help_text = ok(run(["--help"])).stdout
    assert "mpiexec -n 4 blockfs2hdf" in help_text and "--compression" in help_text
