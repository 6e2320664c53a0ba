"""What the console tools print, run as a user types them: warnings as one line, a missing optional
package as an install hint, the name that was typed, a folder given for a volume, voxel sizes kept
from the TIFF import through every conversion, and ``blockfs --version``."""

from __future__ import annotations

import argparse
import importlib
import json
import os
import subprocess
import sys
import threading
from importlib.metadata import entry_points
from pathlib import Path

import numpy as np
import pytest
import tifffile

from helpers import console
from volumes import make_volume

import blockfs
from blockfs import Directory
from blockfs.cli import SUBCOMMANDS
from blockfs.cli._support import number, voxel_size

pytestmark = pytest.mark.timeout(180)

#: Installed before a tool starts (as ``sitecustomize``): the modules named in BLOCKED_MODULES cannot be
#: imported, exactly as when they are not installed.
BLOCKER = '''\
import importlib.abc, os, sys

BLOCKED = set(filter(None, os.environ.get("BLOCKED_MODULES", "").split(",")))


class Blocker(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None


sys.meta_path.insert(0, Blocker())
'''


def one_line(result: subprocess.CompletedProcess[str]) -> str:
    """The only line of the tool's stderr, which shows no Python source (no .py path, no warnings.warn line)."""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert ".py" not in result.stderr and "Warning:" not in result.stderr, result.stderr
    return lines[0]


def small_volume(folder: Path, name: str = "volume.blockfs", shape: tuple[int, int, int] = (8, 8, 8)) -> Path:
    """A volume of one shard written into ``folder`` (created if missing); its index file."""
    folder.mkdir(parents=True, exist_ok=True)
    return make_volume(folder, shape=shape, block=(8, 8, 8), n_files=1, name=name)[0]


@pytest.fixture
def moved(tmp_path: Path) -> Path:
    """A volume moved by hand to another folder: its shards are found by their base names, with a warning."""
    small_volume(tmp_path / "first", shape=(20, 30, 40))
    (tmp_path / "first").rename(tmp_path / "moved")
    return tmp_path / "moved" / "volume.blockfs"


