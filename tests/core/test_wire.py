"""The wire module: private descriptor pool, identical bytes to the official stubs."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import descriptor_pb2, descriptor_pool
from google.protobuf.descriptor import Descriptor, FieldDescriptor

from polaris_sdk import wire

# Every message the SDK or the embedded server sends or receives on the naming path.
NAMING_MESSAGES = [
    "v1.Instance",
    "v1.Response",
    "v1.DiscoverRequest",
    "v1.DiscoverResponse",
    "v1.Client",
    "v1.Service",
    "v1.Namespace",
    "v1.HealthCheck",
    "v1.Location",
    "v1.DiscoverFilter",
]

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def run_python(code: str, cwd: Path | None = None) -> str:
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd or PROJECT_ROOT,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def official(full_name: str) -> Any:
    # In-process import of the official stubs is fine here: the private pool
    # does not share names with the default pool.
    from google.protobuf.message_factory import GetMessageClass
    from polarismesh_specification.api.v1.service_manage import (  # noqa: F401
        client_pb2,
        grpcapi_pb2,
        request_pb2,
        response_pb2,
        service_pb2,
    )

    return GetMessageClass(descriptor_pool.Default().FindMessageTypeByName(full_name))


def fill(message: Any, depth: int = 0) -> Any:
    """Sets every field of ``message`` (recursively, bounded) to a value derived from its number."""
    descriptor: Descriptor = message.DESCRIPTOR
    for f in descriptor.fields:
        n = f.number
        if f.message_type is not None and f.message_type.GetOptions().map_entry:
            value_field = f.message_type.fields_by_name["value"]
            if value_field.message_type is None and value_field.type == FieldDescriptor.TYPE_STRING:
                getattr(message, f.name)[f"k{n}"] = f"v{n}"
            continue
        if f.message_type is not None:
            if depth >= 3 or f.message_type.full_name == "google.protobuf.Any":
                continue
            target = getattr(message, f.name).add() if f.is_repeated else getattr(message, f.name)
            fill(target, depth + 1)
            continue
        value: Any
        if f.type == FieldDescriptor.TYPE_STRING:
            value = f"s{n}"
        elif f.type == FieldDescriptor.TYPE_BYTES:
            value = bytes([n % 256])
        elif f.type == FieldDescriptor.TYPE_BOOL:
            value = True
        elif f.type == FieldDescriptor.TYPE_ENUM:
            value = f.enum_type.values[-1].number
        elif f.type in (FieldDescriptor.TYPE_FLOAT, FieldDescriptor.TYPE_DOUBLE):
            value = n + 0.5
        else:
            value = n
        if f.is_repeated:
            getattr(message, f.name).append(value)
        else:
            setattr(message, f.name, value)
    return message


@pytest.mark.parametrize("full_name", NAMING_MESSAGES)
def test_descriptors_match_the_official_specification(full_name: str) -> None:
    ours = descriptor_pb2.DescriptorProto()
    wire.POOL.FindMessageTypeByName(full_name).CopyToProto(ours)
    theirs = descriptor_pb2.DescriptorProto()
    official(full_name).DESCRIPTOR.CopyToProto(theirs)
    assert ours == theirs


@pytest.mark.parametrize("full_name", NAMING_MESSAGES)
def test_bytes_are_identical_both_ways(full_name: str) -> None:
    ours = fill(wire.message_class(full_name)())
    raw = ours.SerializeToString(deterministic=True)
    fields = ours.DESCRIPTOR.fields
    assert len(ours.ListFields()) >= max(1, len(fields) // 2), "the filler must set fields"
    theirs = official(full_name).FromString(raw)
    assert theirs.SerializeToString(deterministic=True) == raw
    back = fill(official(full_name)())
    assert (
        wire.message_class(full_name).FromString(back.SerializeToString()).SerializeToString()
        == back.SerializeToString()
    )


def test_grpc_method_paths_and_types_match_the_official_service() -> None:
    from polarismesh_specification.api.v1.service_manage import grpcapi_pb2

    service = grpcapi_pb2.DESCRIPTOR.services_by_name["PolarisGRPC"]
    assert set(wire.POLARIS_GRPC_METHODS) == {m.name for m in service.methods}
    for m in service.methods:
        spec = wire.POLARIS_GRPC_METHODS[m.name]
        assert spec.path == f"/v1.PolarisGRPC/{m.name}"
        assert spec.request.DESCRIPTOR.full_name == m.input_type.full_name
        assert spec.response.DESCRIPTOR.full_name == m.output_type.full_name
        assert (spec.client_streaming, spec.server_streaming) == (
            m.client_streaming,
            m.server_streaming,
        )


def test_code_values_come_from_the_specification() -> None:
    assert wire.Code.ExecuteSuccess == 200000
    assert wire.Code.DataNoChange == 200001
    assert wire.Code.NotFoundResource == 400202
    assert wire.Code.name(400120) == "InvalidServiceName"
    with pytest.raises(AttributeError):
        _ = wire.Code.NoSuchCode


def test_importing_polaris_sdk_leaves_the_default_pool_alone() -> None:
    out = run_python(
        """
        import sys
        import polaris_sdk, polaris_sdk.wire, polaris_sdk.model
        from google.protobuf import descriptor_pool
        loaded = [m for m in sys.modules if m.startswith("polarismesh_specification")]
        assert not loaded, loaded
        for name in ("service.proto", "model.proto", "request.proto", "response.proto"):
            try:
                descriptor_pool.Default().FindFileByName(name)
            except KeyError:
                continue
            raise AssertionError(name + " is in the default pool")
        print("clean")
        """
    )
    assert out.strip() == "clean"


@pytest.fixture(scope="module")
def app_with_its_own_service_proto(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An application package whose own ``service.proto`` is compiled with protoc."""
    from grpc_tools import protoc

    root = tmp_path_factory.mktemp("app")
    (root / "service.proto").write_text(
        'syntax = "proto3";\npackage myapp;\n'
        "message Instance { string host = 1; uint32 port = 2; }\n"
    )
    rc = protoc.main(["protoc", f"-I{root}", f"--python_out={root}", str(root / "service.proto")])
    assert rc == 0
    assert (root / "service_pb2.py").exists()
    return root


