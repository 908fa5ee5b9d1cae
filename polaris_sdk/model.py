"""The SDK's data model: immutable values, request and response dataclasses,
and their conversion to and from the Polaris wire messages.

Everything here is a plain value: frozen dataclasses, safe to share between
threads and to keep as long as wanted. Conversion functions are pure; they
do not validate (see :mod:`polaris_sdk.validation`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Final

from polaris_sdk import wire
from polaris_sdk.defaults import DEFAULT_NAMESPACE, DEFAULT_TTL, DEFAULT_WEIGHT, LB_POLICIES

__all__ = [
    "DEFAULT_NAMESPACE",
    "DEFAULT_TTL",
    "DEFAULT_WEIGHT",
    "LB_POLICIES",
    "CircuitBreakerEvent",
    "GetAllInstancesRequest",
    "GetInstancesRequest",
    "GetOneInstanceRequest",
    "Instance",
    "InstanceDeregisterRequest",
    "InstanceHeartbeatRequest",
    "InstanceKeyRequest",
    "InstanceRegisterRequest",
    "InstanceRegisterResponse",
    "INSTANCE_WRAPPERS",
    "LOCATION_FIELDS",
    "instance_fields",
    "instance_message",
    "Interner",
    "Resource",
    "ServiceCallResult",
    "ServiceChangeEvent",
    "ServiceInstances",
    "ServiceKey",
    "WatchServiceRequest",
    "frozen_metadata",
    "instance_from_wire",
    "instance_key_to_wire",
    "register_request_to_wire",
    "service_instances_from_wire",
]


_EMPTY: Mapping[str, str] = MappingProxyType({})


def frozen_metadata(metadata: Mapping[str, str] | None) -> Mapping[str, str]:
    """A read-only copy of ``metadata``."""
    return MappingProxyType(dict(metadata)) if metadata else _EMPTY


@dataclass(frozen=True, slots=True, order=True)
class ServiceKey:
    """A service's identity: namespace and name."""

    namespace: str
    service: str

    def __str__(self) -> str:
        return f"{self.namespace}/{self.service}"


@dataclass(frozen=True, slots=True, eq=True)
class Instance:
    """One instance of a service, as the server last described it."""

    id: str
    namespace: str
    service: str
    host: str
    port: int
    protocol: str = ""
    version: str = ""
    weight: int = DEFAULT_WEIGHT
    healthy: bool = True
    isolated: bool = False
    metadata: Mapping[str, str] = field(default_factory=lambda: _EMPTY)
    ttl: int | None = None
    """Heartbeat TTL in seconds when the instance uses heartbeat health checks."""
    priority: int = 0
    logic_set: str = ""
    region: str = ""
    zone: str = ""
    campus: str = ""
    vpc_id: str = ""
    revision: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.metadata, MappingProxyType):
            object.__setattr__(self, "metadata", frozen_metadata(self.metadata))

    def __hash__(self) -> int:
        return hash(self.id)

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def service_key(self) -> ServiceKey:
        return ServiceKey(self.namespace, self.service)


@dataclass(frozen=True, slots=True, eq=False)
class ServiceInstances:
    """An immutable snapshot of a service's instances at one revision.

    Iterable over its :class:`Instance` objects, with ``len()``.
    ``fallback`` is true when a filtered query matched nothing and the answer
    is every instance instead; ``updated_at`` (unix seconds) is when the
    server last confirmed this snapshot, and ``from_backup`` says it was read
    from the disk backup rather than the server.
    """

    namespace: str
    service: str
    revision: str
    instances: tuple[Instance, ...] = ()
    metadata: Mapping[str, str] = field(default_factory=lambda: _EMPTY)
    updated_at: float = field(default_factory=time.time)
    from_backup: bool = False
    fallback: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.metadata, MappingProxyType):
            object.__setattr__(self, "metadata", frozen_metadata(self.metadata))
        if not isinstance(self.instances, tuple):
            object.__setattr__(self, "instances", tuple(self.instances))

    def __iter__(self) -> Iterator[Instance]:
        return iter(self.instances)

    def __len__(self) -> int:
        return len(self.instances)

    def __getitem__(self, index: int) -> Instance:
        return self.instances[index]

    @property
    def service_key(self) -> ServiceKey:
        return ServiceKey(self.namespace, self.service)

    @property
    def age(self) -> float:
        """Seconds since the server last confirmed this snapshot."""
        return max(0.0, time.time() - self.updated_at)


