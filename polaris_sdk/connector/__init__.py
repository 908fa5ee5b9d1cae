"""Server connectors: the protocols the flows use and their transports.

``create_connector(config)`` builds the transport ``global.serverConnector.
protocol`` names: ``grpc`` (:class:`GrpcConnector`) or ``http``
(:class:`HttpConnector`). Both share the naming calls
(:mod:`.naming`), retries (:mod:`.retry`), address failover
(:mod:`.failover`) and TLS settings (:mod:`.tls`). Only this package, the
server and the model conversion touch the wire classes.
"""

from __future__ import annotations

from polaris_sdk.config import Configuration
from polaris_sdk.connector.base import (
    ClientReporter,
    HeartbeatSender,
    InstanceDiscoverer,
    Registrar,
    ServerConnector,
)
from polaris_sdk.connector.grpc import GrpcConnector
from polaris_sdk.connector.http import HttpConnector
from polaris_sdk.errors import ConfigError

__all__ = [
    "ClientReporter",
    "GrpcConnector",
    "HeartbeatSender",
    "HttpConnector",
    "InstanceDiscoverer",
    "Registrar",
    "ServerConnector",
    "create_connector",
]


def create_connector(config: Configuration) -> ServerConnector:
    """The connector for ``config.server_connector.protocol``."""
    protocol = config.server_connector.protocol
    if protocol == "grpc":
        return GrpcConnector(config)
    if protocol == "http":
        return HttpConnector(config)
    raise ConfigError("global.serverConnector.protocol", f"no transport for {protocol!r}")
