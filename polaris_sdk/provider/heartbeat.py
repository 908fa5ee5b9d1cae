"""The threaded heartbeat driver: each registration's steps, run on the context's scheduler.

Contract:

* One timer entry per heartbeating instance on the shared
  :class:`~polaris_sdk.scheduler.Scheduler`, never a thread per instance.
  When each step (heartbeat or re-registration) is due is decided by the
  instance's :class:`~polaris_sdk.provider.core.RegistrationCore`, on the
  scheduler's clock, so a test's fake clock drives the whole loop.
* A step runs on a scheduler worker, with a deadline of
  ``min(global.api.timeout, ttl)``, in two parts: it is sent, then its
  answer is waited for in the step's continuation, so the steps due in one
  slot are on the wire together (concurrent unaries), not one after
  another. Its outcome goes to the core, which names the next step; the
  driver arms it, logs what the registration's
  :class:`~polaris_sdk.provider.core.StepReporter` says (a recovery at the
  level its failure was), and hands a changed status to ``notify``, which
  must not block (it posts to the listeners' mailboxes).
* The loop never ends on its own: an unexpected exception is logged and the
  same step tried again one TTL later.
* :meth:`HeartbeatDriver.halt` stops new steps at once and leaves one in
  flight to end; :meth:`HeartbeatDriver.stop` also waits for it, so nothing
  more is sent for the registration once it returns.
* Thread-safe: each registration's core, timer and stopped flag are guarded
  by its own lock (never held across I/O); a second lock of its own is held
  while one of its steps is on the wire.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import NamedTuple, Protocol

from polaris_sdk.connector.base import HeartbeatSender
from polaris_sdk.errors import ClosedError, PolarisError
from polaris_sdk.model import InstanceRegisterRequest, InstanceRegisterResponse
from polaris_sdk.observe import Observers
from polaris_sdk.provider.core import (
    Action,
    RegistrationCore,
    RegistrationState,
    RegistrationStatus,
    Step,
)
from polaris_sdk.provider.registry import Registration
from polaris_sdk.scheduler import Continuation, Scheduler, slot_for

__all__ = ["HeartbeatDriver", "Notify", "ThreadedRegistration"]

logger = logging.getLogger("polaris_sdk.provider.heartbeat")

Notify = Callable[[RegistrationStatus, object], None]
"""Takes a changed status and the registration's owner; must not block."""


class _StepSender(HeartbeatSender, Protocol):
    """What a step sends: a heartbeat, or the registration again."""

    def register_instance(
        self, req: InstanceRegisterRequest, ttl: int | None, *, timeout: float | None = None
    ) -> InstanceRegisterResponse: ...


class ThreadedRegistration(Registration):
    """A registration with the two locks of this driver."""

    __slots__ = ("io_lock", "lock")

    def __init__(self, core: RegistrationCore, owner: object, heartbeats: bool) -> None:
        super().__init__(core, owner, heartbeats)
        self.lock = threading.Lock()  # guards core, handle and stopped
        self.io_lock = threading.Lock()  # held while a step is on the wire


