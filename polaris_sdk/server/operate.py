"""Reading and operating the registry: what the admin API (``/naming/v1/...``) does.

The console routes of a real polaris-server (``service/instance.go``,
``service/service.go``, ``service/namespace.go`` and their parameter checks)
carried over to the embedded server's store, transport-free: each function
takes the query (a ``str -> str`` mapping, the first value of each query
parameter) or the wire instances of a request body, and returns the wire
``v1.BatchQueryResponse`` / ``v1.BatchWriteResponse`` / ``v1.Response``.

Facts kept from the real server:

* queries page with ``offset`` (default 0) and ``limit`` (default 100, at most
  100); ``amount`` is the number of matches, ``size`` the number returned; a
  bad offset or limit is 400103 InvalidParameter;
* ``GET /naming/v1/instances`` refuses an empty query (400104
  EmptyQueryParameter), an unknown parameter or an empty value (400103),
  ``keys`` without ``values`` or of another length (400105); ``healthy`` wins
  over ``health_status``; ``service`` / ``name`` with a trailing ``*`` match by
  prefix;
* an update names the instance by ``id`` or by namespace, service, host and
  port; an unknown one is 400303 NotFoundInstance, an update changing nothing
  200002 NoNeedUpdate; ``metadata`` replaces the whole map when given;
* a batch holds 1 to 100 instances (400002 EmptyRequest, 400003
  BatchSizeOverLimit); its code is the common code of its answers, else
  500000 if any is a 5xx, else 400000 if any is a 4xx.

The embedded server adds the time each instance was last heard from (see
:func:`last_heartbeat_metadata`) to the metadata of every instance it lists.

Thread-safe (the store is); nothing blocks.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Final

from polaris_sdk import validation, wire
from polaris_sdk.errors import ValidationError
from polaris_sdk.server.healthcheck import HeartbeatBook
from polaris_sdk.server.naming import _instance_key, code_info, instance_to_wire
from polaris_sdk.server.store.base import InstanceRecord, ServiceRecord, Store

__all__ = [
    "BATCH_LIMIT",
    "INSTANCE_FILTERS",
    "QUERY_LIMIT",
    "batch_write_response",
    "collect",
    "last_heartbeat_metadata",
    "list_namespaces",
    "list_services",
    "query_instances",
    "update_instance",
]

BatchQueryResponse: Any = wire.message_class("v1.BatchQueryResponse")
BatchWriteResponse: Any = wire.message_class("v1.BatchWriteResponse")

QUERY_LIMIT: Final = 100
BATCH_LIMIT: Final = 100
LAST_HEARTBEAT_TIMESTAMP: Final = "last-heartbeat-timestamp"
LAST_HEARTBEAT_TIME: Final = "last-heartbeat-time"

INSTANCE_FILTERS: Final = frozenset(
    {
        "id",
        "service",
        "namespace",
        "host",
        "port",
        "keys",
        "values",
        "protocol",
        "version",
        "health_status",
        "healthy",
        "isolate",
        "weight",
        "logic_set",
        "cmdb_region",
        "cmdb_zone",
        "cmdb_idc",
        "priority",
        "offset",
        "limit",
    }
)
# Display switches a real console sends; they select nothing.
_INSTANCE_SWITCHES: Final = frozenset({"show_last_heartbeat", "show_service_revision"})
_EXTRA_INFO: Final[dict[int, str]] = {
    200002: "data no need to update",
    400003: "batch size over the limit",
    400104: "query instance parameter is empty",
    400105: "query instance, service or namespace or host is required",
    400303: "not found instance",
}


def _info(code: int) -> str:
    return _EXTRA_INFO.get(code) or code_info(code)


def _time_text(seconds: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(seconds))


def batch_query_response(code: int, info: str = "") -> Any:
    return BatchQueryResponse(
        code=wire.UInt32Value(value=code), info=wire.StringValue(value=info or _info(code))
    )


def instance_response(code: int, instance: Any | None = None, info: str = "") -> Any:
    answer = wire.Response(
        code=wire.UInt32Value(value=code), info=wire.StringValue(value=info or _info(code))
    )
    if instance is not None:
        echo = wire.Instance()
        echo.CopyFrom(instance)
        echo.ClearField("service_token")
        answer.instance.CopyFrom(echo)
    return answer


class _QueryError(Exception):
    def __init__(self, code: int, info: str = "") -> None:
        super().__init__(info)
        self.code = code
        self.info = info


def _page(query: dict[str, str]) -> tuple[int, int]:
    """Pop ``offset`` and ``limit``: (0, 100) by default, limit capped at 100."""
    try:
        offset = int(query.pop("offset", "0") or "0")
        limit = int(query.pop("limit", str(QUERY_LIMIT)) or str(QUERY_LIMIT))
    except ValueError:
        raise _QueryError(wire.Code.InvalidParameter) from None
    if offset < 0 or limit < 0:
        raise _QueryError(wire.Code.InvalidParameter)
    return offset, min(limit, QUERY_LIMIT)


def _matches_name(pattern: str, name: str) -> bool:
    """A real server's wildcard: ``abc*`` matches by prefix, anything else exactly."""
    if pattern.endswith("*"):
        return name.startswith(pattern[:-1])
    return name == pattern


