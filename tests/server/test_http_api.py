"""The HTTP API's own rules: JSON as Go's jsonpb reads it, HTTP framing, bounds and lifecycle.

The rules both transports share are in test_http_parity.py; these are the
ones only HTTP has. Everything runs over real loopback sockets, with httpx
or, where a client must misbehave, a raw socket.
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from polaris_sdk import wire
from polaris_sdk.server import PolarisServer
from polaris_sdk.server.apiserver import http as http_api
from polaris_sdk.server.apiserver.http import HttpOptions, decode_request, http_status
from tests.server.httputil import JSON_HEADERS, code_of, http_client, post
from tests.support import wait_until

ECHO = {"namespace": "default", "service": "echo", "host": "10.0.0.1", "port": 8080}
DISCOVER_ECHO = {"type": "INSTANCE", "service": {"namespace": "default", "name": "echo"}}
SOCKET_TIMEOUT = 10.0


@pytest.fixture
def client(server: PolarisServer) -> Iterator[httpx.Client]:
    with http_client(server.http_address) as c:
        yield c


def only_instance(client: httpx.Client) -> dict[str, Any]:
    answer = post(client, "Discover", DISCOVER_ECHO).json()
    assert len(answer["instances"]) == 1, answer
    instance: dict[str, Any] = answer["instances"][0]
    return instance


def connect(server: PolarisServer) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.http_port), timeout=SOCKET_TIMEOUT)
    return sock


def read_all(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection."""
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def http_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("polaris-http")]


# ------------------------------------------------------------ JSON in


def test_proto_names_and_json_names_are_the_same_fields(client: httpx.Client) -> None:
    camel = {**ECHO, "enableHealthCheck": True, "healthCheck": {"heartbeat": {"ttl": 7}}}
    snake = {**ECHO, "enable_health_check": True, "health_check": {"heartbeat": {"ttl": 7}}}
    assert code_of(post(client, "RegisterInstance", camel)) == 200000
    by_camel = only_instance(client)
    assert code_of(post(client, "RegisterInstance", snake)) == 200000
    by_snake = only_instance(client)
    assert (
        by_camel["healthCheck"]
        == by_snake["healthCheck"]
        == {
            "type": "HEARTBEAT",
            "heartbeat": {"ttl": 7},
        }
    )
    assert by_camel["enableHealthCheck"] is by_snake["enableHealthCheck"] is True


def test_unknown_fields_are_ignored_at_every_level(client: httpx.Client) -> None:
    body = {
        **ECHO,
        "colour": "blue",
        "location": {"region": "r", "planet": {"name": "mars"}},
        "healthCheck": {"heartbeat": {"ttl": 5, "jitter": [1, 2]}},
    }
    assert code_of(post(client, "RegisterInstance", body)) == 200000
    assert only_instance(client)["location"] == {"region": "r", "zone": "", "campus": ""}


def test_null_unsets_a_field_and_is_the_default_as_a_map_value(client: httpx.Client) -> None:
    body = {
        **ECHO,
        "weight": None,
        "vpc_id": None,
        "location": None,
        "healthCheck": {"heartbeat": None, "type": None},
        "metadata": {"empty": None, "kept": "x"},
    }
    assert code_of(post(client, "RegisterInstance", body)) == 200000
    instance = only_instance(client)
    assert instance["weight"] == 100  # unset, so the server default
    assert instance["vpc_id"] is None
    assert instance["metadata"] == {"empty": "", "kept": "x"}


def test_a_null_body_is_an_empty_instance(client: httpx.Client) -> None:
    for route in ("RegisterInstance", "DeregisterInstance", "Heartbeat"):
        assert code_of(post(client, route, None)) == 400120, route  # service missing


@pytest.mark.parametrize("kind", ["INSTANCE", 1])
@pytest.mark.parametrize("check", ["HEARTBEAT", 1])
def test_enums_by_name_or_number(client: httpx.Client, kind: Any, check: Any) -> None:
    body = {**ECHO, "healthCheck": {"type": check, "heartbeat": {}}}
    assert code_of(post(client, "RegisterInstance", body)) == 200000
    answer = post(client, "Discover", {**DISCOVER_ECHO, "type": kind}).json()
    assert answer["type"] == "INSTANCE"
    assert answer["instances"][0]["healthCheck"]["type"] == "HEARTBEAT"


