"""blockfs-mv, blockfs-cp and blockfs-rebase, run as installed commands on real volumes.

Every test compares every voxel of the result (with the library, warnings being errors, and with
the spec decoder, which opens shard names as stored) and checks that the directory file changed
only in its ``BlockFilenames`` value: the rest of the JSON text and every index byte are kept.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fixtures import case_ids, case_params, copy_volume, pad_header, require_fixtures
from helpers import console, in_process
from spec_decoder import read_volume
from volumes import make_volume as write_volume

from blockfs import Directory, VolumeExistsError
from blockfs import mv as mv_tool
from blockfs import rebase as rebase_tool
from blockfs.format import EXTENSION_KEYS
from blockfs.ops import transfer as transfer_ops
from blockfs.ops.relocate import relocate

pytestmark = pytest.mark.timeout(120)
params = pytest.mark.parametrize("case", case_params(), ids=case_ids())
METADATA = {"voxel_size": [1.8, 1.8, 2.0], "stain": "Lectin-647 \u00b5m", "provenance": {"steps": [1, 2.5, None]}}


# -- helpers -------------------------------------------------------------------------------------


run = console


TOOLS = {"blockfs-mv": mv_tool.main, "blockfs-cp": mv_tool.copy_main, "blockfs-rebase": rebase_tool.main}


def call(command: str, *args: Any) -> subprocess.CompletedProcess[str]:
    """Run a tool's ``main`` in this process, as a caller from Python would, capturing its output."""
    return in_process(TOOLS[command], *args)


def parts(path: Path) -> dict[str, Any]:
    """A directory file split up: JSON text without the BlockFilenames value, names, D, M, index bytes."""
    data = path.read_bytes()
    m, d = int.from_bytes(data[8:12], "little"), int.from_bytes(data[12:16], "little")
    text = data[16:16 + m].decode("utf-8")
    names = json.loads(text)["BlockFilenames"]
    start = text.index('"BlockFilenames": ') + len('"BlockFilenames": ')
    end = start + len(json.dumps(names))
    assert json.loads(text[start:end]) == names
    return {"rest": text[:start] + text[end:], "names": names, "m": m, "d": d, "index": data[d:],
            "json": json.loads(text)}


def assert_relocated(old: dict[str, Any], new_path: Path, names: list[str]) -> None:
    """``new_path`` is ``old`` with shard names ``names``: same other JSON text, same index bytes."""
    new = parts(new_path)
    assert new["names"] == names
    assert new["rest"] == old["rest"]
    assert new["d"] == 16 + new["m"]
    assert new["index"] == old["index"]
    assert new_path.stat().st_size == new["d"] + len(old["index"])


def assert_reads(path: Path, expected: np.ndarray, metadata: dict[str, Any] | None = None) -> None:
    """Every voxel reads as expected, through the library (no warning allowed) and the spec decoder."""
    with Directory.open(str(path)) as d:
        np.testing.assert_array_equal(d[...], expected)
        if metadata is not None:
            assert d.metadata == metadata
    volume, app = read_volume(path)
    np.testing.assert_array_equal(volume, expected)
    if metadata is not None:
        assert {k: v for k, v in app.items() if k not in EXTENSION_KEYS} == metadata


def make_volume(folder: Path, **kwargs: Any) -> tuple[Path, np.ndarray]:
    """A small random volume written in ``folder`` (created) under its absolute path."""
    folder.mkdir(parents=True, exist_ok=True)
    return write_volume(folder.resolve(), **kwargs)


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def fixture_case(case: dict[str, Any] | None, folder: Path) -> tuple[Path, np.ndarray]:
    source_folder = require_fixtures()
    assert case is not None
    return copy_volume(case, folder), np.load(source_folder / case["expected_array"])


def move_by_hand(path: Path, folder: Path) -> Path:
    """``mv`` every file of the volume into ``folder`` (the stored names go stale)."""
    folder.mkdir()
    names = [path.name] + [Path(n).name for n in parts(path)["names"]]
    for name in names:
        os.rename(path.parent / name, folder / name)
    return folder / path.name


