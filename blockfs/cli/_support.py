"""What every console tool shares: error reporting as ``prog: file: reason``, Ctrl-C, common arguments."""

from __future__ import annotations

import argparse
import contextlib
import contextvars
import functools
import math
import multiprocessing
import os
import signal
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Any, NoReturn, TextIO, TypeVar

from ..errors import USER_ERRORS, InvalidArgumentError, describe

#: Exit status of a tool stopped by Ctrl-C: 128 + SIGINT, as a shell reports a process the signal ended.
INTERRUPTED = 128 + signal.SIGINT
#: Seconds a tool stopped by Ctrl-C has to stop its threads and worker processes before it exits regardless.
STOP_SECONDS = 3.0
#: Seconds after which a KeyboardInterrupt that Python dropped is raised again.
REPEAT_SECONDS = 0.05
#: The optional packages (top-level module names), each with the extra of pyproject.toml that installs it.
EXTRAS = {"h5py": "tools", "mpi4py": "tools", "glymur": "tools", "packaging": "tools",
          "zarr": "interop", "numcodecs": "interop", "dask": "interop", "distributed": "interop",
          "toolz": "interop", "cloudpickle": "interop", "aiohttp": "serve", "neuroglancer": "serve",
          "napari": "napari", "npe2": "napari"}
#: A number argparse parses: int or float.
Number = TypeVar("Number", int, float)
#: The name a dispatcher (the ``blockfs`` command) ran the tool under, e.g. ``blockfs mv``.
_INVOKED_AS: contextvars.ContextVar[str | None] = contextvars.ContextVar("blockfs_invoked_as", default=None)


class Interruption:
    """Ctrl-C while a tool runs: KeyboardInterrupt in the main thread, and a deadline for the whole process.

    The first Ctrl-C unwinds the tool, which cancels its pending work and closes its files; whatever
    still runs ``STOP_SECONDS`` later (a worker thread in a long task, a pool at interpreter exit) is
    cut short: the worker processes are terminated and the process exits. A second Ctrl-C exits at
    once. Forked children that inherit the handler ignore Ctrl-C: their parent stops them. Where
    Python drops the KeyboardInterrupt (raised in a callback it runs at a fork or in a finaliser, it
    only prints it as "Exception ignored"), it is raised again in the code that runs next.
    """

    def __init__(self, prog: str):
        self.prog = prog
        self.pid = os.getpid()
        #: The tool's exit status once its body has returned; the deadline exits with it.
        self.status: int | None = None
        #: Whether Ctrl-C was pressed.
        self.pressed = False
        self._dropped = False  # the KeyboardInterrupt raised was dropped: the next SIGINT raises it again
        self._reported = threading.Lock()  # taken by whichever thread prints the line, so it is printed once

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        if os.getpid() != self.pid:
            return
        if self.pressed and not self._dropped:
            self._exit()
        if not self.pressed:
            self.pressed = True
            threading.Thread(target=self._deadline, name="blockfs-interrupted", daemon=True).start()
        self._dropped = False
        raise KeyboardInterrupt

    def unraisable(self, unraisable: Any, previous: Callable[[Any], None]) -> None:
        """``sys.unraisablehook``: a dropped KeyboardInterrupt of ours is raised again once the code that
        dropped it has returned (by a SIGINT a moment later); anything else is reported as before."""
        if self.pressed and isinstance(unraisable.exc_value, KeyboardInterrupt) and os.getpid() == self.pid:
            self._dropped = True
            again = threading.Timer(REPEAT_SECONDS, os.kill, (self.pid, signal.SIGINT))
            again.daemon = True
            again.start()
        else:
            previous(unraisable)

    def report(self) -> int:
        """Print the one line that says the tool was interrupted; return the exit status."""
        if self._reported.acquire(blocking=False):
            print(f"{self.prog}: interrupted", file=sys.stderr, flush=True)
        return INTERRUPTED

    def _deadline(self) -> None:
        time.sleep(STOP_SECONDS)
        self._exit()

    def _exit(self) -> NoReturn:
        """End the process now, with the tool's status (or as interrupted): terminate its worker processes first."""
        status = self.status
        if status is None:
            status = INTERRUPTED
            if self._reported.acquire(blocking=False):  # not through sys.stderr, which another thread may hold
                os.write(2, f"{self.prog}: interrupted\n".encode())
        with contextlib.suppress(Exception):  # the interpreter may be finalising meanwhile
            for child in multiprocessing.active_children():
                child.terminate()
            sys.stdout.flush()
        os._exit(status)


