"""``import blockfs`` stays light: the optional stacks load only in the features that use them."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

OPTIONAL_STACKS = ("h5py", "mpi4py", "glymur", "aiohttp", "zarr", "dask", "distributed", "tensorstore",
                   "neuroglancer", "selenium", "fsspec")


@pytest.mark.parametrize("statement", ["import blockfs", "from blockfs import Directory",
                                       "import blockfs.directory", "import blockfs.pyramid"])
def test_import_loads_no_optional_stack(statement: str) -> None:
    probe = f"{statement}; import sys, json; print(json.dumps(sorted(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True)
    loaded = set(json.loads(done.stdout))
    assert not loaded & set(OPTIONAL_STACKS), f"{statement!r} loaded {sorted(loaded & set(OPTIONAL_STACKS))}"


def test_python_dash_m_blockfs_runs_the_command() -> None:
    done = subprocess.run([sys.executable, "-m", "blockfs", "--help"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0
    assert "info" in done.stdout and "check" in done.stdout
