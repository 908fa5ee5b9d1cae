"""Circuit breaking: call results in, per-resource breaker states out. Pure and clock-injected.

Contract:

* A :class:`Breaker` watches one resource (an instance, a service, or one
  method of a service) under one :class:`BreakerRule`. ``record()`` takes one
  call's outcome and the time (any monotonic clock, in seconds) and returns
  the :class:`Transition` it caused, if any. No I/O, no threads of its own;
  each breaker has its own lock (held for a few counter updates), so reports
  for different instances never wait for each other.
* States, as polaris-go and polaris-java define them:

  - CLOSED: calls go through. It opens when ``consecutive_errors`` errors
    come in a row, or when, over the last ``interval`` seconds (a sliding
    window of ``buckets`` buckets), at least ``minimum_requests`` calls were
    made and at least ``error_percent`` % of them were errors. Either
    trigger is off when its threshold is 0.
  - The fast rule: a call whose connection could not be made at all
    (``ret_status="unreachable"``: refused, no route, DNS failure) opens the
    breaker as soon as ``unreachable_to_open`` such results come in a row
    (default 1). Nothing answered, so no process is listening at that
    address; waiting for the error-rate window would send it ~10 more calls.
  - OPEN: calls are refused (the instance leaves selection). After
    ``sleep_window`` seconds it becomes HALF_OPEN.
  - HALF_OPEN: ``probes`` calls are let through (:meth:`Breaker.allow`);
    when that many successes are reported it closes, and any error reopens
    it for another sleep window. Probes whose results never come are given
    out again after a sleep window.

* A call is an error when its ``ret_status`` is not ``success``, or its
  ``ret_code`` matches the rule's error codes (default ``500~599``) or is
  ``-1`` (both official SDKs treat -1 as an error whatever the rule), or its
  delay exceeds the rule's ``max_delay``. (Under a rule with error
  conditions, polaris-go and polaris-java judge by the code and delay alone,
  so a ``fail`` report with a 2xx code counts as a success there; here
  ``ret_status`` counts too, so the transports' timeouts and refused
  connections open breakers without a made-up code.)

Defaults (:data:`DEFAULT_RULE`), the instance rule both official SDKs
synthesize when the server has none, and their sources:

* consecutive errors 10, error rate 50 % over at least 10 requests in a
  60 s window: polaris-go ``pkg/config/default.go`` (``DefaultErrorCount``,
  ``DefaultErrorPercent``, ``DefaultMinimumRequest``, ``DefaultInterval``),
  polaris-java ``polaris-config-default/.../conf/default-config.yml``
  (``consumer.circuitBreaker.defaultErrorCount`` etc.);
* 10 buckets: polaris-go ``plugin/circuitbreaker/composite/trigger/err_rate.go``
  (``bucketCount``), polaris-java ``ErrRateCounter.java`` (``BUCKET_COUNT``);
* sleep window 30 s, half-open: 3 probes, all 3 must succeed: polaris-go
  ``DefaultSleepWindow`` / ``DefaultSuccessCountAfterHalfOpen`` made into
  ``recoverCondition{sleepWindow, consecutiveSuccess}`` by
  ``plugin/circuitbreaker/composite/default.go``, and ``HalfOpenStatus`` in
  ``pkg/model/circuitbreaker.go`` (lets ``consecutiveSuccess`` calls
  through, any failure reopens); polaris-java ``sleepWindow: 30s``,
  ``requestCountAfterHalfOpen: 3``, ``successCountAfterHalfOpen: 3``;
* error codes ``RET_CODE RANGE 500~599``: polaris-go ``default.go``
  (``_defaultRetCodeRange``); the -1 rule: polaris-go
  ``composite/block_counter.go``, polaris-java ``CircuitBreakerUtils.java``;
* the fast rule for unreachable instances is this SDK's own.

Circuit breaking is on by default and turned off with
``consumer.circuitBreaker.enable: false`` (polaris-go's key, ``true`` in
``DefaultCircuitBreakerEnabled``; polaris-java's ``default-config.yml``).
* Results that arrive while OPEN (calls that were in flight when it opened)
  change nothing.
"""

from __future__ import annotations

import enum
import re
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Final

from polaris_sdk.errors import ValidationError
from polaris_sdk.validation import INVALID_PARAMETER

__all__ = [
    "DEFAULT_RULE",
    "FAIL",
    "RET_STATUSES",
    "SUCCESS",
    "TIMEOUT",
    "UNREACHABLE",
    "Breaker",
    "BreakerRule",
    "BreakerState",
    "CodeMatcher",
    "Fallback",
    "Transition",
    "Window",
    "check_outcome",
    "match_string",
]

