"""Small measuring tools shared by the benchmarks: medians, percentiles, a peak-RSS sampler."""

from __future__ import annotations

import statistics
import threading
import time
from typing import Callable

import numpy as np
import psutil

MB = 1e6
MIB = 2**20


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
