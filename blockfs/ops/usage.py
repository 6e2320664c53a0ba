"""How much of a shard the index points at: the shard accounting shared by ``blockfs check`` and ``blockfs info``."""

from __future__ import annotations

import numpy as np


def referenced_bytes(starts: np.ndarray, ends: np.ndarray) -> int:
    """Bytes of a shard that index entries point at: the union of their [start, end) ranges.

    Overlapping entries (a damaged index) count once. ``unreferenced = shard size - this``, the
    one definition shared by ``blockfs check`` and ``blockfs info``.
    """
    if not starts.size:
        return 0
    order = np.argsort(starts, kind="stable")
    starts, ends = starts[order].astype(np.int64), ends[order].astype(np.int64)
    reach = np.maximum.accumulate(ends)
    previous = np.concatenate([[0], reach[:-1]])
    return int(np.maximum(0, ends - np.maximum(starts, previous)).sum())
