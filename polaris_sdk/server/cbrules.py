"""Circuit-breaker rules of the embedded server: stored, managed, served by Discover.

Contract:

* :class:`CircuitBreakerRules` keeps ``v1.CircuitBreakerRule`` messages by
  id, in memory, or with ``path`` also in a SQLite file of their own (one
  table, the rule as JSON), so the instance store is untouched. Thread-safe.
* :meth:`CircuitBreakerRules.discover` answers Discover CIRCUIT_BREAKER for
  a callee: every rule (enabled or not; clients skip disabled ones) whose
  destination namespace and service match it, ``*`` or empty matching any,
  as the real server does; the revision is the SHA-1 of the matching rules'
  revisions (SHA-1("") when there is none), and asking with it answers
  200001 DataNoChange.
* :func:`handle` serves the real server's admin routes with no transport of
  its own: ``GET /naming/v1/circuitbreaker/rules`` (filters ``id``,
  ``name``, ``namespace``, ``service``, ``offset``, ``limit``), ``POST`` (create
  a JSON array of rules), ``PUT`` (update by id), ``POST .../rules/delete``
  and ``PUT .../rules/enable`` (arrays of ``{id}`` / ``{id, enable}``).
  Writes answer a batch (``code``, ``info``, ``size``, ``responses`` with
  one ``{code, info, data: {id, name}}`` per rule); the HTTP status is
  ``code // 1000``. It returns None for a path it does not serve, so an
  HTTP server can try it before its own routes.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from typing import Any, Final
from urllib.parse import parse_qs

from google.protobuf import json_format

from polaris_sdk import wire

__all__ = ["RULES_PATH", "CircuitBreakerRules", "handle"]

RULES_PATH: Final = "/naming/v1/circuitbreaker/rules"
Rule: Any = wire.message_class("v1.CircuitBreakerRule")
CircuitBreaker: Any = wire.message_class("v1.CircuitBreaker")
_CIRCUIT_BREAKER: Final = wire.DISCOVER_RESPONSE_TYPE.values_by_name["CIRCUIT_BREAKER"].number
_INFO: Final = {
    200000: "execute success",
    200001: "discover data is no change",
    400000: "bad request",
    400001: "parse request body exception",
    400002: "empty request",
    400103: "invalid parameter",
    400201: "existed resource",
    400202: "not found resource",
}
_MAX_BODY: Final = 4 * 1024 * 1024

Answer = tuple[int, dict[str, str], bytes]


def _matches(pattern: str, name: str) -> bool:
    return pattern in ("", "*") or pattern == name


class CircuitBreakerRules:
    """The rule set; ``path`` keeps it in SQLite too."""

    def __init__(self, path: str | None = None) -> None:
        self._rules: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._path = path
        if path is not None:
            with self._connect() as db:
                db.execute(
                    "CREATE TABLE IF NOT EXISTS circuitbreaker_rule"
                    " (id TEXT PRIMARY KEY, body TEXT)"
                )
                for rule_id, body in db.execute("SELECT id, body FROM circuitbreaker_rule"):
                    self._rules[rule_id] = json_format.Parse(body, Rule())

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
        with self._lock:
            return list(self._rules.values())

    def discover(self, namespace: str, service: str, revision: str) -> Any:
        """The Discover CIRCUIT_BREAKER answer for a callee."""
        with self._lock:
            matching = [
                r
                for r in self._rules.values()
                if _matches(r.rule_matcher.destination.namespace, namespace)
                and _matches(r.rule_matcher.destination.service, service)
            ]
        matching.sort(key=lambda r: r.id)
        answer = wire.DiscoverResponse(type=_CIRCUIT_BREAKER)
        answer.service.name.value = service
        answer.service.namespace.value = namespace
        if not matching:
            # As a real server answers a service without rules: success, no rule message.
            answer.code.value = wire.Code.ExecuteSuccess
            answer.info.value = _INFO[200000]
            return answer
        current = hashlib.sha1("".join(r.revision for r in matching).encode()).hexdigest()
        answer.service.revision.value = current
        if revision == current:
            answer.code.value = wire.Code.DataNoChange
            answer.info.value = _INFO[200001]
            return answer
        answer.code.value = wire.Code.ExecuteSuccess
        answer.info.value = _INFO[200000]
        breaker = answer.circuitBreaker
        breaker.name.value = service
        breaker.namespace.value = namespace
        breaker.service.value = service
        breaker.service_namespace.value = namespace
        breaker.revision.value = current
        breaker.rules.extend(matching)
        return answer

    # ------------------------------------------------------------ writing

    def put(self, rule: Any, *, create: bool) -> int:
        """Create (a new id unless given) or update a rule; the result code."""
        if not rule.name or not rule.namespace:
            return 400103
        now = time.strftime("%Y-%m-%d %H:%M:%S")
        with self._lock:
            if create:
                if not rule.id:
                    rule.id = uuid.uuid4().hex
                if rule.id in self._rules or any(
                    r.name == rule.name and r.namespace == rule.namespace
                    for r in self._rules.values()
                ):
                    return 400201
                rule.ctime = now
            else:
                old = self._rules.get(rule.id)
                if old is None:
                    return 400202
                rule.ctime = old.ctime
            rule.mtime = now
            rule.revision = uuid.uuid4().hex
            self._rules[rule.id] = rule
            self._save(rule)
        return 200000

    def delete(self, rule_id: str) -> int:
        with self._lock:
            if self._rules.pop(rule_id, None) is None:
                return 400202
            if self._path is not None:
                with self._connect() as db:
                    db.execute("DELETE FROM circuitbreaker_rule WHERE id = ?", (rule_id,))
        return 200000

    def enable(self, rule_id: str, enable: bool) -> int:
        with self._lock:
            rule = self._rules.get(rule_id)
            if rule is None:
                return 400202
            rule.enable = enable
            rule.revision = uuid.uuid4().hex
            rule.mtime = time.strftime("%Y-%m-%d %H:%M:%S")
            if enable:
                rule.etime = rule.mtime
            self._save(rule)
        return 200000

    def _save(self, rule: Any) -> None:
        if self._path is not None:
            with self._connect() as db:
                db.execute(
                    "INSERT OR REPLACE INTO circuitbreaker_rule (id, body) VALUES (?, ?)",
                    (rule.id, json_format.MessageToJson(rule)),
                )


# ------------------------------------------------------------------ routes


def _answer(payload: dict[str, Any]) -> Answer:
    code = int(payload["code"])
    headers = {"Content-Type": "application/json"}
    if code != 200000:
        headers["X-Polaris-Code"] = str(code)
        headers["X-Polaris-Message"] = _INFO.get(code, "")
    return code // 1000, headers, json.dumps(payload, indent=1).encode()


def _batch(results: list[tuple[int, Any]]) -> Answer:
    codes = {code for code, _ in results}
    overall = 200000 if codes <= {200000} else (codes - {200000}).pop()
    return _answer(
        {
            "code": overall,
            "info": _INFO.get(overall, ""),
            "size": len(results),
            "responses": [
                {"code": code, "info": _INFO.get(code, ""), "data": data} for code, data in results
            ],
        }
    )


def _items(body: bytes) -> list[Any] | None:
    if len(body) > _MAX_BODY:
        return None
    try:
        items = json.loads(body or b"[]")
    except ValueError:
        return None
    return items if isinstance(items, list) else None


def _query(rules: CircuitBreakerRules, query: str) -> Answer:
    params = {k: v[-1] for k, v in parse_qs(query).items()}
    kept = []
    for rule in sorted(rules.list(), key=lambda r: r.ctime):
        destination = rule.rule_matcher.destination
        if (
            params.get("id", rule.id) != rule.id
            or params.get("name", rule.name) != rule.name
            or params.get("namespace", rule.namespace) != rule.namespace
            or params.get("service", destination.service) != destination.service
        ):
            continue
        kept.append(json_format.MessageToDict(rule))
    try:
        offset = max(0, int(params.get("offset", "0")))
        limit = max(0, int(params.get("limit", "100")))
    except ValueError:
        return _answer({"code": 400103, "info": _INFO[400103]})
    page = kept[offset : offset + limit]
    return _answer(
        {
            "code": 200000,
            "info": _INFO[200000],
            "amount": len(kept),
            "size": len(page),
            "data": page,
        }
    )


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
    items = _items(body)
    if items is None:
        return _answer({"code": 400001, "info": _INFO[400001]})
    if not items:
        return _answer({"code": 400002, "info": _INFO[400002]})
    results: list[tuple[int, Any]] = []
    for item in items:
        if not isinstance(item, dict):
            results.append((400001, None))
            continue
        if path == RULES_PATH and method in ("POST", "PUT"):
            try:
                rule = json_format.ParseDict(item, Rule(), ignore_unknown_fields=True)
            except json_format.ParseError:
                results.append((400001, None))
                continue
            code = rules.put(rule, create=method == "POST")
            results.append((code, {"id": rule.id, "name": rule.name}))
        elif path.endswith("/delete") and method == "POST":
            rule_id = str(item.get("id", ""))
            results.append((rules.delete(rule_id), {"id": rule_id}))
        elif path.endswith("/enable") and method == "PUT":
            rule_id = str(item.get("id", ""))
            results.append((rules.enable(rule_id, bool(item.get("enable"))), {"id": rule_id}))
        else:
            return _answer({"code": 400000, "info": _INFO[400000]})
    return _batch(results)