def test_numbers_may_come_as_strings_like_jsonpb_accepts(client: httpx.Client) -> None:
    assert code_of(post(client, "RegisterInstance", {**ECHO, "port": "8080"})) == 200000
    assert only_instance(client)["port"] == 8080


@pytest.mark.parametrize(
    "body",
    [
        b"{",
        b"",
        b"   ",
        b"[]",
        b'"text"',
        b"42",
        b"\xff\xfe{}",
        b'{"port": "eighty"}',
        b'{"port": -1}',
        b'{"port": 1.5}',
        b'{"port": NaN}',
        b'{"weight": Infinity}',
        b'{"host": 12}',
        b'{"host": {"value": "x"}}',
        b'{"metadata": {"k": 1}}',
        b'{"metadata": []}',
        b'{"healthy": "true"}',
        b'{"location": "here"}',
        b'{"location": ["r"]}',
        b'{"healthCheck": {"heartbeat": 5}}',
        b'{"port": 1' + b"0" * 5000 + b"}",
        b"[" * 100_000 + b"]" * 100_000,
    ],
)
def test_bodies_that_are_not_the_message_are_parse_exceptions(
    client: httpx.Client, body: bytes
) -> None:
    response = post(client, "RegisterInstance", body)
    assert code_of(response) == 400001
    assert response.json()["info"] == "request decode failed"  # the code's text alone


def test_parse_failures_come_as_a_response_on_every_route(client: httpx.Client) -> None:
    for route in http_api.ROUTES:
        response = client.post(route, content=b"{", headers=JSON_HEADERS)
        assert code_of(response) == 400001
        assert "instances" not in response.json()  # a v1.Response, as a real server sends


def test_decode_request_reads_what_jsonpb_reads() -> None:
    message = decode_request(
        b'{"type": "SERVICES", "service": {"name": "a", "metadata": {"k": null}}, "x": 1}',
        wire.DiscoverRequest,
    )
    assert message.type == wire.DISCOVER_REQUEST_TYPE.values_by_name["SERVICES"].number
    assert message.service.name.value == "a"
    assert dict(message.service.metadata) == {"k": ""}


# ---------------------------------------------------------- HTTP framing


@pytest.mark.parametrize("content_type", [None, "text/plain", "application/x-www-form-urlencoded"])
def test_a_body_that_is_not_declared_json_is_415(
    client: httpx.Client, content_type: str | None
) -> None:
    headers = {"Content-Type": content_type} if content_type else {}
    response = client.post("/v1/RegisterInstance", content=json.dumps(ECHO), headers=headers)
    assert response.status_code == 415
    assert response.headers["X-Polaris-Code"] == "400000"
    assert response.json()["code"] == 400000


@pytest.mark.parametrize("content_type", ["application/json; charset=utf-8", "Application/JSON"])
def test_json_media_type_with_parameters_or_any_case_is_accepted(
    client: httpx.Client, content_type: str
) -> None:
    response = client.post(
        "/v1/RegisterInstance", content=json.dumps(ECHO), headers={"Content-Type": content_type}
    )
    assert code_of(response) == 200000


def test_request_id_is_echoed(client: httpx.Client) -> None:
    assert post(client, "Heartbeat", ECHO, **{"Request-Id": "req-42"}).headers["Request-Id"] == (
        "req-42"
    )
    assert "Request-Id" not in post(client, "Heartbeat", ECHO).headers


def test_unknown_path_is_404_and_other_methods_405(client: httpx.Client) -> None:
    missing = client.post("/v1/Nothing", content=b"{}", headers=JSON_HEADERS)
    assert missing.status_code == 404 and missing.json()["code"] == 400000
    for method in ("GET", "PUT", "DELETE", "PATCH", "OPTIONS"):
        response = client.request(method, "/v1/Discover")
        assert response.status_code == 405, method
        assert response.headers["Allow"] == "POST"
    assert client.head("/v1/Discover").status_code == 405


