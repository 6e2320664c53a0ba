"""blockfs.threads.ordered_map: results in order, a bounded number of calls ahead, cancelled when closed."""

from __future__ import annotations

import threading
import time

import pytest

from blockfs.threads import ordered_map


def test_results_come_in_the_order_of_the_items() -> None:
    def slow_first(i: int) -> int:
        time.sleep(0.02 * (5 - i))  # later items finish first
        return i * i

    assert list(ordered_map(slow_first, range(6), workers=3)) == [i * i for i in range(6)]


def test_at_most_in_flight_calls_run_ahead_of_the_consumer() -> None:
    started: list[int] = []
    lock = threading.Lock()

    def record(i: int) -> int:
        with lock:
            started.append(i)
        return i

    results = ordered_map(record, range(100), workers=2, in_flight=3)
    assert next(results) == 0
    time.sleep(0.1)
    assert len(started) <= 3  # the first result was taken when the third call was submitted
    results.close()
    time.sleep(0.1)
    assert len(started) <= 3  # closing submits nothing more


def test_an_error_in_a_call_reaches_the_consumer() -> None:
    def fail_on_2(i: int) -> int:
        if i == 2:
            raise ValueError("item 2")
        return i

    results = ordered_map(fail_on_2, range(5), workers=2)
    assert [next(results), next(results)] == [0, 1]
    with pytest.raises(ValueError, match="item 2"):
        next(results)
