"""ServiceCache over a scripted lister and the real scheduler (no server needed)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from polaris_sdk.cache import CacheOptions, ConnectionState, DiskBackup, ServiceCache
from polaris_sdk.errors import (
    ClosedError,
    NetworkError,
    PolarisTimeoutError,
    ResourceNotFoundError,
)
from polaris_sdk.model import ServiceChangeEvent, ServiceInstances, ServiceKey
from polaris_sdk.scheduler import Scheduler
from tests.cache.fakes import FakeLister
from tests.consumer.helpers import make_instance, make_snapshot
from tests.support import wait_until

pytestmark = pytest.mark.usefixtures("no_thread_leak")

KEY = ServiceKey("default", "echo")
MakeCache = Callable[..., ServiceCache]
FAST = CacheOptions(refresh_interval=0.05, refresh_jitter=0.0, backoff_max=0.1)


@pytest.fixture
def scheduler() -> Iterator[Scheduler]:
    s = Scheduler(2)
    yield s
    s.close()


@pytest.fixture
def make_cache(scheduler: Scheduler) -> Iterator[MakeCache]:
    caches: list[ServiceCache] = []

    def make(lister: FakeLister, options: CacheOptions = FAST) -> ServiceCache:
        cache = ServiceCache(lister, scheduler, options)
        caches.append(cache)
        return cache

    yield make
    for cache in caches:
        cache.close()


def test_concurrent_first_requests_share_one_listing(make_cache: MakeCache) -> None:
    lister = FakeLister()
    release = threading.Event()

    def slow_list(key: ServiceKey, revision: str) -> ServiceInstances:
        release.wait(5)
        return make_snapshot(make_instance(1), revision="r1")

    lister.script(KEY, slow_list, None)
    cache = make_cache(lister, CacheOptions(refresh_interval=60))
    results: list[ServiceInstances] = []
    threads = [
        threading.Thread(target=lambda: results.append(cache.snapshot(KEY, 5)), name="polaris-t")
        for _ in range(6)
    ]
    for t in threads:
        t.start()
    wait_until(lambda: len(lister.calls) == 1)
    release.set()
    for t in threads:
        t.join(5)
    assert len(results) == 6 and {r.revision for r in results} == {"r1"}
    assert lister.calls == [(KEY, "")]


def test_a_waiter_times_out_while_the_first_listing_hangs(make_cache: MakeCache) -> None:
    lister = FakeLister()
    release = threading.Event()

    def hang(key: ServiceKey, revision: str) -> ServiceInstances:
        release.wait(5)
        return make_snapshot(revision="r1")

    lister.script(KEY, hang)
    cache = make_cache(lister, CacheOptions(refresh_interval=60))
    owner = threading.Thread(target=lambda: cache.snapshot(KEY), name="polaris-owner")
    owner.start()
    wait_until(lambda: lister.calls)
    with pytest.raises(PolarisTimeoutError):
        cache.snapshot(KEY, timeout=0.05)
    release.set()
    owner.join(5)


def test_failed_first_listing_raises_and_caches_nothing(make_cache: MakeCache) -> None:
    lister = FakeLister()
    lister.script(KEY, NetworkError("down"), make_snapshot(revision="r1"))
    cache = make_cache(lister, FAST)
    with pytest.raises(NetworkError):
        cache.snapshot(KEY)
    assert cache.cached() == []
    assert cache.snapshot(KEY).revision == "r1"  # the next request lists again


def test_cold_start_from_backup_then_recovery(make_cache: MakeCache, tmp_path: Path) -> None:
    saved = make_snapshot(make_instance(1), make_instance(2), revision="old")
    DiskBackup(tmp_path).save(saved)
    lister = FakeLister()
    fresh = make_snapshot(make_instance(2), make_instance(3), revision="new")
    down = NetworkError("connection refused")
    lister.script(KEY, down, down, down, fresh)
    options = CacheOptions(
        refresh_interval=0.05, refresh_jitter=0.0, backoff_max=0.1, persist_dir=str(tmp_path)
    )
    cache = make_cache(lister, options)
    first = cache.snapshot(KEY)
    assert first.from_backup and first.revision == "old" and len(first) == 2
    assert cache.state(KEY) is ConnectionState.SUSPENDED
    events: list[ServiceChangeEvent] = []
    cache.watch(KEY, events.append)
    wait_until(lambda: not cache.snapshot(KEY).from_backup, timeout=5)
    assert cache.snapshot(KEY).revision == "new"
    wait_until(lambda: cache.state(KEY) is ConnectionState.CONNECTED)
    wait_until(lambda: len(events) == 2)
    assert events[0].instances.from_backup
    assert [i.port for i in events[1].added] == [3]
    assert [i.port for i in events[1].deleted] == [1]

    def backup_revision() -> str | None:
        loaded = DiskBackup(tmp_path).load(KEY)
        return loaded.revision if loaded is not None else None

    # The backup follows; it is written after the listeners are told, so wait.
    wait_until(lambda: backup_revision() == "new")


def test_watching_an_unknown_service_reports_it_when_it_appears(make_cache: MakeCache) -> None:
    lister = FakeLister()
    missing = ResourceNotFoundError(400202, "not found")
    lister.script(KEY, missing, missing, make_snapshot(make_instance(1), revision="r1"))
    cache = make_cache(lister, FAST)
    events: list[ServiceChangeEvent] = []
    snapshot = cache.watch(KEY, events.append)
    assert len(snapshot) == 0 and snapshot.revision == ""
    wait_until(lambda: len(events) == 2)
    assert events[0].added == () and [i.port for i in events[1].added] == [1]


def test_state_listeners_hear_each_change(make_cache: MakeCache) -> None:
    lister = FakeLister()
    snap = make_snapshot(make_instance(1), revision="r1")
    down = NetworkError("down")
    lister.script(KEY, snap, down, down, down, snap)
    cache = make_cache(lister, FAST)
    heard: list[tuple[ServiceKey, ConnectionState]] = []
    cache.add_state_listener(lambda k, s: heard.append((k, s)))
    cache.snapshot(KEY)
    wait_until(lambda: len(heard) == 2, timeout=5)
    assert heard == [(KEY, ConnectionState.SUSPENDED), (KEY, ConnectionState.CONNECTED)]
    assert cache.state() is ConnectionState.CONNECTED


def test_close_stops_refreshing_and_refuses_requests(
    make_cache: MakeCache, scheduler: Scheduler
) -> None:
    lister = FakeLister()
    lister.script(KEY, make_snapshot(revision="r1"), None)
    cache = make_cache(lister, FAST)
    cache.snapshot(KEY)
    wait_until(lambda: len(lister.calls) >= 3)
    cache.close()
    cache.close()  # idempotent
    calls = len(lister.calls)
    # Whatever was in flight at close may finish; nothing new starts after it.
    wait_until(lambda: scheduler.pending == 0)
    assert len(lister.calls) <= calls + 1
    with pytest.raises(ClosedError):
        cache.snapshot(KEY)
