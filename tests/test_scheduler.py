"""The scheduler: ordering, cancelling, supervision, closing."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from polaris_sdk import ClosedError
from polaris_sdk.scheduler import SLOT, WIDE_SLOT, Scheduler, slot_for
from tests.support import FakeClock, wait_until


@pytest.fixture
def scheduler(no_thread_leak: None) -> Iterator[Scheduler]:
    s = Scheduler(workers=2)
    yield s
    s.close()


def test_tasks_run_in_due_order(scheduler: Scheduler) -> None:
    ran: list[str] = []
    done = threading.Event()
    scheduler.call_later(0.06, lambda: (ran.append("c"), done.set()))
    scheduler.call_later(0.02, ran.append, "a")
    scheduler.call_later(0.04, ran.append, "b")
    assert done.wait(5)
    wait_until(lambda: len(ran) == 3)
    assert ran == ["a", "b", "c"]


def test_call_at_uses_the_monotonic_clock(scheduler: Scheduler) -> None:
    ran = threading.Event()
    handle = scheduler.call_at(time.monotonic() + 0.01, ran.set)
    assert ran.wait(5)
    assert time.monotonic() >= handle.when


def test_timers_follow_an_injected_clock(no_thread_leak: None) -> None:
    clock = FakeClock()
    s = Scheduler(workers=2, clock=clock)
    clock.wakes(s.wake)
    ran: list[str] = []
    try:
        # Far enough ahead that only the clock's wake-up, not the timer's own
        # wait in real time, can run them within the test's deadlines.
        s.call_later(600, ran.append, "later")
        handle = s.call_later(60, ran.append, "soon")
        assert handle.when == clock() + 60
        assert s.clock is clock
        # A marker due now proves the timer has looked, and left both waiting.
        now = threading.Event()
        s.call_at(clock(), now.set)
        assert now.wait(5)
        assert ran == []
        clock.advance(60)
        wait_until(lambda: ran == ["soon"])
        clock.advance(539.9)
        marker = threading.Event()
        s.call_at(clock(), marker.set)
        assert marker.wait(5)
        assert ran == ["soon"]  # not due yet at 599.9 s
        clock.advance(0.1)
        wait_until(lambda: ran == ["soon", "later"])
    finally:
        s.close()


@pytest.mark.parametrize("slot", [SLOT, WIDE_SLOT])
def test_slotted_tasks_run_at_their_slot_in_turn_on_one_worker(
    no_thread_leak: None, slot: float
) -> None:
    clock = FakeClock()
    s = Scheduler(workers=4, clock=clock)
    clock.wakes(s.wake)
    ran: list[tuple[str, threading.Thread]] = []

    def note(name: str) -> None:
        ran.append((name, threading.current_thread()))

    try:
        start = clock() - clock() % slot + 60  # a slot boundary a minute ahead
        for name, share in (("b", 0.6), ("a", 0.2), ("c", 0.95)):
            s.call_in_slot(start + share * slot, note, name, slot=slot)
        s.call_in_slot(start + slot + 0.001, note, "next slot", slot=slot)
        marker = threading.Event()
        s.call_at(clock(), marker.set)
        assert marker.wait(5)
        assert ran == []

        clock.advance(start - clock())  # the slot's start: up to one slot early

        wait_until(lambda: len(ran) == 3)
        assert [name for name, _ in ran] == ["b", "a", "c"]  # in the order scheduled
        assert len({thread for _, thread in ran}) == 1
        clock.advance(slot - SLOT)
        marker = threading.Event()
        s.call_at(clock(), marker.set)
        assert marker.wait(5)
        assert len(ran) == 3  # the next slot has not begun
        clock.advance(SLOT)
        wait_until(lambda: len(ran) == 4)
    finally:
        s.close()


@pytest.mark.parametrize(
    ("period", "delay", "width"),
    [
        (2.0, 2.0, WIDE_SLOT),  # a refresh interval: the widest grid
        (2.0, 1.7, WIDE_SLOT),  # a jittered refresh keeps it
        (5.0, 5.0, WIDE_SLOT),  # a heartbeat TTL
        (1.0, 1.0, 2 * SLOT),  # a twentieth, rounded down to the 20 ms grid
        (0.2, 0.2, SLOT),  # never narrower than SLOT
        (30.0, 0.05, SLOT),  # a quick retry is not moved early by much
    ],
)
def test_slot_width_follows_the_period(period: float, delay: float, width: float) -> None:
    assert slot_for(period, delay) == pytest.approx(width)


def test_a_slots_tasks_all_start_before_any_continuation(
    no_thread_leak: None, caplog: pytest.LogCaptureFixture
) -> None:
    """What pipelining rests on: every task of a slot sends before any waits."""
    clock = FakeClock()
    s = Scheduler(workers=4, clock=clock)
    clock.wakes(s.wake)
    ran: list[str] = []

    def send(name: str) -> Callable[[], None]:
        ran.append(f"send {name}")

        def wait() -> None:
            ran.append(f"wait {name}")
            if name == "b":
                raise RuntimeError("continuation failure")

        return wait

    try:
        start = clock() - clock() % SLOT + 60
        for name in "abc":
            s.call_in_slot(start + 0.001, send, name)
        done = threading.Event()
        s.call_at(start + SLOT, done.set)  # not slotted: its return value is not called
        with caplog.at_level(logging.ERROR, logger="polaris_sdk.scheduler"):
            clock.advance(start + SLOT - clock())
            assert done.wait(5)
            wait_until(lambda: len(ran) == 6)
        # The newest request is answered last: waiting for it first waits once.
        assert ran == ["send a", "send b", "send c", "wait c", "wait b", "wait a"]
        assert "continuation failure" in caplog.text  # logged and contained
    finally:
        s.close()


def test_a_continuation_returned_by_an_unslotted_task_is_not_run(scheduler: Scheduler) -> None:
    ran: list[str] = []
    done = threading.Event()
    scheduler.call_later(0, lambda: lambda: ran.append("continued"))
    scheduler.call_later(0.02, done.set)
    assert done.wait(5)
    assert ran == []


def test_a_cancelled_task_never_runs(scheduler: Scheduler) -> None:
    ran: list[str] = []
    handle = scheduler.call_later(0.05, ran.append, "cancelled")
    marker = threading.Event()
    scheduler.call_later(0.1, marker.set)
    assert handle.cancel() is True
    assert handle.cancel() is False
    assert marker.wait(5)
    assert ran == []
    assert scheduler.pending == 0


def test_many_cancels_do_not_grow_the_heap(scheduler: Scheduler) -> None:
    for _ in range(1000):
        scheduler.call_later(60, lambda: None).cancel()
    assert scheduler.pending == 0
    assert len(scheduler._heap) < 200  # dead entries are compacted away


def test_an_exception_in_a_task_is_logged_and_contained(
    scheduler: Scheduler, caplog: pytest.LogCaptureFixture
) -> None:
    def boom() -> None:
        raise RuntimeError("task failure")

    after = threading.Event()
    with caplog.at_level(logging.ERROR, logger="polaris_sdk.scheduler"):
        scheduler.call_later(0, boom)
        scheduler.call_later(0.02, after.set)
        assert after.wait(5)
    assert "task failure" in caplog.text


def test_a_slow_task_does_not_delay_other_timers(scheduler: Scheduler) -> None:
    release = threading.Event()
    other = threading.Event()
    scheduler.call_later(0, release.wait, 10)
    scheduler.call_later(0.01, other.set)
    try:
        assert other.wait(5)  # ran on the second worker while the first is blocked
    finally:
        release.set()


def test_the_timer_loop_restarts_after_a_failure(
    scheduler: Scheduler, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    real_dispatch = scheduler._dispatch
    failed = threading.Event()

    def dispatch_failing_once(handle: object) -> None:
        if not failed.is_set():
            failed.set()
            raise RuntimeError("injected timer fault")
        real_dispatch(handle)  # type: ignore[arg-type]

    monkeypatch.setattr(scheduler, "_dispatch", dispatch_failing_once)
    ran = threading.Event()
    with caplog.at_level(logging.ERROR, logger="polaris_sdk.scheduler"):
        scheduler.call_later(0, lambda: None)
        assert failed.wait(5)
        scheduler.call_later(0, ran.set)
        assert ran.wait(5)
    assert scheduler.restarts == 1
    assert "injected timer fault" in caplog.text


def test_a_dead_timer_thread_is_started_again(scheduler: Scheduler) -> None:
    first = threading.Event()
    scheduler.call_later(0, first.set)
    assert first.wait(5)
    timer = scheduler._timer
    assert timer is not None
    # Simulate the thread ending (as an uncaught BaseException would) by
    # closing its loop from the inside, then reopening the scheduler state.
    with scheduler._cond:
        scheduler._closed = True
        scheduler._cond.notify_all()
    timer.join(5)
    assert not timer.is_alive()
    with scheduler._cond:
        scheduler._closed = False
    again = threading.Event()
    scheduler.call_later(0, again.set)
    assert again.wait(5)
    assert scheduler._timer is not timer


def test_submit_runs_now_on_a_worker(scheduler: Scheduler) -> None:
    future = scheduler.submit(lambda x: (x * 2, threading.current_thread().name), 21)
    value, thread_name = future.result(5)
    assert value == 42
    assert thread_name.startswith("polaris-worker")


def test_threads_are_named_polaris(scheduler: Scheduler) -> None:
    seen = threading.Event()
    names: list[str] = []
    scheduler.call_later(0, lambda: (names.append(threading.current_thread().name), seen.set()))
    assert seen.wait(5)
    assert names[0].startswith("polaris-worker")
    assert scheduler._timer is not None and scheduler._timer.name == "polaris-timer"


def test_close_cancels_pending_work_and_stops_every_thread(no_thread_leak: None) -> None:
    s = Scheduler(workers=3)
    ran: list[int] = []
    for i in range(100):
        s.call_later(30, ran.append, i)
    s.submit(lambda: None).result(5)
    s.close()
    s.close()  # idempotent
    assert s.closed
    assert ran == []
    with pytest.raises(ClosedError):
        s.call_later(0, ran.append, 1)
    with pytest.raises(ClosedError):
        s.submit(ran.append, 1)


def test_close_from_inside_a_task_does_not_deadlock(no_thread_leak: None) -> None:
    s = Scheduler(workers=1)
    closed = threading.Event()

    def close_me() -> None:
        s.close()
        closed.set()

    s.call_later(0, close_me)
    assert closed.wait(5)
    assert s.closed


def test_close_waits_a_bounded_time_for_a_stuck_task_and_names_it(
    no_thread_leak: None, caplog: pytest.LogCaptureFixture
) -> None:
    s = Scheduler(workers=2)
    release = threading.Event()
    started = threading.Event()

    def stuck_task() -> None:
        started.set()
        release.wait(30)

    s.submit(stuck_task)
    assert started.wait(5)
    closer = threading.Thread(target=s.close, args=(0.2,), name="test-closer")
    try:
        with caplog.at_level(logging.WARNING, logger="polaris_sdk.scheduler"):
            closer.start()
            closer.join(5)  # a liveness bound far above the 0.2 s given to close()
            assert not closer.is_alive(), "close() waited for the stuck task"
        assert "stuck_task" in caplog.text
    finally:
        release.set()  # the stuck worker ends; the leak check sees it go
        closer.join(5)


def test_workers_must_be_positive() -> None:
    with pytest.raises(ValueError):
        Scheduler(workers=0)
