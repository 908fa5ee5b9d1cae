"""The decisions of keeping one instance registered, without any I/O.

Contract:

* :class:`RegistrationCore` is a state machine fed with outcomes (a
  registration or a heartbeat succeeded or failed, at time ``now``) that
  answers with the next :class:`Step`: heartbeat or register again, and when.
  It never sleeps, sends or logs, so the threaded driver
  (:mod:`polaris_sdk.provider.heartbeat`) and a later asyncio one share it
  and its tests need no server.
* Times are seconds on one monotonic clock chosen by the caller.
* Not thread-safe: the driver serialises calls for one instance.
* :class:`StepReporter` decides what a driver logs after each step (it
  returns the line; the driver writes it), so every driver logs alike. A
  recovery is reported at the level its failure was.

The rules (design.md, "Defaults worth keeping"):

* Heartbeats run at a fixed rate of one per TTL, counted from when each was
  due, so a late one does not shift all that follow.
* A ``ResourceNotFoundError`` answer means the server has forgotten the
  instance. After two in a row the instance is registered again, after
  ``min(ttl * 2^(n-1) + jitter, cap)`` for the n-th re-registration since the
  last successful heartbeat; jitter is up to half a TTL, so a fleet that lost
  one server does not come back in lockstep.
* Any other failure is counted and remembered in the status; heartbeats go
  on at the same rate. The loop never gives up on its own.
"""

from __future__ import annotations

import enum
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass

from polaris_sdk.errors import PolarisError, ResourceNotFoundError
from polaris_sdk.model import InstanceRegisterRequest

__all__ = [
    "FAILURE_LEVEL",
    "NOT_FOUND_THRESHOLD",
    "Action",
    "LogLine",
    "RegistrationCore",
    "RegistrationState",
    "RegistrationStatus",
    "Step",
    "StepReporter",
    "reregister_backoff",
]

NOT_FOUND_THRESHOLD = 2
FAILURE_LEVEL = logging.WARNING
"""The level failed heartbeats and registrations are logged at, and so their recovery."""
_LOG_EVERY = 10


class RegistrationState(enum.Enum):
    """Where one registered instance stands."""

    REGISTERED = "registered"
    """Registered, and the last heartbeat (if any yet) succeeded."""
    FAILING = "failing"
    """Heartbeats fail (network, server error); they go on at the same rate."""
    REREGISTERING = "reregistering"
    """The server lost the instance, or re-registering failed; a registration is due."""
    DEREGISTERED = "deregistered"
    """Stopped by ``deregister()`` or ``close()``; nothing more is sent."""


class Action(enum.Enum):
    HEARTBEAT = "heartbeat"
    REGISTER = "register"


@dataclass(frozen=True, slots=True)
class Step:
    """Do ``action`` at time ``at``."""

    action: Action
    at: float


@dataclass(frozen=True, slots=True)
class RegistrationStatus:
    """A snapshot of one instance's registration, for users and callbacks."""

    instance_id: str
    namespace: str
    service: str
    host: str
    port: int
    ttl: int
    state: RegistrationState
    consecutive_failures: int = 0
    """Failed heartbeats or registrations since the last success."""
    reregistrations: int = 0
    """Times the instance was registered again since it was first registered."""
    last_error: PolarisError | None = None
    last_success: float | None = None
    """When (on the driver's clock) a heartbeat or registration last succeeded."""


def reregister_backoff(ttl: float, attempt: int, jitter: float, cap: float) -> float:
    """Seconds before re-registration number ``attempt`` (1-based)."""
    exponent = min(max(attempt, 1) - 1, 32)
    return float(min(ttl * (1 << exponent) + jitter, cap))


