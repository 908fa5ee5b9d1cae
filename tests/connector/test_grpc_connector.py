"""The gRPC connector against the embedded server, over real sockets."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

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
from polaris_sdk.config import Configuration
from polaris_sdk.connector import GrpcConnector, create_async_connector
from polaris_sdk.connector.retry import is_retriable
from polaris_sdk.errors import (
    AuthError,
    HealthCheckDisabledError,
    InvalidParameterError,
    ServerInternalError,
)
from polaris_sdk.server import PolarisServer
from polaris_sdk.server.auth import Action
from polaris_sdk.validation import instance_id
from tests.connector.servers import RecordingAuthorizer, fast_config, unused_port
from tests.frontends import FRONTS, Blocking, LoopThread
from tests.support import wait_until

ECHO = ServiceKey("default", "echo")
DEADLINE_GRACE = 1.0
"""Scheduling slack allowed past a call's deadline before it counts as a hang."""


def register(
    connector: Any, port: int = 8080, ttl: int | None = 5, timeout: float | None = None
) -> str:
    req = InstanceRegisterRequest(service="echo", host="127.0.0.1", port=port, ttl=ttl)
    return str(connector.register_instance(req, ttl, timeout=timeout).instance_id)


def test_register_discover_heartbeat_deregister(connector: GrpcConnector) -> None:
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


def test_unknown_service_raises_resource_not_found(connector: GrpcConnector) -> None:
    with pytest.raises(ResourceNotFoundError) as info:
        connector.discover_instances(ServiceKey("default", "nobody"))
    assert info.value.code == 400202


def test_metadata_carries_token_request_id_and_user_agent(
    connector: GrpcConnector, authorizer: RecordingAuthorizer, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG, logger="polaris_sdk"):
        register(connector)
        register(connector)
        connector.discover_instances(ECHO)
    contexts = authorizer.contexts()
    assert len(contexts) == 3
    assert all(c.token == "s3cret-token" for c in contexts)
    request_ids = [c.request_id for c in contexts]
    assert all(request_ids) and len(set(request_ids)) == 3
    assert all("polaris-sdk-python" in c.user_agent for c in contexts)
    assert "s3cret-token" not in caplog.text


def test_no_token_header_without_a_token(
    server: PolarisServer, authorizer: RecordingAuthorizer
) -> None:
    c = GrpcConnector(fast_config(server.grpc_address))
    try:
        register(c)
    finally:
        c.close()
    assert authorizer.contexts()[0].token == ""


def test_4xx_answers_are_not_retried(
    connector: GrpcConnector, authorizer: RecordingAuthorizer
) -> None:
    authorizer.answer_next(401000)
    with pytest.raises(AuthError):
        register(connector)
    assert len(authorizer.actions(Action.REGISTER)) == 1
    # A request the server rejects (validation skipped on purpose).
    bad = InstanceRegisterRequest(service="bad name!", host="h", port=1)
    with pytest.raises(InvalidParameterError) as info:
        connector.register_instance(bad, None)
    assert info.value.code == 400120
    assert len(authorizer.calls) == 2


def test_5xx_answers_are_retried_until_success(
    connector: GrpcConnector, authorizer: RecordingAuthorizer
) -> None:
    authorizer.answer_next(500000, 500001)
    iid = register(connector)
    assert iid
    assert len(authorizer.actions(Action.REGISTER)) == 3


def test_retries_stop_after_max_retry_times(
    server: PolarisServer, authorizer: RecordingAuthorizer
) -> None:
    c = GrpcConnector(fast_config(server.grpc_address, **{"global.api.maxRetryTimes": 1}))
    try:
        authorizer.answer_next(500000, 500000, 500000)
        with pytest.raises(ServerInternalError):
            register(c)
    finally:
        c.close()
    assert len(authorizer.actions(Action.REGISTER)) == 2


