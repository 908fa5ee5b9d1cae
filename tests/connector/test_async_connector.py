"""The asyncio connector on both transports, the mock transport and the connection state."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from polaris_sdk import (
    InstanceDeregisterRequest,
    InstanceHeartbeatRequest,
    InstanceRegisterRequest,
    ServiceKey,
    wire,
)
from polaris_sdk.connector import (
    Connection,
    ConnectionState,
    MockTransport,
    create_async_connector,
    create_connector,
)
from polaris_sdk.errors import (
    BadRequestError,
    ClosedError,
    NetworkError,
    ResourceNotFoundError,
    ServerInternalError,
)
from polaris_sdk.server import PolarisServer
from polaris_sdk.server.auth import Action
from tests.connector.servers import (
    TRANSPORTS,
    RecordingAuthorizer,
    address_of,
    transport_config,
    unused_port,
)

KEY = ServiceKey("default", "echo")


def _register(port: int = 8080) -> InstanceRegisterRequest:
    return InstanceRegisterRequest(namespace="default", service="echo", host="127.0.0.1", port=port)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_register_discover_heartbeat_deregister(
    server: PolarisServer, authorizer: RecordingAuthorizer, transport: str
) -> None:
    config = transport_config(transport, address_of(server, transport), token="s3cret-token")

    async def scenario() -> None:
        connector = create_async_connector(config)
        try:
            resp = await connector.register_instance(_register(), 5)
            snapshot = await connector.discover_instances(KEY)
            assert snapshot is not None
            assert [i.id for i in snapshot] == [resp.instance_id]
            # The same revision again: unchanged.
            assert await connector.discover_instances(KEY, snapshot.revision) is None
            key = {"namespace": "default", "service": "echo", "host": "127.0.0.1", "port": 8080}
            await connector.heartbeat(InstanceHeartbeatRequest(**key))
            await connector.deregister_instance(InstanceDeregisterRequest(**key))
            # Concurrent Discover calls share one stream and each gets its own answer.
            answers = await asyncio.gather(
                *(connector.discover_instances(ServiceKey("default", f"s{n}")) for n in range(20)),
                return_exceptions=True,
            )
            assert all(isinstance(a, ResourceNotFoundError) for a in answers)
        finally:
            await connector.aclose()
        with pytest.raises(ClosedError):
            await connector.discover_instances(KEY)

    asyncio.run(scenario())
    tokens = {ctx.token for ctx in authorizer.contexts()}
    assert tokens == {"s3cret-token"}
    assert len(authorizer.actions(Action.HEARTBEAT)) == 1


def test_the_async_discover_stream_reopens_after_it_is_dropped(server: PolarisServer) -> None:
    config = transport_config("grpc", server.grpc_address)

    async def scenario() -> None:
        connector = create_async_connector(config)
        try:
            await connector.register_instance(_register(), 5)
            assert await connector.discover_instances(KEY) is not None
            assert server.drop_discover_streams() == 1
            # The broken stream fails at most the call on it; retries open a new one.
            snapshot = await connector.discover_instances(KEY, timeout=5)
            assert snapshot is not None and len(snapshot) == 1
        finally:
            await connector.aclose()

    asyncio.run(scenario())


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_an_unreachable_server_is_a_network_error_and_suspends_the_connection(
    transport: str,
) -> None:
    states: list[ConnectionState] = []

    class Inline:
        def __init__(self, listener: Any) -> None:
            self.listener = listener

        def post(self, state: ConnectionState) -> None:
            states.append(state)

        def close(self) -> None:
            pass

    connection = Connection(Inline)
    connection.add_listener(lambda state: None)
    config = transport_config(transport, f"127.0.0.1:{unused_port()}")

    async def scenario() -> None:
        connector = create_async_connector(config, connection=connection)
        try:
            with pytest.raises(NetworkError):
                await connector.discover_instances(KEY, timeout=1)
        finally:
            await connector.aclose()

    asyncio.run(scenario())
    assert connection.state is ConnectionState.SUSPENDED
    assert states == [ConnectionState.SUSPENDED]
    connection.reached()
    assert states == [ConnectionState.SUSPENDED, ConnectionState.CONNECTED]


def test_a_mock_transport_answers_both_front_ends_and_is_retried_like_a_network() -> None:
    seen: list[str] = []
    failures = [NetworkError("first attempt lost")]

    def handler(method: str, request: Any) -> Any:
        seen.append(method)
        if failures:
            raise failures.pop()
        answer = wire.Response()
        answer.code.value = 200000
        return answer

    config = transport_config("grpc", "127.0.0.1:1", **{"global.api.retryInterval": "1ms"})
    mock = MockTransport(handler)
    connector = create_connector(config, transport=mock)
    resp = connector.register_instance(_register(), 5)
    assert resp.instance_id  # computed from the four fields, as a server would
    assert seen == ["RegisterInstance", "RegisterInstance"]  # the failure was retried

    async def handler_async(method: str, request: Any) -> Any:
        return handler(method, request)

    async def scenario() -> None:
        async_connector = create_async_connector(config, transport=MockTransport(handler_async))
        await async_connector.heartbeat(
            InstanceHeartbeatRequest(namespace="default", service="echo", host="h", port=1)
        )
        await async_connector.aclose()

    asyncio.run(scenario())
    assert seen[-1] == "Heartbeat"


def test_only_what_reached_a_server_counts_as_reaching_it() -> None:
    class Inline:
        def __init__(self, listener: Any) -> None:
            pass

        def post(self, state: ConnectionState) -> None:
            pass

        def close(self) -> None:
            pass

    outcomes: list[Exception] = []

    def handler(method: str, request: Any) -> Any:
        raise outcomes.pop(0)

    config = transport_config(
        "grpc", "127.0.0.1:1", **{"global.api.maxRetryTimes": 0, "global.api.timeout": "1s"}
    )
    connection = Connection(Inline)
    connector = create_connector(config, transport=MockTransport(handler), connection=connection)
    request = InstanceHeartbeatRequest(namespace="default", service="echo", host="h", port=1)

    def beat(error: Exception) -> None:
        outcomes.append(error)
        with pytest.raises(type(error)):
            connector.heartbeat(request)

    beat(NetworkError("refused"))
    assert connection.state is ConnectionState.SUSPENDED
    # A transport failure mapped to a 5xx code, or one refused before sending: no news.
    beat(ServerInternalError(500000, "stream reset"))
    held = NetworkError("the stream is in its backoff")
    held.not_sent = True
    beat(held)
    assert connection.state is ConnectionState.SUSPENDED
    # A server that refused the call was reached.
    beat(BadRequestError(400000, "UNIMPLEMENTED"))
    assert connection.state is ConnectionState.CONNECTED
