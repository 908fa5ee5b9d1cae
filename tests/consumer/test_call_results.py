"""update_service_call_result against the embedded server: open instances leave selection."""

from __future__ import annotations

import logging
import threading
from typing import Any

import pytest

from polaris_sdk import (
    CircuitBreakerEvent,
    ConsumerAPI,
    InstanceRegisterRequest,
    SDKContext,
    ServiceCallResult,
    ValidationError,
)
from tests.support import wait_until

HOST = "127.0.0.1"
SERVICE = "callee"
PORTS = (7001, 7002, 7003)


def _register(provider: Any, service: str = SERVICE, ports: tuple[int, ...] = PORTS) -> None:
    for port in ports:
        provider.register(InstanceRegisterRequest(service=service, host=HOST, port=port))


def _picked(consumer: Any, count: int = 60) -> set[int]:
    return {consumer.get_one_instance(service=SERVICE).port for _ in range(count)}


def test_an_unreachable_instance_leaves_selection_at_once(consumer: Any, provider: Any) -> None:
    _register(provider)
    wait_until(lambda: len(consumer.get_instances(service=SERVICE)) == 3)
    consumer.update_service_call_result(
        service=SERVICE, host=HOST, port=7001, ret_status="unreachable"
    )
    assert _picked(consumer) == {7002, 7003}
    assert sorted(i.port for i in consumer.get_instances(service=SERVICE)) == [7002, 7003]
    # get_all_instances is the raw snapshot: unchanged.
    assert len(consumer.get_all_instances(service=SERVICE)) == 3


def test_ten_failures_in_a_row_open_an_instance(consumer: Any, provider: Any) -> None:
    _register(provider)
    wait_until(lambda: len(consumer.get_instances(service=SERVICE)) == 3)
    instance = next(i for i in consumer.get_all_instances(service=SERVICE) if i.port == 7002)
    for _ in range(9):
        consumer.update_service_call_result(ServiceCallResult(instance=instance, ret_code=503))
    assert 7002 in _picked(consumer, 200)
    consumer.update_service_call_result(ServiceCallResult(instance=instance, ret_code=503))
    assert _picked(consumer) == {7001, 7003}


def test_ret_code_minus_one_is_an_error_whatever_the_status(consumer: Any, provider: Any) -> None:
    # Both official SDKs read -1 as an abnormal code under any rule.
    _register(provider)
    wait_until(lambda: len(consumer.get_instances(service=SERVICE)) == 3)
    for _ in range(10):
        consumer.update_service_call_result(
            service=SERVICE, host=HOST, port=7003, ret_status="success", ret_code=-1
        )
    assert _picked(consumer) == {7001, 7002}


def test_successes_keep_every_instance(consumer: Any, provider: Any) -> None:
    _register(provider)
    wait_until(lambda: len(consumer.get_instances(service=SERVICE)) == 3)
    for port in PORTS:
        for _ in range(20):
            consumer.update_service_call_result(
                service=SERVICE, host=HOST, port=port, ret_code=200, delay=0.001, method="/x"
            )
    assert _picked(consumer, 300) == set(PORTS)


def test_all_open_recovers_all(consumer: Any, provider: Any) -> None:
    _register(provider)
    wait_until(lambda: len(consumer.get_instances(service=SERVICE)) == 3)
    for port in PORTS:
        consumer.update_service_call_result(
            service=SERVICE, host=HOST, port=port, ret_status="unreachable"
        )
    assert _picked(consumer, 300) == set(PORTS)
    assert len(consumer.get_instances(service=SERVICE)) == 3


def test_round_robin_and_ring_hash_skip_open_instances(consumer: Any, provider: Any) -> None:
    _register(provider)
    wait_until(lambda: len(consumer.get_instances(service=SERVICE)) == 3)
    consumer.update_service_call_result(
        service=SERVICE, host=HOST, port=7003, ret_status="unreachable"
    )
    turns = {
        consumer.get_one_instance(service=SERVICE, lb_policy="roundRobin").port for _ in range(9)
    }
    assert turns == {7001, 7002}
    keys = {
        consumer.get_one_instance(service=SERVICE, lb_policy="ringHash", hash_key=f"k{i}").port
        for i in range(200)
    }
    assert keys == {7001, 7002}


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"ret_status": "broken"}, "ret_status"),
        ({"ret_status": ["fail"]}, "ret_status"),
        ({"ret_code": "500"}, "ret_code"),
        ({"delay": -1.0}, "delay"),
        ({"delay": float("nan")}, "delay"),
        ({"method": 5}, "method"),
        ({"port": 70000}, "port"),
        ({"port": None}, "port"),
        ({"host": ""}, "host"),
        ({"service": "bad name!"}, "service"),
        ({"instance": "10.0.0.1:80"}, "instance"),
    ],
)
def test_bad_results_are_refused_by_field(
    consumer: Any, fields: dict[str, Any], field: str
) -> None:
    base: dict[str, Any] = {"service": SERVICE, "host": HOST, "port": 7001}
    with pytest.raises(ValidationError) as caught:
        consumer.update_service_call_result(**{**base, **fields})
    assert caught.value.field == field


@pytest.mark.parametrize("transport", ["grpc"], indirect=True)
def test_state_changes_reach_listeners_and_the_log(
    make_context: Any, caplog: pytest.LogCaptureFixture
) -> None:
    ctx: SDKContext = make_context()
    events: list[CircuitBreakerEvent] = []
    lock = threading.Lock()

    def listener(event: CircuitBreakerEvent) -> None:
        with lock:
            events.append(event)

    caplog.set_level(logging.INFO, "polaris_sdk.consumer.circuitbreaker")
    with ConsumerAPI(ctx) as consumer:
        consumer.add_circuit_breaker_listener(listener)
        consumer.update_service_call_result(
            service=SERVICE, host=HOST, port=7001, ret_status="unreachable"
        )
        wait_until(lambda: events)
    event = events[0]
    assert (event.service, event.level, event.resource) == (SERVICE, "instance", "127.0.0.1:7001")
    assert (event.old_state, event.new_state) == ("closed", "open")
    opened = [r for r in caplog.records if "opened" in r.getMessage()]
    assert opened and opened[0].levelno == logging.WARNING


@pytest.mark.parametrize("facade_settings", [{"consumer.circuitBreaker.enable": False}])
def test_switched_off_no_instance_leaves_selection(consumer: Any, provider: Any) -> None:
    _register(provider)
    wait_until(lambda: len(consumer.get_instances(service=SERVICE)) == 3)
    consumer.update_service_call_result(
        service=SERVICE, host=HOST, port=7001, ret_status="unreachable"
    )
    for _ in range(20):
        consumer.update_service_call_result(service=SERVICE, host=HOST, port=7002, ret_code=503)
    assert _picked(consumer, 120) == set(PORTS)
    with pytest.raises(ValidationError, match="ret_status"):
        consumer.update_service_call_result(
            service=SERVICE, host=HOST, port=7001, ret_status="bogus"
        )
