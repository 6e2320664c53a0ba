"""Compatibility path of blockfs2hdf5.

The command is :mod:`blockfs.cli.hdf5`, the export :mod:`blockfs.convert.hdf5`.
"""

import sys

from .cli.hdf5 import main
from .convert.hdf5 import export

__all__ = ["export", "main"]

if __name__ == "__main__":
    sys.exit(main())