SUCCESS: Final = "success"
FAIL: Final = "fail"
TIMEOUT: Final = "timeout"
UNREACHABLE: Final = "unreachable"
RET_STATUSES: Final = frozenset({SUCCESS, FAIL, TIMEOUT, UNREACHABLE})


def check_outcome(ret_status: object, ret_code: object, delay: object) -> None:
    """ValidationError naming the field when a reported outcome is malformed."""
    if not isinstance(ret_status, str) or ret_status not in RET_STATUSES:
        raise ValidationError(
            "ret_status", "must be one of fail, success, timeout, unreachable", INVALID_PARAMETER
        )
    if ret_code is not None and type(ret_code) is not int:
        raise ValidationError("ret_code", "must be an int or None", INVALID_PARAMETER)
    if delay is not None and (
        type(delay) not in (int, float) or not 0 <= delay < float("inf")  # type: ignore[operator]
    ):
        raise ValidationError("delay", "must be a finite number of seconds >= 0", INVALID_PARAMETER)


class BreakerState(enum.StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


CodeMatcher = Callable[[int], bool]
"""Whether a ``ret_code`` counts as an error."""


def _server_errors(code: int) -> bool:
    return 500 <= code <= 599


def match_string(kind: str, value: str) -> Callable[[str], bool]:
    """A predicate for a Polaris ``MatchString`` (EXACT, NOT_EQUALS, IN, NOT_IN, REGEX,
    RANGE ``"500~599"``); ValueError when ``value`` does not fit ``kind``."""
    kind = kind.upper()
    if kind == "EXACT":
        return lambda text: text == value
    if kind == "NOT_EQUALS":
        return lambda text: text != value
    if kind in ("IN", "NOT_IN"):
        items = frozenset(part.strip() for part in value.split(","))
        if kind == "IN":
            return lambda text: text in items
        return lambda text: text not in items
    if kind == "REGEX":
        pattern = re.compile(value)
        return lambda text: pattern.fullmatch(text) is not None
    if kind == "RANGE":
        low_text, sep, high_text = value.partition("~")
        if not sep:
            raise ValueError(f"RANGE {value!r} is not LOW~HIGH")
        low, high = float(low_text), float(high_text)

        def in_range(text: str) -> bool:
            try:
                number = float(text)
            except ValueError:
                return False
            return low <= number <= high

        return in_range
    raise ValueError(f"unknown match type {kind!r}")


@dataclass(frozen=True, slots=True)
class Fallback:
    """What a refused call answers instead (a rule's ``fallbackConfig``)."""

    code: int = 0
    headers: tuple[tuple[str, str], ...] = ()
    body: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class BreakerRule:
    """When a breaker opens and how it recovers; the defaults are the rule the
    official SDKs apply when the server has none."""

    name: str = "default"
    level: str = "instance"
    """``instance``, ``service`` or ``method``."""
    consecutive_errors: int = 10
    error_percent: int = 50
    minimum_requests: int = 10
    interval: float = 60.0
    buckets: int = 10
    sleep_window: float = 30.0
    probes: int = 3
    unreachable_to_open: int = 1
    error_codes: CodeMatcher = field(default=_server_errors, compare=False)
    max_delay: float | None = None
    """Seconds; a slower call is an error (a ``DELAY`` error condition)."""
    method: Callable[[str], bool] | None = field(default=None, compare=False)
    """For ``method`` level rules: which methods it covers (None: all)."""
    fallback: Fallback | None = None

    def is_error(self, ret_status: str, ret_code: int | None, delay: float | None) -> bool:
        if ret_status != SUCCESS:
            return True
        if ret_code is not None and (ret_code == -1 or self.error_codes(ret_code)):
            return True
        return self.max_delay is not None and delay is not None and delay > self.max_delay


DEFAULT_RULE: Final = BreakerRule()


class Window:
    """Calls and errors over the last ``interval`` seconds, in ``buckets`` buckets."""

    __slots__ = ("_errors", "_n", "_stamps", "_totals", "_width")

    def __init__(self, interval: float, buckets: int) -> None:
        self._n = max(1, buckets)
        self._width = max(interval, 0.001) / self._n
        self._stamps = [-1] * self._n
        self._totals = [0] * self._n
        self._errors = [0] * self._n

    def add(self, now: float, error: bool) -> None:
        index = int(now // self._width)
        slot = index % self._n
        if self._stamps[slot] != index:
            self._stamps[slot] = index
            self._totals[slot] = 0
            self._errors[slot] = 0
        self._totals[slot] += 1
        if error:
            self._errors[slot] += 1

    def sums(self, now: float) -> tuple[int, int]:
        """(calls, errors) in the window ending at ``now``."""
        oldest = int(now // self._width) - self._n
        total = errors = 0
        for slot, stamp in enumerate(self._stamps):
            if stamp > oldest:
                total += self._totals[slot]
                errors += self._errors[slot]
        return total, errors

    def clear(self) -> None:
        self._stamps = [-1] * self._n


@dataclass(frozen=True, slots=True)
class Transition:
    old: BreakerState
    new: BreakerState
    reason: str


class Breaker:
    """The state of one resource under one rule; thread-safe."""

    __slots__ = (
        "_consecutive",
        "_granted",
        "_granted_at",
        "_lock",
        "_successes",
        "_unreachable",
        "_window",
        "opened_at",
        "rule",
        "state",
    )

    def __init__(self, rule: BreakerRule = DEFAULT_RULE) -> None:
        self.rule = rule
        self.state = BreakerState.CLOSED
        self.opened_at = 0.0
        self._consecutive = 0
        self._unreachable = 0
        self._granted = 0
        self._granted_at = 0.0
        self._successes = 0
        self._window = Window(rule.interval, rule.buckets)
        self._lock = threading.Lock()

    @property
    def reopens_at(self) -> float:
        """When an OPEN breaker turns HALF_OPEN."""
        return self.opened_at + self.rule.sleep_window

    def record(
        self,
        now: float,
        ret_status: str,
        ret_code: int | None = None,
        delay: float | None = None,
    ) -> Transition | None:
        """Count one call's outcome; the transition it caused, if any."""
        rule = self.rule
        error = rule.is_error(ret_status, ret_code, delay)
        with self._lock:
            state = self.state
            if state is BreakerState.CLOSED:
                return self._closed_result(now, error, ret_status == UNREACHABLE)
            if state is BreakerState.HALF_OPEN:
                if error:
                    return self._open(now, BreakerState.HALF_OPEN, "a probe failed")
                self._successes += 1
                if self._successes >= rule.probes:
                    return self._close()
            return None

    def advance(self, now: float) -> Transition | None:
        """Turn OPEN into HALF_OPEN once the sleep window is over."""
        with self._lock:
            if self.state is BreakerState.OPEN and now >= self.reopens_at:
                self.state = BreakerState.HALF_OPEN
                self._granted = 0
                self._successes = 0
                return Transition(BreakerState.OPEN, BreakerState.HALF_OPEN, "sleep window over")
            return None

    def allow(self, now: float) -> bool:
        """Whether a call may go now; in HALF_OPEN each True hands out one probe."""
        state = self.state
        if state is BreakerState.CLOSED:
            return True
        with self._lock:
            if self.state is BreakerState.OPEN:
                if now < self.reopens_at:
                    return False
                self.state = BreakerState.HALF_OPEN
                self._granted = 0
                self._successes = 0
            if self.state is BreakerState.HALF_OPEN:
                if self._granted < self.rule.probes:
                    self._granted += 1
                    self._granted_at = now
                    return True
                if now - self._granted_at >= self.rule.sleep_window:
                    # The probes' results never came: hand them out again.
                    self._granted = 1
                    self._granted_at = now
                    return True
                return False
            return True

    def force_open(self, now: float, reason: str) -> Transition | None:
        with self._lock:
            if self.state is BreakerState.OPEN:
                return None
            return self._open(now, self.state, reason)

    # ----------------------------------------------------------- internals

    def _closed_result(self, now: float, error: bool, unreachable: bool) -> Transition | None:
        rule = self.rule
        self._window.add(now, error)
        if not error:
            self._consecutive = 0
            self._unreachable = 0
            return None
        self._consecutive += 1
        self._unreachable = self._unreachable + 1 if unreachable else 0
        if rule.unreachable_to_open and self._unreachable >= rule.unreachable_to_open:
            return self._open(now, BreakerState.CLOSED, "connection could not be made")
        if rule.consecutive_errors and self._consecutive >= rule.consecutive_errors:
            return self._open(now, BreakerState.CLOSED, f"{self._consecutive} consecutive errors")
        if rule.error_percent:
            total, errors = self._window.sums(now)
            if total >= rule.minimum_requests and errors * 100 >= rule.error_percent * total:
                return self._open(
                    now,
                    BreakerState.CLOSED,
                    f"error rate {errors}/{total} over {rule.interval:g}s",
                )
        return None

    def _open(self, now: float, old: BreakerState, reason: str) -> Transition:
        self.state = BreakerState.OPEN
        self.opened_at = now
        return Transition(old, BreakerState.OPEN, reason)

    def _close(self) -> Transition:
        self.state = BreakerState.CLOSED
        self._consecutive = 0
        self._unreachable = 0
        self._window.clear()
        return Transition(BreakerState.HALF_OPEN, BreakerState.CLOSED, "probes succeeded")


def rule_for_level(rules: Sequence[BreakerRule], level: str) -> BreakerRule | None:
    """The first rule of ``level`` in ``rules``."""
    for rule in rules:
        if rule.level == level:
            return rule
    return None
