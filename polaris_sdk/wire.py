"""Protobuf message classes and gRPC method descriptions of the Polaris API.

Guarantees:

* The definitions come from the installed ``polarismesh-specification``
  package, the source of truth, but none of its modules is imported. Its
  generated modules register bare file names (``service.proto``,
  ``model.proto`` ...) in protobuf's default descriptor pool, which makes an
  application with its own ``service.proto`` fail to import ("duplicate file
  name"). Instead the serialized file descriptors are read out of the
  package's source files, renamed under ``polaris_sdk/spec/`` and added to a
  private :class:`~google.protobuf.descriptor_pool.DescriptorPool`.
* Message and package names are unchanged (``v1.Instance``), so the bytes on
  the wire and the gRPC method paths (``/v1.PolarisGRPC/Discover``) are those
  of the official stubs.
* Loading happens once, at import, and is thread-safe thereafter: the pool
  and classes are read-only.

Only ``polaris_sdk.model``, ``polaris_sdk.connector`` and ``polaris_sdk.server``
use this module.
"""

from __future__ import annotations

import ast
import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from google.protobuf import any_pb2, descriptor_pb2, descriptor_pool, duration_pb2, wrappers_pb2
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass

__all__ = [
    "POOL",
    "Code",
    "MethodSpec",
    "POLARIS_GRPC_METHODS",
    "POLARIS_GRPC_SERVICE",
    "POLARIS_HEARTBEAT_GRPC_METHODS",
    "POLARIS_HEARTBEAT_GRPC_SERVICE",
    "message_class",
]

SPEC_PACKAGE: Final = "polarismesh_specification"
FILE_PREFIX: Final = "polaris_sdk/spec/"
# The files the naming API needs; their imports are followed transitively.
ROOT_FILES: Final = ("grpcapi.proto", "code.proto")
_WELL_KNOWN = (any_pb2, duration_pb2, wrappers_pb2)


def _spec_root() -> Path:
    # find_spec on a top-level package locates it without executing it.
    spec = importlib.util.find_spec(SPEC_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(f"{SPEC_PACKAGE} is not installed")
    return Path(next(iter(spec.submodule_search_locations)))


def _serialized_file(source: str) -> bytes | None:
    """The bytes passed to ``AddSerializedFile`` in a generated module."""
    for node in ast.walk(ast.parse(source)):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "AddSerializedFile"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, bytes)
        ):
            return node.args[0].value
    return None


def _read_spec_files() -> dict[str, descriptor_pb2.FileDescriptorProto]:
    files: dict[str, descriptor_pb2.FileDescriptorProto] = {}
    for path in sorted(_spec_root().rglob("*_pb2.py")):
        raw = _serialized_file(path.read_text(encoding="utf-8"))
        if raw is None:
            continue
        proto = descriptor_pb2.FileDescriptorProto.FromString(raw)
        files[proto.name] = proto
    return files


def _build_pool() -> descriptor_pool.DescriptorPool:
    pool = descriptor_pool.DescriptorPool()
    for module in _WELL_KNOWN:
        wkt = descriptor_pb2.FileDescriptorProto()
        module.DESCRIPTOR.CopyToProto(wkt)
        pool.Add(wkt)
    well_known = {m.DESCRIPTOR.name for m in _WELL_KNOWN}
    spec_files = _read_spec_files()
    added: set[str] = set()

    def add(name: str) -> None:
        if name in added or name in well_known:
            return
        proto = spec_files.get(name)
        if proto is None:
            raise ImportError(f"{SPEC_PACKAGE} has no {name}")
        for dep in proto.dependency:
            add(dep)
        renamed = descriptor_pb2.FileDescriptorProto()
        renamed.CopyFrom(proto)
        renamed.name = FILE_PREFIX + proto.name
        renamed.ClearField("dependency")
        renamed.dependency.extend(
            d if d in well_known else FILE_PREFIX + d for d in proto.dependency
        )
        pool.Add(renamed)
        added.add(name)

    for root in ROOT_FILES:
        add(root)
    return pool


POOL: Final = _build_pool()


