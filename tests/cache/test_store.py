from __future__ import annotations

import dataclasses
import threading
from collections.abc import Hashable

from polaris_sdk.cache.store import CARRY_RECENT, MAX_COUNTERS, MAX_DERIVED, Entry, Store
from polaris_sdk.model import ServiceInstances, ServiceKey
from tests.consumer.helpers import make_instance, make_snapshot


def count(entry: Entry, key: object) -> int:
    return len(entry.snapshot)


def revision(entry: Entry, key: object) -> str:
    return entry.snapshot.revision


def identity(entry: Entry, key: int) -> int:
    return key


def test_derive_computes_once_per_revision() -> None:
    calls: list[str] = []

    def compute(entry: Entry, key: str) -> int:
        calls.append(entry.revision)
        return len(entry.snapshot)

    entry = Entry(make_snapshot(make_instance(1), make_instance(2)))
    assert entry.derive("n", "k", compute) == 2
    assert entry.derive("n", "k", compute) == 2
    assert calls == ["rev-1"]


def test_kinds_are_separate() -> None:
    entry = Entry(make_snapshot(make_instance(1)))
    assert entry.derive("a", 1, lambda e, k: "from a") == "from a"
    assert entry.derive("b", 1, lambda e, k: "from b") == "from b"
    assert entry.derive("a", 1, lambda e, k: "again") == "from a"