# -- blockfs-cp and blockfs-mv on every fixture ----------------------------------------------------


@params
@pytest.mark.parametrize("command", ["blockfs-cp", "blockfs-mv"])
def test_fixture_relocated(case: dict[str, Any] | None, command: str, tmp_path: Path) -> None:
    source, expected = fixture_case(case, tmp_path / "src")
    assert case is not None
    before = snapshot(source.parent)
    old = parts(source)
    dest = tmp_path / "dest"
    result = run(command, source, dest, "--silent")
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    new_path = dest / source.name
    names = [str(dest / Path(n).name) for n in old["names"]]
    assert_relocated(old, new_path, names)
    assert all(os.path.isabs(n) for n in names)
    assert {p.name for p in dest.iterdir()} == {source.name, *case["block_files"]}
    assert_reads(new_path, expected, case["metadata"])
    with Directory.open(str(new_path)) as d:
        assert (d.n_offset_bits, d.n_size_bits) == (old["json"]["NOffsetBits"], old["json"]["NSizeBits"])
    if command == "blockfs-cp":
        assert snapshot(source.parent) == before
        assert_reads(source, expected, case["metadata"])
    else:
        assert list(source.parent.iterdir()) == []


def test_made_volume_keeps_metadata_and_bit_widths(tmp_path: Path) -> None:
    source, expected = make_volume(tmp_path / "a", shape=(40, 50, 60), block=(16, 16, 16), n_files=3,
                                   missing=((16, 0, 0), (48, 48, 32)), metadata=METADATA)
    old = parts(source)
    result = run("blockfs-cp", source, tmp_path / "b")
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""  # no bar when stderr is not a terminal (test_progress.py shows one on a terminal)
    assert_relocated(old, tmp_path / "b" / source.name, [str(tmp_path / "b" / Path(n).name) for n in old["names"]])
    assert_reads(tmp_path / "b" / source.name, expected, METADATA)
    result = run("blockfs-mv", tmp_path / "b" / source.name, tmp_path / "c", "--silent")
    assert result.returncode == 0, result.stderr
    assert not (tmp_path / "b" / source.name).exists()
    assert_relocated(old, tmp_path / "c" / source.name, [str(tmp_path / "c" / Path(n).name) for n in old["names"]])
    assert_reads(tmp_path / "c" / source.name, expected, METADATA)


def test_relative_paths_and_cwd(tmp_path: Path) -> None:
    """Relative arguments are taken against the working directory; the stored names are absolute."""
    make_volume(tmp_path / "work" / "in", name="v.blockfs")
    _, expected = make_volume(tmp_path / "unused", name="v.blockfs")
    result = run("blockfs-mv", "in/v.blockfs", "out", "--silent", cwd=tmp_path / "work")
    assert result.returncode == 0, result.stderr
    new = parts(tmp_path / "work" / "out" / "v.blockfs")
    assert new["names"] == [str(tmp_path / "work" / "out" / f"v.blockfs.{i}") for i in range(2)]
    assert_reads(tmp_path / "work" / "out" / "v.blockfs", expected)


def test_main_called_with_a_list(tmp_path: Path) -> None:
    source, expected = make_volume(tmp_path / "a")
    assert mv_tool.copy_main([str(source), str(tmp_path / "b"), "--silent"]) == 0
    assert mv_tool.main([str(tmp_path / "b" / source.name), str(tmp_path / "c"), "--silent"]) == 0
    assert rebase_tool.main([str(tmp_path / "c" / source.name), "--silent"]) == 0
    assert_reads(tmp_path / "c" / source.name, expected)
    assert_reads(source, expected)


