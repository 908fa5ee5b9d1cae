"""Naming rules shared by the SDK and the embedded server (protocol.md, "Validation").

Pure functions, no I/O. Each check raises :class:`~polaris_sdk.errors.ValidationError`
naming the field and the rule and carrying the ``v1.Code`` a real server
answers for the same fault, so the SDK rejects a request before sending it
and the embedded server answers it with the right code.

Every check also refuses a value of the wrong type (``service=123``,
``healthy="yes"``, ``port=True``) and text that cannot be encoded as UTF-8
(a lone surrogate), so nothing but a ``ValidationError`` escapes a request
that breaks a rule. Lengths count characters, as the real server does.

Limits come from the real server: its parameter check (service 128,
namespace 64, host 128, protocol 32, version 32, logic_set 128, metadata 64
entries of key 128 and value 4096 characters, port and weight 0..65535) and,
for fields it stores without checking, its MySQL columns: ``id`` 128,
``vpc_id`` 64, region / zone / campus 128 characters, ``priority`` TINYINT
(0..127). A service token is at most 2048 characters (the server's limit
for a service's token).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Final

from polaris_sdk.defaults import MAX_TTL
from polaris_sdk.errors import ValidationError

if TYPE_CHECKING:
    from polaris_sdk.model import InstanceKeyRequest, InstanceRegisterRequest

__all__ = [
    "MAX_METADATA_ENTRIES",
    "MAX_TTL",
    "check_flag",
    "check_host",
    "check_instance",
    "check_instance_id",
    "check_instance_key_request",
    "check_metadata",
    "check_namespace",
    "check_port",
    "check_priority",
    "check_register_request",
    "check_service",
    "check_service_token",
    "check_text",
    "check_ttl",
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
MAX_PORT: Final = 65535
MAX_METADATA_ENTRIES: Final = 64
MAX_METADATA_KEY: Final = 128
MAX_METADATA_VALUE: Final = 4096
MAX_ID: Final = 128
MAX_VPC_ID: Final = 64
MAX_LOCATION: Final = 128
MAX_PRIORITY: Final = 127
MAX_SERVICE_TOKEN: Final = 2048

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


def _is_int(value: object) -> bool:
    # bool is an int subclass: True is not a port.
    return isinstance(value, int) and not isinstance(value, bool)


def _encodable(value: str) -> bool:
    if value.isascii():
        return True
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate
        return False
    return True


def check_text(field: str, value: object, code: int, limit: int | None = None) -> str:
    """``value`` if it is a string that UTF-8 can carry, of at most ``limit`` characters."""
    if not isinstance(value, str):
        raise ValidationError(field, f"must be a string, not {type(value).__name__}", code)
    if not _encodable(value):
        raise ValidationError(field, "must be valid Unicode text (no lone surrogates)", code)
    if limit is not None and len(value) > limit:
        raise ValidationError(field, f"must be at most {limit} characters", code)
    return value


def _check_length(field: str, value: object, limit: int, code: int) -> None:
    """An optional string: absent (None) or within ``limit``."""
    if value is not None:
        check_text(field, value, code, limit)


def _check_name(field: str, value: object, limit: int, code: int) -> str:
    if value is None or value == "":
        raise ValidationError(field, "must not be empty", code)
    name = check_text(field, value, code, limit)
    if not NAME_PATTERN.match(name):
        raise ValidationError(
            field, "may only contain letters, digits and the characters - . / : _", code
        )
    return name


def check_namespace(namespace: object, field: str = "namespace") -> str:
    return _check_name(field, namespace, MAX_NAMESPACE, INVALID_NAMESPACE)


def check_service(service: object, field: str = "service") -> str:
    return _check_name(field, service, MAX_SERVICE, INVALID_SERVICE)


def check_host(host: object) -> str:
    if host is None or host == "":
        raise ValidationError("host", "must not be empty", INVALID_HOST)
    return check_text("host", host, INVALID_HOST, MAX_HOST)


def _check_port_range(port: object) -> None:
    if port is not None and (not _is_int(port) or not 0 <= port <= MAX_PORT):  # type: ignore[operator]
        raise ValidationError("port", f"must be an integer from 0 to {MAX_PORT}", INVALID_PORT)


def check_port(port: object) -> int:
    if port is None:
        raise ValidationError("port", "is required", INVALID_PORT)
    _check_port_range(port)
    return port  # type: ignore[return-value]


def _check_int(field: str, value: object, high: int, code: int = INVALID_PARAMETER) -> None:
    if value is not None and (not _is_int(value) or not 0 <= value <= high):  # type: ignore[operator]
        raise ValidationError(field, f"must be an integer from 0 to {high}", code)


def check_weight(weight: object) -> None:
    """None (not given: the server gives 100) or 0..65535."""
    _check_int("weight", weight, MAX_WEIGHT)


def check_priority(priority: object) -> None:
    """None or 0..127 (a TINYINT on MySQL-backed servers)."""
    _check_int("priority", priority, MAX_PRIORITY)


def check_flag(field: str, value: object) -> None:
    """None (not given) or a bool; ``"yes"`` and 1 are refused."""
    if value is not None and not isinstance(value, bool):
        raise ValidationError(field, "must be true or false", INVALID_PARAMETER)


def _check_metadata_type(metadata: object) -> None:
    if metadata is not None and not isinstance(metadata, Mapping):
        raise ValidationError(
            "metadata", "must be a mapping of strings to strings", INVALID_METADATA
        )


def _check_metadata_count(metadata: object) -> None:
    _check_metadata_type(metadata)
    if metadata is not None and len(metadata) > MAX_METADATA_ENTRIES:  # type: ignore[arg-type]
        raise ValidationError(
            "metadata", f"must have at most {MAX_METADATA_ENTRIES} entries", INVALID_METADATA
        )


def _check_metadata_entries(metadata: Mapping[Any, Any] | None) -> None:
    if not metadata:
        return
    for key, value in metadata.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise ValidationError("metadata", "keys and values must be strings", INVALID_METADATA)
        if not _encodable(key) or not _encodable(value):
            raise ValidationError(
                "metadata", "must be valid Unicode text (no lone surrogates)", INVALID_METADATA
            )
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


def check_metadata(metadata: object, *, count: bool = True) -> None:
    """None or a mapping of strings within the limits.

    ``count=False`` skips the count, for metadata a server answered with: it
    adds keys of its own (``version``, ``protocol``, the location) to an
    instance's 64.
    """
    if count:
        _check_metadata_count(metadata)
    else:
        _check_metadata_type(metadata)
    _check_metadata_entries(metadata)  # type: ignore[arg-type]


def check_instance_id(instance_id: object) -> None:
    """A supplied id must not be empty (absent is fine: it is then computed)."""
    if instance_id is None:
        return
    check_text("instance_id", instance_id, INVALID_INSTANCE_ID, MAX_ID)
    if not instance_id:
        raise ValidationError("instance_id", "must not be empty when given", INVALID_INSTANCE_ID)


def _check_unchecked_fields(
    instance_id: object,
    vpc_id: object,
    region: object,
    zone: object,
    campus: object,
    priority: object,
) -> None:
    """Fields a real server stores without checking, bounded by its MySQL columns."""
    _check_length("instance_id", instance_id, MAX_ID, INVALID_INSTANCE_ID)
    _check_length("vpc_id", vpc_id, MAX_VPC_ID, INVALID_PARAMETER)
    _check_length("region", region, MAX_LOCATION, INVALID_PARAMETER)
    _check_length("zone", zone, MAX_LOCATION, INVALID_PARAMETER)
    _check_length("campus", campus, MAX_LOCATION, INVALID_PARAMETER)
    check_priority(priority)


def check_instance(
    *,
    namespace: object,
    service: object,
    host: object,
    port: object,
    protocol: object = None,
    version: object = None,
    logic_set: object = None,
    weight: object = None,
    metadata: object = None,
    instance_id: object = None,
    vpc_id: object = None,
    region: object = None,
    zone: object = None,
    campus: object = None,
    priority: object = None,
) -> None:
    """All the rules of a registration, in the order a real server checks them.

    As ``service/interceptor/paramcheck/instance.go`` does: the metadata
    count; then every length and range (service, namespace, host, protocol,
    version, logic_set, metadata entries, port, weight); only then the
    presence and form of service, namespace, host and port. So an instance
    with a too-long protocol and no port is refused for its protocol. The
    fields the real server does not check come last.
    """
    _check_metadata_count(metadata)
    _check_length("service", service, MAX_SERVICE, INVALID_SERVICE)
    _check_length("namespace", namespace, MAX_NAMESPACE, INVALID_NAMESPACE)
    _check_length("host", host, MAX_HOST, INVALID_HOST)
    _check_length("protocol", protocol, MAX_PROTOCOL, INVALID_PROTOCOL)
    _check_length("version", version, MAX_VERSION, INVALID_VERSION)
    _check_length("logic_set", logic_set, MAX_LOGIC_SET, INVALID_LOGIC_SET)
    _check_metadata_entries(metadata)  # type: ignore[arg-type]
    _check_port_range(port)
    check_weight(weight)
    check_service(service)
    check_namespace(namespace)
    check_host(host)
    check_port(port)
    _check_unchecked_fields(instance_id, vpc_id, region, zone, campus, priority)


def check_service_token(token: object) -> None:
    """None or a string; the value is never shown."""
    _check_length("service_token", token, MAX_SERVICE_TOKEN, INVALID_PARAMETER)


def check_ttl(ttl: object) -> None:
    """None (the configured default) or whole seconds from 1 to 60."""
    if ttl is not None and (not _is_int(ttl) or not 1 <= ttl <= MAX_TTL):  # type: ignore[operator]
        raise ValidationError(
            "ttl", f"must be an integer from 1 to {MAX_TTL} seconds", INVALID_PARAMETER
        )


def check_register_request(req: InstanceRegisterRequest) -> None:
    """Every rule of a registration request; raises ValidationError naming the field."""
    check_instance(
        namespace=req.namespace,
        service=req.service,
        host=req.host,
        port=req.port,
        protocol=req.protocol,
        version=req.version,
        logic_set=req.logic_set,
        weight=req.weight,
        metadata=req.metadata,
        instance_id=req.instance_id,
        vpc_id=req.vpc_id,
        region=req.region,
        zone=req.zone,
        campus=req.campus,
        priority=req.priority,
    )
    check_instance_id(req.instance_id)
    check_ttl(req.ttl)
    for name in ("healthy", "isolate", "enable_health_check"):
        check_flag(name, getattr(req, name))
    check_service_token(req.service_token)


def check_instance_key_request(req: InstanceKeyRequest) -> None:
    """An instance is named by a non-empty id, or by namespace, service, host and port.

    With an id, the other fields are sent too: they must still be of the
    right type and size.
    """
    if req.instance_id is None:
        check_instance(
            namespace=req.namespace,
            service=req.service,
            host=req.host,
            port=req.port,
            vpc_id=req.vpc_id,
        )
    else:
        check_instance_id(req.instance_id)
        _check_length("service", req.service, MAX_SERVICE, INVALID_SERVICE)
        _check_length("namespace", req.namespace, MAX_NAMESPACE, INVALID_NAMESPACE)
        _check_length("host", req.host, MAX_HOST, INVALID_HOST)
        _check_port_range(req.port)
        _check_length("vpc_id", req.vpc_id, MAX_VPC_ID, INVALID_PARAMETER)
    check_service_token(req.service_token)


def instance_id(namespace: str, service: str, host: str, port: int, vpc_id: str = "") -> str:
    """The id a server gives an instance registered without one."""
    parts = [namespace, service, host, str(port)]
    if vpc_id:
        parts.insert(2, vpc_id)
    return hashlib.sha1("##".join(parts).encode("utf-8")).hexdigest()