def _as_bool(text: str) -> bool:
    return text.strip().lower() in ("true", "1")


def _paged(answer: Any, items: Sequence[Any], offset: int, limit: int) -> tuple[Any, Sequence[Any]]:
    answer.amount.value = len(items)
    page = items[offset : offset + limit]
    answer.size.value = len(page)
    return answer, page


# ---------------------------------------------------------------- namespaces


def list_namespaces(
    store: Store, query: Mapping[str, str], visible: Callable[[str], bool] = lambda _: True
) -> Any:
    """``GET /naming/v1/namespaces``: by ``name`` (``*`` prefix), paged."""
    params = dict(query)
    try:
        offset, limit = _page(params)
    except _QueryError as err:
        return batch_query_response(err.code, err.info)
    name = params.get("name", "")
    records = [
        n
        for n in store.list_namespaces()
        if visible(n.name) and (not name or _matches_name(name, n.name))
    ]
    answer, page = _paged(batch_query_response(wire.Code.ExecuteSuccess), records, offset, limit)
    for record in page:
        services = store.list_services(record.name)
        total = healthy = 0
        for service in services:
            view = store.service_instances(record.name, service.name)
            for instance in view.instances if view is not None else ():
                total += 1
                healthy += instance.healthy
        item = answer.namespaces.add()
        item.name.value = record.name
        item.comment.value = record.comment
        item.ctime.value = _time_text(record.ctime)
        item.mtime.value = _time_text(record.ctime)
        item.total_service_count.value = len(services)
        item.total_instance_count.value = total
        item.total_health_instance_count.value = healthy
    return answer


# ------------------------------------------------------------------ services


@dataclass(frozen=True, slots=True)
class _ServiceRow:
    record: ServiceRecord
    revision: str
    total: int
    healthy: int


def list_services(
    store: Store, query: Mapping[str, str], visible: Callable[[str], bool] = lambda _: True
) -> Any:
    """``GET /naming/v1/services``: by ``namespace``, ``name`` (``*`` prefix),
    ``host`` / ``port`` of an instance, ``only_exist_health_instance``; paged."""
    params = dict(query)
    try:
        offset, limit = _page(params)
    except _QueryError as err:
        return batch_query_response(err.code, err.info)
    namespace = params.get("namespace") or None
    name = params.get("name", "")
    host = params.get("host", "")
    port = params.get("port", "")
    only_healthy = _as_bool(params.get("only_exist_health_instance", "false"))
    rows: list[_ServiceRow] = []
    for record in store.list_services(namespace):
        if not visible(record.namespace) or (name and not _matches_name(name, record.name)):
            continue
        view = store.service_instances(record.namespace, record.name)
        instances = view.instances if view is not None else ()
        if host and not any(
            i.host == host and (not port or str(i.port) == port) for i in instances
        ):
            continue
        healthy = sum(1 for i in instances if i.healthy)
        if only_healthy and not healthy:
            continue
        revision = view.revision if view is not None else record.revision
        rows.append(_ServiceRow(record, revision, len(instances), healthy))
    answer, page = _paged(batch_query_response(wire.Code.ExecuteSuccess), rows, offset, limit)
    for row in page:
        item = answer.services.add()
        item.id.value = row.record.id
        item.name.value = row.record.name
        item.namespace.value = row.record.namespace
        item.metadata.update(row.record.metadata)
        item.comment.value = row.record.comment
        item.revision.value = row.revision
        item.ctime.value = _time_text(row.record.ctime)
        item.mtime.value = _time_text(row.record.mtime)
        item.total_instance_count.value = row.total
        item.healthy_instance_count.value = row.healthy
    return answer


