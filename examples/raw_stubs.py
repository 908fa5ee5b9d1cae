"""The embedded server speaks the real Polaris wire protocol.

Registers and discovers an instance with nothing but the official
``polarismesh-specification`` gRPC stubs, the way a polaris-go or
polaris-java client would, against the server named by
``POLARIS_ADDRESSES`` (first address) or an embedded one started here::

    python examples/raw_stubs.py
"""

from __future__ import annotations

import contextlib
import os

import grpc
from google.protobuf.wrappers_pb2 import StringValue, UInt32Value
from polarismesh_specification.api.v1.service_manage import (
    grpcapi_pb2_grpc,
    request_pb2,
    service_pb2,
)

from polaris_sdk.server import PolarisServer

TIMEOUT = 5.0


def main() -> None:
    with contextlib.ExitStack() as stack:
        address = os.environ.get("POLARIS_ADDRESSES", "").split(",")[0].strip()
        if not address:
            server = stack.enter_context(PolarisServer(grpc_port=0))
            address = server.grpc_address
            print(f"embedded Polaris server on {address}")
        channel = stack.enter_context(grpc.insecure_channel(address))
        stub = grpcapi_pb2_grpc.PolarisGRPCStub(channel)

        instance = service_pb2.Instance(
            namespace=StringValue(value="default"),
            service=StringValue(value="raw-echo"),
            host=StringValue(value="127.0.0.1"),
            port=UInt32Value(value=9090),
        )
        registered = stub.RegisterInstance(instance, timeout=TIMEOUT)
        print(f"RegisterInstance -> {registered.code.value} id={registered.instance.id.value}")

        request = request_pb2.DiscoverRequest(
            type=request_pb2.DiscoverRequest.INSTANCE,
            service=service_pb2.Service(
                namespace=StringValue(value="default"), name=StringValue(value="raw-echo")
            ),
        )
        (answer,) = stub.Discover(iter([request]), timeout=TIMEOUT)
        for found in answer.instances:
            print(
                f"Discover -> {found.host.value}:{found.port.value} healthy={found.healthy.value}"
            )
        print(f"revision {answer.service.revision.value}")

        done = stub.DeregisterInstance(instance, timeout=TIMEOUT)
        print(f"DeregisterInstance -> {done.code.value}")
        print("done")


if __name__ == "__main__":
    main()
