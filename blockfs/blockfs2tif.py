"""Compatibility path of blockfs2tif: the command is :mod:`blockfs.cli.tif`, the writer :mod:`blockfs.convert.tiff`."""

import sys

from .cli.tif import main
from .convert.tiff import BIGTIFF_THRESHOLD, needs_bigtiff, write_tiff

__all__ = ["BIGTIFF_THRESHOLD", "main", "needs_bigtiff", "write_tiff"]

if __name__ == "__main__":
    sys.exit(main())
