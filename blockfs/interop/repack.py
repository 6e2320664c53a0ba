"""Repack a volume or pyramid as OME-Zarr without recompressing: full blocks' stored bytes are copied as they are.

Zarr v3 (OME-Zarr 0.5) stores shards of N x N x N blocks (``sharding_indexed``, inner chunks = blocks
with bytes + blosc); zarr v2 (OME-Zarr 0.4) stores one file per block. Only edge blocks are
decompressed, padded and re-encoded (see :mod:`.zarr_format`). Never-written blocks are left out.

The output folder carries ``blockfs-to-zarr.incomplete`` from the start until every file is written
and fsynced, and its metadata documents (the root's last) are written after the chunks, so an
interrupted run leaves no valid zarr hierarchy and a re-run replaces it.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Callable, Iterator
from itertools import groupby
from typing import Any

from tqdm import tqdm

from ..errors import InvalidArgumentError
from ..progress import disabled
from ..storage import fsync_folder, naming
from ..threads import ordered_map
from ..volume import Volume
from .shard import encode_shard
from .tools import has_marker, marked_folder, replaceable
from .zarr_format import SourceLike, array_metadata, chunk_bytes, group_metadata, open_source, written_chunks

DEFAULT_SHARD_BLOCKS = 4
ZARR_MARKERS = ("zarr.json", ".zgroup", ".zarray")
TOOL = "blockfs to-zarr"


def is_zarr(path: str) -> bool:
    """Whether ``path`` is a folder holding zarr metadata at its top."""
    return os.path.isdir(path) and any(os.path.exists(os.path.join(path, m)) for m in ZARR_MARKERS)


def _write(path: str, pieces: list[bytes]) -> int:
    """Write ``pieces`` as the file ``path`` and fsync it; return its size. An OSError names the file."""
    with naming(path):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.writelines(pieces)
            f.flush()
            os.fsync(f.fileno())
    return sum(map(len, pieces))


def _fsync_folders(root: str) -> None:
    """fsync every folder under ``root``, deepest first, so the files written there are found after a power cut."""
    for folder, _, _ in os.walk(root, topdown=False):
        fsync_folder(folder)


def _write_json(path: str, document: dict[str, Any]) -> None:
    _write(path, [json.dumps(document, indent=2).encode("utf-8")])


def _write_chunk(path: str, volume: Volume, chunk: tuple[int, int, int]) -> int:
    """Write the chunk file of a written block."""
    data = chunk_bytes(volume, chunk)
    assert data is not None  # only a never-written block has no bytes
    return _write(path, [data])


def _chunk_tasks(volume: Volume, folder: str, zarr_format: int) -> Iterator[tuple[Callable[[], int], int]]:
    """(task writing one chunk file, 1) for every written block."""
    for chunk in written_chunks(volume):
        name = ".".join(map(str, chunk)) if zarr_format == 2 else os.path.join("c", *map(str, chunk))
        yield functools.partial(_write_chunk, os.path.join(folder, name), volume, chunk), 1


def _shard_tasks(volume: Volume, folder: str, n: int) -> Iterator[tuple[Callable[[], int], int]]:
    """(task writing one shard file, its written blocks) for every shard holding a written block."""
    def shard_of(chunk: tuple[int, int, int]) -> tuple[int, ...]:
        return tuple(c // n for c in chunk)

    def write(shard: tuple[int, ...], chunks: list[tuple[int, int, int]]) -> int:
        inner = {}
        for chunk in chunks:
            data = chunk_bytes(volume, chunk)
            if data is not None:
                iz, iy, ix = (c - s * n for c, s in zip(chunk, shard))
                inner[(iz * n + iy) * n + ix] = data
        return _write(os.path.join(folder, "c", *map(str, shard)), encode_shard(inner, n ** 3)) if inner else 0

    for _, plane in groupby(written_chunks(volume), key=lambda c: c[0] // n):  # n planes of blocks at a time
        by_shard: dict[tuple[int, ...], list[tuple[int, int, int]]] = {}
        for chunk in plane:
            by_shard.setdefault(shard_of(chunk), []).append(chunk)
        for shard, chunks in by_shard.items():
            yield functools.partial(write, shard, chunks), len(chunks)


def to_zarr(source: SourceLike, dest: str | os.PathLike, zarr_format: int = 3, shard_blocks: int | None = None,
            overwrite: bool = False, workers: int | None = None, silent: bool = True) -> int:
    """Write a volume or pyramid folder as an OME-Zarr image at ``dest``; return the bytes of chunk data written.

    ``shard_blocks`` (zarr v3 only) is the shard's side in blocks: by default 4, 0 for one file per
    block. Runs on ``workers`` threads with a bounded number of blocks in memory.
    """
    dest = os.fspath(dest)
    if shard_blocks is None:
        shard_blocks = DEFAULT_SHARD_BLOCKS if zarr_format == 3 else 0
    if isinstance(shard_blocks, bool) or not isinstance(shard_blocks, int) or shard_blocks < 0:
        raise InvalidArgumentError(f"{dest}: shard_blocks must be a whole number of blocks (0: no sharding); "
                                   f"got {shard_blocks!r}.")
    opened = open_source(source)
    documents = {f"{i}/" + (".zarray" if zarr_format == 2 else "zarr.json"): array_metadata(level, zarr_format,
                                                                                            shard_blocks or None)
                 for i, level in enumerate(opened.levels)}
    documents.update(group_metadata(opened, zarr_format))
    replaceable(dest, overwrite, is_zarr, has_marker(TOOL))
    total = sum(sum(1 for _ in written_chunks(level)) for level in opened.levels)
    tasks = (task for i, level in enumerate(opened.levels) for task in (
        _chunk_tasks(level, os.path.join(dest, str(i)), zarr_format) if not shard_blocks
        else _shard_tasks(level, os.path.join(dest, str(i)), shard_blocks)))
    written = 0
    with marked_folder(dest, TOOL):
        with tqdm(total=total, unit="block", desc="to-zarr", disable=disabled(silent)) as bar:
            for nbytes, blocks in ordered_map(lambda task: (task[0](), task[1]), tasks, workers):
                written += nbytes
                bar.update(blocks)
        for key, document in documents.items():  # metadata last, the root's last of all
            _write_json(os.path.join(dest, key), document)
        _fsync_folders(dest)
    return written
