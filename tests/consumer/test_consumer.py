"""ConsumerAPI against the embedded server, over real sockets."""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from pytest_mock import MockerFixture

from polaris_sdk import (
    ClosedError,
    ConnectionState,
    ConsumerAPI,
    GetAllInstancesRequest,
    GetInstancesRequest,
    GetOneInstanceRequest,
    InstanceNotFoundError,
    NetworkError,
    ProviderAPI,
    SDKContext,
    ServiceChangeEvent,
    ServiceKey,
    ValidationError,
    WatchServiceRequest,
)
from polaris_sdk.server import PolarisServer
from tests.consumer.conftest import REFRESH
from tests.frontends import held_listener
from tests.support import wait_until

HOST = "127.0.0.1"
MARGIN = 2.0
"""Allowed on top of one refresh interval for a change to reach a listener."""


class Events:
    """A listener that records events; thread-safe."""

    def __init__(self) -> None:
        self.events: list[ServiceChangeEvent] = []
        self.lock = threading.Lock()

    def __call__(self, event: ServiceChangeEvent) -> None:
        with self.lock:
            self.events.append(event)

    def wait_for(self, count: int, timeout: float = REFRESH + MARGIN) -> ServiceChangeEvent:
        wait_until(lambda: len(self.events) >= count, timeout, message=f"{self.events}")
        assert len(self.events) == count, self.events
        return self.events[count - 1]


def ports(instances: object) -> list[int]:
    return sorted(i.port for i in instances)  # type: ignore[attr-defined]


# ------------------------------------------------------------------ reads


def test_first_call_lists_once_and_later_calls_stay_local(
    make_context: Callable[..., SDKContext], provider: ProviderAPI, mocker: MockerFixture
) -> None:
    provider.register(service="echo", host=HOST, port=8001)
    ctx = make_context(refresh_interval=60)  # no background refresh during the test
    spy = mocker.spy(ctx.connector, "begin_discover")  # every Discover of the cache
    consumer = ConsumerAPI(ctx)
    assert ports(consumer.get_all_instances(service="echo")) == [8001]
    assert spy.call_count == 1
    for _ in range(1000):
        consumer.get_one_instance(service="echo")
        consumer.get_instances(service="echo")
        consumer.get_all_instances(GetAllInstancesRequest(service="echo"))
    assert spy.call_count == 1


def test_request_objects_and_keywords_are_the_same(
    consumer: ConsumerAPI, provider: ProviderAPI
) -> None:
    provider.register(service="echo", host=HOST, port=8001)
    by_object = consumer.get_instances(GetInstancesRequest(namespace="default", service="echo"))
    by_keywords = consumer.get_instances(namespace="default", service="echo")
    assert by_object.instances == by_keywords.instances
    one = consumer.get_one_instance(GetOneInstanceRequest(service="echo"))
    assert one.port == 8001
    with pytest.raises(TypeError):
        consumer.get_instances(GetInstancesRequest(service="echo"), service="echo")
    with pytest.raises(TypeError):
        consumer.get_instances(servce="echo")


def test_filters_and_fallback(consumer: ConsumerAPI, provider: ProviderAPI) -> None:
    provider.register(service="echo", host=HOST, port=1, metadata={"env": "prod"})
    provider.register(service="echo", host=HOST, port=2, metadata={"env": "test"})
    provider.register(service="echo", host=HOST, port=3, isolate=True)
    provider.register(service="echo", host=HOST, port=4, weight=0)
    everything = consumer.get_all_instances(service="echo")
    assert ports(everything) == [1, 2, 3, 4]
    healthy = consumer.get_instances(service="echo")
    assert ports(healthy) == [1, 2] and not healthy.fallback
    prod = consumer.get_instances(service="echo", metadata={"env": "prod"})
    assert ports(prod) == [1] and not prod.fallback
    none_match = consumer.get_instances(service="echo", metadata={"env": "gray"})
    assert ports(none_match) == [1, 2, 3, 4] and none_match.fallback
    assert none_match.revision == everything.revision
    for _ in range(50):
        assert consumer.get_one_instance(service="echo", metadata={"env": "prod"}).port == 1


