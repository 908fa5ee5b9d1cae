"""Circuit-breaker rules of the embedded server: stored, managed, served by Discover.

As polaris-server answers them (``service/circuitbreaker_rule.go``,
``service/interceptor/paramcheck/circuit_breaker.go``,
``cache/service/circuitbreaker.go``, ``service/client_v1.go``,
``store/boltdb/circuitbreaker_rule.go``):

* :class:`CircuitBreakerRules` keeps ``v1.CircuitBreakerRule`` messages by
  id, in memory, or with ``path`` also in a SQLite file of their own (one
  table, the rule as JSON), so the instance store is untouched. Thread-safe.
  A rule is stored as the real server stores it: its identity (id, name,
  namespace, description, level, enable, revision, ctime / mtime / etime)
  and its body (``ruleMatcher``, ``errorConditions``, ``triggerCondition``,
  ``maxEjectionPercent``, ``recoverCondition``, ``faultDetectConfig``,
  ``fallbackConfig``); other fields are not kept. An empty namespace becomes
  ``default``; every write gives the rule a new revision.
* :meth:`CircuitBreakerRules.discover` answers Discover CIRCUIT_BREAKER for
  a callee with every rule (enabled or not; clients skip disabled ones)
  whose destination is the callee, ``*`` in its namespace, or anything
  (both ``*`` or both empty); a ``*`` namespace with a named service
  matches nothing else. The revision is the SHA-1 of the matching rules'
  revisions, sorted, concatenated; asking with it answers 200001. No
  matching rule: 200000 with no ``circuitBreaker`` and no revision. The
  answer carries ``aliasFor`` and ``circuitBreaker{service,
  service_namespace, revision, rules}``.
* :func:`handle` serves the admin routes with no transport of its own:
  ``GET /naming/v1/circuitbreaker/rules`` (``v1.BatchQueryResponse``:
  ``amount``, ``size``, ``data`` as typed ``Any``), ``POST`` (create),
  ``PUT`` (update by id), ``POST .../rules/delete`` and ``PUT
  .../rules/enable``: JSON arrays answered with a ``v1.BatchWriteResponse``.
  Query parameters: ``offset``, ``limit`` (100 at most), ``id``,
  ``namespace``, ``srcNamespace``, ``dstNamespace`` (exact), ``name``,
  ``description``, ``srcService``, ``dstService``, ``dstMethod``
  (substring), ``enable``, ``level`` (numbers, comma separated),
  ``service`` / ``serviceNamespace`` (source or destination is it or
  ``*``), ``brief=true`` (no rule body); any other parameter, or a bad
  offset or limit, 400103. Newest change first.
  Writes: an empty array 400002, more than 100 rules 400003; every rule is
  checked first (create and update need a name, 400162; update, delete and
  enable an id, 400160; name <= 64, namespace <= 64, source service <= 128,
  description <= 1024) and nothing is written when one fails. Then, per
  rule: create takes a new id whatever was sent and answers the rule as
  ``data``; a name already used in the namespace 400209; update and enable
  of an unknown id 400308; delete of an unknown id 200000. The batch code
  is the rules' code when they agree, else 500000 / 400000. HTTP status =
  ``code // 1000``. It returns None for a path it does not serve.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Final
from urllib.parse import parse_qs

from google.protobuf import json_format

from polaris_sdk import wire
from polaris_sdk.defaults import DEFAULT_NAMESPACE
from polaris_sdk.server import operate
from polaris_sdk.server.apiserver.jsonpb import ParseFailure, decode_request, encode_response
from polaris_sdk.server.naming import code_info

__all__ = ["QUERY_FILTERS", "RULES_PATH", "CircuitBreakerRules", "handle"]

RULES_PATH: Final = "/naming/v1/circuitbreaker/rules"
Rule: Any = wire.message_class("v1.CircuitBreakerRule")
BatchQueryResponse: Any = wire.message_class("v1.BatchQueryResponse")
_CIRCUIT_BREAKER: Final = wire.DISCOVER_RESPONSE_TYPE.values_by_name["CIRCUIT_BREAKER"].number
_NOT_FOUND: Final[int] = int(wire.Code.NotFoundCircuitBreaker)  # 400308
_EXISTED: Final[int] = int(wire.Code.ServiceExistedCircuitBreakers)  # 400209
_BAD_NAME: Final[int] = int(wire.Code.InvalidCircuitBreakerName)  # 400162
_BAD_ID: Final[int] = int(wire.Code.InvalidCircuitBreakerID)  # 400160
_BAD_REQUEST: Final[int] = int(wire.Code.BadRequest)
_TOO_MANY: Final[int] = int(wire.Code.BatchSizeOverLimit)
_NO_CHANGE: Final[int] = int(wire.Code.DataNoChange)
_EMPTY: Final[int] = int(wire.Code.EmptyRequest)
_FAILED: Final[int] = int(wire.Code.ExecuteException)
_OK: Final[int] = int(wire.Code.ExecuteSuccess)
_BAD_NAMESPACE: Final[int] = int(wire.Code.InvalidNamespaceName)
_BAD_PARAMETER: Final[int] = int(wire.Code.InvalidParameter)
_BAD_COMMENT: Final[int] = int(wire.Code.InvalidServiceComment)
_BAD_SERVICE: Final[int] = int(wire.Code.InvalidServiceName)
_UNPARSABLE: Final[int] = int(wire.Code.ParseException)
_INFO: Final = {
    400160: "invalid circuit breaker id",
    400162: "invalid circuit breaker name",
    400209: "some circuit breakers existed in service",
    400308: "not found circuit breaker",
}
_MAX_BODY: Final = 4 * 1024 * 1024
_MAX_LIMIT: Final = 100
_KEPT: Final = (
    "id",
    "name",
    "namespace",
    "enable",
    "revision",
    "ctime",
    "mtime",
    "etime",
    "description",
    "level",
    "rule_matcher",
    "error_conditions",
    "trigger_condition",
    "max_ejection_percent",
    "recoverCondition",
    "faultDetectConfig",
    "fallbackConfig",
)
_BODY: Final = _KEPT[10:]
# (field, limit, code) in the order the real server checks them.
_LENGTHS: Final[tuple[tuple[Callable[[Any], str], int, int], ...]] = (
    (lambda r: r.rule_matcher.source.service, 128, _BAD_SERVICE),
    (lambda r: r.rule_matcher.source.namespace, 64, _BAD_NAMESPACE),
    (lambda r: r.name, 64, _BAD_NAME),
    (lambda r: r.namespace, 64, _BAD_NAMESPACE),
    (lambda r: r.description, 1024, _BAD_COMMENT),
)
_EXACT: Final[dict[str, Callable[[Any], str]]] = {
    "id": lambda r: r.id,
    "namespace": lambda r: r.namespace,
    "srcNamespace": lambda r: r.rule_matcher.source.namespace,
    "dstNamespace": lambda r: r.rule_matcher.destination.namespace,
}
_SUBSTRING: Final[dict[str, Callable[[Any], str]]] = {
    "name": lambda r: r.name,
    "description": lambda r: r.description,
    "srcService": lambda r: r.rule_matcher.source.service,
    "dstService": lambda r: r.rule_matcher.destination.service,
    "dstMethod": lambda r: r.rule_matcher.destination.method.value.value,
}
QUERY_FILTERS: Final = frozenset(
    {"brief", "offset", "limit", "enable", "level", "service", "serviceNamespace"}
    | set(_EXACT)
    | set(_SUBSTRING)
)
"""The query parameters ``GET`` takes; any other is 400103, as on a real server."""

Answer = tuple[int, dict[str, str], bytes]


def _info(code: int) -> str:
    return _INFO.get(code) or code_info(code)


def _now() -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S")


def _stored(rule: Any) -> Any:
    """The rule as the real server keeps it: the fields it has columns or a body for."""
    kept = Rule()
    kept.CopyFrom(rule)
    for field in Rule.DESCRIPTOR.fields:
        if field.name not in _KEPT:
            kept.ClearField(field.name)
    return kept


def _brief(rule: Any) -> Any:
    """The rule without its body (``brief=true``), the matcher kept as the list shows it."""
    brief = Rule()
    brief.CopyFrom(rule)
    for name in _BODY:
        brief.ClearField(name)
    brief.rule_matcher.source.CopyFrom(rule.rule_matcher.source)
    destination = rule.rule_matcher.destination
    brief.rule_matcher.destination.service = destination.service
    brief.rule_matcher.destination.namespace = destination.namespace
    brief.rule_matcher.destination.method.value.value = destination.method.value.value
    return brief


def _destination_matches(rule: Any, namespace: str, service: str) -> bool:
    """Whether Discover for ``namespace/service`` serves ``rule`` (the real server's cache keys)."""
    destination = rule.rule_matcher.destination
    key = (destination.namespace, destination.service)
    return key in (("*", "*"), ("", ""), (namespace, "*"), (namespace, service))


class CircuitBreakerRules:
    """The rule set; ``path`` keeps it in SQLite too."""

    def __init__(self, path: str | None = None) -> None:
        self._rules: dict[str, Any] = {}
        self._changed: dict[str, int] = {}
        self._ticks = itertools.count()
        self._lock = threading.Lock()
        self._path = path
        if path is not None:
            with self._connect() as db:
                db.execute(
                    "CREATE TABLE IF NOT EXISTS circuitbreaker_rule"
                    " (id TEXT PRIMARY KEY, body TEXT)"
                )
                loaded = [
                    json_format.Parse(body, Rule())
                    for _, body in db.execute("SELECT id, body FROM circuitbreaker_rule")
                ]
            for rule in sorted(loaded, key=lambda r: (r.mtime, r.id)):
                self._rules[rule.id] = rule
                self._changed[rule.id] = next(self._ticks)

    @contextlib.contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        # One short connection per write: nothing stays open between the
        # server's stop and start, and writes are rare.
        assert self._path is not None
        db = sqlite3.connect(self._path, timeout=5)
        try:
            with db:
                yield db
        finally:
            db.close()

    def clear(self) -> None:
        """Forget every rule."""
        with self._lock:
            ids = list(self._rules)
        for rule_id in ids:
            self.delete(rule_id)

    # ------------------------------------------------------------ reading

    def list(self) -> list[Any]:
        """Every rule, the most recently changed first."""
        with self._lock:
            order = sorted(self._rules, key=lambda i: (-self._changed[i], i))
            return [self._rules[i] for i in order]

    def discover(self, namespace: str, service: str, revision: str) -> Any:
        """The Discover CIRCUIT_BREAKER answer for a callee."""
        with self._lock:
            matching = [
                r for r in self._rules.values() if _destination_matches(r, namespace, service)
            ]
        matching.sort(key=lambda r: r.id)
        answer = wire.DiscoverResponse(type=_CIRCUIT_BREAKER)
        answer.service.name.value = service
        answer.service.namespace.value = namespace
        answer.code.value = _OK
        answer.info.value = _info(_OK)
        if not matching:
            # As a real server answers a service without rules: success, no rule message.
            return answer
        current = hashlib.sha1("".join(sorted(r.revision for r in matching)).encode()).hexdigest()
        answer.service.revision.value = current
        if revision == current:
            answer.code.value = _NO_CHANGE
            answer.info.value = _info(_NO_CHANGE)
            return answer
        answer.aliasFor.name.value = service
        answer.aliasFor.namespace.value = namespace
        breaker = answer.circuitBreaker
        breaker.service.value = service
        breaker.service_namespace.value = namespace
        breaker.revision.value = current
        breaker.rules.extend(matching)
        return answer

    # ------------------------------------------------------------ writing

    def create(self, rule: Any) -> tuple[int, Any]:
        """Store a new rule under a new id; the code and the rule as stored (None if refused)."""
        kept = _stored(rule)
        kept.namespace = kept.namespace or DEFAULT_NAMESPACE
        with self._lock:
            if self._named(kept, ""):
                return _EXISTED, None
            kept.id = uuid.uuid4().hex
            kept.ctime = kept.mtime = _now()
            kept.etime = kept.mtime if kept.enable else ""
            self._write(kept)
        return _OK, kept

    def update(self, rule: Any) -> int:
        """Replace a rule, found by id; the code."""
        kept = _stored(rule)
        kept.namespace = kept.namespace or DEFAULT_NAMESPACE
        with self._lock:
            old = self._rules.get(kept.id)
            if old is None:
                return _NOT_FOUND
            if self._named(kept, kept.id):
                return _EXISTED
            kept.ctime = old.ctime
            kept.mtime = _now()
            kept.etime = kept.mtime if kept.enable else ""
            self._write(kept)
        return _OK

    def delete(self, rule_id: str) -> int:
        """Forget a rule; 400308 when there is none (the delete route answers that 200000)."""
        with self._lock:
            if self._rules.pop(rule_id, None) is None:
                return _NOT_FOUND
            self._changed.pop(rule_id, None)
            if self._path is not None:
                with self._connect() as db:
                    db.execute("DELETE FROM circuitbreaker_rule WHERE id = ?", (rule_id,))
        return _OK

    def enable(self, rule_id: str, enable: bool) -> int:
        with self._lock:
            old = self._rules.get(rule_id)
            if old is None:
                return _NOT_FOUND
            rule = Rule()
            rule.CopyFrom(old)
            rule.enable = enable
            rule.mtime = _now()
            rule.etime = rule.mtime if enable else ""
            self._write(rule)
        return _OK

    def _named(self, rule: Any, other_than: str) -> bool:
        return any(
            r.name == rule.name and r.namespace == rule.namespace and r.id != other_than
            for r in self._rules.values()
        )

    def _write(self, rule: Any) -> None:
        """Store ``rule`` with a new revision; under ``_lock``."""
        rule.revision = uuid.uuid4().hex
        self._rules[rule.id] = rule
        self._changed[rule.id] = next(self._ticks)
        if self._path is not None:
            with self._connect() as db:
                db.execute(
                    "INSERT OR REPLACE INTO circuitbreaker_rule (id, body) VALUES (?, ?)",
                    (rule.id, json_format.MessageToJson(rule)),
                )


# ------------------------------------------------------------------ routes


def _answer(message: Any) -> Answer:
    code = int(message.code.value)
    headers = {"Content-Type": "application/json"}
    if code != _OK:
        headers["X-Polaris-Code"] = str(code)
        headers["X-Polaris-Message"] = _info(code)
    return code // 1000, headers, encode_response(message)


def _response(code: int, data: Any = None, info: str = "") -> Any:
    answer = wire.Response(
        code=wire.UInt32Value(value=code), info=wire.StringValue(value=info or _info(code))
    )
    if data is not None:
        answer.data.Pack(data)
    return answer


def _batch(code: int, info: str = "") -> Answer:
    answer = operate.batch_write_response(code)
    answer.info.value = info or _info(code)
    return _answer(answer)


def _batch_code(codes: list[int]) -> int:
    """The code of a batch as the real server's ``FormatBatchWriteResponse`` works it out,
    unset answers (0, the rules that passed a failed check) included, order and all:
    the answers' code when they agree, else 500000 for any 5xx, else 400000 for any 4xx."""
    code = 0
    for each in codes:
        if code == 0:
            code = each
        elif code != each:
            code = 0
            break
    if code:
        return code
    if any(c // 1000 >= 500 for c in codes):
        return _FAILED
    if any(c // 1000 >= 400 for c in codes):
        return _BAD_REQUEST
    return _OK


def _collect(responses: list[Any]) -> Answer:
    batch = operate.batch_write_response(_OK)
    batch.responses.extend(responses)
    batch.size.value = len(responses)
    batch.code.value = _batch_code([int(r.code.value) for r in responses])
    batch.info.value = _info(int(batch.code.value))
    return _answer(batch)


def _parse(body: bytes) -> list[Any]:
    """The JSON array of rules; ParseFailure when it is not one."""
    if len(body) > _MAX_BODY:
        raise ParseFailure("request body too large")
    try:
        items = json.loads(body.decode("utf-8") or "[]")
    except (UnicodeDecodeError, ValueError, RecursionError) as err:
        raise ParseFailure(f"invalid JSON: {err}") from None
    if not isinstance(items, list):
        raise ParseFailure("expected a JSON array of rules")
    return [decode_request(json.dumps(item).encode("utf-8"), Rule) for item in items]


def _check(rule: Any, id_required: bool, name_required: bool) -> int:
    for value, limit, code in _LENGTHS:
        if len(value(rule)) > limit:
            return code
    if name_required and not rule.name:
        return _BAD_NAME
    if id_required and not rule.id:
        return _BAD_ID
    return _OK


def _bad_query() -> Answer:
    return _answer(operate.batch_query_response(_BAD_PARAMETER))


def _query(rules: CircuitBreakerRules, query: str) -> Answer:
    params = {k: v[0] for k, v in parse_qs(query, keep_blank_values=True).items()}
    try:
        offset = int(params.pop("offset", "") or 0)
        limit = min(int(params.pop("limit", "") or _MAX_LIMIT), _MAX_LIMIT)
    except ValueError:
        return _bad_query()
    if offset < 0 or limit < 0 or not set(params) <= QUERY_FILTERS:
        return _bad_query()
    given = {k: v for k, v in params.items() if v}
    brief = given.pop("brief", "").lower() == "true"

    def kept(rule: Any) -> bool:
        source = rule.rule_matcher.source
        destination = rule.rule_matcher.destination
        for key, value in given.items():
            if key in _EXACT and _EXACT[key](rule) != value:
                return False
            if key in _SUBSTRING and value not in _SUBSTRING[key](rule):
                return False
            if key == "enable" and (value.lower() in ("1", "t", "true")) != rule.enable:
                return False
            if key == "level" and str(int(rule.level)) not in value.split(","):
                return False
            services = (source.service, destination.service)
            if key == "service" and value not in services and "*" not in services:
                return False
            namespaces = (source.namespace, destination.namespace)
            if key == "serviceNamespace" and value not in namespaces and "*" not in namespaces:
                return False
        return True

    found = [r for r in rules.list() if kept(r)]
    page = found[offset : offset + limit]
    answer = operate.batch_query_response(_OK)
    answer.amount.value = len(found)
    answer.size.value = len(page)
    for rule in page:
        answer.data.add().Pack(_brief(rule) if brief else rule)
    return _answer(answer)


def _write(rules: CircuitBreakerRules, kind: str, items: list[Any]) -> Answer:
    checks = [_check(r, kind != "create", kind in ("create", "update")) for r in items]
    if any(code != _OK for code in checks):
        # Nothing is written; the rules that passed answer with an empty response.
        return _collect([_response(c) if c != 200000 else wire.Response() for c in checks])
    responses = []
    for rule in items:
        reference = Rule(id=rule.id)
        if kind == "create":
            code, stored = rules.create(rule)
            if stored is not None:
                rule.id = stored.id
            responses.append(_response(code, rule if stored is not None else None))
        elif kind == "update":
            code = rules.update(rule)
            responses.append(_response(code, reference if code == 200000 else None))
        elif kind == "delete":
            if rules.delete(rule.id) == _NOT_FOUND:
                # As the real server does: success, with the not-found text.
                responses.append(_response(_OK, info=_info(_NOT_FOUND)))
            else:
                responses.append(_response(_OK, reference))
        else:
            code = rules.enable(rule.id, rule.enable)
            responses.append(_response(code, reference if code == 200000 else None))
    return _collect(responses)


_WRITES: Final = {
    ("POST", RULES_PATH): "create",
    ("PUT", RULES_PATH): "update",
    ("POST", RULES_PATH + "/delete"): "delete",
    ("PUT", RULES_PATH + "/enable"): "enable",
}


def handle(
    rules: CircuitBreakerRules,
    method: str,
    path: str,
    query: str,
    headers: Mapping[str, str],
    body: bytes,
) -> Answer | None:
    """Serve one admin request; None when ``path`` is not a circuit-breaker route."""
    path = path.rstrip("/")
    if path == RULES_PATH and method == "GET":
        return _query(rules, query)
    if path not in (RULES_PATH, RULES_PATH + "/delete", RULES_PATH + "/enable"):
        return None
    kind = _WRITES.get((method, path))
    if kind is None:
        return _batch(_BAD_REQUEST)
    try:
        items = _parse(body)
    except ParseFailure as err:
        return _batch(_UNPARSABLE, f"{_info(_UNPARSABLE)}: {err}")
    if not items:
        return _batch(_EMPTY)
    if len(items) > operate.BATCH_LIMIT:
        return _batch(_TOO_MANY)
    return _write(rules, kind, items)
