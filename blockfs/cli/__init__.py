"""The ``blockfs`` command: one entry point for every tool, as subcommands.

A tool calls itself (in usage, errors, progress) by the command that started it: ``blockfs NAME`` here,
its console script's name (blockfs2tif, blockfs-mv...) when run as one, and, called from Python
(``main(argv)``, ``python -m``), its own console script's name, or ``blockfs NAME`` if it has none
(the default ``prog`` of its ``build_parser()``). :func:`._support.typed_name` applies the rule.
"""

from __future__ import annotations

import importlib
import sys

from ._support import INTERRUPTED, invoked_as

#: subcommand -> (module, function, one-line summary); each module is ``blockfs.cli.<tool>`` with ``build_parser()``.
SUBCOMMANDS = {
    "info": ("blockfs.cli.info", "main", "describe a volume: shape, blocks written, bytes on disk, metadata"),
    "check": ("blockfs.cli.check", "main", "verify every block; exit status 0 only for a healthy volume"),
    "repair": ("blockfs.cli.repair", "main", "rebuild the index from the block records in the shards"),
    "mv": ("blockfs.cli.mv", "main", "move a volume into a folder, rewriting its shard names"),
    "cp": ("blockfs.cli.mv", "copy_main", "copy a volume into a folder, rewriting its shard names"),
    "rebase": ("blockfs.cli.rebase", "main", "point a hand-moved volume at the shard files beside it"),
    "tif": ("blockfs.cli.tif", "main", "export one TIFF plane per z"),
    "jp2k": ("blockfs.cli.jp2k", "main", "export one JPEG 2000 plane per z"),
    "hdf5": ("blockfs.cli.hdf5", "main", "export to an HDF5 dataset (in parallel under mpiexec)"),
    "from-tif": ("blockfs.cli.from_tif", "main", "import a z-stack of TIFF planes"),
    "pyramid": ("blockfs.cli.pyramid", "main", "build a multi-resolution pyramid folder for Neuroglancer, in one pass"),
    "to-zarr": ("blockfs.cli.to_zarr", "main", "repack a volume or pyramid as OME-Zarr without recompressing"),
    "from-zarr": ("blockfs.cli.from_zarr", "main", "import a zarr array or OME-Zarr image"),
    "serve": ("blockfs.cli.serve", "main", "serve volumes and pyramids over HTTP (precomputed, zarr)"),
    "view": ("blockfs.cli.view", "main", "look at volumes in Neuroglancer, served locally"),
    "napari": ("blockfs.cli.napari", "main", "look at volumes in napari, read lazily"),
    "demo": ("blockfs.demo", "main", "write, read back and verify a sample volume"),
}


def usage() -> str:
    width = max(map(len, SUBCOMMANDS))
    lines = [f"  {name:<{width}}  {summary}" for name, (_, _, summary) in SUBCOMMANDS.items()]
    return ("usage: blockfs <command> [arguments]\n       blockfs --version\n\ncommands:\n" + "\n".join(lines)
            + "\n\n'blockfs <command> --help' describes one; e.g. blockfs info /data/brain.blockfs")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else 2
    if argv[0] in ("-V", "--version"):
        from .. import __version__
        print(f"blockfs {__version__}")
        return 0
    name, rest = argv[0], argv[1:]
    if name not in SUBCOMMANDS:
        print(f"blockfs: unknown command {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module, function, _ = SUBCOMMANDS[name]
    try:
        tool = getattr(importlib.import_module(module), function)
    except KeyboardInterrupt:  # while the tool loads, before it handles Ctrl-C itself
        print(f"blockfs {name}: interrupted", file=sys.stderr)
        return INTERRUPTED
    with invoked_as(f"blockfs {name}"):
        return tool(rest)

