"""Discover over the wire: INSTANCE and SERVICES, revisions, one answer per request."""

from __future__ import annotations

import hashlib
from typing import Any

import grpc
import pytest
from polarismesh_specification.api.v1.model import code_pb2
from polarismesh_specification.api.v1.service_manage import (
    grpcapi_pb2_grpc,
    request_pb2,
    response_pb2,
)

from polaris_sdk.server import PolarisServer
from tests.server.helpers import (
    CALL_TIMEOUT,
    INSTANCE,
    SERVICES,
    DiscoverStream,
    b,
    discover,
    discover_request,
    instance,
    s,
    u,
)

Stub = grpcapi_pb2_grpc.PolarisGRPCStub
EMPTY_SHA1 = hashlib.sha1(b"").hexdigest()


def register(stub: Stub, service: str = "echo", namespace: str = "default", **fields: Any) -> str:
    answer = stub.RegisterInstance(instance(service, namespace, **fields), timeout=CALL_TIMEOUT)
    assert answer.code.value == code_pb2.ExecuteSuccess
    return str(answer.instance.id.value)


def test_lists_every_instance_with_its_flags(stub: Stub) -> None:
    ok = register(stub, host="10.0.0.1")
    sick = register(stub, host="10.0.0.2", healthy=b(False))
    isolated = register(stub, host="10.0.0.3", isolate=b(True))

    answer = discover(stub, discover_request())

    assert answer.code.value == code_pb2.ExecuteSuccess
    assert answer.type == response_pb2.DiscoverResponse.INSTANCE
    assert answer.service.name.value == "echo"
    assert answer.service.namespace.value == "default"
    flags = {i.id.value: (i.healthy.value, i.isolate.value) for i in answer.instances}
    assert flags == {ok: (True, False), sick: (False, False), isolated: (True, True)}


def test_same_revision_answers_data_no_change_without_instances(stub: Stub) -> None:
    register(stub)
    with DiscoverStream(stub) as stream:
        first = stream.ask(discover_request())
        again = stream.ask(discover_request(revision=first.service.revision.value))

    assert first.service.revision.value
    assert again.code.value == code_pb2.DataNoChange
    assert again.type == response_pb2.DiscoverResponse.INSTANCE
    assert len(again.instances) == 0
    assert again.service.revision.value == first.service.revision.value


def test_each_change_gives_a_new_revision(stub: Stub) -> None:
    with DiscoverStream(stub) as stream:
        seen = []
        register(stub, host="10.0.0.1")
        seen.append(stream.ask(discover_request()).service.revision.value)
        register(stub, host="10.0.0.2")
        seen.append(stream.ask(discover_request(revision=seen[-1])).service.revision.value)
        register(stub, host="10.0.0.2", weight=u(5))
        seen.append(stream.ask(discover_request(revision=seen[-1])).service.revision.value)
        stub.DeregisterInstance(instance(host="10.0.0.1"), timeout=CALL_TIMEOUT)
        last = stream.ask(discover_request(revision=seen[-1]))

    assert last.code.value == code_pb2.ExecuteSuccess
    assert len(last.instances) == 1
    assert len({*seen, last.service.revision.value}) == 4


def test_revision_does_not_depend_on_registration_order(stub: Stub) -> None:
    register(stub, "a", host="10.0.0.1", id=s("x1"))
    register(stub, "a", host="10.0.0.2", id=s("x2"))

    answer = discover(stub, discover_request("a"))

    revisions = sorted(i.revision.value for i in answer.instances)
    assert answer.service.revision.value == hashlib.sha1("".join(revisions).encode()).hexdigest()


def test_empty_namespace_means_default(stub: Stub) -> None:
    iid = register(stub)

    answer = discover(stub, discover_request(namespace=None))

    assert answer.code.value == code_pb2.ExecuteSuccess
    assert answer.service.namespace.value == "default"
    assert [i.id.value for i in answer.instances] == [iid]


def test_empty_service_name_is_invalid(stub: Stub) -> None:
    assert discover(stub, discover_request("")).code.value == code_pb2.InvalidServiceName


