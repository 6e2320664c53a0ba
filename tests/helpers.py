"""Helpers the test modules share (fixtures live in conftest.py)."""

from __future__ import annotations

import contextlib
import importlib
import io
import os
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, NoReturn

if TYPE_CHECKING:  # hypothesis and pytest only where used: child processes import this module too
    from hypothesis import settings


def examples(share: float) -> settings:
    """Hypothesis settings running ``share`` of the loaded profile's budget (see conftest.py), at least one."""
    from hypothesis import settings
    return settings(max_examples=max(1, round(settings.default.max_examples * share)))


def block_origins(shape: Sequence[int], block: int | Sequence[int]) -> list[tuple[int, int, int]]:
    """First voxels (x, y, z) of every block of a volume of ``shape`` (z, y, x) cut in ``block`` (z, y, x;
    one int for cubes), in entry order (x fastest)."""
    if isinstance(block, int):
        block = (block, block, block)
    return [(x, y, z) for z in range(0, shape[0], block[0]) for y in range(0, shape[1], block[1])
            for x in range(0, shape[2], block[2])]


def origins_of(d: Any) -> list[tuple[int, int, int]]:
    """:func:`block_origins` of an open Directory."""
    return block_origins((d.z_extent, d.y_extent, d.x_extent), (d.z_block_size, d.y_block_size, d.x_block_size))


def unavailable(reason: str) -> NoReturn:
    """Skip the test for a missing dependency, or fail it under CI (the ``CI`` environment variable),
    where everything the tests use must be installed."""
    import pytest
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (required under CI)")
    pytest.skip(reason)


def require(module: str) -> ModuleType:
    """Import ``module``, or treat it as a missing dependency (see :func:`unavailable`)."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        unavailable(f"{module} is not installed ({exc}); make install sets it up")


def console(command: str, *args: Any, cwd: Path | None = None, timeout: float = 120,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run an installed console script of this environment (``blockfs``, ``blockfs2tif``...), capturing
    its output, with ``env`` added to the environment; a tool may fail, but never with a traceback."""
    exe = Path(sys.executable).with_name(command)
    result = subprocess.run([str(exe), *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=timeout,
                            env=None if env is None else {**os.environ, **env})
    assert "Traceback" not in result.stderr, f"{command} {' '.join(map(str, args))} crashed:\n{result.stderr}"
    return result


def in_process(main: Callable[[list[str]], int], *args: Any) -> subprocess.CompletedProcess[str]:
    """Run a tool's ``main(argv)`` in this process, as a caller from Python would, capturing its output."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main([str(a) for a in args])
        except SystemExit as exc:
            code = exc.code
    return subprocess.CompletedProcess([main.__module__, *args], code, out.getvalue(), err.getvalue())


@contextlib.contextmanager
def mounted(folder: Path, *mount_args: str) -> Iterator[bool]:
    """``mount *mount_args folder`` for the duration; yields whether it worked (it needs root), and
    unmounts afterwards (lazily if the file system is still busy)."""
    try:
        ok = subprocess.run(["mount", *mount_args, str(folder)], capture_output=True, timeout=60).returncode == 0
    except OSError:
        ok = False
    try:
        yield ok
    finally:
        if ok and subprocess.run(["umount", str(folder)], capture_output=True, timeout=60).returncode:
            subprocess.run(["umount", "-l", str(folder)], capture_output=True, timeout=60)
