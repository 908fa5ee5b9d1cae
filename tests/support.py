"""Helpers shared by the tests: waiting on conditions, never sleeping to synchronise."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_until(
    predicate: Callable[[], T], timeout: float = 10.0, interval: float = 0.01, message: str = ""
) -> T:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(message or f"condition not met within {timeout}s: {predicate}")
        time.sleep(interval)


def live_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t is not threading.main_thread() and t.is_alive()}


def assert_no_new_threads(before: set[threading.Thread], timeout: float = 1.0) -> None:
    """Every polaris thread and non-daemon thread started since ``before`` has ended.

    close() joins the threads it owns before it returns, so the grace is short:
    it covers a thread between its last statement and its exit, or a server's
    connection thread noticing that its client hung up. A longer one would let
    a close() that returns with its threads still running pass.
    """

    def leftover() -> set[threading.Thread]:
        # Our threads are all named "polaris-..."; grpc's own daemon pollers are
        # process-wide and not ours to stop, but no non-daemon thread may stay.
        return {t for t in live_threads() - before if t.name.startswith("polaris") or not t.daemon}

    deadline = time.monotonic() + timeout
    while leftover():
        if time.monotonic() >= deadline:
            names = sorted(t.name for t in leftover())
            raise AssertionError(f"threads left running: {names}")
        time.sleep(0.02)


class FakeClock:
    """A monotonic clock that moves only when told to: ``advance(seconds)``.

    Pass it as a scheduler's ``clock`` and tell it the scheduler with
    :meth:`wakes`, so the scheduler's timer looks at the new time after every
    advance. Thread-safe.
    """

    def __init__(self, start: float = 1000.0) -> None:
        self._lock = threading.Lock()
        self._now = start
        self._wakers: list[Callable[[], None]] = []

    def __call__(self) -> float:
        with self._lock:
            return self._now

    def wakes(self, waker: Callable[[], None]) -> None:
        """Call ``waker()`` after every advance (a scheduler's ``wake``)."""
        with self._lock:
            self._wakers.append(waker)

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("a monotonic clock never goes back")
        with self._lock:
            self._now += seconds
            wakers = list(self._wakers)
        for wake in wakers:
            wake()
