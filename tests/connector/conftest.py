from __future__ import annotations

from collections.abc import Iterator

import pytest

from polaris_sdk.connector import GrpcConnector
from polaris_sdk.server import PolarisServer
from tests.connector.servers import RecordingAuthorizer, fast_config
from tests.tlsutil import tls_files  # noqa: F401  (a session fixture for the TLS tests)


@pytest.fixture
def authorizer() -> RecordingAuthorizer:
    return RecordingAuthorizer()


@pytest.fixture
def server(no_thread_leak: None, authorizer: RecordingAuthorizer) -> Iterator[PolarisServer]:
    # Set up after the leak check, so a restarted server's thread is checked too.
    with PolarisServer(grpc_port=0, auth=authorizer, health_check_interval=0.1) as s:
        yield s


@pytest.fixture
def connector(server: PolarisServer) -> Iterator[GrpcConnector]:
    c = GrpcConnector(fast_config(server.grpc_address, token="s3cret-token"))
    yield c
    c.close()
