"""The error contract: every blockfs error is a BlockfsError exported from ``blockfs``, and every
console tool reports what a user can cause (a BlockfsError or an OSError) as one line
``prog: file: reason`` with exit status 1, while anything else (a bug) propagates as a traceback.

The tools run in-process through their ``main(argv)``; the internal error is a KeyError raised by
the first library call a tool makes, which a tool must not mistake for a user error.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any, NamedTuple

import pytest

import blockfs
from blockfs import errors
from blockfs.cli import SUBCOMMANDS
from blockfs.cli import main as blockfs_main
from blockfs.parallel.mpi import SOLO


def test_every_error_and_warning_class_is_exported_and_a_blockfs_one() -> None:
    classes = {name: cls for name, cls in vars(errors).items()
               if inspect.isclass(cls) and issubclass(cls, BaseException) and cls.__module__ == errors.__name__}
    assert "BlockfsError" in classes and len(classes) > 10
    for name, cls in classes.items():
        assert issubclass(cls, blockfs.BlockfsWarning if issubclass(cls, Warning) else blockfs.BlockfsError), name
        assert name in blockfs.__all__ and getattr(blockfs, name) is cls, f"{name} is not exported from blockfs"


class Tool(NamedTuple):
    """A console tool: how to start it with a user error, and the call to break for an internal error."""

    argv: list[str]  # ``blockfs`` subcommand and arguments; {missing} and {tmp} are filled in
    prog: str  # what it calls itself run as ``blockfs <subcommand>``
    first_call: str  # module:attribute that the tool calls first with these arguments
    internal_argv: list[str] | None = None  # where ``argv`` fails before ``first_call``


TOOLS = {
    "info": Tool(["info", "{missing}"], "blockfs info", "blockfs.cli.info:describe_volume"),
    "check": Tool(["check", "--silent", "{missing}"], "blockfs check", "blockfs.cli.check:check_volume"),
    "repair": Tool(["repair", "--silent", "{missing}"], "blockfs repair", "blockfs.cli.repair:repair_volume"),
    "mv": Tool(["mv", "--silent", "{missing}", "{tmp}"], "blockfs mv", "blockfs.cli.mv:transfer"),
    "cp": Tool(["cp", "--silent", "{missing}", "{tmp}"], "blockfs cp", "blockfs.cli.mv:transfer"),
    "rebase": Tool(["rebase", "--silent", "{missing}"], "blockfs rebase", "blockfs.cli.rebase:rebase"),
    "tif": Tool(["tif", "--silent", "--input", "{missing}", "--output-pattern", "{tmp}/z%04d.tif"], "blockfs tif",
                "blockfs.cli.tif:_export"),
    "jp2k": Tool(["jp2k", "--silent", "--input", "{missing}", "--output-pattern", "{tmp}/z%04d.jp2"], "blockfs jp2k",
                 "blockfs.cli.jp2k:_export"),
    "hdf5": Tool(["hdf5", "--silent", "{missing}", "{tmp}/out.h5", "/raw"], "blockfs hdf5",
                 "blockfs.cli.hdf5:export"),
    "from-tif": Tool(["from-tif", "--silent", "--input", "{tmp}/planes/*.tif", "--output", "{tmp}/out.blockfs"],
                     "blockfs from-tif",
                     "blockfs.cli.from_tif:import_stack"),
    "pyramid": Tool(["pyramid", "--silent", "{missing}", "{tmp}/pyramid"], "blockfs pyramid",
                    "blockfs.cli.pyramid:build_pyramid"),
    "to-zarr": Tool(["to-zarr", "--silent", "{missing}", "{tmp}/out.zarr"], "blockfs to-zarr",
                    "blockfs.cli.to_zarr:load"),
    "from-zarr": Tool(["from-zarr", "--silent", "{missing}", "{tmp}/out.blockfs"], "blockfs from-zarr",
                      "blockfs.cli.from_zarr:load"),
    "serve": Tool(["serve", "--port", "0", "{missing}"], "blockfs serve", "blockfs.serve.server:start"),
    "view": Tool(["view", "--no-browser", "--port", "0", "{missing}"], "blockfs view", "blockfs.serve.viewer:view"),
    "napari": Tool(["napari", "{missing}"], "blockfs napari", "blockfs.cli.napari:volume_argument"),
    "demo": Tool(["demo", "--silent", "--size-gib", "0.01", "--output", "{missing}/demo"], "blockfs demo",
                 "blockfs.demo:run", ["demo", "--silent", "--size-gib", "0.01", "--output", "{tmp}/demo"]),
}


def test_every_subcommand_is_covered() -> None:
    assert set(TOOLS) == set(SUBCOMMANDS)


def argv_of(argv: list[str], tmp_path: Path) -> list[str]:
    return [a.format(missing=tmp_path / "missing.blockfs", tmp=tmp_path) for a in argv]


@pytest.fixture(autouse=True)
def no_mpi(monkeypatch: pytest.MonkeyPatch) -> None:
    """blockfs2hdf5 asks mpi4py for its ranks first; in this process it works alone (MPI is tested in
    test_tool_hdf5.py), so that MPI is never initialised in pytest's process."""
    monkeypatch.setattr("blockfs.cli.hdf5.find_ranks", lambda why_serial=None: (SOLO, None))


@pytest.mark.parametrize("name", sorted(TOOLS))
def test_a_user_error_is_one_line_and_exit_status_1(name: str, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    tool = TOOLS[name]
    status = blockfs_main(argv_of(tool.argv, tmp_path))
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert status == 1, err
    assert len(lines) == 1 and lines[0].startswith(f"{tool.prog}: "), err
    assert str(tmp_path) in lines[0], "the message must name the file"


class Bug(KeyError):
    """A programming error inside blockfs, as a tool meets it."""


@pytest.mark.parametrize("name", sorted(TOOLS))
def test_an_internal_error_propagates(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tool = TOOLS[name]

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise Bug("a bug, not a user error")

    monkeypatch.setattr(tool.first_call.replace(":", "."), broken)
    (tmp_path / "planes").mkdir()
    with pytest.raises(Bug):
        blockfs_main(argv_of(tool.internal_argv or tool.argv, tmp_path))
