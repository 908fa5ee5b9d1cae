"""Reflector: the threaded driver of the list-then-watch loop of one service.

The decisions (which round, what to store, the state, how long to wait) are
made by :class:`~polaris_sdk.cache.reflector_core.ReflectorCore`, whose
docstring gives the rules; this module runs them on the context's scheduler.

Guarantees:

* No thread of its own: each round is one task on the context's scheduler,
  which schedules the next round when it ends, so a thousand idle services
  cost a thousand heap entries, not a thousand threads. Rounds of one
  service never overlap. A round sends its request, then leaves the wait for
  the answer to the scheduler as its continuation, so the rounds due in one
  slot are pipelined on the Discover stream.
* Failures never reach the cache's readers: the last snapshot stays in
  place and the loop backs off. Any exception, including a bug, is logged
  and the loop goes on; only :meth:`Reflector.stop` ends it. The next round
  is armed in a ``finally``, whatever failed before it (one refresh interval
  when even the delay cannot be computed); a scheduler that refuses it is
  logged as an error, never ignored.
* Each state change (CONNECTED / SUSPENDED / LOST, in the spirit of kazoo's
  ``KazooState``) is reported to the sink, once, from the round's thread.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

from polaris_sdk.cache.listwatch import GateClosedError, ListerWatcher
from polaris_sdk.cache.options import CacheOptions
from polaris_sdk.cache.reflector_core import (
    ConnectionState,
    Outcome,
    ReflectorCore,
    Round,
    RoundKind,
)
from polaris_sdk.errors import ClosedError, PolarisError
from polaris_sdk.model import ServiceInstances, ServiceKey
from polaris_sdk.observe import Observers
from polaris_sdk.scheduler import Continuation, slot_for

__all__ = [
    "Cancellable",
    "ConnectionState",
    "Reflector",
    "ReflectorDriver",
    "ReflectorSink",
    "Scheduler",
]

logger = logging.getLogger("polaris_sdk.cache.reflector")

Discovered = tuple[ServiceInstances | None, ServiceInstances | None]
"""A round's result: the snapshot it started from and the answer (None: unchanged)."""


class Cancellable(Protocol):
    def cancel(self) -> object: ...


class Scheduler(Protocol):
    """The part of the context's scheduler the reflector uses."""

    def call_later_in_slot(
        self, delay: float, fn: Callable[..., Any], *args: Any, slot: float = ...
    ) -> Cancellable: ...


class ReflectorSink(Protocol):
    """Where a reflector's results go (the informer of the service)."""

    def current(self) -> ServiceInstances | None: ...

    def replace(self, snapshot: ServiceInstances) -> None: ...

    def confirm(self, at: float) -> None: ...

    def state_changed(self, key: ServiceKey, state: ConnectionState) -> None: ...


class ReflectorDriver:
    """What every driver of a :class:`ReflectorCore` does alike: feed it and act on it.

    A driver (threaded here, asyncio in :mod:`polaris_sdk.aio.cache`) only
    decides how a round is sent and how the next one is waited for; the
    outcome of a round is applied to the sink and logged here, the same way
    for both.
    """

    def __init__(
        self,
        key: ServiceKey,
        sink: ReflectorSink,
        options: CacheOptions,
        *,
        clock: Callable[[], float] = time.monotonic,
        rand: Callable[[], float] = random.random,
        observers: Observers | None = None,
    ) -> None:
        self.key = key
        self._observers = observers or Observers()
        self._sink = sink
        self._options = options
        self._clock = clock
        self._rand = rand
        self._core = ReflectorCore(options)
        self._stopped = False

    @property
    def state(self) -> ConnectionState:
        return self._core.state

    @property
    def failures(self) -> int:
        """Failed rounds in a row (0 when the last one succeeded)."""
        return self._core.failures

    @property
    def stopped(self) -> bool:
        return self._stopped

    def _next_delay(self) -> float:
        return self._core.next_delay(self._rand())

    def _next_round(self) -> tuple[ServiceInstances | None, Round]:
        current = self._sink.current()
        return current, self._core.next_round(current)

    # --------------------------------------------------------------- outcomes

    def _succeeded(self, current: ServiceInstances | None, result: ServiceInstances | None) -> None:
        outcome = self._core.succeeded(current, result, self._clock())
        if outcome.recovered_after:
            # WARNING, as its first failure was: a log filtered there shows both.
            logger.warning(
                "discover of %s works again after %d failures", self.key, outcome.recovered_after
            )
        if outcome.hold_empty_ended:
            logger.info("%s has instances again; push-empty protection released", self.key)
        if outcome.hold_empty_started and result is not None and current is not None:
            logger.warning(
                "server answered no instances for %s (revision %r) after %d; keeping the last "
                "snapshot (push-empty protection) until it answers instances again",
                self.key,
                result.revision,
                len(current),
            )
        if outcome.replace is not None:
            self._sink.replace(outcome.replace)
        elif outcome.confirm:
            self._sink.confirm(time.time())
        self._report(outcome)
        if self._observers.revision_checks:
            changed = outcome.replace is not None
            self._observers.revision_check(self.key, changed, True, self._sink.current())

    def _failed(self, exc: BaseException) -> None:
        outcome = self._core.failed(exc, self._clock())
        if outcome.failures == 1 and not isinstance(exc, GateClosedError):
            current = self._sink.current()
            kept = (
                f"keeping {len(current)} instances (age {current.age:.1f}s)"
                if current is not None
                else "nothing cached yet"
            )
            logger.warning("discover of %s failed: %s; %s", self.key, exc, kept)
        else:
            logger.debug("discover of %s failed again (%d): %s", self.key, outcome.failures, exc)
        self._report(outcome)
        if self._observers.revision_checks:
            self._observers.revision_check(self.key, False, False, self._sink.current())

    def _report(self, outcome: Outcome) -> None:
        state = outcome.state_change
        if state is None:
            return
        if state is ConnectionState.LOST:
            logger.warning(
                "%s is LOST: discover has failed for %.0fs", self.key, outcome.failing_for
            )
        self._sink.state_changed(self.key, state)


