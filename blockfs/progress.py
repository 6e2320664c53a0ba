"""Progress bars for long operations (tqdm) on stderr: shown only on a terminal, never when ``silent``.

A bar is off when stderr is not a terminal (tqdm's ``disable=None``), so logs hold no bars and no
escape codes. Under mpiexec, whose ranks write into a pipe that mpiexec passes on, bars are shown
(the callers draw them on rank 0 only).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, TypeVar

from tqdm import tqdm

T = TypeVar("T")

#: Environment variables that mpiexec (Open MPI, MPICH, PMIx launchers) sets in the ranks it starts.
MPI_RANK_VARIABLES = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK")


def disabled(silent: bool) -> bool | None:
    """tqdm's ``disable``: True when ``silent``; else None (off unless stderr is a terminal), or False
    in a rank started by mpiexec."""
    if silent:
        return True
    return False if any(v in os.environ for v in MPI_RANK_VARIABLES) else None


def progress(items: Iterable[T], silent: bool, desc: str, total: int | None = None, unit: str = "it") -> Iterator[T]:
    """A tqdm progress bar over ``items`` unless ``silent``."""
    return iter(tqdm(items, desc=desc, total=total, unit=unit, disable=disabled(silent)))


def byte_progress(total: int, silent: bool, desc: str) -> tqdm[Any]:
    """A tqdm progress bar counting bytes (use as a context manager; ``update(n)`` per chunk)."""
    return tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, disable=disabled(silent), desc=desc)


def same_file_system(sources: Iterable[str], folder: str) -> bool:
    """Whether every file in ``sources`` is on the file system of ``folder`` (so hard links can be made)."""
    device = os.stat(folder).st_dev
    return all(os.stat(s).st_dev == device for s in sources)


class PlacingProgress:
    """One bar for putting files in place: in files when they are hard-linked (a link is one file,
    whatever its size), in bytes when they are copied."""

    def __init__(self, sizes: Sequence[int], by_file: bool, silent: bool, desc: str):
        self.by_file = by_file
        self.bar = tqdm(total=len(sizes), unit="file", disable=disabled(silent), desc=desc) if by_file \
            else byte_progress(sum(sizes), silent, desc)

    def copied(self, n: int) -> None:
        """``n`` more bytes of a file copied."""
        if not self.by_file:
            self.bar.update(n)

    def placed(self, size: int, linked: bool) -> None:
        """One file of ``size`` bytes in place: hard-linked, or its copy finished (counted by :meth:`copied`)."""
        if self.by_file:
            self.bar.update(1)
        elif linked:
            self.bar.update(size)

    def __enter__(self) -> PlacingProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.bar.close()
