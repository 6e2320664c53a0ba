"""Progress bars for long operations (tqdm), off when ``silent``."""

from __future__ import annotations

from typing import Iterable, Iterator, TypeVar

from tqdm import tqdm

T = TypeVar("T")


def progress(items: Iterable[T], silent: bool, desc: str, total: int | None = None, unit: str = "it") -> Iterator[T]:
    """A tqdm progress bar over ``items`` unless ``silent``."""
    return iter(tqdm(items, desc=desc, total=total, unit=unit, disable=silent))


def byte_progress(total: int, silent: bool, desc: str) -> tqdm:
    """A tqdm progress bar counting bytes (use as a context manager; ``update(n)`` per chunk)."""
    return tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, disable=silent, desc=desc)