def test_heartbeat_on_a_server_without_health_checks(no_thread_leak: None) -> None:
    with PolarisServer(grpc_port=0, health_check=False) as server:
        c = GrpcConnector(fast_config(server.grpc_address))
        try:
            register(c)
            with pytest.raises(HealthCheckDisabledError):
                c.heartbeat(InstanceHeartbeatRequest(service="echo", host="127.0.0.1", port=8080))
        finally:
            c.close()


def test_first_address_dead_calls_succeed_on_the_second(
    server: PolarisServer, authorizer: RecordingAuthorizer
) -> None:
    dead = f"127.0.0.1:{unused_port()}"
    c = GrpcConnector(fast_config(dead, server.grpc_address))
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
    first_address = first.grpc_address
    first.stop()  # the port is known now; nothing listens on it
    with PolarisServer(grpc_port=0, auth=second_auth) as second:
        config = fast_config(
            first_address,
            second.grpc_address,
            **{"global.serverConnector.failbackInterval": "200ms"},
        )
        c = GrpcConnector(config)
        try:
            register(c, 1)
            assert len(second_auth.calls) == 1 and not first_auth.calls
            first.start()
            try:
                # After the failback interval the first address is preferred again.
                def served_by_first() -> bool:
                    register(c, 2)
                    return bool(first_auth.calls)

                wait_until(served_by_first, timeout=10, interval=0.05)
            finally:
                first.stop()
        finally:
            c.close()


