"""Start, stop, restart on the same port, clear, drop streams; no thread left behind."""

from __future__ import annotations

import socket

import grpc
import pytest
from polarismesh_specification.api.v1.model import code_pb2

from polaris_sdk.server import PolarisServer
from tests.server.helpers import (
    CALL_TIMEOUT,
    DiscoverStream,
    discover,
    discover_request,
    instance,
    new_stub,
)
from tests.support import wait_until


def test_port_zero_picks_a_free_port_and_the_address_uses_it(no_thread_leak: None) -> None:
    server = PolarisServer(grpc_port=0)
    with pytest.raises(RuntimeError):
        _ = server.grpc_address
    with server:
        assert server.running
        assert server.grpc_port > 0
        assert server.grpc_address == f"127.0.0.1:{server.grpc_port}"
        assert server.http_port > 0
        assert server.http_address == f"http://127.0.0.1:{server.http_port}"
    assert not server.running


def test_start_and_stop_are_idempotent(no_thread_leak: None) -> None:
    server = PolarisServer()
    server.stop()
    assert server.start() is server
    port = server.grpc_port
    server.start()
    assert server.grpc_port == port
    server.stop()
    server.stop()
    assert not server.running


def test_restart_serves_the_same_port_with_the_data_kept(no_thread_leak: None) -> None:
    server = PolarisServer().start()
    try:
        port = server.grpc_port
        channel, stub = new_stub(server.grpc_address)
        with channel:
            iid = stub.RegisterInstance(instance(), timeout=CALL_TIMEOUT).instance.id.value
            server.stop()
            with pytest.raises(grpc.RpcError):
                stub.RegisterInstance(instance(), timeout=1)

            server.start()
            # The channel reconnects by itself; wait_for_ready rides out its backoff.
            answer = stub.Heartbeat(instance(), timeout=CALL_TIMEOUT, wait_for_ready=True)
            listed = discover(stub, discover_request())
    finally:
        server.stop()

    assert server.grpc_port == port
    assert answer.code.value == code_pb2.ExecuteSuccess
    assert [i.id.value for i in listed.instances] == [iid]


def test_clear_wipes_registrations(server: PolarisServer) -> None:
    channel, stub = new_stub(server.grpc_address)
    with channel:
        stub.RegisterInstance(instance(), timeout=CALL_TIMEOUT)
        server.clear()
        answer = discover(stub, discover_request())

    assert answer.code.value == code_pb2.NotFoundResource
    assert server.naming.store.list_services("default") == []


def test_taken_port_raises_and_leaves_no_thread(no_thread_leak: None) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        server = PolarisServer(grpc_port=taken.getsockname()[1])

        with pytest.raises(OSError):
            server.start()

    assert not server.running


def test_two_servers_in_one_process(no_thread_leak: None) -> None:
    with PolarisServer() as one, PolarisServer() as two:
        assert one.grpc_port != two.grpc_port
        for server in (one, two):
            channel, stub = new_stub(server.grpc_address)
            with channel:
                stub.RegisterInstance(instance(), timeout=CALL_TIMEOUT)
        assert len(one.naming.store.list_services("default")) == 1


def test_drop_discover_streams_aborts_them_with_unavailable(server: PolarisServer) -> None:
    channel, stub = new_stub(server.grpc_address)
    with channel:
        stub.RegisterInstance(instance(), timeout=CALL_TIMEOUT)
        streams = [DiscoverStream(stub) for _ in range(3)]
        for stream in streams:
            assert stream.ask(discover_request()).code.value == code_pb2.ExecuteSuccess

        assert server.drop_discover_streams() == 3

        for stream in streams:
            with pytest.raises(grpc.RpcError) as dropped:
                stream.ask(discover_request())
            assert dropped.value.code() == grpc.StatusCode.UNAVAILABLE
            stream.close()
        # New streams work; the dropped ones are gone from the server's books.
        assert discover(stub, discover_request()).code.value == code_pb2.ExecuteSuccess
        wait_until(lambda: server.drop_discover_streams() == 0, timeout=5)


def test_drop_discover_streams_when_stopped_is_a_no_op() -> None:
    assert PolarisServer().drop_discover_streams() == 0


def test_stop_ends_open_streams_and_leaves_no_thread(no_thread_leak: None) -> None:
    server = PolarisServer().start()
    channel, stub = new_stub(server.grpc_address)
    with channel:
        stream = DiscoverStream(stub)
        stream.ask(discover_request())

        server.stop()

        with pytest.raises(grpc.RpcError):
            stream.ask(discover_request())
        stream.close()