@contextlib.contextmanager
def interruptible(prog: str) -> Iterator[Interruption]:
    """Handle Ctrl-C as :class:`Interruption` describes while the block runs (in the main thread only)."""
    interruption = Interruption(prog)
    if threading.current_thread() is not threading.main_thread():
        yield interruption
        return
    previous, hook = signal.signal(signal.SIGINT, interruption), sys.unraisablehook
    sys.unraisablehook = functools.partial(interruption.unraisable, previous=hook)
    try:
        yield interruption
    finally:
        signal.signal(signal.SIGINT, previous)
        sys.unraisablehook = hook


@contextlib.contextmanager
def invoked_as(prog: str) -> Iterator[None]:
    """Tools run in the block call themselves ``prog`` (the ``blockfs`` command's ``blockfs NAME``)."""
    token = _INVOKED_AS.set(prog)
    try:
        yield
    finally:
        _INVOKED_AS.reset(token)


def typed_name(default: str, argv: list[str] | None) -> str:
    """What the user typed to start the tool: the dispatcher's name for it, else the console script's
    name (blockfs2hdf or blockfs2hdf5), else ``default`` (e.g. under ``python -m`` or a test's ``main(argv)``)."""
    dispatched = _INVOKED_AS.get()
    if dispatched is not None:
        return dispatched
    typed = os.path.basename(sys.argv[0]) if argv is None and sys.argv else ""
    return typed if "blockfs" in typed and not typed.endswith(".py") else default


@contextlib.contextmanager
def warnings_as_lines(prog: str) -> Iterator[None]:
    """While the block runs (in any thread), a warning prints as one line ``prog: warning: file: reason``."""
    def show(message: Warning | str, category: type[Warning], filename: str, lineno: int,
             file: TextIO | None = None, line: str | None = None) -> None:
        with contextlib.suppress(OSError, ValueError):  # stderr closed or gone: a warning is not worth a crash
            print(f"{prog}: warning: {message}", file=sys.stderr if file is None else file, flush=True)

    with warnings.catch_warnings():
        warnings.showwarning = show
        yield


def install_hint(exc: ModuleNotFoundError) -> str | None:
    """``NAME is not installed; install it with pip install 'blockfs[EXTRA]'`` for a missing optional package,
    else None."""
    package = (exc.name or "").split(".")[0]
    extra = EXTRAS.get(package)
    return None if extra is None else f"{package} is not installed; install it with pip install 'blockfs[{extra}]'"


def run_tool(parser: argparse.ArgumentParser, body: Callable[[argparse.Namespace], int | None],
             argv: list[str] | None) -> int:
    """Parse ``argv`` and run ``body`` under the name the user typed (:func:`typed_name`); a failure prints
    ``prog: file: reason`` and returns 1, a missing optional package prints how to install it and returns 1,
    a warning prints as ``prog: warning: file: reason``, Ctrl-C prints ``prog: interrupted`` and returns
    :data:`INTERRUPTED` (see :class:`Interruption`)."""
    parser.prog = typed_name(parser.prog, argv)
    with interruptible(parser.prog) as interruption, warnings_as_lines(parser.prog):
        status = interruption.status = _run_body(parser, body, argv, interruption)
    return status


def _run_body(parser: argparse.ArgumentParser, body: Callable[[argparse.Namespace], int | None],
              argv: list[str] | None, interruption: Interruption) -> int:
    try:
        return body(parser.parse_args(sys.argv[1:] if argv is None else argv)) or 0
    except (KeyboardInterrupt, Exception) as exc:
        # After Ctrl-C, any error is its doing: KeyboardInterrupt raised inside a lock's or a pool's own
        # code leaves them broken (RuntimeError: release unlocked lock, a broken pool...).
        if isinstance(exc, KeyboardInterrupt) or interruption.pressed:
            return interruption.report()
        if isinstance(exc, BrokenPipeError):  # the reader of our output went away (e.g. `| head`): not a failure
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 0
        if isinstance(exc, USER_ERRORS):
            print(f"{parser.prog}: {describe(exc)}", file=sys.stderr)
            return 1
        hint = install_hint(exc) if isinstance(exc, ModuleNotFoundError) else None
        if hint is not None:
            print(f"{parser.prog}: {hint}", file=sys.stderr)
            return 1
        raise


def _is_index_file(path: str) -> bool:
    """Whether ``path`` is a regular file starting as a blockfs directory (index) file does."""
    from ..format import MAGIC
    if not os.path.isfile(path):
        return False
    try:
        with open(path, "rb") as f:
            return f.read(len(MAGIC)) == MAGIC
    except OSError:
        return False


