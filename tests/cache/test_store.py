from __future__ import annotations

import threading

from polaris_sdk.cache.store import MAX_DERIVED, Entry, Store
from polaris_sdk.model import ServiceInstances, ServiceKey
from tests.consumer.helpers import make_instance, make_snapshot


def test_derive_computes_once_per_revision() -> None:
    calls: list[str] = []

    def compute(snapshot: ServiceInstances) -> int:
        calls.append(snapshot.revision)
        return len(snapshot)

    entry = Entry(make_snapshot(make_instance(1), make_instance(2)))
    assert entry.derive("n", compute) == 2
    assert entry.derive("n", compute) == 2
    assert calls == ["rev-1"]


def test_concurrent_derivations_share_one_object() -> None:
    entry = Entry(make_snapshot(make_instance(1)))
    barrier = threading.Barrier(8)
    results: list[object] = []

    def compute(snapshot: ServiceInstances) -> object:
        return object()

    def worker() -> None:
        barrier.wait()
        results.append(entry.derive("x", compute))

    threads = [threading.Thread(target=worker, name="polaris-test") for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({id(r) for r in results}) == 1


def test_confirmed_refreshes_updated_at_and_keeps_the_memo() -> None:
    snapshot = make_snapshot(make_instance(1))
    entry = Entry(snapshot)
    value = entry.derive("k", lambda s: object())
    later = entry.confirmed(at=snapshot.updated_at + 5)
    assert later.snapshot.updated_at == snapshot.updated_at + 5
    assert later.snapshot.instances is snapshot.instances
    assert later.derive("k", lambda s: object()) is value


def test_confirmed_clears_from_backup() -> None:
    snapshot = ServiceInstances("default", "echo", "r", (), from_backup=True)
    assert not Entry(snapshot).confirmed().snapshot.from_backup


def test_successor_warms_the_same_derivations_for_the_new_revision() -> None:
    entry = Entry(make_snapshot(make_instance(1), revision="a"))
    entry.derive("count", len)
    entry.derive("revision", lambda s: s.revision)
    new = entry.successor(make_snapshot(make_instance(1), make_instance(2), revision="b"))
    assert sorted(map(str, new.derived_keys())) == ["count", "revision"]
    assert new.derive("count", lambda s: -1) == 2
    assert new.derive("revision", lambda s: "stale") == "b"
    cold = entry.successor(make_snapshot(revision="c"), warm=False)
    assert cold.derived_keys() == []


def test_warming_survives_a_failing_derivation() -> None:
    entry = Entry(make_snapshot(make_instance(1)))

    def fragile(snapshot: ServiceInstances) -> int:
        if not snapshot.instances:
            raise ValueError("empty")
        return 1

    entry.derive("fragile", fragile)
    new = entry.successor(make_snapshot(revision="empty"))
    assert new.derived_keys() == []


def test_memo_is_bounded() -> None:
    entry = Entry(make_snapshot(make_instance(1)))
    for n in range(MAX_DERIVED + 10):
        assert entry.derive(n, lambda s, n=n: n) == n
    assert len(entry.derived_keys()) == MAX_DERIVED


def test_store_put_get_delete() -> None:
    store = Store()
    key = ServiceKey("default", "echo")
    assert store.get(key) is None
    entry = Entry(make_snapshot())
    store.put(key, entry)
    assert store.get(key) is entry
    assert store.keys() == [key] and len(store) == 1
    store.delete(key)
    assert store.get(key) is None and list(store) == []


def test_confirmed_keeps_every_other_field() -> None:
    import dataclasses

    snapshot = ServiceInstances(
        "default", "echo", "r", (make_instance(1),), {"k": "v"}, 1.0, True, True
    )
    confirmed = Entry(snapshot).confirmed(at=2.0).snapshot
    for f in dataclasses.fields(ServiceInstances):
        if f.name not in ("updated_at", "from_backup"):
            assert getattr(confirmed, f.name) == getattr(snapshot, f.name), f.name
