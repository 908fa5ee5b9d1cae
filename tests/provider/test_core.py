"""RegistrationCore and StepReporter: the I/O-free decisions of the heartbeat loop."""

from __future__ import annotations

import logging

import pytest

from polaris_sdk.errors import NetworkError, ResourceNotFoundError, ServerInternalError
from polaris_sdk.model import InstanceRegisterRequest
from polaris_sdk.provider.core import (
    FAILURE_LEVEL,
    Action,
    LogLine,
    RegistrationCore,
    RegistrationState,
    Step,
    StepReporter,
    reregister_backoff,
)

REQ = InstanceRegisterRequest(service="echo", host="10.0.0.5", port=8080, ttl=5)
NOT_FOUND = ResourceNotFoundError(400202, "not found resource")


def core(ttl: int = 5, jitter: float = 0.0, cap: float = 60.0) -> RegistrationCore:
    return RegistrationCore("id-1", REQ, ttl, max_backoff=cap, random_fraction=lambda: jitter)


def test_first_heartbeat_one_ttl_after_registering() -> None:
    c = core()
    assert c.registered(now=100.0) == Step(Action.HEARTBEAT, 105.0)
    assert c.state is RegistrationState.REGISTERED


def test_heartbeats_are_fixed_rate_from_the_due_time() -> None:
    c = core()
    c.registered(0.0)
    # A beat due at 5 that ran late, at 5.7, keeps the next one at 10.
    assert c.heartbeat_ok(due=5.0, now=5.7) == Step(Action.HEARTBEAT, 10.0)
    # A beat so late that the next due time has passed goes at once, not in a burst.
    assert c.heartbeat_ok(due=10.0, now=16.0) == Step(Action.HEARTBEAT, 16.0)


def test_two_not_found_in_a_row_register_again_after_a_backoff() -> None:
    c = core(ttl=5, jitter=0.5)
    c.registered(0.0)
    first = c.heartbeat_failed(NOT_FOUND, due=5.0, now=5.0)
    assert first == Step(Action.HEARTBEAT, 10.0)
    assert c.state is RegistrationState.FAILING
    second = c.heartbeat_failed(NOT_FOUND, due=10.0, now=10.0)
    # n = 1: ttl * 2^0 + jitter, jitter = 0.5 * ttl / 2
    assert second == Step(Action.REGISTER, 10.0 + 5.0 + 1.25)
    assert c.state is RegistrationState.REREGISTERING


def test_not_found_must_be_in_a_row() -> None:
    c = core()
    c.registered(0.0)
    c.heartbeat_failed(NOT_FOUND, due=5.0, now=5.0)
    c.heartbeat_failed(NetworkError("down"), due=10.0, now=10.0)
    assert c.heartbeat_failed(NOT_FOUND, due=15.0, now=15.0).action is Action.HEARTBEAT
    c.heartbeat_ok(due=20.0, now=20.0)
    assert c.heartbeat_failed(NOT_FOUND, due=25.0, now=25.0).action is Action.HEARTBEAT


def test_the_backoff_doubles_per_reregistration_and_is_capped() -> None:
    c = core(ttl=5, cap=60.0)
    c.registered(0.0)
    delays = []
    now = 0.0
    for _ in range(6):
        step = c.register_failed(NetworkError("down"), now)
        assert step.action is Action.REGISTER
        delays.append(step.at - now)
        now = step.at
    assert delays == [5.0, 10.0, 20.0, 40.0, 60.0, 60.0]


def test_a_successful_heartbeat_resets_the_backoff() -> None:
    c = core(ttl=2)
    c.registered(0.0)
    c.register_failed(NetworkError("down"), 0.0)
    c.register_failed(NetworkError("down"), 2.0)
    c.registered(6.0)
    c.heartbeat_ok(due=8.0, now=8.0)
    c.heartbeat_failed(NOT_FOUND, due=10.0, now=10.0)
    step = c.heartbeat_failed(NOT_FOUND, due=12.0, now=12.0)
    assert step == Step(Action.REGISTER, 14.0)  # n = 1 again


