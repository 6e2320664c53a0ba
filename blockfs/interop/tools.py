"""What to-zarr and from-zarr share: refusing an existing output, and naming the extra to install when
an optional package is missing."""

from __future__ import annotations

import importlib
import os
import shutil
from types import ModuleType
from typing import Callable

from ..errors import MissingDependencyError, VolumeExistsError

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
