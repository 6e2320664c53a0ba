"""blockfs from-zarr and to-zarr interrupted (SIGKILL at random moments, a damaged source chunk, a full
disk): the output is reported incomplete or absent, never taken for complete; the source is untouched;
a plain re-run replaces the incomplete output and gives what an uninterrupted run gives; errors name
the file and what is wrong with it. Every tool runs as a user types it, in its own process."""

from __future__ import annotations

import fcntl
import hashlib
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from helpers import require
from interop_support import make_pyramid

from blockfs import Directory
from blockfs.pyramid import open_pyramid

zarr = require("zarr")

BLOCK = 16
#: Level 0 of the pyramid the trials convert: 10 x 12 x 13 = 1560 blocks (1806 in its three levels).
SHAPE = (10 * BLOCK, 12 * BLOCK, 13 * BLOCK)
SEED = 20261207
TO_MARKER = "blockfs-to-zarr.incomplete"
FROM_MARKER = "blockfs-from-zarr.incomplete"
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}


def command(*args: object) -> list[str]:
    """``blockfs ARGS...`` as typed at a shell, run by this interpreter."""
    return [sys.executable, "-m", "blockfs.cli", *map(str, args)]


def blockfs(*args: object) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(command(*args), capture_output=True, text=True, timeout=300, env=ENV)
    assert "Traceback" not in result.stderr, result.stderr
    return result


def tree_digest(root: Path) -> str:
    """A digest of every file's path and bytes under ``root``: whether a source was touched."""
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def incomplete_warnings(call: Callable[[], object]) -> list[str]:
    """The messages of the warnings ``call`` gives that say a volume is incomplete."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        call()
    return [str(w.message) for w in caught if "incomplete" in str(w.message)]


def read_volume(path: Path) -> np.ndarray:
    """A volume's voxels; it must open without a warning (pytest turns warnings into errors)."""
    with Directory.open(path) as volume:
        return volume[...]


def read_zarr(path: Path) -> list[np.ndarray]:
    group = zarr.open_group(path, mode="r")
    return [group[str(i)][...] for i in range(len(list(group.array_keys())))]


def read_levels(path: Path) -> list[np.ndarray]:
    return [level[...] for level in open_pyramid(path).levels]


# -- what each tool's output looks like ------------------------------------------------------

def volume_state(dest: Path) -> str:
    """"absent", or "incomplete" (Directory.open says so, and so do blockfs check and info), else "complete"."""
    if not dest.exists():
        return "absent"
    if not incomplete_warnings(lambda: Directory.open(dest).close()):
        return "complete"
    check = blockfs("check", dest, "--silent")
    assert check.returncode == 1 and f"{dest}: incomplete: " in check.stdout, check.stdout + check.stderr
    assert "INCOMPLETE: " in blockfs("info", dest).stdout
    return "incomplete"


def folder_state(marker: str) -> Callable[[Path], str]:
    """"absent" (nothing but folders there), "incomplete" (the tool's marker is there), else "complete"."""
    def state(dest: Path) -> str:
        if not dest.exists() or all(p.is_dir() for p in dest.rglob("*")):
            return "absent"
        return "incomplete" if (dest / marker).exists() else "complete"
    return state


# -- sources ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A blockfs pyramid and its OME-Zarr 0.4 copy (blosc chunks of the block shape: passed through)."""
    folder = tmp_path_factory.mktemp("sources")
    root, _ = make_pyramid(folder / "brain", shape=SHAPE, block=(BLOCK,) * 3, levels=3, missing=((16, 0, 0),))
    image = folder / "brain.ome.zarr"
    assert blockfs("to-zarr", root, image, "--zarr-format", "2", "--silent").returncode == 0
    return {"pyramid": root, "image": image}


# -- SIGKILL trials --------------------------------------------------------------------------

