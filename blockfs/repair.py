"""Compatibility path: the library is :mod:`blockfs.ops.repair`, the command :mod:`blockfs.cli.repair`."""

from .cli.repair import main
from .ops.repair import RepairResult, latest_records, repair_volume

__all__ = ["RepairResult", "latest_records", "main", "repair_volume"]
