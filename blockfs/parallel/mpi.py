"""The MPI rank layer every tool shares: who takes part, agreeing on failures, splitting work.

A tool started by ``mpiexec -n N`` runs on N ranks; started any other way it runs alone (SOLO).
mpi4py is imported only when the launcher's environment says there is more than one rank, so a
serial run never initialises MPI. Work is dealt round-robin (:func:`rounds`, :meth:`Ranks.mine`)
and a failure on one rank is shared with all at agreed points (:meth:`Ranks.agree`), so every
rank stops together and none waits forever for another.
"""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from ..errors import USER_ERRORS, BlockfsError, ExportError, describe

T = TypeVar("T")

#: environment variables in which MPI launchers pass a process its rank and the number of ranks
LAUNCHER_RANK = ("OMPI_COMM_WORLD_RANK", "PMIX_RANK", "PMI_RANK")
LAUNCHER_SIZE = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE")


@dataclass(frozen=True)
class Ranks:
    """Who takes part: the communicator (None when working serially), this rank and their number."""

    comm: Any
    rank: int
    size: int

    @property
    def parallel(self) -> bool:
        return self.comm is not None

    def agree(self, error: str | None, kind: type[BlockfsError] = ExportError) -> None:
        """Share this rank's error (or None) with every rank; all raise ``kind`` if any failed."""
        errors = self.comm.allgather(error) if self.parallel else [error]
        first = next((e for e in errors if e), None)
        if first is not None:
            failure = kind(first)
            failure.agreed = True  # type: ignore[attr-defined]  # every rank raises it: see run_ranked
            raise failure

    def attempt(self, step: Callable[[], T], file: str | None = None, action: str | None = None,
                kind: type[BlockfsError] = ExportError) -> T:
        """Run ``step`` on every rank; if it fails with an expected error on any, all raise together.

        A message that does not start with ``file`` gets ``file: action:`` in front of it.
        """
        result, error = None, None
        try:
            result = step()
        except USER_ERRORS as exc:
            error = describe(exc)
            if file is not None and not error.startswith(f"{file}:"):
                error = f"{file}: {action}: {error}"
        self.agree(error, kind)
        return result  # type: ignore[return-value]  # no rank failed, so step() returned and result is its T

    def mine(self, work: Sequence[T]) -> Sequence[T]:
        """This rank's share of ``work``: every ``size``-th item from its ``rank``-th."""
        return work[self.rank::self.size]


SOLO = Ranks(None, 0, 1)


def launcher_rank() -> tuple[int, int]:
    """(rank, size) that mpiexec or srun passed in the environment; (0, 1) when not started by one."""
    def first(names: tuple[str, ...], default: int) -> int:
        for name in names:
            try:
                return int(os.environ[name])
            except (KeyError, ValueError):
                continue
        return default
    return first(LAUNCHER_RANK, 0), first(LAUNCHER_SIZE, 1)


def find_ranks(why_serial: Callable[[], str | None] = lambda: None) -> tuple[Ranks, str | None]:
    """All ranks of COMM_WORLD when mpi4py is there and ``why_serial()`` finds no reason against it;
    else (this rank as the launcher numbered it, the reason to work serially)."""
    try:
        from mpi4py import MPI
    except (ImportError, RuntimeError) as exc:
        rank, size = launcher_rank()
        return Ranks(None, rank, size), f"mpi4py is not available ({exc})"
    world = MPI.COMM_WORLD
    reason = why_serial()
    if reason is not None:
        return Ranks(None, world.Get_rank(), world.Get_size()), reason
    return Ranks(world, world.Get_rank(), world.Get_size()), None


def serially(ranks: Ranks, reason: str, prog: str) -> Ranks | None:
    """Say once why the work runs serially; rank 0 then works alone (SOLO), the others get None."""
    if ranks.rank == 0:
        where = f"on rank 0 of {ranks.size}" if ranks.size > 1 else "in one process"
        print(f"{prog}: note: {reason}; writing serially {where}", file=sys.stderr, flush=True)
        return SOLO
    return None


def tool_ranks(prog: str) -> Ranks | None:
    """The ranks a tool works on: all of them under ``mpiexec -n N`` (N > 1), else SOLO.

    Without mpi4py under mpiexec, rank 0 works alone (and says so) and the others get None: they
    have nothing to do.
    """
    if launcher_rank()[1] < 2:
        return SOLO
    ranks, reason = find_ranks()
    return ranks if reason is None else serially(ranks, reason, prog)


def on_ranks(prog: str, body: Callable[[Ranks], int | None]) -> int:
    """Run a tool's ``body(ranks)`` on the ranks of :func:`tool_ranks`; see :func:`run_ranked`.

    In parallel, an expected error on any rank (a bad argument, a missing file, a full disk) is
    shared when ``body`` returns, so every rank fails together; ``body`` must not wait for other
    ranks after such an error of its own.
    """
    ranks = tool_ranks(prog)
    if ranks is None:
        return 0
    work = (lambda: ranks.attempt(lambda: body(ranks))) if ranks.parallel else (lambda: body(ranks))
    return run_ranked(ranks, work, prog)


def rounds(work: Sequence[T], ranks: Ranks) -> Iterator[tuple[Sequence[T], T | None]]:
    """Each round's items, and this rank's among them (None when it has none).

    Every rank sees the same number of rounds, so every rank makes the same collective calls.
    """
    for start in range(0, len(work), ranks.size):
        batch = work[start:start + ranks.size]
        yield batch, batch[ranks.rank] if ranks.rank < len(batch) else None


def abort(ranks: Ranks, exc: BaseException, prog: str) -> None:
    """Print an error met on this rank alone and abort every rank: the others would wait for it forever."""
    print(f"{prog}: rank {ranks.rank} of {ranks.size}: {describe(exc)}", file=sys.stderr)
    if not isinstance(exc, USER_ERRORS):
        traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stderr)
    print(f"{prog}: aborting all {ranks.size} ranks", file=sys.stderr, flush=True)
    sys.stdout.flush()
    ranks.comm.Abort(1)


def run_ranked(ranks: Ranks, body: Callable[[], int | None], prog: str) -> int:
    """Run a tool's work on every rank: an error all ranks agreed on (:meth:`Ranks.agree`) is raised
    on rank 0 only, which prints it, and makes the others return 1 quietly; any other error on a rank
    aborts the job, since the others would wait for that rank forever."""
    try:
        return body() or 0
    except Exception as exc:
        if not ranks.parallel or (getattr(exc, "agreed", False) and ranks.rank == 0):
            raise
        if getattr(exc, "agreed", False):
            return 1
        abort(ranks, exc, prog)
        return 1
