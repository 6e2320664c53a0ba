"""Compatibility path of tif2blockfs: the command is :mod:`blockfs.cli.from_tif`, the stack reader
:mod:`blockfs.convert.tiff_stack`."""

import sys

from .cli.from_tif import main
from .convert.tiff_stack import Plane, check_stack, find_planes, natural_key
from .errors import PlaneMismatchError

__all__ = ["Plane", "PlaneMismatchError", "check_stack", "find_planes", "main", "natural_key"]

if __name__ == "__main__":
    sys.exit(main())