def volume_argument(path: str, pyramids: bool = False) -> str:
    """The index file a volume argument names: ``path`` itself unless it is a folder; a folder holding one
    index file names that file; a pyramid folder stays as it is for a tool that takes pyramids
    (``pyramids``). Any other folder is an :class:`InvalidArgumentError` saying what it holds. A URL names
    a volume's index file, or a pyramid folder if one is there."""
    from ..pyramid.folder import is_pyramid, level_path
    from ..remote import is_url
    if is_url(path):
        if not path.endswith(".blockfs") and is_pyramid(path) and not pyramids:
            raise InvalidArgumentError(f"{path}: a pyramid, not a volume; give one level's index file, e.g. "
                                       f"{level_path(path, 1)}")
        return path
    if not os.path.isdir(path):
        return path
    from ..pyramid.state import is_half_built
    if is_half_built(path):
        raise InvalidArgumentError(f"{path}: holds an interrupted pyramid build, not a finished pyramid; run "
                                   f"blockfs pyramid SOURCE {path} --resume to finish it (or --overwrite to start "
                                   "again)")
    if is_pyramid(path):
        if pyramids:
            return path
        raise InvalidArgumentError(f"{path}: a pyramid folder, not a volume; give one level's index file, e.g. "
                                   f"{level_path(path, 1)}")
    found = sorted(name for name in os.listdir(path) if _is_index_file(os.path.join(path, name)))
    if len(found) == 1:
        return os.path.join(path, found[0])
    takes = "a volume's index file or a pyramid folder" if pyramids else "a volume's index file"
    if not found:
        raise InvalidArgumentError(f"{path}: a folder holding no blockfs index file"
                                   f"{' or pyramid' if pyramids else ''}; give {takes}")
    raise InvalidArgumentError(f"{path}: a folder holding {len(found)} volumes ({', '.join(found)}); give one index "
                               f"file, e.g. {os.path.join(path, found[0])}")


def number(kind: Callable[[str], Number], expected: str, low: float | None = None, high: float | None = None,
           above: bool = False) -> Callable[[str], Number]:
    """argparse type: ``kind(text)``, finite, from ``low`` (``above``: more than it) to ``high``; anything
    else is the error ``{expected}; got 'text'``, ``expected`` saying what is wanted (and how to write it)."""
    def parse(text: str) -> Number:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{expected}; got {text!r}") from None
        fits = math.isfinite(value) and (low is None or (value > low if above else value >= low)) and (
            high is None or value <= high)
        if not fits:
            raise argparse.ArgumentTypeError(f"{expected}; got {text!r}")
        return value
    return parse


def numbers(each: Callable[[str], Number], count: int, expected: str) -> Callable[[str], tuple[Number, ...]]:
    """argparse type: ``count`` values separated by commas, each parsed by ``each`` (a :func:`number`)."""
    def parse(text: str) -> tuple[Number, ...]:
        parts = text.split(",")
        try:
            if len(parts) != count:
                raise argparse.ArgumentTypeError(expected)
            return tuple(each(part) for part in parts)
        except argparse.ArgumentTypeError:
            raise argparse.ArgumentTypeError(f"{expected}; got {text!r}") from None
    return parse


#: argparse type: an integer >= 1.
positive_int = number(int, "expected a positive integer", low=1)
#: argparse type: ``X,Y,Z``, three positive voxel sizes in micrometres.
voxel_size = numbers(number(float, "", low=0, above=True), 3,
                     "expected three positive numbers X,Y,Z in micrometres (e.g. 1.8,1.8,2)")


def add_silent(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--silent", action="store_true", help="do not show a progress bar")


def add_export_arguments(parser: argparse.ArgumentParser, example: str, what: str) -> None:
    """--input, --output-pattern, --n-workers and --silent, as every exporter has them."""
    parser.add_argument("--input", required=True, metavar="BLOCKFS_FILE",
                        help="the volume's directory file, or a folder holding one")
    parser.add_argument("--output-pattern", required=True, metavar="PATTERN",
                        help=f"file name of each {what} plane with one %%d-style field for its z, e.g. {example}; "
                             "folders are created as needed and existing files of the same name are replaced")
    parser.add_argument("--n-workers", type=positive_int, default=os.cpu_count() or 1, metavar="N",
                        help="planes written at once, in threads (default: the number of CPUs, %(default)s)")
    add_silent(parser)
