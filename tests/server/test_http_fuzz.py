"""Property-based fuzzing of the HTTP API (hypothesis): no input makes it fail or stop.

Random JSON values, bodies shaped like the API's messages (real field names,
random values, nesting), random bytes, and random bytes on a raw socket are
sent to one server. Every API answer must be a 2xx/4xx with a Polaris code
in a JSON body, no error may reach the server's log, and the server must
keep answering a normal request afterwards. Examples are capped so the file
runs in seconds, and no example database is kept. Skipped when hypothesis
is not installed (it is in the ``dev`` extra).
"""

from __future__ import annotations

import json
import logging
import socket
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from polaris_sdk import wire
from polaris_sdk.server import PolarisServer
from polaris_sdk.server.apiserver.http import ROUTES, HttpOptions
from tests.server.httputil import JSON_HEADERS, code_of, http_client, post
from tests.support import assert_no_new_threads, live_threads

hypothesis = pytest.importorskip("hypothesis")
st = hypothesis.strategies

ECHO = {"namespace": "default", "service": "echo", "host": "10.0.0.1", "port": 8080}
SETTINGS = hypothesis.settings(
    deadline=None,
    database=None,
    suppress_health_check=[hypothesis.HealthCheck.function_scoped_fixture],
)


class _Errors(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture(scope="module")
def fuzzed() -> Iterator[tuple[PolarisServer, _Errors]]:
    before = live_threads()
    errors = _Errors()
    logger = logging.getLogger("polaris_sdk")
    logger.addHandler(errors)
    options = HttpOptions(max_body_bytes=64 * 1024, io_timeout=2.0, request_timeout=5.0)
    try:
        with PolarisServer(http_options=options) as server:
            yield server, errors
    finally:
        logger.removeHandler(errors)
    assert_no_new_threads(before)


@pytest.fixture
def client(fuzzed: tuple[PolarisServer, _Errors]) -> Iterator[httpx.Client]:
    server, errors = fuzzed
    errors.records.clear()
    with http_client(server.http_address) as c:
        yield c
        # After whatever came before, a normal request is still served.
        assert code_of(post(c, "RegisterInstance", ECHO)) == 200000
    assert not errors.records, [r.getMessage() for r in errors.records[:3]]


def _check(response: httpx.Response) -> None:
    assert response.status_code < 500, (response.status_code, response.text[:300])
    code = code_of(response)  # status, code and X-Polaris-* headers agree
    assert 200000 <= code < 500000


# ------------------------------------------------------------ strategies

_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=40)
)
json_values = st.recursive(
    _scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=16,
)
_enum_like = st.sampled_from(["INSTANCE", "SERVICES", "HEARTBEAT", "UNKNOWN", "NOPE", 0, 1, 2, 99])


def message_like(descriptor: Any, depth: int = 0) -> Any:
    """JSON objects using ``descriptor``'s field names (proto or JSON) with random values."""
    options = []
    for field in descriptor.fields:
        values = json_values | _enum_like
        message = field.message_type
        if message is not None and depth < 1 and not message.full_name.startswith("google."):
            if not message.GetOptions().map_entry:
                values = values | message_like(message, depth + 1)
            else:
                values = values | st.dictionaries(st.text(max_size=8), _scalars, max_size=4)
        elif message is not None and message.full_name.startswith("google.protobuf."):
            values = values | _scalars
        for name in {field.name, field.json_name}:
            options.append(st.tuples(st.just(name), values))
    pairs = st.lists(st.one_of(options) | st.tuples(st.text(max_size=8), json_values), max_size=6)
    return pairs.map(dict)


_routes = st.sampled_from(sorted(ROUTES))
_shaped = st.sampled_from(sorted(ROUTES)).flatmap(
    lambda route: st.tuples(st.just(route), message_like(ROUTES[route].request.DESCRIPTOR))
)


# ------------------------------------------------------------------ tests


@hypothesis.settings(SETTINGS, max_examples=250)
@hypothesis.given(route=_routes, body=json_values)
def test_random_json_never_fails_the_server(client: httpx.Client, route: str, body: Any) -> None:
    _check(client.post(route, content=json.dumps(body), headers=JSON_HEADERS))


@hypothesis.settings(SETTINGS, max_examples=200)
@hypothesis.given(shaped=_shaped)
def test_message_shaped_json_never_fails_the_server(
    client: httpx.Client, shaped: tuple[str, dict[str, Any]]
) -> None:
    route, body = shaped
    _check(client.post(route, content=json.dumps(body), headers=JSON_HEADERS))


@hypothesis.settings(SETTINGS, max_examples=200)
@hypothesis.given(route=_routes, body=st.binary(max_size=200))
def test_random_bytes_never_fail_the_server(client: httpx.Client, route: str, body: bytes) -> None:
    _check(client.post(route, content=body, headers=JSON_HEADERS))


_content_types = st.sampled_from(
    ["application/json", "text/plain", "application/json;;;", "application/jsonx", "json"]
) | st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=30)


@hypothesis.settings(SETTINGS, max_examples=100)
@hypothesis.given(route=_routes, content_type=_content_types, body=json_values)
def test_any_content_type_gets_an_answer(
    client: httpx.Client, route: str, content_type: str, body: Any
) -> None:
    response = client.post(route, content=json.dumps(body), headers={"Content-Type": content_type})
    assert response.status_code < 500
    assert "code" in response.json()


@hypothesis.settings(SETTINGS, max_examples=100)
@hypothesis.given(
    head=st.sampled_from([b"POST /v1/Discover HTTP/1.1\r\n", b"GET / HTTP/1.0\r\n", b""]),
    garbage=st.binary(max_size=300),
)
def test_garbage_on_the_socket_never_stops_the_server(
    client: httpx.Client, fuzzed: tuple[PolarisServer, _Errors], head: bytes, garbage: bytes
) -> None:
    server, _ = fuzzed
    with socket.create_connection(("127.0.0.1", server.http_port), timeout=10) as sock:
        sock.sendall(head + garbage + b"\r\n\r\n")
        sock.shutdown(socket.SHUT_WR)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    if answer:
        status = int(answer.split(b" ", 2)[1])
        # 505 is the one 5xx HTTP itself defines for a bad request line.
        assert status < 500 or status == 505, answer[:200]
    assert code_of(post(client, "Heartbeat", ECHO)) in (200000, 400202)


def test_the_fuzzed_routes_are_the_client_api() -> None:
    client_api = ("RegisterInstance", "DeregisterInstance", "Heartbeat", "Discover", "ReportClient")
    assert sorted(ROUTES) == sorted(f"/v1/{m}" for m in client_api)
    assert all(m in wire.POLARIS_GRPC_METHODS for m in client_api)
