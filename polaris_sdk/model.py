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
from typing import Any

from polaris_sdk import wire

__all__ = [
    "DEFAULT_NAMESPACE",
    "DEFAULT_TTL",
    "DEFAULT_WEIGHT",
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

DEFAULT_NAMESPACE = "default"
DEFAULT_TTL = 5
DEFAULT_WEIGHT = 100
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


def _str(value: str) -> Any:
    return wire.StringValue(value=value)


def register_request_to_wire(req: InstanceRegisterRequest, ttl: int | None = None) -> Any:
    """The ``v1.Instance`` a RegisterInstance call sends for ``req``.

    ``ttl`` overrides ``req.ttl`` (the flow applies the default).
    """
    msg = wire.Instance(
        service=_str(req.service),
        namespace=_str(req.namespace),
        host=_str(req.host),
        port=wire.UInt32Value(value=req.port),
    )
    if req.weight is not None:
        msg.weight.value = req.weight
    if req.instance_id:
        msg.id.value = req.instance_id
    if req.vpc_id:
        msg.vpc_id.value = req.vpc_id
    if req.protocol:
        msg.protocol.value = req.protocol
    if req.version:
        msg.version.value = req.version
    if req.priority is not None:
        msg.priority.value = req.priority
    if req.logic_set:
        msg.logic_set.value = req.logic_set
    if req.healthy is not None:
        msg.healthy.value = req.healthy
    if req.isolate is not None:
        msg.isolate.value = req.isolate
    if req.service_token:
        msg.service_token.value = req.service_token
    if req.region or req.zone or req.campus:
        msg.location.region.value = req.region
        msg.location.zone.value = req.zone
        msg.location.campus.value = req.campus
    if req.metadata:
        msg.metadata.update(req.metadata)
    effective_ttl = ttl if ttl is not None else req.ttl
    if req.enable_health_check and effective_ttl is not None:
        msg.enable_health_check.value = True
        msg.health_check.type = wire.HEALTH_CHECK_TYPE.values_by_name["HEARTBEAT"].number
        msg.health_check.heartbeat.ttl.value = effective_ttl
    return msg


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


def instance_from_wire(msg: Any, namespace: str = "", service: str = "") -> Instance:
    """An :class:`Instance` from a ``v1.Instance`` (as Discover returns it)."""
    ttl: int | None = None
    if msg.HasField("health_check") and msg.health_check.heartbeat.HasField("ttl"):
        ttl = msg.health_check.heartbeat.ttl.value
    return Instance(
        id=msg.id.value,
        namespace=msg.namespace.value or namespace,
        service=msg.service.value or service,
        host=msg.host.value,
        port=msg.port.value,
        protocol=msg.protocol.value,
        version=msg.version.value,
        weight=msg.weight.value if msg.HasField("weight") else DEFAULT_WEIGHT,
        healthy=msg.healthy.value if msg.HasField("healthy") else True,
        isolated=msg.isolate.value,
        metadata=frozen_metadata(msg.metadata),
        ttl=ttl,
        priority=msg.priority.value,
        logic_set=msg.logic_set.value,
        region=msg.location.region.value,
        zone=msg.location.zone.value,
        campus=msg.location.campus.value,
        vpc_id=msg.vpc_id.value,
        revision=msg.revision.value,
    )


def service_instances_from_wire(resp: Any, namespace: str, service: str) -> ServiceInstances:
    """A snapshot from a successful Discover INSTANCE response."""
    ns = resp.service.namespace.value or namespace
    name = resp.service.name.value or service
    return ServiceInstances(
        namespace=ns,
        service=name,
        revision=resp.service.revision.value,
        instances=tuple(instance_from_wire(i, ns, name) for i in resp.instances),
        metadata=frozen_metadata(resp.service.metadata),
    )
