"""Compatibility path of blockfs-rebase: the command is :mod:`blockfs.cli.rebase`, the library
:mod:`blockfs.ops.rebase`."""

import sys

from .cli.rebase import main
from .ops.rebase import rebase

__all__ = ["main", "rebase"]

if __name__ == "__main__":
    sys.exit(main())
