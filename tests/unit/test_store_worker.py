"""The store's own thread: writes in order, kept while they fail; calls between retries; a hang shown."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from rollout.store_worker import STALL_AFTER_S, StoreWorker


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Flaky:
    """A store seam: writes append to ``done`` unless ``broken``."""

    def __init__(self) -> None:
        self.broken = False
        self.done: list[str] = []

    def write(self, name: str) -> Callable[[], str]:
        def run() -> str:
            if self.broken:
                raise OSError("disk I/O error")
            self.done.append(name)
            return name

        return run


def wait_for(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_failing_writes_are_kept_in_order_and_continue_once_the_store_is_back() -> None:
    clock, store = Clock(), Flaky()
    worker = StoreWorker(clock)
    heard: list[Any] = []
    worker.write(store.write("a"), then=heard.append)
    store.broken = True
    clock.now += 1
    worker.write(store.write("b"), then=heard.append)
    worker.write(store.write("c"), then=heard.append)
    assert store.done == ["a"] and heard == ["a"] and worker.pending == 2
    assert worker.problem(clock()) == ("OSError: disk I/O error", 1001.0)
    worker.retry()  # still broken: nothing moves, nothing is lost
    assert worker.pending == 2
    store.broken = False
    worker.write(store.write("d"))  # queued behind the kept ones, not run ahead of them
    assert store.done == ["a"]
    worker.retry()
    assert store.done == ["a", "b", "c", "d"] and heard == ["a", "b", "c"]
    assert worker.problem(clock()) is None and worker.pending == 0


def test_rows_past_the_bound_are_dropped_and_counted_but_events_never() -> None:
    store = Flaky()
    worker = StoreWorker(Clock(), max_rows=2)
    store.broken = True
    for name in ("r1", "r2", "r3", "r4"):
        worker.write(store.write(name), row=True)
    worker.write(store.write("event"))
    assert worker.dropped == 2 and worker.pending == 3
    store.broken = False
    worker.retry()
    assert store.done == ["r1", "r2", "event"]


def test_a_hung_store_holds_up_only_its_own_thread_and_shows_as_a_problem() -> None:
    clock = Clock()
    delivered: list[Callable[[], None]] = []
    worker = StoreWorker(clock, background=True, deliver=delivered.append)
    release = threading.Event()
    started = threading.Event()

    def hang() -> str:
        started.set()
        release.wait(30)
        return "hung"

    try:
        worker.write(hang, then=lambda result: None)
        worker.write(lambda: "after")
        answer = worker.call(lambda: "read")
        assert started.wait(10)  # the caller was never held up: it is already here
        assert worker.problem(clock()) is None and worker.stalled(clock()) is None
        clock.now += STALL_AFTER_S
        problem = worker.problem(clock())
        assert problem is not None and "has not answered for 5 s" in problem[0]
        assert worker.stalled(clock()) == problem  # a caller need not queue behind it to know
        assert not answer.done() and worker.pending == 2  # calls wait behind a healthy store's writes
        release.set()
        assert answer.result(10) == "read"
        wait_for(lambda: worker.pending == 0)
        assert worker.problem(clock()) is None and len(delivered) == 1  # continuations go to `deliver`
    finally:
        release.set()
        worker.close()


def test_calls_run_between_the_retries_of_a_failing_write() -> None:
    clock, store = Clock(), Flaky()
    worker = StoreWorker(clock, background=True)
    try:
        store.broken = True
        worker.write(store.write("window"))
        wait_for(lambda: worker.error is not None)
        assert worker.problem(clock()) is not None and worker.stalled(clock()) is None  # calls still run
        assert worker.call(lambda: "read while writes fail").result(10) == "read while writes fail"
        failed = worker.call(lambda: 1 / 0)
        with pytest.raises(ZeroDivisionError):
            failed.result(10)
        assert worker.pending == 1 and store.done == []
        store.broken = False
        clock.now += 60  # past any back-off
        wait_for(lambda: worker.pending == 0)
        assert store.done == ["window"] and worker.error is None
    finally:
        worker.close()
