"""PolarisTestServer in process, seen by raw-stub clients: faults, restarts, looking inside."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest
from polarismesh_specification.api.v1.model import code_pb2
from polarismesh_specification.api.v1.service_manage import grpcapi_pb2_grpc

from polaris_sdk import ConsumerAPI, ProviderAPI, ResourceNotFoundError, SDKContext
from polaris_sdk.testing import PolarisTestServer
from tests.server.helpers import CALL_TIMEOUT, discover, discover_request, instance, new_stub


@pytest.fixture
def polaris(no_thread_leak: None) -> Iterator[PolarisTestServer]:
    with PolarisTestServer.create(grpc_port=0) as server:
        yield server


@pytest.fixture
def stub(polaris: PolarisTestServer) -> Iterator[grpcapi_pb2_grpc.PolarisGRPCStub]:
    channel, stub = new_stub(polaris.grpc_address)
    with channel:
        yield stub


def test_heartbeat_not_found_answers_400202_at_once_and_records_nothing(
    polaris: PolarisTestServer, stub: grpcapi_pb2_grpc.PolarisGRPCStub
) -> None:
    iid = stub.RegisterInstance(instance(ttl=5), timeout=CALL_TIMEOUT).instance.id.value

    polaris.faults.heartbeat_not_found = True
    refused = [stub.Heartbeat(instance(), timeout=CALL_TIMEOUT) for _ in range(2)]
    recorded_while_on = polaris.server.naming.heartbeats.last_beat(iid)
    polaris.faults.heartbeat_not_found = False
    accepted = stub.Heartbeat(instance(), timeout=CALL_TIMEOUT)

    # A known instance, and no forgiven beats first: the fault is immediate.
    assert [r.code.value for r in refused] == [code_pb2.NotFoundResource] * 2
    assert refused[0].instance == instance()  # the request, echoed as sent
    assert recorded_while_on is None
    assert accepted.code.value == code_pb2.ExecuteSuccess
    assert polaris.server.naming.heartbeats.last_beat(iid) is not None


def test_restart_keeps_the_port_and_the_data_or_wipes_them(
    polaris: PolarisTestServer, stub: grpcapi_pb2_grpc.PolarisGRPCStub
) -> None:
    port = polaris.server.grpc_port
    stub.RegisterInstance(instance(), timeout=CALL_TIMEOUT)

    polaris.restart()
    kept = discover(stub, discover_request())
    polaris.restart(keep_data=False)
    wiped = discover(stub, discover_request())

    assert polaris.server.grpc_port == port
    assert [i.port.value for i in kept.instances] == [8080]
    assert wiped.code.value == code_pb2.NotFoundResource


def test_stop_refuses_clients_and_start_serves_again(
    polaris: PolarisTestServer, stub: grpcapi_pb2_grpc.PolarisGRPCStub
) -> None:
    polaris.stop()
    assert not polaris.running
    with pytest.raises(grpc.RpcError):
        stub.RegisterInstance(instance(), timeout=1)

    polaris.start()

    answer = stub.RegisterInstance(instance(), timeout=CALL_TIMEOUT, wait_for_ready=True)
    assert answer.code.value == code_pb2.ExecuteSuccess


def test_reset_gives_a_running_empty_server_without_faults(
    polaris: PolarisTestServer, stub: grpcapi_pb2_grpc.PolarisGRPCStub
) -> None:
    stub.RegisterInstance(instance(), timeout=CALL_TIMEOUT)
    polaris.faults.heartbeat_not_found = True
    polaris.stop()

    polaris.reset()

    assert polaris.running
    assert not polaris.faults.heartbeat_not_found
    assert polaris.instances("echo") == []
    # The server's own registrations come back with it.
    assert len(polaris.instances("polaris.checker", "Polaris")) == 1


def test_instances_and_wait_for_instances(
    polaris: PolarisTestServer, stub: grpcapi_pb2_grpc.PolarisGRPCStub
) -> None:
    msg = instance()
    msg.metadata["env"] = "test"
    stub.RegisterInstance(msg, timeout=CALL_TIMEOUT)

    [found] = polaris.wait_for_instances("echo", healthy=True)

    assert (found.address, found.metadata["env"], found.healthy) == ("10.0.0.1:8080", "test", True)
    assert polaris.wait_for_instances("echo", count=0, healthy=False) == []
    assert polaris.instances("nowhere") == []
    with pytest.raises(AssertionError, match=r"expected 2 instance\(s\).*found 1"):
        polaris.wait_for_instances("echo", count=2, timeout=0.05)


def test_addresses_environ_and_context(polaris: PolarisTestServer) -> None:
    assert polaris.addresses() == [polaris.grpc_address]
    assert polaris.environ()["POLARIS_ADDRESSES"] == polaris.grpc_address
    assert polaris.addresses("http") == [f"127.0.0.1:{polaris.server.http_port}"]
    assert polaris.environ("http")["POLARIS_PROTOCOL"] == "http"
    with pytest.raises(ValueError):
        polaris.addresses("carrier-pigeon")

    with polaris.context(refresh_interval=0.5) as ctx:
        assert isinstance(ctx, SDKContext)
        assert ctx.config.server_connector.addresses == (polaris.grpc_address,)
        assert ctx.config.consumer.service_refresh_interval == 0.5


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_a_context_and_the_faults_work_over_either_protocol(
    polaris: PolarisTestServer, protocol: str
) -> None:
    key = {"namespace": "default", "service": "svc", "host": "10.0.0.1", "port": 5}
    with polaris.context(protocol) as ctx:
        provider = ProviderAPI(ctx)
        provider.register(**key, ttl=5)
        listed = ConsumerAPI(ctx).get_all_instances(namespace="default", service="svc")
        polaris.faults.heartbeat_not_found = True
        with pytest.raises(ResourceNotFoundError):
            provider.heartbeat(**key)

    assert ctx.config.server_connector.protocol == protocol
    assert [i.port for i in listed] == [5]
    assert [i.port for i in polaris.instances("svc")] == [5]
