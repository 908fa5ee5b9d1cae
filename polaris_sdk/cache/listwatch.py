"""ListerWatcher: the two calls a reflector makes, shared by every service of a cache.

``list`` is one Discover of a service with no revision: the full current
snapshot. ``watch`` re-sends Discover with the revision the cache holds: the
server answers 200001 DataNoChange (``None`` here: nothing to do) or the full
new snapshot. Polaris has no server push; the reflector calls ``watch`` every
refresh interval, which is what the Polaris SDKs do. Both calls go through the
connector, whose one Discover stream is shared by every service of a context
and re-opened by the connector when it breaks.

A service the server does not know (400202) is answered as an empty snapshot
with revision ``""``, not an error: a consumer may look up or watch a service
before its first instance registers, and sees it appear. Every other failure
(:class:`~polaris_sdk.errors.NetworkError`,
:class:`~polaris_sdk.errors.PolarisTimeoutError`, other server codes) is
raised to the reflector, which keeps the last snapshot and backs off.

Outage gate: the connection is shared, so when a background call finds the
server unreachable, the others would find the same, each after waiting out
its deadline on a scheduler worker the provider's heartbeats also need.
After a network failure, background calls therefore fail at once (with a
:class:`~polaris_sdk.errors.NetworkError` naming the first failure) except
one probe at a time, at most one per ``probe_interval``; the first success
reopens the gate. Calls made with ``urgent=True`` (a user's first request for
a service, bounded by the user's timeout) always go to the server.

Thread-safe; no threads of its own.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Protocol

from polaris_sdk.connector.state import Connection, ConnectionState
from polaris_sdk.errors import NetworkError, ResourceNotFoundError
from polaris_sdk.model import ServiceInstances, ServiceKey

__all__ = [
    "MISSING_REVISION",
    "GateClosedError",
    "InstanceLister",
    "ListerWatcher",
    "OutageGate",
    "missing_service",
]

MISSING_REVISION = ""
"""The revision of the empty snapshot standing for a service the server does not know."""


class InstanceLister(Protocol):
    """The one connector call the cache needs."""

    def discover_instances(
        self, key: ServiceKey, revision: str = "", timeout: float | None = None
    ) -> ServiceInstances | None:
        """The service's snapshot; None when ``revision`` is still current (200001)."""
        ...


class GateClosedError(NetworkError):
    """A background call not made because the server was found unreachable just before."""


def missing_service(key: ServiceKey) -> ServiceInstances:
    return ServiceInstances(key.namespace, key.service, MISSING_REVISION)


class _NoListeners:
    """The poster of a connection nobody listens to (a gate without a context's connection)."""

    def __init__(self, listener: object) -> None:
        pass

    def post(self, item: ConnectionState) -> None:
        pass

    def close(self) -> None:
        pass


class OutageGate:
    """Lets one probe through at a time while the server is known to be unreachable.

    "Unreachable" is the context's :class:`~polaris_sdk.connector.state.Connection`
    (every call of the context feeds it, heartbeats included); the gate
    records its own calls' outcomes there too, so a cache used without a
    context still has one.
    """

    def __init__(self, probe_interval: float, connection: Connection | None = None) -> None:
        self.probe_interval = probe_interval
        self.connection = connection if connection is not None else Connection(_NoListeners)
        self._lock = threading.Lock()
        self._last_probe = 0.0
        self._probing = False

    @property
    def down(self) -> bool:
        return self.connection.state is not ConnectionState.CONNECTED

    def enter(self, urgent: bool = False) -> bool:
        """Whether this call is the probe; raises NetworkError if it must not be made."""
        connection = self.connection
        if urgent or connection.state is ConnectionState.CONNECTED:
            return False
        with self._lock:
            now = time.monotonic()
            if self._probing or now - self._last_probe < self.probe_interval:
                raise GateClosedError(
                    f"server unreachable for {connection.failing_for():.1f}s "
                    f"(last error: {connection.last_error}); waiting for the next probe"
                )
            self._probing = True
            self._last_probe = now
            return True

    def succeeded(self, probe: bool) -> None:
        self.connection.reached()
        if probe:
            with self._lock:
                self._probing = False

    def failed(self, probe: bool, error: BaseException | None) -> None:
        """``error`` is the network failure, or None when the call failed otherwise."""
        with self._lock:
            if probe:
                self._probing = False
            if error is not None:
                self._last_probe = time.monotonic()
        if error is not None:
            self.connection.unreachable(error)


class ListerWatcher:
    """List and watch of services through an :class:`InstanceLister`."""

    def __init__(
        self,
        lister: InstanceLister,
        timeout: float | None = None,
        probe_interval: float = 1.0,
        connection: Connection | None = None,
    ) -> None:
        self._lister = lister
        self.timeout = timeout
        self.gate = OutageGate(probe_interval, connection)

    def list(
        self, key: ServiceKey, timeout: float | None = None, *, urgent: bool = False
    ) -> ServiceInstances:
        """The full current snapshot of ``key``."""
        return self.begin_list(key, timeout, urgent=urgent)()

    def watch(
        self, key: ServiceKey, revision: str, timeout: float | None = None
    ) -> ServiceInstances | None:
        """The new snapshot of ``key`` if it changed since ``revision``, else None."""
        return self.begin_watch(key, revision, timeout)()

    def begin_list(
        self, key: ServiceKey, timeout: float | None = None, *, urgent: bool = False
    ) -> Callable[[], ServiceInstances]:
        """:meth:`list`, its request sent now; the function returned waits for the answer."""
        wait = self._begin(key, MISSING_REVISION, timeout, urgent)

        def listed() -> ServiceInstances:
            result = wait()
            # A server that answers "unchanged" to an empty revision breaks the
            # protocol; treat it like an unknown service rather than hang on it.
            return result if result is not None else missing_service(key)

        return listed

    def begin_watch(
        self, key: ServiceKey, revision: str, timeout: float | None = None
    ) -> Callable[[], ServiceInstances | None]:
        """:meth:`watch`, its request sent now; the function returned waits for the answer."""
        return self._begin(key, revision, timeout, False)

    def _begin(
        self, key: ServiceKey, revision: str, timeout: float | None, urgent: bool
    ) -> Callable[[], ServiceInstances | None]:
        """Send the Discover request (where the lister can begin one) and return the rest."""
        try:
            probe = self.gate.enter(urgent)
        except GateClosedError as exc:
            refused = exc

            def closed() -> ServiceInstances | None:
                raise refused

            return closed
        timeout = timeout if timeout is not None else self.timeout
        begin = getattr(self._lister, "begin_discover", None)
        if begin is not None:
            wait: Callable[[], ServiceInstances | None] = begin(key, revision, timeout)
        else:
            lister = self._lister
            wait = lambda: lister.discover_instances(key, revision, timeout)  # noqa: E731
        return lambda: self._judge(key, probe, wait)

    def _judge(
        self, key: ServiceKey, probe: bool, wait: Callable[[], ServiceInstances | None]
    ) -> ServiceInstances | None:
        try:
            result = wait()
        except ResourceNotFoundError:
            self.gate.succeeded(probe)
            return missing_service(key)
        except NetworkError as exc:
            self.gate.failed(probe, exc)
            raise
        except BaseException:
            self.gate.failed(probe, None)
            raise
        self.gate.succeeded(probe)
        return result