def test_chunked_bodies_are_read(client: httpx.Client) -> None:
    data = json.dumps(ECHO).encode()
    chunks = iter([data[:10], data[10:20], data[20:]])
    response = client.post("/v1/RegisterInstance", content=chunks, headers=JSON_HEADERS)
    assert code_of(response) == 200000


def test_keep_alive_serves_many_requests_on_one_connection(
    server: PolarisServer, client: httpx.Client
) -> None:
    assert code_of(post(client, "RegisterInstance", ECHO)) == 200000
    for _ in range(20):
        assert code_of(post(client, "Heartbeat", ECHO)) == 200000
    assert server.open_http_connections == 1
    assert http_threads() == []  # connections live on the server's loop


# ----------------------------------------------------------------- bounds


@pytest.fixture
def small_server(no_thread_leak: None) -> Iterator[PolarisServer]:
    options = HttpOptions(
        max_connections=2, max_connections_per_address=2, max_body_bytes=2048, io_timeout=0.5
    )
    with PolarisServer(http_options=options) as running:
        yield running


def test_a_body_over_the_limit_is_413_and_the_connection_closes(
    small_server: PolarisServer,
) -> None:
    with http_client(small_server.http_address) as small:
        fits = {**ECHO, "metadata": {"k": "v" * 1500}}
        assert code_of(post(small, "RegisterInstance", fits)) == 200000
        too_big = {**ECHO, "metadata": {"k": "v" * 3000}}
        response = post(small, "RegisterInstance", too_big)
        assert response.status_code == 413
        assert response.headers["X-Polaris-Code"] == "400000"
        assert response.headers["Connection"] == "close"
        chunked = iter([json.dumps(too_big).encode()])
        response = small.post("/v1/RegisterInstance", content=chunked, headers=JSON_HEADERS)
        assert response.status_code == 413


def test_an_announced_oversized_body_is_refused_before_it_is_sent(
    small_server: PolarisServer,
) -> None:
    with connect(small_server) as sock:
        sock.sendall(
            b"POST /v1/RegisterInstance HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 100000000\r\nExpect: 100-continue\r\n\r\n"
        )
        answer = read_all(sock)
    assert answer.startswith(b"HTTP/1.1 413 ")
    assert b"100 Continue" not in answer


def test_connections_beyond_the_limit_are_turned_away_not_queued(
    small_server: PolarisServer,
) -> None:
    first, second = connect(small_server), connect(small_server)
    with first, second:
        # Both hold a worker: a request has started and is not finished.
        for sock in (first, second):
            sock.sendall(b"POST /v1/Heartbeat HTTP/1.1\r\n")
        wait_until(lambda: small_server.open_http_connections == 2, timeout=5)
        with connect(small_server) as third:
            assert read_all(third).startswith(b"HTTP/1.1 503 ")
    with http_client(small_server.http_address) as small:
        wait_until(lambda: post(small, "Heartbeat", ECHO).status_code == 200, timeout=10)


def test_an_idle_connection_is_closed_after_the_io_timeout(small_server: PolarisServer) -> None:
    with connect(small_server) as sock:
        assert read_all(sock) == b""  # the server closes it; the 10 s client timeout never hits


def test_a_client_trickling_a_request_is_cut_at_the_header_timeout(
    no_thread_leak: None,
) -> None:
    options = HttpOptions(io_timeout=0.5, header_timeout=1.5)
    with PolarisServer(http_options=options) as running, connect(running) as sock:
        sock.sendall(b"POST /v1/Heartbeat HTTP/1.1\r\nHost: x\r\nX-Padding: ")
        sent = 0

        def cut() -> bool:
            nonlocal sent
            try:
                sock.sendall(b"a")
                sent += 1
            except OSError:
                return True
            sock.settimeout(0.001)
            try:
                return sock.recv(1) == b""
            except TimeoutError:
                return False
            finally:
                sock.settimeout(SOCKET_TIMEOUT)

        # Each byte comes well within io_timeout, so only the header deadline can cut it.
        wait_until(cut, timeout=15, interval=0.1)
        assert sent > 5
        with http_client(running.http_address) as client:
            assert code_of(post(client, "Heartbeat", ECHO)) == 200000