def test_other_failures_keep_beating_and_are_visible() -> None:
    c = core()
    c.registered(0.0)
    error = ServerInternalError(500000, "boom")
    assert c.heartbeat_failed(error, due=5.0, now=5.2) == Step(Action.HEARTBEAT, 10.0)
    c.heartbeat_failed(error, due=10.0, now=10.0)
    status = c.status()
    assert status.state is RegistrationState.FAILING
    assert status.consecutive_failures == 2
    assert status.last_error is error
    assert status.last_success == 0.0
    c.heartbeat_ok(due=15.0, now=15.0)
    status = c.status()
    assert status.state is RegistrationState.REGISTERED
    assert status.consecutive_failures == 0
    assert status.last_error is None
    assert status.last_success == 15.0


def test_status_counts_reregistrations() -> None:
    c = core()
    c.registered(0.0)
    c.heartbeat_failed(NOT_FOUND, 5.0, 5.0)
    c.heartbeat_failed(NOT_FOUND, 10.0, 10.0)
    c.registered(16.0)
    status = c.status()
    assert status.reregistrations == 1
    assert (status.instance_id, status.service, status.host, status.port, status.ttl) == (
        "id-1",
        "echo",
        "10.0.0.5",
        8080,
        5,
    )


def test_stop_is_final_state() -> None:
    c = core()
    c.registered(0.0)
    c.stop()
    assert c.status().state is RegistrationState.DEREGISTERED


@pytest.mark.parametrize(
    ("ttl", "attempt", "jitter", "expected"),
    [(5, 1, 0.0, 5.0), (5, 2, 1.0, 11.0), (5, 5, 0.0, 60.0), (1, 3, 0.5, 4.5), (5, 100, 0, 60.0)],
)
def test_reregister_backoff(ttl: int, attempt: int, jitter: float, expected: float) -> None:
    assert reregister_backoff(ttl, attempt, jitter, 60.0) == expected


def test_step_done_feeds_the_outcome_of_either_action() -> None:
    c = core(ttl=5)
    c.registered(0.0)
    assert c.step_done(Step(Action.HEARTBEAT, 5.0), None, 5.1) == Step(Action.HEARTBEAT, 10.0)
    c.step_done(Step(Action.HEARTBEAT, 10.0), NOT_FOUND, 10.0)
    again = c.step_done(Step(Action.HEARTBEAT, 15.0), NOT_FOUND, 15.0)
    assert again.action is Action.REGISTER
    failed = c.step_done(again, NetworkError("down"), again.at)
    assert failed.action is Action.REGISTER and c.state is RegistrationState.REREGISTERING
    assert c.step_done(failed, None, 40.0) == Step(Action.HEARTBEAT, 45.0)
    assert c.status().reregistrations == 1


def test_a_recovery_is_reported_at_the_level_of_its_failure() -> None:
    c, reporter = core(ttl=5), StepReporter()
    c.registered(0.0)

    def report(step: Step, error: Exception | None, now: float) -> LogLine | None:
        before = c.state
        nxt = c.step_done(step, error, now)  # type: ignore[arg-type]
        return reporter.report(step, before, c.status(), nxt.at - now)

    assert report(Step(Action.HEARTBEAT, 5.0), None, 5.0) is None  # all is well: silence
    failed = report(Step(Action.HEARTBEAT, 10.0), NetworkError("down"), 10.0)
    assert failed is not None and failed.level == FAILURE_LEVEL == logging.WARNING
    assert report(Step(Action.HEARTBEAT, 15.0), NetworkError("down"), 15.0) is None  # not again
    recovered = report(Step(Action.HEARTBEAT, 20.0), None, 20.0)
    assert recovered is not None and recovered.level == logging.WARNING
    assert "succeed again" in recovered.message % recovered.args
    report(Step(Action.HEARTBEAT, 25.0), NOT_FOUND, 25.0)
    lost = report(Step(Action.HEARTBEAT, 30.0), NOT_FOUND, 30.0)
    assert lost is not None and lost.level == logging.WARNING
    back = report(Step(Action.REGISTER, 36.0), None, 36.0)
    assert back is not None and back.level == logging.WARNING
    assert back.message % back.args == "re-registered id-1"


def test_failures_are_reported_again_every_tenth_time() -> None:
    c, reporter = core(ttl=1), StepReporter()
    c.registered(0.0)
    lines = []
    for n in range(1, 21):
        before = c.state
        step = Step(Action.HEARTBEAT, float(n))
        nxt = c.step_done(step, NetworkError("down"), float(n))
        lines.append(reporter.report(step, before, c.status(), nxt.at - n))
    assert [n for n, line in enumerate(lines, 1) if line is not None] == [1, 10, 20]