class HeartbeatDriver:
    """Arms, runs and logs the steps of registrations; see the module docstring."""

    def __init__(
        self,
        connector: _StepSender,
        scheduler: Scheduler,
        api_timeout: float,
        notify: Notify,
        observers: Observers | None = None,
    ) -> None:
        self._observers = observers or Observers()
        self._connector = connector
        self._begin_heartbeat = _beginner(connector, "heartbeat", connector.heartbeat)
        self._begin_register = _beginner(connector, "register", connector.register_instance)
        self._scheduler = scheduler
        self._api_timeout = api_timeout
        self._notify = notify

    def now(self) -> float:
        """The time on the scheduler's clock, the one every step is timed on."""
        return self._scheduler.clock()

    def registered(self, reg: ThreadedRegistration) -> Step:
        """``reg`` has (again) been registered now: let it step; its first step."""
        with reg.lock:
            reg.stopped = False
            return reg.core.registered(self.now())

    def start(self, reg: ThreadedRegistration, step: Step) -> None:
        """Run ``step`` when it is due, and the steps after it, until halted."""
        with reg.lock:
            if reg.stopped:
                return
            try:
                slot = slot_for(reg.core.ttl, step.at - self.now())
                reg.handle = self._scheduler.call_in_slot(step.at, self._tick, reg, step, slot=slot)
            except ClosedError:
                reg.handle = None
            except Exception:
                reg.handle = None
                logger.exception(
                    "%s: could not schedule the next %s; this instance is no longer kept alive",
                    reg.instance_id,
                    step.action.value,
                )

    def halt(self, reg: ThreadedRegistration) -> None:
        """No new step from ``reg``; one in flight goes on."""
        with reg.lock:
            reg.stopped = True
            if reg.handle is not None:
                reg.handle.cancel()
                reg.handle = None

    def stop(self, reg: ThreadedRegistration) -> None:
        """No more steps from ``reg``; returns once none is in flight. Notifies "deregistered"."""
        self.halt(reg)
        with reg.io_lock:
            pass  # a step in flight has ended; none can start
        with reg.lock:
            changed = reg.core.state is not RegistrationState.DEREGISTERED
            reg.core.stop()
            status = reg.core.status()
        if changed:
            self._notify(status, reg.owner)

    # ------------------------------------------------------------ internal

    def _tick(self, reg: ThreadedRegistration, step: Step) -> Continuation | None:
        """A slotted step: sends it and returns the rest (run by the scheduler once
        the other steps due in the slot have sent theirs)."""
        try:
            begun = self._begin(reg, step)
        except Exception:
            self._failed_unexpectedly(reg, step)
            self.start(reg, Step(step.action, self.now() + reg.core.ttl))
            return None
        if begun is None:
            return None
        return lambda: self._finish(reg, step, begun)

    def _finish(self, reg: ThreadedRegistration, step: Step, begun: _Begun) -> None:
        # Whatever fails below, the loop goes on: by default the same step
        # again one TTL from now.
        nxt: Step | None = Step(step.action, self.now() + reg.core.ttl)
        try:
            nxt = self._complete(reg, step, begun)
        except Exception:
            self._failed_unexpectedly(reg, step)
        finally:
            if nxt is not None:
                self.start(reg, nxt)

    def _failed_unexpectedly(self, reg: ThreadedRegistration, step: Step) -> None:
        logger.exception(
            "%s of %s failed unexpectedly; trying again in %ss",
            step.action.value,
            reg.instance_id,
            reg.core.ttl,
        )

    def _begin(self, reg: ThreadedRegistration, step: Step) -> _Begun | None:
        """Take ``reg``'s wire lock and send the step; None if ``reg`` was stopped.

        The lock is released by :meth:`_complete`, which must follow.
        """
        lateness = self.now() - step.at
        reg.io_lock.acquire()
        try:
            with reg.lock:
                if reg.stopped:
                    reg.io_lock.release()
                    return None
                before = reg.core.state
            return _Begun(before, lateness, self._send(reg, step))
        except BaseException:
            reg.io_lock.release()
            raise

    def _complete(self, reg: ThreadedRegistration, step: Step, begun: _Begun) -> Step | None:
        """Wait for the step's answer and decide the next one; None if ``reg`` was stopped."""
        try:
            error = self._outcome(reg, step, begun.wait)
            with reg.lock:
                if reg.stopped:
                    return None
                now = self.now()
                nxt = reg.core.step_done(step, error, now)
                status = reg.core.status()
                line = reg.reporter.report(step, begun.before, status, nxt.at - now)
        finally:
            reg.io_lock.release()
        if line is not None:
            logger.log(line.level, line.message, *line.args)
        if status.state is not begun.before:
            self._notify(status, reg.owner)
        if step.action is Action.HEARTBEAT and self._observers.heartbeats:
            self._observers.heartbeat(status, begun.lateness, error is None)
        return nxt

    def _send(self, reg: ThreadedRegistration, step: Step) -> Callable[[], object]:
        """Put the step on the wire; the function returned waits for its answer."""
        core = reg.core
        timeout = min(self._api_timeout, float(core.ttl))
        try:
            if step.action is Action.HEARTBEAT:
                return self._begin_heartbeat(reg.heartbeat_req, timeout=timeout)
            return self._begin_register(core.request, core.ttl, timeout=timeout)
        except Exception as exc:
            failed = exc

            def raising() -> object:
                raise failed

            return raising

    def _outcome(
        self, reg: ThreadedRegistration, step: Step, wait: Callable[[], object]
    ) -> PolarisError | None:
        try:
            wait()
        except PolarisError as exc:
            return exc
        except Exception as exc:  # a bug below must not end the loop silently
            logger.exception("%s of %s failed unexpectedly", step.action.value, reg.instance_id)
            return PolarisError(f"unexpected failure: {exc!r}")
        return None


class _Begun(NamedTuple):
    """A step on the wire: the state before it, how late it left, and its wait."""

    before: RegistrationState
    lateness: float
    wait: Callable[[], object]


def _beginner(
    connector: object, name: str, blocking: Callable[..., object]
) -> Callable[..., Callable[[], object]]:
    """The connector's ``begin_<name>``; else one that makes the blocking call when waited on."""
    begin: Callable[..., Callable[[], object]] | None = getattr(connector, f"begin_{name}", None)
    if begin is not None:
        return begin

    def deferred(*args: object, **kwargs: object) -> Callable[[], object]:
        return lambda: blocking(*args, **kwargs)

    return deferred
