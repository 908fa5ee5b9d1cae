"""The warm path of get_one_instance gives what the full path gives, and nothing stale."""

from __future__ import annotations

from typing import Any

import pytest

from polaris_sdk import ClosedError, ConsumerAPI, GetOneInstanceRequest, SDKContext, wire
from polaris_sdk.connector.mock import MockTransport
from tests.support import FakeClock, wait_until


class Service:
    """A Discover answer that the test replaces; 200001 while its revision holds."""

    def __init__(self) -> None:
        self.ports: list[tuple[int, str]] = []
        self.revision = "r0"

    def set(self, revision: str, *ports: tuple[int, str]) -> None:
        self.ports, self.revision = list(ports), revision

    def handler(self, method: str, request: Any) -> Any:
        assert method == "Discover"
        resp = wire.DiscoverResponse()
        resp.service.name.value = "echo"
        resp.service.namespace.value = "default"
        resp.service.revision.value = self.revision
        if request.service.revision.value == self.revision:
            resp.code.value = 200001
            return resp
        resp.code.value = 200000
        for port, zone in self.ports:
            inst = resp.instances.add()
            inst.id.value = f"i-{port}"
            inst.host.value = "127.0.0.1"
            inst.port.value = port
            inst.metadata["zone"] = zone
        return resp


@pytest.fixture
def service() -> Service:
    svc = Service()
    svc.set("r1", (1, "a"))
    return svc


def test_a_replaced_snapshot_is_picked_from_at_once(service: Service) -> None:
    transport = MockTransport(service.handler)
    with SDKContext.create(transport=transport, refresh_interval=0.05) as ctx:
        consumer = ConsumerAPI(ctx)
        request = GetOneInstanceRequest(service="echo")
        assert consumer.get_one_instance(service="echo").port == 1
        assert consumer.get_one_instance(request).port == 1
        service.set("r2", (2, "a"))
        wait_until(lambda: consumer.get_all_instances(service="echo").revision == "r2")
        assert consumer.get_one_instance(service="echo").port == 2
        assert consumer.get_one_instance(request).port == 2
        assert consumer.get_one_instance(service="echo", lb_policy="roundRobin").port == 2


def test_filters_hash_keys_and_filled_in_metadata_are_never_taken_as_warm(
    service: Service,
) -> None:
    service.set("r1", (1, "a"), (2, "b"))
    transport = MockTransport(service.handler)
    with SDKContext.create(transport=transport, refresh_interval=3600) as ctx:
        consumer = ConsumerAPI(ctx)
        for _ in range(3):
            assert consumer.get_one_instance(service="echo").port in (1, 2)
        for _ in range(20):
            assert consumer.get_one_instance(service="echo", metadata={"zone": "b"}).port == 2
        wanted: dict[str, str] = {}
        request = GetOneInstanceRequest(service="echo", metadata=wanted)
        consumer.get_one_instance(request)
        wanted["zone"] = "a"  # a mutable filter filled in after the first call
        assert all(consumer.get_one_instance(request).port == 1 for _ in range(20))
        with pytest.raises(TypeError):
            consumer.get_one_instance(GetOneInstanceRequest(service="echo"), service="echo")
        with pytest.raises(TypeError):
            consumer.get_one_instance(service="echo", nonsense=1)


def test_warm_calls_raise_closed_error_once_the_context_or_facade_is_closed(
    service: Service,
) -> None:
    ctx = SDKContext.create(transport=MockTransport(service.handler), refresh_interval=3600)
    first, second = ConsumerAPI(ctx), ConsumerAPI(ctx)
    request = GetOneInstanceRequest(service="echo")
    for consumer in (first, second):
        consumer.get_one_instance(service="echo")
        consumer.get_one_instance(request)
    first.close()
    with pytest.raises(ClosedError):
        first.get_one_instance(service="echo")
    assert second.get_one_instance(request).port == 1
    ctx.close()
    for call in (
        lambda: second.get_one_instance(service="echo"),
        lambda: second.get_one_instance(request),
    ):
        with pytest.raises(ClosedError):
            call()


def test_warm_calls_see_a_breaker_open_and_its_sleep_window_end(service: Service) -> None:
    service.set("r1", (1, "a"), (2, "a"))
    clock = FakeClock()
    with SDKContext.create(transport=MockTransport(service.handler), refresh_interval=3600) as ctx:
        consumer = ConsumerAPI(ctx)
        consumer._breakers.clock = clock  # the breakers' time, injected
        request = GetOneInstanceRequest(service="echo")

        def picked() -> set[int]:
            by_keywords = {consumer.get_one_instance(service="echo").port for _ in range(100)}
            return by_keywords | {consumer.get_one_instance(request).port for _ in range(100)}

        # Remembered while the service has no breaker at all.
        assert picked() == {1, 2}
        consumer.update_service_call_result(
            service="echo", host="127.0.0.1", port=2, ret_status="unreachable"
        )
        assert picked() == {1}
        clock.advance(29.9)
        assert picked() == {1}
        clock.advance(0.1)  # the 30 s sleep window is over: a few probes go to 2
        assert 2 in picked()
