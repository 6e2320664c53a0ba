"""The README's examples run as printed (``/data/`` standing for a scratch folder) in a shell where the
clone's environment is active, as the README tells a newcomer, and do what they say."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from helpers import require, unavailable

from blockfs import Directory
from blockfs.sample import microscopy_block

README = Path(__file__).resolve().parent.parent / "README.md"


def activated_env() -> dict[str, str]:
    """A login shell's environment after ``. .venv/bin/activate``: no Open MPI settings, no display."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("OMPI_") and k not in ("PYTHONPATH", "DISPLAY", "WAYLAND_DISPLAY")}
    bin_dir = os.path.dirname(os.path.abspath(sys.executable))
    env["PATH"] = os.pathsep.join([bin_dir, env.get("PATH", "/usr/bin:/bin")])
    env["VIRTUAL_ENV"] = os.path.dirname(bin_dir)
    return env


def readme_lines(pattern: str) -> list[str]:
    """The README's lines matching ``pattern`` (a regular expression), stripped."""
    lines = [line.strip() for line in README.read_text().splitlines() if re.search(pattern, line)]
    assert lines, f"README.md has no line matching {pattern!r}"
    return lines


def as_typed(line: str, data: Path) -> list[str]:
    """A README command line as argv, with ``/data/`` replaced by ``data``."""
    return shlex.split(line.replace("/data/", f"{data}/"), comments=True)


def write_sample(path: Path, shape: tuple[int, int, int] = (64, 256, 256), scale: int = 1) -> np.ndarray:
    """A volume of ``blockfs.sample`` data (times ``scale``) at ``path``; return its voxels."""
    data = microscopy_block((0, 0, 0), shape, seed=1).astype(np.uint32) * scale
    data = np.minimum(data, 65535).astype(np.uint16)
    d = Directory(shape[2], shape[1], shape[0], np.uint16, str(path), n_filenames=2).create()
    d[:, :, :] = data
    d.close()
    return data


def run(argv: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` as typed in the activated shell."""
    result = subprocess.run(argv, cwd=cwd, env=activated_env(), capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, f"{shlex.join(argv)}: status {result.returncode}\n{result.stdout}\n{result.stderr}"
    return result


def test_lossy_jpeg2000_example_keeps_the_signal(tmp_path: Path) -> None:
    """The README's lossy ``--psnr`` example leaves an RMS error under a tenth of the data's standard
    deviation on microscopy-like data."""
    glymur = require("glymur")
    data = write_sample(tmp_path / "brain.blockfs")
    (line,) = readme_lines(r"^\s+blockfs2jp2k .*--psnr")
    run(as_typed(line, tmp_path), tmp_path)
    planes = sorted((tmp_path / "jp2").glob("img_*.jp2"))
    assert len(planes) == data.shape[0]
    back = np.stack([glymur.Jp2k(str(p))[:] for p in planes]).astype(np.float64)
    rms = float(np.sqrt(np.mean((back - data) ** 2)))
    assert rms < 0.1 * data.std(), f"{line}: RMS error {rms:.1f} on data whose standard deviation is {data.std():.1f}"


def test_dask_example_doubles_without_wrapping_around(tmp_path: Path) -> None:
    """The README's dask block, run as a script, writes twice every voxel, bright ones included."""
    require("dask")
    data = write_sample(tmp_path / "brain.blockfs", scale=8)
    assert data.max() > 32767
    text = README.read_text()
    block = next(b for b in re.findall(r"```python\n(.*?)```", text, re.DOTALL) if "write_dask(" in b)
    script = tmp_path / "example.py"
    script.write_text(block.replace("/data/", f"{tmp_path}/"))
    run(["python", str(script)], tmp_path)
    twice = Directory.open(str(tmp_path / "twice.blockfs"))[:, :, :]
    assert np.array_equal(twice.astype(np.int64), data.astype(np.int64) * 2)


def test_hdf5_mpiexec_example_runs_as_shown(tmp_path: Path) -> None:
    """The README's ``mpiexec ... blockfs2hdf`` line for this user (root or not) runs without Open MPI settings
    in the environment, and writes the volume."""
    if shutil.which("mpiexec") is None:
        unavailable("mpiexec is not on PATH (install openmpi-bin; make install does)")
    h5py = require("h5py")
    lines = readme_lines(r"^\s+mpiexec .*blockfs2hdf ")
    as_root = [line for line in lines if "--allow-run-as-root" in line]
    line = (as_root if os.geteuid() == 0 and as_root else [line for line in lines if line not in as_root])[0]
    data = write_sample(tmp_path / "brain.blockfs")
    argv = as_typed(line, tmp_path)
    run(argv, tmp_path)
    dataset = argv[argv.index(str(tmp_path / "brain.h5")) + 1]
    with h5py.File(tmp_path / "brain.h5", "r") as f:
        assert np.array_equal(f[dataset][...], data)


@pytest.mark.parametrize("line", readme_lines(r"^    (blockfs|tif2blockfs|blockfs2\w+|blockfs-\w+) "))
def test_every_tool_line_names_a_tool_and_options_it_has(line: str) -> None:
    """Each README tool line (a command typed after activation) names an installed tool whose ``--help``
    lists every option the line uses."""
    argv = shlex.split(line, comments=True)
    tool = Path(sys.executable).with_name(argv[0])
    assert tool.exists(), f"{line}: no {argv[0]} in {tool.parent}"
    command = [str(tool)] + ([argv[1]] if argv[0] == "blockfs" and not argv[1].startswith("-") else [])
    helped = subprocess.run([*command, "--help"], capture_output=True, text=True, timeout=60, env=activated_env())
    assert helped.returncode == 0, f"{line}: {shlex.join(command)} --help failed:\n{helped.stderr}"
    for option in {a.strip("[]").split("=")[0] for a in argv if a.strip("[]").startswith("--")}:
        assert option in helped.stdout, f"{line}: {shlex.join(command)} has no {option}"
