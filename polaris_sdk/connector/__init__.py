"""Server connectors: the protocols the flows use and their transports.

``create_connector(config)`` builds the blocking connector for the transport
``global.serverConnector.protocol`` names: ``grpc`` (:class:`GrpcConnector`)
or ``http`` (:class:`HttpConnector`); ``create_async_connector(config)`` the
asyncio one (grpc.aio or httpx.AsyncClient). All of them share the naming
calls without I/O (:mod:`.calls`), the drivers (:mod:`.naming`), retries
(:mod:`.retry`), the connection state (:mod:`.state`), address failover
(:mod:`.failover`) and TLS settings (:mod:`.tls`); a transport only moves one
request and its answer. :class:`MockTransport` answers from a function, for
tests. Only this package, the server and the model conversion touch the wire
classes.
"""

from __future__ import annotations

from polaris_sdk.config import Configuration
from polaris_sdk.connector.base import (
    AsyncServerConnector,
    ClientReporter,
    HeartbeatSender,
    InstanceDiscoverer,
    Registrar,
    ServerConnector,
)
from polaris_sdk.connector.grpc import GrpcConnector, GrpcTransport
from polaris_sdk.connector.http import AsyncHttpTransport, HttpConnector, HttpTransport
from polaris_sdk.connector.mock import MockTransport
from polaris_sdk.connector.naming import (
    AsyncNamingConnector,
    AsyncTransport,
    NamingConnector,
    Transport,
)
from polaris_sdk.connector.state import Connection, ConnectionState
from polaris_sdk.errors import ConfigError

__all__ = [
    "AsyncNamingConnector",
    "AsyncServerConnector",
    "AsyncTransport",
    "ClientReporter",
    "Connection",
    "ConnectionState",
    "GrpcConnector",
    "GrpcTransport",
    "HeartbeatSender",
    "HttpConnector",
    "HttpTransport",
    "AsyncHttpTransport",
    "InstanceDiscoverer",
    "MockTransport",
    "NamingConnector",
    "Registrar",
    "ServerConnector",
    "Transport",
    "create_async_connector",
    "create_connector",
]

_PROTOCOL_KEY = "global.serverConnector.protocol"


def create_connector(
    config: Configuration,
    *,
    transport: Transport | None = None,
    connection: Connection | None = None,
) -> NamingConnector:
    """The blocking connector for ``config.server_connector.protocol`` (or ``transport``)."""
    if transport is not None:
        return NamingConnector(config, transport, connection=connection)
    protocol = config.server_connector.protocol
    if protocol == "grpc":
        return GrpcConnector(config, connection=connection)
    if protocol == "http":
        return HttpConnector(config, connection=connection)
    raise ConfigError(_PROTOCOL_KEY, f"no transport for {protocol!r}")


def create_async_connector(
    config: Configuration,
    *,
    transport: AsyncTransport | MockTransport | None = None,
    connection: Connection | None = None,
) -> AsyncNamingConnector:
    """The asyncio connector for ``config.server_connector.protocol`` (or ``transport``)."""
    if isinstance(transport, MockTransport):
        transport = transport.for_asyncio()
    if transport is None:
        protocol = config.server_connector.protocol
        if protocol == "grpc":
            from polaris_sdk.connector.grpc_aio import AioGrpcTransport

            transport = AioGrpcTransport(config)
        elif protocol == "http":
            transport = AsyncHttpTransport(config)
        else:
            raise ConfigError(_PROTOCOL_KEY, f"no transport for {protocol!r}")
    return AsyncNamingConnector(config, transport, connection=connection)