def timed_run(args: list[str], dest: Path) -> float:
    """Run the tool to the end; return how long it wrote (from ``dest`` appearing to its exit)."""
    process = subprocess.Popen(args, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    while process.poll() is None and not os.path.lexists(dest):
        time.sleep(0.002)
    appeared = time.monotonic()
    _, err = process.communicate(timeout=300)
    assert process.returncode == 0, err.decode()
    return time.monotonic() - appeared


def kill_while_writing(args: list[str], dest: Path, delay: float) -> int | None:
    """Start the tool, SIGKILL it ``delay`` seconds after ``dest`` appears (at once if negative);
    return its exit status if it finished first, else None."""
    process = subprocess.Popen(args, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    if delay >= 0:
        while process.poll() is None and not os.path.lexists(dest):
            time.sleep(0.002)
        time.sleep(delay)
    if process.poll() is not None:
        return process.returncode
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)
    return None


KILLS = {  # name: (tool, the source it reads, arguments after SOURCE DEST, DEST's name, its state, its reader, trials)
    "from-zarr": ("from-zarr", "image", [], "v.blockfs", volume_state, read_volume, 10),
    "from-zarr --pyramid": ("from-zarr", "image", ["--pyramid"], "p", folder_state(FROM_MARKER), read_levels, 5),
    "to-zarr": ("to-zarr", "pyramid", [], "o.ome.zarr", folder_state(TO_MARKER), read_zarr, 10),
    "to-zarr v2": ("to-zarr", "pyramid", ["--zarr-format", "2", "--shard-blocks", "0"], "o.ome.zarr",
                   folder_state(TO_MARKER), read_zarr, 5),
}


@pytest.mark.timeout(900)
@pytest.mark.parametrize("name", list(KILLS))
def test_a_killed_run_leaves_an_incomplete_output_that_a_rerun_replaces(sources, tmp_path, name):
    tool, source_key, extra, dest_name, state, read, trials = KILLS[name]
    source = sources[source_key]
    before = tree_digest(source)
    reference = tmp_path / "reference" / dest_name
    reference.parent.mkdir()
    writing = timed_run(command(tool, source, reference, *extra, "--silent", "--workers", "2"), reference)
    expected = read(reference)
    rng = random.Random(f"{SEED}-{name}")
    delays = [-1.0] + [rng.uniform(0, writing) for _ in range(trials - 1)]  # one kill before anything is written
    seen = []
    for i, delay in enumerate(delays):
        dest = tmp_path / f"trial{i}" / dest_name
        dest.parent.mkdir()
        args = command(tool, source, dest, *extra, "--silent", "--workers", "2")
        finished = kill_while_writing(args, dest, delay)
        found = state(dest)
        seen.append(found)
        assert finished in (None, 0), f"{name}: it failed on its own"
        assert tree_digest(source) == before, f"{name}: the source changed"
        if found == "complete":  # it had written everything when the kill came (or it had exited)
            np.testing.assert_equal(read(dest), expected, err_msg=f"{name}: killed {delay:.2f}s in, an output "
                                                                   "that is not complete looks complete")
            continue
        assert finished is None
        rerun = blockfs(tool, source, dest, *extra, "--silent")  # no --overwrite
        assert rerun.returncode == 0, f"{name}: the re-run after a kill {delay:.2f}s in failed: {rerun.stderr}"
        assert state(dest) == "complete"
        np.testing.assert_equal(read(dest), expected)
    assert seen.count("incomplete") >= trials // 3, f"{name}: too few kills landed while it wrote: {seen}"
    print(f"{name}: {trials} kills, {writing:.2f}s of writing uninterrupted; outputs found {seen}")


# -- a damaged source ------------------------------------------------------------------------

def damage(path: Path, how: str) -> bytes:
    """Damage the file at ``path`` (``truncate`` it, or ``scramble`` its middle); return its old bytes."""
    data = path.read_bytes()
    if how == "truncate":
        path.write_bytes(data[:100])
    else:
        middle = len(data) // 2
        path.write_bytes(data[:middle - 64] + bytes(range(128)) + data[middle + 64:])
    return data


def zarr_source(folder: Path, kind: str) -> tuple[Path, np.ndarray, Path, str, str]:
    """A zarr array of 48 x 64 x 80 random voxels, written by zarr-python: (path, voxels, a chunk file to
    damage, how, what the error must say is wrong with it)."""
    data = np.random.default_rng(7).integers(0, 3000, (48, 64, 80), dtype=np.uint16)
    path = folder / f"{kind}.zarr"
    blosc = zarr.codecs.BloscCodec(cname="lz4", clevel=3, shuffle="shuffle")
    if kind == "blosc-v2":  # chunks of the block shape, passed through
        numcodecs = require("numcodecs")
        array = zarr.create_array(path, shape=data.shape, chunks=(16,) * 3, dtype=data.dtype, zarr_format=2,
                                  compressors=numcodecs.Blosc("lz4", 3, numcodecs.Blosc.SHUFFLE))
        chunk, how, wrong = path / "1.2.3", "truncate", "the blosc header says"
    elif kind == "blosc-shards":  # passed through shard by shard
        array = zarr.create_array(path, shape=data.shape, chunks=(16,) * 3, shards=(32,) * 3, dtype=data.dtype,
                                  compressors=blosc)
        chunk, how, wrong = path / "c" / "1" / "0" / "1", "truncate", "too short for a shard index"
    else:  # zstd: transcoded through zarr-python
        array = zarr.create_array(path, shape=data.shape, chunks=(16,) * 3, dtype=data.dtype, zarr_format=2)
        chunk, how, wrong = path / "1.2.3", "truncate", "zarr-python cannot decode it"
    array[...] = data
    return path, data, chunk, how, wrong


@pytest.mark.parametrize("kind", ["blosc-v2", "blosc-shards", "zstd-v2"])
def test_a_damaged_source_chunk_is_named_and_a_rerun_replaces_the_incomplete_volume(tmp_path, kind):
    source, data, chunk, how, wrong = zarr_source(tmp_path, kind)
    good = damage(chunk, how)
    dest = tmp_path / "v.blockfs"
    failed = blockfs("from-zarr", source, dest, "--silent", "--workers", "2")
    assert failed.returncode == 1
    message = failed.stderr.strip()
    assert message.startswith(f"blockfs from-zarr: {chunk}"), message
    assert wrong in message and "damaged" in message and "good copy of the source" in message, message
    assert "Compress the block with blosc first" not in message
    assert volume_state(dest) == "incomplete"
    chunk.write_bytes(good)
    rerun = blockfs("from-zarr", source, dest, "--silent")  # no --overwrite
    assert rerun.returncode == 0, rerun.stderr
    np.testing.assert_array_equal(read_volume(dest), data, strict=True)


def test_a_pyramid_import_that_fails_in_a_level_is_incomplete_and_a_rerun_replaces_it(sources, tmp_path):
    image = tmp_path / "image.zarr"
    shutil.copytree(sources["image"], image)
    good = damage(image / "1" / "2.3.4", "truncate")
    dest = tmp_path / "p"
    failed = blockfs("from-zarr", image, dest, "--pyramid", "--silent")
    assert failed.returncode == 1 and f"{image / '1' / '2.3.4'}: zarr chunk (2, 3, 4)" in failed.stderr
    assert (dest / FROM_MARKER).exists() and not (dest / "info").exists()
    assert volume_state(dest / "1_1_1" / "precomputed.blockfs") == "complete"  # level 0 was finished
    assert volume_state(dest / "2_2_2" / "precomputed.blockfs") == "incomplete"
    (image / "1" / "2.3.4").write_bytes(good)
    rerun = blockfs("from-zarr", image, dest, "--pyramid", "--silent")
    assert rerun.returncode == 0, rerun.stderr
    assert not (dest / FROM_MARKER).exists()
    for got, want in zip(read_levels(dest), read_levels(sources["pyramid"]), strict=True):
        np.testing.assert_array_equal(got, want, strict=True)


def test_an_interrupted_to_zarr_output_is_replaced_by_overwrite_and_by_a_plain_rerun(tmp_path):
    root, _ = make_pyramid(tmp_path / "brain")
    volume = root / "2_2_2" / "precomputed.blockfs"
    shard_file = volume.with_name("precomputed.blockfs.1")
    good = damage(shard_file, "scramble")  # a block of level 1 fails its CRC
    dest = tmp_path / "o.ome.zarr"
    failed = blockfs("to-zarr", root, dest, "--silent")
    assert failed.returncode == 1 and str(volume) in failed.stderr, failed.stderr
    assert folder_state(TO_MARKER)(dest) == "incomplete" and not (dest / "zarr.json").exists()
    assert not (dest / "1" / "zarr.json").exists()
    shard_file.write_bytes(good)
    for extra in (["--overwrite"], []):
        (dest / "zarr.json").unlink(missing_ok=True)
        (dest / TO_MARKER).write_text("{}")  # incomplete again: as a kill before the marker's removal leaves it
        rerun = blockfs("to-zarr", root, dest, "--silent", *extra)
        assert rerun.returncode == 0, rerun.stderr
        assert folder_state(TO_MARKER)(dest) == "complete"
        for got, want in zip(read_zarr(dest), read_levels(root), strict=True):
            np.testing.assert_array_equal(got, want, strict=True)


def test_a_folder_that_is_not_the_tools_output_is_never_touched(sources, tmp_path):
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "todo.txt").write_text("keep me")
    (notes / "0").mkdir()
    for tool, source in (("to-zarr", sources["pyramid"]), ("from-zarr", sources["image"])):
        extra = ["--pyramid"] if tool == "from-zarr" else []
        for flags in ([], ["--overwrite"]):
            result = blockfs(tool, source, notes, *extra, "--silent", *flags)
            assert result.returncode == 1
            assert ("already exists" if not flags else "is not what this tool writes") in result.stderr
    assert sorted(p.name for p in notes.iterdir()) == ["0", "todo.txt"]
    assert (notes / "todo.txt").read_text() == "keep me"
    empty = tmp_path / "empty" / "0"
    empty.mkdir(parents=True)  # nothing but folders: written into
    assert blockfs("to-zarr", sources["pyramid"], empty.parent, "--silent").returncode == 0


