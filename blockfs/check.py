"""Compatibility path: the library is :mod:`blockfs.ops.check`, the command :mod:`blockfs.cli.check`."""

from .cli.check import main, print_report
from .ops.check import Problem, Report, ShardUsage, check_volume

__all__ = ["Problem", "Report", "ShardUsage", "check_volume", "main", "print_report"]
