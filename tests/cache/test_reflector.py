from __future__ import annotations

import logging

import pytest

from polaris_sdk.cache.listwatch import ListerWatcher
from polaris_sdk.cache.options import CacheOptions
from polaris_sdk.cache.reflector import ConnectionState, Reflector
from polaris_sdk.errors import ClosedError, NetworkError, PolarisTimeoutError
from polaris_sdk.model import ServiceInstances, ServiceKey
from tests.cache.fakes import FakeLister, ManualScheduler
from tests.consumer.helpers import make_instance, make_snapshot

KEY = ServiceKey("default", "echo")
ONE = make_snapshot(make_instance(1), revision="r1")
TWO = make_snapshot(make_instance(1), make_instance(2), revision="r2")
EMPTY = make_snapshot(revision="r-empty")


class Sink:
    def __init__(self) -> None:
        self.snapshot: ServiceInstances | None = None
        self.replaced: list[ServiceInstances] = []
        self.confirmed: list[float] = []
        self.states: list[ConnectionState] = []

    def current(self) -> ServiceInstances | None:
        return self.snapshot

    def replace(self, snapshot: ServiceInstances) -> None:
        self.snapshot = snapshot
        self.replaced.append(snapshot)

    def confirm(self, at: float) -> None:
        self.confirmed.append(at)

    def state_changed(self, key: ServiceKey, state: ConnectionState) -> None:
        assert key == KEY
        self.states.append(state)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make(lister: FakeLister, **options: object) -> tuple[Reflector, Sink, ManualScheduler, Clock]:
    sink, scheduler, clock = Sink(), ManualScheduler(), Clock()
    opts = CacheOptions(**{"refresh_interval": 1.0, "refresh_jitter": 0.1, **options})  # type: ignore[arg-type]
    lw = ListerWatcher(lister, probe_interval=0.0)
    return Reflector(KEY, lw, scheduler, sink, opts, clock=clock), sink, scheduler, clock


def test_list_then_watch_with_the_held_revision() -> None:
    lister = FakeLister()
    lister.script(KEY, ONE, None, TWO, TWO)
    reflector, sink, scheduler, _ = make(lister)
    reflector.run_once()
    assert sink.replaced == [ONE]
    reflector.start()
    assert 0.9 <= scheduler.run_next() <= 1.1  # 200001: confirmed only
    assert sink.replaced == [ONE] and len(sink.confirmed) == 1
    scheduler.run_next()  # new revision
    assert sink.replaced == [ONE, TWO]
    scheduler.run_next()  # same revision again: a confirmation
    assert sink.replaced == [ONE, TWO] and len(sink.confirmed) == 2
    assert lister.calls == [(KEY, ""), (KEY, "r1"), (KEY, "r1"), (KEY, "r2")]
    assert reflector.state is ConnectionState.CONNECTED and sink.states == []


def test_failures_keep_the_snapshot_back_off_and_relist() -> None:
    lister = FakeLister()
    down = NetworkError("connection refused")
    lister.script(KEY, ONE, down, down, down, down, down, TWO)
    reflector, sink, scheduler, _ = make(lister, backoff_max=8.0)
    reflector.run_once()
    reflector.start()
    delays = [scheduler.run_next() for _ in range(5)]
    assert sink.snapshot is ONE  # untouched through the failures
    delays.append(scheduler.run_next())
    assert sink.snapshot is TWO
    # After failure n the wait is half to all of min(interval * 2^(n-1), backoff_max).
    for n, delay in enumerate(delays[1:], start=1):
        ceiling = min(8.0, 2 ** (n - 1))
        assert ceiling / 2 <= delay <= ceiling, delays
    assert delays[-1] >= 4.0  # capped at 8, so at least half of it
    # After a failure the next round is a full list, not a watch.
    assert lister.calls[2:] == [(KEY, "")] * 5
    assert lister.calls[1] == (KEY, "r1")


def test_state_goes_suspended_then_lost_then_connected() -> None:
    lister = FakeLister()
    down = PolarisTimeoutError("deadline")
    lister.script(KEY, ONE, down, down, down, ONE)
    reflector, sink, scheduler, clock = make(lister, lost_after=30.0)
    reflector.run_once()
    reflector.start()
    scheduler.run_next()
    assert reflector.state is ConnectionState.SUSPENDED
    clock.now += 10
    scheduler.run_next()
    assert reflector.state is ConnectionState.SUSPENDED
    clock.now += 25
    scheduler.run_next()
    assert reflector.state is ConnectionState.LOST
    scheduler.run_next()
    assert reflector.state is ConnectionState.CONNECTED
    assert sink.states == [
        ConnectionState.SUSPENDED,
        ConnectionState.LOST,
        ConnectionState.CONNECTED,
    ]
    assert reflector.failures == 0


def test_push_empty_protection_holds_an_empty_answer_back(
    caplog: pytest.LogCaptureFixture,
) -> None:
    lister = FakeLister()
    lister.script(KEY, ONE, EMPTY, EMPTY, TWO)
    reflector, sink, scheduler, _ = make(lister)
    reflector.run_once()
    reflector.start()
    with caplog.at_level(logging.WARNING, logger="polaris_sdk.cache.reflector"):
        scheduler.run_next()
        scheduler.run_next()
    assert sink.snapshot is ONE
    assert sink.confirmed == []  # held, not confirmed: the age grows
    assert sum("push-empty protection" in r.getMessage() for r in caplog.records) == 1
    scheduler.run_next()
    assert sink.snapshot is TWO
    assert reflector.state is ConnectionState.CONNECTED


