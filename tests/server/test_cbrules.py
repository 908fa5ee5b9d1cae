"""Circuit-breaker rules: the admin routes, Discover CIRCUIT_BREAKER, and the SDK using them."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import httpx
import pytest

from polaris_sdk import ConsumerAPI, InstanceRegisterRequest, ProviderAPI, wire
from polaris_sdk.server import PolarisServer
from polaris_sdk.server.cbrules import RULES_PATH
from tests.support import wait_until

RULES = RULES_PATH

DISCOVER = wire.POLARIS_GRPC_METHODS["Discover"]
CB = wire.DISCOVER_REQUEST_TYPE.values_by_name["CIRCUIT_BREAKER"].number


def rule(name: str, service: str = "callee", errors: int = 2, **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": "default",
        "enable": True,
        "level": "INSTANCE",
        "ruleMatcher": {
            "source": {"service": "*", "namespace": "*"},
            "destination": {"service": service, "namespace": "default"},
        },
        "errorConditions": [
            {"inputType": "RET_CODE", "condition": {"type": "RANGE", "value": "500~599"}}
        ],
        "triggerCondition": [{"triggerType": "CONSECUTIVE_ERROR", "errorCount": errors}],
        "recoverCondition": {"sleepWindow": 60, "consecutiveSuccess": 3},
        **extra,
    }


def call(server: PolarisServer, method: str, path: str, body: Any = None, query: str = "") -> Any:
    raw = b"" if body is None else json.dumps(body).encode()
    answer = server.admin(method, path, query, {"Content-Type": "application/json"}, raw)
    assert answer is not None
    status, _, payload = answer
    decoded = json.loads(payload)
    assert status == decoded["code"] // 1000
    return decoded


def discover(server: PolarisServer, service: str, revision: str = "") -> Any:
    request = wire.DiscoverRequest(type=CB)
    request.service.name.value = service
    request.service.namespace.value = "default"
    request.service.revision.value = revision
    return server.naming.discover(request)


@pytest.fixture
def server(no_thread_leak: None) -> Any:
    with PolarisServer(grpc_port=0) as running:
        yield running


def test_create_query_update_enable_delete(server: PolarisServer) -> None:
    created = call(server, "POST", RULES_PATH, [rule("r1"), rule("r2", service="*")])
    assert created["code"] == 200000 and created["size"] == 2
    ids = [item["data"]["id"] for item in created["responses"]]
    again = call(server, "POST", RULES_PATH, [rule("r1")])
    assert again["responses"][0]["code"] == 400201
    listed = call(server, "GET", RULES_PATH, query="name=r1")
    assert listed["amount"] == 1 and listed["data"][0]["name"] == "r1"
    assert call(server, "GET", RULES_PATH)["amount"] == 2
    updated = call(server, "PUT", RULES_PATH, [{**rule("r1", errors=5), "id": ids[0]}])
    assert updated["code"] == 200000
    trigger = call(server, "GET", RULES_PATH, query=f"id={ids[0]}")["data"][0]
    assert trigger["triggerCondition"][0]["errorCount"] == 5
    assert (
        call(server, "PUT", RULES_PATH + "/enable", [{"id": ids[0], "enable": False}])["code"]
        == 200000
    )
    assert call(server, "GET", RULES_PATH, query=f"id={ids[0]}")["data"][0].get("enable") is None
    assert call(server, "POST", RULES_PATH + "/delete", [{"id": ids[1]}])["code"] == 200000
    missing = call(server, "POST", RULES_PATH + "/delete", [{"id": ids[1]}])
    assert missing["responses"][0]["code"] == 400202
    assert call(server, "POST", RULES_PATH, "not a list")["code"] == 400001
    assert call(server, "POST", RULES_PATH, [])["code"] == 400002
    assert server.admin("GET", "/naming/v1/elsewhere") is None


def test_discover_matches_destination_with_wildcards_and_answers_200001(
    server: PolarisServer,
) -> None:
    # No rules: success with no rule message and no revision, as a real server answers.
    empty = discover(server, "callee")
    assert empty.code.value == 200000 and not empty.HasField("circuitBreaker")
    assert not empty.service.revision.value
    server.put_circuit_breaker_rules(rule("one"), rule("any", service="*"), rule("x", "other"))
    answer = discover(server, "callee", empty.service.revision.value)
    assert answer.code.value == 200000
    assert sorted(r.name for r in answer.circuitBreaker.rules) == ["any", "one"]
    revision = answer.circuitBreaker.revision.value
    assert discover(server, "callee", revision).code.value == 200001
    assert sorted(r.name for r in discover(server, "other").circuitBreaker.rules) == ["any", "x"]


def test_rules_survive_a_restart_with_a_data_dir(tmp_path: Path, no_thread_leak: None) -> None:
    with PolarisServer(grpc_port=0, data_dir=tmp_path) as first:
        first.put_circuit_breaker_rules(rule("kept"))
    with PolarisServer(grpc_port=0, data_dir=tmp_path) as second:
        assert [r.name for r in discover(second, "callee").circuitBreaker.rules] == ["kept"]


def test_rules_from_the_server_change_the_breaker_within_one_refresh(
    server: PolarisServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "polaris_sdk.consumer.circuitbreaker")
    [rule_id] = server.put_circuit_breaker_rules(rule("two-errors", errors=2))
    settings = {"addresses": [server.grpc_address], "refresh_interval": 0.2}
    with ProviderAPI.create(**settings) as provider, ConsumerAPI.create(**settings) as consumer:
        for port in (7001, 7002, 7003):
            provider.register(
                InstanceRegisterRequest(service="callee", host="127.0.0.1", port=port)
            )
        wait_until(lambda: len(consumer.get_instances(service="callee")) == 3)

        def applied(count: int) -> bool:
            return len([r for r in caplog.records if "rules of" in r.getMessage()]) >= count

        def fail(port: int) -> None:
            consumer.update_service_call_result(
                service="callee", host="127.0.0.1", port=port, ret_code=503
            )

        fail(7003)  # the first report starts the rule refresh for the service
        wait_until(lambda: applied(1), 5)
        fail(7001)
        fail(7001)
        ports = {consumer.get_one_instance(service="callee").port for _ in range(60)}
        assert ports == {7002, 7003}

        call(server, "PUT", RULES_PATH + "/enable", [{"id": rule_id, "enable": False}])
        wait_until(lambda: applied(2), 5)
        for _ in range(5):
            fail(7002)  # the default rule needs 10 in a row
        ports = {consumer.get_one_instance(service="callee").port for _ in range(120)}
        assert ports == {7002, 7003}


def test_the_rule_routes_are_served_over_http_and_authorised(no_thread_leak: None) -> None:
    with (
        PolarisServer(
            grpc_port=0, http_port=0, tokens={"admin": None, "team": ["team"]}
        ) as running,
        httpx.Client(base_url=str(running.http_address), timeout=10) as client,
    ):
        refused = client.post(RULES, json=[rule("r1")], headers={"X-Polaris-Token": "team"})
        assert refused.status_code == 401 and refused.json()["code"] == 401001
        anonymous = client.post(RULES, json=[rule("r1")])
        assert anonymous.status_code == 401
        created = client.post(RULES, json=[rule("r1")], headers={"X-Polaris-Token": "admin"})
        assert created.status_code == 200, created.text
        listed = client.get(RULES, params={"name": "r1"}).json()
        assert [r["name"] for r in listed["data"]] == ["r1"]
        assert discover(running, "callee").circuitBreaker.rules[0].name == "r1"
