"""Running real ``mpiexec`` jobs from the tests: what they need, and the environment they run in."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
#: Open MPI refuses root and more ranks than cores unless told (CI runs as root on 2 cores)
MPI_ENV = {"OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
           "OMPI_MCA_rmaps_base_oversubscribe": "1"}
#: no mpiexec run of these tests should take longer (they take a few seconds)
TIMEOUT = 60


def require_mpi() -> None:
    """Skip the test unless mpiexec and mpi4py are installed; under CI, fail instead."""
    reason = None
    if shutil.which("mpiexec") is None:
        reason = "mpiexec is not on PATH (install openmpi-bin; make install does)"
    else:
        try:
            import mpi4py  # noqa: F401
        except ImportError:
            reason = "mpi4py is not installed (make install installs it)"
    if reason is None:
        return
    if os.environ.get("CI"):
        pytest.fail(f"MPI cannot be tested: {reason}", pytrace=False)
    pytest.skip(reason)


def environment() -> dict[str, str]:
    """The tests' environment, with this checkout first on the path, and Open MPI told to run here."""
    return {**os.environ, **MPI_ENV, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}


def run(argv: list[Any], timeout: float = TIMEOUT) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` without mpiexec, in :func:`environment`."""
    return subprocess.run(list(map(str, argv)), capture_output=True, text=True, timeout=timeout, env=environment())


def mpiexec(ranks: int, argv: list[Any], timeout: float = TIMEOUT, cwd: Path | None = None
            ) -> tuple[subprocess.CompletedProcess[str], float]:
    """Run ``argv`` on ``ranks`` ranks; return the finished job and its wall time in seconds."""
    command = ["mpiexec", "-n", str(ranks), *map(str, argv)]
    start = time.monotonic()
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=environment(), cwd=cwd)
    return result, time.monotonic() - start


def tool(name: str) -> str:
    """The installed console script ``name`` beside this Python."""
    return str(Path(sys.executable).with_name(name))