def test_without_protection_an_empty_answer_goes_through() -> None:
    lister = FakeLister()
    lister.script(KEY, ONE, EMPTY)
    reflector, sink, scheduler, _ = make(lister, push_empty_protection=False)
    reflector.run_once()
    reflector.start()
    scheduler.run_next()
    assert sink.snapshot is EMPTY


def test_an_empty_first_answer_is_not_held() -> None:
    lister = FakeLister()
    lister.script(KEY, EMPTY, ONE)
    reflector, sink, scheduler, _ = make(lister)
    reflector.run_once()
    assert sink.snapshot is EMPTY
    reflector.start()
    scheduler.run_next()
    assert sink.snapshot is ONE


def test_an_unexpected_exception_is_logged_and_the_loop_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    lister = FakeLister()
    lister.script(KEY, ONE, RuntimeError("bug"), TWO)
    reflector, sink, scheduler, _ = make(lister)
    reflector.run_once()
    reflector.start()
    with caplog.at_level(logging.ERROR, logger="polaris_sdk.cache.reflector"):
        scheduler.run_next()
    assert any("unexpectedly" in r.getMessage() for r in caplog.records)
    assert reflector.state is ConnectionState.SUSPENDED
    scheduler.run_next()
    assert sink.snapshot is TWO


def test_run_once_raises_and_records_the_failure() -> None:
    lister = FakeLister()
    lister.script(KEY, NetworkError("down"))
    reflector, _, _, _ = make(lister)
    with pytest.raises(NetworkError):
        reflector.run_once()
    assert reflector.state is ConnectionState.SUSPENDED and reflector.failures == 1


def test_stop_cancels_the_next_round() -> None:
    lister = FakeLister()
    lister.script(KEY, ONE)
    reflector, _, scheduler, _ = make(lister)
    reflector.run_once()
    reflector.start()
    assert scheduler.live()
    reflector.stop()
    assert scheduler.live() == [] and reflector.stopped
    reflector.start()  # no effect once stopped
    assert scheduler.live() == []


def test_a_round_running_during_stop_schedules_nothing() -> None:
    lister = FakeLister()
    reflector, _, scheduler, _ = make(lister)

    def stop_meanwhile(key: ServiceKey, revision: str) -> ServiceInstances:
        reflector.stop()
        return ONE

    lister.script(KEY, ONE, stop_meanwhile)
    reflector.run_once()
    reflector.start()
    scheduler.run_next()
    assert scheduler.live() == []


def test_a_closed_scheduler_ends_the_loop() -> None:
    lister = FakeLister()
    lister.script(KEY, ONE)
    reflector, _, scheduler, _ = make(lister)

    def closed(*args: object, **kwargs: object) -> None:
        raise ClosedError("closed")

    scheduler.call_later_in_slot = closed  # type: ignore[method-assign, assignment]
    reflector.run_once()
    reflector.start()
    assert reflector.stopped


def test_a_failure_after_the_round_still_rearms_the_loop(
    caplog: pytest.LogCaptureFixture,
) -> None:
    lister = FakeLister()
    lister.script(KEY, ONE, None, TWO)
    reflector, sink, scheduler, _ = make(lister)
    reflector.run_once()
    reflector.start()
    real = reflector._next_delay
    faults = iter([RuntimeError("injected")])

    def next_delay() -> float:
        fault = next(faults, None)
        if fault is not None:
            raise fault
        return real()

    reflector._next_delay = next_delay  # type: ignore[method-assign]
    with caplog.at_level(logging.ERROR, logger="polaris_sdk.cache.reflector"):
        scheduler.run_next()
    assert any(r.exc_info and "injected" in str(r.exc_info[1]) for r in caplog.records)
    # Re-armed with the plain refresh interval in place of the failed computation.
    assert scheduler.live() == [1.0]
    scheduler.run_next()
    assert sink.snapshot is TWO and scheduler.live()


class RaisingStateSink(Sink):
    """A sink whose state callback fails, as a broken informer would."""

    def state_changed(self, key: ServiceKey, state: ConnectionState) -> None:
        super().state_changed(key, state)
        raise RuntimeError(f"state sink broke on {state.value}")


def test_a_failing_sink_is_logged_and_the_loop_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    lister = FakeLister()
    lister.script(KEY, ONE, NetworkError("down"), TWO, TWO)
    sink, scheduler = RaisingStateSink(), ManualScheduler()
    reflector = Reflector(
        KEY,
        ListerWatcher(lister, probe_interval=0.0),
        scheduler,
        sink,
        CacheOptions(refresh_interval=1.0),
    )
    reflector.run_once()
    reflector.start()
    with caplog.at_level(logging.ERROR, logger="polaris_sdk.cache.reflector"):
        scheduler.run_next()  # fails: SUSPENDED, whose report raises
        scheduler.run_next()  # recovers: CONNECTED, whose report raises
        scheduler.run_next()
    assert sink.states == [ConnectionState.SUSPENDED, ConnectionState.CONNECTED]
    assert sum("state sink broke" in str(r.exc_info[1]) for r in caplog.records if r.exc_info) == 2
    assert sink.snapshot is TWO and len(scheduler.live()) == 1


def test_a_scheduler_that_refuses_the_next_round_is_reported(
    caplog: pytest.LogCaptureFixture,
) -> None:
    lister = FakeLister()
    lister.script(KEY, ONE)
    reflector, _, scheduler, _ = make(lister)

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("timer heap broke")

    scheduler.call_later_in_slot = broken  # type: ignore[method-assign, assignment]
    reflector.run_once()
    with caplog.at_level(logging.ERROR, logger="polaris_sdk.cache.reflector"):
        reflector.start()
    assert any("could not schedule" in r.getMessage() for r in caplog.records)