def test_a_second_run_while_the_first_writes_is_refused(sources, tmp_path):
    dest = tmp_path / "o.ome.zarr"
    dest.mkdir()
    (dest / "0").mkdir()
    (dest / "0" / "partial").write_bytes(b"x")
    with open(dest / TO_MARKER, "w") as held:  # as the running blockfs to-zarr holds it
        fcntl.flock(held, fcntl.LOCK_EX)
        result = blockfs("to-zarr", sources["pyramid"], dest, "--silent")
    assert result.returncode == 1 and "blockfs to-zarr is writing it now" in result.stderr, result.stderr
    assert (dest / "0" / "partial").exists()
    assert blockfs("to-zarr", sources["pyramid"], dest, "--silent").returncode == 0  # once it is gone


# -- a full disk -----------------------------------------------------------------------------

def small_volume(folder: Path) -> tuple[Path, np.ndarray]:
    """A volume of about 0.6 MiB (stored) to convert onto the 2 MiB disk."""
    data = np.random.default_rng(5).integers(0, 4000, (48, 64, 80), dtype=np.uint16)
    path = folder / "small.blockfs"
    volume = Directory(80, 64, 48, "uint16", str(path), n_filenames=1, x_block_size=16, y_block_size=16,
                       z_block_size=16, compression="lz4", compression_level=1)
    volume.create()
    volume[...] = data
    volume.close()
    return path, data


