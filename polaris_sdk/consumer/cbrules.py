"""The server's circuit-breaker rules: compiled for the breakers, and kept fresh.

Contract:

* :func:`compile_rules` turns ``v1.CircuitBreakerRule`` messages (as
  Discover CIRCUIT_BREAKER answers them) into
  :class:`~polaris_sdk.consumer.circuitbreaker.BreakerRule` values: enabled
  rules whose destination (namespace and service, ``*`` for any) names the
  callee, at SERVICE, METHOD or INSTANCE level (GROUP is not supported and
  skipped). ERROR_RATE and CONSECUTIVE_ERROR triggers set the thresholds (a
  trigger the rule does not name is off); RET_CODE conditions (any
  MatchString, RANGE ``"500~599"`` included) and DELAY conditions
  (milliseconds) define an error (without RET_CODE conditions: 500~599);
  ``recoverCondition`` the sleep window and the probes; ``fallbackConfig``
  the answer of a refused call. The fast rule for unreachable instances
  stays on under every rule. A rule that cannot be read is skipped and
  logged, never raised.
* :class:`RulePoller` (blocking, on the context's scheduler) and
  :class:`AsyncRulePoller` (a supervised task per service on the context's
  loop) fetch a service's rules once when the breakers first see it, then
  every refresh interval with the last revision (200001: nothing to do), the
  small extra round a reflector makes per service. A failed fetch keeps the
  rules in force. ``close()`` stops them.
"""

from __future__ import annotations

import asyncio
import logging
import random
import threading
from collections.abc import Callable, Iterable
from typing import Any, Final

from polaris_sdk.connector.rules import circuit_breaker_result, discover_circuit_breaker
from polaris_sdk.consumer.breakers import CircuitBreakers
from polaris_sdk.consumer.circuitbreaker import BreakerRule, CodeMatcher, Fallback, match_string
from polaris_sdk.errors import ClosedError, PolarisError
from polaris_sdk.model import ServiceKey
from polaris_sdk.scheduler import Scheduler, TimerHandle

__all__ = ["AsyncRulePoller", "RulePoller", "compile_rule", "compile_rules", "name_matches"]

logger = logging.getLogger("polaris_sdk.consumer.circuitbreaker")

_LEVELS: Final = {1: "service", 2: "method", 4: "instance"}
_MATCH_TYPES: Final = ("EXACT", "REGEX", "NOT_EQUALS", "IN", "NOT_IN", "RANGE")
_RET_CODE: Final = 1
_DELAY: Final = 2
_ERROR_RATE: Final = 1
_CONSECUTIVE: Final = 2


def name_matches(pattern: str, name: str) -> bool:
    """A rule's namespace or service: empty or ``*`` matches any."""
    return pattern in ("", "*") or pattern == name


def _matcher(match: Any) -> Callable[[str], bool] | None:
    value = match.value.value
    if not value:
        return None
    kind = _MATCH_TYPES[match.type] if 0 <= match.type < len(_MATCH_TYPES) else "EXACT"
    return match_string(kind, value)


def _any_of(predicates: list[Callable[[str], bool]]) -> CodeMatcher:
    def matches(code: int) -> bool:
        text = str(code)
        return any(predicate(text) for predicate in predicates)

    return matches


def compile_rule(msg: Any) -> BreakerRule | None:
    """One rule message as a BreakerRule; None when it is disabled or of a level not kept.
    ValueError when a condition cannot be read."""
    level = _LEVELS.get(msg.level)
    if not msg.enable or level is None:
        return None
    fields: dict[str, Any] = {"name": msg.name or msg.id, "level": level}
    codes: list[Callable[[str], bool]] = []
    for condition in msg.error_conditions:
        if condition.input_type == _RET_CODE:
            predicate = _matcher(condition.condition)
            if predicate is not None:
                codes.append(predicate)
        elif condition.input_type == _DELAY and condition.condition.value.value:
            fields["max_delay"] = float(condition.condition.value.value) / 1000.0
    if codes:
        fields["error_codes"] = _any_of(codes)
    triggers = list(msg.trigger_condition)
    if triggers:
        fields["consecutive_errors"] = 0
        fields["error_percent"] = 0
    for trigger in triggers:
        if trigger.trigger_type == _ERROR_RATE:
            fields["error_percent"] = trigger.error_percent or 50
            fields["minimum_requests"] = trigger.minimum_request or 10
            if trigger.interval:
                fields["interval"] = float(trigger.interval)
        elif trigger.trigger_type == _CONSECUTIVE:
            fields["consecutive_errors"] = trigger.error_count or 10
    if msg.HasField("recoverCondition"):
        recover = msg.recoverCondition
        if recover.sleep_window:
            fields["sleep_window"] = float(recover.sleep_window)
        if recover.consecutiveSuccess:
            fields["probes"] = recover.consecutiveSuccess
    if level == "method":
        method = msg.rule_matcher.destination.method
        fields["method"] = (
            _matcher(method) if msg.rule_matcher.destination.HasField("method") else None
        )
    if msg.HasField("fallbackConfig") and msg.fallbackConfig.enable:
        response = msg.fallbackConfig.response
        fields["fallback"] = Fallback(
            code=response.code,
            headers=tuple((h.key, h.value) for h in response.headers),
            body=response.body,
        )
    return BreakerRule(**fields)


