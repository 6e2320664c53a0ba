"""Run a command as a child of this small process; write its wait status and peak resident memory to a file.

    python peak_memory.py RESULT.json COMMAND [ARG ...]

A process's peak (``ru_maxrss``) starts from that of the memory it was forked from, and an exec
keeps it, so a tool started straight from a large test process would seem as large as that
process. Forked from this interpreter, a tool's peak is its own (or this interpreter's few MiB).
"""

from __future__ import annotations

import json
import os
import sys


def main(result: str, argv: list[str]) -> None:
    pid = os.fork()
    if pid == 0:
        try:
            os.execvp(argv[0], argv)
        finally:
            os._exit(127)
    _, status, usage = os.wait4(pid, 0)
    with open(result, "w", encoding="utf-8") as f:
        json.dump({"status": status, "max_rss_bytes": usage.ru_maxrss * 1024}, f)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
