from __future__ import annotations

from collections.abc import Iterator

import pytest

from polaris_sdk import (
    Configuration,
    Instance,
    ProviderAPI,
    ResourceNotFoundError,
    SDKContext,
    ServiceKey,
)
from polaris_sdk.server import PolarisServer
from tests.connector.servers import RecordingAuthorizer, fast_config


@pytest.fixture
def authorizer() -> RecordingAuthorizer:
    return RecordingAuthorizer()


@pytest.fixture
def server(no_thread_leak: None, authorizer: RecordingAuthorizer) -> Iterator[PolarisServer]:
    # Set up after the leak check, so a restarted server's thread is checked too.
    with PolarisServer(grpc_port=0, auth=authorizer, health_check_interval=0.1) as s:
        yield s


@pytest.fixture
def config(server: PolarisServer) -> Configuration:
    return fast_config(server.grpc_address)


@pytest.fixture
def provider(config: Configuration) -> Iterator[ProviderAPI]:
    with ProviderAPI.create(config) as p:
        yield p


@pytest.fixture
def observer(config: Configuration) -> Iterator[SDKContext]:
    """A second context, to look at the server the way another process would."""
    with SDKContext(config) as ctx:
        yield ctx


def listed(ctx: SDKContext, service: str = "echo") -> dict[str, Instance]:
    """The instances the server lists for ``service`` (empty if it has none)."""

    try:
        snapshot = ctx.connector.discover_instances(ServiceKey("default", service))
    except ResourceNotFoundError:
        return {}
    assert snapshot is not None
    return {i.id: i for i in snapshot}
