"""RegisterInstance over the wire: ids, defaults, upsert, TTL, validation codes."""

from __future__ import annotations

import hashlib
from typing import Any

import grpc
import pytest
from polarismesh_specification.api.v1.model import code_pb2
from polarismesh_specification.api.v1.service_manage import grpcapi_pb2_grpc, response_pb2

from polaris_sdk.server import PolarisServer
from tests.server.helpers import (
    CALL_TIMEOUT,
    b,
    discover,
    discover_request,
    instance,
    s,
    u,
)

Stub = grpcapi_pb2_grpc.PolarisGRPCStub


def register(stub: Stub, msg: Any) -> response_pb2.Response:
    return stub.RegisterInstance(msg, timeout=CALL_TIMEOUT)


def listed(stub: Stub, service: str = "echo", namespace: str = "default") -> dict[str, Any]:
    answer = discover(stub, discover_request(service, namespace))
    assert answer.code.value == code_pb2.ExecuteSuccess
    return {i.id.value: i for i in answer.instances}


def test_register_answers_success_with_the_sha1_id_and_key_fields(stub: Stub) -> None:
    answer = register(stub, instance("echo", "default", "10.0.0.5", 8080))

    expected_id = hashlib.sha1(b"default##echo##10.0.0.5##8080").hexdigest()
    assert answer.code.value == code_pb2.ExecuteSuccess
    got = answer.instance
    assert got.id.value == expected_id
    assert (got.service.value, got.namespace.value) == ("echo", "default")
    assert (got.host.value, got.port.value) == ("10.0.0.5", 8080)
    assert not got.HasField("health_check")


def test_id_with_vpc_id_includes_it(stub: Stub) -> None:
    answer = register(stub, instance("echo", "default", "10.0.0.5", 8080, vpc_id=s("vpc-1")))

    expected_id = hashlib.sha1(b"default##echo##vpc-1##10.0.0.5##8080").hexdigest()
    assert answer.instance.id.value == expected_id
    assert answer.instance.vpc_id.value == "vpc-1"


def test_a_supplied_id_is_used_as_is(stub: Stub) -> None:
    answer = register(stub, instance(id=s("my-own-id")))

    assert answer.instance.id.value == "my-own-id"
    assert "my-own-id" in listed(stub)


def test_defaults_healthy_not_isolated_weight_100(stub: Stub) -> None:
    iid = register(stub, instance()).instance.id.value

    got = listed(stub)[iid]
    assert got.healthy.value is True
    assert got.isolate.value is False
    assert got.weight.value == 100
    assert got.revision.value


def test_registration_creates_service_and_namespace(stub: Stub) -> None:
    assert discover(stub, discover_request("fresh", "team-a")).code.value == (
        code_pb2.NotFoundResource
    )

    assert register(stub, instance("fresh", "team-a")).code.value == code_pb2.ExecuteSuccess

    assert len(listed(stub, "fresh", "team-a")) == 1


def test_register_again_is_an_upsert_that_keeps_isolate_when_omitted(stub: Stub) -> None:
    first = register(stub, instance(isolate=b(True), weight=u(10), metadata={"v": "1"}))
    again = register(stub, instance(weight=u(20), metadata={"v": "2"}))

    assert again.code.value == code_pb2.ExecuteSuccess
    assert again.instance.id.value == first.instance.id.value
    got = listed(stub)
    assert len(got) == 1
    only = got[first.instance.id.value]
    assert only.isolate.value is True
    assert only.weight.value == 20
    assert dict(only.metadata) == {"v": "2"}


def test_upsert_with_isolate_given_changes_it(stub: Stub) -> None:
    iid = register(stub, instance(isolate=b(True))).instance.id.value
    register(stub, instance(isolate=b(False)))

    assert listed(stub)[iid].isolate.value is False


def test_register_keeps_every_field(stub: Stub) -> None:
    msg = instance(
        protocol=s("http"),
        version=s("1.2.0"),
        priority=u(2),
        weight=u(0),
        healthy=b(False),
        logic_set=s("set-a"),
        metadata={"env": "prod"},
    )
    msg.location.region.value = "r1"
    msg.location.zone.value = "z1"
    msg.location.campus.value = "c1"
    iid = register(stub, msg).instance.id.value

    got = listed(stub)[iid]
    assert (got.protocol.value, got.version.value) == ("http", "1.2.0")
    assert (got.priority.value, got.weight.value) == (2, 0)
    assert got.healthy.value is False
    assert got.logic_set.value == "set-a"
    # Discover adds the labels a real server copies into the metadata.
    assert dict(got.metadata) == {
        "env": "prod",
        "protocol": "http",
        "version": "1.2.0",
        "region": "r1",
        "zone": "z1",
        "campus": "c1",
    }
    assert (got.location.region.value, got.location.zone.value) == ("r1", "z1")
    assert got.location.campus.value == "c1"
    assert not got.service_token.value


