"""The fault proxy itself: it forwards, counts, and each fault does what it says.

Raw sockets speak to the embedded server's gRPC port through the proxy: a
gRPC server answers an HTTP/2 client preface with a SETTINGS frame, which is
the "answer" these tests look for.
"""

from __future__ import annotations

import select
import socket
from collections.abc import Iterator

import pytest

from polaris_sdk import InstanceRegisterRequest, ServiceKey
from polaris_sdk.connector import GrpcConnector
from polaris_sdk.server import PolarisServer
from tests.faults.conftest import sdk_config
from tests.faults.proxy import FaultProxy, RequestCounter
from tests.support import wait_until


@pytest.fixture
def transport() -> str:
    """The proxy is tested on the gRPC port only: it moves bytes, whatever they say."""
    return "grpc"


H2_HELLO = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
"""An HTTP/2 client preface and an empty SETTINGS frame."""


def connect(proxy: FaultProxy) -> socket.socket:
    host, port = proxy.address.rsplit(":", 1)
    return socket.create_connection((host, int(port)), timeout=5)


def ping(sock: socket.socket, payload: bytes) -> None:
    """Send an HTTP/2 PING and read until its ACK (whatever other frames come first)."""
    sock.sendall(frame(6, 0, 0, payload))
    ack = frame(6, 1, 0, payload)
    seen = b""
    while ack not in seen:
        chunk = sock.recv(65536)
        assert chunk, "the connection ended before the PING was answered"
        seen += chunk


@pytest.fixture
def client(proxy: FaultProxy) -> Iterator[socket.socket]:
    """A connection through the proxy on which HTTP/2 is already going."""
    sock = connect(proxy)
    sock.sendall(H2_HELLO)
    ping(sock, b"hello-00")
    yield sock
    sock.close()


def readable(sock: socket.socket, wait: float) -> bool:
    return bool(select.select([sock], [], [], wait)[0])


def test_forwards_and_counts_grpc_calls(proxy: FaultProxy, transport: str) -> None:
    connector = GrpcConnector(sdk_config(proxy.address, transport))
    try:
        req = InstanceRegisterRequest(service="counted", host="127.0.0.1", port=7000)
        connector.register_instance(req, None)
        key = ServiceKey("default", "counted")
        snapshot = connector.discover_instances(key)
        assert snapshot is not None and len(snapshot) == 1
        assert connector.discover_instances(key, snapshot.revision) is None
    finally:
        connector.close()
    stats = proxy.stats()
    assert stats.connections == 1
    # One unary call and one Discover stream; three messages on them.
    assert stats.streams == 2
    assert stats.requests == 3
    assert stats.bytes_up > 0 and stats.bytes_down > 0


def test_reset_sends_rst_to_the_client(proxy: FaultProxy, client: socket.socket) -> None:
    assert proxy.reset() == 1
    with pytest.raises(ConnectionResetError):
        while client.recv(65536):
            pass
    assert proxy.stats().resets == 1
    assert proxy.stats().active == 0


def test_reset_every_goes_on_until_healed(proxy: FaultProxy, client: socket.socket) -> None:
    proxy.reset_every(0.05)
    with pytest.raises(ConnectionResetError):
        while client.recv(65536):
            pass
    wait_until(lambda: proxy.stats().reset_rounds >= 3)
    proxy.heal()
    rounds = proxy.stats().reset_rounds
    with connect(proxy) as sock:
        sock.sendall(H2_HELLO)
        ping(sock, b"calm-now")
        ping(sock, b"still-ok")
    assert proxy.stats().reset_rounds == rounds


def test_cut_closes_with_fin(proxy: FaultProxy, client: socket.socket) -> None:
    assert proxy.cut() == 1
    # Whatever the server sent before, the stream then ends cleanly (no reset).
    while client.recv(65536):
        pass


