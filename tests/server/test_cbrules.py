"""Circuit-breaker rules: the admin routes, Discover CIRCUIT_BREAKER, and the SDK using them."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import httpx
import pytest

from polaris_sdk import ConsumerAPI, InstanceRegisterRequest, ProviderAPI, wire
from polaris_sdk.server import PolarisServer
from polaris_sdk.server.cbrules import RULES_PATH
from tests.server import helpers
from tests.server.helpers import discover_request, new_stub
from tests.support import wait_until

RULES = RULES_PATH

DISCOVER = wire.POLARIS_GRPC_METHODS["Discover"]
CB = wire.DISCOVER_REQUEST_TYPE.values_by_name["CIRCUIT_BREAKER"].number


def rule(
    name: str, service: str = "callee", errors: int = 2, level: str = "INSTANCE", **extra: Any
) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": "default",
        "enable": True,
        "level": level,
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
    with PolarisServer(grpc_port=0, http_port=0) as running:
        yield running


@pytest.fixture
def http(server: PolarisServer) -> Any:
    with httpx.Client(base_url=str(server.http_address), timeout=10) as client:
        yield client


@pytest.fixture
def stub(server: PolarisServer) -> Any:
    channel, stub = new_stub(server.grpc_address)
    with channel:
        yield stub


def grpc_discover(stub: Any, service: str, namespace: str = "default", revision: str = "") -> Any:
    return helpers.discover(stub, discover_request(service, namespace, revision, kind=CB))


def answered(response: httpx.Response) -> Any:
    payload = response.json()
    assert response.status_code == payload["code"] // 1000
    if payload["code"] != 200000:
        assert response.headers["X-Polaris-Code"] == str(payload["code"])
    return payload


def test_create_answers_the_rule_with_a_new_id_and_refuses_a_used_name(http: httpx.Client) -> None:
    created = answered(http.post(RULES, json=[{**rule("r1"), "id": "mine", "namespace": ""}]))
    assert created["code"] == 200000 and created["size"] == 1
    data = created["responses"][0]["data"]
    assert data["@type"] == "type.googleapis.com/v1.CircuitBreakerRule"
    assert data["id"] and data["id"] != "mine" and data["name"] == "r1"
    [listed] = answered(http.get(RULES, params={"id": data["id"]}))["data"]
    assert listed["namespace"] == "default" and listed["revision"] and listed["etime"]
    again = answered(http.post(RULES, json=[rule("r1")]))
    assert again["code"] == 400209 and again["responses"][0]["code"] == 400209
    mixed = answered(http.post(RULES, json=[rule("r2"), rule("r1")]))
    assert mixed["code"] == 400000
    assert [r["code"] for r in mixed["responses"]] == [200000, 400209]


def test_writes_are_checked_before_anything_is_written(http: httpx.Client) -> None:
    nameless = answered(http.post(RULES, json=[rule("ok"), {**rule("x"), "name": ""}]))
    assert nameless["code"] == 400162
    assert [r.get("code") for r in nameless["responses"]] == [None, 400162]
    assert answered(http.get(RULES))["amount"] == 0
    assert answered(http.post(RULES, json=[rule("n" * 65)]))["code"] == 400162
    assert answered(http.put(RULES, json=[rule("no-id")]))["code"] == 400160
    assert answered(http.post(RULES + "/delete", json=[{"name": "x"}]))["code"] == 400160
    assert answered(http.put(RULES + "/enable", json=[{"enable": True}]))["code"] == 400160
    assert answered(http.post(RULES, json=[]))["code"] == 400002
    assert answered(http.post(RULES, json=[rule(f"r{i}") for i in range(101)]))["code"] == 400003
    assert answered(http.post(RULES, content=b"not json"))["code"] == 400001
    assert answered(http.post(RULES, json={"name": "x"}))["code"] == 400001
    assert answered(http.get(RULES))["amount"] == 0


def test_update_enable_and_delete_codes(http: httpx.Client) -> None:
    first, second = (
        item["data"]["id"]
        for item in answered(http.post(RULES, json=[rule("a"), rule("b")]))["responses"]
    )
    updated = answered(http.put(RULES, json=[{**rule("a", errors=5), "id": first}]))
    assert updated["code"] == 200000 and updated["responses"][0]["data"]["id"] == first
    [stored] = answered(http.get(RULES, params={"id": first}))["data"]
    assert stored["triggerCondition"][0]["errorCount"] == 5
    assert answered(http.put(RULES, json=[{**rule("b"), "id": first}]))["code"] == 400209
    assert answered(http.put(RULES, json=[{**rule("c"), "id": "nope"}]))["code"] == 400308
    assert answered(http.put(RULES + "/enable", json=[{"id": "nope"}]))["code"] == 400308
    off = answered(http.put(RULES + "/enable", json=[{"id": first, "enable": False}]))
    assert off["code"] == 200000 and off["responses"][0]["data"]["id"] == first
    [stored] = answered(http.get(RULES, params={"id": first}))["data"]
    assert stored["enable"] is False and stored["etime"] == ""
    assert answered(http.post(RULES + "/delete", json=[{"id": second}]))["code"] == 200000
    # Deleting what is not there succeeds, as on a real server.
    gone = answered(http.post(RULES + "/delete", json=[{"id": second}]))
    assert gone["code"] == 200000 and gone["responses"][0]["code"] == 200000
    assert answered(http.get(RULES))["amount"] == 1


def test_query_filters_and_pages_newest_first(http: httpx.Client) -> None:
    bodies = [
        rule("alpha-1"),
        {
            **rule("alpha-2", level="SERVICE"),
            "ruleMatcher": {"source": {"service": "caller"}, "destination": {"service": "other"}},
        },
        {**rule("beta", service="*"), "enable": False, "description": "spare"},
    ]
    ids = [i["data"]["id"] for i in answered(http.post(RULES, json=bodies))["responses"]]
    answered(http.put(RULES + "/enable", json=[{"id": ids[0], "enable": True}]))  # newest now

    def names(**params: Any) -> list[str]:
        return [r["name"] for r in answered(http.get(RULES, params=params))["data"]]

    assert names()[0] == "alpha-1" and len(names()) == 3
    assert sorted(names(name="alpha")) == ["alpha-1", "alpha-2"]
    assert names(enable="false") == ["beta"]
    assert names(level="1") == ["alpha-2"]
    assert sorted(names(level="1,4")) == ["alpha-1", "alpha-2", "beta"]
    assert sorted(names(service="callee")) == ["alpha-1", "beta"]
    assert sorted(names(service="caller")) == ["alpha-1", "alpha-2", "beta"]
    assert names(dstService="oth") == ["alpha-2"]
    assert names(description="spa") == ["beta"]
    assert names(namespace="elsewhere") == []
    page = answered(http.get(RULES, params={"offset": 1, "limit": 1}))
    assert page["amount"] == 3 and page["size"] == 1
    assert [names(offset=i, limit=1)[0] for i in range(3)] == names()
    [brief] = answered(http.get(RULES, params={"id": ids[0], "brief": "true"}))["data"]
    assert brief["ruleMatcher"]["destination"]["service"] == "callee"
    assert brief["triggerCondition"] == []
    for bad in ({"offset": "-1"}, {"limit": "x"}, {"owner": "me"}):
        assert answered(http.get(RULES, params=bad))["code"] == 400103
    assert answered(http.get(RULES, params={"limit": 500}))["size"] == 3


def test_fields_the_real_server_does_not_store_are_dropped(http: httpx.Client) -> None:
    answered(http.post(RULES, json=[{**rule("r"), "priority": 3, "metadata": {"k": "v"}}]))
    [stored] = answered(http.get(RULES))["data"]
    assert stored["priority"] == 0 and stored["metadata"] == {}


def test_discover_matches_destinations_as_the_real_server_caches_them(
    server: PolarisServer, stub: Any
) -> None:
    # No rules: success with no rule message and no revision, as a real server answers.
    empty = grpc_discover(stub, "callee")
    assert empty.code.value == 200000 and not empty.HasField("circuitBreaker")
    assert not empty.service.revision.value
    anywhere = {"service": "*", "namespace": "*"}
    server.put_circuit_breaker_rules(
        rule("one"),
        rule("ns-any", service="*"),
        rule("x", "other"),
        {**rule("all"), "ruleMatcher": {"destination": anywhere}},
        {**rule("blank"), "ruleMatcher": {}},
        {**rule("star-ns"), "ruleMatcher": {"destination": {**anywhere, "service": "callee"}}},
        {**rule("far"), "ruleMatcher": {"destination": {**anywhere, "namespace": "far"}}},
    )
    answer = grpc_discover(stub, "callee")
    assert answer.code.value == 200000
    assert sorted(r.name for r in answer.circuitBreaker.rules) == ["all", "blank", "ns-any", "one"]
    breaker = answer.circuitBreaker
    assert breaker.service.value == "callee" and breaker.service_namespace.value == "default"
    assert not breaker.HasField("name") and not breaker.HasField("namespace")
    assert answer.aliasFor.name.value == "callee"
    revisions = sorted(r.revision for r in breaker.rules)
    expected = hashlib.sha1("".join(revisions).encode()).hexdigest()
    assert breaker.revision.value == answer.service.revision.value == expected
    unchanged = grpc_discover(stub, "callee", revision=expected)
    assert unchanged.code.value == 200001 and not unchanged.HasField("circuitBreaker")
    far = grpc_discover(stub, "callee", namespace="far")
    assert sorted(r.name for r in far.circuitBreaker.rules) == ["all", "blank", "far"]


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
