"""Slow and silent clients cannot lock others out of the HTTP API.

A request's head must arrive within ``header_timeout`` of its first byte
(and a new connection must start one within that too), and one client
address may hold only ``max_connections_per_address`` connections, so
connections trickling header lines or saying nothing are cut or turned
away while every other client keeps getting answers. All on loopback;
every attack is bounded.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator

import pytest

from polaris_sdk.server import PolarisServer
from polaris_sdk.server.apiserver.http import HttpOptions
from tests.server.httputil import code_of, http_client, post
from tests.support import wait_until

ECHO = {"namespace": "default", "service": "echo", "host": "10.0.0.1", "port": 8080}
HEAD = b"POST /v1/Heartbeat HTTP/1.1\r\nHost: x\r\n"
SOCKET_TIMEOUT = 10.0
# Another loopback address (Linux routes all of 127/8 to lo): the attacker's.
ATTACKER = "127.0.0.2"


def open_connections(server: PolarisServer, count: int, source: str = "") -> list[socket.socket]:
    socks = []
    for _ in range(count):
        sock = socket.create_connection(
            ("127.0.0.1", server.http_port),
            timeout=SOCKET_TIMEOUT,
            source_address=(source, 0) if source else None,
        )
        socks.append(sock)
    return socks


def is_closed(sock: socket.socket) -> bool:
    """Whether the server has ended ``sock`` (whatever it sent first)."""
    sock.setblocking(False)
    try:
        while True:
            data = sock.recv(65536)
            if not data:
                return True
    except BlockingIOError:
        return False
    except OSError:
        return True
    finally:
        sock.setblocking(True)


def trickle(socks: list[socket.socket], line: int) -> None:
    for sock in socks:
        with contextlib.suppress(OSError):
            sock.sendall(b"X-Slow-%d: %s\r\n" % (line, b"a" * 10))


@pytest.fixture
def server(no_thread_leak: None) -> Iterator[PolarisServer]:
    with PolarisServer() as running:  # the default bounds
        yield running


def test_clients_trickling_header_lines_neither_lock_others_out_nor_last(
    server: PolarisServer,
) -> None:
    slow = open_connections(server, 64)
    pace = threading.Event()  # never set: its wait() only paces the attack
    try:
        for sock in slow:
            sock.sendall(HEAD)
        with http_client(server.http_address) as client:
            # One header line a second from each, for longer than the header deadline.
            for line in range(2 * int(HttpOptions().header_timeout) + 2):
                trickle(slow, line)
                assert code_of(post(client, "Heartbeat", ECHO)) in (200000, 400202)
                pace.wait(1.0)
        # The header deadline cut every one of them, though each kept sending.
        wait_until(lambda: all(is_closed(s) for s in slow), timeout=SOCKET_TIMEOUT)
    finally:
        for sock in slow:
            sock.close()


def test_silent_connections_neither_lock_others_out_nor_last(server: PolarisServer) -> None:
    silent = open_connections(server, 64)
    try:
        wait_until(lambda: server.open_http_connections == 64, timeout=SOCKET_TIMEOUT)
        with http_client(server.http_address) as client:
            response = post(client, "RegisterInstance", ECHO)
        assert response.status_code == 200
        wait_until(lambda: all(is_closed(s) for s in silent), timeout=3 * SOCKET_TIMEOUT)
    finally:
        for sock in silent:
            sock.close()


@pytest.fixture
def capped(no_thread_leak: None) -> Iterator[PolarisServer]:
    try:
        with socket.socket() as probe:
            probe.bind((ATTACKER, 0))
    except OSError:
        pytest.skip(f"{ATTACKER} is not a loopback address here")
    options = HttpOptions(max_connections=8, max_connections_per_address=4, header_timeout=600)
    with PolarisServer(http_options=options) as running:
        yield running


def test_one_address_cannot_take_every_connection(capped: PolarisServer) -> None:
    # Patient timeouts: only the per-address cap can keep room for others.
    attack = open_connections(capped, 4, source=ATTACKER)
    try:
        wait_until(lambda: capped.open_http_connections == 4, timeout=SOCKET_TIMEOUT)
        with contextlib.closing(open_connections(capped, 1, source=ATTACKER)[0]) as refused:
            answer = b""
            while chunk := refused.recv(65536):
                answer += chunk
        assert answer.startswith(b"HTTP/1.1 503 ")
        with http_client(capped.http_address) as client:
            assert code_of(post(client, "RegisterInstance", ECHO)) == 200000
    finally:
        for sock in attack:
            sock.close()


def test_a_silent_connection_is_closed_at_the_header_timeout(no_thread_leak: None) -> None:
    # A patient keep-alive idle time: only the header deadline can close it.
    options = HttpOptions(io_timeout=600, header_timeout=1.0)
    with PolarisServer(http_options=options) as running:
        (sock,) = open_connections(running, 1)
        with sock:
            assert sock.recv(1) == b""  # closed well before the socket's own timeout
