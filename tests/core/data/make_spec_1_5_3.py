"""Write the FileDescriptorSet of a polarismesh-specification tree (see README.md).

Usage: python make_spec_1_5_3.py SPEC_PACKAGE_DIR OUTPUT
"""

from __future__ import annotations

import sys
from pathlib import Path

from google.protobuf import descriptor_pb2

from polaris_sdk import wire

ROOTS = ("grpcapi.proto", "code.proto")
MISSING = "block_allow_list.proto"


def read_files(root: Path) -> dict[str, descriptor_pb2.FileDescriptorProto]:
    files: dict[str, descriptor_pb2.FileDescriptorProto] = {}
    for path in sorted(root.rglob("*_pb2.py")):
        raw = wire._serialized_file(path.read_text(encoding="utf-8"))
        if raw is not None:
            proto = descriptor_pb2.FileDescriptorProto.FromString(raw)
            files[proto.name] = proto
    return files


def drop_missing_import(proto: descriptor_pb2.FileDescriptorProto) -> None:
    """Remove the import of a file the wheel lacks, and the field that uses it."""
    kept = [d for d in proto.dependency if d != MISSING]
    del proto.dependency[:]
    proto.dependency.extend(kept)
    for message in proto.message_type:
        fields = [f for f in message.field if f.type_name != ".v1.BlockAllowListRule"]
        del message.field[:]
        message.field.extend(fields)


def main(root: Path, output: Path) -> None:
    files = read_files(root)
    drop_missing_import(files["response.proto"])
    order: list[str] = []

    def add(name: str) -> None:
        if name.startswith("google/protobuf/") or name in order:
            return
        for dep in files[name].dependency:
            add(dep)
        order.append(name)

    for name in ROOTS:
        add(name)
    result = descriptor_pb2.FileDescriptorSet()
    for name in order:
        files[name].ClearField("source_code_info")
        result.file.append(files[name])
    output.write_bytes(result.SerializeToString())


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
