"""The store contract, for every store plugin (memory and SQLite): atomic
read-modify-write, cached views, service revisions."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import pytest

from polaris_sdk.server.store import (
    EMPTY_REVISION,
    InstanceRecord,
    MemoryStore,
    NamespaceRecord,
    ServiceRecord,
    SqliteStore,
    Store,
    service_revision,
)


@pytest.fixture(params=["memory", "sqlite"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    """An empty store of each plugin, with namespace ``default`` and services ``a`` and ``b``."""
    made: Store = MemoryStore() if request.param == "memory" else SqliteStore(tmp_path / "p.db")
    made.add_namespace(NamespaceRecord("default"))
    for name in ("a", "b"):
        made.add_service(ServiceRecord("default", name, id=name, revision="r"))
    yield made
    if isinstance(made, SqliteStore):
        made.close()


def record(iid: str = "i1", service: str = "a", revision: str = "r1") -> InstanceRecord:
    return InstanceRecord(
        id=iid, namespace="default", service=service, host="h", port=1, revision=revision
    )


def test_service_revision_is_sha1_of_sorted_revisions() -> None:
    assert service_revision([]) == EMPTY_REVISION == hashlib.sha1(b"").hexdigest()
    assert service_revision(["b", "a"]) == service_revision(["a", "b"])
    assert service_revision(["a", "b"]) == hashlib.sha1(b"ab").hexdigest()


def test_add_service_needs_its_namespace_and_keeps_the_first(store: Store) -> None:
    with pytest.raises(LookupError):
        store.add_service(ServiceRecord("nowhere", "x", id="x", revision="r"))
    kept = store.add_service(ServiceRecord("default", "a", id="other", revision="r2"))

    assert kept.id == "a"


def test_modify_instance_needs_the_service(store: Store) -> None:
    with pytest.raises(LookupError):
        store.modify_instance("i1", lambda old: record(service="missing"))
    assert store.get_instance("i1") is None


def test_modify_returning_none_changes_nothing(store: Store) -> None:
    store.modify_instance("i1", lambda old: record())

    old, new = store.modify_instance("i1", lambda old: None)

    assert old is new is store.get_instance("i1")


def test_view_is_cached_until_a_change_and_follows_moves(store: Store) -> None:
    store.modify_instance("i1", lambda old: record())
    first = store.service_instances("default", "a")
    assert first is store.service_instances("default", "a")

    store.modify_instance("i1", lambda old: record(service="b", revision="r2"))

    moved_from = store.service_instances("default", "a")
    moved_to = store.service_instances("default", "b")
    assert first is not None and moved_from is not None and moved_to is not None
    assert first.instances == (record(),)
    assert moved_from.instances == () and moved_from.revision == EMPTY_REVISION
    assert [i.id for i in moved_to.instances] == ["i1"]
    assert moved_to.revision == service_revision(["r2"])


def test_concurrent_read_modify_write_loses_no_update(store: Store) -> None:
    store.modify_instance("i1", lambda old: replace(record(), weight=0))

    def bump(_: int) -> None:
        for _ in range(200):
            store.modify_instance(
                "i1", lambda old: replace(old, weight=old.weight + 1) if old else None
            )

    with ThreadPoolExecutor(max_workers=8, thread_name_prefix="polaris-test-store") as pool:
        list(pool.map(bump, range(8)))

    current = store.get_instance("i1")
    assert current is not None and current.weight == 1600


def test_delete_and_clear(store: Store) -> None:
    store.modify_instance("i1", lambda old: record())
    store.modify_instance("i2", lambda old: record("i2", revision="r2"))

    assert store.delete_instance("i1") == record()
    assert store.delete_instance("i1") is None
    assert [i.id for i in store.health_checked_instances()] == []
    store.clear()

    assert store.list_namespaces() == []
    assert store.service_instances("default", "a") is None
    assert store.get_instance("i2") is None