class RegistrationCore:
    """The state machine of one instance; see the module docstring."""

    def __init__(
        self,
        instance_id: str,
        request: InstanceRegisterRequest,
        ttl: int,
        *,
        max_backoff: float = 60.0,
        random_fraction: Callable[[], float] = random.random,
    ) -> None:
        self.instance_id = instance_id
        self.request = request
        self.ttl = ttl
        self._max_backoff = max_backoff
        self._random = random_fraction
        self.state = RegistrationState.REGISTERED
        self._not_found = 0
        self._failures = 0
        self._attempts = 0  # re-registrations since the last successful heartbeat
        self._reregistrations = 0
        self._last_error: PolarisError | None = None
        self._last_success: float | None = None

    # ------------------------------------------------------------ outcomes

    def registered(self, now: float) -> Step:
        """The registration (first or again) succeeded at ``now``."""
        if self.state is RegistrationState.REREGISTERING:
            self._reregistrations += 1
        self.state = RegistrationState.REGISTERED
        self._not_found = 0
        self._failures = 0
        self._last_error = None
        self._last_success = now
        return Step(Action.HEARTBEAT, now + self.ttl)

    def register_failed(self, error: PolarisError, now: float) -> Step:
        """A re-registration failed; try again after a longer backoff."""
        self._failures += 1
        self._last_error = error
        return self._reregister(now)

    def heartbeat_ok(self, due: float, now: float) -> Step:
        self.state = RegistrationState.REGISTERED
        self._not_found = 0
        self._failures = 0
        self._attempts = 0
        self._last_error = None
        self._last_success = now
        return self._next_beat(due, now)

    def heartbeat_failed(self, error: PolarisError, due: float, now: float) -> Step:
        self._failures += 1
        self._last_error = error
        if isinstance(error, ResourceNotFoundError):
            self._not_found += 1
            if self._not_found >= NOT_FOUND_THRESHOLD:
                return self._reregister(now)
        else:
            self._not_found = 0
        self.state = RegistrationState.FAILING
        return self._next_beat(due, now)

    def step_done(self, step: Step, error: PolarisError | None, now: float) -> Step:
        """``step`` was sent and ended at ``now``, with ``error`` or fine; the next step."""
        if step.action is Action.HEARTBEAT:
            if error is None:
                return self.heartbeat_ok(step.at, now)
            return self.heartbeat_failed(error, step.at, now)
        if error is None:
            return self.registered(now)
        return self.register_failed(error, now)

    def stop(self) -> None:
        self.state = RegistrationState.DEREGISTERED

    # -------------------------------------------------------------- views

    def status(self) -> RegistrationStatus:
        req = self.request
        return RegistrationStatus(
            instance_id=self.instance_id,
            namespace=req.namespace,
            service=req.service,
            host=req.host,
            port=req.port,
            ttl=self.ttl,
            state=self.state,
            consecutive_failures=self._failures,
            reregistrations=self._reregistrations,
            last_error=self._last_error,
            last_success=self._last_success,
        )

    # ----------------------------------------------------------- internal

    def _next_beat(self, due: float, now: float) -> Step:
        return Step(Action.HEARTBEAT, max(due + self.ttl, now))

    def _reregister(self, now: float) -> Step:
        self.state = RegistrationState.REREGISTERING
        self._not_found = 0
        self._attempts += 1
        jitter = self._random() * self.ttl / 2
        delay = reregister_backoff(self.ttl, self._attempts, jitter, self._max_backoff)
        return Step(Action.REGISTER, now + delay)


@dataclass(frozen=True, slots=True)
class LogLine:
    """A line for the driver to log: ``logger.log(level, message, *args)``."""

    level: int
    message: str
    args: tuple[object, ...]


class StepReporter:
    """What to log after each step of one instance; one per registration.

    Failures are logged when a run of them starts and every
    ``_LOG_EVERY``-th time after; the end of the run is logged at the level
    its failure was, so a log filtered at that level shows both. Not
    thread-safe: called where the core is, under the same serialisation.
    """

    __slots__ = ("_failure_level",)

    def __init__(self) -> None:
        self._failure_level = 0  # the level the current run of failures was logged at

    def report(
        self, step: Step, before: RegistrationState, status: RegistrationStatus, next_in: float
    ) -> LogLine | None:
        """The line for ``step`` that moved the instance from ``before`` to ``status``."""
        iid = status.instance_id
        after = status.state
        if step.action is Action.REGISTER and status.last_error is None:
            return self._recovered("re-registered %s", (iid,))
        if after is RegistrationState.REREGISTERING:
            return self._failed(
                "%s: %s failed (%s); registering again in %.1fs",
                (iid, step.action.value, status.last_error, max(0.0, next_in)),
            )
        if after is RegistrationState.FAILING and (
            before is not after or status.consecutive_failures % _LOG_EVERY == 0
        ):
            return self._failed(
                "%s: heartbeat failed %d time(s) in a row: %s",
                (iid, status.consecutive_failures, status.last_error),
            )
        if after is RegistrationState.REGISTERED and before is not after:
            return self._recovered("%s: heartbeats succeed again", (iid,))
        return None

    def _failed(self, message: str, args: tuple[object, ...]) -> LogLine:
        self._failure_level = max(self._failure_level, FAILURE_LEVEL)
        return LogLine(FAILURE_LEVEL, message, args)

    def _recovered(self, message: str, args: tuple[object, ...]) -> LogLine:
        level, self._failure_level = self._failure_level or logging.INFO, 0
        return LogLine(level, message, args)