def test_unknown_service_is_not_found_and_echoed(stub: Stub) -> None:
    answer = discover(stub, discover_request("nobody", "default"))

    assert answer.code.value == code_pb2.NotFoundResource
    assert answer.service.name.value == "nobody"
    assert answer.service.namespace.value == "default"


def test_service_without_instances_has_the_sha1_of_nothing(stub: Stub) -> None:
    register(stub)
    stub.DeregisterInstance(instance(), timeout=CALL_TIMEOUT)

    answer = discover(stub, discover_request())

    assert answer.code.value == code_pb2.ExecuteSuccess
    assert answer.service.revision.value == EMPTY_SHA1
    assert len(answer.instances) == 0


def test_one_answer_per_request_in_order_on_one_stream(stub: Stub) -> None:
    register(stub, "one")
    register(stub, "two")
    with DiscoverStream(stub) as stream:
        names = [stream.ask(discover_request(n)).service.name.value for n in ("two", "one", "x")]

    assert names == ["two", "one", "x"]


def test_services_lists_a_namespace_or_all(stub: Stub) -> None:
    register(stub, "a", "ns1")
    register(stub, "b", "ns1")
    register(stub, "c", "ns2")

    one = discover(stub, discover_request("", "ns1", kind=SERVICES))
    every = discover(stub, discover_request("", None, kind=SERVICES))

    assert one.code.value == code_pb2.ExecuteSuccess
    assert one.type == response_pb2.DiscoverResponse.SERVICES
    assert sorted(x.name.value for x in one.services) == ["a", "b"]
    listed = {(x.namespace.value, x.name.value) for x in every.services}
    assert {("ns1", "a"), ("ns1", "b"), ("ns2", "c")} <= listed
    assert ("Polaris", "polaris.checker") in listed


def test_services_same_revision_is_data_no_change_until_a_service_appears(stub: Stub) -> None:
    register(stub, "a", "ns1")
    with DiscoverStream(stub) as stream:
        first = stream.ask(discover_request("", "ns1", kind=SERVICES))
        same = stream.ask(discover_request("", "ns1", first.service.revision.value, SERVICES))
        register(stub, "b", "ns1")
        changed = stream.ask(discover_request("", "ns1", first.service.revision.value, SERVICES))

    assert same.code.value == code_pb2.DataNoChange
    assert changed.code.value == code_pb2.ExecuteSuccess
    assert len(changed.services) == 2


RULE_TYPES = {
    request_pb2.DiscoverRequest.RATE_LIMIT: response_pb2.DiscoverResponse.RATE_LIMIT,
    request_pb2.DiscoverRequest.CIRCUIT_BREAKER: response_pb2.DiscoverResponse.CIRCUIT_BREAKER,
    request_pb2.DiscoverRequest.FAULT_DETECTOR: response_pb2.DiscoverResponse.FAULT_DETECTOR,
}


def test_rule_types_answer_success_with_no_rules(stub: Stub) -> None:
    for kind, answer_type in RULE_TYPES.items():
        answer = discover(stub, discover_request(kind=kind))

        assert answer.code.value == code_pb2.ExecuteSuccess
        assert answer.type == answer_type
        assert not answer.HasField("rateLimit") and not answer.HasField("circuitBreaker")


def test_routing_without_rules_is_an_empty_rule_set_with_a_revision(stub: Stub) -> None:
    with DiscoverStream(stub) as stream:
        first = stream.ask(discover_request(kind=request_pb2.DiscoverRequest.ROUTING))
        again = stream.ask(
            discover_request(revision=EMPTY_SHA1, kind=request_pb2.DiscoverRequest.ROUTING)
        )

    assert first.code.value == code_pb2.ExecuteSuccess
    assert first.type == response_pb2.DiscoverResponse.ROUTING
    assert first.routing.revision.value == first.service.revision.value == EMPTY_SHA1
    assert (first.routing.namespace.value, first.routing.service.value) == ("default", "echo")
    assert not first.routing.inbounds and not first.routing.outbounds
    assert again.code.value == code_pb2.DataNoChange
    assert again.type == response_pb2.DiscoverResponse.ROUTING
    assert not again.HasField("routing")


