"""The naming service of the embedded server: what a registration, a heartbeat
and a discovery mean, independent of the transport.

Each public method takes a wire request (``v1.Instance``, ``v1.DiscoverRequest``,
``v1.Client``) and a :class:`RequestContext` and returns the wire answer
(``v1.Response`` or ``v1.DiscoverResponse``) with its ``code``; it never
raises for a bad request and holds no gRPC or HTTP type, so every apiserver
reuses it. The behaviour is the real server's as protocol.md describes it:
validation codes from :mod:`polaris_sdk.validation`, SHA-1 instance ids,
upsert keeping ``isolate`` when omitted, TTL outside (0, 60] -> 5, services
and namespaces created on first registration, revisions, DataNoChange, the
four forgiven heartbeats of an unknown id. A registration is applied before
it is answered, so ``async-regis`` (queue it, answer at once) needs nothing
more. Answers never carry a token. A storage failure in the store plugin
(:data:`STORE_ERRORS`) is logged and answered 500001 StoreLayerException, as
a real server answers a failed database call; the apiservers answer anything
else that escapes 500000 ExecuteException.

Thread-safe: state lives in the store plugin (atomic per call) and in small
locked tables here. Every method returns quickly; nothing blocks on I/O.
Answers may be shared between callers (a Discover answer is reused while the
service's revision holds): serialize them, never modify them.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import sqlite3
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Final

from polaris_sdk import validation, wire
from polaris_sdk.defaults import DEFAULT_NAMESPACE, DEFAULT_TTL, DEFAULT_WEIGHT, MAX_TTL
from polaris_sdk.errors import ValidationError
from polaris_sdk.model import instance_fields, instance_message
from polaris_sdk.server import messages
from polaris_sdk.server.healthcheck import Beat, HeartbeatBook
from polaris_sdk.server.store.base import (
    HealthCheckRecord,
    InstanceRecord,
    NamespaceRecord,
    ServiceInstancesView,
    ServiceRecord,
    Store,
)

__all__ = [
    "DEFAULT_NAMESPACE",
    "DEFAULT_TTL",
    "FORGIVEN_HEARTBEATS",
    "LAST_HEARTBEAT_KEY",
    "STORE_ERRORS",
    "SYSTEM_NAMESPACE",
    "NamingService",
    "RequestContext",
    "ServerFaults",
    "StoreFailure",
    "code_info",
    "discover_response",
    "discovered_instance",
    "heartbeat_requests",
    "instance_to_wire",
    "response",
]

log = logging.getLogger("polaris_sdk.server.naming")

SYSTEM_NAMESPACE: Final = "Polaris"
FORGIVEN_HEARTBEATS: Final = 4
LAST_HEARTBEAT_KEY: Final = "internal-lastheartbeat"
# Bounds on the tables fed by clients, so a misbehaving client cannot grow them forever.
_MAX_UNKNOWN_BEATS: Final = 10_000
_MAX_CLIENTS: Final = 10_000

_HEARTBEAT = wire.HEALTH_CHECK_TYPE.values_by_name["HEARTBEAT"].number
_REQ = wire.DISCOVER_REQUEST_TYPE.values_by_name
_RESP = wire.DISCOVER_RESPONSE_TYPE.values_by_name
_INSTANCE = _REQ["INSTANCE"].number
_SERVICES = _REQ["SERVICES"].number
_ROUTING = _REQ["ROUTING"].number
NO_RULES_REVISION: Final = hashlib.sha1(b"").hexdigest()
"""The revision of an empty rule set (a real server's composite revision of nothing)."""
# Rule types a real server answers from its rule caches; this server has no
# rules, so a valid request gets success with nothing in it.
_RULE_TYPES: Final = frozenset(
    _REQ[name].number for name in ("ROUTING", "RATE_LIMIT", "CIRCUIT_BREAKER", "FAULT_DETECTOR")
)
_CIRCUIT_BREAKER: Final = _REQ["CIRCUIT_BREAKER"].number


def code_info(code: int) -> str:
    """The message a real server puts next to ``code`` (English; see :mod:`.messages`)."""
    known = code in messages.LANGUAGES[messages.DEFAULT_LANGUAGE]
    return messages.code_text(code) if known else wire.Code.name(code)


@dataclass(frozen=True, slots=True)
class RequestContext:
    """Who sent a request, read by the apiserver from the transport's headers.

    ``token`` is never shown in ``repr`` (and must never be logged).
    """

    token: str = field(default="", repr=False)
    request_id: str = ""
    user_agent: str = ""
    client_address: str = ""
    async_register: bool = False


INTERNAL_CONTEXT: Final = RequestContext(user_agent="polaris-server")


def _str(value: str) -> Any:
    return wire.StringValue(value=value)


def _time_text(seconds: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(seconds))


def _new_revision() -> str:
    return uuid.uuid4().hex


def response(code: int, info: str = "", **fields: Any) -> Any:
    """A ``v1.Response`` with ``code``, its message and the given message fields."""
    return wire.Response(
        code=wire.UInt32Value(value=code), info=_str(info or code_info(code)), **fields
    )


def discover_response(code: int, type_number: int, service: Any = None, info: str = "") -> Any:
    msg = wire.DiscoverResponse(
        code=wire.UInt32Value(value=code), info=_str(info or code_info(code)), type=type_number
    )
    if service is not None:
        msg.service.CopyFrom(service)
    return msg


def _echo(instance: Any) -> Any:
    """The request instance as an error answer carries it, without its token."""
    echo = wire.Instance()
    echo.CopyFrom(instance)
    echo.ClearField("service_token")
    return echo


def _as_sent(instance: Any, instance_id: str | None = None) -> Any:
    """The request instance as sent (token included), with ``instance_id`` filled in."""
    echo = wire.Instance()
    echo.CopyFrom(instance)
    if instance_id is not None:
        echo.id.value = instance_id
    return echo


def _echo_service(service: Any, namespace: str | None = None) -> Any:
    """The request service as an answer echoes it, without its token."""
    echo = wire.Service()
    echo.CopyFrom(service)
    echo.ClearField("token")
    if namespace is not None:
        echo.namespace.value = namespace
    return echo


def _key_instance(record_id: str, instance: Any) -> Any:
    """``{id, service, namespace, vpc_id, host, port}`` as a success answer carries it."""
    key = wire.Instance(id=_str(record_id))
    for name in ("service", "namespace", "vpc_id", "host", "port"):
        if instance.HasField(name):
            getattr(key, name).CopyFrom(getattr(instance, name))
    return key


def _failure(err: ValidationError) -> str:
    """The answer's ``info``: the code's text alone, as a real server's; the detail is logged."""
    log.debug("request refused with %d: %s", err.code, err)
    return code_info(err.code)


def instance_to_wire(record: InstanceRecord) -> Any:
    """The ``v1.Instance`` Discover returns for ``record`` (never a token)."""
    check = record.health_check
    msg = instance_message(
        {
            "id": record.id,
            "namespace": record.namespace,
            "service": record.service,
            "host": record.host,
            "port": record.port,
            "vpc_id": record.vpc_id or None,
            "protocol": record.protocol,
            "version": record.version,
            "priority": record.priority,
            "weight": record.weight,
            "enable_health_check": record.enable_health_check,
            "healthy": record.healthy,
            "isolate": record.isolate,
            "logic_set": record.logic_set,
            "revision": record.revision,
            "ctime": _time_text(record.ctime),
            "mtime": _time_text(record.mtime),
            "region": record.region,
            "zone": record.zone,
            "campus": record.campus,
        },
        metadata=record.metadata,
        heartbeat_ttl=check.ttl if check is not None else None,
        keep_empty=True,
    )
    if check is not None:
        msg.health_check.type = check.type
    return msg


def _service_to_wire(record: ServiceRecord, revision: str) -> Any:
    """The service as a Discover answer carries it (``service`` and ``aliasFor``)."""
    msg = wire.Service(
        id=_str(record.id),
        name=_str(record.name),
        namespace=_str(record.namespace),
        revision=_str(revision),
        ctime=_str(_time_text(record.ctime)),
        mtime=_str(_time_text(record.mtime)),
    )
    if record.metadata:
        msg.metadata.update(record.metadata)
    return msg


def discovered_instance(record: InstanceRecord) -> Any:
    """The instance as Discover answers it: :func:`instance_to_wire` with the labels a
    real server's cache copies into the metadata (``version``, ``protocol`` when set;
    ``region`` / ``zone`` / ``campus`` when a location is), over the client's own keys."""
    msg = instance_to_wire(record)
    if record.version:
        msg.metadata["version"] = record.version
    if record.protocol:
        msg.metadata["protocol"] = record.protocol
    if record.region or record.zone or record.campus:
        msg.metadata["region"] = record.region
        msg.metadata["zone"] = record.zone
        msg.metadata["campus"] = record.campus
    return msg


def _health_check(instance: Any) -> HealthCheckRecord | None:
    """The heartbeat check a registration asks for, with the TTL rule applied."""
    if not instance.HasField("health_check"):
        return None
    check = instance.health_check
    if not check.HasField("heartbeat"):  # the type alone turns nothing on
        return None
    if instance.HasField("enable_health_check") and not instance.enable_health_check.value:
        return None
    ttl = check.heartbeat.ttl.value
    if not 0 < ttl <= MAX_TTL:
        ttl = DEFAULT_TTL
    return HealthCheckRecord(type=_HEARTBEAT, ttl=ttl)


def _validate_registration(instance: Any) -> None:
    validation.check_instance(
        namespace=instance.namespace.value,
        service=instance.service.value,
        host=instance.host.value,
        port=instance.port.value if instance.HasField("port") else None,
        protocol=instance.protocol.value,
        version=instance.version.value,
        logic_set=instance.logic_set.value,
        weight=instance.weight.value if instance.HasField("weight") else None,
        metadata=instance.metadata,
        instance_id=instance.id.value,
        vpc_id=instance.vpc_id.value,
        region=instance.location.region.value,
        zone=instance.location.zone.value,
        campus=instance.location.campus.value,
        priority=instance.priority.value,
    )


def registration_id(instance: Any) -> str:
    """The id a (valid) registration gets: given, or computed from its fields."""
    return str(instance.id.value) or validation.instance_id(
        instance.namespace.value,
        instance.service.value,
        instance.host.value,
        instance.port.value,
        instance.vpc_id.value,
    )


def heartbeat_requests(beats: Any) -> Iterator[Any]:
    """Each ``v1.InstanceHeartbeat`` as the ``v1.Instance`` of a heartbeat: by its id, or
    by service, namespace, host and port when it has none."""
    for beat in beats:
        if beat.instanceId:
            yield wire.Instance(id=_str(beat.instanceId))
            continue
        instance = wire.Instance(port=wire.UInt32Value(value=beat.port))
        for name in ("service", "namespace", "host"):
            if getattr(beat, name):
                getattr(instance, name).value = getattr(beat, name)
        yield instance


def _instance_key(instance: Any) -> str:
    """The id a deregistration or heartbeat names: given, or computed from the four fields."""
    if instance.HasField("id"):
        validation.check_instance_id(instance.id.value)
        return str(instance.id.value)
    # A real server's order (CheckInstanceTetrad): service, namespace, host, port.
    service = validation.check_service(instance.service.value)
    namespace = validation.check_namespace(instance.namespace.value)
    host = validation.check_host(instance.host.value)
    port = validation.check_port(instance.port.value if instance.HasField("port") else None)
    return validation.instance_id(namespace, service, host, port, instance.vpc_id.value)


class StoreFailure(Exception):
    """A store plugin call failed: the request is answered 500001 StoreLayerException."""


STORE_ERRORS: Final[tuple[type[Exception], ...]] = (sqlite3.Error, OSError)
"""What a store plugin raises when its storage fails: the database (the SQLite
plugin) or the file system under it. Any other exception is a bug, answered
500000 ExecuteException by the apiserver."""


@contextlib.contextmanager
def _store_layer(what: str) -> Iterator[None]:
    """Turn a storage failure inside the store plugin into :class:`StoreFailure`, logged."""
    try:
        yield
    except STORE_ERRORS as exc:
        log.exception("store failure in %s; answering StoreLayerException", what)
        raise StoreFailure(what) from exc


class _BoundedCounter:
    """Counts per key, forgetting the least recently counted keys beyond ``limit``."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._counts: OrderedDict[str, int] = OrderedDict()
        self._lock = threading.Lock()

    def increment(self, key: str) -> int:
        with self._lock:
            count = self._counts.pop(key, 0) + 1
            self._counts[key] = count
            while len(self._counts) > self._limit:
                self._counts.popitem(last=False)
            return count

    def reset(self, key: str) -> None:
        with self._lock:
            self._counts.pop(key, None)

    def clear(self) -> None:
        with self._lock:
            self._counts.clear()


@dataclass(slots=True)
class ServerFaults:
    """Faults a test switches on to see how clients cope (all off by default).

    ``heartbeat_not_found``: every heartbeat is answered 400202
    NotFoundResource and not recorded, as by a server that lost the instance.
    """

    heartbeat_not_found: bool = False

    def reset(self) -> None:
        self.heartbeat_not_found = False


class NamingService:
    """Registration, heartbeat and discovery over a store plugin; see the module doc."""

    circuit_breaker_rules: Any = None
    """A :class:`~polaris_sdk.server.cbrules.CircuitBreakerRules` answering Discover
    CIRCUIT_BREAKER (set by PolarisServer); None answers with no rules."""

    def __init__(
        self,
        store: Store,
        *,
        health_check: bool = True,
        heartbeats: HeartbeatBook | None = None,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.health_check = health_check
        self.faults = ServerFaults()
        self.heartbeats = heartbeats or HeartbeatBook()
        self._wall = wall
        self._unknown_beats = _BoundedCounter(_MAX_UNKNOWN_BEATS)
        self._clients: OrderedDict[str, Any] = OrderedDict()
        self._clients_lock = threading.Lock()
        # Last built INSTANCE answer per service, reused while the revision holds:
        # many clients polling one service then share one message.
        # Likewise the DataNoChange answer to a client that has the revision.
        # Both are shared: nobody may change an answer after it is built.
        self._answers: dict[tuple[str, str], tuple[str, Any]] = {}
        self._unchanged: dict[tuple[str, str], tuple[str, Any]] = {}
        self._answers_lock = threading.Lock()
        self.ensure_namespaces()

    # ------------------------------------------------------------ lifecycle

    def ensure_namespaces(self) -> None:
        """Create the namespaces every server has: ``default`` and ``Polaris``."""
        now = self._wall()
        for name in (DEFAULT_NAMESPACE, SYSTEM_NAMESPACE):
            self.store.add_namespace(NamespaceRecord(name=name, ctime=now))

    def clear(self) -> None:
        """Forget every registration, heartbeat and client; keep the built-in namespaces."""
        self.store.clear()
        self.heartbeats.clear()
        self._unknown_beats.clear()
        with self._clients_lock:
            self._clients.clear()
        with self._answers_lock:
            self._answers.clear()
            self._unchanged.clear()
        self.ensure_namespaces()

    # --------------------------------------------------------- registration

    def register_instance(self, instance: Any, ctx: RequestContext = INTERNAL_CONTEXT) -> Any:
        # An empty Instance is not nil to a real server: it fails the checks (400120).
        try:
            _validate_registration(instance)
        except ValidationError as err:
            return response(err.code, _failure(err), instance=_echo(instance))
        namespace = instance.namespace.value
        service = instance.service.value
        instance_id = registration_id(instance)
        now = self._wall()

        def build(old: InstanceRecord | None) -> InstanceRecord:
            return self._record(instance_id, instance, old, now)

        old: InstanceRecord | None = None
        for _ in range(3):
            try:
                with _store_layer("register"):
                    self._ensure_service(namespace, service, now)
                    old, _new = self.store.modify_instance(instance_id, build)
                break
            except LookupError:
                continue  # cleared between creating the service and writing: create again
            except StoreFailure:
                return response(wire.Code.StoreLayerException, instance=_echo(instance))
        else:
            return response(wire.Code.StoreLayerException, instance=_echo(instance))
        self.heartbeats.registered(instance_id)
        self._unknown_beats.reset(instance_id)
        log.debug(
            "%s instance %s of %s/%s at %s:%d (request %s)",
            "updated" if old else "registered",
            instance_id,
            namespace,
            service,
            instance.host.value,
            instance.port.value,
            ctx.request_id or "-",
        )
        key = _key_instance(instance_id, instance)
        key.host.value = instance.host.value.strip()  # as stored; the id is of the host as sent
        return response(wire.Code.ExecuteSuccess, instance=key)

    def _ensure_service(self, namespace: str, service: str, now: float) -> None:
        if self.store.get_service(namespace, service) is not None:
            return
        self.store.add_namespace(NamespaceRecord(name=namespace, ctime=now))
        self.store.add_service(
            ServiceRecord(
                namespace=namespace,
                name=service,
                id=uuid.uuid4().hex,
                revision=_new_revision(),
                ctime=now,
                mtime=now,
            )
        )

    @staticmethod
    def _record(
        instance_id: str, msg: Any, old: InstanceRecord | None, now: float
    ) -> InstanceRecord:
        fields = instance_fields(msg)
        check = _health_check(msg)
        if "isolate" in fields:
            isolate = fields["isolate"]
        else:
            isolate = old.isolate if old is not None else False
        return InstanceRecord(
            id=instance_id,
            namespace=fields.get("namespace", ""),
            service=fields.get("service", ""),
            host=fields.get("host", "").strip(),
            port=fields.get("port", 0),
            revision=_new_revision(),
            vpc_id=fields.get("vpc_id", ""),
            protocol=fields.get("protocol", ""),
            version=fields.get("version", ""),
            priority=fields.get("priority", 0),
            weight=fields.get("weight", DEFAULT_WEIGHT),
            healthy=fields.get("healthy", True),
            isolate=isolate,
            enable_health_check=check is not None,
            health_check=check,
            logic_set=fields.get("logic_set", ""),
            region=fields["region"],
            zone=fields["zone"],
            campus=fields["campus"],
            metadata=dict(msg.metadata),
            ctime=old.ctime if old is not None else now,
            mtime=now,
        )

    def deregister_instance(self, instance: Any, ctx: RequestContext = INTERNAL_CONTEXT) -> Any:
        """Every answer echoes the request as sent (its token too, as a real server
        does), with the id filled in once it is known."""
        try:
            instance_id = _instance_key(instance)
        except ValidationError as err:
            return response(err.code, _failure(err), instance=_as_sent(instance))
        echo = _as_sent(instance, instance_id)
        try:
            with _store_layer("deregister"):
                removed = self.store.delete_instance(instance_id)
        except StoreFailure:
            return response(wire.Code.StoreLayerException, instance=echo)
        self.heartbeats.forget(instance_id)
        if removed is not None:
            log.debug("deregistered instance %s (request %s)", instance_id, ctx.request_id or "-")
        return response(wire.Code.ExecuteSuccess, instance=echo)

    def stored_target(self, instance: Any, *, register: bool) -> InstanceRecord | None:
        """The stored instance a register (or deregister / heartbeat) request acts on.

        None when the request names no valid id or no such instance is stored.
        The auth filter authorises against the namespace of this record, since
        an id (a SHA-1 of public fields) may name an instance anywhere. Raises
        :class:`StoreFailure` when the store cannot be read.
        """
        try:
            if register:
                _validate_registration(instance)
                instance_id = registration_id(instance)
            else:
                instance_id = _instance_key(instance)
        except ValidationError:
            return None
        with _store_layer("lookup"):
            return self.store.get_instance(instance_id)

    # ------------------------------------------------------------ heartbeat

    def heartbeat(self, instance: Any, ctx: RequestContext = INTERNAL_CONTEXT) -> Any:
        """Record a beat. Any known instance gets 200000, as protocol.md says (a real
        server answers 400141 for one registered without a heartbeat check)."""
        if not self.health_check:
            return response(wire.Code.HealthCheckNotOpen)
        try:
            instance_id = _instance_key(instance)
        except ValidationError as err:
            return response(err.code, _failure(err), instance=_as_sent(instance))
        key = _as_sent(instance)  # every answer echoes the request as sent
        if self.faults.heartbeat_not_found:
            return response(wire.Code.NotFoundResource, instance=key)
        try:
            with _store_layer("heartbeat"):
                known = self.store.get_instance(instance_id) is not None
        except StoreFailure:
            return response(wire.Code.StoreLayerException, instance=key)
        if not known:
            # A real server forgives a few beats that overtake the registration
            # in its cache; after that the client must register again.
            if self._unknown_beats.increment(instance_id) <= FORGIVEN_HEARTBEATS:
                return response(wire.Code.ExecuteSuccess, instance=key)
            return response(wire.Code.NotFoundResource, instance=key)
        self.heartbeats.beat(instance_id)
        return response(wire.Code.ExecuteSuccess, instance=key)

    def heartbeat_records(self, instance_ids: Any) -> Any:
        """``v1.GetHeartbeatsResponse``: the last beat (unix seconds) of each id, if any.

        Empty when health checking is off, as from a real server without a
        heartbeat checker."""
        answer = wire.GetHeartbeatsResponse()
        if not self.health_check:
            return answer
        for instance_id in instance_ids:
            beat = self.heartbeats.last_beat(instance_id)
            record = answer.records.add(instanceId=instance_id, exist=beat is not None)
            if beat is not None:
                record.lastHeartbeatSec = int(beat.wall)
        return answer

    def delete_heartbeats(self, instance_ids: Any) -> Any:
        """Forget the last beat of each id (not its instance): ``v1.DelHeartbeatsResponse``,
        empty as a real server's (no code)."""
        if self.health_check:
            for instance_id in instance_ids:
                self.heartbeats.forget_beat(instance_id)
        return wire.DelHeartbeatsResponse()

    def apply_health(self, record: InstanceRecord, healthy: bool, last_heard: Beat | None) -> bool:
        """Set the instance's health unless it changed since ``record`` was read.

        Going unhealthy records the last beat (unix seconds) in the metadata
        under ``internal-lastheartbeat``; going healthy removes it. Either way
        the instance gets a new revision. Returns whether anything changed.
        """

        def change(current: InstanceRecord | None) -> InstanceRecord | None:
            if current is None or current.revision != record.revision:
                return None
            metadata = dict(current.metadata)
            if healthy:
                metadata.pop(LAST_HEARTBEAT_KEY, None)
            else:
                heard = last_heard.wall if last_heard else current.mtime
                metadata[LAST_HEARTBEAT_KEY] = str(int(heard))
            return replace(
                current,
                healthy=healthy,
                metadata=metadata,
                revision=_new_revision(),
                mtime=self._wall(),
            )

        old, new = self.store.modify_instance(record.id, change)
        return new is not old

    # ------------------------------------------------------------- discover

    def discover(
        self, request: Any, ctx: RequestContext = INTERNAL_CONTEXT, *, only_healthy: bool = False
    ) -> Any:
        kind = request.type
        try:
            if kind == _INSTANCE:
                return self._discover_instances(request, only_healthy)
            if kind == _SERVICES:
                return self._discover_services(request)
        except StoreFailure:
            echo = _echo_service(request.service) if request.HasField("service") else None
            return discover_response(wire.Code.StoreLayerException, kind, echo)
        if kind in _RULE_TYPES:
            return self._discover_rules(request)
        # A real server answers every type it does not serve as a ROUTING answer.
        return discover_response(
            wire.Code.InvalidDiscoverResource,
            _ROUTING,
            _echo_service(request.service) if request.HasField("service") else None,
        )

    def _discover_instances(self, request: Any, only_healthy: bool) -> Any:
        if not request.HasField("service"):
            return discover_response(wire.Code.EmptyRequest, _INSTANCE)
        asked = request.service
        if not asked.name.value:
            return discover_response(wire.Code.InvalidServiceName, _INSTANCE, _echo_service(asked))
        namespace = asked.namespace.value or DEFAULT_NAMESPACE
        with _store_layer("discover"):
            view = self.store.service_instances(namespace, asked.name.value)
        if view is None:
            echo = _echo_service(asked, namespace)
            return discover_response(wire.Code.NotFoundResource, _INSTANCE, echo)
        key = (namespace, asked.name.value)
        if asked.revision.value == view.revision:
            return self._cached_answer(self._unchanged, key, view, self._unchanged_answer)
        if only_healthy:
            # Health alone, as a real server filters: a healthy isolated instance stays.
            return self._instances_answer(view, lambda r: r.healthy)
        return self._cached_answer(self._answers, key, view, self._full_answer)

    def _cached_answer(
        self,
        cache: dict[tuple[str, str], tuple[str, Any]],
        key: tuple[str, str],
        view: ServiceInstancesView,
        build: Callable[[ServiceInstancesView], Any],
    ) -> Any:
        """The answer kept in ``cache`` for ``key`` while the view's revision holds."""
        with self._answers_lock:
            cached = cache.get(key)
        if cached is not None and cached[0] == view.revision:
            return cached[1]
        answer = build(view)
        with self._answers_lock:
            cache[key] = (view.revision, answer)
        return answer

    @staticmethod
    def _unchanged_answer(view: ServiceInstancesView) -> Any:
        service = view.service
        echo = wire.Service(
            name=_str(service.name), namespace=_str(service.namespace), revision=_str(view.revision)
        )
        return discover_response(wire.Code.DataNoChange, _INSTANCE, echo)

    @classmethod
    def _full_answer(cls, view: ServiceInstancesView) -> Any:
        return cls._instances_answer(view, None)

    @staticmethod
    def _instances_answer(
        view: ServiceInstancesView, keep: Callable[[InstanceRecord], bool] | None
    ) -> Any:
        answer = discover_response(
            wire.Code.ExecuteSuccess, _INSTANCE, _service_to_wire(view.service, view.revision)
        )
        answer.aliasFor.CopyFrom(_service_to_wire(view.service, view.service.revision))
        answer.instances.extend(
            discovered_instance(r) for r in view.instances if keep is None or keep(r)
        )
        return answer

    def _discover_services(self, request: Any) -> Any:
        if not request.HasField("service"):
            return discover_response(wire.Code.EmptyRequest, _SERVICES)
        asked = request.service
        namespace = asked.namespace.value
        with _store_layer("discover"):
            services = self.store.list_services(namespace or None)
        if not services and namespace:
            # A real server has no revision for a namespace it holds no service of,
            # so such an answer never turns into DataNoChange.
            echo = wire.Service(name=_str(asked.name.value), namespace=_str(namespace))
            return discover_response(wire.Code.ExecuteSuccess, _SERVICES, echo)
        digest = hashlib.sha1()
        for svc in services:
            digest.update(f"{svc.namespace}/{svc.name}/{svc.revision};".encode())
        revision = digest.hexdigest()
        echo = wire.Service(
            name=_str(asked.name.value), namespace=_str(namespace), revision=_str(revision)
        )
        if asked.revision.value == revision:
            return discover_response(wire.Code.DataNoChange, _SERVICES, echo)
        answer = discover_response(wire.Code.ExecuteSuccess, _SERVICES, echo)
        for svc in services:
            item = answer.services.add(name=_str(svc.name), namespace=_str(svc.namespace))
            item.metadata.update(svc.metadata)
        return answer

    def _discover_rules(self, request: Any) -> Any:
        kind = request.type
        if not request.HasField("service"):
            return discover_response(wire.Code.EmptyRequest, kind)
        asked = request.service
        echo = wire.Service(name=asked.name, namespace=asked.namespace)
        if not asked.name.value:
            return discover_response(wire.Code.InvalidServiceName, kind, _echo_service(asked))
        if not asked.namespace.value:
            return discover_response(wire.Code.InvalidNamespaceName, kind, _echo_service(asked))
        rules = self.circuit_breaker_rules
        if kind == _CIRCUIT_BREAKER and rules is not None:
            return rules.discover(asked.namespace.value, asked.name.value, asked.revision.value)
        if kind != _ROUTING:
            return discover_response(wire.Code.ExecuteSuccess, kind, echo)
        # No rules here, but a real server still answers ROUTING with an empty
        # rule set and its revision, and DataNoChange once the client has it.
        if asked.revision.value == NO_RULES_REVISION:
            return discover_response(wire.Code.DataNoChange, kind, _echo_service(asked))
        echo.revision.value = NO_RULES_REVISION
        answer = discover_response(wire.Code.ExecuteSuccess, kind, echo)
        answer.routing.namespace.CopyFrom(asked.namespace)
        answer.routing.service.CopyFrom(asked.name)
        answer.routing.revision.value = NO_RULES_REVISION
        answer.aliasFor.name.CopyFrom(asked.name)
        answer.aliasFor.namespace.CopyFrom(asked.namespace)
        return answer

    # -------------------------------------------------------- report client

    def report_client(self, client: Any, ctx: RequestContext = INTERNAL_CONTEXT) -> Any:
        echo = wire.Client(host=client.host)
        if client.HasField("location"):
            echo.location.CopyFrom(client.location)
        if client.id.value:
            recorded = wire.Client()
            recorded.CopyFrom(client)
            recorded.mtime.value = _time_text(self._wall())
            with self._clients_lock:
                self._clients.pop(client.id.value, None)
                self._clients[client.id.value] = recorded
                while len(self._clients) > _MAX_CLIENTS:
                    self._clients.popitem(last=False)
            echo.id.CopyFrom(client.id)
        return response(wire.Code.ExecuteSuccess, client=echo)

    def clients(self) -> Mapping[str, Any]:
        """The last report of every client that reported with an id, by id (copies)."""
        with self._clients_lock:
            recorded = list(self._clients.items())
        copies = {}
        for client_id, client in recorded:
            copies[client_id] = wire.Client()
            copies[client_id].CopyFrom(client)
        return copies
