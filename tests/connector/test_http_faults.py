"""The HTTP connector against answers a Polaris server never gives (proxies, wrong
ports, dropped connections), from a canned loopback server over real sockets."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator

import pytest
from google.protobuf import json_format

from polaris_sdk import (
    InstanceHeartbeatRequest,
    InstanceRegisterRequest,
    NetworkError,
    PolarisTimeoutError,
    ServiceKey,
    wire,
)
from polaris_sdk.connector import HttpConnector
from polaris_sdk.connector.http import code_for_status
from polaris_sdk.errors import BadRequestError, InvalidParameterError, ServerInternalError
from polaris_sdk.model import register_request_to_wire
from tests.connector.canned_http import Answer, CannedHttpServer
from tests.connector.servers import transport_config, unused_port

REQ = InstanceRegisterRequest(
    service="echo", host="127.0.0.1", port=8080, metadata={"env": "prod"}, weight=50
)
PROXY_PAGE = Answer(
    status=502, body=b"<html>Bad Gateway</html>", headers={"Content-Type": "text/html"}
)


@pytest.fixture
def canned(no_thread_leak: None) -> Iterator[CannedHttpServer]:
    with CannedHttpServer() as server:
        yield server


@pytest.fixture
def connector(canned: CannedHttpServer) -> Iterator[HttpConnector]:
    c = HttpConnector(transport_config("http", canned.address, token="s3cret-token"))
    yield c
    c.close()


def test_requests_are_the_wire_messages_as_json_with_the_polaris_headers(
    connector: HttpConnector, canned: CannedHttpServer
) -> None:
    connector.register_instance(REQ, 5)
    connector.register_instance(REQ, 5)
    first, second = canned.received
    assert (first.method, first.path) == ("POST", "/v1/RegisterInstance")
    assert first.headers["content-type"] == "application/json"
    assert first.headers["x-polaris-token"] == "s3cret-token"
    assert first.headers["user-agent"].startswith("polaris-sdk-python/")
    assert (
        first.headers["request-id"] and first.headers["request-id"] != second.headers["request-id"]
    )
    body = json.loads(first.body)
    # JSON names, wrappers as bare values: what a real server's jsonpb reads.
    assert body["service"] == "echo" and body["port"] == 8080 and body["weight"] == 50
    assert body["healthCheck"]["heartbeat"]["ttl"] == 5
    sent = json_format.Parse(first.body, wire.Instance(), descriptor_pool=wire.POOL)
    assert sent == register_request_to_wire(REQ, 5)


def test_discover_sends_the_revision_and_200001_means_unchanged(
    connector: HttpConnector, canned: CannedHttpServer
) -> None:
    canned.answer_next(Answer(body=b'{"code":200001,"type":"INSTANCE"}'))
    assert connector.discover_instances(ServiceKey("default", "echo"), "rev-7") is None
    (request,) = canned.received
    assert request.path == "/v1/Discover"
    body = json.loads(request.body)
    assert body["type"] == "INSTANCE"
    assert body["service"] == {"name": "echo", "namespace": "default", "revision": "rev-7"}


def test_answers_are_read_leniently(connector: HttpConnector, canned: CannedHttpServer) -> None:
    body = {
        "code": 200000,
        "info": "execute success",
        "type": "INSTANCE",
        "service": {"name": "echo", "namespace": "default", "revision": "r1", "newField": 1},
        "instances": [
            {
                "id": "i1",
                "host": "10.0.0.1",
                "port": 80,
                "weight": 7,
                "healthy": True,
                "isolate": None,
                "metadata": {"k": "v"},
                "someFutureField": {"x": [1]},
            },
        ],
        "aliasFor": None,
    }
    canned.answer_next(Answer(body=json.dumps(body).encode()))
    snapshot = connector.discover_instances(ServiceKey("default", "echo"))
    assert snapshot is not None and snapshot.revision == "r1"
    ((instance),) = snapshot
    assert (instance.id, instance.host, instance.port, instance.weight) == ("i1", "10.0.0.1", 80, 7)
    assert dict(instance.metadata) == {"k": "v"} and not instance.isolated


def test_a_body_without_a_code_falls_back_to_the_polaris_headers(
    connector: HttpConnector, canned: CannedHttpServer
) -> None:
    canned.answer_next(
        Answer(
            status=400,
            body=b"",
            headers={"X-Polaris-Code": "400120", "X-Polaris-Message": "invalid service name"},
        )
    )
    with pytest.raises(InvalidParameterError) as info:
        connector.register_instance(REQ, None)
    assert (info.value.code, info.value.info) == (400120, "invalid service name")
    assert len(canned.received) == 1  # a 4xxxxx answer is final


def test_a_proxy_error_page_is_a_retriable_server_failure(
    connector: HttpConnector, canned: CannedHttpServer
) -> None:
    canned.answer_next(PROXY_PAGE, PROXY_PAGE)
    assert connector.register_instance(REQ, None).instance_id
    assert len(canned.received) == 3
    canned.answer_next(*[PROXY_PAGE] * 4)
    with pytest.raises(ServerInternalError) as info:
        connector.register_instance(REQ, None)
    assert info.value.code == 500000 and "HTTP 502" in info.value.info


def test_a_port_that_is_not_the_http_api_is_a_clear_final_error(
    connector: HttpConnector, canned: CannedHttpServer
) -> None:
    canned.answer_next(Answer(status=404, body=b"404 page not found", headers={}))
    with pytest.raises(BadRequestError) as info:
        connector.heartbeat(InstanceHeartbeatRequest(service="echo", host="127.0.0.1", port=1))
    assert "HTTP 404" in str(info.value) and "without a Polaris code" in str(info.value)
    assert len(canned.received) == 1


def test_a_connection_dropped_mid_answer_is_retried(
    connector: HttpConnector, canned: CannedHttpServer
) -> None:
    canned.answer_next(Answer(drop=True))
    assert connector.register_instance(REQ, None).instance_id
    assert len(canned.received) == 2


def test_an_answer_that_never_comes_times_out_within_the_deadline(
    canned: CannedHttpServer,
) -> None:
    release = threading.Event()
    canned.answer_next(*[Answer(hold=release)] * 4)
    c = HttpConnector(
        transport_config(
            "http",
            canned.address,
            **{"global.api.timeout": "300ms", "global.serverConnector.messageTimeout": "200ms"},
        )
    )
    try:
        started = time.monotonic()
        with pytest.raises(PolarisTimeoutError):
            c.register_instance(REQ, None)
        assert time.monotonic() - started < 5  # a liveness bound, not a performance figure
    finally:
        release.set()
        c.close()


def test_a_dead_first_address_is_skipped(canned: CannedHttpServer) -> None:
    c = HttpConnector(transport_config("http", f"127.0.0.1:{unused_port()}", canned.address))
    try:
        for _ in range(3):
            c.register_instance(REQ, None)
    finally:
        c.close()
    # The dead address costs one refused connection, then is skipped.
    assert len(canned.received) == 3


def test_no_server_gives_a_network_error(no_thread_leak: None) -> None:
    c = HttpConnector(
        transport_config("http", f"127.0.0.1:{unused_port()}", **{"global.api.timeout": "1s"})
    )
    try:
        with pytest.raises(NetworkError, match=r"127\.0\.0\.1"):
            c.register_instance(REQ, None)
    finally:
        c.close()


@pytest.mark.parametrize(
    ("status", "code"),
    [
        (401, 401000),
        (403, 401001),
        (404, 400000),
        (413, 400000),
        (415, 400000),
        (429, 429001),
        (500, 500000),
        (502, 500000),
        (503, 500000),
        (200, 500000),
    ],
)
def test_statuses_without_a_code(status: int, code: int) -> None:
    assert code_for_status(status) == code