@pytest.mark.parametrize("order", ["app-first", "sdk-first"])
def test_an_application_service_proto_coexists(
    app_with_its_own_service_proto: Path, order: str
) -> None:
    imports = ["import service_pb2", "from polaris_sdk import wire"]
    if order == "sdk-first":
        imports.reverse()
    out = run_python(
        f"""
        import sys
        sys.path.insert(0, {str(app_with_its_own_service_proto)!r})
        {imports[0]}
        {imports[1]}
        mine = service_pb2.Instance(host="a", port=1)
        theirs = wire.Instance(host=wire.StringValue(value="b"))
        print(mine.host, theirs.host.value)
        """
    )
    assert out.split() == ["a", "b"]


def test_the_official_stubs_still_import_beside_polaris_sdk() -> None:
    out = run_python(
        """
        from polaris_sdk import wire
        from polarismesh_specification.api.v1.service_manage import service_pb2
        from google.protobuf import wrappers_pb2
        a = service_pb2.Instance(host=wrappers_pb2.StringValue(value="x"))
        b = wire.Instance.FromString(a.SerializeToString())
        print(b.host.value)
        """
    )
    assert out.strip() == "x"


def test_the_clash_polaris_sdk_avoids_is_real(app_with_its_own_service_proto: Path) -> None:
    """Guards the coexistence test: the official stubs do clash with an app's service.proto."""
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            f"import sys; sys.path.insert(0, {str(app_with_its_own_service_proto)!r})\n"
            "import service_pb2\n"
            "from polarismesh_specification.api.v1.service_manage import service_pb2 as s\n",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=PROJECT_ROOT,
    )
    assert result.returncode != 0
    assert "service.proto" in result.stderr
