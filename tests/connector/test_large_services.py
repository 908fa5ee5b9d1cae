"""Services whose Discover answer is over gRPC's default message limit (4 MB).

20,000 instances with a little metadata make an answer of about 5 MB, which
a channel with gRPC's defaults refuses (RESOURCE_EXHAUSTED). The instances
are written straight into the embedded server's naming service (the wire
path of a registration is covered elsewhere); the Discover goes over real
sockets.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from polaris_sdk import ServiceKey, wire
from polaris_sdk.connector import create_connector
from polaris_sdk.connector import grpc as grpc_connector
from polaris_sdk.errors import BadRequestError
from polaris_sdk.server import PolarisServer
from polaris_sdk.server.auth import Action
from tests.connector.servers import (
    TRANSPORTS,
    RecordingAuthorizer,
    address_of,
    fast_config,
    transport_config,
)

BIG = ServiceKey("default", "big")
SMALL = ServiceKey("default", "small")
GRPC_DEFAULT_LIMIT = 4 * 1024 * 1024
LIVENESS = {"global.api.timeout": "60s"}
"""A bound on a call that must succeed, not a performance figure."""


def fill(server: PolarisServer, key: ServiceKey, count: int) -> None:
    for i in range(count):
        instance = wire.Instance(
            namespace=wire.StringValue(value=key.namespace),
            service=wire.StringValue(value=key.service),
            host=wire.StringValue(value=f"10.{i >> 16}.{(i >> 8) & 255}.{i & 255}"),
            port=wire.UInt32Value(value=8080),
            protocol=wire.StringValue(value="grpc"),
            version=wire.StringValue(value="1.0.0"),
        )
        instance.metadata["env"] = "prod"
        answer = server.naming.register_instance(instance)
        assert answer.code.value == 200000, answer


def answer_size(server: PolarisServer, key: ServiceKey) -> int:
    request = wire.DiscoverRequest(
        service=wire.Service(
            name=wire.StringValue(value=key.service),
            namespace=wire.StringValue(value=key.namespace),
        )
    )
    request.type = wire.DISCOVER_REQUEST_TYPE.values_by_name["INSTANCE"].number
    return int(server.naming.discover(request).ByteSize())


@pytest.fixture(params=TRANSPORTS)
def transport(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def big_server(no_thread_leak: None) -> Iterator[PolarisServer]:
    with PolarisServer(grpc_port=0, http_port=0) as server:
        fill(server, BIG, 20_000)
        yield server


def test_a_service_over_grpcs_default_message_limit_is_discovered(
    big_server: PolarisServer, transport: str
) -> None:
    assert answer_size(big_server, BIG) > GRPC_DEFAULT_LIMIT  # the case this test is about
    connector = create_connector(
        transport_config(transport, address_of(big_server, transport), **LIVENESS)
    )
    try:
        snapshot = connector.discover_instances(BIG)
        assert snapshot is not None and len(snapshot) == 20_000
        assert connector.discover_instances(BIG, snapshot.revision) is None
    finally:
        connector.close()


def test_an_answer_over_the_limit_fails_at_once_and_spares_the_stream(
    no_thread_leak: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A lowered limit stands for the server's own or any limit a channel may have.
    monkeypatch.setattr(grpc_connector, "MAX_RECEIVE_MESSAGE_LENGTH", 64 * 1024)
    authorizer = RecordingAuthorizer()
    with PolarisServer(grpc_port=0, auth=authorizer) as server:
        fill(server, BIG, 1_000)
        fill(server, SMALL, 1)
        assert answer_size(server, BIG) > 64 * 1024
        connector = create_connector(
            fast_config(server.grpc_address, **{"global.api.retryInterval": 0})
        )
        try:
            with pytest.raises(BadRequestError) as info:
                connector.discover_instances(BIG)
            assert "size limit" in str(info.value)
            # Not retried: the same request would get the same answer.
            assert len(authorizer.actions(Action.DISCOVER)) == 1
            # The address is not taken for down, and the next call needs no backoff.
            assert not any(ep.down_until for ep in connector.transport.endpoints)
            snapshot = connector.discover_instances(SMALL)
            assert snapshot is not None and len(snapshot) == 1
            assert len(authorizer.actions(Action.DISCOVER)) == 2
        finally:
            connector.close()
