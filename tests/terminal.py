"""Running tools with stderr on a pseudo-terminal, where progress bars are drawn (they are off in logs)."""

from __future__ import annotations

import fcntl
import os
import pty
import struct
import termios


def open_terminal(columns: int = 120) -> tuple[int, int]:
    """(controller, terminal): a new pseudo-terminal ``columns`` wide; give ``terminal`` to the child."""
    controller, terminal = pty.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 40, columns, 0, 0))
    return controller, terminal


def read_all(controller: int) -> bytes:
    """Everything written to the terminal until every process holding it has closed it; closes ``controller``."""
    out = b""
    try:
        while True:
            try:
                data = os.read(controller, 65536)
            except OSError:  # EIO: nobody holds the terminal any more
                break
            if not data:
                break
            out += data
    finally:
        os.close(controller)
    return out
