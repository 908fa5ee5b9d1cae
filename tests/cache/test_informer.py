from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from polaris_sdk.cache.informer import Informer, diff, initial_event
from polaris_sdk.cache.persist import DiskBackup
from polaris_sdk.cache.store import Store
from polaris_sdk.dispatch import Dispatcher
from polaris_sdk.model import ServiceChangeEvent, ServiceKey
from tests.consumer.helpers import make_instance, make_snapshot
from tests.support import wait_until

KEY = ServiceKey("default", "echo")


def test_diff_reports_added_updated_and_deleted_by_id() -> None:
    a, b, c = make_instance(1), make_instance(2), make_instance(3)
    b2 = make_instance(2, metadata={"env": "gray"}, revision="r2")
    d = make_instance(4)
    event = diff(make_snapshot(a, b, c, revision="1"), make_snapshot(a, b2, d, revision="2"))
    assert event is not None
    assert event.added == (d,)
    assert event.updated == ((b, b2),)
    assert event.deleted == (c,)
    assert event.revision == "2" and event.instances.revision == "2"
    assert event.service_key == KEY


def test_diff_is_none_when_no_instance_changed() -> None:
    a = make_instance(1)
    assert diff(make_snapshot(a, revision="1"), make_snapshot(a, revision="2")) is None
    assert diff(make_snapshot(revision="1"), make_snapshot(revision="2")) is None


def test_diff_from_nothing_adds_everything() -> None:
    snap = make_snapshot(make_instance(1), make_instance(2))
    event = diff(None, snap)
    assert event is not None and event.added == snap.instances


def test_health_change_is_an_update() -> None:
    up, down = make_instance(1), make_instance(1, healthy=False, revision="r2")
    event = diff(make_snapshot(up), make_snapshot(down, revision="rev-2"))
    assert event is not None and event.updated == ((up, down),)


def test_initial_event_adds_the_whole_snapshot() -> None:
    snap = make_snapshot(make_instance(1))
    event = initial_event(snap)
    assert event.added == snap.instances and not event.updated and not event.deleted


@pytest.fixture
def dispatcher() -> Iterator[Dispatcher]:
    d = Dispatcher("polaris-listener", max_workers=2)
    yield d
    d.close()


@pytest.mark.usefixtures("no_thread_leak")
def test_listener_gets_the_snapshot_then_each_change_in_order(dispatcher: Dispatcher) -> None:
    store = Store()
    informer = Informer(KEY, store, dispatcher)
    a, b = make_instance(1), make_instance(2)
    informer.replace(make_snapshot(a, revision="1"))
    events: list[ServiceChangeEvent] = []
    assert informer.add_listener(events.append)
    assert not informer.add_listener(events.append)  # once per listener
    informer.replace(make_snapshot(a, b, revision="2"))
    informer.replace(make_snapshot(b, revision="3"))
    wait_until(lambda: len(events) == 3)
    assert [e.revision for e in events] == ["1", "2", "3"]
    assert events[0].added == (a,)
    assert events[1].added == (b,)
    assert events[2].deleted == (a,)
    assert informer.remove_listener(events.append)
    informer.replace(make_snapshot(revision="4"))
    assert not informer.remove_listener(events.append)
    assert len(events) == 3


@pytest.mark.usefixtures("no_thread_leak")
def test_confirm_keeps_instances_and_refreshes_updated_at(dispatcher: Dispatcher) -> None:
    store = Store()
    informer = Informer(KEY, store, dispatcher)
    snap = make_snapshot(make_instance(1))
    informer.replace(snap)
    informer.confirm(snap.updated_at + 30)
    current = informer.current()
    assert current is not None
    assert current.instances is snap.instances and current.updated_at == snap.updated_at + 30


@pytest.mark.usefixtures("no_thread_leak")
def test_server_snapshots_are_backed_up(dispatcher: Dispatcher, tmp_path: Path) -> None:
    backup = DiskBackup(tmp_path)
    informer = Informer(KEY, Store(), dispatcher, backup=backup)
    informer.replace(make_snapshot(make_instance(1), revision="7"))
    saved = backup.load(KEY)
    assert saved is not None and saved.revision == "7"
    backup.path_for(KEY).unlink()
    restored = Informer(KEY, Store(), dispatcher, backup=backup)
    restored.replace(saved)
    assert not backup.path_for(KEY).exists()  # a backup is not written back
