"""SDKContext: the configuration, connector and scheduler one SDK instance shares.

Contract:

* A context owns one :class:`~polaris_sdk.config.Configuration`, one server
  connector, one :class:`~polaris_sdk.scheduler.Scheduler` and one
  :class:`~polaris_sdk.connector.state.Connection` (``ctx.connection``: the
  server's reachability as every call of this context sees it, with
  listeners); the facades (ProviderAPI, ConsumerAPI) and caches built on it
  share them. ``transport=`` replaces the network with another transport,
  e.g. a :class:`~polaris_sdk.connector.mock.MockTransport` in tests.
* ``component(name, factory)`` returns the component registered under
  ``name``, building it with ``factory()`` the first time (once, even when
  called from several threads at the same moment).
* ``close()`` is idempotent and thread-safe. It closes the components in
  reverse creation order (an exception in one is logged, the others still
  close), then the scheduler, then the connector, and leaves no thread
  behind. After ``close()`` starts, ``component()`` raises
  :class:`~polaris_sdk.errors.ClosedError`.
* ``add_observer(observer)`` lets an observer (:mod:`polaris_sdk.observe`)
  see every call result, heartbeat and cache refresh of this context.
* Also a context manager.
* Fork-safe: in a process forked from the one that made it, the context
  works again on first use with new channels, connection pool, scheduler
  and caches, and none of the parent's registrations (:mod:`polaris_sdk._fork`).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Sequence
from typing import Any, Protocol, TypeVar

from polaris_sdk import _fork
from polaris_sdk._closing import Closing
from polaris_sdk.config import Configuration, load_config
from polaris_sdk.connector import (
    Connection,
    ConnectionState,
    ServerConnector,
    Transport,
    create_connector,
)
from polaris_sdk.connector.state import ConnectionListener
from polaris_sdk.dispatch import Dispatcher, Mailbox
from polaris_sdk.errors import ClosedError
from polaris_sdk.observe import Observers
from polaris_sdk.scheduler import Scheduler

__all__ = ["SDKContext"]

logger = logging.getLogger("polaris_sdk.context")

T = TypeVar("T")

CONNECTION_THREAD = "polaris-connection"


class _Closeable(Protocol):
    def close(self) -> None: ...


class SDKContext(Closing):
    """Owns what the facades share; build one with :meth:`create`."""

    def __init__(
        self,
        config: Configuration | None = None,
        *,
        connector: ServerConnector | None = None,
        transport: Transport | None = None,
    ) -> None:
        self._config = config or Configuration()
        self._notices = Dispatcher(CONNECTION_THREAD, max_workers=2)
        self._connection = Connection(self._mailbox)
        self._observers = Observers()
        self._connector = (
            connector
            if connector is not None
            else create_connector(self._config, transport=transport, connection=self._connection)
        )
        self._scheduler = Scheduler(self._config.scheduler.workers)
        self._lock = threading.RLock()
        self._components: dict[str, Any] = {}
        self._closed = False
        _fork.track(self)

    def _reset_after_fork(self) -> None:
        """In a forked child: new locks and listener threads; components reset in place.

        The scheduler, the transport and the connection state reset
        themselves (:mod:`polaris_sdk._fork`).
        """
        self._lock = threading.RLock()
        self._notices = Dispatcher(CONNECTION_THREAD, max_workers=2)
        for component in self._components.values():
            reset: Callable[[], None] | None = getattr(component, "_reset_after_fork", None)
            if reset is not None:
                reset()

    @classmethod
    def create(
        cls,
        config: str | os.PathLike[str] | Configuration | None = None,
        *,
        addresses: Sequence[str] | str | None = None,
        token: str | None = None,
        persist_dir: str | os.PathLike[str] | None = None,
        refresh_interval: float | str | None = None,
        transport: Transport | None = None,
        **settings: Any,
    ) -> SDKContext:
        """A context from a file, a Configuration or the defaults, plus overrides.

        With no ``config``: ``$POLARIS_CONFIG`` or ``./polaris.yaml`` if present,
        then ``POLARIS_*`` environment variables, then the defaults
        (``127.0.0.1:8091``). Keyword arguments win over all of them;
        ``settings`` takes ``polaris.yaml`` keys, e.g.
        ``**{"global.api.timeout": "2s"}``.
        """
        merged = load_config(
            config,
            addresses=list(addresses) if isinstance(addresses, tuple) else addresses,
            token=token,
            persist_dir=persist_dir,
            refresh_interval=refresh_interval,
            **settings,
        )
        return cls(merged, transport=transport)

    @property
    def config(self) -> Configuration:
        return self._config

    @property
    def connection(self) -> Connection:
        """The server's reachability as this context's calls see it."""
        return self._connection

    @property
    def state(self) -> ConnectionState:
        return self._connection.state

    def add_connection_listener(self, listener: ConnectionListener) -> None:
        """Call ``listener(state)`` (on a listener thread) whenever the state changes."""
        self._connection.add_listener(listener)

    def remove_connection_listener(self, listener: ConnectionListener) -> None:
        self._connection.remove_listener(listener)

    @property
    def observers(self) -> Observers:
        """The observers the drivers of this context report to."""
        return self._observers

    def add_observer(self, observer: object) -> None:
        """Show ``observer`` every call result, heartbeat and cache refresh, called
        synchronously in the working thread (see :mod:`polaris_sdk.observe`)."""
        self._observers.add(observer)

    def remove_observer(self, observer: object) -> None:
        self._observers.remove(observer)

    def _mailbox(self, listener: ConnectionListener) -> Mailbox[ConnectionState]:
        return self._notices.mailbox(listener)

    @property
    def connector(self) -> ServerConnector:
        return self._connector

    @property
    def scheduler(self) -> Scheduler:
        return self._scheduler

    @property
    def closed(self) -> bool:
        return self._closed

    def component(self, name: str, factory: Callable[[], T]) -> T:
        """The component called ``name``, built by ``factory()`` on first use."""
        with self._lock:
            if self._closed:
                raise ClosedError("the SDKContext is closed")
            if name not in self._components:
                self._components[name] = factory()
            value: T = self._components[name]
            return value

    def close(self) -> None:
        """Close the components (newest first), the scheduler, then the connector."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            components = list(self._components.items())
        for name, component in reversed(components):
            close: Callable[[], None] | None = getattr(component, "close", None)
            if close is None:
                continue
            try:
                close()
            except Exception:
                logger.exception("closing component %s failed", name)
        self._scheduler.close()
        self._connector.close()
        self._connection.close()
        self._notices.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        addresses = ",".join(self._config.server_connector.addresses)
        return f"<SDKContext {addresses} {state}>"
