"""ServiceCache: every cached service of one SDKContext, kept fresh in the background.

Guarantees:

* The first request for a service lists it synchronously, in the caller's
  thread and within the caller's timeout; concurrent first requests for the
  same service share that one listing. Every later read is a dictionary
  lookup: no lock, no network.
* If that first listing cannot reach the server (network failure or a 5xx
  code) and a disk backup of the service exists, the backup answers
  (``from_backup=True``, ``age`` telling how old it is) and the service is
  refreshed in the background like any other. Without a backup the error is
  raised and nothing is kept, so the next request tries again.
* Each cached service has a reflector (refresh loop on the context's
  scheduler, no thread per service) and an informer (store writes, events).
  Services stay cached and refreshed until :meth:`ServiceCache.close`.
* State listeners get ``(key, ConnectionState)`` on every state change of a
  service, through their own mailbox like event listeners.
* :meth:`close` is idempotent: it stops every refresh loop, drops queued
  events, joins the listener threads, and makes later requests raise
  :class:`~polaris_sdk.errors.ClosedError`.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from polaris_sdk.cache.informer import Informer, Listener
from polaris_sdk.cache.listwatch import InstanceLister, ListerWatcher
from polaris_sdk.cache.options import CacheOptions
from polaris_sdk.cache.persist import DiskBackup
from polaris_sdk.cache.reflector import ConnectionState, Reflector, Scheduler
from polaris_sdk.cache.store import Entry, ReplaceHook, Store
from polaris_sdk.connector.state import Connection
from polaris_sdk.dispatch import Dispatcher, Mailbox
from polaris_sdk.errors import (
    ClosedError,
    NetworkError,
    PolarisTimeoutError,
    ServerInternalError,
)
from polaris_sdk.model import ServiceInstances, ServiceKey
from polaris_sdk.observe import Observers

__all__ = ["ServiceCache", "StateListener", "answer_from_backup"]

logger = logging.getLogger("polaris_sdk.cache.service_cache")

StateListener = Callable[[ServiceKey, ConnectionState], None]

_SEVERITY = {ConnectionState.CONNECTED: 0, ConnectionState.SUSPENDED: 1, ConnectionState.LOST: 2}


class _Service:
    """An informer, its reflector and whether its first listing is done."""

    def __init__(self, informer: Informer, reflector: Reflector) -> None:
        self.informer = informer
        self.reflector = reflector
        self.ready = threading.Event()
        self.error: BaseException | None = None


def answer_from_backup(
    backup: DiskBackup | None, key: ServiceKey, informer: Informer, error: BaseException
) -> bool:
    """After a first listing failed with ``error`` (the server unreachable): serve the
    disk backup of ``key`` through ``informer`` if there is one; False if there is none.

    Shared by the blocking cache and its asyncio twin.
    """
    snapshot = backup.load(key) if backup is not None else None
    if snapshot is None:
        return False
    logger.warning(
        "%s: server unreachable (%s); answering from the disk backup "
        "(%d instances, %.0fs old) while retrying",
        key,
        error,
        len(snapshot),
        snapshot.age,
    )
    informer.replace(snapshot)
    return True


class ServiceCache:
    def __init__(
        self,
        lister: InstanceLister,
        scheduler: Scheduler,
        options: CacheOptions | None = None,
        connection: Connection | None = None,
        observers: Observers | None = None,
    ) -> None:
        self.options = options or CacheOptions()
        self._observers = observers
        self._lw = ListerWatcher(
            lister,
            self.options.request_timeout,
            probe_interval=self.options.refresh_interval,
            connection=connection,
        )
        self._scheduler = scheduler
        self._store = Store()
        self._dispatcher = Dispatcher(
            "polaris-listener",
            max_workers=self.options.listener_workers,
            idle_timeout=self.options.listener_idle_timeout,
        )
        self._backup = DiskBackup(self.options.persist_dir) if self.options.persist_dir else None
        self._services: dict[ServiceKey, _Service] = {}
        self._state_mailboxes: list[
            tuple[StateListener, Mailbox[tuple[ServiceKey, ConnectionState]]]
        ] = []
        self._lock = threading.Lock()
        self._closed = False
        self._lister = lister

    def _reset_after_fork(self) -> None:
        """In a forked child: nothing cached, nothing watched; services listed on first use."""
        self._lw = ListerWatcher(
            self._lister, self.options.request_timeout, probe_interval=self.options.refresh_interval
        )
        hooks = self._store._hooks
        self._store = Store()
        self._store._hooks = hooks  # the selector's, reset in place
        self._dispatcher = Dispatcher(
            "polaris-listener",
            max_workers=self.options.listener_workers,
            idle_timeout=self.options.listener_idle_timeout,
        )
        if self.options.persist_dir:
            self._backup = DiskBackup(self.options.persist_dir)
        self._services = {}
        self._state_mailboxes = []
        self._lock = threading.Lock()

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def backup(self) -> DiskBackup | None:
        return self._backup

    @property
    def listener_threads(self) -> int:
        return self._dispatcher.thread_count

    # ---------------------------------------------------------------- reads

    def entry(self, key: ServiceKey, timeout: float | None = None) -> Entry:
        """The current entry of ``key``, listing the service first if it is new."""
        if self._closed:
            raise ClosedError("the consumer cache is closed")
        entry = self._store.get(key)
        if entry is not None:
            return entry
        return self._load(key, timeout)

    def cached_entry(self, key: ServiceKey) -> Entry | None:
        """The entry of ``key`` if it is cached; never lists."""
        return self._store.get(key)

    def cached_entry_named(self, namespace: str, service: str) -> Entry | None:
        """:meth:`cached_entry` by the parts of the key (the consumer's read path)."""
        return self._store.get_named(namespace, service)

    @property
    def store(self) -> Store:
        """The snapshots (read-only use: ``lookup_named``)."""
        return self._store

    def snapshot(self, key: ServiceKey, timeout: float | None = None) -> ServiceInstances:
        return self.entry(key, timeout).current

    def cached(self) -> list[ServiceKey]:
        """The services in the cache."""
        return self._store.keys()

    def add_replace_hook(self, hook: ReplaceHook) -> None:
        """Call ``hook(key, old, new)`` in the writer's thread before a new snapshot
        of a cached service becomes visible (see :mod:`polaris_sdk.cache.store`)."""
        self._store.add_replace_hook(hook)

    def remove_replace_hook(self, hook: ReplaceHook) -> None:
        self._store.remove_replace_hook(hook)

    # -------------------------------------------------------------- watches

    def watch(
        self, key: ServiceKey, listener: Listener, timeout: float | None = None
    ) -> ServiceInstances:
        """Subscribe ``listener`` to changes of ``key``; the current snapshot is returned
        and also delivered to the listener as its first event."""
        self.entry(key, timeout)
        service = self._services[key]
        service.informer.add_listener(listener)
        return self._store_snapshot(key)

    def unwatch(self, key: ServiceKey, listener: Listener) -> bool:
        service = self._services.get(key)
        return service is not None and service.informer.remove_listener(listener)

    # ---------------------------------------------------------------- state

    def state(self, key: ServiceKey | None = None) -> ConnectionState:
        """The state of ``key``, or the worst state over every cached service."""
        if key is not None:
            service = self._services.get(key)
            if service is None:
                raise KeyError(f"{key} is not cached")
            return service.reflector.state
        states = [s.reflector.state for s in list(self._services.values())]
        return max(states, key=_SEVERITY.__getitem__, default=ConnectionState.CONNECTED)

    def add_state_listener(self, listener: StateListener) -> None:
        """Call ``listener(key, state)`` on each state change of a cached service."""
        with self._lock:
            if any(known == listener for known, _ in self._state_mailboxes):
                return

            def deliver(item: tuple[ServiceKey, ConnectionState]) -> None:
                listener(*item)

            label = getattr(listener, "__qualname__", None) or repr(listener)
            self._state_mailboxes.append((listener, self._dispatcher.mailbox(deliver, label)))

    def remove_state_listener(self, listener: StateListener) -> bool:
        with self._lock:
            for pair in self._state_mailboxes:
                if pair[0] == listener:
                    self._state_mailboxes.remove(pair)
                    pair[1].close()
                    return True
        return False

    def _state_changed(self, key: ServiceKey, state: ConnectionState) -> None:
        with self._lock:
            mailboxes = [mailbox for _, mailbox in self._state_mailboxes]
        for mailbox in mailboxes:
            mailbox.post((key, state))

    # ---------------------------------------------------------------- close

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._store.close()
            services = list(self._services.values())
            for _, mailbox in self._state_mailboxes:
                mailbox.close()
        for service in services:
            service.reflector.stop()
            service.informer.close()
        self._dispatcher.close()

    # -------------------------------------------------------------- loading

    def _store_snapshot(self, key: ServiceKey) -> ServiceInstances:
        entry = self._store.get(key)
        if entry is None:  # only if the cache was closed under us
            raise ClosedError("the consumer cache is closed")
        return entry.current

    def _load(self, key: ServiceKey, timeout: float | None) -> Entry:
        with self._lock:
            if self._closed:
                raise ClosedError("the consumer cache is closed")
            service = self._services.get(key)
            owner = service is None
            if service is None:
                service = self._new_service(key)
                self._services[key] = service
        if owner:
            self._first_listing(key, service, timeout)
        elif not service.ready.wait(timeout):
            raise PolarisTimeoutError(f"listing {key} took longer than {timeout}s")
        if service.error is not None:
            raise service.error
        entry = self._store.get(key)
        if entry is None:
            raise ClosedError("the consumer cache is closed")
        return entry

    def _new_service(self, key: ServiceKey) -> _Service:
        informer = Informer(
            key,
            self._store,
            self._dispatcher,
            backup=self._backup,
            on_state=self._state_changed,
        )
        reflector = Reflector(
            key, self._lw, self._scheduler, informer, self.options, observers=self._observers
        )
        return _Service(informer, reflector)

    def _first_listing(self, key: ServiceKey, service: _Service, timeout: float | None) -> None:
        try:
            try:
                service.reflector.run_once(timeout)
            except (NetworkError, ServerInternalError) as exc:
                if not answer_from_backup(self._backup, key, service.informer, exc):
                    raise
        except BaseException as exc:
            service.error = exc
            with self._lock:
                self._services.pop(key, None)
            self._store.delete(key)
            service.ready.set()
            raise
        with self._lock:
            closed = self._closed
        if not closed:
            service.reflector.start()
        service.ready.set()
