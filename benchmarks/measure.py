"""Small measuring tools shared by the benchmarks: repeated figures, memory backing, a peak-RSS sampler."""

from __future__ import annotations

import gc
import os
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import psutil

MB = 1e6
MIB = 2**20
#: A figure whose repeats spread more than this ((max - min) / min) is flagged, not quoted.
MAX_SPREAD = 0.20


@dataclass
class Figure:
    """Repeated measurements (seconds) of one thing: minimum, median and spread."""

    seconds: list[float] = field(default_factory=list)

    def add(self, seconds: float) -> None:
        self.seconds.append(seconds)

    @property
    def samples(self) -> int:
        return len(self.seconds)

    @property
    def min(self) -> float:
        return min(self.seconds)

    @property
    def median(self) -> float:
        return float(statistics.median(self.seconds))

    @property
    def spread(self) -> float:
        """(max - min) / min of the repeats."""
        return (max(self.seconds) - self.min) / self.min

    @property
    def steady(self) -> bool:
        return self.samples > 1 and self.spread <= MAX_SPREAD


def shown(figure: Figure | None, scale: float = 1000.0, digits: int = 0) -> str:
    """``min / median`` (times ``scale``: ms by default) and the spread, in Markdown; flagged when the
    repeats spread more than MAX_SPREAD."""
    if figure is None or not figure.samples:
        return "-"
    text = f"{figure.min * scale:,.{digits}f} / {figure.median * scale:,.{digits}f}"
    if figure.samples < 2:
        return text + " (1 run)"
    if figure.steady:
        return f"**{text}** ({figure.spread:.0%})"
    return f"{text} (spread {figure.spread:.0%}: FLAGGED)"


def back_memory(nbytes: int) -> float:
    """Touch ``nbytes`` of memory and free it; seconds taken.

    A virtual machine's guest pays for memory the host has not backed the first time it touches it
    (about 2 s per GiB here). And on a guest with free page reporting (virtio-balloon), 2 MiB blocks
    that stay free for a second or two are handed back to the host and cost that again: a new
    large array (the result of a full read) is cheap right after another was freed, and dear after
    a pause. Touching and freeing the memory just before a timed step puts every contender on the
    same footing: its allocations reuse pages the host has just backed.
    """
    start = time.perf_counter()
    chunk = 256 * MIB
    held = [np.ones(chunk // 8, np.uint64) for _ in range(max(1, -(-nbytes // chunk)))]
    del held
    gc.collect()
    return time.perf_counter() - start


def settle(nbytes: int = 0) -> None:
    """What runs before every timed step: dirty pages written out, garbage collected, and ``nbytes``
    (plus 256 MiB) of memory touched and freed (see :func:`back_memory`)."""
    os.sync()
    gc.collect()
    if nbytes:
        back_memory(nbytes + 256 * MIB)


def median(values: list[float]) -> float:
    return float(statistics.median(values))


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values, dtype=float), q))


def timed(action: Callable[[], object]) -> float:
    """Seconds that ``action()`` takes."""
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


class PeakRss(threading.Thread):
    """Peak resident set size of named processes, sampled every ``interval`` seconds.

    ``growth(name)`` is the peak minus the first sample: what the process added while it was
    watched. For a forked child the first sample includes the pages it shares with its parent, so
    growth, not the absolute figure, is what it used itself. Processes may be added while it runs.
    """

    def __init__(self, interval: float = 0.02):
        super().__init__(daemon=True, name="peak-rss")
        self.interval = interval
        self._processes: dict[str, psutil.Process] = {}
        self.first: dict[str, int] = {}
        self.peak: dict[str, int] = {}
        self._lock = threading.Lock()
        self._done = threading.Event()

    def watch(self, name: str, pid: int) -> None:
        try:
            process = psutil.Process(pid)
        except psutil.NoSuchProcess:
            return
        with self._lock:
            self._processes[name] = process
        self._sample_one(name, process)

    def _sample_one(self, name: str, process: psutil.Process) -> None:
        try:
            rss = process.memory_info().rss
        except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
            return
        self.first.setdefault(name, rss)
        self.peak[name] = max(self.peak.get(name, 0), rss)

    def sample(self) -> None:
        with self._lock:
            watched = list(self._processes.items())
        for name, process in watched:
            self._sample_one(name, process)

    def run(self) -> None:
        while not self._done.wait(self.interval):
            self.sample()

    def stop(self) -> None:
        self._done.set()
        if self.is_alive():
            self.join()
        self.sample()

    def growth(self, name: str) -> int:
        return self.peak.get(name, 0) - self.first.get(name, 0)

    def max_growth(self, prefix: str) -> int:
        """The largest growth among the processes whose name starts with ``prefix``."""
        return max((self.growth(n) for n in self.peak if n.startswith(prefix)), default=0)
