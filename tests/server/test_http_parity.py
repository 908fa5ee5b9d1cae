"""The HTTP API against gRPC: the same requests give the same codes and answers.

One scenario walks through the rules of protocol.md (validation codes,
upsert, ids, the forgiven heartbeats, Discover revisions and DataNoChange,
SERVICES, ReportClient, idempotent deregistration). It runs over HTTP on
one server and over gRPC (official stubs) on another; every answer must be
the same message, up to revisions and times, and every HTTP status must be
the code // 1000 with the X-Polaris-* headers.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from google.protobuf import json_format
from polarismesh_specification.api.v1.service_manage import (
    client_pb2,
    grpcapi_pb2_grpc,
    request_pb2,
    service_pb2,
)

from polaris_sdk.server import PolarisServer
from tests.server.helpers import CALL_TIMEOUT, discover, new_stub
from tests.server.httputil import (
    code_of,
    grpc_answer_as_json,
    http_client,
    normalized,
    post,
)

State = dict[str, Any]
Body = dict[str, Any] | Callable[[State], dict[str, Any]]

ECHO = {"namespace": "default", "service": "echo", "host": "10.0.0.1", "port": 8080}
SIDE = {"namespace": "default", "service": "echo", "host": "10.0.0.2", "port": 8080}
GHOST = {"namespace": "default", "service": "echo", "host": "10.9.9.9", "port": 1}


@dataclass(frozen=True)
class Step:
    method: str
    body: Body
    code: int
    remember: Callable[[State, Any], None] | None = None


def _keep_revision(state: State, answer: Any) -> None:
    state["revision"] = answer["service"]["revision"]


def _with(base: dict[str, Any], **changes: Any) -> dict[str, Any]:
    return {**base, **changes}


def _discover(service: str, namespace: str | None = "default", kind: str = "INSTANCE") -> Any:
    svc: dict[str, Any] = {"name": service}
    if namespace is not None:
        svc["namespace"] = namespace
    return {"type": kind, "service": svc}


EMPTY_SHA1 = hashlib.sha1(b"").hexdigest()

SCENARIO = [
    Step("RegisterInstance", {}, 400120),
    Step("RegisterInstance", _with(ECHO, service=""), 400120),
    Step("RegisterInstance", _with(ECHO, namespace="bad namespace"), 400110),
    Step("RegisterInstance", _with(ECHO, service="s" * 129), 400120),
    Step("RegisterInstance", _with(ECHO, namespace="n" * 65), 400110),
    Step("RegisterInstance", _with(ECHO, host=""), 400131),
    Step("RegisterInstance", {k: v for k, v in ECHO.items() if k != "port"}, 400132),
    Step("RegisterInstance", _with(ECHO, port=70000), 400132),
    Step("RegisterInstance", _with(ECHO, protocol="p" * 33), 400136),
    Step("RegisterInstance", _with(ECHO, version="v" * 33), 400137),
    Step("RegisterInstance", _with(ECHO, logic_set="l" * 129), 400138),
    Step("RegisterInstance", _with(ECHO, weight=70000), 400103),
    Step("RegisterInstance", _with(ECHO, metadata={f"k{i}": "v" for i in range(65)}), 400150),
    Step("RegisterInstance", _with(ECHO, metadata={"k": "v" * 4097}), 400150),
    Step(
        "RegisterInstance",
        _with(
            ECHO,
            protocol="http",
            version="1.0.0",
            weight=50,
            metadata={"env": "prod"},
            health_check={"type": "HEARTBEAT", "heartbeat": {"ttl": 5}},
            location={"region": "r", "zone": "z", "campus": "c"},
        ),
        200000,
    ),
    Step("RegisterInstance", _with(ECHO, protocol="grpc"), 200000),  # upsert
    Step("RegisterInstance", _with(SIDE, id="my-own-id", isolate=True, vpc_id="vpc-1"), 200000),
    Step("Heartbeat", ECHO, 200000),
    Step("Heartbeat", {"id": "my-own-id"}, 200000),
    Step("Heartbeat", {"id": ""}, 400130),
    Step("Heartbeat", {}, 400120),
    *[Step("Heartbeat", GHOST, 200000) for _ in range(4)],
    Step("Heartbeat", GHOST, 400202),
    Step("Discover", _discover(""), 400120),
    Step("Discover", _discover("nobody"), 400202),
    Step("Discover", _discover("echo", namespace=None), 200000, _keep_revision),
    Step(
        "Discover",
        lambda st: {"type": "INSTANCE", "service": {"name": "echo", "revision": st["revision"]}},
        200001,
    ),
    Step("Discover", _discover("", kind="SERVICES"), 200000),
    Step("Discover", _discover("", "nowhere", kind="SERVICES"), 200000),
    Step("Discover", {"type": "SERVICES"}, 400002),
    Step("Discover", _discover("echo", kind="ROUTING"), 200000),
    Step(
        "Discover",
        {"type": "ROUTING", "service": {**_discover("echo")["service"], "revision": EMPTY_SHA1}},
        200001,
    ),
    Step("Discover", {"type": 99, "service": {"name": "echo"}}, 400004),
    Step("Discover", _discover("echo", kind="LANE"), 400004),
    Step("Discover", {"type": "INSTANCE"}, 400002),
    Step("DeregisterInstance", {}, 400120),
    Step("RegisterInstance", _with(ECHO, id="my-own-id", service="other"), 401001),  # a move
    Step("ReportClient", {"host": "10.1.1.1", "location": {"region": "r"}}, 200000),
    Step("ReportClient", {"host": "10.1.1.1", "id": "client-1", "version": "1.0"}, 200000),
    Step("DeregisterInstance", GHOST, 200000),
    Step("DeregisterInstance", {"id": ""}, 400130),
    Step("DeregisterInstance", {"id": "my-own-id"}, 200000),
    Step("Discover", _discover("echo"), 200000),
    Step("DeregisterInstance", ECHO, 200000),
    Step("Discover", _discover("echo"), 200000),
]

_GRPC_REQUESTS = {
    "RegisterInstance": service_pb2.Instance,
    "DeregisterInstance": service_pb2.Instance,
    "Heartbeat": service_pb2.Instance,
    "ReportClient": client_pb2.Client,
    "Discover": request_pb2.DiscoverRequest,
}


def _over_grpc(stub: grpcapi_pb2_grpc.PolarisGRPCStub, method: str, body: dict[str, Any]) -> Any:
    request = json_format.ParseDict(body, _GRPC_REQUESTS[method]())
    if method == "Discover":
        answer = discover(stub, request)
    else:
        answer = getattr(stub, method)(request, timeout=CALL_TIMEOUT)
    return grpc_answer_as_json(answer)


@pytest.fixture
def other_server(no_thread_leak: None) -> Iterator[PolarisServer]:
    with PolarisServer(health_check_interval=0.1) as running:
        yield running


def test_every_rule_answers_the_same_over_http_and_grpc(
    server: PolarisServer, other_server: PolarisServer
) -> None:
    http_state: State = {}
    grpc_state: State = {}
    channel, stub = new_stub(other_server.grpc_address)
    with channel, http_client(server.http_address) as client:
        for number, step in enumerate(SCENARIO):
            http_body = step.body(http_state) if callable(step.body) else step.body
            grpc_body = step.body(grpc_state) if callable(step.body) else step.body
            response = post(client, step.method, http_body)
            over_http = response.json()
            over_grpc = _over_grpc(stub, step.method, grpc_body)
            where = f"step {number}: {step.method} {http_body}"[:200]
            assert code_of(response) == step.code, where
            assert normalized(over_http) == normalized(over_grpc), where
            if step.remember is not None:
                step.remember(http_state, over_http)
                step.remember(grpc_state, over_grpc)


def test_only_healthy_instance_filters_on_health_alone_over_http(server: PolarisServer) -> None:
    with http_client(server.http_address) as client:
        for body in (ECHO, _with(SIDE, isolate=True), _with(GHOST, healthy=False)):
            assert code_of(post(client, "RegisterInstance", body)) == 200000
        everything = post(client, "Discover", _discover("echo")).json()
        healthy = post(
            client, "Discover", {**_discover("echo"), "Filter": {"OnlyHealthyInstance": True}}
        ).json()

    assert {i["host"] for i in everything["instances"]} == {"10.0.0.1", "10.0.0.2", "10.9.9.9"}
    # The healthy isolated instance stays in, as from a real server.
    assert sorted(i["host"] for i in healthy["instances"]) == ["10.0.0.1", "10.0.0.2"]
    assert healthy["service"]["revision"] == everything["service"]["revision"]


def test_heartbeat_with_health_check_off_is_400140_over_http(no_thread_leak: None) -> None:
    with PolarisServer(health_check=False) as off, http_client(off.http_address) as client:
        assert code_of(post(client, "RegisterInstance", ECHO)) == 200000
        assert code_of(post(client, "Heartbeat", ECHO)) == 400140


def test_http_and_grpc_share_one_naming_service(server: PolarisServer) -> None:
    channel, stub = new_stub(server.grpc_address)
    with channel, http_client(server.http_address) as client:
        assert code_of(post(client, "RegisterInstance", ECHO)) == 200000
        over_grpc = grpc_answer_as_json(
            discover(stub, json_format.ParseDict(_discover("echo"), request_pb2.DiscoverRequest()))
        )
        over_http = post(client, "Discover", _discover("echo")).json()
    assert [i["host"] for i in over_grpc["instances"]] == ["10.0.0.1"]
    assert over_http == over_grpc


def test_a_failing_naming_call_is_500000_and_the_server_goes_on(
    server: PolarisServer, mocker: Any
) -> None:
    # The one fault no request can cause for real: a bug inside the naming service.
    mocker.patch.object(server.naming, "report_client", side_effect=RuntimeError("bug"))
    with http_client(server.http_address) as client:
        response = post(client, "ReportClient", {"host": "10.1.1.1"})
        assert response.status_code == 500
        assert code_of(response) == 500000
        assert code_of(post(client, "RegisterInstance", ECHO)) == 200000


def test_http_answers_use_json_names_defaults_nulls_and_enum_names(server: PolarisServer) -> None:
    with http_client(server.http_address) as client:
        post(client, "RegisterInstance", _with(SIDE, vpc_id="vpc-1", enable_health_check=True))
        answer = post(client, "Discover", _discover("echo")).json()
        register = post(client, "RegisterInstance", ECHO).json()

    assert answer["type"] == "INSTANCE"  # enum by name
    instance = answer["instances"][0]
    assert instance["port"] == 8080  # wrapper as a bare value
    assert instance["vpc_id"] == "vpc-1"  # explicit json_name kept
    assert instance["enableHealthCheck"] is False  # lowerCamel JSON name
    assert instance["healthCheck"] is None  # unset message: null, as jsonpb EmitDefaults
    assert answer["routing"] is None
    assert answer["services"] == [] and answer["namespaces"] == []  # defaults emitted
    assert register["instance"]["id"] and register["instance"]["service_token"] is None
