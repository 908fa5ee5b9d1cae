from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest
from polarismesh_specification.api.v1.service_manage import grpcapi_pb2_grpc

from polaris_sdk.server import PolarisServer
from tests.server.helpers import new_stub


@pytest.fixture
def server(no_thread_leak: None) -> Iterator[PolarisServer]:
    """A running server on a free loopback port; checks often so TTL tests stay short."""
    with PolarisServer(grpc_port=0, health_check_interval=0.1) as running:
        yield running


@pytest.fixture
def channel(server: PolarisServer) -> Iterator[grpc.Channel]:
    chan, _ = new_stub(server.grpc_address)
    with chan:
        yield chan


@pytest.fixture
def stub(channel: grpc.Channel) -> grpcapi_pb2_grpc.PolarisGRPCStub:
    return grpcapi_pb2_grpc.PolarisGRPCStub(channel)
