"""Informer: one service's snapshot in the store, its changes and its listeners.

Guarantees:

* :func:`diff` is pure: two snapshots in, a :class:`ServiceChangeEvent` out
  (``added``, ``updated`` as (old, new) pairs, ``deleted``; matched by
  instance id), or None when no instance changed.
* Each listener has its own mailbox (:mod:`polaris_sdk.dispatch`):
  listeners run on the dispatcher's threads, never on the reflector's, so a
  slow or raising listener stalls neither the refresh loop nor the other
  listeners. Each listener sees events in snapshot order.
* A new listener first gets the current snapshot as one event with every
  instance in ``added`` (also when there are none, so it knows it is
  registered), then every later change, with nothing missed or repeated in
  between: both happen under the informer's lock.
* Snapshots from the server are saved to the disk backup, when there is one,
  after the store is updated; backup failures only log.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any, Final, Protocol

from polaris_sdk.cache.persist import DiskBackup
from polaris_sdk.cache.reflector import ConnectionState
from polaris_sdk.cache.store import Store
from polaris_sdk.model import Instance, ServiceChangeEvent, ServiceInstances, ServiceKey

__all__ = ["BACKUP_TOUCH_INTERVAL", "Informer", "diff", "initial_event"]

logger = logging.getLogger("polaris_sdk.cache.informer")

Listener = Callable[[ServiceChangeEvent], None]
StateCallback = Callable[[ServiceKey, ConnectionState], None]

BACKUP_TOUCH_INTERVAL: Final = 60.0
"""Seconds between updates of the backup's timestamp while the server keeps
re-confirming an unchanged snapshot (a rewrite happens on every change)."""


def diff(old: ServiceInstances | None, new: ServiceInstances) -> ServiceChangeEvent | None:
    """What changed from ``old`` to ``new``; None when no instance did."""
    before: dict[str, Instance] = {i.id: i for i in old.instances} if old is not None else {}
    added: list[Instance] = []
    updated: list[tuple[Instance, Instance]] = []
    for instance in new.instances:
        previous = before.pop(instance.id, None)
        if previous is None:
            added.append(instance)
        elif previous != instance:
            updated.append((previous, instance))
    if not (added or updated or before):
        return None
    return ServiceChangeEvent(
        namespace=new.namespace,
        service=new.service,
        added=tuple(added),
        updated=tuple(updated),
        deleted=tuple(before.values()),
        instances=new,
        revision=new.revision,
    )


def initial_event(snapshot: ServiceInstances) -> ServiceChangeEvent:
    """The event a new listener starts with: the whole snapshot as added."""
    return ServiceChangeEvent(
        namespace=snapshot.namespace,
        service=snapshot.service,
        added=snapshot.instances,
        updated=(),
        deleted=(),
        instances=snapshot,
        revision=snapshot.revision,
    )


class EventMailbox(Protocol):
    """One listener's queue (:class:`polaris_sdk.dispatch.Mailbox` or its asyncio twin)."""

    @property
    def callback(self) -> Callable[[Any], Any]: ...

    def post(self, item: ServiceChangeEvent) -> None: ...

    def close(self) -> None: ...


class Mailboxes(Protocol):
    """Where listener mailboxes come from: a thread pool, or the event loop."""

    def mailbox(self, callback: Callable[[Any], Any], label: str | None = None) -> Any: ...


class Informer:
    """Writes one service's snapshots into the store and fans changes out.

    It is the sink of the service's reflector (``current``, ``replace``,
    ``confirm``, ``state_changed``); only that reflector and the first load
    write, never at the same time.
    """

    def __init__(
        self,
        key: ServiceKey,
        store: Store,
        dispatcher: Mailboxes,
        *,
        backup: DiskBackup | None = None,
        on_state: StateCallback | None = None,
    ) -> None:
        self.key = key
        self._store = store
        self._dispatcher = dispatcher
        self._backup = backup
        self._on_state = on_state
        self._lock = threading.Lock()
        self._mailboxes: list[EventMailbox] = []
        self._backup_touched = 0.0

    # ------------------------------------------------------------ the sink

    def current(self) -> ServiceInstances | None:
        entry = self._store.get(self.key)
        return entry.current if entry is not None else None

    def replace(self, snapshot: ServiceInstances) -> None:
        # The hooks run before taking the lock: warming a large hash ring
        # takes a while and must not hold up listeners being added.
        self._store.run_replace_hooks(self.key, snapshot)
        with self._lock:
            old = self._store.replace(self.key, snapshot, hooks=False)
            event = diff(old.snapshot if old is not None else None, snapshot)
            if event is not None:
                for mailbox in self._mailboxes:
                    mailbox.post(event)
        if self._backup is not None and not snapshot.from_backup and self._backup.save(snapshot):
            self._backup_touched = time.time()

    def confirm(self, at: float) -> None:
        if self._store.confirm(self.key, at) is None:
            return
        if self._backup is not None and at - self._backup_touched >= BACKUP_TOUCH_INTERVAL:
            # The file holds this revision (saved on change, or loaded from it).
            self._backup_touched = at
            self._backup.touch(self.key, at)

    def state_changed(self, key: ServiceKey, state: ConnectionState) -> None:
        if self._on_state is not None:
            self._on_state(key, state)

    # ----------------------------------------------------------- listeners

    def add_listener(self, listener: Listener) -> bool:
        """Subscribe ``listener``; False if it was already subscribed."""
        with self._lock:
            if any(m.callback == listener for m in self._mailboxes):
                return False
            entry = self._store.get(self.key)
            mailbox: EventMailbox = self._dispatcher.mailbox(listener)
            if entry is not None:
                mailbox.post(initial_event(entry.current))
            self._mailboxes.append(mailbox)
            return True

    def remove_listener(self, listener: Listener) -> bool:
        """Unsubscribe ``listener``; events still queued for it are dropped."""
        with self._lock:
            for mailbox in self._mailboxes:
                if mailbox.callback == listener:
                    self._mailboxes.remove(mailbox)
                    mailbox.close()
                    return True
        return False

    @property
    def listener_count(self) -> int:
        return len(self._mailboxes)

    def close(self) -> None:
        with self._lock:
            for mailbox in self._mailboxes:
                mailbox.close()
            self._mailboxes.clear()
