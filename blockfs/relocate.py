"""Compatibility path of :mod:`blockfs.ops.relocate` (rewriting a directory file's shard names)."""

from .ops.relocate import DEFAULT_BUFFER_SIZE, header_with_names, locate_shards, read_directory_file, relocate

__all__ = ["DEFAULT_BUFFER_SIZE", "header_with_names", "locate_shards", "read_directory_file", "relocate"]