# ----------------------------------------------------------------- instances


def last_heartbeat_metadata(book: HeartbeatBook, instance_id: str) -> dict[str, str]:
    """A real server's ``last-heartbeat-timestamp`` / ``-time`` keys, when a beat is known."""
    beat = book.last_beat(instance_id)
    if beat is None:
        return {}
    return {
        LAST_HEARTBEAT_TIMESTAMP: str(int(beat.wall)),
        LAST_HEARTBEAT_TIME: _time_text(beat.wall),
    }


def _instance_filter(query: dict[str, str]) -> Callable[[InstanceRecord], bool]:
    """The checks of ``query`` (validated already) as one predicate."""
    keys = query.pop("keys", None)
    values = query.pop("values", None)
    metadata: dict[str, str] = {}
    if keys is not None and values is not None:
        metadata = dict(zip(keys.split(","), values.split(","), strict=True))
    if "healthy" in query:
        query.pop("health_status", None)
        query["health_status"] = query.pop("healthy")
    checks: list[Callable[[InstanceRecord], bool]] = []
    fields: dict[str, Callable[[InstanceRecord], str]] = {
        "id": lambda r: r.id,
        "host": lambda r: r.host,
        "port": lambda r: str(r.port),
        "protocol": lambda r: r.protocol,
        "version": lambda r: r.version,
        "weight": lambda r: str(r.weight),
        "logic_set": lambda r: r.logic_set,
        "priority": lambda r: str(r.priority),
        "cmdb_region": lambda r: r.region,
        "cmdb_zone": lambda r: r.zone,
        "cmdb_idc": lambda r: r.campus,
    }
    for key, value in query.items():
        if key in fields:
            get = fields[key]
            checks.append(lambda r, get=get, value=value: get(r) == value)  # type: ignore[misc]
        elif key == "health_status":
            want = _as_bool(value)
            checks.append(lambda r, want=want: r.healthy == want)  # type: ignore[misc]
        elif key == "isolate":
            want = _as_bool(value)
            checks.append(lambda r, want=want: r.isolate == want)  # type: ignore[misc]
    if metadata:
        checks.append(lambda r: all(r.metadata.get(k) == v for k, v in metadata.items()))
    return lambda record: all(check(record) for check in checks)


def _check_instance_query(query: Mapping[str, str]) -> None:
    if not query:
        raise _QueryError(wire.Code.EmptyQueryParameter)
    if ("keys" in query) != ("values" in query):
        raise _QueryError(
            wire.Code.InvalidQueryInsParameter,
            "instance metadata key and value must be both provided",
        )
    if "keys" in query and len(query["keys"].split(",")) != len(query["values"].split(",")):
        raise _QueryError(
            wire.Code.InvalidQueryInsParameter,
            "instance metadata key and value length are different",
        )
    for key, value in query.items():
        if key not in INSTANCE_FILTERS:
            raise _QueryError(wire.Code.InvalidParameter, f"{key} is not allowed")
        if value == "":
            raise _QueryError(wire.Code.InvalidParameter, f"the value for {key} is empty")


def _candidates(store: Store, namespace: str, service: str) -> Iterable[InstanceRecord]:
    """The instances of the services the query names (every service when it names none)."""
    for record in store.list_services(namespace or None):
        if service and not _matches_name(service, record.name):
            continue
        view = store.service_instances(record.namespace, record.name)
        if view is not None:
            yield from view.instances