def compile_rules(messages: Iterable[Any], key: ServiceKey) -> tuple[BreakerRule, ...]:
    """The rules among ``messages`` that apply to calls to ``key``, highest priority first
    (a lower ``priority`` number wins, as on the server)."""
    kept: list[tuple[int, BreakerRule]] = []
    for msg in messages:
        destination = msg.rule_matcher.destination
        if not (
            name_matches(destination.namespace, key.namespace)
            and name_matches(destination.service, key.service)
        ):
            continue
        try:
            rule = compile_rule(msg)
        except (ValueError, IndexError) as exc:
            logger.warning("circuit breaker rule %r of %s skipped: %s", msg.name, key, exc)
            continue
        if rule is not None:
            kept.append((msg.priority, rule))
    kept.sort(key=lambda pair: pair[0])
    return tuple(rule for _, rule in kept)


class _Revisions:
    """The last revision seen per service, and whether rules were ever applied."""

    def __init__(self, breakers: CircuitBreakers) -> None:
        self.breakers = breakers
        self.revisions: dict[ServiceKey, str] = {}

    def apply(self, key: ServiceKey, answer: Any) -> None:
        result = circuit_breaker_result(answer)
        if result is None:
            return
        revision, messages = result
        known = self.revisions.get(key)
        if known == revision and not messages:
            return
        if known is None and not messages:
            self.revisions[key] = revision
            return
        self.revisions[key] = revision
        self.breakers.set_rules(key, compile_rules(messages, key))


def _delay(interval: float) -> float:
    return interval * (0.9 + 0.2 * random.random())


class RulePoller:
    """Keeps the rules of every service the breakers see, on a blocking connector."""

    def __init__(
        self,
        connector: Any,
        scheduler: Scheduler,
        breakers: CircuitBreakers,
        interval: float,
        timeout: float,
    ) -> None:
        self._connector = connector
        self._scheduler = scheduler
        self._state = _Revisions(breakers)
        self._interval = interval
        self._timeout = timeout
        self._handles: dict[ServiceKey, TimerHandle] = {}
        self._lock = threading.Lock()
        self._closed = False

    def start(self, key: ServiceKey) -> None:
        self._arm(key, 0.0)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            handles, self._handles = self._handles, {}
        for handle in handles.values():
            handle.cancel()

    def _arm(self, key: ServiceKey, delay: float) -> None:
        with self._lock:
            if self._closed:
                return
            try:
                self._handles[key] = self._scheduler.call_later(delay, self._poll, key)
            except ClosedError:
                self._closed = True

    def _poll(self, key: ServiceKey) -> None:
        try:
            call = discover_circuit_breaker(key, self._state.revisions.get(key, ""))
            self._state.apply(key, self._connector.call(call, self._timeout))
        except PolarisError as exc:
            logger.debug("circuit breaker rules of %s not refreshed: %s", key, exc)
        finally:
            self._arm(key, _delay(self._interval))


class AsyncRulePoller:
    """The asyncio twin of :class:`RulePoller`: one supervised task per service."""

    def __init__(
        self, ctx: Any, breakers: CircuitBreakers, interval: float, timeout: float
    ) -> None:
        self._ctx = ctx
        self._state = _Revisions(breakers)
        self._interval = interval
        self._timeout = timeout

    def start(self, key: ServiceKey) -> None:
        if self._ctx.closed:
            return

        async def run() -> None:
            while not self._ctx.closed:
                try:
                    call = discover_circuit_breaker(key, self._state.revisions.get(key, ""))
                    answer = await self._ctx.connector.call(call, self._timeout)
                    self._state.apply(key, answer)
                except PolarisError as exc:
                    logger.debug("circuit breaker rules of %s not refreshed: %s", key, exc)
                await asyncio.sleep(_delay(self._interval))

        self._ctx.spawn(f"polaris-cbrules-{key}", run)