def test_http_options_are_checked() -> None:
    for bad in (
        {"max_connections": 0},
        {"max_connections_per_address": 0},
        {"io_timeout": 0},
        {"header_timeout": 0},
        {"max_body_bytes": -1},
    ):
        with pytest.raises(ValueError):
            HttpOptions(**bad)


def test_http_status_is_the_code_over_a_thousand() -> None:
    assert [http_status(c) for c in (200000, 200001, 400202, 401002, 500001)] == [
        200,
        200,
        400,
        401,
        500,
    ]
    assert http_status(0) == 500 and http_status(9_999_999) == 500


# -------------------------------------------------------------- lifecycle


def test_stop_ends_keep_alive_connections_and_restart_uses_the_same_port(
    no_thread_leak: None,
) -> None:
    server = PolarisServer().start()
    port = server.http_port
    try:
        with http_client(server.http_address) as client:
            assert code_of(post(client, "RegisterInstance", ECHO)) == 200000
            assert server.open_http_connections == 1
            server.stop()
            assert server.open_http_connections == 0
            with pytest.raises(httpx.TransportError):
                post(client, "Discover", DISCOVER_ECHO)
            server.start()
            assert server.http_port == port
        with http_client(server.http_address) as client:
            assert len(post(client, "Discover", DISCOVER_ECHO).json()["instances"]) == 1
    finally:
        server.stop()


def test_a_failure_in_one_connection_ends_only_that_one(
    server: PolarisServer, mocker: Any, caplog: pytest.LogCaptureFixture
) -> None:
    # A failure no client can cause: a bug in the connection's own handling.
    real = http_api._Connection._handle
    failures = iter([RuntimeError("bug")])

    async def flaky(self: Any, request: Any) -> None:
        error = next(failures, None)
        if error is not None:
            raise error
        await real(self, request)

    mocker.patch.object(http_api._Connection, "_handle", flaky)
    with http_client(server.http_address) as broken, pytest.raises(httpx.TransportError):
        post(broken, "RegisterInstance", ECHO)
    assert "HTTP connection from" in caplog.text
    with http_client(server.http_address) as client:
        assert code_of(post(client, "RegisterInstance", ECHO)) == 200000


# ------------------------------------------------------------------ info


def test_info_is_the_codes_text_translated_by_lang_or_accept_language(
    client: httpx.Client,
) -> None:
    bad = {**ECHO, "namespace": "bad namespace!"}
    english = post(client, "RegisterInstance", bad)
    by_query = client.post(
        "/v1/RegisterInstance?lang=zh", content=json.dumps(bad), headers=JSON_HEADERS
    )
    by_header = post(client, "RegisterInstance", bad, **{"Accept-Language": "zh-CN,en;q=0.5"})
    query_wins = client.post(
        "/v1/RegisterInstance?lang=en",
        content=json.dumps(bad),
        headers={**JSON_HEADERS, "Accept-Language": "zh"},
    )
    unknown = post(client, "RegisterInstance", bad, **{"Accept-Language": "fr"})

    assert english.json()["info"] == "invalid namespace name"  # no detail from the server
    assert by_query.json()["info"] == by_header.json()["info"] == "命名空间名称非法"
    assert query_wins.json()["info"] == unknown.json()["info"] == "invalid namespace name"
    # The header stays English, and a success's info is not translated (as on a real server).
    assert by_query.headers["X-Polaris-Message"] == "invalid namespace name"
    ok = client.post("/v1/Heartbeat?lang=zh", content=json.dumps(ECHO), headers=JSON_HEADERS)
    assert ok.json()["info"] == "execute success"


def test_answers_are_indented_like_jsonpb(client: httpx.Client) -> None:
    text = post(client, "Heartbeat", ECHO).text
    assert text.startswith('{\n "code": ')
