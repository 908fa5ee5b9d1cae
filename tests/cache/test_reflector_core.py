"""The reflector's decisions, fed by hand: no lister, no scheduler, no clock."""

from __future__ import annotations

import pytest

from polaris_sdk.cache.options import CacheOptions
from polaris_sdk.cache.reflector_core import (
    ConnectionState,
    Outcome,
    ReflectorCore,
    Round,
    RoundKind,
)
from polaris_sdk.errors import NetworkError
from tests.consumer.helpers import make_instance, make_snapshot

ONE = make_snapshot(make_instance(1), revision="r1")
TWO = make_snapshot(make_instance(1), make_instance(2), revision="r2")
EMPTY = make_snapshot(revision="r-empty")
DOWN = NetworkError("connection refused")


def core(**options: object) -> ReflectorCore:
    return ReflectorCore(CacheOptions(**{"refresh_interval": 2.0, **options}))  # type: ignore[arg-type]


def test_lists_first_then_watches_the_held_revision() -> None:
    c = core()
    assert c.next_round(None) == Round(RoundKind.LIST)
    assert c.succeeded(None, ONE, 0.0) == Outcome(replace=ONE)
    assert c.next_round(ONE) == Round(RoundKind.WATCH, "r1")


def test_an_answer_with_nothing_new_only_confirms() -> None:
    c = core()
    c.succeeded(None, ONE, 0.0)
    assert c.succeeded(ONE, None, 1.0) == Outcome(confirm=True)
    same = make_snapshot(make_instance(1), revision="r1")
    assert c.succeeded(ONE, same, 2.0) == Outcome(confirm=True)
    assert c.succeeded(ONE, TWO, 3.0) == Outcome(replace=TWO)


def test_nothing_held_always_lists_even_after_success() -> None:
    c = core()
    c.succeeded(None, ONE, 0.0)
    assert c.next_round(None).kind is RoundKind.LIST


def test_a_failure_relists_counts_and_suspends() -> None:
    c = core(lost_after=30.0)
    c.succeeded(None, ONE, 0.0)
    first = c.failed(DOWN, 100.0)
    assert first == Outcome(state_change=ConnectionState.SUSPENDED, failures=1)
    assert c.next_round(ONE) == Round(RoundKind.LIST)
    again = c.failed(DOWN, 110.0)
    assert again.state_change is None and again.failures == 2 and again.failing_for == 10.0
    assert c.last_error is DOWN
    lost = c.failed(DOWN, 130.0)
    assert lost.state_change is ConnectionState.LOST and lost.failing_for == 30.0
    assert c.failed(DOWN, 140.0).state_change is None
    back = c.succeeded(ONE, None, 150.0)
    assert back == Outcome(confirm=True, state_change=ConnectionState.CONNECTED, recovered_after=4)
    assert c.failures == 0 and c.last_error is None
    assert c.next_round(ONE) == Round(RoundKind.WATCH, "r1")
    # A new run of failures counts its time from its own start.
    assert c.failed(DOWN, 1000.0).failing_for == 0.0


def test_push_empty_protection_holds_once_until_instances_come_back() -> None:
    c = core()
    c.succeeded(None, ONE, 0.0)
    assert c.succeeded(ONE, EMPTY, 1.0) == Outcome(hold_empty_started=True)
    assert c.holding_empty
    # Held: neither replaced nor confirmed, and said only once.
    assert c.succeeded(ONE, EMPTY, 2.0) == Outcome()
    assert c.next_round(ONE) == Round(RoundKind.WATCH, "r1")
    assert c.succeeded(ONE, TWO, 3.0) == Outcome(replace=TWO, hold_empty_ended=True)
    assert not c.holding_empty


def test_a_confirmation_of_the_held_snapshot_ends_the_hold() -> None:
    c = core()
    c.succeeded(None, ONE, 0.0)
    c.succeeded(ONE, EMPTY, 1.0)
    assert c.succeeded(ONE, None, 2.0) == Outcome(confirm=True, hold_empty_ended=True)


def test_empty_answers_pass_when_nothing_or_nothing_non_empty_is_held() -> None:
    c = core()
    assert c.succeeded(None, EMPTY, 0.0) == Outcome(replace=EMPTY)
    held_empty = make_snapshot(revision="r0")
    assert c.succeeded(held_empty, EMPTY, 1.0) == Outcome(replace=EMPTY)


def test_without_protection_an_empty_answer_replaces() -> None:
    c = core(push_empty_protection=False)
    c.succeeded(None, ONE, 0.0)
    assert c.succeeded(ONE, EMPTY, 1.0) == Outcome(replace=EMPTY)


@pytest.mark.parametrize("jitter", [0.0, 0.1, 0.5, 1.0])
def test_refresh_jitter_spreads_waits_but_never_beyond_the_interval(jitter: float) -> None:
    c = core(refresh_jitter=jitter)
    assert c.next_delay(0.0) == pytest.approx(2.0)
    assert c.next_delay(0.5) == pytest.approx(2.0 * (1 - jitter / 2))
    assert c.next_delay(1.0) == pytest.approx(2.0 * (1 - jitter))
    assert all(c.next_delay(r / 100) <= 2.0 for r in range(100))


def test_backoff_doubles_from_the_interval_up_to_the_cap_with_half_jitter() -> None:
    c = core(refresh_interval=1.0, backoff_max=8.0)
    ceilings = []
    for n in range(1, 7):
        c.failed(DOWN, float(n))
        ceilings.append(c.next_delay(1.0))
        assert c.next_delay(0.0) == ceilings[-1] / 2
    assert ceilings == [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    c.succeeded(None, ONE, 10.0)
    assert c.next_delay(0.0) == 1.0


def test_a_long_run_of_failures_does_not_overflow_the_backoff() -> None:
    c = core(refresh_interval=1.0, backoff_max=30.0)
    for n in range(200):
        c.failed(DOWN, float(n))
    assert c.next_delay(1.0) == 30.0
