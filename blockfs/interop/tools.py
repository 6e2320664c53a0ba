"""What to-zarr and from-zarr share: threads with a bounded number of tasks in flight, refusing an
existing output, and naming the extra to install when an optional package is missing."""

from __future__ import annotations

import importlib
import os
import shutil
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from types import ModuleType
from typing import Callable, Iterable, Iterator, TypeVar

from ..errors import MissingDependencyError, VolumeExistsError

T = TypeVar("T")
R = TypeVar("R")

#: Packages of the [interop] extra.
OPTIONAL = ("zarr", "numcodecs", "dask", "distributed", "toolz", "cloudpickle")


def load(module: str) -> ModuleType:
    """``blockfs.interop.<module>``; a missing optional package raises :class:`MissingDependencyError`."""
    try:
        return importlib.import_module(f"blockfs.interop.{module}")
    except ImportError as exc:
        if (exc.name or "").split(".")[0] not in OPTIONAL:
            raise
        raise MissingDependencyError(f"{exc.name}: not installed, and blockfs.interop.{module} needs it; "
                                     "install it with pip install 'blockfs[interop]'.") from None


def bounded_map(function: Callable[[T], R], items: Iterable[T], workers: int | None = None) -> Iterator[R]:
    """``function`` over ``items`` on ``workers`` threads, results in order, at most 2 x workers pending."""
    workers = workers or os.cpu_count() or 1
    pending: deque[Future[R]] = deque()
    with ThreadPoolExecutor(workers, "blockfs-interop") as pool:
        try:
            for item in items:
                pending.append(pool.submit(function, item))
                if len(pending) >= 2 * workers:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for future in pending:
                future.cancel()


def refuse_existing(dest: str, overwrite: bool, replaceable: Callable[[str], bool]) -> None:
    """Raise if ``dest`` exists, unless ``overwrite`` and ``replaceable(dest)``: then remove it."""
    if not os.path.lexists(dest):
        return
    if not overwrite:
        raise VolumeExistsError(f"{dest}: already exists; pass --overwrite (overwrite=True) to replace it, "
                                "or choose another destination.")
    if not replaceable(dest):
        raise VolumeExistsError(f"{dest}: exists and is not what this tool writes, so it is not replaced; "
                                "remove it yourself or choose another destination.")
    if os.path.isdir(dest) and not os.path.islink(dest):
        shutil.rmtree(dest)