def test_no_server_gives_a_clear_error_within_the_timeout(no_thread_leak: None) -> None:
    c = GrpcConnector(
        fast_config(
            f"127.0.0.1:{unused_port()}",
            f"127.0.0.1:{unused_port()}",
            **{"global.api.timeout": "1s"},
        )
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
    # The authorizer blocks the server's loop: the request is never answered in time.
    release = threading.Event()
    blocked = threading.Event()
    original = authorizer.authorize

    def stall(ctx, resource):  # type: ignore[no-untyped-def]
        if not blocked.is_set():
            blocked.set()
            release.wait(5)
        return original(ctx, resource)

    authorizer.authorize = stall  # type: ignore[method-assign]
    c = GrpcConnector(
        fast_config(
            server.grpc_address,
            **{"global.api.timeout": "300ms", "global.serverConnector.messageTimeout": "200ms"},
        )
    )
    try:
        with pytest.raises(PolarisTimeoutError):
            register(c)
        release.set()
        assert register(c)
    finally:
        release.set()
        c.close()


def test_concurrent_discovers_share_one_stream_and_get_their_own_answer(
    connector: GrpcConnector,
) -> None:
    services = [f"svc-{i}" for i in range(8)]
    for index, name in enumerate(services):
        for port in range(index + 1):
            req = InstanceRegisterRequest(service=name, host="127.0.0.1", port=9000 + port)
            connector.register_instance(req, None)
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
    readers = [t for t in threading.enumerate() if t.name == "polaris-discover"]
    assert len(readers) == 1


def test_discover_stream_reopens_after_it_is_dropped(
    connector: GrpcConnector, server: PolarisServer
) -> None:
    register(connector)
    assert connector.discover_instances(ECHO) is not None
    assert server.drop_discover_streams() == 1
    # The next call finds the stream broken and opens a new one (retried).
    wait_until(lambda: connector.discover_instances(ECHO) is not None, timeout=10)


def test_discover_survives_a_server_restart(
    connector: GrpcConnector, server: PolarisServer
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


def test_report_client(connector: GrpcConnector, authorizer: RecordingAuthorizer) -> None:
    connector.report_client("127.0.0.1", "1.0")
    assert authorizer.actions(Action.REPORT_CLIENT)


def test_close_ends_the_stream_thread_and_refuses_calls(connector: GrpcConnector) -> None:
    register(connector)
    connector.discover_instances(ECHO)
    connector.close()
    connector.close()
    assert connector.closed
    with pytest.raises(ClosedError):
        register(connector)
    with pytest.raises(ClosedError):
        connector.discover_instances(ECHO)
    wait_until(lambda: not any(t.name == "polaris-discover" for t in threading.enumerate()))


def test_retriable_failures() -> None:
    assert is_retriable(NetworkError("x"))
    assert is_retriable(PolarisTimeoutError("x"))
    assert is_retriable(ServerInternalError(500000))
    assert not is_retriable(InvalidParameterError(400120))
    assert not is_retriable(ResourceNotFoundError(400202))
    assert not is_retriable(ValueError("x"))


@pytest.mark.parametrize("call", ["register", "discover"])
def test_every_call_has_a_deadline_even_without_a_timeout_argument(
    server: PolarisServer, authorizer: RecordingAuthorizer, call: str
) -> None:
    api_timeout = 1.5
    c = GrpcConnector(fast_config(server.grpc_address, **{"global.api.timeout": f"{api_timeout}s"}))
    release = threading.Event()
    original = authorizer.authorize

    def stall(ctx, resource):  # type: ignore[no-untyped-def]
        release.wait(10)  # holds the server's event loop: nothing is answered meanwhile
        return original(ctx, resource)

    try:
        register(c)  # connected, with the Discover stream open too
        assert c.discover_instances(ECHO) is not None
        authorizer.authorize = stall  # type: ignore[method-assign]
        started = time.monotonic()
        with pytest.raises(PolarisTimeoutError):
            if call == "register":
                register(c)
            else:
                c.discover_instances(ECHO)
        elapsed = time.monotonic() - started
    finally:
        release.set()
        c.close()
    # The configured deadline: not messageTimeout (1 s) alone, and not forever.
    assert api_timeout - 0.1 <= elapsed < api_timeout + DEADLINE_GRACE, elapsed


# ------------------------------------------------- a channel in its backoff

ONE_ATTEMPT = {"global.api.maxRetryTimes": 0, "global.serverConnector.messageTimeout": "10s"}
"""No retries: what one attempt does is what the call does."""


def _connector(front: str, config: Configuration, request: pytest.FixtureRequest) -> Any:
    """A gRPC connector of ``front``, called as a blocking one (closed by the caller)."""
    if front == "sync":
        return GrpcConnector(config)
    loop: LoopThread = request.getfixturevalue("event_loop_thread")

    async def make() -> Any:
        return create_async_connector(config)

    return Blocking(loop.run(make()), loop)


def _refused_for_a_while(connector: Any, seconds: float) -> None:
    """Calls on a server that is down, for ``seconds``: the channel's reconnect
    backoff grows to its longest (gRPC's own timer; nothing here waits on it)."""
    until = time.monotonic() + seconds
    while time.monotonic() < until:
        with pytest.raises(NetworkError):
            register(connector, 9, timeout=0.3)


@pytest.mark.parametrize("front", FRONTS)
def test_one_attempt_just_after_a_restart_waits_for_the_channel_to_connect(
    front: str, no_thread_leak: None, request: pytest.FixtureRequest
) -> None:
    server = PolarisServer(grpc_port=0).start()
    connector = _connector(front, fast_config(server.grpc_address, **ONE_ATTEMPT), request)
    try:
        register(connector, 1)
        server.stop()
        _refused_for_a_while(connector, 3.0)
        server.start()
        # The channel is still in its backoff (up to 2 s): the one attempt waits
        # for it to connect instead of failing on it.
        assert register(connector, 2)
    finally:
        connector.close()
        server.stop()


@pytest.mark.parametrize("front", FRONTS)
def test_a_wait_for_a_down_address_ends_by_naming_why_it_is_down(
    front: str, no_thread_leak: None, request: pytest.FixtureRequest
) -> None:
    config = fast_config(
        f"127.0.0.1:{unused_port()}",
        **{**ONE_ATTEMPT, "global.serverConnector.messageTimeout": "300ms"},
    )
    connector = _connector(front, config, request)
    try:
        with pytest.raises(NetworkError, match="UNAVAILABLE") as refused:
            register(connector)
        assert not isinstance(refused.value, PolarisTimeoutError)  # refused: at once
        with pytest.raises(PolarisTimeoutError) as waited:
            register(connector)
        assert "down since UNAVAILABLE" in str(waited.value)
    finally:
        connector.close()
