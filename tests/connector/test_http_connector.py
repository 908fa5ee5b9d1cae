"""The HTTP connector against the embedded server's HTTP API, over real sockets.

Mirrors test_grpc_connector.py; what only gRPC has (the shared Discover
stream) is replaced by what only HTTP has (no thread, a bounded pool).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from polaris_sdk import (
    ClosedError,
    InstanceDeregisterRequest,
    InstanceHeartbeatRequest,
    InstanceRegisterRequest,
    NetworkError,
    PolarisTimeoutError,
    ResourceNotFoundError,
    ServiceKey,
)
from polaris_sdk.connector import HttpConnector
from polaris_sdk.errors import (
    AuthError,
    HealthCheckDisabledError,
    InvalidParameterError,
    ServerInternalError,
)
from polaris_sdk.server import PolarisServer
from polaris_sdk.server.auth import Action
from polaris_sdk.validation import instance_id
from tests.connector.servers import (
    RecordingAuthorizer,
    address_of,
    transport_config,
    unused_port,
)
from tests.support import live_threads, wait_until

ECHO = ServiceKey("default", "echo")


def http_connector(*addresses: str, **settings: object) -> HttpConnector:
    return HttpConnector(transport_config("http", *addresses, **settings))


@pytest.fixture
def connector(server: PolarisServer) -> Iterator[HttpConnector]:
    c = http_connector(address_of(server, "http"), token="s3cret-token")
    yield c
    c.close()


def register(connector: HttpConnector, port: int = 8080, ttl: int | None = 5) -> str:
    req = InstanceRegisterRequest(service="echo", host="127.0.0.1", port=port, ttl=ttl)
    return connector.register_instance(req, ttl).instance_id


def test_register_discover_heartbeat_deregister(connector: HttpConnector) -> None:
    iid = register(connector)
    assert iid == instance_id("default", "echo", "127.0.0.1", 8080)
    snapshot = connector.discover_instances(ECHO)
    assert snapshot is not None
    assert [(i.id, i.host, i.port, i.ttl) for i in snapshot] == [(iid, "127.0.0.1", 8080, 5)]
    assert connector.discover_instances(ECHO, snapshot.revision) is None  # 200001
    connector.heartbeat(InstanceHeartbeatRequest(service="echo", host="127.0.0.1", port=8080))
    connector.deregister_instance(InstanceDeregisterRequest(instance_id=iid))
    after = connector.discover_instances(ECHO, snapshot.revision)
    assert after is not None and len(after) == 0
    connector.deregister_instance(InstanceDeregisterRequest(instance_id=iid))  # idempotent


def test_both_transports_see_the_same_server_state(
    connector: HttpConnector, server: PolarisServer
) -> None:
    from polaris_sdk.connector import GrpcConnector

    register(connector, 1)
    grpc = GrpcConnector(transport_config("grpc", address_of(server, "grpc")))
    try:
        by_grpc = grpc.discover_instances(ECHO)
        by_http = connector.discover_instances(ECHO)
        assert by_grpc is not None and by_http is not None
        assert by_grpc.revision == by_http.revision
        assert by_grpc.instances == by_http.instances
    finally:
        grpc.close()


def test_unknown_service_raises_resource_not_found(connector: HttpConnector) -> None:
    with pytest.raises(ResourceNotFoundError) as info:
        connector.discover_instances(ServiceKey("default", "nobody"))
    assert info.value.code == 400202


def test_headers_carry_token_request_id_and_user_agent_and_no_log_shows_the_token(
    connector: HttpConnector, authorizer: RecordingAuthorizer, caplog: pytest.LogCaptureFixture
) -> None:
    # The root logger at DEBUG: httpx's and httpcore's own records are captured too.
    with caplog.at_level(logging.DEBUG):
        register(connector)
        register(connector)
        connector.discover_instances(ECHO)
    contexts = authorizer.contexts()
    assert len(contexts) == 3
    assert all(c.token == "s3cret-token" for c in contexts)
    request_ids = [c.request_id for c in contexts]
    assert all(request_ids) and len(set(request_ids)) == 3
    assert all("polaris-sdk-python" in c.user_agent for c in contexts)
    assert any(r.name.startswith("httpx") for r in caplog.records)  # the capture worked
    assert "s3cret-token" not in caplog.text


def test_no_token_header_without_a_token(
    server: PolarisServer, authorizer: RecordingAuthorizer
) -> None:
    c = http_connector(address_of(server, "http"))
    try:
        register(c)
    finally:
        c.close()
    assert authorizer.contexts()[0].token == ""


def test_4xx_answers_are_not_retried(
    connector: HttpConnector, authorizer: RecordingAuthorizer
) -> None:
    authorizer.answer_next(401000)
    with pytest.raises(AuthError):
        register(connector)
    assert len(authorizer.actions(Action.REGISTER)) == 1
    bad = InstanceRegisterRequest(service="bad name!", host="h", port=1)
    with pytest.raises(InvalidParameterError) as info:
        connector.register_instance(bad, None)
    assert info.value.code == 400120
    assert len(authorizer.calls) == 2


def test_5xx_answers_are_retried_until_success(
    connector: HttpConnector, authorizer: RecordingAuthorizer
) -> None:
    authorizer.answer_next(500000, 500001)
    assert register(connector)
    assert len(authorizer.actions(Action.REGISTER)) == 3


def test_retries_stop_after_max_retry_times(
    server: PolarisServer, authorizer: RecordingAuthorizer
) -> None:
    c = http_connector(address_of(server, "http"), **{"global.api.maxRetryTimes": 1})
    try:
        authorizer.answer_next(500000, 500000, 500000)
        with pytest.raises(ServerInternalError):
            register(c)
    finally:
        c.close()
    assert len(authorizer.actions(Action.REGISTER)) == 2


def test_heartbeat_on_a_server_without_health_checks(no_thread_leak: None) -> None:
    with PolarisServer(grpc_port=0, health_check=False) as server:
        c = http_connector(address_of(server, "http"))
        try:
            register(c)
            with pytest.raises(HealthCheckDisabledError):
                c.heartbeat(InstanceHeartbeatRequest(service="echo", host="127.0.0.1", port=8080))
        finally:
            c.close()


def test_first_address_dead_calls_succeed_on_the_second(
    server: PolarisServer, authorizer: RecordingAuthorizer
) -> None:
    c = http_connector(f"127.0.0.1:{unused_port()}", address_of(server, "http"))
    try:
        for port in range(8080, 8085):
            register(c, port)
        snapshot = c.discover_instances(ECHO)
        assert snapshot is not None and len(snapshot) == 5
    finally:
        c.close()
    assert len(authorizer.actions(Action.REGISTER)) == 5


def test_going_back_to_the_first_address_once_it_is_up(no_thread_leak: None) -> None:
    first_auth, second_auth = RecordingAuthorizer(), RecordingAuthorizer()
    first = PolarisServer(grpc_port=0, auth=first_auth).start()
    first_address = address_of(first, "http")
    first.stop()  # the port is known now; nothing listens on it
    with PolarisServer(grpc_port=0, auth=second_auth) as second:
        c = http_connector(
            first_address,
            address_of(second, "http"),
            **{"global.serverConnector.failbackInterval": "200ms"},
        )
        try:
            register(c, 1)
            assert len(second_auth.calls) == 1 and not first_auth.calls
            first.start()
            try:

                def served_by_first() -> bool:
                    register(c, 2)
                    return bool(first_auth.calls)

                wait_until(served_by_first, timeout=10, interval=0.05)
            finally:
                first.stop()
        finally:
            c.close()


def test_no_server_gives_a_clear_error_within_the_timeout(no_thread_leak: None) -> None:
    c = http_connector(
        f"127.0.0.1:{unused_port()}",
        f"127.0.0.1:{unused_port()}",
        **{"global.api.timeout": "1s"},
    )
    outcome: list[BaseException] = []

    def call() -> None:
        try:
            register(c)
        except BaseException as exc:
            outcome.append(exc)

    worker = threading.Thread(target=call)
    worker.start()
    worker.join(15)  # a liveness bound, not a performance figure
    c.close()
    assert not worker.is_alive(), "the call hung past its deadline"
    assert len(outcome) == 1
    assert isinstance(outcome[0], NetworkError)
    assert "127.0.0.1" in str(outcome[0])


def test_a_blackholed_call_times_out(
    server: PolarisServer, authorizer: RecordingAuthorizer
) -> None:
    # Every request is held until released; unlike the gRPC server's single
    # loop, the HTTP server would answer a retry on another worker at once.
    release = threading.Event()
    original = authorizer.authorize

    def stall(ctx, resource):  # type: ignore[no-untyped-def]
        release.wait(5)
        return original(ctx, resource)

    authorizer.authorize = stall  # type: ignore[method-assign]
    c = http_connector(
        address_of(server, "http"),
        **{"global.api.timeout": "300ms", "global.serverConnector.messageTimeout": "200ms"},
    )
    try:
        with pytest.raises(PolarisTimeoutError):
            register(c)
        release.set()
        assert register(c)
    finally:
        release.set()
        c.close()


def test_concurrent_discovers_get_their_own_answer_without_a_thread_of_ours(
    connector: HttpConnector,
) -> None:
    services = [f"svc-{i}" for i in range(8)]
    for index, name in enumerate(services):
        for port in range(index + 1):
            req = InstanceRegisterRequest(service=name, host="127.0.0.1", port=9000 + port)
            connector.register_instance(req, None)

    def client_threads() -> set[threading.Thread]:
        # The server's HTTP workers come and go with the connections; the rest is ours.
        return {
            t
            for t in live_threads()
            if t.name.startswith("polaris") and not t.name.startswith("polaris-http")
        }

    before = client_threads()
    errors: list[BaseException] = []

    def worker(index: int) -> None:
        try:
            for _ in range(20):
                snap = connector.discover_instances(ServiceKey("default", services[index]))
                assert snap is not None
                assert snap.service == services[index]
                assert len(snap) == index + 1
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(services))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors, errors[:3]
    assert not any(t.name == "polaris-discover" for t in threading.enumerate())
    assert client_threads() == before


def test_discover_survives_a_server_restart(
    connector: HttpConnector, server: PolarisServer
) -> None:
    register(connector)
    assert connector.discover_instances(ECHO) is not None
    server.stop()
    with pytest.raises(NetworkError):
        connector.discover_instances(ECHO, timeout=0.5)
    server.start()

    def listed() -> bool:
        try:
            return connector.discover_instances(ECHO) is not None
        except NetworkError:
            return False

    wait_until(listed, timeout=10, interval=0.05)


def test_report_client(connector: HttpConnector, authorizer: RecordingAuthorizer) -> None:
    connector.report_client("127.0.0.1", "1.0")
    assert authorizer.actions(Action.REPORT_CLIENT)


def test_close_refuses_calls(connector: HttpConnector) -> None:
    register(connector)
    connector.discover_instances(ECHO)
    connector.close()
    connector.close()
    assert connector.closed
    with pytest.raises(ClosedError):
        register(connector)
    with pytest.raises(ClosedError):
        connector.discover_instances(ECHO)


def test_protocol_http_selects_this_transport(
    server: PolarisServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from polaris_sdk import SDKContext
    from polaris_sdk.connector import GrpcConnector, create_connector

    c = create_connector(transport_config("http", address_of(server, "http")))
    assert isinstance(c, HttpConnector)
    c.close()
    monkeypatch.chdir(tmp_path)  # no polaris.yaml
    monkeypatch.delenv("POLARIS_CONFIG", raising=False)
    monkeypatch.setenv("POLARIS_PROTOCOL", "http")
    monkeypatch.setenv("POLARIS_ADDRESSES", address_of(server, "http"))
    with SDKContext.create() as ctx:
        assert isinstance(ctx.connector, HttpConnector)
        req = InstanceRegisterRequest(service="echo", host="h", port=1)
        ctx.connector.register_instance(req, None)
    monkeypatch.delenv("POLARIS_PROTOCOL")
    with SDKContext.create(addresses=[address_of(server, "grpc")]) as ctx:
        assert isinstance(ctx.connector, GrpcConnector)
