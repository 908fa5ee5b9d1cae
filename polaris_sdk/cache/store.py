"""Store: service key -> the current immutable snapshot, as client-go's ``Store``.

Guarantees:

* Readers never lock and never see a half-made update: an :class:`Entry` is
  immutable and replaced as a whole by one dict assignment (a dict is
  thread-safe on free-threaded Python too), so a reader gets the old entry
  or the new one.
* An entry knows snapshots only, nothing about routing. ``entry.snapshot``
  is the object stored by the last :meth:`Store.replace` and stays the same
  object through every re-confirmation (200001), so whoever derives values
  from a snapshot can check them by identity
  (``memo.snapshot is entry.snapshot``) and a confirmation costs them no
  recomputation. ``entry.current`` is what readers are answered: the same
  instances, with ``updated_at`` of the last confirmation.
* Replace hooks (:meth:`Store.add_replace_hook`) are called as
  ``hook(key, old_snapshot_or_None, new_snapshot)`` by the writer's thread,
  before the new snapshot becomes visible, so a subscriber (the consumer's
  selection) can warm what it derives from the new snapshot and the first
  reader after a change does not pay for it. A hook that raises is logged
  and does not stop the write.

Writers (the reflector of each service, through its informer, and the first
listing) are serialised per key; the store's own lock guards the dicts'
shape and the hook list.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator

from polaris_sdk.model import ServiceInstances, ServiceKey

__all__ = ["Entry", "ReplaceHook", "Store"]

logger = logging.getLogger("polaris_sdk.cache.store")

ReplaceHook = Callable[[ServiceKey, ServiceInstances | None, ServiceInstances], None]


class Entry:
    """One service's snapshot in the store and when the server last confirmed it."""

    __slots__ = ("current", "snapshot")

    def __init__(self, snapshot: ServiceInstances, current: ServiceInstances | None = None) -> None:
        self.snapshot = snapshot
        """The stored snapshot: the same object until a new revision replaces it."""
        self.current = snapshot if current is None else current
        """``snapshot`` as readers see it, ``updated_at`` as of the last confirmation."""

    @property
    def revision(self) -> str:
        return self.snapshot.revision

    @property
    def updated_at(self) -> float:
        return self.current.updated_at

    def confirmed(self, at: float | None = None) -> Entry:
        """The same snapshot re-confirmed by the server at ``at`` (default: now)."""
        old = self.current
        # Built directly: dataclasses.replace() costs several times more, and
        # this runs for every cached service at every refresh.
        current = ServiceInstances(
            namespace=old.namespace,
            service=old.service,
            revision=old.revision,
            instances=old.instances,
            metadata=old.metadata,
            updated_at=time.time() if at is None else at,
            from_backup=False,
            fallback=old.fallback,
        )
        return Entry(self.snapshot, current)


def _nothing(key: tuple[str, str]) -> Entry | None:
    return None


class Store:
    """Thread-safe map from :class:`ServiceKey` to :class:`Entry`."""

    def __init__(self) -> None:
        self._entries: dict[ServiceKey, Entry] = {}
        # The same entries by (namespace, service): the read path looks them
        # up without building a ServiceKey or running its Python-level hash.
        self._named: dict[tuple[str, str], Entry] = {}
        self.lookup_named: Callable[[tuple[str, str]], Entry | None] = self._named.get
        """:meth:`get_named` taking the ``(namespace, service)`` pair: one C call,
        for the hottest read path. After :meth:`close` it finds nothing."""
        self._hooks: tuple[ReplaceHook, ...] = ()
        self._lock = threading.Lock()

    def get(self, key: ServiceKey) -> Entry | None:
        return self._entries.get(key)

    def get_named(self, namespace: str, service: str) -> Entry | None:
        """:meth:`get` by the parts of the key."""
        return self._named.get((namespace, service))

    def replace(
        self, key: ServiceKey, snapshot: ServiceInstances, *, hooks: bool = True
    ) -> Entry | None:
        """Store ``snapshot`` as the new entry of ``key``; returns the old entry.

        The replace hooks run first, in the caller's thread; a writer that
        must not hold its own lock while they run calls
        :meth:`run_replace_hooks` before it and passes ``hooks=False``."""
        if hooks:
            self.run_replace_hooks(key, snapshot)
        old = self._entries.get(key)
        self._put(key, Entry(snapshot))
        return old

    def run_replace_hooks(self, key: ServiceKey, snapshot: ServiceInstances) -> None:
        """Tell the hooks that ``snapshot`` is about to replace the entry of ``key``."""
        old = self._entries.get(key)
        old_snapshot = old.snapshot if old is not None else None
        for hook in self._hooks:
            try:
                hook(key, old_snapshot, snapshot)
            except Exception:
                logger.exception("a replace hook failed for %s", key)

    def confirm(self, key: ServiceKey, at: float | None = None) -> Entry | None:
        """Mark the entry of ``key`` confirmed at ``at``; None if there is none."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        confirmed = entry.confirmed(at)
        self._put(key, confirmed)
        return confirmed

    def close(self) -> None:
        """Readers through :attr:`lookup_named` find nothing from now on (so a
        facade's warm path falls back to its full one, which raises ClosedError)."""
        self.lookup_named = _nothing

    def delete(self, key: ServiceKey) -> None:
        with self._lock:
            self._entries.pop(key, None)
            self._named.pop((key.namespace, key.service), None)

    def add_replace_hook(self, hook: ReplaceHook) -> None:
        """Call ``hook(key, old, new)`` before each new snapshot becomes visible."""
        with self._lock:
            if hook not in self._hooks:
                self._hooks = (*self._hooks, hook)

    def remove_replace_hook(self, hook: ReplaceHook) -> None:
        with self._lock:
            self._hooks = tuple(h for h in self._hooks if h != hook)

    def keys(self) -> list[ServiceKey]:
        with self._lock:
            return list(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[ServiceKey]:
        return iter(self.keys())

    def _put(self, key: ServiceKey, entry: Entry) -> None:
        with self._lock:
            self._entries[key] = entry
            self._named[(key.namespace, key.service)] = entry
