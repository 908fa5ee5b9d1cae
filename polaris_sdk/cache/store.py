"""Store: service key -> the current immutable snapshot and what is derived from it.

Guarantees:

* Readers never lock and never see a half-made update: an :class:`Entry` is
  replaced as a whole (one dict assignment, atomic under the GIL) and never
  changed in place, except for its memo of derived values, which only grows.
* Derived values (the routers' filtered candidates, a balancer's cumulative
  weights or hash ring, a round-robin counter) are computed once per
  snapshot revision through :meth:`Entry.derive` and shared by every later
  call. A snapshot the server merely re-confirms (``200001``) gets a new
  ``updated_at`` but keeps its memo, so re-confirmation costs no recomputation.
* When a new revision replaces an entry, :meth:`Entry.successor` can warm the
  new entry with the same derivations the old one had, so callers do not pay
  for them on their first pick after a change.
* The memo is bounded (``MAX_DERIVED``): past it, values are computed per call
  rather than kept, so arbitrary per-request filters cannot grow memory
  without limit.

Writers (the reflector of each service) are serialised per key by their
informer; the store's own lock only guards the dict's shape.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Hashable, Iterator
from typing import Any, Final, TypeVar

from polaris_sdk.model import ServiceInstances, ServiceKey

__all__ = ["MAX_DERIVED", "Entry", "Store"]

logger = logging.getLogger("polaris_sdk.cache.store")

T = TypeVar("T")
MAX_DERIVED: Final = 256

Derivation = Callable[[ServiceInstances], Any]


class _Memo:
    """Values derived from one revision's instances, with how each was made."""

    __slots__ = ("lock", "values")

    def __init__(self) -> None:
        self.values: dict[Hashable, tuple[Derivation, Any]] = {}
        self.lock = threading.Lock()


class Entry:
    """One service's snapshot in the store, plus its memo of derived values."""

    __slots__ = ("_memo", "snapshot")

    def __init__(self, snapshot: ServiceInstances, memo: _Memo | None = None) -> None:
        self.snapshot = snapshot
        self._memo = memo if memo is not None else _Memo()

    @property
    def revision(self) -> str:
        return self.snapshot.revision

    def derive(self, key: Hashable, compute: Callable[[ServiceInstances], T]) -> T:
        """``compute(snapshot)``, computed at most once per revision for ``key``.

        ``compute`` must be a pure function of the snapshot's instances and
        metadata (not of ``updated_at``), because the value outlives
        re-confirmations of the same revision.
        """
        found = self._memo.values.get(key)
        if found is not None:
            return found[1]  # type: ignore[no-any-return]
        value = compute(self.snapshot)
        with self._memo.lock:
            if len(self._memo.values) >= MAX_DERIVED:
                return value
            # A concurrent caller may have stored it first; keep theirs so
            # every caller shares one object (one round-robin counter).
            stored = self._memo.values.setdefault(key, (compute, value))
        return stored[1]  # type: ignore[no-any-return]

    def confirmed(self, at: float | None = None) -> Entry:
        """The same revision re-confirmed by the server now: fresh ``updated_at``, same memo."""
        old = self.snapshot
        # Built directly: dataclasses.replace() costs several times more, and
        # this runs for every cached service at every refresh.
        snapshot = ServiceInstances(
            namespace=old.namespace,
            service=old.service,
            revision=old.revision,
            instances=old.instances,
            metadata=old.metadata,
            updated_at=time.time() if at is None else at,
            from_backup=False,
            fallback=old.fallback,
        )
        return Entry(snapshot, self._memo)

    def successor(self, snapshot: ServiceInstances, warm: bool = True) -> Entry:
        """An entry for a new revision; with ``warm``, every derivation of this
        entry is recomputed for the new one now, by the caller's thread."""
        entry = Entry(snapshot)
        if warm:
            for key, (compute, _) in list(self._memo.values.items()):
                try:
                    entry.derive(key, compute)
                except Exception:
                    # A derivation that fails here fails again for the caller
                    # that needs it, who then sees the error.
                    logger.debug("warming %r for %s failed", key, snapshot.service_key)
        return entry

    def derived_keys(self) -> list[Hashable]:
        return list(self._memo.values)


class Store:
    """Thread-safe map from :class:`ServiceKey` to :class:`Entry`."""

    def __init__(self) -> None:
        self._entries: dict[ServiceKey, Entry] = {}
        self._lock = threading.Lock()

    def get(self, key: ServiceKey) -> Entry | None:
        return self._entries.get(key)

    def put(self, key: ServiceKey, entry: Entry) -> None:
        with self._lock:
            self._entries[key] = entry

    def delete(self, key: ServiceKey) -> None:
        with self._lock:
            self._entries.pop(key, None)

    def keys(self) -> list[ServiceKey]:
        with self._lock:
            return list(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[ServiceKey]:
        return iter(self.keys())
