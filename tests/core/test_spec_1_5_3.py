"""Answers encoded with specification 1.5.3, the version a real polaris-server is built
on, decode through the SDK with every field it uses intact.

The SDK reads 1.9.0rc1, which differs from 1.5.3 (``Service`` field 26 is
``deleteable``, a BoolValue, in 1.5.3 and ``sync_to_global_registry``, a bool,
in 1.9; ``DiscoverResponse`` field 25 is a repeated ``losslessRules`` in 1.5.3
and a singular ``lossless`` in 1.9). A loopback gRPC server answers with bytes
built from the 1.5.3 descriptors (``data/spec_1_5_3.binpb``, see
``data/README.md``), and the SDK's public API reads them.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import (
    any_pb2,
    descriptor_pb2,
    descriptor_pool,
    duration_pb2,
    wrappers_pb2,
)
from google.protobuf.message_factory import GetMessageClass

from polaris_sdk import (
    ConsumerAPI,
    Instance,
    ProviderAPI,
    ResourceNotFoundError,
    SDKContext,
)
from polaris_sdk.validation import instance_id
from tests.connector.servers import fast_config

DATA = Path(__file__).parent / "data" / "spec_1_5_3.binpb"
SERVICE_ID = "7d3a1c"


def _pool() -> descriptor_pool.DescriptorPool:
    pool = descriptor_pool.DescriptorPool()
    for module in (any_pb2, duration_pb2, wrappers_pb2):
        proto = descriptor_pb2.FileDescriptorProto()
        module.DESCRIPTOR.CopyToProto(proto)
        pool.Add(proto)
    for proto in descriptor_pb2.FileDescriptorSet.FromString(DATA.read_bytes()).file:
        pool.Add(proto)
    return pool


POOL = _pool()


def old(name: str) -> Any:
    """The 1.5.3 class of message ``name``."""
    return GetMessageClass(POOL.FindMessageTypeByName(name))


def test_the_fixture_is_1_5_3_where_it_differs_from_what_the_sdk_reads() -> None:
    service = POOL.FindMessageTypeByName("v1.Service").fields_by_number[26]
    assert (service.name, service.message_type.full_name) == (
        "deleteable",
        "google.protobuf.BoolValue",
    )
    lossless = POOL.FindMessageTypeByName("v1.DiscoverResponse").fields_by_number[25]
    assert lossless.name == "losslessRules" and lossless.is_repeated


def s(value: str) -> Any:
    return old("google.protobuf.StringValue")(value=value)


def u(value: int) -> Any:
    return old("google.protobuf.UInt32Value")(value=value)


def flag(value: bool) -> Any:
    return old("google.protobuf.BoolValue")(value=value)


def old_instance(port: int, **fields: Any) -> Any:
    msg = old("v1.Instance")(
        id=s(instance_id("default", "echo", "10.0.0.5", port)),
        service=s("echo"),
        namespace=s("default"),
        vpc_id=s("vpc-1"),
        host=s("10.0.0.5"),
        port=u(port),
        protocol=s("grpc"),
        version=s("1.2.0"),
        priority=u(3),
        weight=u(40),
        healthy=flag(False),
        isolate=flag(True),
        location=old("v1.Location")(region=s("ap"), zone=s("ap-1"), campus=s("dc-7")),
        metadata={"env": "prod", "version": "1.2.0", "protocol": "grpc"},
        logic_set=s("set-a"),
        revision=s(f"rev-{port}"),
        **fields,
    )
    msg.health_check.type = 1  # HEARTBEAT
    msg.health_check.heartbeat.ttl.value = 7
    return msg


def discover_answer() -> bytes:
    answer = old("v1.DiscoverResponse")(
        code=u(200000),
        info=s("execute success"),
        service=old("v1.Service")(
            name=s("echo"),
            namespace=s("default"),
            revision=s("service-rev-9"),
            metadata={"owner": "team"},
            id=s(SERVICE_ID),
            deleteable=flag(True),  # field 26: a bool of another type in 1.9
        ),
        aliasFor=old("v1.Service")(name=s("echo"), namespace=s("default")),
        instances=[old_instance(8080), old_instance(8081, enable_health_check=flag(True))],
    )
    answer.type = 1  # INSTANCE
    # Field 25: repeated in 1.5.3, singular in 1.9.
    answer.losslessRules.add(id="a", service="echo")
    answer.losslessRules.add(id="b", service="echo")
    return bytes(answer.SerializeToString())


def response_answer(code: int = 200000, info: str = "execute success", **fields: Any) -> bytes:
    return bytes(old("v1.Response")(code=u(code), info=s(info), **fields).SerializeToString())


class OldServer:
    """``v1.PolarisGRPC`` on loopback, answering each method with fixed 1.5.3 bytes."""

    def __init__(self, answers: dict[str, bytes]) -> None:
        self.answers = answers
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        handlers = {name: self._unary(name) for name in self.answers if name != "Discover"}
        handlers["Discover"] = grpc.stream_stream_rpc_method_handler(self._discover)
        self.server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler("v1.PolarisGRPC", handlers),)
        )
        self.port = self.server.add_insecure_port("127.0.0.1:0")

    def _unary(self, name: str) -> grpc.RpcMethodHandler:
        return grpc.unary_unary_rpc_method_handler(lambda request, context: self.answers[name])

    def _discover(
        self, requests: Iterable[bytes], context: grpc.ServicerContext
    ) -> Iterator[bytes]:
        for _ in requests:
            yield self.answers["Discover"]


@pytest.fixture
def old_server(no_thread_leak: None) -> Iterator[OldServer]:
    instance_answer = old("v1.Instance")(id=s("server-given-id"), service=s("echo"))
    server = OldServer(
        {
            "RegisterInstance": response_answer(instance=instance_answer),
            "DeregisterInstance": response_answer(),
            "Heartbeat": response_answer(),
            "ReportClient": response_answer(),
            "Discover": discover_answer(),
        }
    )
    server.server.start()
    try:
        yield server
    finally:
        server.server.stop(grace=None).wait(5)


@pytest.fixture
def ctx(old_server: OldServer) -> Iterator[SDKContext]:
    config = fast_config(f"127.0.0.1:{old_server.port}", **{"global.api.maxRetryTimes": 0})
    with SDKContext(config) as context:
        yield context


def expected_instance(port: int) -> Instance:
    return Instance(
        id=instance_id("default", "echo", "10.0.0.5", port),
        namespace="default",
        service="echo",
        host="10.0.0.5",
        port=port,
        protocol="grpc",
        version="1.2.0",
        weight=40,
        healthy=False,
        isolated=True,
        metadata={"env": "prod", "version": "1.2.0", "protocol": "grpc"},
        ttl=7,
        priority=3,
        logic_set="set-a",
        region="ap",
        zone="ap-1",
        campus="dc-7",
        vpc_id="vpc-1",
        revision=f"rev-{port}",
    )


def test_a_discover_answer_keeps_every_field_the_sdk_reads(ctx: SDKContext) -> None:
    snapshot = ConsumerAPI(ctx).get_all_instances(service="echo")

    assert (snapshot.namespace, snapshot.service) == ("default", "echo")
    assert snapshot.revision == "service-rev-9"
    assert dict(snapshot.metadata) == {"owner": "team"}
    assert sorted(snapshot, key=lambda i: i.port) == [
        expected_instance(8080),
        expected_instance(8081),
    ]
    for got in snapshot:
        want = expected_instance(got.port)
        for name in Instance.__dataclass_fields__:
            assert getattr(got, name) == getattr(want, name), name


def test_write_answers_keep_their_code_and_instance_id(ctx: SDKContext) -> None:
    provider = ProviderAPI(ctx)
    resp = provider.register(service="echo", host="10.0.0.5", port=8080)
    assert resp.instance_id == "server-given-id"
    assert resp.existed is False
    provider.heartbeat(service="echo", host="10.0.0.5", port=8080)
    provider.deregister(service="echo", host="10.0.0.5", port=8080)
    ctx.connector.report_client("10.0.0.5", "1.0")


def test_a_failure_answer_keeps_its_code_and_info(old_server: OldServer, ctx: SDKContext) -> None:
    old_server.answers["Heartbeat"] = response_answer(400202, "not found resource")
    with pytest.raises(ResourceNotFoundError) as info:
        ProviderAPI(ctx).heartbeat(service="echo", host="10.0.0.5", port=8080)
    assert (info.value.code, info.value.info) == (400202, "not found resource")