Listener = Callable[["ServiceChangeEvent"], None]


@dataclass(frozen=True, slots=True)
class ServiceChangeEvent:
    """What changed in a service between two snapshots."""

    namespace: str
    service: str
    added: tuple[Instance, ...]
    updated: tuple[tuple[Instance, Instance], ...]
    deleted: tuple[Instance, ...]
    instances: ServiceInstances
    revision: str

    @property
    def service_key(self) -> ServiceKey:
        return ServiceKey(self.namespace, self.service)


# ----------------------------------------------------------------- requests


@dataclass(frozen=True, slots=True, kw_only=True)
class InstanceRegisterRequest:
    """Register one instance. ``ttl`` (seconds) is the heartbeat interval; the
    server marks the instance unhealthy after three missed beats.

    A field left None is not sent: ``weight=None`` gets the server's default
    (100). ``service_token`` is never shown in ``repr``.
    """

    namespace: str = DEFAULT_NAMESPACE
    service: str
    host: str
    port: int
    protocol: str = ""
    version: str = ""
    weight: int | None = DEFAULT_WEIGHT
    metadata: Mapping[str, str] | None = None
    ttl: int | None = None
    healthy: bool | None = None
    isolate: bool | None = None
    instance_id: str | None = None
    priority: int | None = None
    logic_set: str = ""
    region: str = ""
    zone: str = ""
    campus: str = ""
    vpc_id: str = ""
    service_token: str | None = field(default=None, repr=False)
    enable_health_check: bool = True


@dataclass(frozen=True, slots=True)
class InstanceRegisterResponse:
    """What a registration answered.

    ``existed`` is true when the instance was already registered as far as
    this SDK can tell: the context's ``register_instance`` already kept it
    (the new request replaced that registration), or the server answered
    400201 ExistedResource. A real polaris-server upserts and answers 200000,
    so an instance registered by another process, or by the one-shot
    ``register``, reads as false.
    """

    instance_id: str
    existed: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class InstanceKeyRequest:
    """Names one instance: by ``instance_id``, or by namespace, service, host and port.

    ``service_token`` is never shown in ``repr``.
    """

    namespace: str = DEFAULT_NAMESPACE
    service: str = ""
    host: str = ""
    port: int | None = None
    instance_id: str | None = None
    vpc_id: str = ""
    service_token: str | None = field(default=None, repr=False)


@dataclass(frozen=True, slots=True, kw_only=True)
class InstanceDeregisterRequest(InstanceKeyRequest):
    """Deregister one instance, named by id or by namespace, service, host and port."""


@dataclass(frozen=True, slots=True, kw_only=True)
class InstanceHeartbeatRequest(InstanceKeyRequest):
    """Heartbeat one instance, named by id or by namespace, service, host and port."""


@dataclass(frozen=True, slots=True)
class GetAllInstancesRequest:
    namespace: str = DEFAULT_NAMESPACE
    service: str = ""


@dataclass(frozen=True, slots=True)
class GetInstancesRequest:
    namespace: str = DEFAULT_NAMESPACE
    service: str = ""
    metadata: Mapping[str, str] | None = None


@dataclass(frozen=True, slots=True)
class GetOneInstanceRequest:
    namespace: str = DEFAULT_NAMESPACE
    service: str = ""
    hash_key: str | bytes | None = None
    metadata: Mapping[str, str] | None = None
    lb_policy: str | None = None