@pytest.mark.parametrize(("asked", "kept"), [(1, 1), (60, 60), (0, 5), (61, 5), (3600, 5)])
def test_ttl_outside_0_to_60_becomes_5(stub: Stub, asked: int, kept: int) -> None:
    iid = register(stub, instance(ttl=asked)).instance.id.value

    got = listed(stub)[iid]
    assert got.enable_health_check.value is True
    assert got.health_check.heartbeat.ttl.value == kept


def test_health_check_off_when_enable_health_check_is_false(stub: Stub) -> None:
    iid = register(stub, instance(ttl=5, enable_health_check=b(False))).instance.id.value

    got = listed(stub)[iid]
    assert got.enable_health_check.value is False
    assert not got.HasField("health_check")


def test_health_check_on_without_a_ttl_uses_5(stub: Stub) -> None:
    msg = instance(enable_health_check=b(True))
    msg.health_check.heartbeat.SetInParent()
    iid = register(stub, msg).instance.id.value

    assert listed(stub)[iid].health_check.heartbeat.ttl.value == 5


def test_a_heartbeat_type_without_a_heartbeat_leaves_health_checking_off(stub: Stub) -> None:
    msg = instance(enable_health_check=b(True))
    msg.health_check.type = msg.health_check.HEARTBEAT
    iid = register(stub, msg).instance.id.value

    got = listed(stub)[iid]
    assert got.enable_health_check.value is False
    assert not got.HasField("health_check")


def test_the_host_is_stored_trimmed_under_the_id_of_the_host_as_sent(stub: Stub) -> None:
    answer = register(stub, instance(host=" 10.0.0.9\t"))

    iid = answer.instance.id.value
    assert iid == hashlib.sha1(b"default##echo## 10.0.0.9\t##8080").hexdigest()
    assert answer.instance.host.value == "10.0.0.9"
    assert listed(stub)[iid].host.value == "10.0.0.9"


def _long(n: int) -> str:
    return "a" * n


@pytest.mark.parametrize(
    ("msg", "code"),
    [
        (instance(service=None), code_pb2.InvalidServiceName),
        (instance(service=""), code_pb2.InvalidServiceName),
        (instance(service="bad name!"), code_pb2.InvalidServiceName),
        (instance(service=_long(129)), code_pb2.InvalidServiceName),
        (instance(namespace=None), code_pb2.InvalidNamespaceName),
        (instance(namespace="ns with space"), code_pb2.InvalidNamespaceName),
        (instance(namespace=_long(65)), code_pb2.InvalidNamespaceName),
        (instance(host=None), code_pb2.InvalidInstanceHost),
        (instance(host=_long(129)), code_pb2.InvalidInstanceHost),
        (instance(port=None), code_pb2.InvalidInstancePort),
        (instance(port=65536), code_pb2.InvalidInstancePort),
        (instance(protocol=s(_long(33))), code_pb2.InvalidInstanceProtocol),
        (instance(version=s(_long(33))), code_pb2.InvalidInstanceVersion),
        (instance(logic_set=s(_long(129))), code_pb2.InvalidInstanceLogicSet),
        (instance(weight=u(65536)), code_pb2.InvalidParameter),
        (instance(metadata={f"k{i}": "v" for i in range(65)}), code_pb2.InvalidMetadata),
        (instance(metadata={_long(129): "v"}), code_pb2.InvalidMetadata),
        (instance(metadata={"k": _long(4097)}), code_pb2.InvalidMetadata),
        (instance(service=None, namespace=None, host=None, port=None), code_pb2.InvalidServiceName),
    ],
)
def test_invalid_registrations_get_their_code_and_store_nothing(
    server: PolarisServer, stub: Stub, msg: Any, code: int
) -> None:
    answer = register(stub, msg)

    assert answer.code.value == code
    assert answer.info.value
    assert not server.naming.store.list_services("default")


def test_limits_themselves_are_accepted(stub: Stub) -> None:
    msg = instance(
        service=_long(128),
        namespace=_long(64),
        host=_long(128),
        port=65535,
        protocol=s(_long(32)),
        version=s(_long(32)),
        logic_set=s(_long(128)),
        weight=u(65535),
        metadata={f"{i:0128d}": _long(4096) for i in range(64)},
    )

    assert register(stub, msg).code.value == code_pb2.ExecuteSuccess


def test_unparseable_request_gets_parse_exception_with_status_ok(
    server: PolarisServer, channel: grpc.Channel
) -> None:
    raw = channel.unary_unary(
        "/v1.PolarisGRPC/RegisterInstance",
        request_serializer=None,
        response_deserializer=response_pb2.Response.FromString,
    )

    # Field 2 (service) claims 100 bytes but the message ends: not a valid v1.Instance.
    answer = raw(b"\x12\x64abc", timeout=CALL_TIMEOUT)

    assert answer.code.value == code_pb2.ParseException
    assert server.running


def test_response_error_echo_never_carries_the_service_token(stub: Stub) -> None:
    answer = register(stub, instance(host=None, service_token=s("secret-token")))

    assert answer.code.value == code_pb2.InvalidInstanceHost
    assert not answer.instance.service_token.value