def test_mv_of_a_volume_with_stale_names(tmp_path: Path) -> None:
    """A source found only by the fallback rule (stale absolute names) moves and reads afterwards."""
    source, expected = make_volume(tmp_path / "written_here", metadata=METADATA)
    old = parts(source)
    moved = move_by_hand(source, tmp_path / "moved_by_hand")
    result = run("blockfs-mv", moved, tmp_path / "final", "--silent")
    assert result.returncode == 0, result.stderr
    assert list(moved.parent.iterdir()) == []
    assert_relocated(old, tmp_path / "final" / source.name,
                     [str(tmp_path / "final" / Path(n).name) for n in old["names"]])
    assert_reads(tmp_path / "final" / source.name, expected, METADATA)


# -- failures: nothing changed ---------------------------------------------------------------------


@pytest.mark.parametrize("command, runner", [("blockfs-cp", run), ("blockfs-mv", call)], ids=["cp", "mv"])
def test_destination_holds_the_volume(command: str, runner: Callable[..., Any], tmp_path: Path) -> None:
    source, expected = make_volume(tmp_path / "a")
    make_volume(tmp_path / "b", seed=5)  # another volume of the same name at the destination
    before_source, before_dest = snapshot(tmp_path / "a"), snapshot(tmp_path / "b")
    result = runner(command, source, tmp_path / "b")
    assert result.returncode == 1
    assert result.stderr.startswith(f"{command}: {tmp_path / 'b' / source.name}: already exists")
    assert snapshot(tmp_path / "a") == before_source
    assert snapshot(tmp_path / "b") == before_dest
    assert_reads(source, expected)


@pytest.mark.parametrize("command, runner", [("blockfs-mv", run), ("blockfs-cp", call)], ids=["mv", "cp"])
def test_destination_holds_one_shard(command: str, runner: Callable[..., Any], tmp_path: Path) -> None:
    source, _ = make_volume(tmp_path / "a", n_files=3)
    (tmp_path / "b").mkdir()
    stray = tmp_path / "b" / f"{source.name}.2"
    stray.write_bytes(b"someone else's file")
    before = snapshot(tmp_path / "a")
    result = runner(command, source, tmp_path / "b", "--silent")
    assert result.returncode == 1
    assert result.stderr.startswith(f"{command}: {stray}: already exists")
    assert snapshot(tmp_path / "b") == {stray.name: b"someone else's file"}
    assert snapshot(tmp_path / "a") == before


def test_cp_into_its_own_folder(tmp_path: Path) -> None:
    source, _ = make_volume(tmp_path / "a")
    before = snapshot(tmp_path / "a")
    result = call("blockfs-cp", source, tmp_path / "a")
    assert result.returncode == 1
    assert result.stderr.startswith(f"blockfs-cp: {source}: the volume is already in")
    assert snapshot(tmp_path / "a") == before


@pytest.mark.parametrize("command, runner", [("blockfs-cp", run), ("blockfs-mv", call)], ids=["cp", "mv"])
def test_missing_source(command: str, runner: Callable[..., Any], tmp_path: Path) -> None:
    result = runner(command, tmp_path / "nothing.blockfs", tmp_path / "dest")
    assert result.returncode == 1
    assert result.stderr.startswith(f"{command}: {tmp_path / 'nothing.blockfs'}: No such file")
    assert not (tmp_path / "dest").exists()


def test_source_with_a_missing_shard(tmp_path: Path) -> None:
    source, _ = make_volume(tmp_path / "a")
    (tmp_path / "a" / f"{source.name}.1").unlink()
    before = snapshot(tmp_path / "a")
    result = call("blockfs-mv", source, tmp_path / "b")
    assert result.returncode == 1
    assert result.stderr.startswith(f"blockfs-mv: {source}: shard '{source}.1' is missing")
    assert snapshot(tmp_path / "a") == before
    assert not (tmp_path / "b").exists()


