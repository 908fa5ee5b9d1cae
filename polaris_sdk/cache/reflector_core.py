"""The decisions of keeping one service's snapshot fresh, without any I/O.

Contract:

* :class:`ReflectorCore` is fed with outcomes (a Discover round answered,
  or failed, at time ``now``) and answers with what to do: replace the held
  snapshot, only confirm it, or hold an empty answer back; whether the
  :class:`ConnectionState` changed; what the next round is (a ``LIST`` with
  no revision or a ``WATCH`` with the held one) and how long to wait for it.
  It never sleeps, sends, logs or reads a clock: what a driver should log
  comes back in the :class:`Outcome`, times are passed in (seconds on one
  monotonic clock chosen by the caller) and randomness is a number in
  ``[0, 1)`` passed to :meth:`ReflectorCore.next_delay`. The threaded driver
  (:mod:`polaris_sdk.cache.reflector`) and an asyncio one share it.
* The held snapshot is not kept here: the caller passes what its store
  holds, so the store stays the one source of truth (an entry installed from
  the disk backup needs no extra call).
* Not thread-safe: a driver serialises the calls for one service.

The rules (design.md, "Defaults worth keeping"):

* A round is a ``WATCH`` with the held revision, or a ``LIST`` when nothing
  is held yet or the last round failed, so a gap is always healed by a full
  snapshot. An answer of ``None`` (200001) or of the held revision only
  confirms the snapshot.
* Push-empty protection: with ``push_empty_protection``, an empty answer
  following a non-empty snapshot is neither stored nor confirmed (so the
  snapshot's age grows) until an answer with instances arrives.
* States: ``CONNECTED`` after a success; ``SUSPENDED`` on failure;
  ``LOST`` once rounds have failed for ``lost_after`` seconds in a row.
* Waits: ``refresh_interval`` times ``1 ± refresh_jitter`` (symmetric, so
  the mean wait is the interval); after ``n`` failures in a row, half to all
  of ``min(backoff_max, refresh_interval * 2^(n-1))``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from polaris_sdk.cache.options import CacheOptions
from polaris_sdk.connector.state import ConnectionState
from polaris_sdk.model import ServiceInstances

__all__ = ["ConnectionState", "Outcome", "ReflectorCore", "Round", "RoundKind"]


class RoundKind(enum.Enum):
    LIST = "list"
    """Discover with no revision: the full current snapshot."""
    WATCH = "watch"
    """Discover with the held revision: 200001 or the new snapshot."""


@dataclass(frozen=True, slots=True)
class Round:
    """The next Discover to send; ``revision`` is ``""`` for a ``LIST``."""

    kind: RoundKind
    revision: str = ""


@dataclass(frozen=True, slots=True)
class Outcome:
    """What a driver does after a round; fields that do not apply are empty."""

    replace: ServiceInstances | None = None
    """Store this snapshot (and tell the listeners)."""
    confirm: bool = False
    """The held snapshot was re-confirmed: refresh its ``updated_at``."""
    hold_empty_started: bool = False
    """An empty answer is being held back from now on (log it once)."""
    hold_empty_ended: bool = False
    """The hold ended: the answer had instances, or confirmed the held ones."""
    state_change: ConnectionState | None = None
    """The new state, when it changed (report it once)."""
    failures: int = 0
    """Failed rounds in a row, this one included (0 after a success)."""
    recovered_after: int = 0
    """After a success: how many rounds had failed in a row before it."""
    failing_for: float = 0.0
    """After a failure: seconds since the first failure of the run."""


class ReflectorCore:
    """The state machine of one service's refresh loop; see the module docstring."""

    def __init__(self, options: CacheOptions) -> None:
        self.options = options
        self.state = ConnectionState.CONNECTED
        self.failures = 0
        self.holding_empty = False
        self.last_error: BaseException | None = None
        self._relist = True
        self._failing_since: float | None = None

    def next_round(self, current: ServiceInstances | None) -> Round:
        """The round to send, given the snapshot the store holds."""
        if self._relist or current is None:
            return Round(RoundKind.LIST)
        return Round(RoundKind.WATCH, current.revision)

    def succeeded(
        self, current: ServiceInstances | None, result: ServiceInstances | None, now: float
    ) -> Outcome:
        """The round answered ``result`` (None: 200001) while ``current`` was held."""
        self._relist = False
        recovered_after, self.failures = self.failures, 0
        self._failing_since = None
        self.last_error = None
        state_change = self._enter(ConnectionState.CONNECTED)
        if result is None or (current is not None and result.revision == current.revision):
            return Outcome(
                confirm=True,
                hold_empty_ended=self._end_hold(),
                state_change=state_change,
                recovered_after=recovered_after,
            )
        if self.options.push_empty_protection and current and not result.instances:
            started = not self.holding_empty
            self.holding_empty = True
            return Outcome(
                hold_empty_started=started,
                state_change=state_change,
                recovered_after=recovered_after,
            )
        return Outcome(
            replace=result,
            hold_empty_ended=self._end_hold(),
            state_change=state_change,
            recovered_after=recovered_after,
        )

    def failed(self, error: BaseException, now: float) -> Outcome:
        """The round failed with ``error``; the held snapshot stays."""
        self._relist = True
        self.failures += 1
        self.last_error = error
        if self._failing_since is None:
            self._failing_since = now
        failing_for = now - self._failing_since
        lost = failing_for >= self.options.lost_after
        return Outcome(
            state_change=self._enter(ConnectionState.LOST if lost else ConnectionState.SUSPENDED),
            failures=self.failures,
            failing_for=failing_for,
        )

    def next_delay(self, rand: float) -> float:
        """Seconds until the next round; ``rand`` is uniform in ``[0, 1)``."""
        options = self.options
        if self.failures:
            doublings = min(self.failures - 1, 30)
            base = min(options.backoff_max, options.refresh_interval * (1 << doublings))
            # Half to full backoff, so services that failed together spread out.
            return base * (0.5 + rand / 2)
        # Jitter only shortens a wait: a change is seen within one interval
        # (plus a round trip), never later, while the services of a process
        # still spread out instead of polling in lockstep.
        return options.refresh_interval * (1 - options.refresh_jitter * rand)

    def _enter(self, state: ConnectionState) -> ConnectionState | None:
        if state is self.state:
            return None
        self.state = state
        return state

    def _end_hold(self) -> bool:
        ended, self.holding_empty = self.holding_empty, False
        return ended
