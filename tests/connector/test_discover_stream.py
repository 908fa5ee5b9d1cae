"""The gRPC connector's shared Discover stream: timeouts, reconnects and failback.

Against the embedded server over real sockets. A server stalls by way of its
authorizer, which runs on the server's event loop: while it waits, the
server answers nothing at all.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from polaris_sdk import (
    InstanceRegisterRequest,
    PolarisTimeoutError,
    ResourceNotFoundError,
    ServiceKey,
)
from polaris_sdk.connector import GrpcConnector
from polaris_sdk.server import PolarisServer
from polaris_sdk.server.auth import Action, Resource
from polaris_sdk.server.naming import RequestContext
from tests.connector.servers import RecordingAuthorizer, fast_config
from tests.support import wait_until

ECHO = ServiceKey("default", "echo")
SLOW = ServiceKey("default", "slow")


class StallingAuthorizer(RecordingAuthorizer):
    """Holds the server's loop on every Discover of the service ``slow`` until released."""

    def __init__(self) -> None:
        super().__init__()
        self.stalled = threading.Event()
        self.release = threading.Event()

    def authorize(self, ctx: RequestContext, resource: Resource) -> int:
        if resource.action is Action.DISCOVER and resource.service == SLOW.service:
            self.stalled.set()
            self.release.wait(10)  # a liveness bound: the test releases it
        return super().authorize(ctx, resource)


@pytest.fixture
def stalling() -> Iterator[StallingAuthorizer]:
    auth = StallingAuthorizer()
    yield auth
    auth.release.set()


def register(connector: GrpcConnector, key: ServiceKey, port: int = 8080) -> None:
    req = InstanceRegisterRequest(service=key.service, host="127.0.0.1", port=port)
    connector.register_instance(req, None)


def streams_opened(auth: RecordingAuthorizer) -> int:
    """How many Discover streams the server saw: each carries its own request-id."""
    return len({c.request_id for c, r in auth.calls if r.action is Action.DISCOVER})


def test_a_caller_out_of_time_does_not_break_the_stream_for_the_others(
    no_thread_leak: None, stalling: StallingAuthorizer
) -> None:
    with PolarisServer(grpc_port=0, auth=stalling) as server:
        connector = GrpcConnector(fast_config(server.grpc_address))
        try:
            register(connector, ECHO)
            register(connector, SLOW)
            assert connector.discover_instances(ECHO) is not None  # the stream is open
            stalling.reset()
            impatient: list[BaseException] = []

            def ask_slow() -> None:
                try:
                    connector.discover_instances(SLOW, timeout=0.2)
                except BaseException as exc:
                    impatient.append(exc)

            first = threading.Thread(target=ask_slow, name="impatient-caller")
            first.start()
            assert stalling.stalled.wait(10)
            answer: list[object] = []
            second = threading.Thread(
                target=lambda: answer.append(connector.discover_instances(ECHO)),
                name="patient-caller",
            )
            second.start()
            first.join(10)
            # The impatient caller gave up; the stream stays, with the other's request on it.
            assert len(impatient) == 1 and isinstance(impatient[0], PolarisTimeoutError)
            stalling.release.set()
            second.join(10)
            assert len(answer) == 1 and answer[0] is not None
            # Both requests went out once, on the one stream opened at the start.
            assert len(stalling.actions(Action.DISCOVER)) == 2
            assert streams_opened(stalling) == 1
            assert server.open_discover_streams == 1
        finally:
            connector.close()


def test_a_stalled_stream_is_reopened(no_thread_leak: None, stalling: StallingAuthorizer) -> None:
    with PolarisServer(grpc_port=0, auth=stalling) as server:
        config = fast_config(
            server.grpc_address, **{"global.serverConnector.messageTimeout": "200ms"}
        )
        connector = GrpcConnector(config)
        try:
            register(connector, SLOW)
            with pytest.raises(PolarisTimeoutError):
                connector.discover_instances(SLOW, timeout=0.5)
            stalling.release.set()
            # Nothing came for longer than messageTimeout: the client gave the stream up...
            wait_until(lambda: server.open_discover_streams == 0)
            # ...and the next call opens another.
            assert connector.discover_instances(SLOW) is not None
            assert server.open_discover_streams == 1
        finally:
            connector.close()


def test_a_call_during_the_reconnect_backoff_waits_for_it(
    no_thread_leak: None, authorizer: RecordingAuthorizer
) -> None:
    with PolarisServer(grpc_port=0, auth=authorizer) as server:
        # Retries without a pause fall into the stream's reconnect backoff for sure.
        connector = GrpcConnector(
            fast_config(server.grpc_address, **{"global.api.retryInterval": 0})
        )
        try:
            register(connector, ECHO)
            assert connector.discover_instances(ECHO) is not None
            assert server.drop_discover_streams() == 1
            assert connector.discover_instances(ECHO) is not None
        finally:
            connector.close()


def test_the_stream_goes_back_to_the_first_address_once_it_is_up(no_thread_leak: None) -> None:
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
        connector = GrpcConnector(config)
        try:
            register(connector, ECHO)  # on the second address
            assert connector.discover_instances(ECHO) is not None
            assert second_auth.actions(Action.DISCOVER) and second.open_discover_streams == 1
            first.start()
            try:
                again = InstanceRegisterRequest(service=ECHO.service, host="127.0.0.1", port=8080)

                def discovered_on_first() -> bool:
                    # Every call succeeds, whichever address serves it.
                    connector.register_instance(again, None)
                    try:
                        assert connector.discover_instances(ECHO) is not None
                    except ResourceNotFoundError:
                        return False  # the first address took over between the two calls
                    return bool(first_auth.actions(Action.DISCOVER))

                wait_until(discovered_on_first, timeout=10, interval=0.05)
                on_first = len(first_auth.actions(Action.DISCOVER))
                on_second = len(second_auth.actions(Action.DISCOVER))
                assert connector.discover_instances(ECHO) is not None
                assert len(first_auth.actions(Action.DISCOVER)) == on_first + 1
                assert len(second_auth.actions(Action.DISCOVER)) == on_second
                # The stream on the second address was half-closed and has ended.
                wait_until(lambda: second.open_discover_streams == 0)
                assert first.open_discover_streams == 1
            finally:
                first.stop()
        finally:
            connector.close()