@dataclass(frozen=True, slots=True)
class WatchServiceRequest:
    namespace: str = DEFAULT_NAMESPACE
    service: str = ""
    listeners: Sequence[Listener] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class ServiceCallResult:
    """The outcome of one call to an instance, for the circuit breaker.

    Name the instance with ``instance`` (as ``get_one_instance`` returned it)
    or with ``host`` and ``port``. ``ret_status`` is ``"success"``, ``"fail"``,
    ``"timeout"`` or ``"unreachable"`` (the connection could not be made at
    all: refused, no route); ``ret_code`` is the protocol's code (an HTTP
    status, a gRPC code); ``delay`` is the call's duration in seconds;
    ``method`` names what was called (an HTTP path, a gRPC method).
    """

    namespace: str = DEFAULT_NAMESPACE
    service: str = ""
    instance: Instance | None = None
    host: str = ""
    port: int | None = None
    ret_status: str = "success"
    ret_code: int | None = None
    delay: float | None = None
    method: str = ""
    caller_namespace: str = ""
    caller_service: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class Resource:
    """What a :class:`~polaris_sdk.CircuitBreakerAPI` breaker guards: a service, one
    ``method`` of it, or one instance (``host`` and ``port``)."""

    namespace: str = DEFAULT_NAMESPACE
    service: str = ""
    method: str = ""
    host: str = ""
    port: int | None = None

    @property
    def level(self) -> str:
        if self.host:
            return "instance"
        return "method" if self.method else "service"


@dataclass(frozen=True, slots=True)
class CircuitBreakerEvent:
    """A breaker changed state. ``level`` is ``instance`` (``resource`` is
    ``host:port``), ``service`` (``resource`` is empty) or ``method``
    (``resource`` is the method); states are ``closed``, ``open``, ``half_open``."""

    namespace: str
    service: str
    level: str
    resource: str
    old_state: str
    new_state: str
    reason: str
    rule: str

    @property
    def service_key(self) -> ServiceKey:
        return ServiceKey(self.namespace, self.service)


# --------------------------------------------------------------- conversion


INSTANCE_WRAPPERS: Final = (
    "id",
    "namespace",
    "service",
    "vpc_id",
    "host",
    "port",
    "protocol",
    "version",
    "priority",
    "weight",
    "enable_health_check",
    "healthy",
    "isolate",
    "logic_set",
    "revision",
    "service_token",
    "ctime",
    "mtime",
)
"""The wrapper fields of ``v1.Instance`` the SDK and the server use, by their wire names."""
LOCATION_FIELDS: Final = ("region", "zone", "campus")
_HEARTBEAT_CHECK: Final = wire.HEALTH_CHECK_TYPE.values_by_name["HEARTBEAT"].number


def instance_message(
    fields: Mapping[str, Any],
    *,
    metadata: Mapping[str, str] | None = None,
    heartbeat_ttl: int | None = None,
    keep_empty: bool = False,
) -> Any:
    """The ``v1.Instance`` with ``fields`` (by wire name), written in one place for the
    SDK's requests and the server's answers.

    A field that is None is left unset, and so is an empty string unless
    ``keep_empty`` (a server's answer carries every field it stores). The
    location is set when any of region / zone / campus is; ``heartbeat_ttl``
    adds a heartbeat health check with that TTL.
    """
    msg = wire.Instance()
    for name in INSTANCE_WRAPPERS:
        value = fields.get(name)
        if value is None or (value == "" and not keep_empty):
            continue
        getattr(msg, name).value = value
    if any(fields.get(name) for name in LOCATION_FIELDS):
        for name in LOCATION_FIELDS:
            getattr(msg.location, name).value = fields.get(name) or ""
    if metadata:
        msg.metadata.update(metadata)
    if heartbeat_ttl is not None:
        msg.health_check.type = _HEARTBEAT_CHECK
        msg.health_check.heartbeat.ttl.value = heartbeat_ttl
    return msg


def instance_fields(msg: Any) -> dict[str, Any]:
    """The wrapper fields ``msg`` (a ``v1.Instance``) carries, by wire name, plus its
    location fields (empty when unset): the reading twin of :func:`instance_message`."""
    fields: dict[str, Any] = {
        name: getattr(msg, name).value for name in INSTANCE_WRAPPERS if msg.HasField(name)
    }
    location = msg.location
    for name in LOCATION_FIELDS:
        fields[name] = getattr(location, name).value
    return fields


