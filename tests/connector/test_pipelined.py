"""Begun calls (``NamingConnector.begin*``): several on the wire before any is waited for.

The scheduler pipelines the revision checks and heartbeats due in one slot
this way; each begun call must still get its own answer, judged, recorded
and retried exactly like a blocking one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from polaris_sdk import (
    ClosedError,
    InstanceHeartbeatRequest,
    InstanceRegisterRequest,
    NetworkError,
    ResourceNotFoundError,
    ServiceKey,
)
from polaris_sdk.connector import NamingConnector, create_connector
from polaris_sdk.connector.calls import Call
from polaris_sdk.server import PolarisServer
from tests.connector.servers import TRANSPORTS, address_of, fast_config, transport_config


@pytest.fixture(params=TRANSPORTS)
def connector(server: PolarisServer, request: pytest.FixtureRequest) -> Iterator[NamingConnector]:
    c = create_connector(transport_config(request.param, address_of(server, request.param)))
    yield c
    c.close()


@pytest.fixture
def server(no_thread_leak: None) -> Iterator[PolarisServer]:
    with PolarisServer(grpc_port=0, http_port=0) as s:
        yield s


def test_begun_calls_each_get_their_own_answer(connector: NamingConnector) -> None:
    keys = [ServiceKey("default", f"pipelined-{n}") for n in range(5)]
    for n, key in enumerate(keys):
        for port in range(n + 1):
            req = InstanceRegisterRequest(service=key.service, host="127.0.0.1", port=9000 + port)
            connector.register_instance(req, 5)
    beat = InstanceHeartbeatRequest(service=keys[0].service, host="127.0.0.1", port=9000)
    waits: list[Callable[[], Any]] = []
    for key in keys:
        waits.append(connector.begin_discover(key))
        waits.append(connector.begin_heartbeat(beat))
    waits.append(connector.begin_discover(ServiceKey("default", "pipelined-unknown")))
    # Waited for newest first, as the scheduler does.
    with pytest.raises(ResourceNotFoundError):
        waits.pop()()
    answers = [wait() for wait in reversed(waits)][::-1]
    snapshots = answers[0::2]
    assert [len(s) for s in snapshots] == [1, 2, 3, 4, 5]
    assert [s.service for s in snapshots] == [k.service for k in keys]
    assert answers[1::2] == [None] * len(keys)  # the heartbeats: no value, no error
    # Unchanged revisions, begun together: 200001 each.
    unchanged = [
        connector.begin_discover(k, s.revision) for k, s in zip(keys, snapshots, strict=True)
    ]
    assert [wait() for wait in unchanged] == [None] * len(keys)


def test_a_call_begun_on_a_closed_connector_raises_when_waited(
    connector: NamingConnector,
) -> None:
    connector.close()
    wait = connector.begin_discover(ServiceKey("default", "echo"))  # does not raise here
    with pytest.raises(ClosedError):
        wait()


class _FlakyBegin:
    """A transport whose first begun exchange fails to reach the server."""

    def __init__(self, real: Any) -> None:
        self.real = real
        self.attempts = 0

    def begin(self, call: Call, timeout: float) -> Callable[[], Any]:
        self.attempts += 1

        def unreachable() -> Any:
            raise NetworkError("injected: connection reset")

        return unreachable

    def exchange(self, call: Call, timeout: float) -> Any:
        self.attempts += 1
        return self.real.exchange(call, timeout)

    def close(self) -> None:
        self.real.close()


def test_a_begun_call_that_fails_is_retried_like_a_blocking_one(server: PolarisServer) -> None:
    real = create_connector(fast_config(server.grpc_address))
    flaky = _FlakyBegin(real.transport)
    connector = NamingConnector(fast_config(server.grpc_address), flaky)  # type: ignore[arg-type]
    try:
        req = InstanceRegisterRequest(service="echo", host="127.0.0.1", port=9000)
        registered = connector.begin_register(req, 5)()
        assert registered.instance_id
        assert flaky.attempts == 2  # the failed first attempt, then one retry
    finally:
        connector.close()
