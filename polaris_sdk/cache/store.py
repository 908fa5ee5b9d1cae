"""Store: service key -> the current immutable snapshot and what is derived from it.

Guarantees:

* Readers never lock and never see a half-made update: an :class:`Entry` is
  replaced as a whole (one dict assignment, atomic under the GIL) and never
  changed in place, except for its bounded caches of derived values.
* Derived values live as long as what they depend on:

  - :meth:`Entry.derive`: once per snapshot revision and key (the routers'
    candidates, a balancer's cumulative weights or hash ring). A snapshot
    the server merely re-confirms (``200001``) gets a new ``updated_at`` but
    keeps these, so re-confirmation costs no recomputation.
  - :meth:`Entry.derive_local`: once per entry, for values that also depend
    on ``updated_at`` (a filtered :class:`ServiceInstances` answer); every
    confirmation starts them afresh.
  - :meth:`Entry.counter`: once per service, across revisions: the turn of
    round robin, so that neither a new snapshot nor the eviction of a picker
    sends every call back to the first candidate.

* Bounded: each kind of value has its own least-recently-used cache
  (``MAX_DERIVED`` values unless the caller sets a ``limit``); past it the
  least recently used value is dropped and rebuilt when next needed, so
  arbitrary per-request filters cannot grow memory without limit and one
  kind cannot crowd out another. Counters are kept up to ``MAX_COUNTERS``;
  a new one starts at a random turn.
* When a new revision replaces an entry, :meth:`Entry.successor` warms the
  new entry, in the caller's thread, with what is cheap to keep and likely
  to be used: the values derived with ``carry=True`` (the unfiltered
  structures) and the ``CARRY_RECENT`` most recently used of each kind. The
  rest is rebuilt by the first call that needs it.
* Lookups take no lock; a value is computed outside any lock and the first
  one stored wins, so concurrent callers share one object.

Writers (the reflector of each service) are serialised per key by their
informer; the store's own lock only guards the dict's shape.
"""

from __future__ import annotations

import itertools
import logging
import random
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator
from typing import Any, Final, TypeVar

from polaris_sdk.model import ServiceInstances, ServiceKey

__all__ = ["CARRY_RECENT", "MAX_COUNTERS", "MAX_DERIVED", "Entry", "Store"]

logger = logging.getLogger("polaris_sdk.cache.store")

K = TypeVar("K", bound=Hashable)
T = TypeVar("T")

MAX_DERIVED: Final = 256
"""Values of one kind kept per revision (and per entry) unless a limit is given."""
CARRY_RECENT: Final = 4
"""Most recently used values of each kind recomputed for a new revision."""
MAX_COUNTERS: Final = 1024
"""Round-robin counters kept per service."""

Derivation = Callable[["Entry", Any], Any]
_Slot = tuple[Any, Derivation, bool]  # value, how it was made, carry


class _Memo:
    """Least-recently-used caches of derived values, one per kind."""

    __slots__ = ("kinds", "limits", "lock")

    def __init__(self) -> None:
        self.kinds: dict[str, OrderedDict[Hashable, _Slot]] = {}
        self.limits: dict[str, int] = {}
        self.lock = threading.Lock()

    def put(self, kind: str, key: Hashable, slot: _Slot, limit: int) -> Any:
        """Store ``slot`` unless a value is already there; returns the stored value."""
        with self.lock:
            values = self.kinds.get(kind)
            if values is None:
                values = self.kinds[kind] = OrderedDict()
                self.limits[kind] = max(1, limit)
            found = values.get(key)
            if found is not None:
                # A concurrent caller stored it first; keep theirs so every
                # caller shares one object.
                return found[0]
            values[key] = slot
            while len(values) > self.limits[kind]:
                values.popitem(last=False)
        return slot[0]

    def to_carry(self) -> list[tuple[str, Hashable, Derivation, bool, int]]:
        """What a successor recomputes: the carried values and the most recent
        ones, least recently used first (so the new caches keep the order)."""
        chosen: list[tuple[str, Hashable, Derivation, bool, int]] = []
        with self.lock:
            for kind, values in self.kinds.items():
                # One C-level copy, which a lock-free move_to_end() elsewhere
                # cannot interleave with under the GIL.
                items = list(values.items())
                recent = {key for key, _ in items[-CARRY_RECENT:]}
                limit = self.limits[kind]
                chosen.extend(
                    (kind, key, compute, carry, limit)
                    for key, (_, compute, carry) in items
                    if carry or key in recent
                )
        return chosen


def _lookup(memo: _Memo, kind: str, key: Hashable) -> _Slot | None:
    values = memo.kinds.get(kind)
    if values is None:
        return None
    found = values.get(key)
    if found is not None:
        # try/except rather than contextlib.suppress: this is every call's path.
        try:  # noqa: SIM105
            values.move_to_end(key)
        except KeyError:
            pass  # evicted just now by another thread; the value is still right
    return found


