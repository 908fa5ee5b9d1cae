"""The selector's memos, pure: entries built in code, no cache, no server."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from pytest_mock import MockerFixture

from polaris_sdk.cache.store import Entry, Store
from polaris_sdk.consumer import selection
from polaris_sdk.consumer.routers import MetadataKey
from polaris_sdk.consumer.selection import CARRY_RECENT, Generations, Selector
from polaris_sdk.model import ServiceKey
from tests.consumer.helpers import make_instance, make_snapshot

KEY = ServiceKey("default", "echo")
PROD: MetadataKey = (("env", "prod"),)


def entry_of(*ports: int, revision: str = "r1", env: str = "prod") -> Entry:
    return Entry(
        make_snapshot(*(make_instance(p, metadata={"env": env}) for p in ports), revision=revision)
    )


def pick(
    selector: Selector, entry: Entry, policy: str = "weightedRandom", wanted: MetadataKey = ()
) -> Any:
    return selector.picker(entry, "default", "echo", policy, wanted)


def test_pickers_and_routes_are_built_once_per_snapshot(mocker: MockerFixture) -> None:
    selector = Selector()
    route = mocker.spy(selection, "route")
    entry = entry_of(1, 2)
    first = pick(selector, entry)
    assert pick(selector, entry) is first
    assert pick(selector, entry, "roundRobin") is not None
    assert selector.view(entry, "default", "echo", ()) is entry.current
    assert route.call_count == 1
    assert pick(selector, entry, wanted=PROD) is not first
    assert route.call_count == 2


def test_a_confirmation_keeps_pickers_and_refreshes_filtered_views() -> None:
    selector = Selector()
    entry = entry_of(1, 2)
    picker = pick(selector, entry, wanted=PROD)
    view = selector.view(entry, "default", "echo", (("env", "other"),))
    assert view.fallback and len(view) == 2
    later = entry.confirmed(at=entry.updated_at + 5)
    assert pick(selector, later, wanted=PROD) is picker
    again = selector.view(later, "default", "echo", (("env", "other"),))
    assert again.updated_at == later.updated_at and again.instances == view.instances
    assert selector.view(later, "default", "echo", (("env", "other"),)) is again


def test_a_new_snapshot_gets_new_pickers() -> None:
    selector = Selector()
    old = pick(selector, entry_of(1))
    newer = entry_of(1, 2, revision="r2")
    assert pick(selector, newer) is not old
    assert {pick(selector, newer).pick().port for _ in range(200)} == {1, 2}


def test_no_candidates_is_none() -> None:
    assert pick(Selector(), Entry(make_snapshot())) is None


def test_round_robin_turns_outlive_snapshots_and_evictions(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(selection, "MAX_CHOICES", 2)
    selector = Selector()
    counter = selector.counter("default", "echo", ())
    assert selector.counter("default", "echo", ()) is counter
    assert selector.counter("default", "echo", PROD) is not counter
    entry = entry_of(1, 2, 3)
    ports = [pick(selector, entry, "roundRobin").pick().port]
    for n in range(2, 7):
        # A new snapshot every call, and other filters pushing the picker out.
        pick(selector, entry_of(1, 2, 3, revision=f"r{n}"), "roundRobin", (("env", str(n)),))
        entry = entry_of(1, 2, 3, revision=f"r{n}")
        ports.append(pick(selector, entry, "roundRobin").pick().port)
    assert sorted(ports) == [1, 1, 2, 2, 3, 3]
    assert ports[:3] == ports[3:]


def test_counters_start_at_random_turns() -> None:
    selector = Selector()
    starts = {next(selector.counter("default", f"s{n}", ())) for n in range(50)}
    assert len(starts) > 25


def test_concurrent_builds_share_one_picker() -> None:
    selector = Selector()
    entry = entry_of(*range(1, 50))
    barrier = threading.Barrier(8)
    results: list[object] = []

    def worker() -> None:
        barrier.wait()
        results.append(pick(selector, entry, "ringHash"))

    threads = [threading.Thread(target=worker, name="polaris-test") for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({id(r) for r in results}) == 1


def test_generations_stay_bounded_and_keep_what_is_in_use() -> None:
    memo: Generations[int, str] = Generations(4)
    for n in range(100):
        memo.put(n, str(n))
        assert memo.get(0) == "0"  # kept while it is used
        assert len(memo) <= 8
    assert memo.get(0) == "0"
    assert memo.get(1) is None  # unused: dropped
    assert memo.put(99, "other", keep=lambda found: True) == "99"
    assert memo.put(99, "other") == "other"


def test_lookups_racing_evictions_stay_right() -> None:
    memo: Generations[int, int] = Generations(8)
    errors: list[BaseException] = []
    barrier = threading.Barrier(4)

    def worker(offset: int) -> None:
        barrier.wait()
        try:
            for n in range(5000):
                key = (n * 7 + offset) % 24  # three times the limit: constant eviction
                found = memo.get(key)
                if found is None:
                    found = memo.put(key, key, keep=lambda v: True)
                assert found == key
        except BaseException as exc:
            errors.append(exc)

    threads = [
        threading.Thread(target=worker, args=(i,), name=f"polaris-test-{i}") for i in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and len(memo) <= 16


def warmed_selector() -> tuple[Selector, Store]:
    store = Store()
    selector = Selector()
    store.add_replace_hook(selector.snapshot_replaced)
    return selector, store


def test_a_change_warms_unfiltered_and_recent_filters(mocker: MockerFixture) -> None:
    selector, store = warmed_selector()
    store.replace(KEY, entry_of(1, 2).snapshot)
    entry = store.get(KEY)
    assert entry is not None
    pick(selector, entry)
    pick(selector, entry, "ringHash")
    filters = [(("env", f"e{n}"),) for n in range(CARRY_RECENT + 2)]
    for wanted in filters:
        pick(selector, entry, wanted=wanted)
    store.replace(KEY, entry_of(1, 2, 3, revision="r2").snapshot)
    new = store.get(KEY)
    assert new is not None
    route = mocker.spy(selection, "route")
    build = mocker.spy(selection, "build_picker")
    pick(selector, new)
    pick(selector, new, "ringHash")
    for wanted in filters[-CARRY_RECENT:]:
        pick(selector, new, wanted=wanted)
    assert route.call_count == 0 and build.call_count == 0
    pick(selector, new, wanted=filters[0])  # not among the most recent: built now
    assert route.call_count == 1 and build.call_count == 1


def test_without_warming_a_change_builds_nothing(mocker: MockerFixture) -> None:
    selector, store = warmed_selector()
    selector.warm = False
    store.replace(KEY, entry_of(1).snapshot)
    entry = store.get(KEY)
    assert entry is not None
    pick(selector, entry)
    route = mocker.spy(selection, "route")
    store.replace(KEY, entry_of(1, 2, revision="r2").snapshot)
    assert route.call_count == 0


def test_a_failing_warm_build_is_skipped(mocker: MockerFixture) -> None:
    selector, store = warmed_selector()
    store.replace(KEY, entry_of(1).snapshot)
    entry = store.get(KEY)
    assert entry is not None
    pick(selector, entry, "ringHash")
    mocker.patch.object(selection, "build_picker", side_effect=RuntimeError("broken"))
    store.replace(KEY, entry_of(1, 2, revision="r2").snapshot)  # does not raise
    new = store.get(KEY)
    assert new is not None and new.revision == "r2"
    with pytest.raises(RuntimeError, match="broken"):
        pick(selector, new, "ringHash")
