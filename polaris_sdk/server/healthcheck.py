"""Heartbeat bookkeeping and the health checker of the embedded server.

:class:`HeartbeatBook` remembers, per instance id, when it was last
registered and when it last beat (monotonic time for the arithmetic, wall
time for the ``internal-lastheartbeat`` metadata). It is thread-safe.

:class:`HealthChecker` runs a check each ``interval`` seconds and decides
with :func:`decide_health`:

* a healthy instance turns unhealthy when nothing (no beat, no registration)
  was heard from it for more than 3 x TTL;
* an unhealthy instance turns healthy at the first check after a beat that
  is no older than 3 x TTL (a registration alone never makes it healthy).

A check does work in proportion to what is due, not to how many instances
there are: a healthy instance sits in a deadline heap at the time it would
expire (last heard + 3 x TTL) and is read again only then (still beating: it
moves to its new deadline); an unhealthy one is read again when it beats or
re-registers (the book reports the ids touched since the last check); a new
or re-registered instance is read at the next check. Every ``sweep_interval``
seconds (and at the first check) every heartbeat-checked instance is read, so
records written behind the book's back (another plugin's data, an operator
changing health) are picked up within that time.

A decision is applied through a callback (the naming service), which bumps
the revision and guards against a concurrent change by comparing revisions.

With ``delete_unhealthy_after`` (seconds; None, the default, never deletes)
an instance that has stayed unhealthy that long, counted from the first check
that saw it unhealthy, is handed to the ``delete`` callback, as a real
server's ``DeleteUnHealthyInstance`` job deletes it; the callback declines
when the instance changed in between.
:meth:`HealthChecker.run` is the supervised loop: an exception in a check is
logged and the loop goes on after a backoff; it only ends when told to stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from polaris_sdk.server.store.base import InstanceRecord, Store

__all__ = [
    "DEFAULT_CHECK_INTERVAL",
    "DEFAULT_SWEEP_INTERVAL",
    "EXPIRE_TTL_MULTIPLE",
    "Beat",
    "HealthChecker",
    "HeartbeatBook",
    "decide_health",
    "overdue_unhealthy",
]

log = logging.getLogger("polaris_sdk.server.healthcheck")

DEFAULT_CHECK_INTERVAL = 0.5
DEFAULT_SWEEP_INTERVAL = 10.0
EXPIRE_TTL_MULTIPLE = 3
_MAX_BACKOFF = 30.0


@dataclass(frozen=True, slots=True)
class Beat:
    """When something was last heard: monotonic seconds and unix seconds."""

    monotonic: float
    wall: float


class HeartbeatBook:
    """Last registration and last heartbeat of every instance id. Thread-safe."""

    def __init__(
        self,
        monotonic: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self._monotonic = monotonic
        self._wall = wall
        self._lock = threading.Lock()
        self._registered: dict[str, Beat] = {}
        self._beats: dict[str, Beat] = {}
        # Ids registered / beaten since the health checker last asked.
        self._touched_registered: set[str] = set()
        self._touched_beaten: set[str] = set()

    def now(self) -> Beat:
        return Beat(self._monotonic(), self._wall())

    def registered(self, instance_id: str) -> None:
        with self._lock:
            self._registered[instance_id] = self.now()
            self._touched_registered.add(instance_id)

    def beat(self, instance_id: str) -> None:
        with self._lock:
            self._beats[instance_id] = self.now()
            self._touched_beaten.add(instance_id)

    def touched(self) -> tuple[set[str], set[str]]:
        """The ids registered and the ids beaten since the last call (each set once)."""
        with self._lock:
            registered, self._touched_registered = self._touched_registered, set()
            beaten, self._touched_beaten = self._touched_beaten, set()
        return registered, beaten

    def last_registered(self, instance_id: str) -> Beat | None:
        with self._lock:
            return self._registered.get(instance_id)

    def last_beat(self, instance_id: str) -> Beat | None:
        with self._lock:
            return self._beats.get(instance_id)

    def forget_beat(self, instance_id: str) -> None:
        """Drop the last heartbeat only (the registration time stays)."""
        with self._lock:
            self._beats.pop(instance_id, None)

    def forget(self, instance_id: str) -> None:
        with self._lock:
            self._registered.pop(instance_id, None)
            self._beats.pop(instance_id, None)

    def clear(self) -> None:
        with self._lock:
            self._registered.clear()
            self._beats.clear()
            self._touched_registered.clear()
            self._touched_beaten.clear()


def decide_health(
    healthy: bool, ttl: int, now: float, last_beat: float | None, last_registered: float | None
) -> bool | None:
    """The new health flag of an instance, or None when it stays as it is.

    Times are monotonic seconds; ``ttl`` is the heartbeat TTL in seconds.
    """
    window = EXPIRE_TTL_MULTIPLE * ttl
    if healthy:
        heard = max(t for t in (last_beat, last_registered, float("-inf")) if t is not None)
        return False if now - heard > window else None
    if last_beat is not None and now - last_beat <= window:
        return True
    return None


# (record, healthy, last beat or registration) -> applied?
ApplyHealth = Callable[[InstanceRecord, bool, Beat | None], bool]
# record -> deleted?
DeleteInstance = Callable[[InstanceRecord], bool]


def overdue_unhealthy(
    unhealthy_since: dict[str, float], unhealthy_ids: set[str], now: float, after: float
) -> list[str]:
    """The ids unhealthy for longer than ``after``; updates ``unhealthy_since`` in place.

    ``unhealthy_ids`` are the instances unhealthy now: new ones start their
    clock at ``now``, ids no longer unhealthy (healthy again, or gone) are forgotten.
    """
    for instance_id in list(unhealthy_since):
        if instance_id not in unhealthy_ids:
            del unhealthy_since[instance_id]
    for instance_id in unhealthy_ids:
        unhealthy_since.setdefault(instance_id, now)
    return [i for i, since in unhealthy_since.items() if now - since > after]


class HealthChecker:
    """Turns heartbeat-checked instances unhealthy and healthy again; see the module doc."""

    def __init__(
        self,
        store: Store,
        book: HeartbeatBook,
        apply: ApplyHealth,
        interval: float = DEFAULT_CHECK_INTERVAL,
        *,
        delete_unhealthy_after: float | None = None,
        delete: DeleteInstance | None = None,
        sweep_interval: float = DEFAULT_SWEEP_INTERVAL,
    ) -> None:
        if interval <= 0:
            raise ValueError("health_check_interval must be positive")
        if sweep_interval <= 0:
            raise ValueError("sweep_interval must be positive")
        if delete_unhealthy_after is not None and not delete_unhealthy_after > 0:
            raise ValueError("delete_unhealthy_after must be positive (or None: never)")
        if delete_unhealthy_after is not None and delete is None:
            raise ValueError("delete_unhealthy_after needs a delete callback")
        self._store = store
        self._book = book
        self._apply = apply
        self.interval = interval
        self.sweep_interval = sweep_interval
        self.delete_unhealthy_after = delete_unhealthy_after
        self._delete = delete
        self._unhealthy_since: dict[str, float] = {}
        # Healthy instances by the monotonic time they would expire at (a heap
        # with lazy deletion: an entry counts only while _due still holds it).
        self._deadlines: list[tuple[float, str]] = []
        self._due: dict[str, float] = {}
        # Unhealthy instances: looked at again when they beat or re-register.
        self._unhealthy: set[str] = set()
        self._next_sweep = -math.inf

    def check_once(self) -> int:
        """Check what is due (see the module doc); return how many instances changed health.

        A failure part way leaves the checker unsure of what it has seen: the
        next check reads every instance again.
        """
        try:
            return self._check_due(self._book.now().monotonic)
        except BaseException:
            self._next_sweep = -math.inf
            raise

    def _check_due(self, now: float) -> int:
        changed = 0
        if now >= self._next_sweep:
            # Taken before the read: whatever is touched after it is seen next time.
            self._book.touched()
            records = self._store.health_checked_instances()
            self._deadlines.clear()
            self._due.clear()
            self._unhealthy.clear()
            for record in records:
                changed += self._check(record.id, record, now)
            self._next_sweep = now + self.sweep_interval
        else:
            registered, beaten = self._book.touched()
            for instance_id in registered | (beaten & self._unhealthy):
                changed += self._check(instance_id, self._store.get_instance(instance_id), now)
        deadlines = self._deadlines
        while deadlines and deadlines[0][0] <= now:
            due, instance_id = heapq.heappop(deadlines)
            if self._due.get(instance_id) != due:
                continue  # superseded by a later look at the instance
            del self._due[instance_id]
            changed += self._check(instance_id, self._store.get_instance(instance_id), now)
        if self.delete_unhealthy_after is not None:
            self._delete_overdue(self.delete_unhealthy_after, now)
        return changed

    def _arm(self, instance_id: str, due: float) -> None:
        self._due[instance_id] = due
        heapq.heappush(self._deadlines, (due, instance_id))

    def _check(self, instance_id: str, record: InstanceRecord | None, now: float) -> int:
        """Decide one instance's health and when to look at it next; 1 if it changed."""
        self._due.pop(instance_id, None)
        self._unhealthy.discard(instance_id)
        if record is None or record.heartbeat_ttl is None:
            return 0
        beat = self._book.last_beat(instance_id)
        registered = self._book.last_registered(instance_id)
        if registered is None:
            # Stored before this book existed (another plugin's data): the
            # check starts counting from now rather than from the epoch.
            self._book.registered(instance_id)
            registered = self._book.last_registered(instance_id)
        last_heard = beat or registered
        healthy = decide_health(
            record.healthy,
            record.heartbeat_ttl,
            now,
            beat.monotonic if beat else None,
            registered.monotonic if registered else None,
        )
        changed = 0
        if healthy is not None:
            if not self._apply(record, healthy, last_heard):
                # Changed in between: look again at the next check.
                self._arm(instance_id, math.nextafter(now, math.inf))
                return 0
            changed = 1
            log.info(
                "instance %s (%s/%s %s:%d) is now %s",
                record.id,
                record.namespace,
                record.service,
                record.host,
                record.port,
                "healthy" if healthy else "unhealthy",
            )
        if not (record.healthy if healthy is None else healthy):
            self._unhealthy.add(instance_id)
            return changed
        heard = max(t.monotonic for t in (beat, registered) if t is not None)
        expires = heard + EXPIRE_TTL_MULTIPLE * record.heartbeat_ttl
        # Expired means "more than the window ago": exactly at it, look next time.
        self._arm(instance_id, expires if expires > now else math.nextafter(now, math.inf))
        return changed

    def _delete_overdue(self, after: float, now: float) -> None:
        for instance_id in overdue_unhealthy(self._unhealthy_since, self._unhealthy, now, after):
            record = self._store.get_instance(instance_id)
            if record is None or record.healthy:
                continue  # gone or healed behind the checker's back: the next sweep sees it
            if self._delete is not None and self._delete(record):
                self._unhealthy_since.pop(instance_id, None)
                self._unhealthy.discard(instance_id)
                log.info(
                    "deleted instance %s (%s/%s %s:%d): unhealthy for over %gs",
                    record.id,
                    record.namespace,
                    record.service,
                    record.host,
                    record.port,
                    after,
                )

    async def run(self, stop: asyncio.Event) -> None:
        """Check every ``interval`` seconds until ``stop`` is set; failures back off, not end."""
        backoff = self.interval
        while not stop.is_set():
            try:
                self.check_once()
                backoff = self.interval
                delay = self.interval
            except Exception:
                log.exception("health check failed; retrying in %.1fs", backoff)
                delay = backoff
                backoff = min(backoff * 2, _MAX_BACKOFF)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=delay)