def test_no_instance_and_bad_requests(consumer: ConsumerAPI, provider: ProviderAPI) -> None:
    unknown = consumer.get_all_instances(service="nobody")
    assert len(unknown) == 0
    with pytest.raises(InstanceNotFoundError, match="not known"):
        consumer.get_one_instance(service="nobody")
    provider.register(service="echo", host=HOST, port=1)
    with pytest.raises(ValidationError) as err:
        consumer.get_one_instance(service="echo", lb_policy="leastConn")
    assert err.value.field == "lb_policy"
    with pytest.raises(ValidationError) as err:
        consumer.get_one_instance(service="echo", lb_policy="ringHash")
    assert err.value.field == "hash_key"
    with pytest.raises(ValidationError) as err:
        consumer.get_one_instance(service="echo", lb_policy="ringHash", hash_key=42)
    assert err.value.field == "hash_key"
    with pytest.raises(ValidationError) as err:
        consumer.get_instances(service="echo", metadata={"k": 1})
    assert err.value.field == "metadata"
    with pytest.raises(ValidationError) as err:
        consumer.get_all_instances(service="bad name!")
    assert err.value.field == "service"
    with pytest.raises(ValidationError) as err:
        consumer.get_all_instances(namespace="n" * 65, service="echo")
    assert err.value.field == "namespace"


def test_weighted_random_respects_weights(consumer: ConsumerAPI, provider: ProviderAPI) -> None:
    weights = {1: 100, 2: 200, 3: 700}
    for port, weight in weights.items():
        provider.register(service="echo", host=HOST, port=port, weight=weight)
    draws = 20_000
    counts = collections.Counter(
        consumer.get_one_instance(service="echo").port for _ in range(draws)
    )
    for port, weight in weights.items():
        # The standard deviation of each share is below 0.0033 at 20,000 draws.
        assert abs(counts[port] / draws - weight / 1000) < 0.02, counts


def test_round_robin_takes_turns(consumer: ConsumerAPI, provider: ProviderAPI) -> None:
    for port in (1, 2, 3):
        provider.register(service="echo", host=HOST, port=port)
    picks = [
        consumer.get_one_instance(service="echo", lb_policy="roundRobin").port for _ in range(9)
    ]
    assert collections.Counter(picks) == {1: 3, 2: 3, 3: 3}
    assert picks[:3] == picks[3:6] == picks[6:]


def test_ring_hash_is_stable_and_moves_only_the_leaving_instances_keys(
    consumer: ConsumerAPI, provider: ProviderAPI
) -> None:
    for port in range(1, 6):
        provider.register(service="echo", host=HOST, port=port)
    keys = [f"user-{n}" for n in range(1000)]

    def mapping() -> dict[str, int]:
        return {
            k: consumer.get_one_instance(service="echo", lb_policy="ringHash", hash_key=k).port
            for k in keys
        }

    before = mapping()
    assert mapping() == before
    assert set(before.values()) == {1, 2, 3, 4, 5}
    provider.deregister(service="echo", host=HOST, port=3)
    wait_until(lambda: 3 not in ports(consumer.get_all_instances(service="echo")), REFRESH + MARGIN)
    after = mapping()
    moved = [k for k in keys if after[k] != before[k]]
    assert moved and all(before[k] == 3 for k in moved)
    assert len(moved) == sum(1 for k in keys if before[k] == 3)


# ----------------------------------------------------------------- events


def test_registration_reaches_cache_and_listener_within_one_refresh(
    consumer: ConsumerAPI, provider: ProviderAPI
) -> None:
    listener = Events()
    initial = consumer.watch_service(service="echo", listeners=[listener])
    assert len(initial) == 0
    listener.wait_for(1)
    provider.register(service="echo", host=HOST, port=8001)
    event = listener.wait_for(2)
    assert ports(event.added) == [8001]
    assert ports(consumer.get_all_instances(service="echo")) == [8001]


def test_exact_events_for_register_metadata_change_and_deregister(
    consumer: ConsumerAPI, provider: ProviderAPI
) -> None:
    provider.register(service="echo", host=HOST, port=1, metadata={"v": "1"})
    listener = Events()
    consumer.watch_service(WatchServiceRequest(service="echo", listeners=[listener]))
    first = listener.wait_for(1)
    assert ports(first.added) == [1] and first.updated == () and first.deleted == ()

    provider.register(service="echo", host=HOST, port=2)
    added = listener.wait_for(2)
    assert ports(added.added) == [2] and added.updated == () and added.deleted == ()
    assert ports(added.instances) == [1, 2]

    provider.register(service="echo", host=HOST, port=1, metadata={"v": "2"})
    changed = listener.wait_for(3)
    assert changed.added == () and changed.deleted == ()
    ((old, new),) = changed.updated
    assert old.port == new.port == 1
    assert dict(old.metadata) == {"v": "1"} and dict(new.metadata) == {"v": "2"}

    provider.deregister(service="echo", host=HOST, port=2)
    removed = listener.wait_for(4)
    assert ports(removed.deleted) == [2] and removed.added == () and removed.updated == ()
    assert ports(removed.instances) == [1]
    assert removed.revision == consumer.get_all_instances(service="echo").revision


