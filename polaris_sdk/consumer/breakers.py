"""The breakers of one consumer cache: call results in, what selection leaves out.

Contract:

* One :class:`CircuitBreakers` per consumer cache (so per context and front
  end), shared by every facade over it. It keeps, per service, a
  :class:`~polaris_sdk.consumer.circuitbreaker.Breaker` for each instance
  address reported (instance level, on by default with
  :data:`~polaris_sdk.consumer.circuitbreaker.DEFAULT_RULE`), one for the
  service and one per method when the server's rules ask for those levels.
* ``report()`` is the hot path: two dict lookups, one breaker update under
  that breaker's own lock. Nothing global is locked unless a breaker
  changes state or a service or address is seen for the first time.
* Selection reads :meth:`CircuitBreakers.generation`: a number per service
  that changes only when an instance breaker of that service changes state
  (or its rules change), so memoised pickers stay valid while nothing
  happens. While no instance breaker of a service is open, reading it costs
  two dict lookups and no clock read. :meth:`admit` says which candidates
  are left: OPEN instances are taken out, HALF_OPEN ones are let through a
  few probes at a time (:class:`GuardedPicker`); when every candidate is
  OPEN, all of them are kept (recover-all).
* State changes are logged (``polaris_sdk.consumer.circuitbreaker``:
  WARNING when a breaker opens, INFO when it closes or half-opens) and
  posted to listeners, each behind its own mailbox.
* Bounded: breakers of addresses that left the service are dropped when its
  snapshot is replaced (:meth:`snapshot_replaced`, a cache replace hook);
  at most ``MAX_ADDRESSES`` addresses and ``MAX_SERVICES`` services are
  tracked, results beyond that are not counted.
* ``enabled=False`` (``consumer.circuitBreaker.enable: false``): call
  results are accepted and dropped and :meth:`admit` leaves every candidate
  in; breakers asked for by name (the ``CircuitBreakerAPI``) still work.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, Final, Protocol

from polaris_sdk.consumer.circuitbreaker import (
    DEFAULT_RULE,
    Breaker,
    BreakerRule,
    BreakerState,
    Fallback,
    Transition,
)
from polaris_sdk.consumer.loadbalancer import Picker
from polaris_sdk.model import CircuitBreakerEvent, Instance, ServiceInstances, ServiceKey

__all__ = [
    "MAX_ADDRESSES",
    "MAX_SERVICES",
    "CheckResult",
    "CircuitBreakers",
    "GuardedPicker",
    "ServiceBreakers",
    "Stamp",
]

logger = logging.getLogger("polaris_sdk.consumer.circuitbreaker")

MAX_ADDRESSES: Final = 10_000
"""Instance addresses tracked per service."""
MAX_SERVICES: Final = 10_000
"""Services tracked per cache."""

_INF: Final = float("inf")

Address = tuple[str, int]
EventListener = Callable[[CircuitBreakerEvent], Any]


class Poster(Protocol):
    def post(self, item: CircuitBreakerEvent) -> None: ...

    def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class CheckResult:
    """Whether a call to a resource may go now, and what to answer if not."""

    allowed: bool
    state: str
    rule: str = ""
    fallback: Fallback | None = None


class ServiceBreakers:
    """The breakers of one service. Read without a lock; changed under ``lock``."""

    __slots__ = (
        "excluded",
        "generation",
        "instance_rule",
        "instances",
        "key",
        "lock",
        "method_rules",
        "methods",
        "probing",
        "service_breaker",
        "wake_at",
    )

    def __init__(self, key: ServiceKey) -> None:
        self.key = key
        self.generation = 0
        self.wake_at = _INF
        self.instances: dict[Address, Breaker] = {}
        self.excluded: frozenset[Address] = frozenset()
        self.probing: dict[Address, Breaker] = {}
        self.instance_rule: BreakerRule = DEFAULT_RULE
        self.service_breaker: Breaker | None = None
        self.method_rules: tuple[BreakerRule, ...] = ()
        self.methods: dict[str, Breaker] = {}
        self.lock = threading.Lock()

    def recount(self) -> None:
        """Rebuild what selection reads from the instance breakers; under ``lock``."""
        excluded = []
        probing = {}
        wake = _INF
        for address, breaker in self.instances.items():
            if breaker.state is BreakerState.OPEN:
                excluded.append(address)
                wake = min(wake, breaker.reopens_at)
            elif breaker.state is BreakerState.HALF_OPEN:
                probing[address] = breaker
        self.excluded = frozenset(excluded)
        self.probing = probing
        self.wake_at = wake
        self.generation += 1


Stamp = tuple[ServiceBreakers | None, int]
"""What :meth:`CircuitBreakers.stamp` answers."""


class GuardedPicker:
    """Hands out a HALF_OPEN instance only while its breaker grants probes."""

    __slots__ = ("_clock", "_guarded", "_inner", "_safe")

    def __init__(
        self,
        inner: Picker,
        safe: Picker | None,
        guarded: dict[Address, Breaker],
        clock: Callable[[], float],
    ) -> None:
        self._inner = inner
        self._safe = safe
        self._guarded = guarded
        self._clock = clock

    def pick(self, hash_key: bytes | None = None) -> Instance:
        chosen = self._inner.pick(hash_key)
        breaker = self._guarded.get((chosen.host, chosen.port))
        if breaker is None or self._safe is None or breaker.allow(self._clock()):
            return chosen
        return self._safe.pick(hash_key)


class CircuitBreakers:
    """Every breaker of one consumer cache; thread-safe."""

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.monotonic,
        mailbox: Callable[[EventListener], Poster] | None = None,
        on_new_service: Callable[[ServiceKey], None] | None = None,
        enabled: bool = True,
    ) -> None:
        self.clock = clock
        self.enabled = enabled
        self._mailbox = mailbox
        self._on_new_service = on_new_service
        self._by_namespace: dict[str, dict[str, ServiceBreakers]] = {}
        self._count = 0
        self.added = 0
        """How many services' records were made: a :meth:`stamp` without a record
        holds until this changes."""
        self._lock = threading.Lock()
        self._listeners: list[tuple[EventListener, Poster]] = []
        self._closers: list[Callable[[], Any]] = []

    def closing(self, *closers: Callable[[], Any]) -> None:
        """Call each of ``closers`` (in order) from :meth:`close`: what this owns."""
        self._closers.extend(closers)

    # ------------------------------------------------------------ reading

    def get(self, namespace: str, service: str) -> ServiceBreakers | None:
        services = self._by_namespace.get(namespace)
        return None if services is None else services.get(service)

    def stamp(self, namespace: str, service: str) -> Stamp:
        """:meth:`generation`, as what a memo checks it by without a dict lookup:
        ``(record, its generation)``, or ``(None, added)`` while the service has
        no record. It holds while the record's generation stays the same and its
        ``wake_at`` has not come (:meth:`generation` would half-open a breaker
        then), or, without a record, while :attr:`added` stays the same."""
        added = self.added  # before the lookup: a record made after it changes it
        found = self.get(namespace, service)
        if found is None:
            return None, added
        return found, self._generation_of(found)

    def generation(self, namespace: str, service: str) -> int:
        """Changes whenever what :meth:`admit` answers for the service may change."""
        found = self.get(namespace, service)
        return 0 if found is None else self._generation_of(found)

    def _generation_of(self, found: ServiceBreakers) -> int:
        """``found``'s generation, after half-opening what its ``wake_at`` says is due."""
        if found.wake_at != _INF and self.clock() >= found.wake_at:
            self._wake(found)
        return found.generation

    def admit(
        self, namespace: str, service: str, instances: tuple[Instance, ...]
    ) -> tuple[tuple[Instance, ...], dict[Address, Breaker] | None, tuple[Instance, ...]]:
        """(candidates, HALF_OPEN breakers among them, candidates not HALF_OPEN)."""
        if not self.enabled:
            return instances, None, instances
        found = self.get(namespace, service)
        if found is None or not (found.excluded or found.probing):
            return instances, None, instances
        excluded = found.excluded
        kept = tuple(i for i in instances if (i.host, i.port) not in excluded)
        if not kept:
            return instances, None, instances  # recover all
        probing = found.probing
        guarded = {
            (i.host, i.port): probing[(i.host, i.port)] for i in kept if (i.host, i.port) in probing
        }
        if not guarded:
            return kept, None, kept
        safe = tuple(i for i in kept if (i.host, i.port) not in guarded)
        return kept, guarded, safe

    def state(self, namespace: str, service: str, host: str, port: int) -> str:
        """The state of an instance's breaker (``closed`` when none is kept)."""
        found = self.get(namespace, service)
        breaker = None if found is None else found.instances.get((host, port))
        if breaker is None:
            return BreakerState.CLOSED.value
        if found is not None and breaker.advance(self.clock()) is not None:
            self._changed(found, "instance", f"{host}:{port}", breaker, None)
        return breaker.state.value

    def breaker_for(
        self,
        namespace: str,
        service: str,
        level: str,
        method: str = "",
        address: Address | None = None,
    ) -> tuple[ServiceBreakers, Breaker, str] | None:
        """The breaker of one resource, made with the server's rule of its level or
        the default rule; None past the bounds. Also returns the resource's name."""
        found = self.get(namespace, service) or self._new_service(ServiceKey(namespace, service))
        if found is None:
            return None
        if level == "instance" and address is not None:
            breaker = found.instances.get(address) or self._new_instance(found, address)
            name = f"{address[0]}:{address[1]}"
        elif level == "method":
            breaker = found.methods.get(method) or self._method_breaker(found, method, True)
            name = method
        else:
            with found.lock:
                if found.service_breaker is None:
                    found.service_breaker = Breaker(replace(DEFAULT_RULE, level="service"))
                breaker = found.service_breaker
            name = ""
        return None if breaker is None else (found, breaker, name)

    def allow(self, found: ServiceBreakers, level: str, name: str, breaker: Breaker) -> CheckResult:
        """Whether a call to the resource may go now (a HALF_OPEN grant counts as a probe)."""
        before = breaker.state
        allowed = breaker.allow(self.clock())
        if breaker.state is not before:
            change = Transition(before, breaker.state, "sleep window over")
            if level == "instance":
                self._changed(found, level, name, breaker, change)
            else:
                self._emit(found, level, name, breaker, change)
        if allowed:
            return CheckResult(True, breaker.state.value, breaker.rule.name)
        return CheckResult(False, breaker.state.value, breaker.rule.name, breaker.rule.fallback)

    def record(
        self,
        found: ServiceBreakers,
        level: str,
        name: str,
        breaker: Breaker,
        ret_status: str,
        ret_code: int | None,
        delay: float | None,
    ) -> None:
        change = breaker.record(self.clock(), ret_status, ret_code, delay)
        if change is None:
            return
        if level == "instance":
            self._changed(found, level, name, breaker, change)
        else:
            self._emit(found, level, name, breaker, change)

    # ------------------------------------------------------------ writing

    def report(
        self,
        namespace: str,
        service: str,
        address: Address | None,
        ret_status: str,
        ret_code: int | None,
        delay: float | None,
        method: str,
    ) -> None:
        """Count one call's outcome on every breaker it concerns (none when circuit
        breaking is off: the result is accepted and dropped)."""
        if not self.enabled:
            return
        found = self.get(namespace, service)
        if found is None:
            found = self._new_service(ServiceKey(namespace, service))
            if found is None:
                return
        now = self.clock()
        if address is not None:
            breaker = found.instances.get(address)
            if breaker is None:
                breaker = self._new_instance(found, address)
            if breaker is not None:
                change = breaker.record(now, ret_status, ret_code, delay)
                if change is not None:
                    self._changed(found, "instance", f"{address[0]}:{address[1]}", breaker, change)
        service_breaker = found.service_breaker
        if service_breaker is not None:
            change = service_breaker.record(now, ret_status, ret_code, delay)
            if change is not None:
                self._emit(found, "service", "", service_breaker, change)
        if method and found.method_rules:
            breaker = found.methods.get(method) or self._method_breaker(found, method)
            if breaker is not None:
                change = breaker.record(now, ret_status, ret_code, delay)
                if change is not None:
                    self._emit(found, "method", method, breaker, change)

    def set_rules(self, key: ServiceKey, rules: Sequence[BreakerRule]) -> None:
        """The server's rules for a service (empty: the default instance rule only)."""
        found = self.get(key.namespace, key.service) or self._new_service(key, notify=False)
        if found is None:
            return
        instance_rule = next((r for r in rules if r.level == "instance"), DEFAULT_RULE)
        service_rule = next((r for r in rules if r.level == "service"), None)
        with found.lock:
            found.instance_rule = instance_rule
            for address, breaker in list(found.instances.items()):
                found.instances[address] = _rebound(breaker, instance_rule)
            if service_rule is None:
                found.service_breaker = None
            elif found.service_breaker is None:
                found.service_breaker = Breaker(service_rule)
            else:
                found.service_breaker = _rebound(found.service_breaker, service_rule)
            found.method_rules = tuple(r for r in rules if r.level == "method")
            found.methods = {}
            found.recount()
        logger.info("circuit breaker rules of %s: %s", key, [r.name for r in rules] or "default")

    def snapshot_replaced(
        self, key: ServiceKey, old: ServiceInstances | None, new: ServiceInstances
    ) -> None:
        """Cache replace hook: forget breakers of addresses no longer in the service."""
        found = self.get(key.namespace, key.service)
        if found is None or not found.instances:
            return
        present = {(i.host, i.port) for i in new.instances}
        with found.lock:
            gone = [a for a in found.instances if a not in present]
            if not gone:
                return
            for address in gone:
                del found.instances[address]
            found.recount()

    # ---------------------------------------------------------- listeners

    def add_listener(self, listener: EventListener) -> None:
        if self._mailbox is None:
            raise RuntimeError("this CircuitBreakers has no listener delivery")
        with self._lock:
            self._listeners.append((listener, self._mailbox(listener)))

    def remove_listener(self, listener: EventListener) -> None:
        with self._lock:
            kept = []
            for pair in self._listeners:
                if pair[0] == listener:
                    pair[1].close()
                else:
                    kept.append(pair)
            self._listeners = kept

    def close(self) -> None:
        with self._lock:
            listeners, self._listeners = self._listeners, []
            closers, self._closers = self._closers, []
        for _, mailbox in listeners:
            mailbox.close()
        for close in closers:
            close()

    # ------------------------------------------------------------ helpers

    def _new_service(self, key: ServiceKey, *, notify: bool = True) -> ServiceBreakers | None:
        with self._lock:
            services = self._by_namespace.setdefault(key.namespace, {})
            found = services.get(key.service)
            if found is not None:
                return found
            if self._count >= MAX_SERVICES:
                return None
            found = ServiceBreakers(key)
            services[key.service] = found
            self._count += 1
            self.added += 1
        if notify and self._on_new_service is not None:
            self._on_new_service(key)
        return found

    def _new_instance(self, found: ServiceBreakers, address: Address) -> Breaker | None:
        with found.lock:
            breaker = found.instances.get(address)
            if breaker is None and len(found.instances) < MAX_ADDRESSES:
                breaker = Breaker(found.instance_rule)
                found.instances[address] = breaker
            return breaker

    def _method_breaker(
        self, found: ServiceBreakers, method: str, default: bool = False
    ) -> Breaker | None:
        rule = next((r for r in found.method_rules if r.method is None or r.method(method)), None)
        if rule is None:
            if not default:
                return None
            rule = replace(DEFAULT_RULE, level="method")
        with found.lock:
            breaker = found.methods.get(method)
            if breaker is None and len(found.methods) < MAX_ADDRESSES:
                breaker = Breaker(rule)
                found.methods[method] = breaker
            return breaker

    def _wake(self, found: ServiceBreakers) -> None:
        now = self.clock()
        for address, breaker in list(found.instances.items()):
            change = breaker.advance(now)
            if change is not None:
                self._changed(found, "instance", f"{address[0]}:{address[1]}", breaker, change)
        with found.lock:
            if found.wake_at <= now:
                found.recount()

    def _changed(
        self,
        found: ServiceBreakers,
        level: str,
        resource: str,
        breaker: Breaker,
        change: Transition | None,
    ) -> None:
        with found.lock:
            found.recount()
        if change is not None:
            self._emit(found, level, resource, breaker, change)

    def _emit(
        self,
        found: ServiceBreakers,
        level: str,
        resource: str,
        breaker: Breaker,
        change: Transition,
    ) -> None:
        event = CircuitBreakerEvent(
            namespace=found.key.namespace,
            service=found.key.service,
            level=level,
            resource=resource,
            old_state=change.old.value,
            new_state=change.new.value,
            reason=change.reason,
            rule=breaker.rule.name,
        )
        where = f"{found.key} {level} {resource}".rstrip()
        if change.new is BreakerState.OPEN:
            logger.warning("circuit breaker of %s opened: %s", where, change.reason)
        else:
            logger.info("circuit breaker of %s is %s: %s", where, change.new.value, change.reason)
        for _, mailbox in self._listeners:
            mailbox.post(event)


def _rebound(breaker: Breaker, rule: BreakerRule) -> Breaker:
    """``breaker`` under ``rule``, keeping its state."""
    if breaker.rule == rule:
        return breaker
    fresh = Breaker(rule)
    fresh.state = breaker.state
    fresh.opened_at = breaker.opened_at
    return fresh
