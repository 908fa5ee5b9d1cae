"""DeregisterInstance and Heartbeat over the wire."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest
from polarismesh_specification.api.v1.model import code_pb2
from polarismesh_specification.api.v1.service_manage import grpcapi_pb2_grpc, service_pb2

from polaris_sdk.server import PolarisServer
from polaris_sdk.server.naming import FORGIVEN_HEARTBEATS
from tests.server.helpers import (
    CALL_TIMEOUT,
    discover,
    discover_request,
    instance,
    new_stub,
    s,
    u,
)

Stub = grpcapi_pb2_grpc.PolarisGRPCStub


def codes(call: Any, msg: Any, times: int) -> list[int]:
    return [call(msg, timeout=CALL_TIMEOUT).code.value for _ in range(times)]


def count(stub: Stub, service: str = "echo") -> int:
    return len(discover(stub, discover_request(service)).instances)


# ------------------------------------------------------------------ deregister


def test_deregister_by_the_four_fields(stub: Stub) -> None:
    stub.RegisterInstance(instance(), timeout=CALL_TIMEOUT)

    answer = stub.DeregisterInstance(instance(), timeout=CALL_TIMEOUT)

    assert answer.code.value == code_pb2.ExecuteSuccess
    assert count(stub) == 0


def test_deregister_by_id(stub: Stub) -> None:
    iid = stub.RegisterInstance(instance(), timeout=CALL_TIMEOUT).instance.id.value

    answer = stub.DeregisterInstance(
        instance(None, None, None, None, id=s(iid)), timeout=CALL_TIMEOUT
    )

    assert answer.code.value == code_pb2.ExecuteSuccess
    assert answer.instance.id.value == iid
    assert count(stub) == 0


def test_deregister_unknown_instance_is_idempotent(stub: Stub) -> None:
    assert codes(stub.DeregisterInstance, instance(host="10.9.9.9"), 2) == [200000, 200000]


def test_deregister_keeps_the_service_with_the_empty_revision(stub: Stub) -> None:
    stub.RegisterInstance(instance(), timeout=CALL_TIMEOUT)
    stub.DeregisterInstance(instance(), timeout=CALL_TIMEOUT)

    answer = discover(stub, discover_request())

    assert answer.code.value == code_pb2.ExecuteSuccess
    assert answer.service.revision.value == "da39a3ee5e6b4b0d3255bfef95601890afd80709"


@pytest.mark.parametrize(
    ("msg", "code"),
    [
        (instance(id=s("")), code_pb2.InvalidInstanceID),
        (instance(service=None), code_pb2.InvalidServiceName),
        (instance(namespace=None), code_pb2.InvalidNamespaceName),
        (instance(host=None), code_pb2.InvalidInstanceHost),
        (instance(port=None), code_pb2.InvalidInstancePort),
        # An empty Instance is not nil to a real server: the service is missing.
        (instance(None, None, None, None), code_pb2.InvalidServiceName),
        (instance(None, None, host=None), code_pb2.InvalidServiceName),
    ],
)
def test_deregister_and_heartbeat_check_the_instance_key(stub: Stub, msg: Any, code: int) -> None:
    assert stub.DeregisterInstance(msg, timeout=CALL_TIMEOUT).code.value == code
    assert stub.Heartbeat(msg, timeout=CALL_TIMEOUT).code.value == code


def test_deregister_removes_the_heartbeat_record(server: PolarisServer, stub: Stub) -> None:
    iid = stub.RegisterInstance(instance(ttl=5), timeout=CALL_TIMEOUT).instance.id.value
    stub.Heartbeat(instance(), timeout=CALL_TIMEOUT)
    assert server.naming.heartbeats.last_beat(iid) is not None

    stub.DeregisterInstance(instance(), timeout=CALL_TIMEOUT)

    assert server.naming.heartbeats.last_beat(iid) is None
    assert server.naming.heartbeats.last_registered(iid) is None


# ------------------------------------------------------------------- heartbeat


def test_heartbeat_of_a_known_instance_succeeds(server: PolarisServer, stub: Stub) -> None:
    iid = stub.RegisterInstance(instance(ttl=5), timeout=CALL_TIMEOUT).instance.id.value

    answer = stub.Heartbeat(instance(), timeout=CALL_TIMEOUT)

    assert answer.code.value == code_pb2.ExecuteSuccess
    assert answer.instance == instance()  # the request as sent
    assert server.naming.heartbeats.last_beat(iid) is not None


def test_deregister_and_heartbeat_answers_echo_the_request_as_sent(stub: Stub) -> None:
    stub.RegisterInstance(instance(ttl=5), timeout=CALL_TIMEOUT)
    sent = instance(service_token=s("svc-token"), metadata={"k": "v"}, weight=u(7))

    beat = stub.Heartbeat(sent, timeout=CALL_TIMEOUT)
    gone = stub.DeregisterInstance(sent, timeout=CALL_TIMEOUT)

    assert beat.code.value == gone.code.value == code_pb2.ExecuteSuccess
    assert beat.instance == sent
    expected = service_pb2.Instance()
    expected.CopyFrom(sent)
    expected.id.value = hashlib.sha1(b"default##echo##10.0.0.1##8080").hexdigest()
    assert gone.instance == expected  # as sent, with the id it names


def test_heartbeat_by_id(stub: Stub) -> None:
    iid = stub.RegisterInstance(instance(ttl=5), timeout=CALL_TIMEOUT).instance.id.value

    answer = stub.Heartbeat(instance(None, None, None, None, id=s(iid)), timeout=CALL_TIMEOUT)

    assert answer.code.value == code_pb2.ExecuteSuccess


def test_unknown_instance_gets_four_forgiven_beats_then_not_found(stub: Stub) -> None:
    got = codes(stub.Heartbeat, instance(host="10.7.7.7"), FORGIVEN_HEARTBEATS + 2)

    assert FORGIVEN_HEARTBEATS == 4
    assert got == [200000] * 4 + [code_pb2.NotFoundResource] * 2


def test_registering_resets_the_forgiveness(stub: Stub) -> None:
    codes(stub.Heartbeat, instance(), FORGIVEN_HEARTBEATS + 1)
    stub.RegisterInstance(instance(ttl=5), timeout=CALL_TIMEOUT)
    stub.DeregisterInstance(instance(), timeout=CALL_TIMEOUT)

    got = codes(stub.Heartbeat, instance(), FORGIVEN_HEARTBEATS + 1)

    assert got == [200000] * 4 + [code_pb2.NotFoundResource]


def test_heartbeat_after_clear_is_forgiven_then_not_found(
    server: PolarisServer, stub: Stub
) -> None:
    stub.RegisterInstance(instance(ttl=5), timeout=CALL_TIMEOUT)
    server.clear()

    got = codes(stub.Heartbeat, instance(), FORGIVEN_HEARTBEATS + 1)

    assert got[-1] == code_pb2.NotFoundResource


def test_heartbeat_with_health_check_off_answers_400140(no_thread_leak: None) -> None:
    with PolarisServer(health_check=False) as server:
        channel, stub = new_stub(server.grpc_address)
        with channel:
            stub.RegisterInstance(instance(ttl=5), timeout=CALL_TIMEOUT)

            answer = stub.Heartbeat(instance(), timeout=CALL_TIMEOUT)

    assert answer.code.value == code_pb2.HealthCheckNotOpen