def test_health_change_is_an_update_event(consumer: ConsumerAPI, provider: ProviderAPI) -> None:
    # TTL 1 and no heartbeats: the server marks it unhealthy after 3 s.
    provider.register(service="echo", host=HOST, port=1, ttl=1)
    provider.register(service="echo", host=HOST, port=2)
    listener = Events()
    consumer.watch_service(service="echo", listeners=[listener])
    listener.wait_for(1)
    event = listener.wait_for(2, timeout=3 + 3 + MARGIN)
    ((old, new),) = event.updated
    assert old.port == 1 and old.healthy and not new.healthy
    assert event.added == () and event.deleted == ()
    assert ports(consumer.get_instances(service="echo")) == [2]


def test_a_raising_and_a_slow_listener_do_not_disturb_the_others(
    consumer: ConsumerAPI, provider: ProviderAPI, caplog: pytest.LogCaptureFixture
) -> None:
    release = threading.Event()
    slow_events: list[ServiceChangeEvent] = []
    slow = held_listener(consumer, release, slow_events)

    raised: list[ServiceChangeEvent] = []

    def raising(event: ServiceChangeEvent) -> None:
        raised.append(event)
        raise RuntimeError("listener bug")

    normal = Events()
    try:
        with caplog.at_level(logging.ERROR, logger="polaris_sdk.dispatch"):
            consumer.watch_service(service="echo", listeners=[slow, raising, normal])
            normal.wait_for(1)
            for port in (1, 2):
                provider.register(service="echo", host=HOST, port=port)
                assert ports(normal.wait_for(port + 1).instances) == list(range(1, port + 1))
            wait_until(lambda: len(raised) == 3)

            def logged() -> list[logging.LogRecord]:
                return [
                    r
                    for r in caplog.records
                    if r.name == "polaris_sdk.dispatch" and "raising raised" in r.getMessage()
                ]

            # Each failure is logged just after the listener raised it.
            wait_until(lambda: len(logged()) >= 3)
        assert len(logged()) == 3
        assert slow_events == []  # still blocked in its first event
        assert ports(consumer.get_all_instances(service="echo")) == [1, 2]
    finally:
        release.set()
    wait_until(lambda: len(slow_events) == 3)
    assert [len(e.instances) for e in slow_events] == [0, 1, 2]


def test_unwatch_stops_events(consumer: ConsumerAPI, provider: ProviderAPI) -> None:
    listener, other = Events(), Events()
    consumer.watch_service(service="echo", listeners=[listener, other])
    listener.wait_for(1)
    consumer.unwatch_service(service="echo", listeners=[listener])
    provider.register(service="echo", host=HOST, port=1)
    other.wait_for(2)
    assert len(listener.events) == 1


# --------------------------------------------------------- server failures


# A call just after the restart waits for the channel's reconnect backoff (up to
# 2.4 s after a long outage): the calls of this test get the time for it.
@pytest.mark.parametrize("facade_settings", [{"global.api.timeout": "10s"}])
def test_server_down_keeps_the_last_snapshot_and_recovers(
    server: PolarisServer, consumer: ConsumerAPI, provider: ProviderAPI
) -> None:
    provider.register(service="echo", host=HOST, port=1)
    listener = Events()
    states: list[tuple[ServiceKey, ConnectionState]] = []
    consumer.add_state_listener(lambda key, state: states.append((key, state)))
    consumer.watch_service(service="echo", listeners=[listener])
    listener.wait_for(1)
    before = consumer.get_all_instances(service="echo")

    server.stop()
    wait_until(lambda: consumer.state is not ConnectionState.CONNECTED, timeout=10)
    during = consumer.get_all_instances(service="echo")
    assert during.instances == before.instances and during.revision == before.revision
    assert consumer.get_one_instance(service="echo").port == 1

    server.start()  # same port, data kept
    provider.register(service="echo", host=HOST, port=2)
    event = listener.wait_for(2, timeout=15)
    assert ports(event.added) == [2]
    wait_until(lambda: consumer.state is ConnectionState.CONNECTED)
    key = ServiceKey("default", "echo")
    wait_until(lambda: states and states[-1] == (key, ConnectionState.CONNECTED))
    assert states[0] == (key, ConnectionState.SUSPENDED)


