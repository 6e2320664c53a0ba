"""What every console tool shares: error reporting as ``prog: file: reason``, common arguments."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Callable

from ..errors import USER_ERRORS, describe


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


def add_silent(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--silent", action="store_true", help="do not show a progress bar")


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer; got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer; got {text!r}")
    return value


def add_export_arguments(parser: argparse.ArgumentParser, example: str, what: str) -> None:
    """--input, --output-pattern, --n-workers and --silent, as every exporter has them."""
    parser.add_argument("--input", required=True, metavar="BLOCKFS_FILE", help="the volume's directory file")
    parser.add_argument("--output-pattern", required=True, metavar="PATTERN",
                        help=f"file name of each {what} plane with one %%d-style field for its z, e.g. {example}; "
                             "folders are created as needed and existing files of the same name are replaced")
    parser.add_argument("--n-workers", type=positive_int, default=os.cpu_count() or 1, metavar="N",
                        help="planes written at once, in threads (default: the number of CPUs, %(default)s)")
    add_silent(parser)