# 3. warnings -------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("command", [["blockfs2tif"], ["blockfs", "tif"]])
def test_a_warning_is_one_line_naming_the_tool_and_the_file(moved: Path, tmp_path: Path, command: list[str]) -> None:
    result = console(*command, "--silent", "--input", "moved/volume.blockfs", "--output-pattern", "out/z%d.tif",
                     cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    line = one_line(result)
    assert line.startswith(f"{' '.join(command)}: warning: moved/volume.blockfs: shard "), line
    assert "not found; using" in line and "blockfs-rebase" in line
    assert len(list((tmp_path / "out").iterdir())) == 20


def test_an_incomplete_volume_warns_in_one_line(tmp_path: Path) -> None:
    Directory(8, 8, 8, np.uint8, str(tmp_path / "unfinished.blockfs"), n_filenames=1).create(incomplete="x")
    result = console("blockfs", "tif", "--silent", "--input", "unfinished.blockfs", "--output-pattern", "z%d.tif",
                     cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert one_line(result).startswith("blockfs tif: warning: unfinished.blockfs: incomplete: x began writing it")


#: A tool whose work warns in a worker thread, as a volume opened by a worker does.
THREADED = """\
import argparse, sys, threading, warnings
from blockfs import BlockfsWarning
from blockfs.cli._support import run_tool

def body(args):
    worker = threading.Thread(target=warnings.warn, args=(BlockfsWarning("/data/a.blockfs: a worker's warning"),))
    worker.start()
    worker.join()

sys.exit(run_tool(argparse.ArgumentParser(prog="blockfs-worker"), body, []))
"""


def test_a_warning_in_a_worker_thread_is_one_line_too(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-c", THREADED], capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert result.returncode == 0
    assert one_line(result) == "blockfs-worker: warning: /data/a.blockfs: a worker's warning"


def test_the_library_still_raises_blockfs_warnings(moved: Path) -> None:
    with pytest.warns(blockfs.ShardLocationWarning, match="not found; using"), Directory.open(str(moved)):
        pass


# 4. missing optional packages --------------------------------------------------------------------------------------

@pytest.mark.parametrize("module, extra, command", [
    ("h5py", "tools", ["blockfs2hdf", "{volume}", "out.h5", "/raw"]),
    ("h5py", "tools", ["blockfs", "hdf5", "{volume}", "out.h5", "/raw"]),
    ("glymur", "", ["blockfs2jp2k", "--input", "{volume}", "--output-pattern", "z%d.jp2"]),
    ("zarr", "interop", ["blockfs", "from-zarr", "in.zarr", "out.blockfs"]),
    ("aiohttp", "serve", ["blockfs", "serve", "--port", "0", "{volume}"]),
    ("neuroglancer", "serve", ["blockfs", "view", "--no-browser", "--port", "0", "{volume}"]),
])
def test_a_missing_optional_package_says_what_to_install(tmp_path: Path, module: str, extra: str,
                                                         command: list[str]) -> None:
    volume = small_volume(tmp_path / "data")
    (tmp_path / "blocker").mkdir()
    (tmp_path / "blocker" / "sitecustomize.py").write_text(BLOCKER)
    args = [a.format(volume=volume) for a in command]
    result = console(*args, cwd=tmp_path, timeout=60,
                     env={"PYTHONPATH": os.pathsep.join(filter(None, [str(tmp_path / "blocker"),
                                                                      os.environ.get("PYTHONPATH")])),
                          "BLOCKED_MODULES": module})
    assert result.returncode == 1, result.stderr
    line = one_line(result)
    prog = " ".join(command[:2]) if command[0] == "blockfs" else command[0]
    assert line.startswith(f"{prog}: {module}") and "not installed" in line, line
    assert f"pip install 'blockfs[{extra}]'" in line if extra else f"pip install {module}" in line, line


# 7. voxel sizes and --version -------------------------------------------------------------------------------------

def test_version(tmp_path: Path) -> None:
    for flag in ("--version", "-V"):
        result = console("blockfs", flag, cwd=tmp_path)
        assert (result.returncode, result.stdout, result.stderr) == (0, f"blockfs {blockfs.__version__}\n", "")


def test_the_voxel_size_of_a_tiff_import_is_kept_through_every_conversion(tmp_path: Path) -> None:
    for z in range(6):
        tifffile.imwrite(tmp_path / f"img_{z}.tif", np.full((20, 24), z, np.uint16))
    made = console("tif2blockfs", "--silent", "--input", "img_*.tif", "--output", "brain.blockfs", "--block-size",
                   "8", "--voxel-size", "0.5,0.5,2", "--pyramid", "2", cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    with Directory.open(str(tmp_path / "brain.blockfs")) as volume:
        assert volume.metadata["voxel_size_um"] == [0.5, 0.5, 2.0]
    info = json.loads((tmp_path / "brain.pyramid" / "info").read_text())
    assert [s["resolution"] for s in info["scales"]] == [[500, 500, 2000], [1000, 1000, 4000]]

    for command in (["to-zarr", "--silent", "brain.pyramid", "brain.ome.zarr"],
                    ["from-zarr", "--silent", "brain.ome.zarr", "again.blockfs"],
                    ["cp", "--silent", "again.blockfs", "copy"]):
        result = console("blockfs", *command, cwd=tmp_path)
        assert result.returncode == 0, result.stderr
    scales = [d["coordinateTransformations"][0]["scale"]
              for d in json.loads((tmp_path / "brain.ome.zarr" / "zarr.json").read_text())
              ["attributes"]["ome"]["multiscales"][0]["datasets"]]
    assert scales == [[2.0, 0.5, 0.5], [4.0, 1.0, 1.0]]  # z, y, x
    for path in ("again.blockfs", "copy/again.blockfs"):
        with Directory.open(str(tmp_path / path)) as volume:
            assert volume.metadata["voxel_size_um"] == [0.5, 0.5, 2.0], path


def test_a_bad_voxel_size_is_refused(tmp_path: Path) -> None:
    result = console("tif2blockfs", "--input", "img_*.tif", "--output", "x.blockfs", "--voxel-size", "1,0,1",
                     cwd=tmp_path)
    assert result.returncode == 2 and "expected three positive numbers X,Y,Z in micrometres" in result.stderr
    assert "'1,0,1'" in result.stderr


# 8. the name typed, and folders given for a volume ----------------------------------------------------------------

@pytest.mark.parametrize("command, prog", [(["blockfs", "mv"], "blockfs mv"), (["blockfs-mv"], "blockfs-mv"),
                                           (["blockfs", "from-tif"], "blockfs from-tif"),
                                           (["blockfs2hdf"], "blockfs2hdf"), (["blockfs2hdf5"], "blockfs2hdf5")])
def test_a_tool_calls_itself_what_was_typed(tmp_path: Path, command: list[str], prog: str) -> None:
    assert console(*command, "--help", cwd=tmp_path).stdout.startswith(f"usage: {prog} [-h]")
    failed = console(*command, "-x", cwd=tmp_path)
    assert failed.returncode == 2 and f"\n{prog}: error: " in failed.stderr, failed.stderr


def console_scripts() -> dict[str, list[str]]:
    """``module:function`` -> the installed console scripts (pyproject.toml's) that run it."""
    scripts: dict[str, list[str]] = {}
    for script in entry_points(group="console_scripts"):
        scripts.setdefault(script.value, []).append(script.name)
    return scripts


@pytest.mark.parametrize("name", sorted(SUBCOMMANDS))
def test_called_from_python_a_tool_calls_itself_by_its_own_script_else_blockfs_name(name: str) -> None:
    """The rule of every tool's name (``prog``), in messages and usage: run through the blockfs command it is
    ``blockfs NAME``, run as a console script that script's name (above); called as ``main(argv)`` or by
    ``python -m`` its own console script's, or ``blockfs NAME`` for a tool that has none."""
    module, function, _ = SUBCOMMANDS[name]
    tool = importlib.import_module(module)
    parser = tool.build_parser(function == "main") if module == "blockfs.cli.mv" else tool.build_parser()
    assert callable(getattr(tool, function))
    assert parser.prog in console_scripts().get(f"{module}:{function}", [f"blockfs {name}"])


@pytest.mark.parametrize("kind, expected, low, high, above, text, value", [
    (int, "a count", 1, None, False, "3", 3), (int, "a level", 0, 9, False, "9", 9),
    (float, "a size", 0, None, True, "0.5", 0.5), (float, "a range", 0, None, False, "0", 0.0)])
def test_a_number_in_its_range_is_taken(kind: type, expected: str, low: float, high: float | None, above: bool,
                                        text: str, value: float) -> None:
    parsed = number(kind, expected, low, high, above)(text)
    assert parsed == value and type(parsed) is kind


@pytest.mark.parametrize("kind, low, high, above, text", [
    (int, 1, None, False, "0"), (int, 0, 9, False, "10"), (int, 0, None, False, "1.5"), (float, 0, None, True, "0"),
    (float, 0, None, False, "inf"), (float, 0, None, False, "nan"), (float, 0, None, False, "x")])
def test_a_number_out_of_its_range_says_what_is_expected_and_what_was_given(kind: type, low: float,
                                                                             high: float | None, above: bool,
                                                                             text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError) as refused:
        number(kind, "expected a thing", low, high, above)(text)
    assert str(refused.value) == f"expected a thing; got {text!r}"


def test_a_list_of_numbers_is_refused_whole() -> None:
    assert voxel_size("1.8,1.8,2") == (1.8, 1.8, 2.0)
    for text in ("1,2", "1,2,3,4", "1,0,2", "1,x,2"):
        with pytest.raises(argparse.ArgumentTypeError, match=f"micrometres .*; got {text!r}$"):
            voxel_size(text)


def test_an_hdf5_error_names_the_command_typed(tmp_path: Path) -> None:
    result = console("blockfs2hdf", "missing.blockfs", "out.h5", "/raw", cwd=tmp_path)
    assert result.returncode == 1 and one_line(result).startswith("blockfs2hdf: missing.blockfs: "), result.stderr


def test_a_folder_holding_one_volume_stands_for_it(tmp_path: Path) -> None:
    small_volume(tmp_path / "brain")
    checked = console("blockfs", "check", "--silent", "brain", cwd=tmp_path)
    assert checked.returncode == 0 and checked.stdout.splitlines()[-1] == "brain/volume.blockfs: healthy"
    described = console("blockfs", "info", "--json", "brain", cwd=tmp_path)
    assert described.returncode == 0
    assert json.loads(described.stdout)["path"] == str(tmp_path / "brain" / "volume.blockfs")


@pytest.mark.parametrize("command", [["check", "--silent"], ["repair", "--silent"], ["info"], ["rebase", "--silent"],
                                     ["view", "--no-browser", "--port", "0"], ["serve", "--port", "0"]])
def test_a_folder_of_several_volumes_is_named_with_what_it_holds(tmp_path: Path, command: list[str]) -> None:
    small_volume(tmp_path / "data", "a.blockfs")
    small_volume(tmp_path / "data", "b.blockfs")
    result = console("blockfs", *command, "data", cwd=tmp_path)
    assert result.returncode == 1, result.stderr
    assert one_line(result) == (f"blockfs {command[0]}: data: a folder holding 2 volumes (a.blockfs, b.blockfs); "
                                "give one index file, e.g. data/a.blockfs")


def test_a_pyramid_folder_given_for_a_volume_names_its_level(tmp_path: Path) -> None:
    small_volume(tmp_path, shape=(16, 16, 16))
    assert console("blockfs", "pyramid", "--silent", "volume.blockfs", "pyr", cwd=tmp_path).returncode == 0
    result = console("blockfs", "check", "--silent", "pyr", cwd=tmp_path)
    assert result.returncode == 1
    assert one_line(result) == ("blockfs check: pyr: a pyramid folder, not a volume; give one level's index file, "
                                "e.g. pyr/1_1_1/precomputed.blockfs")
    assert console("blockfs", "info", "pyr", cwd=tmp_path).returncode == 0  # info takes pyramids


def serving(tmp_path: Path, *args: str) -> tuple[str, str]:
    """Start ``blockfs serve ARGS`` in ``tmp_path``; once it prints its first line, stop it: (that line, stderr)."""
    server = subprocess.Popen([str(Path(sys.executable).with_name("blockfs")), "serve", "--port", "0", *args],
                              cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    timer = threading.Timer(60, server.kill)
    timer.start()
    try:
        first = server.stdout.readline()
    finally:
        timer.cancel()
        server.terminate()
        _, err = server.communicate(timeout=30)
    return first, err


def test_serve_names_a_volume_as_its_help_says(tmp_path: Path) -> None:
    pytest.importorskip("aiohttp")
    small_volume(tmp_path, "sample.blockfs")
    helped = console("blockfs", "serve", "--help", cwd=tmp_path).stdout
    assert "/data/brain.blockfs: brain" in helped and "without its extension" in " ".join(helped.split())
    first, _ = serving(tmp_path, "sample.blockfs")
    assert first.startswith("sample: precomputed://http://127.0.0.1:") and "/sample " in first, first


def test_serving_to_others_warns_in_one_line(tmp_path: Path) -> None:
    pytest.importorskip("aiohttp")
    small_volume(tmp_path, "sample.blockfs")
    first, err = serving(tmp_path, "--bind", "0.0.0.0", "sample.blockfs")
    assert first.startswith("sample: precomputed://"), (first, err)
    assert err.splitlines()[0] == ("blockfs serve: warning: serving on 0.0.0.0: every volume served is readable by "
                                   "anyone who can reach this port and has its URL; bind 127.0.0.1 unless that is "
                                   "what you want."), err
    assert ".py" not in err, err
