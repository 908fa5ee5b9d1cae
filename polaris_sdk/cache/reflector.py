"""Reflector: the list-then-watch loop that keeps one service's snapshot fresh.

Guarantees:

* No thread of its own: each round is one task on the context's scheduler,
  which schedules the next round when it ends, so a thousand idle services
  cost a thousand heap entries, not a thousand threads. Rounds of one
  service never overlap.
* A round is one Discover: a ``watch`` with the held revision normally; a
  ``list`` (no revision) after any failure, so a gap is always healed by a
  full snapshot. 200001 (or the same revision) only re-confirms the snapshot.
* Failures never reach the cache's readers: the last snapshot stays in
  place, the next round waits ``refresh_interval * 2^(n-1)`` (with jitter,
  capped at ``backoff_max``) and relists. Any exception, including a bug, is
  logged and the loop goes on; only :meth:`Reflector.stop` ends it. The next
  round is armed in a ``finally``, whatever failed before it (one refresh
  interval when even the delay cannot be computed); a scheduler that refuses
  it is logged as an error, never ignored.
* Push-empty protection (on by default, see
  :attr:`~polaris_sdk.cache.options.CacheOptions.push_empty_protection`):
  an empty answer following a non-empty snapshot is not passed on.
* A coarse state, in the spirit of kazoo's ``KazooState``:
  ``CONNECTED`` (the last round reached the server), ``SUSPENDED`` (rounds
  are failing; the last snapshot is served), ``LOST`` (rounds have failed
  for ``lost_after`` seconds; still served, still retried). Each change is
  reported to the sink, once, from the round's thread.
"""

from __future__ import annotations

import enum
import logging
import random
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

from polaris_sdk.cache.listwatch import GateClosedError, ListerWatcher
from polaris_sdk.cache.options import CacheOptions
from polaris_sdk.errors import ClosedError, PolarisError
from polaris_sdk.model import ServiceInstances, ServiceKey

__all__ = ["Cancellable", "ConnectionState", "Reflector", "ReflectorSink", "Scheduler"]

logger = logging.getLogger("polaris_sdk.cache.reflector")


class ConnectionState(enum.Enum):
    """How current a cached service is."""

    CONNECTED = "CONNECTED"
    """The last Discover reached the server."""
    SUSPENDED = "SUSPENDED"
    """Discover is failing; the last snapshot is served while retrying."""
    LOST = "LOST"
    """Discover has failed for a long time; the snapshot may be stale."""


class Cancellable(Protocol):
    def cancel(self) -> object: ...


class Scheduler(Protocol):
    """The part of the context's scheduler the reflector uses."""

    def call_later(self, delay: float, fn: Callable[..., Any], *args: Any) -> Cancellable: ...


class ReflectorSink(Protocol):
    """Where a reflector's results go (the informer of the service)."""

    def current(self) -> ServiceInstances | None: ...

    def replace(self, snapshot: ServiceInstances) -> None: ...

    def confirm(self, at: float) -> None: ...

    def state_changed(self, key: ServiceKey, state: ConnectionState) -> None: ...