class _Lineage:
    """What outlives the revisions of one service: its round-robin counters."""

    __slots__ = ("counters", "lock")

    def __init__(self) -> None:
        self.counters: OrderedDict[Hashable, Iterator[int]] = OrderedDict()
        self.lock = threading.Lock()

    def counter(self, key: Hashable) -> Iterator[int]:
        counters = self.counters
        found = counters.get(key)
        if found is not None:
            try:  # noqa: SIM105 (as in _lookup)
                counters.move_to_end(key)
            except KeyError:
                pass
            return found
        with self.lock:
            found = counters.get(key)
            if found is None:
                # A random first turn: processes started together do not all
                # send their first call to the same instance, and a counter
                # rebuilt after eviction does not restart at the first one.
                found = counters[key] = itertools.count(random.getrandbits(32))
                while len(counters) > MAX_COUNTERS:
                    counters.popitem(last=False)
        return found


class Entry:
    """One service's snapshot in the store, plus its caches of derived values."""

    __slots__ = ("_lineage", "_local", "_memo", "snapshot")

    def __init__(
        self,
        snapshot: ServiceInstances,
        memo: _Memo | None = None,
        lineage: _Lineage | None = None,
    ) -> None:
        self.snapshot = snapshot
        self._memo = memo if memo is not None else _Memo()
        self._lineage = lineage if lineage is not None else _Lineage()
        self._local = _Memo()

    @property
    def revision(self) -> str:
        return self.snapshot.revision

    def derive(
        self,
        kind: str,
        key: K,
        compute: Callable[[Entry, K], T],
        *,
        carry: bool = False,
        limit: int = MAX_DERIVED,
    ) -> T:
        """``compute(self, key)``, computed at most once per revision while kept.

        ``compute`` must be a pure function of the snapshot's instances and
        metadata (not of ``updated_at``) and of other values derived from
        this entry, because the value outlives re-confirmations of the same
        revision and is recomputed for new ones. ``carry`` asks for it to be
        warmed on every new revision; ``limit`` bounds the values of ``kind``
        (set by the first derivation of the kind).
        """
        found = _lookup(self._memo, kind, key)
        if found is not None:
            return found[0]  # type: ignore[no-any-return]
        value = compute(self, key)
        return self._memo.put(kind, key, (value, compute, carry), limit)  # type: ignore[no-any-return]

    def derive_local(
        self, kind: str, key: K, compute: Callable[[Entry, K], T], *, limit: int = MAX_DERIVED
    ) -> T:
        """Like :meth:`derive`, but kept by this entry only: ``compute`` may
        depend on ``updated_at``, and a confirmation starts afresh."""
        found = _lookup(self._local, kind, key)
        if found is not None:
            return found[0]  # type: ignore[no-any-return]
        value = compute(self, key)
        return self._local.put(kind, key, (value, compute, False), limit)  # type: ignore[no-any-return]

    def counter(self, key: Hashable) -> Iterator[int]:
        """The turn counter for ``key``, shared by every revision of this service.
        ``next()`` on it is atomic under the GIL."""
        return self._lineage.counter(key)

    def confirmed(self, at: float | None = None) -> Entry:
        """The same revision re-confirmed by the server now: fresh ``updated_at``,
        same per-revision values."""
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
        return Entry(snapshot, self._memo, self._lineage)

    def successor(self, snapshot: ServiceInstances, warm: bool = True) -> Entry:
        """An entry for a new revision of the same service; with ``warm``, the
        carried and most recently used values are recomputed for it now, by the
        caller's thread."""
        entry = Entry(snapshot, lineage=self._lineage)
        if warm:
            for kind, key, compute, carry, limit in self._memo.to_carry():
                try:
                    entry.derive(kind, key, compute, carry=carry, limit=limit)
                except Exception:
                    # A derivation that fails here fails again for the caller
                    # that needs it, who then sees the error.
                    logger.debug("warming %s %r for %s failed", kind, key, snapshot.service_key)
        return entry

    def derived_keys(self, kind: str) -> list[Hashable]:
        """The keys of ``kind`` kept for this revision, least recently used first."""
        return list(self._memo.kinds.get(kind, ()))


class Store:
    """Thread-safe map from :class:`ServiceKey` to :class:`Entry`."""

    def __init__(self) -> None:
        self._entries: dict[ServiceKey, Entry] = {}
        # The same entries by (namespace, service): the read path looks them
        # up without building a ServiceKey or running its Python-level hash.
        self._named: dict[tuple[str, str], Entry] = {}
        self._lock = threading.Lock()

    def get(self, key: ServiceKey) -> Entry | None:
        return self._entries.get(key)

    def get_named(self, namespace: str, service: str) -> Entry | None:
        """:meth:`get` by the parts of the key."""
        return self._named.get((namespace, service))

    def put(self, key: ServiceKey, entry: Entry) -> None:
        with self._lock:
            self._entries[key] = entry
            self._named[(key.namespace, key.service)] = entry

    def delete(self, key: ServiceKey) -> None:
        with self._lock:
            self._entries.pop(key, None)
            self._named.pop((key.namespace, key.service), None)

    def keys(self) -> list[ServiceKey]:
        with self._lock:
            return list(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[ServiceKey]:
        return iter(self.keys())
