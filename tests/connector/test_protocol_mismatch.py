"""An SDK pointed at the other API's port says so on the first answer, without retrying."""

from __future__ import annotations

import asyncio

import pytest

from polaris_sdk import ProtocolMismatchError, ServiceKey
from polaris_sdk.connector import create_async_connector, create_connector
from polaris_sdk.server import PolarisServer
from polaris_sdk.server.auth import Action
from tests.connector.servers import RecordingAuthorizer, address_of, transport_config

KEY = ServiceKey("default", "echo")
# The transport, and the other transport's port it is pointed at.
MISMATCHES = [("grpc", "http"), ("http", "grpc")]


@pytest.mark.parametrize(("transport", "port_of"), MISMATCHES)
def test_the_wrong_port_is_named_at_once(
    server: PolarisServer, authorizer: RecordingAuthorizer, transport: str, port_of: str
) -> None:
    config = transport_config(
        transport, address_of(server, port_of), **{"global.api.timeout": "5s"}
    )
    connector = create_connector(config)
    try:
        with pytest.raises(ProtocolMismatchError) as caught:
            connector.discover_instances(KEY)
    finally:
        connector.close()
    message = str(caught.value)
    assert caught.value.key == "global.serverConnector.protocol"
    assert "POLARIS_PROTOCOL" in message and address_of(server, port_of) in message
    assert authorizer.actions(Action.DISCOVER) == []  # nothing reached the naming API

    async def asynchronously() -> None:
        async_connector = create_async_connector(config)
        try:
            with pytest.raises(ProtocolMismatchError):
                await async_connector.discover_instances(KEY)
        finally:
            await async_connector.aclose()

    asyncio.run(asynchronously())
