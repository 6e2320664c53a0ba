"""What every console tool shares: error reporting as ``prog: file: reason``, progress bars."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Callable, Iterable, Iterator, TypeVar

from tqdm import tqdm

from .errors import BlockfsError

T = TypeVar("T")

#: What a user can cause (a bad argument, a damaged or missing file, a full disk): every tool prints it as
#: ``prog: file: reason`` and exits 1. Anything else is a bug in blockfs and shows its traceback.
USER_ERRORS = (BlockfsError, OSError)


def describe(exc: BaseException) -> str:
    """``file: reason`` for an error (blockfs messages already start with their file)."""
    if isinstance(exc, OSError) and not isinstance(exc, BlockfsError) and exc.filename is not None:
        return f"{exc.filename}: {exc.strerror or exc}"
    return str(exc)


def run_tool(parser: argparse.ArgumentParser, body: Callable[[argparse.Namespace], int | None],
             argv: list[str] | None) -> int:
    """Parse ``argv`` and run ``body``; a failure prints ``prog: file: reason`` and returns 1."""
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    try:
        return body(args) or 0
    except BrokenPipeError:  # the reader of our output went away (e.g. `| head`): not a failure
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except USER_ERRORS as exc:
        print(f"{parser.prog}: {describe(exc)}", file=sys.stderr)
        return 1


def progress(items: Iterable[T], silent: bool, desc: str, total: int | None = None, unit: str = "it") -> Iterator[T]:
    """A tqdm progress bar over ``items`` unless ``silent``."""
    return iter(tqdm(items, desc=desc, total=total, unit=unit, disable=silent))


def byte_progress(total: int, silent: bool, desc: str) -> tqdm:
    """A tqdm progress bar counting bytes (use as a context manager; ``update(n)`` per chunk)."""
    return tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, disable=silent, desc=desc)


def add_silent(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--silent", action="store_true", help="do not show a progress bar")
