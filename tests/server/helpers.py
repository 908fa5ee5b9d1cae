"""Building official wire messages and driving a Discover stream, for the server tests.

Everything here uses the official ``polarismesh_specification`` stubs: the
tests check the wire contract, not our own classes.
"""

from __future__ import annotations

import queue
from collections.abc import Iterator
from typing import Any

import grpc
from google.protobuf import wrappers_pb2
from polarismesh_specification.api.v1.service_manage import (
    grpcapi_pb2_grpc,
    request_pb2,
    service_pb2,
)

INSTANCE = request_pb2.DiscoverRequest.INSTANCE
SERVICES = request_pb2.DiscoverRequest.SERVICES
HEARTBEAT = service_pb2.HealthCheck.HEARTBEAT
CALL_TIMEOUT = 10.0


def s(value: str) -> wrappers_pb2.StringValue:
    return wrappers_pb2.StringValue(value=value)


def u(value: int) -> wrappers_pb2.UInt32Value:
    return wrappers_pb2.UInt32Value(value=value)


def b(value: bool) -> wrappers_pb2.BoolValue:
    return wrappers_pb2.BoolValue(value=value)


def instance(
    service: str | None = "echo",
    namespace: str | None = "default",
    host: str | None = "10.0.0.1",
    port: int | None = 8080,
    *,
    ttl: int | None = None,
    **fields: Any,
) -> service_pb2.Instance:
    """A ``v1.Instance``; ``None`` leaves a field out, ``ttl`` asks for a heartbeat check."""
    msg = service_pb2.Instance(**fields)
    if service is not None:
        msg.service.value = service
    if namespace is not None:
        msg.namespace.value = namespace
    if host is not None:
        msg.host.value = host
    if port is not None:
        msg.port.value = port
    if ttl is not None:
        msg.health_check.type = HEARTBEAT
        msg.health_check.heartbeat.ttl.value = ttl
    return msg


def discover_request(
    service: str = "echo",
    namespace: str | None = "default",
    revision: str = "",
    kind: int = INSTANCE,
) -> request_pb2.DiscoverRequest:
    svc = service_pb2.Service(name=s(service), revision=s(revision))
    if namespace is not None:
        svc.namespace.value = namespace
    return request_pb2.DiscoverRequest(type=kind, service=svc)


class DiscoverStream:
    """One Discover stream over a sync channel: send a request, read its one answer."""

    def __init__(self, stub: grpcapi_pb2_grpc.PolarisGRPCStub, timeout: float = 60.0) -> None:
        self._requests: queue.Queue[Any] = queue.Queue()
        self._call = stub.Discover(iter(self._requests.get, None), timeout=timeout)
        self._answers: Iterator[Any] = self._call

    def send(self, request: Any) -> None:
        """Send without reading the answer."""
        self._requests.put(request)

    def ask(self, request: Any) -> Any:
        self.send(request)
        return next(self._answers)

    def close(self) -> None:
        self._requests.put(None)
        self._call.cancel()

    def __enter__(self) -> DiscoverStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def discover(stub: grpcapi_pb2_grpc.PolarisGRPCStub, request: Any) -> Any:
    """The one answer to ``request`` on a fresh stream."""
    with DiscoverStream(stub, timeout=CALL_TIMEOUT) as stream:
        return stream.ask(request)


def new_stub(address: str) -> tuple[grpc.Channel, grpcapi_pb2_grpc.PolarisGRPCStub]:
    """A channel with its own connection (not shared with other channels) and its stub."""
    channel = grpc.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)])
    return channel, grpcapi_pb2_grpc.PolarisGRPCStub(channel)
