"""Compatibility path of blockfs2jp2k.

The command is :mod:`blockfs.cli.jp2k`, the writer :mod:`blockfs.convert.jp2k`.
"""

import sys

from .cli.jp2k import main
from .convert.jp2k import ENCODER_BYTES_PER_VOXEL, GB, Plan, plan, resolutions, write_jp2k

__all__ = ["ENCODER_BYTES_PER_VOXEL", "GB", "Plan", "main", "plan", "resolutions", "write_jp2k"]

if __name__ == "__main__":
    sys.exit(main())