def query_instances(
    store: Store,
    book: HeartbeatBook,
    query: Mapping[str, str],
    visible: Callable[[str], bool] = lambda _: True,
) -> Any:
    """``GET /naming/v1/instances``; see the module doc."""
    params = {k: v for k, v in query.items() if k not in _INSTANCE_SWITCHES}
    try:
        _check_instance_query(params)
        offset, limit = _page(params)
    except _QueryError as err:
        return batch_query_response(err.code, err.info)
    namespace = params.pop("namespace", "")
    service = params.pop("service", "")
    keep = _instance_filter(params)
    found = [r for r in _candidates(store, namespace, service) if visible(r.namespace) and keep(r)]
    found.sort(key=lambda r: (r.namespace, r.service, r.host, r.port, r.id))
    answer, page = _paged(batch_query_response(wire.Code.ExecuteSuccess), found, offset, limit)
    for record in page:
        item = instance_to_wire(record)
        item.metadata.update(last_heartbeat_metadata(book, record.id))
        answer.instances.append(item)
    return answer


# The id an update or delete names: ``id``, else computed from the four fields,
# exactly as a deregistration names it (raises ValidationError with the code).
instance_id_of: Final = _instance_key


def _changed(record: InstanceRecord, instance: Any, metadata_given: bool) -> InstanceRecord:
    """``record`` with what ``instance`` sets (unchanged fields keep the same record)."""
    changes: dict[str, Any] = {}
    if metadata_given and dict(instance.metadata) != dict(record.metadata):
        changes["metadata"] = dict(instance.metadata)
    for name in ("protocol", "version", "logic_set"):
        if instance.HasField(name) and getattr(instance, name).value != getattr(record, name):
            changes[name] = getattr(instance, name).value
    for name in ("priority", "weight", "healthy", "isolate"):
        if instance.HasField(name) and getattr(instance, name).value != getattr(record, name):
            changes[name] = getattr(instance, name).value
    if instance.HasField("location"):
        location = instance.location
        for name, field in (("region", "region"), ("zone", "zone"), ("campus", "campus")):
            value = getattr(location, field).value
            if value != getattr(record, name):
                changes[name] = value
    return replace(record, **changes) if changes else record


def update_instance(store: Store, instance: Any, metadata_given: bool) -> Any:
    """``PUT /naming/v1/instances`` for one instance; a ``v1.Response``."""
    try:
        if metadata_given:
            validation.check_metadata(instance.metadata)
        if instance.HasField("weight"):
            validation.check_weight(instance.weight.value)
        instance_id = instance_id_of(instance)
    except ValidationError as err:
        return instance_response(err.code, instance, f"{_info(err.code)}: {err}")
    now = time.time()

    def change(current: InstanceRecord | None) -> InstanceRecord | None:
        if current is None:
            return None
        new = _changed(current, instance, metadata_given)
        if new is current:
            return None
        return replace(new, revision=uuid.uuid4().hex, mtime=now)

    old, new = store.modify_instance(instance_id, change)
    if old is None:
        return instance_response(wire.Code.NotFoundInstance, instance)
    if new is old:
        return instance_response(wire.Code.NoNeedUpdate, instance)
    echo = wire.Instance()
    echo.CopyFrom(instance)
    echo.id.value = instance_id
    return instance_response(wire.Code.ExecuteSuccess, echo)


# --------------------------------------------------------------------- batch


def batch_write_response(code: int) -> Any:
    return BatchWriteResponse(
        code=wire.UInt32Value(value=code),
        info=wire.StringValue(value=_info(code)),
        size=wire.UInt32Value(value=0),
    )


def collect(answers: Sequence[Any]) -> Any:
    """The ``v1.BatchWriteResponse`` of the answers of a batch, coded as a real server codes it."""
    batch = batch_write_response(wire.Code.ExecuteSuccess)
    for answer in answers:
        batch.responses.append(answer)
    batch.size.value = len(answers)
    codes = {int(a.code.value) for a in answers}
    if len(codes) == 1:
        code = codes.pop()
    elif any(c // 1000 >= 500 for c in codes):
        code = wire.Code.ExecuteException
    elif any(c // 1000 >= 400 for c in codes):
        code = wire.Code.BadRequest
    else:
        code = wire.Code.ExecuteSuccess
    batch.code.value = code
    batch.info.value = _info(code)
    return batch
