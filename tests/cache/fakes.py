"""Small fakes for the cache's seams: a scripted lister and a step-by-step scheduler."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from polaris_sdk.model import ServiceInstances, ServiceKey

Answer = ServiceInstances | None | BaseException | Callable[[ServiceKey, str], Any]


class FakeLister:
    """Answers discover_instances from a script, per service; records every call.

    An answer is a snapshot, None (200001), an exception to raise, or a
    function of (key, revision). When a script runs out, its last answer repeats.
    """

    def __init__(self) -> None:
        self.scripts: dict[ServiceKey, list[Answer]] = {}
        self.calls: list[tuple[ServiceKey, str]] = []
        self.lock = threading.Lock()

    def script(self, key: ServiceKey, *answers: Answer) -> None:
        with self.lock:
            self.scripts[key] = list(answers)

    def discover_instances(
        self, key: ServiceKey, revision: str = "", timeout: float | None = None
    ) -> ServiceInstances | None:
        with self.lock:
            self.calls.append((key, revision))
            script = self.scripts[key]
            answer = script.pop(0) if len(script) > 1 else script[0]
        if isinstance(answer, BaseException):
            raise answer
        if callable(answer):
            result: ServiceInstances | None = answer(key, revision)
            return result
        return answer


class _Handle:
    def __init__(self) -> None:
        self.cancelled = False

    def cancel(self) -> bool:
        self.cancelled = True
        return True


class ManualScheduler:
    """Runs nothing by itself: tests call :meth:`run_next` to run the oldest pending call."""

    def __init__(self) -> None:
        self.pending: list[tuple[float, Callable[..., Any], tuple[Any, ...], _Handle]] = []

    def call_later_in_slot(
        self, delay: float, fn: Callable[..., Any], *args: Any, slot: float = 0.02
    ) -> _Handle:
        handle = _Handle()
        self.pending.append((delay, fn, args, handle))
        return handle

    def live(self) -> list[float]:
        return [delay for delay, _, _, handle in self.pending if not handle.cancelled]

    def run_next(self) -> float:
        """Run the next live call; returns the delay it was scheduled with."""
        while self.pending:
            delay, fn, args, handle = self.pending.pop(0)
            if not handle.cancelled:
                then = fn(*args)
                if callable(then):  # a slotted task's continuation (Scheduler.call_in_slot)
                    then()
                return delay
        raise AssertionError("nothing scheduled")
