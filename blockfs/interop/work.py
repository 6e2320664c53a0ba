"""Running many small I/O tasks on threads with a bounded number in flight (bounded memory)."""

from __future__ import annotations

import os
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable, Iterable, Iterator, TypeVar

T = TypeVar("T")
R = TypeVar("R")


def bounded_map(function: Callable[[T], R], items: Iterable[T], workers: int | None = None) -> Iterator[R]:
    """``function`` over ``items`` on ``workers`` threads, results in order, at most 2 x workers pending."""
    workers = workers or os.cpu_count() or 1
    pending: deque[Future[R]] = deque()
    with ThreadPoolExecutor(workers, "blockfs-interop") as pool:
        try:
            for item in items:
                pending.append(pool.submit(function, item))
                if len(pending) >= 2 * workers:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for future in pending:
                future.cancel()
