from __future__ import annotations

import dataclasses

import pytest

from polaris_sdk.cache.store import Entry, Store
from polaris_sdk.model import ServiceInstances, ServiceKey
from tests.consumer.helpers import make_instance, make_snapshot

KEY = ServiceKey("default", "echo")


def test_store_replace_get_delete() -> None:
    store = Store()
    assert store.get(KEY) is None
    snapshot = make_snapshot()
    assert store.replace(KEY, snapshot) is None
    entry = store.get(KEY)
    assert entry is not None and entry.snapshot is snapshot and entry.current is snapshot
    assert store.get_named("default", "echo") is entry
    assert store.get_named("default", "other") is None
    assert store.keys() == [KEY] and len(store) == 1
    newer = make_snapshot(revision="rev-2")
    assert store.replace(KEY, newer) is entry
    store.delete(KEY)
    assert store.get(KEY) is None and list(store) == []
    assert store.get_named("default", "echo") is None


def test_a_confirmation_keeps_the_snapshot_object_and_refreshes_the_answer() -> None:
    store = Store()
    snapshot = make_snapshot(make_instance(1))
    store.replace(KEY, snapshot)
    confirmed = store.confirm(KEY, at=snapshot.updated_at + 5)
    assert confirmed is not None and store.get(KEY) is confirmed
    assert store.get_named("default", "echo") is confirmed
    assert confirmed.snapshot is snapshot
    assert confirmed.current.updated_at == confirmed.updated_at == snapshot.updated_at + 5
    assert confirmed.current.instances is snapshot.instances
    assert store.confirm(ServiceKey("default", "other")) is None


def test_confirmed_clears_from_backup() -> None:
    snapshot = ServiceInstances("default", "echo", "r", (), from_backup=True)
    assert not Entry(snapshot).confirmed().current.from_backup


def test_confirmed_keeps_every_other_field() -> None:
    snapshot = ServiceInstances(
        "default", "echo", "r", (make_instance(1),), {"k": "v"}, 1.0, True, True
    )
    confirmed = Entry(snapshot).confirmed(at=2.0).confirmed(at=3.0).current
    assert confirmed.updated_at == 3.0
    for f in dataclasses.fields(ServiceInstances):
        if f.name not in ("updated_at", "from_backup"):
            assert getattr(confirmed, f.name) == getattr(snapshot, f.name), f.name


def test_replace_hooks_run_before_the_new_snapshot_is_visible() -> None:
    store = Store()
    first, second = make_snapshot(revision="a"), make_snapshot(revision="b")
    seen: list[tuple[ServiceKey, str | None, str, str | None]] = []

    def hook(key: ServiceKey, old: ServiceInstances | None, new: ServiceInstances) -> None:
        visible = store.get(key)
        seen.append(
            (
                key,
                old.revision if old is not None else None,
                new.revision,
                visible.revision if visible is not None else None,
            )
        )

    store.add_replace_hook(hook)
    store.add_replace_hook(hook)  # once only
    store.replace(KEY, first)
    store.confirm(KEY)  # a confirmation is not a replacement
    store.replace(KEY, second)
    assert seen == [(KEY, None, "a", None), (KEY, "a", "b", "a")]
    store.remove_replace_hook(hook)
    store.replace(KEY, first)
    assert len(seen) == 2


def test_a_failing_hook_is_logged_and_the_write_happens(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = Store()
    calls: list[str] = []

    def broken(key: ServiceKey, old: ServiceInstances | None, new: ServiceInstances) -> None:
        raise RuntimeError("hook broke")

    store.add_replace_hook(broken)
    store.add_replace_hook(lambda key, old, new: calls.append(new.revision))
    store.replace(KEY, make_snapshot(revision="a"))
    entry = store.get(KEY)
    assert entry is not None and entry.revision == "a" and calls == ["a"]
    assert any(r.exc_info and "hook broke" in str(r.exc_info[1]) for r in caplog.records)


def test_a_writer_can_run_the_hooks_apart_from_the_write() -> None:
    store = Store()
    calls: list[str] = []
    store.add_replace_hook(lambda key, old, new: calls.append(new.revision))
    store.run_replace_hooks(KEY, make_snapshot(revision="a"))
    assert calls == ["a"] and store.get(KEY) is None
    store.replace(KEY, make_snapshot(revision="a"), hooks=False)
    assert calls == ["a"]