def test_concurrent_derivations_share_one_object() -> None:
    entry = Entry(make_snapshot(make_instance(1)))
    barrier = threading.Barrier(8)
    results: list[object] = []

    def compute(entry: Entry, key: str) -> object:
        return object()

    def worker() -> None:
        barrier.wait()
        results.append(entry.derive("x", "k", compute))

    threads = [threading.Thread(target=worker, name="polaris-test") for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({id(r) for r in results}) == 1


def test_each_kind_is_a_bounded_lru() -> None:
    entry = Entry(make_snapshot(make_instance(1)))
    for n in range(MAX_DERIVED):
        entry.derive("k", n, identity)
    entry.derive("k", 0, lambda e, k: -1)  # a hit: 0 becomes the most recent
    entry.derive("other", "x", lambda e, k: "x")
    for n in range(MAX_DERIVED, MAX_DERIVED + 10):
        assert entry.derive("k", n, identity) == n
    keys = entry.derived_keys("k")
    assert len(keys) == MAX_DERIVED
    # The ten least recently used (1..10) left; 0 stayed because it was used.
    assert 0 in keys and not set(range(1, 11)) & set(keys)
    assert keys[-1] == MAX_DERIVED + 9
    assert entry.derived_keys("other") == ["x"]
    # An evicted value is computed again when asked for.
    assert entry.derive("k", 1, lambda e, k: "rebuilt") == "rebuilt"


def test_lookups_racing_evictions_stay_right() -> None:
    entry = Entry(make_snapshot(make_instance(1)))
    errors: list[BaseException] = []
    barrier = threading.Barrier(4)

    def worker(offset: int) -> None:
        barrier.wait()
        try:
            for n in range(5000):
                key = (n * 7 + offset) % 24  # three times the limit: constant eviction
                assert entry.derive("k", key, identity, limit=8) == key
                assert next(entry.counter(key % 3)) >= 0
        except BaseException as exc:
            errors.append(exc)

    threads = [
        threading.Thread(target=worker, args=(i,), name=f"polaris-test-{i}") for i in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(entry.derived_keys("k")) == 8


def test_a_kind_takes_the_limit_of_its_first_derivation() -> None:
    entry = Entry(make_snapshot(make_instance(1)))
    for n in range(10):
        entry.derive("small", n, identity, limit=3)
    assert entry.derived_keys("small") == [7, 8, 9]


def test_confirmed_refreshes_updated_at_and_keeps_per_revision_values() -> None:
    snapshot = make_snapshot(make_instance(1))
    entry = Entry(snapshot)
    value = entry.derive("k", "key", lambda e, k: object())
    local = entry.derive_local("v", "key", lambda e, k: e.snapshot.updated_at)
    later = entry.confirmed(at=snapshot.updated_at + 5)
    assert later.snapshot.updated_at == snapshot.updated_at + 5
    assert later.snapshot.instances is snapshot.instances
    assert later.derive("k", "key", lambda e, k: object()) is value
    # Per-entry values start afresh: they may depend on updated_at.
    assert local == snapshot.updated_at
    assert later.derive_local("v", "key", lambda e, k: e.snapshot.updated_at) == (
        snapshot.updated_at + 5
    )
    assert entry.derive_local("v", "key", lambda e, k: -1.0) == local


def test_confirmed_clears_from_backup() -> None:
    snapshot = ServiceInstances("default", "echo", "r", (), from_backup=True)
    assert not Entry(snapshot).confirmed().snapshot.from_backup


def test_confirmed_keeps_every_other_field() -> None:
    snapshot = ServiceInstances(
        "default", "echo", "r", (make_instance(1),), {"k": "v"}, 1.0, True, True
    )
    confirmed = Entry(snapshot).confirmed(at=2.0).snapshot
    for f in dataclasses.fields(ServiceInstances):
        if f.name not in ("updated_at", "from_backup"):
            assert getattr(confirmed, f.name) == getattr(snapshot, f.name), f.name


def test_successor_warms_carried_and_recent_values_only() -> None:
    entry = Entry(make_snapshot(make_instance(1), revision="a"))
    entry.derive("count", "all", count, carry=True)
    for n in range(MAX_DERIVED - 1):
        entry.derive("count", n, count)
    entry.derive("revision", "r", revision)
    computed: list[Hashable] = []

    def counting(e: Entry, key: object) -> int:
        computed.append(key)  # type: ignore[arg-type]
        return count(e, key)

    entry.derive("watched", "w", counting, carry=True)
    new = entry.successor(make_snapshot(make_instance(1), make_instance(2), revision="b"))
    # Carried ("all", though least recently used) and the most recent few.
    recent = list(range(MAX_DERIVED - 1 - CARRY_RECENT, MAX_DERIVED - 1))
    assert new.derived_keys("count") == ["all", *recent]
    assert new.derived_keys("revision") == ["r"]
    assert new.derive("count", "all", lambda e, k: -1) == 2
    assert new.derive("revision", "r", lambda e, k: "stale") == "b"
    assert computed == ["w", "w"]
    # Carried values stay carried through the next revision too.
    newer = new.successor(make_snapshot(revision="c"))
    assert "all" in newer.derived_keys("count")
    cold = entry.successor(make_snapshot(revision="d"), warm=False)
    assert cold.derived_keys("count") == []


def test_warming_survives_a_failing_derivation() -> None:
    entry = Entry(make_snapshot(make_instance(1)))

    def fragile(entry: Entry, key: str) -> int:
        if not entry.snapshot.instances:
            raise ValueError("empty")
        return 1

    entry.derive("fragile", "k", fragile, carry=True)
    entry.derive("sturdy", "k", count, carry=True)
    new = entry.successor(make_snapshot(revision="empty"))
    assert new.derived_keys("fragile") == []
    assert new.derived_keys("sturdy") == ["k"]


def test_derivations_can_build_on_each_other() -> None:
    def doubled(entry: Entry, key: str) -> int:
        return 2 * entry.derive("count", key, count)

    entry = Entry(make_snapshot(make_instance(1), revision="a"))
    assert entry.derive("doubled", "k", doubled, carry=True) == 2
    new = entry.successor(make_snapshot(make_instance(1), make_instance(2), revision="b"))
    assert new.derived_keys("doubled") == ["k"] and new.derived_keys("count") == ["k"]
    assert new.derive("doubled", "k", lambda e, k: -1) == 4


def test_counters_outlive_revisions_and_confirmations() -> None:
    entry = Entry(make_snapshot(make_instance(1), revision="a"))
    counter = entry.counter("f")
    first = next(counter)
    assert entry.counter("f") is counter
    assert entry.confirmed().counter("f") is counter
    newer = entry.successor(make_snapshot(revision="b"), warm=False)
    assert newer.counter("f") is counter and next(newer.counter("f")) == first + 1
    assert entry.counter("g") is not counter
    # A new service (an Entry built from nothing) has counters of its own.
    assert Entry(make_snapshot(revision="a")).counter("f") is not counter


def test_counters_are_bounded_and_start_at_random_turns() -> None:
    entry = Entry(make_snapshot(make_instance(1)))
    oldest = entry.counter(0)
    starts = {next(oldest)} | {next(entry.counter(n)) for n in range(1, MAX_COUNTERS + 1)}
    assert len(starts) > MAX_COUNTERS // 2  # not all at 0
    newest = entry.counter(MAX_COUNTERS)
    assert entry.counter(MAX_COUNTERS) is newest
    # The least recently used counter left: asking again makes a new one.
    assert entry.counter(0) is not oldest


def test_store_put_get_delete() -> None:
    store = Store()
    key = ServiceKey("default", "echo")
    assert store.get(key) is None
    entry = Entry(make_snapshot())
    store.put(key, entry)
    assert store.get(key) is entry and store.get_named("default", "echo") is entry
    assert store.get_named("default", "other") is None
    assert store.keys() == [key] and len(store) == 1
    newer = entry.confirmed()
    store.put(key, newer)
    assert store.get(key) is newer and store.get_named("default", "echo") is newer
    store.delete(key)
    assert store.get(key) is None and list(store) == []
    assert store.get_named("default", "echo") is None
