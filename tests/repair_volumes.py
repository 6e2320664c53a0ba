"""Small volumes for the repair tests: written, damaged on purpose, and read back from their files.

What a volume holds is judged from its files with ``spec_decoder`` (which shares no code with
blockfs) and by reading every block through the library.
"""

from __future__ import annotations

import contextlib
import functools
import re
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np

import spec_decoder
from crash_writer import DTYPE, block_content
from fixtures import rewrite_names
from helpers import block_origins, console

import blockfs
from blockfs import Directory

run_blockfs = functools.partial(console, "blockfs")

Origin = tuple[int, int, int]


def build(path: Path, shape: tuple[int, int, int] = (64, 64, 96), block: int = 32, n_files: int = 2,
          rewritten: tuple[Origin, ...] = ()) -> dict[Origin, np.ndarray]:
    """A volume with records at ``path``, every block written once and those in ``rewritten`` twice;
    returns what each block holds. Its shard names are then stored relative (``<name>.<i>``), as
    the earlier release stored them, so a copy of its folder is a volume of its own."""
    z, y, x = shape
    d = Directory(x, y, z, DTYPE, str(path), n_filenames=n_files, x_block_size=block, y_block_size=block,
                  z_block_size=block).create()
    content = {}
    for version, origins in ((1, block_origins(shape, block)), (2, rewritten)):
        for origin in origins:
            content[origin] = block_content(d.layout.entry_index(*origin), version, d.get_block_size(*origin))
            d.write_block(content[origin], *origin)
    d.close()
    rewrite_names(path, [f"{path.name}.{i}" for i in range(n_files)])
    return content


def payload(path: Path, origin: Origin) -> tuple[Path, int, int]:
    """(shard, payload offset, payload size) of the block at ``origin``, from the index file's bytes."""
    meta, d, index = spec_decoder.read_index(path)
    e = sum(c // meta[f"{a}BlockSize"] * meta[f"{a}Stride"] for c, a in zip(origin, "XYZ"))
    offset, size = spec_decoder.decode_entry(meta, d, index, e)
    name = meta["BlockFilenames"][e % len(meta["BlockFilenames"])]
    return path.parent / Path(name).name, offset, size


def flip(path: Path, offset: int) -> None:
    """Invert every bit of the byte at ``offset``."""
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        assert len(byte) == 1, f"{path} has no byte at {offset}"
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0xFF]))


def damage(path: Path, origin: Origin) -> None:
    """Flip a byte in the middle of the newest copy of the block at ``origin``."""
    shard, offset, size = payload(path, origin)
    flip(shard, offset + size // 2)


def state(path: Path) -> tuple[list[tuple[int, int]], set[Origin]]:
    """(every entry position's (offset, size), the blocks the header records as lost), from the index file."""
    meta, d, index = spec_decoder.read_index(path)
    grid = [-(-meta[f"{a}Extent"] // meta[f"{a}BlockSize"]) for a in "XYZ"]
    n_entries = sum((g - 1) * meta[f"{a}Stride"] for g, a in zip(grid, "XYZ")) + 1
    lost = {tuple(b) for b in meta.get("BlockfsLost", {}).get("blocks", [])}
    return [spec_decoder.decode_entry(meta, d, index, e) for e in range(n_entries)], lost


@contextlib.contextmanager
def opened(path: Path, mode: str = "r") -> Iterator[Directory]:
    """The volume opened through the library; a recorded loss is expected here, so its warning is not an error."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", blockfs.LostBlocksWarning)
        volume = Directory.open(str(path), mode)
    try:
        yield volume
    finally:
        volume.close()


def readable(path: Path) -> dict[Origin, np.ndarray]:
    """Every block that reads without an error (a verified read), with what it reads as."""
    blocks = {}
    with Directory.open(str(path)) as volume:
        for origin in block_origins(volume.shape, (volume.z_block_size, volume.y_block_size, volume.x_block_size)):
            with contextlib.suppress(Exception):
                blocks[origin] = volume.read_block(*origin)
    return blocks


def names_block(text: str, origin: Origin) -> bool:
    """Whether one line of ``text`` names the block whose first voxel is ``origin`` (x, y, z)."""
    x, y, z = origin
    pattern = re.compile(rf"\bx\s*=\s*{x}\b.*\by\s*=\s*{y}\b.*\bz\s*=\s*{z}\b")
    return any(pattern.search(line) for line in text.splitlines())