class Reflector:
    def __init__(
        self,
        key: ServiceKey,
        lister_watcher: ListerWatcher,
        scheduler: Scheduler,
        sink: ReflectorSink,
        options: CacheOptions,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.key = key
        self._lw = lister_watcher
        self._scheduler = scheduler
        self._sink = sink
        self._options = options
        self._clock = clock
        self._lock = threading.Lock()
        self._handle: Cancellable | None = None
        self._stopped = False
        self._relist = True
        self._failures = 0
        self._failing_since: float | None = None
        self._holding_empty = False
        self._state = ConnectionState.CONNECTED

    @property
    def state(self) -> ConnectionState:
        return self._state

    @property
    def failures(self) -> int:
        """Failed rounds in a row (0 when the last one succeeded)."""
        return self._failures

    @property
    def stopped(self) -> bool:
        return self._stopped

    # --------------------------------------------------------------- control

    def run_once(self, timeout: float | None = None) -> None:
        """One round now, in the caller's thread; raises what the round raised.

        The first listing of a service is made this way so that the first
        call of a consumer answers within its own timeout.
        """
        try:
            self._round(timeout, urgent=True)
        except PolarisError as exc:
            self._record_failure(exc)
            raise
        self._record_success()

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

    def _tick(self) -> None:
        with self._lock:
            if self._stopped:
                return
            self._handle = None
        try:
            self._guarded_round()
        finally:
            # Whatever happened above (a bug in the bookkeeping, a broken
            # sink), the loop must not end here: only stop() ends it.
            self._rearm()

    def _guarded_round(self) -> None:
        try:
            try:
                self._round(None)
            except PolarisError as exc:
                self._record_failure(exc)
            except Exception as exc:
                logger.exception("refresh of %s failed unexpectedly; backing off", self.key)
                self._record_failure(exc)
            else:
                self._record_success()
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
                self._handle = self._scheduler.call_later(delay, self._tick)
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

    def _round(self, timeout: float | None, urgent: bool = False) -> None:
        current = self._sink.current()
        if self._relist or current is None:
            result: ServiceInstances | None = self._lw.list(self.key, timeout, urgent=urgent)
        else:
            result = self._lw.watch(self.key, current.revision, timeout)
        self._relist = False
        if result is None or (current is not None and result.revision == current.revision):
            self._end_holding()
            self._sink.confirm(time.time())
        elif self._hold_empty(current, result):
            pass
        else:
            self._end_holding()
            self._sink.replace(result)

    def _hold_empty(self, current: ServiceInstances | None, result: ServiceInstances) -> bool:
        if not (self._options.push_empty_protection and current and not result.instances):
            return False
        if not self._holding_empty:
            self._holding_empty = True
            logger.warning(
                "server answered no instances for %s (revision %r) after %d; keeping the last "
                "snapshot (push-empty protection) until it answers instances again",
                self.key,
                result.revision,
                len(current),
            )
        return True

    def _end_holding(self) -> None:
        if self._holding_empty:
            self._holding_empty = False
            logger.info("%s has instances again; push-empty protection released", self.key)

    # ----------------------------------------------------------------- state

    def _record_success(self) -> None:
        if self._failures:
            logger.info("discover of %s works again after %d failures", self.key, self._failures)
        self._failures = 0
        self._failing_since = None
        self._set_state(ConnectionState.CONNECTED)

    def _record_failure(self, exc: BaseException) -> None:
        self._relist = True
        self._failures += 1
        now = self._clock()
        if self._failing_since is None:
            self._failing_since = now
        if self._failures == 1 and not isinstance(exc, GateClosedError):
            current = self._sink.current()
            kept = (
                f"keeping {len(current)} instances (age {current.age:.1f}s)"
                if current is not None
                else "nothing cached yet"
            )
            logger.warning("discover of %s failed: %s; %s", self.key, exc, kept)
        else:
            logger.debug("discover of %s failed again (%d): %s", self.key, self._failures, exc)
        lost = now - self._failing_since >= self._options.lost_after
        self._set_state(ConnectionState.LOST if lost else ConnectionState.SUSPENDED)

    def _set_state(self, state: ConnectionState) -> None:
        if state is self._state:
            return
        self._state = state
        if state is ConnectionState.LOST:
            logger.warning("%s is LOST: discover has failed for %.0fs", self.key, self._lost_for())
        self._sink.state_changed(self.key, state)

    def _lost_for(self) -> float:
        return 0.0 if self._failing_since is None else self._clock() - self._failing_since

    def _next_delay(self) -> float:
        options = self._options
        if self._failures:
            doublings = min(self._failures - 1, 30)
            base = min(options.backoff_max, options.refresh_interval * (1 << doublings))
            # Half to full backoff, so services that failed together spread out.
            return base * (0.5 + random.random() / 2)
        return options.refresh_interval * (1 + options.refresh_jitter * random.random())