def message_class(full_name: str) -> type[Message]:
    """The message class of ``full_name`` (such as ``"v1.Instance"``) in the private pool."""
    return GetMessageClass(POOL.FindMessageTypeByName(full_name))


class _Codes:
    """``v1.Code`` values by name, read from the specification (``Code.NotFoundResource``)."""

    def __init__(self) -> None:
        enum = POOL.FindEnumTypeByName("v1.Code")
        self.by_number: dict[int, str] = {v.number: v.name for v in enum.values}
        for value in enum.values:
            setattr(self, value.name, value.number)

    def __getattr__(self, name: str) -> int:  # only reached for unknown names
        raise AttributeError(f"v1.Code has no value {name!r}")

    def name(self, number: int) -> str:
        return self.by_number.get(number, f"Code{number}")


Code: Final[Any] = _Codes()

# Message classes used by the naming API. Typed as Any: generated classes have
# no static field types, and the wrappers must be this pool's own classes.
Instance: Any = message_class("v1.Instance")
Service: Any = message_class("v1.Service")
Namespace: Any = message_class("v1.Namespace")
Client: Any = message_class("v1.Client")
Location: Any = message_class("v1.Location")
HealthCheck: Any = message_class("v1.HealthCheck")
HeartbeatHealthCheck: Any = message_class("v1.HeartbeatHealthCheck")
Response: Any = message_class("v1.Response")
DiscoverRequest: Any = message_class("v1.DiscoverRequest")
DiscoverResponse: Any = message_class("v1.DiscoverResponse")
DiscoverFilter: Any = message_class("v1.DiscoverFilter")
StringValue: Any = message_class("google.protobuf.StringValue")
UInt32Value: Any = message_class("google.protobuf.UInt32Value")
BoolValue: Any = message_class("google.protobuf.BoolValue")
HeartbeatsRequest: Any = message_class("v1.HeartbeatsRequest")
HeartbeatsResponse: Any = message_class("v1.HeartbeatsResponse")
InstanceHeartbeat: Any = message_class("v1.InstanceHeartbeat")
GetHeartbeatsRequest: Any = message_class("v1.GetHeartbeatsRequest")
GetHeartbeatsResponse: Any = message_class("v1.GetHeartbeatsResponse")
DelHeartbeatsRequest: Any = message_class("v1.DelHeartbeatsRequest")
DelHeartbeatsResponse: Any = message_class("v1.DelHeartbeatsResponse")

DISCOVER_REQUEST_TYPE = POOL.FindEnumTypeByName("v1.DiscoverRequest.DiscoverRequestType")
DISCOVER_RESPONSE_TYPE = POOL.FindEnumTypeByName("v1.DiscoverResponse.DiscoverResponseType")
HEALTH_CHECK_TYPE = POOL.FindEnumTypeByName("v1.HealthCheck.HealthCheckType")

POLARIS_GRPC_SERVICE: Final = "v1.PolarisGRPC"
POLARIS_HEARTBEAT_GRPC_SERVICE: Final = "v1.PolarisHeartbeatGRPC"


@dataclass(frozen=True, slots=True)
class MethodSpec:
    """One RPC of a Polaris gRPC service: its path and message classes."""

    name: str
    path: str
    request: type[Message]
    response: type[Message]
    client_streaming: bool
    server_streaming: bool


def _methods(service_name: str = POLARIS_GRPC_SERVICE) -> dict[str, MethodSpec]:
    service = POOL.FindServiceByName(service_name)
    return {
        m.name: MethodSpec(
            name=m.name,
            path=f"/{service.full_name}/{m.name}",
            request=GetMessageClass(m.input_type),
            response=GetMessageClass(m.output_type),
            client_streaming=m.client_streaming,
            server_streaming=m.server_streaming,
        )
        for m in service.methods
    }


POLARIS_GRPC_METHODS: Final = _methods()
POLARIS_HEARTBEAT_GRPC_METHODS: Final = _methods(POLARIS_HEARTBEAT_GRPC_SERVICE)
"""``v1.PolarisHeartbeatGRPC``: BatchHeartbeat, BatchGetHeartbeat, BatchDelHeartbeat."""
