"""Point a hand-moved volume's shard names at the shard files beside it.

After a volume was moved with plain ``mv`` or ``cp -r``, its directory file still names the shards
where they used to be. :func:`rebase` rewrites the names to the absolute paths of the files with the
same base names in the directory file's folder. The rewrite goes through
:func:`blockfs.ops.relocate.relocate`: the whole index is carried over whatever the header's new
length, and the new file replaces the old one atomically. A volume whose names are already the
absolute paths of the files beside it is left untouched (not even rewritten).

It is an offline operation: it holds the index exclusively (:mod:`blockfs.locking`) from start to end,
and the new index from before it takes the old one's place, so it refuses to run while any process has
the volume open for writing (:class:`~blockfs.errors.VolumeBusyError`), and no writer starts meanwhile.
"""

from __future__ import annotations

import os

from .. import locking
from ..errors import InvalidArgumentError, MissingShardError
from ..progress import byte_progress
from .relocate import DEFAULT_BUFFER_SIZE, read_directory_file, relocated


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
    with locking.exclusively(path, prog):
        header = read_directory_file(path)
        targets = beside_paths(path, header.names)
        _check_beside(path, header.names, targets)
        if all(_points_at(name, target) for name, target in zip(header.names, targets)):
            return False
        with byte_progress(header.index_bytes, silent, f"{prog}: copying the index") as bar, \
                relocated(path, targets, buffer_size=buffer_size, on_bytes=bar.update) as changed:
            return changed


def _check_beside(path: str, names: tuple[str, ...], targets: list[str]) -> None:
    """Raise unless every shard is a file beside the directory file, each under its own base name."""
    missing = [(name, target) for name, target in zip(names, targets) if not os.path.isfile(target)]
    if missing:
        listed = "; ".join(f"{target} (stored as {name!r})" for name, target in missing)
        raise MissingShardError(f"{path}: {len(missing)} of {len(targets)} shard files are not beside the "
                                f"directory file: {listed}. Put them there, then run blockfs-rebase again; "
                                "nothing was changed.")
    if len(set(targets)) != len(targets):
        raise InvalidArgumentError(f"{path}: two shards have the same base name ({', '.join(names)}), so "
                                   "they cannot both be found beside the directory file; nothing was changed.")