def ballast(folder: Path, leave: int) -> Path:
    """A file filling the disk of ``folder`` up to ``leave`` free bytes."""
    info = os.statvfs(folder)
    path = folder / "ballast"
    path.write_bytes(bytes(max(0, info.f_bavail * info.f_frsize - leave)))
    return path


@pytest.mark.parametrize("tiny_disk", ["tmpfs"], indirect=True)  # the whole output on the small disk
@pytest.mark.parametrize("tool", ["to-zarr", "from-zarr"])
def test_a_full_disk_names_the_file_and_a_rerun_after_freeing_space_completes(tiny_disk, tmp_path, tool):
    disk, _ = tiny_disk
    volume, data = small_volume(tmp_path)
    if tool == "to-zarr":
        source, dest, state = volume, disk / "out.zarr", folder_state(TO_MARKER)
    else:
        source = tmp_path / "small.zarr"
        assert blockfs("to-zarr", volume, source, "--zarr-format", "2", "--silent").returncode == 0
        dest, state = disk / "out.blockfs", volume_state
    filler = ballast(disk, 256 * 1024)
    failed = blockfs(tool, source, dest, "--silent")
    assert failed.returncode == 1
    named = re.fullmatch(rf"blockfs {tool}: (\S+): No space left on device\n", failed.stderr)
    assert named, failed.stderr
    assert named.group(1).startswith(str(dest)), failed.stderr
    assert state(dest) == "incomplete"
    filler.unlink()
    rerun = blockfs(tool, source, dest, "--silent")
    assert rerun.returncode == 0, rerun.stderr
    assert state(dest) == "complete"
    got = read_zarr(dest)[0] if tool == "to-zarr" else read_volume(dest)
    np.testing.assert_array_equal(got, data, strict=True)
