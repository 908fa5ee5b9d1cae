"""The breaker core: triggers, sleep window, probes, error classification; injected clock."""

from __future__ import annotations

import pytest

from polaris_sdk.consumer.circuitbreaker import (
    DEFAULT_RULE,
    FAIL,
    SUCCESS,
    TIMEOUT,
    UNREACHABLE,
    Breaker,
    BreakerRule,
    BreakerState,
    Window,
    match_string,
)

OPEN = BreakerState.OPEN
CLOSED = BreakerState.CLOSED
HALF_OPEN = BreakerState.HALF_OPEN


def test_ten_consecutive_errors_open_the_default_breaker() -> None:
    breaker = Breaker(BreakerRule(error_percent=0))
    for i in range(9):
        assert breaker.record(float(i), FAIL) is None
    change = breaker.record(9.0, FAIL)
    assert change is not None and change.new is OPEN and "10 consecutive" in change.reason
    assert not breaker.allow(9.5)


def test_a_success_resets_the_consecutive_count() -> None:
    breaker = Breaker(BreakerRule(error_percent=0))
    for i in range(9):
        breaker.record(float(i), FAIL)
    breaker.record(9.0, SUCCESS)
    for i in range(9):
        assert breaker.record(10.0 + i, FAIL) is None
    assert breaker.state is CLOSED


def test_error_rate_needs_the_minimum_request_count() -> None:
    breaker = Breaker(BreakerRule(consecutive_errors=0))
    # 4 errors of 8 calls: 50 %, but fewer than 10 requests.
    for i in range(8):
        breaker.record(float(i), FAIL if i % 2 else SUCCESS)
    assert breaker.state is CLOSED
    breaker.record(8.0, SUCCESS)
    change = breaker.record(9.0, FAIL)  # 5 of 10
    assert change is not None and change.new is OPEN and "error rate 5/10" in change.reason


def test_error_rate_below_threshold_stays_closed() -> None:
    breaker = Breaker(BreakerRule(consecutive_errors=0))
    for i in range(30):
        breaker.record(float(i), FAIL if i % 3 == 0 else SUCCESS)  # 33 %
    assert breaker.state is CLOSED


def test_old_buckets_leave_the_window() -> None:
    breaker = Breaker(BreakerRule(consecutive_errors=0))
    for i in range(9):
        breaker.record(float(i) * 0.1, FAIL if i < 4 else SUCCESS)
    # 61 s later the first 9 calls are out of the 60 s window: 1 of 1 then.
    assert breaker.record(70.0, FAIL) is None
    assert breaker.state is CLOSED


def test_window_sums_only_recent_buckets() -> None:
    window = Window(60.0, 10)
    window.add(0.0, True)
    window.add(30.0, False)
    assert window.sums(30.0) == (2, 1)
    assert window.sums(65.0) == (1, 0)
    assert window.sums(200.0) == (0, 0)


def test_one_unreachable_result_opens_at_once() -> None:
    breaker = Breaker()
    change = breaker.record(0.0, UNREACHABLE)
    assert change is not None and change.new is OPEN
    assert change.reason == "connection could not be made"


def test_unreachable_threshold_counts_in_a_row() -> None:
    breaker = Breaker(BreakerRule(unreachable_to_open=2))
    breaker.record(0.0, UNREACHABLE)
    breaker.record(0.1, FAIL)
    breaker.record(0.2, UNREACHABLE)
    assert breaker.state is CLOSED
    assert breaker.record(0.3, UNREACHABLE) is not None
    assert breaker.state is OPEN


def test_sleep_window_then_three_probes_close() -> None:
    breaker = Breaker()
    breaker.record(0.0, UNREACHABLE)
    assert not breaker.allow(29.9)
    change = breaker.advance(30.0)
    assert change is not None and change.new is HALF_OPEN
    assert [breaker.allow(30.0) for _ in range(4)] == [True, True, True, False]
    assert breaker.record(30.1, SUCCESS) is None
    assert breaker.record(30.2, SUCCESS) is None
    change = breaker.record(30.3, SUCCESS)
    assert change is not None and change.new is CLOSED
    assert breaker.allow(30.4)


def test_a_failed_probe_reopens_for_another_window() -> None:
    breaker = Breaker()
    breaker.record(0.0, UNREACHABLE)
    assert breaker.allow(31.0)  # turns half-open and grants a probe
    assert breaker.state is HALF_OPEN
    change = breaker.record(31.1, TIMEOUT)
    assert change is not None and change.new is OPEN and change.old is HALF_OPEN
    assert not breaker.allow(60.0)
    assert breaker.allow(61.1)


def test_probes_given_out_again_when_results_never_come() -> None:
    breaker = Breaker()
    breaker.record(0.0, UNREACHABLE)
    breaker.advance(30.0)
    for _ in range(3):
        assert breaker.allow(30.0)
    assert not breaker.allow(40.0)
    assert breaker.allow(60.0)


def test_results_while_open_change_nothing() -> None:
    breaker = Breaker()
    breaker.record(0.0, UNREACHABLE)
    for _ in range(20):
        assert breaker.record(1.0, SUCCESS) is None
    assert breaker.state is OPEN


def test_error_classification() -> None:
    rule = DEFAULT_RULE
    assert not rule.is_error(SUCCESS, 200, 0.1)
    assert not rule.is_error(SUCCESS, 499, None)
    assert rule.is_error(SUCCESS, 500, None)
    assert rule.is_error(SUCCESS, 599, None)
    assert not rule.is_error(SUCCESS, 600, None)
    assert rule.is_error(FAIL, None, None)
    assert rule.is_error(TIMEOUT, 200, None)
    assert rule.is_error(SUCCESS, -1, None)
    slow = BreakerRule(max_delay=1.0)
    assert slow.is_error(SUCCESS, 200, 1.5)
    assert not slow.is_error(SUCCESS, 200, 0.5)


@pytest.mark.parametrize(
    ("kind", "value", "yes", "no"),
    [
        ("EXACT", "503", "503", "500"),
        ("NOT_EQUALS", "200", "500", "200"),
        ("IN", "500, 502", "502", "501"),
        ("NOT_IN", "200,204", "500", "204"),
        ("REGEX", "5\\d\\d", "504", "404"),
        ("RANGE", "500~599", "550", "600"),
    ],
)
def test_match_strings(kind: str, value: str, yes: str, no: str) -> None:
    matches = match_string(kind, value)
    assert matches(yes)
    assert not matches(no)


def test_a_bad_range_is_refused() -> None:
    with pytest.raises(ValueError, match="LOW~HIGH"):
        match_string("RANGE", "500")
    assert not match_string("RANGE", "1~2")("x")
