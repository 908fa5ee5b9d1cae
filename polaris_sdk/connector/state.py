"""The connection state of one context: can the SDK reach the Polaris server?

One :class:`Connection` per context (sync or asyncio), fed by every attempt
of every naming call (register, heartbeat, discover ...) in the drivers of
:mod:`polaris_sdk.connector.naming`, so a provider-only application sees it
as well as a consumer. In the spirit of kazoo's ``KazooState``:

``CONNECTED``
    The last attempt reached a server (whatever it answered). Registrations
    are kept alive and caches are current to within a refresh interval.
``SUSPENDED``
    Attempts fail to reach any server. Assume nothing has been lost yet: the
    server keeps an instance for 3 x TTL without beats, and the consumer
    cache keeps serving the last snapshot. Calls are retried in the
    background; an application may pause work that needs fresh data.
``LOST``
    Attempts have failed for ``lost_after`` seconds. Assume the server may
    have marked this process's instances unhealthy (they are registered
    again by themselves once it is reachable) and cached instances may be
    stale. The SDK still retries; nothing needs to be rebuilt.

Reachability is judged here once per context; the other places that look at
failures decide something else from them: which address to use next
(:mod:`~polaris_sdk.connector.failover`), when a broken Discover stream may
reopen, whether a cached service is fresh (its refresh loop's state, see
:mod:`polaris_sdk.cache.reflector_core`), and how one registration stands
(:class:`~polaris_sdk.provider.core.RegistrationState`). The consumer cache's
outage gate reads this state to hold background revision checks back while
the server is unreachable.

Guarantees: transitions happen only on an outcome (no timer of its own);
each change is reported once to every listener, in order, through the
delivery the owning context chose (a mailbox thread for a sync context, the
event loop for an asyncio one), never on the caller's stack; a listener that
raises is logged and still gets later changes. Thread-safe; recording an
outcome in the steady state is one attribute read.
"""

from __future__ import annotations

import enum
import logging
import threading
import time
from collections.abc import Callable
from typing import Protocol

from polaris_sdk import _fork

__all__ = ["Connection", "ConnectionListener", "ConnectionState", "Poster"]

logger = logging.getLogger("polaris_sdk.connection")


class ConnectionState(enum.Enum):
    """Whether the SDK reaches the Polaris server; see :mod:`polaris_sdk.connector.state`."""

    CONNECTED = "CONNECTED"
    SUSPENDED = "SUSPENDED"
    LOST = "LOST"


ConnectionListener = Callable[[ConnectionState], None]


class Poster(Protocol):
    """Delivers states to one listener, off the caller's stack."""

    def post(self, item: ConnectionState) -> None: ...

    def close(self) -> None: ...


PosterFactory = Callable[[ConnectionListener], Poster]


class Connection:
    """The reachability of the server as every call of one context saw it."""

    def __init__(
        self,
        poster_factory: PosterFactory,
        *,
        lost_after: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._poster_factory = poster_factory
        self._lost_after = lost_after
        self._clock = clock
        self._lock = threading.Lock()
        self._state = ConnectionState.CONNECTED
        self._failing_since: float | None = None
        self._last_error: BaseException | None = None
        self._listeners: list[tuple[ConnectionListener, Poster]] = []
        _fork.track(self)

    def _reset_after_fork(self) -> None:
        """In a forked child: connected until shown otherwise, no listener of the parent's."""
        self._lock = threading.Lock()
        self._state = ConnectionState.CONNECTED
        self._failing_since = None
        self._last_error = None
        self._listeners = []

    @property
    def state(self) -> ConnectionState:
        return self._state

    def failing_for(self) -> float:
        """Seconds since attempts started failing (0 while connected)."""
        since = self._failing_since
        return 0.0 if since is None else max(0.0, self._clock() - since)

    @property
    def last_error(self) -> BaseException | None:
        """The failure that made the state leave CONNECTED (None while connected)."""
        return self._last_error

    # ------------------------------------------------------------ outcomes

    def reached(self) -> None:
        """An attempt got an answer from a server."""
        if self._state is ConnectionState.CONNECTED:
            return
        with self._lock:
            before = self._state
            self._failing_since = None
            self._last_error = None
            self._set(ConnectionState.CONNECTED)
        # At the level the failure was logged at, so a log filtered there shows both.
        logger.warning("Polaris server reachable again (was %s)", before.value)

    def unreachable(self, error: BaseException) -> None:
        """An attempt could not reach any server (refused, reset, no answer in time)."""
        now = self._clock()
        with self._lock:
            if self._failing_since is None:
                self._failing_since = now
                self._last_error = error
            lost = now - self._failing_since >= self._lost_after
            before = self._state
            self._set(ConnectionState.LOST if lost else ConnectionState.SUSPENDED)
            changed = self._state is not before
        if changed:
            logger.warning("Polaris server connection %s: %s", self._state.value, self._last_error)

    # ----------------------------------------------------------- listeners

    def add_listener(self, listener: ConnectionListener) -> None:
        """Call ``listener(state)`` on every later change of state."""
        with self._lock:
            if any(known == listener for known, _ in self._listeners):
                return
            self._listeners.append((listener, self._poster_factory(listener)))

    def remove_listener(self, listener: ConnectionListener) -> bool:
        with self._lock:
            for pair in self._listeners:
                if pair[0] == listener:
                    self._listeners.remove(pair)
                    pair[1].close()
                    return True
        return False

    def close(self) -> None:
        with self._lock:
            posters = [poster for _, poster in self._listeners]
            self._listeners.clear()
        for poster in posters:
            poster.close()

    def _set(self, state: ConnectionState) -> None:
        # Called with the lock held: posting never runs user code.
        if state is self._state:
            return
        self._state = state
        for _, poster in self._listeners:
            poster.post(state)