class Reflector(ReflectorDriver):
    """The threaded driver: one round at a time on the context's scheduler."""

    def __init__(
        self,
        key: ServiceKey,
        lister_watcher: ListerWatcher,
        scheduler: Scheduler,
        sink: ReflectorSink,
        options: CacheOptions,
        *,
        clock: Callable[[], float] = time.monotonic,
        rand: Callable[[], float] = random.random,
        observers: Observers | None = None,
    ) -> None:
        super().__init__(key, sink, options, clock=clock, rand=rand, observers=observers)
        self._lw = lister_watcher
        self._scheduler = scheduler
        self._lock = threading.Lock()
        self._handle: Cancellable | None = None

    # --------------------------------------------------------------- control

    def run_once(self, timeout: float | None = None) -> None:
        """One round now, in the caller's thread; raises what the round raised.

        The first listing of a service is made this way so that the first
        call of a consumer answers within its own timeout.
        """
        try:
            current, result = self._begin(timeout, urgent=True)()
        except PolarisError as exc:
            self._failed(exc)
            raise
        self._succeeded(current, result)

    def start(self, delay: float | None = None) -> None:
        """Begin the background loop; its first round after ``delay`` (default:
        one refresh interval, or the backoff when the last round failed)."""
        self._schedule(self._next_delay() if delay is None else delay)

    def stop(self) -> None:
        """End the loop; a round in progress finishes but schedules nothing."""
        with self._lock:
            self._stopped = True
            handle, self._handle = self._handle, None
        if handle is not None:
            handle.cancel()

    # ------------------------------------------------------------------ loop

    def _tick(self) -> Continuation | None:
        """A slotted round: sends its request, returns the rest (the scheduler
        runs it once the other rounds due in the slot have sent theirs)."""
        with self._lock:
            if self._stopped:
                return None
            self._handle = None
        try:
            wait = self._begin(None)
        except Exception as exc:
            failed = exc
            self._guarded(lambda: self._failed_unexpectedly(failed))
            self._rearm()
            return None
        return lambda: self._finish(wait)

    def _finish(self, wait: Callable[[], Discovered]) -> None:
        try:
            self._guarded(lambda: self._complete(wait))
        finally:
            # Whatever happened above (a bug in the bookkeeping, a broken
            # sink), the loop must not end here: only stop() ends it.
            self._rearm()

    def _complete(self, wait: Callable[[], Discovered]) -> None:
        try:
            current, result = wait()
        except PolarisError as exc:
            self._failed(exc)
        except Exception as exc:
            self._failed_unexpectedly(exc)
        else:
            self._succeeded(current, result)

    def _failed_unexpectedly(self, exc: Exception) -> None:
        logger.exception("refresh of %s failed unexpectedly; backing off", self.key)
        self._failed(exc)

    def _guarded(self, record: Callable[[], None]) -> None:
        try:
            record()
        except Exception:
            logger.exception("recording the refresh of %s failed; the loop goes on", self.key)

    def _rearm(self) -> None:
        try:
            delay = self._next_delay()
        except Exception:
            delay = self._options.refresh_interval
            logger.exception(
                "computing the next refresh of %s failed; retrying in %.1fs", self.key, delay
            )
        self._schedule(delay)

    def _schedule(self, delay: float) -> None:
        with self._lock:
            if self._stopped:
                return
            try:
                self._handle = self._scheduler.call_later_in_slot(
                    delay, self._tick, slot=slot_for(self._options.refresh_interval, delay)
                )
            except ClosedError:
                # The context is closing; the cache's close() follows.
                self._stopped = True
            except Exception:
                # Nothing is left to run a later attempt: say so loudly, the
                # last snapshot keeps being served.
                logger.exception(
                    "could not schedule the next refresh of %s; it is no longer refreshed",
                    self.key,
                )

    def _begin(self, timeout: float | None, urgent: bool = False) -> Callable[[], Discovered]:
        """Send this round's Discover request; the function returned waits for its answer."""
        current, round_ = self._next_round()
        wait: Callable[[], ServiceInstances | None]
        if round_.kind is RoundKind.LIST:
            wait = self._lw.begin_list(self.key, timeout, urgent=urgent)
        else:
            wait = self._lw.begin_watch(self.key, round_.revision, timeout)
        return lambda: (current, wait())
