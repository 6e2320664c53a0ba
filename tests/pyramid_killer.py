"""``blockfs pyramid`` killed with SIGKILL just before its N-th change to the file system, for any N.

Run as a script (the test drives it through stdin and stdout, one JSON list a line)::

    python pyramid_killer.py

For each line ``[N, ARG, ...]`` it forks a process that runs ``blockfs pyramid ARG ...`` (its
``main``, with blockfs imported once here) and kills itself with SIGKILL just before the N-th
call that changes the file system (creating, writing, fsyncing, linking, renaming or removing a
file or folder; N = 0: never), and answers ``[status, changes]``: the exit status (-9 if killed)
and, for a process that was not killed, how many such calls it made. Run the build with
``--n-workers 1``, so that every change happens in the process that counts them.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from collections.abc import Callable
from typing import Any

#: The calls that change the file system (os.open counts when it creates a file).
CHANGES = ("mkdir", "unlink", "remove", "rmdir", "rename", "replace", "link", "symlink", "pwrite", "ftruncate",
           "truncate", "fsync", "copy_file_range", "open")


def _creates(args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    """Whether an ``os.open(path, flags, ...)`` call creates a file."""
    flags = args[1] if len(args) > 1 else kwargs.get("flags", 0)
    return bool(flags & os.O_CREAT) and not os.path.lexists(args[0])


def kill_at(n: int) -> Callable[[], int]:
    """Make the N-th change kill this process; return a function giving the number of changes so far."""
    count = 0

    def counted(name: str, real: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            nonlocal count
            if name != "open" or _creates(args, kwargs):
                count += 1
                if count == n:
                    os.kill(os.getpid(), signal.SIGKILL)
            return real(*args, **kwargs)
        return call

    for name in CHANGES:
        setattr(os, name, counted(name, getattr(os, name)))
    return lambda: count


def run(n: int, args: list[str]) -> list[int | None]:
    """``blockfs pyramid ARGS`` in a forked process killed at change ``n``: [exit status, changes made]."""
    from blockfs.cli.pyramid import main

    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns
        os.close(read)
        code = 1
        try:
            changes = kill_at(n)
            code = main(args)
            os.write(write, str(changes()).encode())
        finally:
            os._exit(code)
    os.close(write)
    _, status = os.waitpid(pid, 0)
    with os.fdopen(read) as f:
        made = f.read()
    return [os.waitstatus_to_exitcode(status), int(made) if made else None]


def main() -> None:
    import blockfs.cli.pyramid  # noqa: F401  (imported once, before the forks)

    for line in sys.stdin:
        n, *args = json.loads(line)
        print(json.dumps(run(n, args)), flush=True)


if __name__ == "__main__":
    main()
