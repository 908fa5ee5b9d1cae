"""Selection: routed candidates and pickers, built once per snapshot and filter.

Contract:

* A :class:`Selector` belongs to one consumer cache (one per SDKContext) and
  is shared by every facade over it. It reads :class:`~polaris_sdk.cache.Entry`
  objects and keeps everything derived from them here, in the consumer:
  the cache holds snapshots only.
* Memo keys are ``(namespace, service, metadata filter)`` for the routers'
  candidates and ``(namespace, service, filter)`` in one memo per policy for
  pickers. A value is valid for the snapshot it was built from and checked
  by identity (``value.snapshot is entry.snapshot``): a re-confirmed
  snapshot (200001) keeps its object, so it keeps its pickers; a new one
  misses and rebuilds. Pickers also carry the circuit breakers' generation
  of their service (:mod:`polaris_sdk.consumer.breakers`), which changes
  only when an instance breaker of that service changes state, so they
  leave OPEN instances out and guard HALF_OPEN ones. A warm call is one dict
  lookup, one identity check and the generation read (two dict lookups).
* Bounded without relying on the GIL: each memo is two generations of plain
  dicts. Readers only call ``dict.get``; writers hold the memo's lock, insert
  into the young generation and, when it is full, make it the old one
  (replacing the attribute, never clearing a dict a reader may hold) and
  start a new young one. A value found only in the old generation is copied
  into the young one; one left behind for two generations is dropped and
  rebuilt by the next call that needs it. So a memo holds at most twice its
  limit, and what is in steady use stays.
* Round-robin turns live here too, one :func:`itertools.count` per service
  and filter (started at a random turn), kept across snapshots and across
  the eviction of pickers, bounded the same way.
* Warm on change: :meth:`Selector.snapshot_replaced` is the cache's replace
  hook. It runs in the writer's thread before the new snapshot is visible
  and rebuilds, for that service, the unfiltered candidates and pickers and
  the ``CARRY_RECENT`` most recently built filtered ones of each kind. A
  failing rebuild is skipped; the caller that needs it sees the error.
* Building is pure (routers and balancers, no I/O) and done outside any
  lock; when two threads build the same value, the first stored wins and
  both get it.
"""

from __future__ import annotations

import dataclasses
import itertools
import random
import threading
from collections.abc import Callable, Hashable, Iterator
from typing import Final, Generic, TypeVar

from polaris_sdk.cache.store import Entry
from polaris_sdk.consumer.breakers import CircuitBreakers, GuardedPicker
from polaris_sdk.consumer.loadbalancer import (
    LB_POLICIES,
    RING_HASH,
    ROUND_ROBIN,
    Picker,
    RoundRobinPicker,
    build_picker,
)
from polaris_sdk.consumer.routers import MetadataKey, route
from polaris_sdk.model import Instance, ServiceInstances, ServiceKey

__all__ = [
    "CARRY_RECENT",
    "MAX_CHOICES",
    "MAX_COUNTERS",
    "MAX_RINGS",
    "MAX_ROUTES",
    "Choice",
    "Generations",
    "Route",
    "Selector",
]

MAX_ROUTES: Final = 1024
"""Routed candidate sets kept per generation (over every service of a cache)."""
MAX_CHOICES: Final = 1024
"""Pickers of one policy kept per generation."""
MAX_RINGS: Final = 64
"""Hash rings kept per generation: each costs about 4 MB per 10,000 instances."""
MAX_COUNTERS: Final = 4096
"""Round-robin counters kept per generation."""
CARRY_RECENT: Final = 4
"""Filtered values of each kind per service rebuilt when its snapshot changes."""

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

_ROUTE_KIND: Final = ""


class Generations(Generic[K, V]):
    """A bounded memo readable without a lock; see the module docstring."""

    __slots__ = ("_lock", "limit", "old", "young")

    def __init__(self, limit: int) -> None:
        self.limit = max(1, limit)
        self.young: dict[K, V] = {}
        self.old: dict[K, V] = {}
        self._lock = threading.Lock()

    def get(self, key: K) -> V | None:
        found = self.young.get(key)
        if found is None:
            found = self.old.get(key)
            if found is not None:
                with self._lock:
                    if key not in self.young:
                        self._insert(key, found)
        return found

    def put(self, key: K, value: V, keep: Callable[[V], bool] = lambda found: False) -> V:
        """Store ``value`` unless a value already kept passes ``keep`` (another
        thread stored it first); returns the value kept."""
        with self._lock:
            found = self.young.get(key)
            if found is None:
                found = self.old.get(key)
            if found is not None and keep(found):
                if key not in self.young:
                    self._insert(key, found)
                return found
            self._insert(key, value)
            return value

    def values(self) -> list[tuple[K, V]]:
        """Every kept (key, value), oldest first; a copy."""
        with self._lock:
            merged = dict(self.old)
            merged.update(self.young)
            return list(merged.items())

    def __len__(self) -> int:
        return len(self.young) + len(self.old)

    def _insert(self, key: K, value: V) -> None:
        young = self.young
        young[key] = value
        if len(young) >= self.limit:
            self.old = young
            self.young = {}