def register_request_to_wire(req: InstanceRegisterRequest, ttl: int | None = None) -> Any:
    """The ``v1.Instance`` a RegisterInstance call sends for ``req``.

    ``ttl`` overrides ``req.ttl`` (the flow applies the default).
    """
    effective_ttl = ttl if ttl is not None else req.ttl
    checked = req.enable_health_check and effective_ttl is not None
    return instance_message(
        {
            "id": req.instance_id,
            "namespace": req.namespace,
            "service": req.service,
            "host": req.host,
            "port": req.port,
            "vpc_id": req.vpc_id,
            "protocol": req.protocol,
            "version": req.version,
            "priority": req.priority,
            "weight": req.weight,
            "logic_set": req.logic_set,
            "healthy": req.healthy,
            "isolate": req.isolate,
            "service_token": req.service_token,
            "enable_health_check": True if checked else None,
            "region": req.region,
            "zone": req.zone,
            "campus": req.campus,
        },
        metadata=req.metadata,
        heartbeat_ttl=effective_ttl if checked else None,
    )


def instance_key_to_wire(req: InstanceKeyRequest) -> Any:
    """The ``v1.Instance`` naming one instance, for Deregister and Heartbeat."""
    msg = wire.Instance()
    if req.instance_id is not None:
        msg.id.value = req.instance_id
    if req.service:
        msg.service.value = req.service
    if req.namespace:
        msg.namespace.value = req.namespace
    if req.host:
        msg.host.value = req.host
    if req.port is not None:
        msg.port.value = req.port
    if req.vpc_id:
        msg.vpc_id.value = req.vpc_id
    if req.service_token:
        msg.service_token.value = req.service_token
    return msg


class Interner:
    """Stores equal strings and metadata maps once, for one snapshot's conversion.

    In a Discover answer the namespace, service, protocol, version and most
    metadata are the same for every instance, and the wire decoder makes a
    new ``str`` for each field read: sharing them halves what a cached
    instance costs. Maps are shared by their items (values are immutable).
    """

    __slots__ = ("_maps", "_strings")

    def __init__(self) -> None:
        self._strings: dict[str, str] = {}
        self._maps: dict[tuple[tuple[str, str], ...], Mapping[str, str]] = {}

    def string(self, value: str) -> str:
        return self._strings.setdefault(value, value)

    def metadata(self, metadata: Mapping[str, str]) -> Mapping[str, str]:
        if not metadata:
            return _EMPTY
        string = self.string
        items = tuple(sorted((string(k), string(v)) for k, v in metadata.items()))
        found = self._maps.get(items)
        if found is None:
            found = self._maps[items] = MappingProxyType(dict(items))
        return found


def instance_from_wire(
    msg: Any, namespace: str = "", service: str = "", interner: Interner | None = None
) -> Instance:
    """An :class:`Instance` from a ``v1.Instance`` (as Discover returns it); ``interner``
    shares equal strings and maps with the other instances of its snapshot."""
    ttl: int | None = None
    if msg.HasField("health_check") and msg.health_check.heartbeat.HasField("ttl"):
        ttl = msg.health_check.heartbeat.ttl.value
    shared = interner or Interner()
    string = shared.string
    get = instance_fields(msg).get
    return Instance(
        id=get("id", ""),
        namespace=string(get("namespace") or namespace),
        service=string(get("service") or service),
        host=get("host", ""),
        port=get("port", 0),
        protocol=string(get("protocol", "")),
        version=string(get("version", "")),
        weight=get("weight", DEFAULT_WEIGHT),
        healthy=get("healthy", True),
        isolated=get("isolate", False),
        metadata=shared.metadata(msg.metadata),
        ttl=ttl,
        priority=get("priority", 0),
        logic_set=string(get("logic_set", "")),
        region=string(get("region", "")),
        zone=string(get("zone", "")),
        campus=string(get("campus", "")),
        vpc_id=string(get("vpc_id", "")),
        revision=get("revision", ""),
    )


def service_instances_from_wire(resp: Any, namespace: str, service: str) -> ServiceInstances:
    """A snapshot from a successful Discover INSTANCE response."""
    interner = Interner()
    ns = interner.string(resp.service.namespace.value or namespace)
    name = interner.string(resp.service.name.value or service)
    return ServiceInstances(
        namespace=ns,
        service=name,
        revision=resp.service.revision.value,
        instances=tuple(instance_from_wire(i, ns, name, interner) for i in resp.instances),
        metadata=frozen_metadata(resp.service.metadata),
    )