def test_not_a_volume(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("hello, this is not a volume at all")
    result = call("blockfs-cp", tmp_path / "notes.txt", tmp_path / "b")
    assert result.returncode == 1
    assert result.stderr.startswith(f"blockfs-cp: {tmp_path / 'notes.txt'}: ")
    assert "not a blockfs directory file" in result.stderr


@pytest.mark.parametrize("command, runner", [("blockfs-mv", run), ("blockfs-cp", call)], ids=["mv", "cp"])
def test_destination_parent_missing(command: str, runner: Callable[..., Any], tmp_path: Path) -> None:
    source, expected = make_volume(tmp_path / "a")
    before = snapshot(tmp_path / "a")
    dest = tmp_path / "no" / "such" / "folder"
    result = runner(command, source, dest)
    assert result.returncode == 1
    assert result.stderr.startswith(f"{command}: {dest}: its parent folder {dest.parent} does not exist")
    assert not (tmp_path / "no").exists()
    assert snapshot(tmp_path / "a") == before
    assert_reads(source, expected)


def test_destination_is_a_file(tmp_path: Path) -> None:
    source, _ = make_volume(tmp_path / "a")
    (tmp_path / "file").write_bytes(b"x")
    result = call("blockfs-mv", source, tmp_path / "file")
    assert result.returncode == 1
    assert result.stderr.startswith(f"blockfs-mv: {tmp_path / 'file'}: exists and is not a folder")
    assert (tmp_path / "file").read_bytes() == b"x"


@pytest.mark.parametrize("move", [True, False])
def test_failure_half_way_leaves_the_source(move: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Writing the new directory file fails after the shards were placed: the source stays whole."""
    source, expected = make_volume(tmp_path / "a", n_files=3)
    before = snapshot(tmp_path / "a")

    def fail(*args: Any, **kwargs: Any) -> bool:
        raise OSError(28, "No space left on device", str(tmp_path / "b" / source.name))

    monkeypatch.setattr(transfer_ops, "write_index", fail)
    with pytest.raises(OSError, match="No space left"):
        transfer_ops.transfer(str(source), str(tmp_path / "b"), move=move)
    assert snapshot(tmp_path / "a") == before
    assert not (tmp_path / "b").exists()  # the folder it created, and what it put there, are gone
    assert_reads(source, expected)


def test_mv_without_hard_links_or_copy_file_range(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Across file systems (no hard links) and without copy_file_range, files are copied by hand."""
    source, expected = make_volume(tmp_path / "a", n_files=3, metadata=METADATA)
    old = parts(source)

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(os, "link", refuse)
    monkeypatch.setattr(os, "copy_file_range", refuse, raising=False)
    monkeypatch.setattr(transfer_ops, "COPY_CHUNK", 4096)
    result = call("blockfs-mv", source, tmp_path / "b")
    assert result.returncode == 0, result.stderr
    assert list((tmp_path / "a").iterdir()) == []
    assert_relocated(old, tmp_path / "b" / source.name, [str(tmp_path / "b" / Path(n).name) for n in old["names"]])
    assert_reads(tmp_path / "b" / source.name, expected, METADATA)


@pytest.mark.parametrize("command, runner", [("blockfs-mv", run), ("blockfs-cp", call), ("blockfs-rebase", call)],
                         ids=["mv", "cp", "rebase"])
def test_help_has_an_example(command: str, runner: Callable[..., Any]) -> None:
    result = runner(command, "--help")
    assert result.returncode == 0
    assert result.stdout.startswith(f"usage: {command} ")
    assert "example:" in result.stdout and f"{command} /" in result.stdout


# -- blockfs-rebase ----------------------------------------------------------------------------------


@pytest.mark.parametrize("folders", [("a", "moved_to_a_folder_whose_name_is_much_longer_than_before"),
                                     ("the_original_folder_had_a_very_long_name_indeed", "b")],
                         ids=["names-grow", "names-shrink"])
def test_rebase_after_a_move_by_hand(folders: tuple[str, str], tmp_path: Path) -> None:
    """Absolute names written in one folder, files renamed to another: rebase, then no warning."""
    source, expected = make_volume(tmp_path / folders[0], shape=(64, 80, 96), block=(8, 16, 16), n_files=4,
                                   missing=((80, 64, 56),), metadata=METADATA)
    old = parts(source)
    assert all(os.path.isabs(n) for n in old["names"])
    moved = move_by_hand(source, tmp_path / folders[1])
    with pytest.warns(UserWarning, match="blockfs-rebase"), Directory.open(str(moved)) as d:
        np.testing.assert_array_equal(d[...], expected)
    result = run("blockfs-rebase", moved, "--block-size", 7)
    assert result.returncode == 0, result.stderr
    new_names = [str(moved.parent / Path(n).name) for n in old["names"]]
    assert_relocated(old, moved, new_names)
    assert parts(moved)["m"] != old["m"]
    assert_reads(moved, expected, METADATA)

    data, mtime = moved.read_bytes(), moved.stat().st_mtime_ns
    result = call("blockfs-rebase", moved, "--silent")
    assert result.returncode == 0, result.stderr
    assert (result.stdout, result.stderr) == ("", "")
    assert moved.read_bytes() == data
    assert moved.stat().st_mtime_ns == mtime


def test_rebase_short_index_and_padded_header(tmp_path: Path) -> None:
    """An index shorter than the grid, and bytes between the JSON and D, carry over exactly."""
    require_fixtures()
    case = next(c for c in case_params() if c and c["missing_blocks_xyz"])
    source, expected = fixture_case(case, tmp_path / "a")
    pad_header(source, 37)
    old = parts(source)
    assert old["d"] == 16 + old["m"] + 37
    moved = move_by_hand(source, tmp_path / "b")
    result = run("blockfs-rebase", moved)
    assert result.returncode == 0, result.stderr
    assert f"{moved}: shard names now point beside it" in result.stdout
    assert_relocated(old, moved, [str(tmp_path / "b" / n) for n in case["block_files"]])
    assert_reads(moved, expected, case["metadata"])


def test_rebase_of_relative_names(tmp_path: Path) -> None:
    """Relative names (the fixtures') become absolute; a second run changes nothing."""
    require_fixtures()
    case = next(c for c in case_params() if c and c["metadata"])
    source, expected = fixture_case(case, tmp_path / "a")
    old = parts(source)
    result = run("blockfs-rebase", source, "--silent")
    assert result.returncode == 0, result.stderr
    assert_relocated(old, source, [str(source.parent / n) for n in case["block_files"]])
    assert_reads(source, expected, case["metadata"])
    data, mtime = source.read_bytes(), source.stat().st_mtime_ns
    assert call("blockfs-rebase", source).returncode == 0
    assert source.read_bytes() == data and source.stat().st_mtime_ns == mtime


def test_rebase_after_cp_changes_nothing(tmp_path: Path) -> None:
    source, _ = make_volume(tmp_path / "a")
    assert call("blockfs-cp", source, tmp_path / "b", "--silent").returncode == 0
    copy = tmp_path / "b" / source.name
    data, mtime = copy.read_bytes(), copy.stat().st_mtime_ns
    result = call("blockfs-rebase", copy)
    assert result.returncode == 0, result.stderr
    assert "unchanged" in result.stdout
    assert copy.read_bytes() == data and copy.stat().st_mtime_ns == mtime


def test_rebase_after_cp_r(tmp_path: Path) -> None:
    """A copy made with ``cp -r`` names the original's shards, which exist: rebase points it at its own."""
    source, expected = make_volume(tmp_path / "a")
    shutil.copytree(tmp_path / "a", tmp_path / "copy")
    copy = tmp_path / "copy" / source.name
    assert parts(copy)["names"] == [f"{source}.{i}" for i in range(2)]
    result = call("blockfs-rebase", copy, "--silent")
    assert result.returncode == 0, result.stderr
    assert parts(copy)["names"] == [f"{copy}.{i}" for i in range(2)]
    shutil.rmtree(tmp_path / "a")
    assert_reads(copy, expected)


def test_rebase_missing_shard(tmp_path: Path) -> None:
    source, _ = make_volume(tmp_path / "a", n_files=3)
    moved = move_by_hand(source, tmp_path / "b")
    (tmp_path / "b" / f"{source.name}.1").unlink()
    before = snapshot(tmp_path / "b")
    result = call("blockfs-rebase", moved)
    assert result.returncode == 1
    assert result.stderr.startswith(f"blockfs-rebase: {moved}: 1 of 3 shard files are not beside the directory "
                                    f"file: {tmp_path / 'b' / source.name}.1 (stored as '{source}.1')")
    assert snapshot(tmp_path / "b") == before


def test_rebase_bad_arguments(tmp_path: Path) -> None:
    result = call("blockfs-rebase", tmp_path / "absent.blockfs")
    assert result.returncode == 1
    assert result.stderr.startswith(f"blockfs-rebase: {tmp_path / 'absent.blockfs'}: No such file")
    result = call("blockfs-rebase", "--block-size", "0", tmp_path / "absent.blockfs")
    assert result.returncode == 2
    assert "--block-size: must be a positive number of bytes" in result.stderr


# -- the relocate library ------------------------------------------------------------------------------


def test_relocate_keeps_unusual_json_text(tmp_path: Path) -> None:
    """Indentation, key order, number spelling and raw UTF-8 outside BlockFilenames survive."""
    source, expected = make_volume(tmp_path / "a", metadata=METADATA)
    data = source.read_bytes()
    m, d = int.from_bytes(data[8:12], "little"), int.from_bytes(data[12:16], "little")
    doc = json.loads(data[16:16 + m])
    text = "{\n  " + ",\n  ".join(f"{json.dumps(k)} :\t{json.dumps(v, ensure_ascii=False)}"
                                  for k, v in reversed(doc.items())) + "\n}"
    text = text.replace('"voxel_size" :\t[1.8, 1.8, 2.0]', '"voxel_size" :\t[1.80, 18e-1, 2.0E0]')
    raw = text.encode("utf-8")
    source.write_bytes(data[:8] + len(raw).to_bytes(4, "little") + (16 + len(raw)).to_bytes(4, "little")
                       + raw + data[d:])
    names = [str(tmp_path / "elsewhere" / f"shard-{i}") for i in range(2)]
    assert relocate(str(source), names, str(tmp_path / "copy.blockfs"), buffer_size=3)
    new = (tmp_path / "copy.blockfs").read_bytes()
    new_m = int.from_bytes(new[8:12], "little")
    start = text.index('"BlockFilenames" :\t') + len('"BlockFilenames" :\t')
    end = start + len(json.dumps(doc["BlockFilenames"]))
    assert new[16:16 + new_m].decode("utf-8") == text[:start] + json.dumps(names) + text[end:]
    assert new[16 + new_m:] == data[d:]
    for i in range(2):
        (tmp_path / "elsewhere").mkdir(exist_ok=True)
        os.link(f"{source}.{i}", names[i])
    assert_reads(tmp_path / "copy.blockfs", expected, METADATA)


def test_relocate_exclusive_never_replaces(tmp_path: Path) -> None:
    source, _ = make_volume(tmp_path / "a")
    target = tmp_path / "taken.blockfs"
    target.write_bytes(b"precious")
    with pytest.raises(VolumeExistsError, match="already exists"):
        relocate(str(source), ["x.0", "x.1"], str(target), exclusive=True)
    assert target.read_bytes() == b"precious"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "taken.blockfs"]  # no temporary left


def test_relocate_keeps_the_mode(tmp_path: Path) -> None:
    source, _ = make_volume(tmp_path / "a")
    source.chmod(0o640)
    assert relocate(str(source), ["x.0", "x.1"])
    assert source.stat().st_mode & 0o777 == 0o640
    assert parts(source)["names"] == ["x.0", "x.1"]
    assert not relocate(str(source), ["x.0", "x.1"])