def _any(found: object) -> bool:
    return True


class Route:
    """The routers' answer for one snapshot and filter."""

    __slots__ = ("fallback", "instances", "snapshot", "view")

    def __init__(
        self, snapshot: ServiceInstances, instances: tuple[Instance, ...], fallback: bool
    ) -> None:
        self.snapshot = snapshot
        self.instances = instances
        self.fallback = fallback
        # The get_instances answer and the entry it was built for: it carries
        # that entry's updated_at, so a confirmation builds a new one.
        self.view: tuple[Entry, int, ServiceInstances] | None = None


class Choice:
    """A picker (None: no candidates) for one snapshot, breaker generation, policy
    and filter."""

    __slots__ = ("generation", "picker", "snapshot")

    def __init__(
        self, snapshot: ServiceInstances, picker: Picker | None, generation: int = 0
    ) -> None:
        self.snapshot = snapshot
        self.picker = picker
        self.generation = generation


class Selector:
    """Candidates and pickers per snapshot and filter; thread-safe."""

    def __init__(self, *, warm: bool = True, breakers: CircuitBreakers | None = None) -> None:
        self.warm = warm
        self.breakers = breakers
        self.routes: Generations[tuple[str, str, MetadataKey], Route] = Generations(MAX_ROUTES)
        self.choices: dict[str, Generations[tuple[str, str, MetadataKey], Choice]] = {
            policy: Generations(MAX_RINGS if policy == RING_HASH else MAX_CHOICES)
            for policy in LB_POLICIES
        }
        self._counters: Generations[tuple[str, str, MetadataKey], Iterator[int]] = Generations(
            MAX_COUNTERS
        )
        # What to warm per service: kind ("" for routes, else a policy) ->
        # the filters built most recently, the unfiltered one always kept.
        self._recent: dict[tuple[str, str], dict[str, list[MetadataKey]]] = {}
        self._lock = threading.Lock()

    def _reset_after_fork(self) -> None:
        """In a forked child: empty memos, new locks (see :mod:`polaris_sdk._fork`)."""
        self.__init__(warm=self.warm)  # type: ignore[misc]

    # ------------------------------------------------------------ reading

    def picker(
        self, entry: Entry, namespace: str, service: str, policy: str, wanted: MetadataKey
    ) -> Picker | None:
        """The picker of ``policy`` (a valid one) over the candidates; None if none."""
        memo = self.choices[policy]
        key = (namespace, service, wanted)
        breakers = self.breakers
        generation = 0 if breakers is None else breakers.generation(namespace, service)
        choice = memo.young.get(key)
        if (
            choice is None
            or choice.snapshot is not entry.snapshot
            or choice.generation != generation
        ):
            choice = self._choice(memo, key, entry.snapshot, policy, generation)
        return choice.picker

    def route(self, entry: Entry, namespace: str, service: str, wanted: MetadataKey) -> Route:
        """The routers' candidates for ``entry``'s snapshot and ``wanted``."""
        key = (namespace, service, wanted)
        found = self.routes.young.get(key)
        if found is None or found.snapshot is not entry.snapshot:
            found = self._route(key, entry.snapshot)
        return found

    def view(
        self, entry: Entry, namespace: str, service: str, wanted: MetadataKey
    ) -> ServiceInstances:
        """The ``get_instances`` answer: the candidates as a snapshot of the entry's
        confirmation; the entry's own ``current`` when nothing was filtered out."""
        routed = self.route(entry, namespace, service, wanted)
        breakers = self.breakers
        generation = 0 if breakers is None else breakers.generation(namespace, service)
        view = routed.view
        if view is not None and view[0] is entry and view[1] == generation:
            return view[2]
        instances = routed.instances
        if breakers is not None:
            instances = breakers.admit(namespace, service, instances)[0]
        current = entry.current
        if instances is current.instances and routed.fallback == current.fallback:
            answer = current
        else:
            answer = dataclasses.replace(current, instances=instances, fallback=routed.fallback)
        routed.view = (entry, generation, answer)
        return answer

    def counter(self, namespace: str, service: str, wanted: MetadataKey) -> Iterator[int]:
        """The round-robin turn of a service and filter, across snapshots."""
        key = (namespace, service, wanted)
        found = self._counters.get(key)
        if found is None:
            # A random first turn: processes started together do not all
            # send their first call to the same instance, and a counter
            # rebuilt after eviction does not restart at the first one.
            fresh = itertools.count(random.getrandbits(32))
            found = self._counters.put(key, fresh, keep=_any)
        return found

    # --------------------------------------------------------------- hook

    def snapshot_replaced(
        self, key: ServiceKey, old: ServiceInstances | None, new: ServiceInstances
    ) -> None:
        """The cache's replace hook: warm what the service used for ``new``."""
        if not self.warm or old is None:
            return
        with self._lock:
            recent = self._recent.get((key.namespace, key.service))
            plan = [(kind, list(wanted)) for kind, wanted in recent.items()] if recent else []
        for kind, filters in plan:
            for wanted in filters:
                memo_key = (key.namespace, key.service, wanted)
                try:
                    if kind == _ROUTE_KIND:
                        self._route(memo_key, new)
                    else:
                        generation = (
                            0
                            if self.breakers is None
                            else self.breakers.generation(key.namespace, key.service)
                        )
                        self._choice(self.choices[kind], memo_key, new, kind, generation)
                except Exception:
                    # It fails again for the caller that needs it, who sees why.
                    continue

    # ------------------------------------------------------------ building

    def _route(self, key: tuple[str, str, MetadataKey], snapshot: ServiceInstances) -> Route:
        found = self.routes.get(key)
        if found is not None and found.snapshot is snapshot:
            return found
        instances, fallback = route(snapshot.instances, key[2])
        self._built(_ROUTE_KIND, key)
        return self.routes.put(
            key, Route(snapshot, instances, fallback), keep=lambda r: r.snapshot is snapshot
        )

    def _choice(
        self,
        memo: Generations[tuple[str, str, MetadataKey], Choice],
        key: tuple[str, str, MetadataKey],
        snapshot: ServiceInstances,
        policy: str,
        generation: int = 0,
    ) -> Choice:
        found = memo.get(key)
        if found is not None and found.snapshot is snapshot and found.generation == generation:
            return found
        routed = self.routes.get(key)
        if routed is None or routed.snapshot is not snapshot:
            routed = self._route(key, snapshot)
        instances = routed.instances
        picker: Picker | None
        if not instances:
            picker = None
        elif self.breakers is None:
            picker = self._picker(policy, key, instances)
        else:
            picker = self._admitted(policy, key, instances, self.breakers)
        self._built(policy, key)
        return memo.put(
            key,
            Choice(snapshot, picker, generation),
            keep=lambda c: c.snapshot is snapshot and c.generation == generation,
        )

    def _picker(
        self, policy: str, key: tuple[str, str, MetadataKey], instances: tuple[Instance, ...]
    ) -> Picker:
        if policy == ROUND_ROBIN:
            return RoundRobinPicker(instances, self.counter(*key))
        return build_picker(policy, instances)

    def _admitted(
        self,
        policy: str,
        key: tuple[str, str, MetadataKey],
        instances: tuple[Instance, ...],
        breakers: CircuitBreakers,
    ) -> Picker:
        """The picker over the candidates the breakers leave."""
        kept, guarded, safe = breakers.admit(key[0], key[1], instances)
        picker = self._picker(policy, key, kept)
        if guarded is None:
            return picker
        fallback = self._picker(policy, key, safe) if safe else None
        return GuardedPicker(picker, fallback, guarded, breakers.clock)

    def _built(self, kind: str, key: tuple[str, str, MetadataKey]) -> None:
        namespace, service, wanted = key
        with self._lock:
            kinds = self._recent.setdefault((namespace, service), {})
            filters = kinds.setdefault(kind, [])
            if wanted in filters:
                filters.remove(wanted)
            filters.append(wanted)
            filtered = [w for w in filters if w]
            if len(filtered) > CARRY_RECENT:
                drop = set(filtered[:-CARRY_RECENT])
                filters[:] = [w for w in filters if w not in drop]