@pytest.mark.parametrize(
    "kind",
    [
        request_pb2.DiscoverRequest.LANE,
        request_pb2.DiscoverRequest.CUSTOM_ROUTE_RULE,
        request_pb2.DiscoverRequest.NEARBY_ROUTE_RULE,
        request_pb2.DiscoverRequest.LOSSLESS,
        request_pb2.DiscoverRequest.BLOCK_ALLOW_RULE,
        request_pb2.DiscoverRequest.UNKNOWN,
    ],
)
def test_unsupported_type_is_an_invalid_discover_resource_of_type_routing(
    stub: Stub, kind: int
) -> None:
    answer = discover(stub, discover_request(kind=kind))

    assert answer.code.value == code_pb2.InvalidDiscoverResource
    assert answer.type == response_pb2.DiscoverResponse.ROUTING
    assert answer.service.name.value == "echo"


def test_services_of_a_namespace_without_services_carry_no_revision(stub: Stub) -> None:
    with DiscoverStream(stub) as stream:
        first = stream.ask(discover_request("", "nowhere", kind=SERVICES))
        again = stream.ask(discover_request("", "nowhere", first.service.revision.value, SERVICES))

    for answer in (first, again):
        assert answer.code.value == code_pb2.ExecuteSuccess
        assert not answer.service.revision.value
        assert not answer.services


def test_services_without_a_service_message_is_empty(stub: Stub) -> None:
    answer = discover(stub, request_pb2.DiscoverRequest(type=SERVICES))

    assert answer.code.value == code_pb2.EmptyRequest
    assert answer.type == response_pb2.DiscoverResponse.SERVICES


def test_instances_carry_their_labels_in_the_metadata(stub: Stub) -> None:
    located = instance(host="10.0.0.1", protocol=s("grpc"), version=s("1.2.0"))
    located.location.region.value = "r1"
    located.location.zone.value = "z1"
    located.metadata["version"] = "overridden"
    stub.RegisterInstance(located, timeout=CALL_TIMEOUT)
    stub.RegisterInstance(instance(host="10.0.0.2", metadata={"k": "v"}), timeout=CALL_TIMEOUT)

    answer = discover(stub, discover_request())

    metadata = {i.host.value: dict(i.metadata) for i in answer.instances}
    assert metadata == {
        "10.0.0.1": {
            "version": "1.2.0",
            "protocol": "grpc",
            "region": "r1",
            "zone": "z1",
            "campus": "",
        },
        "10.0.0.2": {"k": "v"},
    }


def test_the_answer_names_the_service_by_id_and_what_it_is_an_alias_for(stub: Stub) -> None:
    register(stub)

    answer = discover(stub, discover_request())

    assert answer.service.id.value
    assert answer.aliasFor.id.value == answer.service.id.value
    assert (answer.aliasFor.namespace.value, answer.aliasFor.name.value) == ("default", "echo")


def test_request_without_a_service_is_empty(stub: Stub) -> None:
    answer = discover(stub, request_pb2.DiscoverRequest(type=INSTANCE))

    assert answer.code.value == code_pb2.EmptyRequest


def test_unparseable_request_is_answered_and_the_stream_goes_on(
    server: PolarisServer, channel: grpc.Channel, stub: Stub
) -> None:
    register(stub)
    raw = channel.stream_stream(
        "/v1.PolarisGRPC/Discover",
        request_serializer=None,
        response_deserializer=response_pb2.DiscoverResponse.FromString,
    )
    good = discover_request().SerializeToString()

    answers = list(raw(iter([b"\x12\x64abc", good]), timeout=CALL_TIMEOUT))

    assert [a.code.value for a in answers] == [code_pb2.ParseException, code_pb2.ExecuteSuccess]


def test_echoed_services_never_carry_the_token(stub: Stub) -> None:
    unknown = discover_request("nobody")
    unknown.service.token.value = "secret-token"
    lane = discover_request(kind=request_pb2.DiscoverRequest.LANE)
    lane.service.token.value = "secret-token"

    answers = [discover(stub, unknown), discover(stub, lane)]

    assert [a.service.name.value for a in answers] == ["nobody", "echo"]
    assert not any(a.service.token.value for a in answers)
