"""Rewriting a directory file's shard names, atomically, keeping every other byte that matters.

A relocated directory file differs from its source only in the value of ``BlockFilenames``: the
rest of the JSON text (format keys, bit widths, strides, application metadata, key order) is
copied character for character, D becomes 16 + the new M, and every byte after the old D (the
whole index, however long the file is) follows the new header unchanged. The new file is written
beside its target, locked (an exclusive ``flock``, so no writer can start on it), fsynced and
renamed into place, so readers see the old file or the new one, never a mixture.

Used by ``blockfs-mv``, ``blockfs-cp``, ``blockfs-rebase`` and ``blockfs info``.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import re
import stat
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from .. import format as fmt
from ..errors import FormatError, InvalidArgumentError, VolumeBusyError, VolumeExistsError
from ..format import DirectoryFile, read_directory_file
from ..storage import fsync_folder, named, publish_file, pwrite_all, resolve_shard_path

#: Bytes copied per read when carrying the index over to the new file.
DEFAULT_BUFFER_SIZE = 1 << 20
FILENAMES_KEY = "BlockFilenames"
#: errno values with which ``flock`` says "no locks on this file system": the file is used unlocked.
NO_LOCKS = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS)
_WHITESPACE = re.compile(r"[ \t\n\r]*")


@dataclass(frozen=True)
class Shard:
    """Where one stored shard name leads."""

    name: str
    path: str
    exists: bool
    fallback: bool
    looked_at: tuple[str, ...]


def locate_shards(directory_path: str, names: Sequence[str]) -> list[Shard]:
    """Resolve every stored name by the reading rules of docs/FORMAT.md section 9.6.

    ``fallback`` marks a name found only as the same base name beside the directory file (a
    stale name); Directory warns about those, callers here report them their own way.
    """
    shards = []
    for name in names:
        path, looked_at, fallback = resolve_shard_path(directory_path, name)
        exists = os.path.isfile(path)
        shards.append(Shard(name, path, exists, exists and fallback, tuple(looked_at)))
    return shards


def _value_span(text: str, key: str, where: str) -> tuple[int, int]:
    """Start and end, in ``text``, of the value of the top-level ``key`` of a JSON object."""
    decoder = json.JSONDecoder()
    spans = []

    def skip(i: int) -> int:
        return _WHITESPACE.match(text, i).end()  # type: ignore[union-attr]

    try:
        i = skip(0)
        if text[i:i + 1] != "{":
            raise ValueError("not an object")
        i = skip(i + 1)
        while text[i:i + 1] != "}":
            if text[i:i + 1] != '"':
                raise ValueError(f"expected a key at character {i}")
            name, i = decoder.raw_decode(text, i)
            i = skip(i)
            if text[i:i + 1] != ":":
                raise ValueError(f"expected ':' at character {i}")
            i = skip(i + 1)
            _, end = decoder.raw_decode(text, i)
            if name == key:
                spans.append((i, end))
            i = skip(end)
            if text[i:i + 1] == ",":
                i = skip(i + 1)
            elif text[i:i + 1] != "}":
                raise ValueError(f"expected ',' or '}}' at character {i}")
    except ValueError as exc:
        raise FormatError(f"{where}: the JSON header cannot be rewritten ({exc}); the header is damaged.") from None
    if len(spans) != 1:
        raise FormatError(f"{where}: the JSON header holds {len(spans)} {key!r} keys; expected exactly one.")
    return spans[0]


def header_with_names(source: DirectoryFile, names: Sequence[str]) -> bytes:
    """The new header (preamble and JSON, D = 16 + M) of ``source`` with shard names ``names``.

    Only the text of the ``BlockFilenames`` value changes; the result is checked to be a valid
    header whose JSON equals the old one with the new names.
    """
    names = tuple(os.fspath(n) for n in names)
    if len(names) != len(source.names):
        raise InvalidArgumentError(f"{source.path}: the volume has {len(source.names)} shards; "
                                   f"got {len(names)} new names.")
    if not all(names):
        raise InvalidArgumentError(f"{source.path}: shard names must be non-empty; got {list(names)!r}.")
    start, end = _value_span(source.json_text, FILENAMES_KEY, source.path)
    text = (source.json_text[:start] + json.dumps(list(names)) + source.json_text[end:]).encode("utf-8")
    header = fmt.PREAMBLE.pack(fmt.MAGIC, len(text), fmt.PREAMBLE.size + len(text)) + text
    fmt.decode_header(header, source.path)
    expected = json.loads(source.json_text)
    expected[FILENAMES_KEY] = list(names)
    if json.dumps(json.loads(text), sort_keys=True) != json.dumps(expected, sort_keys=True):
        raise FormatError(f"{source.path}: rewriting the shard names changed other header values; "
                          "the header is not rewritten.")
    return header


def _same_file(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.abspath(a) == os.path.abspath(b)


def new_locked_file(path: str) -> int:
    """Create the new file ``path`` (never replacing one) and lock it exclusively; returns its descriptor.

    Where the file system has no locks, the file is used unlocked, as writers do (:mod:`blockfs.locking`).
    """
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise VolumeBusyError(f"{path}: another process locked this file as soon as it was made; run again once "
                              "that process is done.") from None
    except OSError as exc:
        if exc.errno not in NO_LOCKS:
            os.close(fd)
            os.unlink(path)
            raise
    return fd


def write_index(current: DirectoryFile, names: Sequence[str], fd: int, where: str,
                buffer_size: int = DEFAULT_BUFFER_SIZE, on_bytes: Callable[[int], object] | None = None) -> None:
    """Write the directory file ``current`` with shard names ``names`` into the empty file open as ``fd``.

    The file gets the permissions of ``current`` and is fsynced; an error writing it names ``where``.
    """
    header = header_with_names(current, names)
    with open(current.path, "rb") as src:
        os.fchmod(fd, stat.S_IMODE(os.fstat(src.fileno()).st_mode))
        src.seek(current.directory_offset)
        try:
            pwrite_all(fd, header, 0)
            position = len(header)
            while chunk := src.read(buffer_size):
                pwrite_all(fd, chunk, position)
                position += len(chunk)
                if on_bytes is not None:
                    on_bytes(len(chunk))
            os.fsync(fd)
        except OSError as exc:
            raise named(exc, where) from None


@contextlib.contextmanager
def relocated(source: str, names: Sequence[str], target: str | None = None, *, exclusive: bool = False,
              buffer_size: int = DEFAULT_BUFFER_SIZE,
              on_bytes: Callable[[int], object] | None = None) -> Iterator[bool]:
    """:func:`relocate`, holding the new directory file locked exclusively until the block ends.

    An offline operation ends inside the block, so that no writer starts on the new file before it is done.
    """
    if buffer_size < 1:
        raise InvalidArgumentError(f"buffer_size must be a positive number of bytes; got {buffer_size!r}.")
    source = os.fspath(source)
    target = source if target is None else os.fspath(target)
    current = read_directory_file(source)
    in_place = _same_file(source, target)
    if in_place and exclusive:
        raise VolumeExistsError(f"{target}: already exists; it was not overwritten.")
    if in_place and tuple(os.fspath(n) for n in names) == current.names:
        yield False
        return
    if exclusive and os.path.lexists(target):
        raise VolumeExistsError(f"{target}: already exists; it was not overwritten.")
    folder, name = os.path.split(os.path.abspath(target))
    temporary = os.path.join(folder, f".{name}.{uuid.uuid4().hex[:12]}.tmp")
    fd = new_locked_file(temporary)
    try:
        write_index(current, names, fd, target, buffer_size, on_bytes)
        publish_file(temporary, target, exclusive)
        fsync_folder(folder)
        yield True
    finally:
        os.close(fd)
        if os.path.lexists(temporary):
            os.unlink(temporary)


def relocate(source: str, names: Sequence[str], target: str | None = None, *, exclusive: bool = False,
             buffer_size: int = DEFAULT_BUFFER_SIZE, on_bytes: Callable[[int], object] | None = None) -> bool:
    """Write the directory file ``source`` to ``target`` (default: over itself) with new shard names.

    The index is carried over whole: every byte from the old D to the end of the file follows the
    new header. The file is built beside ``target``, fsynced and renamed into place, with the
    permissions of ``source``. With ``exclusive`` an existing ``target`` is an error
    (:class:`VolumeExistsError`) and is left alone. ``on_bytes(n)`` is called as index bytes are
    copied. Returns False, writing nothing, when ``target`` is ``source`` and the names are
    already ``names``.
    """
    with relocated(source, names, target, exclusive=exclusive, buffer_size=buffer_size, on_bytes=on_bytes) as done:
        return done
