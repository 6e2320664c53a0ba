"""Compatibility path: the library is :mod:`blockfs.ops.info`, the command :mod:`blockfs.cli.info`."""

from .cli.info import main
from .ops.info import describe_volume, format_text, human, scan_index

__all__ = ["describe_volume", "format_text", "human", "main", "scan_index"]