def test_blackhole_accepts_and_never_answers_until_healed(
    proxy: FaultProxy, client: socket.socket
) -> None:
    proxy.blackhole()
    sent_before = proxy.stats().bytes_up
    with connect(proxy) as late:
        wait_until(lambda: proxy.stats().connections == 2)
        late.sendall(H2_HELLO)
        client.sendall(frame(6, 0, 0, b"in-hole!"))
        assert not readable(client, 0.5) and not readable(late, 0.0)
        assert proxy.stats().bytes_up == sent_before
        proxy.heal()
        ping(late, b"healed-1")
        ping(client, b"healed-2")
    assert proxy.stats().bytes_up > sent_before + len(H2_HELLO)


def test_delay_holds_answers(proxy: FaultProxy, client: socket.socket) -> None:
    proxy.delay(down=1.0)
    received = proxy.stats().bytes_down
    client.sendall(frame(6, 0, 0, b"delayed!"))
    wait_until(lambda: proxy.stats().bytes_down > received, message="no answer from the server")
    assert not readable(client, 0.2), "an answer came through before its delay"
    ping(client, b"after-ok")


def test_refused_upstream_resets_the_client(server: PolarisServer, proxy: FaultProxy) -> None:
    server.stop()
    # The reset may already show when connect() checks the socket's error.
    with pytest.raises(ConnectionResetError), connect(proxy) as sock:
        while sock.recv(65536):
            pass


def test_close_releases_everything(server: PolarisServer) -> None:
    proxy = FaultProxy(("127.0.0.1", server.grpc_port)).start()
    host, port = proxy.address.rsplit(":", 1)
    sock = socket.create_connection((host, int(port)), timeout=5)
    wait_until(lambda: proxy.stats().active == 1)
    proxy.close()
    proxy.close()
    with pytest.raises(ConnectionResetError):
        while sock.recv(65536):
            pass
    sock.close()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((host, int(port)), timeout=5)


# ------------------------------------------------------------ request counting


def test_counts_http1_requests_split_anywhere() -> None:
    body = b'{"service": "echo"}'
    stream = (
        b"POST /v1/Heartbeat HTTP/1.1\r\nHost: x\r\nContent-Length: "
        + str(len(body)).encode()
        + b"\r\n\r\n"
        + body
        + b"GET /v1/x HTTP/1.1\r\nHost: x\r\n\r\n"
        + b"POST /v1/Discover HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
        + b"4\r\nabcd\r\n3;ext=1\r\nefg\r\n0\r\nX-Trailer: 1\r\n\r\n"
        + b"POST /v1/Heartbeat HTTP/1.1\r\nContent-Length: 0\r\n\r\n"
    )
    for size in (1, 7, len(stream)):
        counter = RequestCounter()
        total = 0
        for i in range(0, len(stream), size):
            total += counter.feed(stream[i : i + size])[1]
        assert total == 4, size


def frame(kind: int, flags: int, stream: int, payload: bytes) -> bytes:
    return (
        len(payload).to_bytes(3, "big")
        + bytes([kind, flags])
        + stream.to_bytes(4, "big")
        + (payload)
    )


def grpc_message(body: bytes) -> bytes:
    return b"\x00" + len(body).to_bytes(4, "big") + body


def test_counts_grpc_messages_across_frames() -> None:
    two = grpc_message(b"a" * 10) + grpc_message(b"")
    stream = (
        H2_HELLO
        + frame(1, 0x4, 1, b"hpack")  # HEADERS, stream 1
        + frame(0, 0x0, 1, two[:3])  # a message prefix cut in two frames
        + frame(0, 0x1, 1, two[3:])  # END_STREAM
        + frame(1, 0x4, 3, b"hpack")
        + frame(0, 0x8, 3, b"\x02" + grpc_message(b"xyz") + b"\x00\x00")  # PADDED
        + frame(1, 0x5, 3, b"trailers")  # not a new stream
        + frame(6, 0, 0, b"pingpong")  # PING
    )
    counter = RequestCounter()
    streams = requests = 0
    for i in range(0, len(stream), 5):
        s, r = counter.feed(stream[i : i + 5])
        streams += s
        requests += r
    assert (streams, requests) == (2, 3)
