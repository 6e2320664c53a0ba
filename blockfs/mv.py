"""Compatibility path of blockfs-mv and blockfs-cp: the command is :mod:`blockfs.cli.mv`, the library
:mod:`blockfs.ops.transfer`."""

import sys

from .cli.mv import copy_main, main
from .ops.transfer import transfer

__all__ = ["copy_main", "main", "transfer"]

if __name__ == "__main__":
    sys.exit(main())
