"""Self-registration, ReportClient, the auth seam and handler failures, over the wire."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from polarismesh_specification.api.v1.model import code_pb2
from polarismesh_specification.api.v1.service_manage import client_pb2, grpcapi_pb2_grpc
from pytest_mock import MockerFixture

from polaris_sdk import wire
from polaris_sdk.server import DEFAULT_SYSTEM_SERVICES, SYSTEM_SERVICES, PolarisServer
from polaris_sdk.server.auth import Action, Resource
from polaris_sdk.server.naming import RequestContext
from tests.server.helpers import (
    CALL_TIMEOUT,
    SERVICES,
    DiscoverStream,
    discover,
    discover_request,
    instance,
    new_stub,
    s,
)

Stub = grpcapi_pb2_grpc.PolarisGRPCStub


# ---------------------------------------------------------- self registration


@pytest.mark.parametrize("service", SYSTEM_SERVICES)
def test_server_registers_itself_in_the_polaris_namespace(
    no_thread_leak: None, service: str
) -> None:
    with PolarisServer(system_services=SYSTEM_SERVICES) as server:
        channel, stub = new_stub(server.grpc_address)
        with channel:
            answer = discover(stub, discover_request(service, "Polaris"))

    assert answer.code.value == code_pb2.ExecuteSuccess
    (me,) = answer.instances
    assert f"{me.host.value}:{me.port.value}" == server.grpc_address
    assert me.protocol.value == "grpc"
    assert me.healthy.value is True
    assert me.metadata["protocol"] == "grpc"
    assert me.metadata["grpc_port"] == str(server.grpc_port)
    assert me.metadata["polaris_service"] == service


def test_by_default_only_the_checker_is_registered(stub: Stub) -> None:
    answer = discover(stub, discover_request("", "Polaris", kind=SERVICES))

    assert [x.name.value for x in answer.services] == ["polaris.checker"]
    assert DEFAULT_SYSTEM_SERVICES == ("polaris.checker",)


def test_system_services_come_back_after_clear(server: PolarisServer, stub: Stub) -> None:
    server.clear()

    answer = discover(stub, discover_request("", "Polaris", kind=SERVICES))

    assert sorted(x.name.value for x in answer.services) == sorted(DEFAULT_SYSTEM_SERVICES)


def test_system_service_names_are_checked() -> None:
    with pytest.raises(ValueError, match="system_services"):
        PolarisServer(system_services=["bad name!"])


def test_wildcard_host_registers_a_reachable_address(no_thread_leak: None) -> None:
    with PolarisServer(host="0.0.0.0", advertise_host="127.0.0.1") as server:
        channel, stub = new_stub(server.grpc_address)
        with channel:
            answer = discover(stub, discover_request("polaris.checker", "Polaris"))

    assert server.grpc_address.startswith("127.0.0.1:")
    assert answer.instances[0].host.value == "127.0.0.1"


# --------------------------------------------------------------- report client


def test_report_client_without_id_echoes_host_and_location(stub: Stub) -> None:
    client = client_pb2.Client(host=s("10.1.1.1"), version=s("1.0"))
    client.location.region.value = "r1"

    answer = stub.ReportClient(client, timeout=CALL_TIMEOUT)

    assert answer.code.value == code_pb2.ExecuteSuccess
    assert answer.client.host.value == "10.1.1.1"
    assert answer.client.location.region.value == "r1"


def test_report_client_with_id_is_recorded(server: PolarisServer, stub: Stub) -> None:
    client = client_pb2.Client(host=s("10.1.1.1"), id=s("client-1"), version=s("1.0"))

    answer = stub.ReportClient(client, timeout=CALL_TIMEOUT)

    assert answer.code.value == code_pb2.ExecuteSuccess
    assert answer.client.id.value == "client-1"
    assert server.naming.clients()["client-1"].version.value == "1.0"


# ------------------------------------------------------------------- auth seam


class TokenRequired:
    """Allows only requests carrying token ``good``; remembers what it was asked."""

    def __init__(self) -> None:
        self.seen: list[Resource] = []

    def authorize(self, ctx: RequestContext, resource: Resource) -> int:
        self.seen.append(resource)
        return 200000 if resource.token == "good" else 401000


@pytest.fixture
def guarded(no_thread_leak: None) -> Iterator[tuple[TokenRequired, Stub]]:
    authorizer = TokenRequired()
    with PolarisServer(auth=authorizer) as server:
        channel, stub = new_stub(server.grpc_address)
        with channel:
            yield authorizer, stub


def test_auth_denial_is_answered_with_its_code_and_nothing_happens(
    guarded: tuple[TokenRequired, Stub],
) -> None:
    authorizer, stub = guarded

    denied = stub.RegisterInstance(instance(), timeout=CALL_TIMEOUT)
    allowed = stub.RegisterInstance(
        instance(host="10.0.0.2"), metadata=[("x-polaris-token", "good")], timeout=CALL_TIMEOUT
    )

    assert denied.code.value == code_pb2.Unauthorized
    assert allowed.code.value == code_pb2.ExecuteSuccess
    assert authorizer.seen[0] == Resource(Action.REGISTER, "default", "echo", "")
    with DiscoverStream(stub) as stream:
        refused = stream.ask(discover_request())
    assert refused.code.value == code_pb2.Unauthorized
    assert not refused.instances


def test_service_token_overrides_the_header_token(guarded: tuple[TokenRequired, Stub]) -> None:
    authorizer, stub = guarded

    answer = stub.RegisterInstance(
        instance(service_token=s("good")),
        metadata=[("x-polaris-token", "bad")],
        timeout=CALL_TIMEOUT,
    )

    assert answer.code.value == code_pb2.ExecuteSuccess
    assert "good" not in repr(authorizer.seen[-1])  # tokens stay out of reprs (and logs)


def test_discover_token_comes_from_the_service_or_the_header(
    guarded: tuple[TokenRequired, Stub],
) -> None:
    authorizer, stub = guarded
    stub.RegisterInstance(instance(service_token=s("good")), timeout=CALL_TIMEOUT)
    with_service_token = discover_request()
    with_service_token.service.token.value = "good"

    answer = discover(stub, with_service_token)

    assert answer.code.value == code_pb2.ExecuteSuccess
    assert authorizer.seen[-1] == Resource(Action.DISCOVER, "default", "echo", "good")


# ------------------------------------------------------------ handler failures


def test_an_exception_in_a_unary_handler_is_500000_and_logged(
    server: PolarisServer, stub: Stub, mocker: MockerFixture, caplog: pytest.LogCaptureFixture
) -> None:
    mocker.patch.object(server.naming.store, "get_instance", side_effect=RuntimeError("boom"))

    failed = stub.Heartbeat(instance(), timeout=CALL_TIMEOUT)
    mocker.stopall()
    works = stub.RegisterInstance(instance(), timeout=CALL_TIMEOUT)

    assert failed.code.value == code_pb2.ExecuteException
    assert "Heartbeat failed" in caplog.text
    assert works.code.value == code_pb2.ExecuteSuccess


def test_an_exception_in_discover_is_500000_and_the_stream_goes_on(
    server: PolarisServer, stub: Stub, mocker: MockerFixture
) -> None:
    stub.RegisterInstance(instance(), timeout=CALL_TIMEOUT)
    with DiscoverStream(stub) as stream:
        mocker.patch.object(
            server.naming.store, "service_instances", side_effect=RuntimeError("boom")
        )
        failed = stream.ask(discover_request())
        mocker.stopall()
        works = stream.ask(discover_request())

    assert failed.code.value == code_pb2.ExecuteException
    assert failed.type == wire.DISCOVER_RESPONSE_TYPE.values_by_name["INSTANCE"].number
    assert works.code.value == code_pb2.ExecuteSuccess


def test_register_racing_a_clear_creates_the_service_again(
    server: PolarisServer, stub: Stub, mocker: MockerFixture
) -> None:
    store = server.naming.store
    real = store.modify_instance
    calls = 0

    def cleared_once(*args: object) -> object:
        nonlocal calls
        calls += 1
        if calls == 1:
            store.clear()  # as if clear() ran between creating the service and the write
            raise LookupError("service vanished")
        return real(*args)

    mocker.patch.object(store, "modify_instance", side_effect=cleared_once)

    answer = stub.RegisterInstance(instance(), timeout=CALL_TIMEOUT)

    assert answer.code.value == code_pb2.ExecuteSuccess
    assert len(discover(stub, discover_request()).instances) == 1


def test_a_store_that_keeps_failing_is_a_store_layer_exception(
    server: PolarisServer, stub: Stub, mocker: MockerFixture
) -> None:
    mocker.patch.object(server.naming.store, "modify_instance", side_effect=LookupError("gone"))

    answer = stub.RegisterInstance(instance(), timeout=CALL_TIMEOUT)

    assert answer.code.value == code_pb2.StoreLayerException
