"""A function mapped over items on a thread pool, results in order, with a bounded number in flight."""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Generator, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")


def ordered_map(function: Callable[[T], R], items: Iterable[T], workers: int | None = None,
                in_flight: int | None = None, name: str = "blockfs") -> Generator[R, None, None]:
    """``function`` over ``items`` on ``workers`` threads (default: the CPUs), yielded in the order of
    ``items``, with at most ``in_flight`` calls submitted and not yet yielded (default: 2 x workers).

    Closing the generator early cancels the calls not yet started.
    """
    workers = workers or os.cpu_count() or 1
    limit = in_flight or 2 * workers
    pending: deque[Future[R]] = deque()
    with ThreadPoolExecutor(workers, name) as pool:
        try:
            for item in items:
                pending.append(pool.submit(function, item))
                if len(pending) >= limit:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for future in pending:
                future.cancel()