def test_push_empty_protection_keeps_instances_when_the_server_loses_its_data(
    server: PolarisServer,
    consumer: ConsumerAPI,
    provider: ProviderAPI,
    caplog: pytest.LogCaptureFixture,
) -> None:
    provider.register(service="echo", host=HOST, port=1)
    listener = Events()
    consumer.watch_service(service="echo", listeners=[listener])
    listener.wait_for(1)
    with caplog.at_level(logging.WARNING, logger="polaris_sdk.cache.reflector"):
        server.clear()  # the server now answers "no such service"
        wait_until(
            lambda: any("push-empty protection" in r.getMessage() for r in caplog.records),
            REFRESH + MARGIN,
        )
    assert ports(consumer.get_all_instances(service="echo")) == [1]
    assert consumer.get_one_instance(service="echo").port == 1
    assert len(listener.events) == 1  # no deletion was reported
    provider.register(service="echo", host=HOST, port=2)
    event = listener.wait_for(2)
    assert ports(event.instances) == [2] and ports(event.deleted) == [1]


def test_without_push_empty_protection_an_emptied_service_is_reported(
    server: PolarisServer, make_context: Callable[..., SDKContext], provider: ProviderAPI
) -> None:
    provider.register(service="echo", host=HOST, port=1)
    ctx = make_context(**{"consumer.localCache.pushEmptyProtection": False})
    consumer = ConsumerAPI(ctx)
    listener = Events()
    consumer.watch_service(service="echo", listeners=[listener])
    listener.wait_for(1)
    provider.deregister(service="echo", host=HOST, port=1)
    event = listener.wait_for(2)
    assert ports(event.deleted) == [1] and len(event.instances) == 0
    with pytest.raises(InstanceNotFoundError):
        consumer.get_one_instance(service="echo")


def test_a_dropped_discover_stream_is_healed(
    server: PolarisServer, transport: str, consumer: ConsumerAPI, provider: ProviderAPI
) -> None:
    listener = Events()
    consumer.watch_service(service="echo", listeners=[listener])
    listener.wait_for(1)
    dropped = server.drop_discover_streams()
    # gRPC consumers share one Discover stream; HTTP ones poll and hold none to drop.
    assert dropped >= 1 if transport == "grpc" else dropped == 0
    provider.register(service="echo", host=HOST, port=1)
    event = listener.wait_for(2, timeout=10)
    assert ports(event.added) == [1]
    wait_until(lambda: consumer.state is ConnectionState.CONNECTED, timeout=10)


def test_cold_start_from_the_disk_backup_while_the_server_is_down(
    server: PolarisServer,
    make_context: Callable[..., SDKContext],
    provider: ProviderAPI,
    tmp_path: Path,
) -> None:
    for port in (1, 2):
        provider.register(service="echo", host=HOST, port=port)
    first = ConsumerAPI(make_context(persist_dir=str(tmp_path)))
    assert ports(first.get_all_instances(service="echo")) == [1, 2]
    first.context.close()
    assert list(tmp_path.glob("*.json"))

    server.stop()
    stopped_at = time.time()
    cold = ConsumerAPI(make_context(persist_dir=str(tmp_path)))
    snapshot = cold.get_all_instances(service="echo")
    assert snapshot.from_backup and ports(snapshot) == [1, 2]
    # The answer says how old it is: at least as old as the outage.
    assert snapshot.updated_at <= stopped_at
    assert snapshot.age >= time.time() - stopped_at - 0.01
    assert cold.get_one_instance(service="echo").port in (1, 2)
    assert cold.service_state(service="echo") is not ConnectionState.CONNECTED
    # Without a backup, the same cold start is an error, not an empty answer.
    with pytest.raises(NetworkError):
        cold.get_all_instances(service="other")

    server.start()
    wait_until(lambda: not cold.get_all_instances(service="echo").from_backup, timeout=15)
    wait_until(lambda: cold.service_state(service="echo") is ConnectionState.CONNECTED)


# ---------------------------------------------------------------- closing


def test_create_owns_its_context_and_close_is_idempotent(sdk_settings: dict[str, Any]) -> None:
    consumer = ConsumerAPI.create(refresh_interval=REFRESH, **sdk_settings)
    with consumer:
        consumer.watch_service(service="echo", listeners=[Events()])
        assert len(consumer.get_all_instances(service="echo")) == 0
    assert consumer.closed and consumer.context.closed
    consumer.close()
    with pytest.raises(ClosedError):
        consumer.get_all_instances(service="echo")


def test_closing_a_shared_facade_leaves_the_context_working(
    ctx: SDKContext, provider: ProviderAPI
) -> None:
    first, second = ConsumerAPI(ctx), ConsumerAPI(ctx)
    gone, kept = Events(), Events()
    first.watch_service(service="echo", listeners=[gone])
    second.watch_service(service="echo", listeners=[kept])
    gone.wait_for(1)
    first.close()
    with pytest.raises(ClosedError):
        first.get_all_instances(service="echo")
    provider.register(service="echo", host=HOST, port=1)
    kept.wait_for(2)
    assert len(gone.events) == 1
    assert not ctx.closed
