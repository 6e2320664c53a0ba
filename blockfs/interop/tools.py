"""What to-zarr and from-zarr share: deciding whether an existing output may be written over, writing a
folder under the tool's incomplete marker, naming the file of an OSError, and naming the extra to install
when an optional package is missing."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import importlib
import json
import os
import shutil
from collections.abc import Callable, Iterator
from types import ModuleType

from .. import locking
from ..errors import MissingDependencyError, VolumeBusyError, VolumeExistsError
from ..marks import incomplete
from ..storage import fsync_folder, naming, pwrite_all

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


def _only_folders(path: str) -> bool:
    """Whether ``path`` is a folder holding nothing but (empty) folders."""
    if not os.path.isdir(path) or os.path.islink(path):
        return False
    return all(_only_folders(os.path.join(path, name)) for name in os.listdir(path))


def replaceable(dest: str, overwrite: bool, complete: Callable[[str], bool], mine: Callable[[str], bool]) -> bool:
    """Whether there is an output at ``dest`` to write over.

    False when nothing (or only empty folders) is there. True for this tool's own incomplete output
    (``mine``), and with ``overwrite`` for a ``complete`` one; anything else raises.
    """
    if not os.path.lexists(dest) or _only_folders(dest):
        return False
    if mine(dest):
        return True
    if not overwrite:
        raise VolumeExistsError(f"{dest}: already exists; pass --overwrite (overwrite=True) to replace it, "
                                "or choose another destination.")
    if not complete(dest):
        raise VolumeExistsError(f"{dest}: exists and is not what this tool writes, so it is not replaced; "
                                "remove it yourself or choose another destination.")
    return True


def marker_path(folder: str, tool: str) -> str:
    """The file that says ``tool`` has begun writing ``folder`` and not finished, e.g. blockfs-to-zarr.incomplete."""
    return os.path.join(folder, tool.replace(" ", "-") + ".incomplete")


def has_marker(tool: str) -> Callable[[str], bool]:
    """Whether a folder carries ``tool``'s incomplete marker (for :func:`replaceable`)."""
    return lambda folder: os.path.lexists(marker_path(folder, tool))


def _lock_marker(path: str, tool: str) -> int:
    """Create (or open) the marker at ``path`` and lock it, never waiting: a second run of ``tool`` is refused."""
    for _ in range(3):
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise
            folder = os.path.dirname(path)
            raise VolumeBusyError(f"{folder}: {tool} is writing it now ({path} is locked); wait for it to finish, "
                                  "or stop it and run this again.") from None
        if locking.same_file(fd, path):
            return fd
        os.close(fd)  # removed by the run that just finished: take a new one
    raise VolumeBusyError(f"{path}: the marker keeps being replaced by another {tool}; run this again when it is done.")


def _clear(folder: str, keep: str) -> None:
    """Remove everything in ``folder`` but ``keep``."""
    for entry in os.scandir(folder):
        if entry.path == keep:
            continue
        if entry.is_dir(follow_symlinks=False):
            shutil.rmtree(entry.path)
        else:
            os.unlink(entry.path)


@contextlib.contextmanager
def marked_folder(folder: str, tool: str) -> Iterator[None]:
    """Write the folder ``folder`` anew under ``tool``'s incomplete marker.

    The marker is written (and locked) first, then everything else in the folder is removed; it is
    removed last, once the body has succeeded. An interrupted or failed run leaves it, so the
    output is seen as incomplete, and a re-run of ``tool`` replaces it.
    """
    os.makedirs(folder, exist_ok=True)
    marker = marker_path(folder, tool)
    with naming(marker):
        fd = _lock_marker(marker, tool)
    try:
        with naming(marker):
            os.ftruncate(fd, 0)
            pwrite_all(fd, json.dumps(incomplete(tool)).encode("utf-8"), 0)
        _clear(folder, marker)
        yield
        os.unlink(marker)
        fsync_folder(folder)
    finally:
        os.close(fd)
