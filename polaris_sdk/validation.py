"""Naming rules shared by the SDK and the embedded server (protocol.md, "Validation").

Pure functions, no I/O. Each check raises :class:`~polaris_sdk.errors.ValidationError`
naming the field and the rule and carrying the ``v1.Code`` a real server
answers for the same fault, so the SDK rejects a request before sending it
and the embedded server answers it with the right code.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from typing import Final

from polaris_sdk.errors import ValidationError

__all__ = [
    "MAX_METADATA_ENTRIES",
    "check_host",
    "check_instance",
    "check_instance_id",
    "check_metadata",
    "check_namespace",
    "check_port",
    "check_service",
    "check_weight",
    "instance_id",
]

NAME_PATTERN: Final = re.compile(r"^[0-9A-Za-z\-./:_]+$")
MAX_NAMESPACE: Final = 64
MAX_SERVICE: Final = 128
MAX_HOST: Final = 128
MAX_PROTOCOL: Final = 32
MAX_VERSION: Final = 32
MAX_LOGIC_SET: Final = 128
MAX_WEIGHT: Final = 65535
MAX_METADATA_ENTRIES: Final = 64
MAX_METADATA_KEY: Final = 128
MAX_METADATA_VALUE: Final = 4096

INVALID_PARAMETER: Final = 400103
INVALID_NAMESPACE: Final = 400110
INVALID_SERVICE: Final = 400120
INVALID_INSTANCE_ID: Final = 400130
INVALID_HOST: Final = 400131
INVALID_PORT: Final = 400132
INVALID_PROTOCOL: Final = 400136
INVALID_VERSION: Final = 400137
INVALID_LOGIC_SET: Final = 400138
INVALID_METADATA: Final = 400150


def _check_name(field: str, value: str | None, limit: int, code: int) -> str:
    if not value:
        raise ValidationError(field, "must not be empty", code)
    if len(value) > limit:
        raise ValidationError(field, f"must be at most {limit} characters", code)
    if not NAME_PATTERN.match(value):
        raise ValidationError(
            field, "may only contain letters, digits and the characters - . / : _", code
        )
    return value


def check_namespace(namespace: str | None, field: str = "namespace") -> str:
    return _check_name(field, namespace, MAX_NAMESPACE, INVALID_NAMESPACE)


def check_service(service: str | None, field: str = "service") -> str:
    return _check_name(field, service, MAX_SERVICE, INVALID_SERVICE)


def check_host(host: str | None) -> str:
    if not host:
        raise ValidationError("host", "must not be empty", INVALID_HOST)
    if len(host) > MAX_HOST:
        raise ValidationError("host", f"must be at most {MAX_HOST} characters", INVALID_HOST)
    return host


def check_port(port: int | None) -> int:
    if port is None:
        raise ValidationError("port", "is required", INVALID_PORT)
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise ValidationError("port", "must be an integer from 0 to 65535", INVALID_PORT)
    return port


def check_weight(weight: int | None) -> None:
    if weight is None:
        return
    if isinstance(weight, bool) or not isinstance(weight, int) or not 0 <= weight <= MAX_WEIGHT:
        raise ValidationError(
            "weight", f"must be an integer from 0 to {MAX_WEIGHT}", INVALID_PARAMETER
        )


def _check_length(field: str, value: str | None, limit: int, code: int) -> None:
    if value is not None and len(value) > limit:
        raise ValidationError(field, f"must be at most {limit} characters", code)


def check_metadata(metadata: Mapping[str, str] | None) -> None:
    if not metadata:
        return
    if len(metadata) > MAX_METADATA_ENTRIES:
        raise ValidationError(
            "metadata", f"must have at most {MAX_METADATA_ENTRIES} entries", INVALID_METADATA
        )
    for key, value in metadata.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise ValidationError("metadata", "keys and values must be strings", INVALID_METADATA)
        if len(key) > MAX_METADATA_KEY:
            raise ValidationError(
                "metadata", f"keys must be at most {MAX_METADATA_KEY} characters", INVALID_METADATA
            )
        if len(value) > MAX_METADATA_VALUE:
            raise ValidationError(
                "metadata",
                f"values must be at most {MAX_METADATA_VALUE} characters",
                INVALID_METADATA,
            )


def check_instance_id(instance_id: str | None) -> None:
    """A supplied id must not be empty (absent is fine: it is then computed)."""
    if instance_id is not None and not instance_id:
        raise ValidationError("instance_id", "must not be empty when given", INVALID_INSTANCE_ID)


def check_instance(
    *,
    namespace: str | None,
    service: str | None,
    host: str | None,
    port: int | None,
    protocol: str | None = None,
    version: str | None = None,
    logic_set: str | None = None,
    weight: int | None = None,
    metadata: Mapping[str, str] | None = None,
) -> None:
    """All the rules of a registration, in the order a real server checks them."""
    check_service(service)
    check_namespace(namespace)
    check_host(host)
    check_port(port)
    _check_length("protocol", protocol, MAX_PROTOCOL, INVALID_PROTOCOL)
    _check_length("version", version, MAX_VERSION, INVALID_VERSION)
    _check_length("logic_set", logic_set, MAX_LOGIC_SET, INVALID_LOGIC_SET)
    check_weight(weight)
    check_metadata(metadata)


def instance_id(namespace: str, service: str, host: str, port: int, vpc_id: str = "") -> str:
    """The id a server gives an instance registered without one."""
    parts = [namespace, service, host, str(port)]
    if vpc_id:
        parts.insert(2, vpc_id)
    return hashlib.sha1("##".join(parts).encode("utf-8")).hexdigest()
