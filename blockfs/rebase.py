"""blockfs-rebase: point a hand-moved volume's shard names at the shard files beside it.

After a volume was moved with plain ``mv`` or ``cp -r``, its directory file still names the shards
where they used to be. This tool rewrites the names to the absolute paths of the files with the
same base names in the directory file's folder. The rewrite goes through
:func:`blockfs.relocate.relocate`: the whole index is carried over whatever the header's new
length, and the new file replaces the old one atomically. A volume whose names are already the
absolute paths of the files beside it is left untouched (not even rewritten).

Run it while no process is writing blocks to the volume.
"""

from __future__ import annotations

import argparse
import os
import sys

from .cli_support import add_silent, byte_progress, run_tool
from .errors import InvalidArgumentError, MissingShardError
from .relocate import DEFAULT_BUFFER_SIZE, read_directory_file, relocate

EPILOG = """\
example:
  mv /data/brain /archive/brain                      # moved by hand: the shard names are stale
  blockfs-rebase /archive/brain/brain.blockfs        # now they name /archive/brain/brain.blockfs.<i>

Every shard must be beside the directory file, under the base name it was stored with. Names
that are relative are rewritten too (as absolute paths), since the earlier blockfs opened them
against the working directory. A volume that already names the files beside it is left as it is.
--block-size only sets the buffer used to copy the index (the earlier tool's option); it does not
change the volume.
"""


def _positive_bytes(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive number of bytes; got {text!r}")
    return value


def beside_paths(path: str, names: tuple[str, ...]) -> list[str]:
    """Absolute paths of the files with the stored names' base names beside the directory file."""
    folder = os.path.dirname(os.path.abspath(path))
    return [os.path.join(folder, os.path.basename(name.rstrip("/"))) for name in names]


def _points_at(name: str, path: str) -> bool:
    """Whether the stored ``name`` is absolute and names the file ``path``."""
    if not os.path.isabs(name):
        return False
    try:
        return os.path.samefile(name, path)
    except OSError:
        return False


def rebase(path: str, buffer_size: int = DEFAULT_BUFFER_SIZE, silent: bool = True,
           prog: str = "blockfs-rebase") -> bool:
    """Point the shard names of the volume at ``path`` at the files beside it.

    Returns True if the directory file was rewritten, False if it already named those files.
    """
    path = os.fspath(path)
    header = read_directory_file(path)
    targets = beside_paths(path, header.names)
    missing = [(name, target) for name, target in zip(header.names, targets) if not os.path.isfile(target)]
    if missing:
        listed = "; ".join(f"{target} (stored as {name!r})" for name, target in missing)
        raise MissingShardError(f"{path}: {len(missing)} of {len(targets)} shard files are not beside the "
                                f"directory file: {listed}. Put them there, then run blockfs-rebase again; "
                                "nothing was changed.")
    if len(set(targets)) != len(targets):
        raise InvalidArgumentError(f"{path}: two shards have the same base name ({', '.join(header.names)}), so "
                                   "they cannot both be found beside the directory file; nothing was changed.")
    if all(_points_at(name, target) for name, target in zip(header.names, targets)):
        return False
    with byte_progress(header.index_bytes, silent, f"{prog}: copying the index") as bar:
        return relocate(path, targets, buffer_size=buffer_size, on_bytes=bar.update)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="blockfs-rebase", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Rewrite a blockfs directory file after its volume was moved by hand, so that its shard "
                    "names are the absolute paths of the shard files beside it.",
        epilog=EPILOG)
    parser.add_argument("index_file", help="the volume's directory (.blockfs) file")
    parser.add_argument("--block-size", type=_positive_bytes, default=DEFAULT_BUFFER_SIZE, metavar="N",
                        help="bytes per read when copying the index into the new file "
                             f"(default {DEFAULT_BUFFER_SIZE}); affects only speed")
    add_silent(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    """blockfs-rebase: point the shard names at the files beside the directory file."""
    parser = build_parser()

    def body(args: argparse.Namespace) -> int:
        changed = rebase(args.index_file, args.block_size, args.silent, parser.prog)
        if not args.silent:
            state = "shard names now point beside it" if changed else "already names the shards beside it; unchanged"
            print(f"{args.index_file}: {state}")
        return 0

    return run_tool(parser, body, argv)


if __name__ == "__main__":
    sys.exit(main())
