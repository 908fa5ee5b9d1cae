"""The admin side of the HTTP port: admin API, console page, metrics and health, transport-free.

:meth:`AdminApi.handle` takes one request as plain values (method, path,
query, headers, body) and returns an :class:`AdminAnswer` (status, headers,
body), or None when the path is not one of these, so any HTTP server can
carry it: the server asks :meth:`AdminApi.accepts` first (to know whether
to read a body), then calls :meth:`~AdminApi.handle` and writes the answer.

Routes (the real polaris-server's paths, parameters, JSON and codes; see
:mod:`polaris_sdk.server.operate`):

* ``GET /naming/v1/namespaces``, ``GET /naming/v1/services``,
  ``GET /naming/v1/instances``: ``v1.BatchQueryResponse`` (``code``,
  ``info``, ``amount``, ``size``, ``namespaces`` / ``services`` /
  ``instances``);
* ``POST /naming/v1/instances`` (create), ``PUT /naming/v1/instances``
  (update: isolate, weight, metadata, ...), ``POST
  /naming/v1/instances/delete``: a JSON array of ``v1.Instance``, answered
  with a ``v1.BatchWriteResponse``;
* ``GET /`` answers ``Polaris Server`` as a real server does (a browser,
  asking for HTML, is sent to the console); ``GET /healthz`` answers ``ok``
  while the server serves;
* ``GET /console`` and its assets: the read-only console
  (:mod:`polaris_sdk.server.console`);
* ``GET /metrics``: :mod:`polaris_sdk.server.metrics` (404 with a reason
  without prometheus_client).

HTTP status = code // 1000, ``X-Polaris-Code`` / ``X-Polaris-Message`` for any
code but 200000, ``Request-Id`` echoed, the token read from
``X-Polaris-Token`` (or the legacy ``Polaris-Token``). Every decision about
who may do what goes through :meth:`AuthFilter.check
<polaris_sdk.server.auth.AuthFilter.check>`: reads need the ``LIST`` right
for the namespace (a token limited to some namespaces lists only those),
creates and deletes are the register and deregister of the client API, and
updates need ``UPDATE``; an update or delete naming an instance of another
namespace than the one it is stored in is checked against both.

An exception inside a handler is logged and answered 500000. Thread-safe.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import urlencode

from polaris_sdk import wire
from polaris_sdk.server import console, operate
from polaris_sdk.server.apiserver.http import http_status
from polaris_sdk.server.apiserver.jsonpb import ParseFailure, decode_request, encode_response
from polaris_sdk.server.auth import Action, AuthFilter, Resource
from polaris_sdk.server.cbrules import RULES_PATH, CircuitBreakerRules
from polaris_sdk.server.cbrules import handle as handle_rules
from polaris_sdk.server.metrics import METRICS_MISSING, ServerMetrics
from polaris_sdk.server.naming import RequestContext, code_info

__all__ = ["ADMIN_PATHS", "AdminAnswer", "AdminApi"]

log = logging.getLogger("polaris_sdk.server.apiserver.admin")

INDEX_TEXT: Final = b"Polaris Server"
_JSON: Final = "application/json"
_TEXT: Final = "text/plain; charset=utf-8"
_REQUEST_ID_MAX: Final = 128

NAMESPACES: Final = "/naming/v1/namespaces"
SERVICES: Final = "/naming/v1/services"
INSTANCES: Final = "/naming/v1/instances"
INSTANCES_DELETE: Final = "/naming/v1/instances/delete"

RULE_PATHS: Final = frozenset({RULES_PATH, RULES_PATH + "/delete", RULES_PATH + "/enable"})
"""The circuit-breaker rule routes, served when the server keeps rules."""

ADMIN_PATHS: Final[dict[str, frozenset[str]]] = {
    "GET": frozenset({"/", "/healthz", "/metrics", NAMESPACES, SERVICES, INSTANCES}),
    "POST": frozenset({INSTANCES, INSTANCES_DELETE}),
    "PUT": frozenset({INSTANCES}),
}
"""Method -> the exact paths this module answers (the console's are matched by prefix)."""


@dataclass(frozen=True, slots=True)
class AdminAnswer:
    """One answer: the HTTP status, the headers to send (Content-Length aside) and the body."""

    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes


def _clean(value: str | None) -> str | None:
    if not value or len(value) > _REQUEST_ID_MAX:
        return None
    return value if all(" " <= ch <= "~" for ch in value) else None


def _plain(status: int, text: str | bytes, content_type: str = _TEXT) -> AdminAnswer:
    body = text.encode("utf-8") if isinstance(text, str) else text
    return AdminAnswer(status, (("Content-Type", content_type),), body)


class AdminApi:
    """The admin routes over an :class:`~polaris_sdk.server.auth.AuthFilter`; see the module doc.

    ``metrics`` is rendered at ``/metrics``; ``serving`` tells ``/healthz``
    whether the server is up.
    """

    def __init__(
        self,
        api: AuthFilter,
        metrics: ServerMetrics | None = None,
        serving: Callable[[], bool] = lambda: True,
        rules: CircuitBreakerRules | None = None,
    ) -> None:
        self._api = api
        self._naming = api.naming
        self._metrics = metrics
        self._serving = serving
        self._rules = rules

    # ------------------------------------------------------------ entry

    def accepts(self, method: str, path: str) -> bool:
        """Whether :meth:`handle` answers ``method path`` (read a body only then)."""
        if path in ADMIN_PATHS.get(method, ()):
            return True
        if self._rules is not None and path.rstrip("/") in RULE_PATHS:
            return True
        return method == "GET" and console.is_console_path(path)

    def handle(
        self,
        method: str,
        path: str,
        query: Mapping[str, str],
        headers: Mapping[str, str],
        body: bytes,
        *,
        client: str = "",
    ) -> AdminAnswer | None:
        """The answer to one request, or None when it is not an admin request."""
        if not self.accepts(method, path):
            return None
        lowered = {k.lower(): v for k, v in headers.items()}
        ctx = RequestContext(
            token=lowered.get("x-polaris-token") or lowered.get("polaris-token") or "",
            request_id=lowered.get("request-id", ""),
            user_agent=lowered.get("user-agent", ""),
            client_address=client,
        )
        try:
            if path.rstrip("/") in RULE_PATHS:
                answer = self._rule_route(method, path, query, body, ctx)
            else:
                answer = self._route(method, path, query, lowered, body, ctx)
        except Exception:
            log.exception("%s %s failed", method, path)
            answer = self._message(operate.batch_query_response(wire.Code.ExecuteException), ctx)
        if answer.status >= 200 and path.startswith("/naming/") and self._metrics is not None:
            code = next((int(v) for k, v in answer.headers if k == "X-Polaris-Code"), 200000)
            self._metrics.count(f"{method}:{path}", "http", code)
        return answer

    def _rule_route(
        self, method: str, path: str, query: Mapping[str, str], body: bytes, ctx: RequestContext
    ) -> AdminAnswer:
        """The circuit-breaker rule routes (:mod:`polaris_sdk.server.cbrules`); writes are
        authorised for the namespace each rule names, like the other writes."""
        assert self._rules is not None
        if method != "GET":
            try:
                items = json.loads(body or b"[]")
            except ValueError:
                items = []
            namespaces = (
                {str(item.get("namespace", "")) for item in items if isinstance(item, dict)}
                if isinstance(items, list)
                else set()
            )
            for namespace in sorted(namespaces) or [""]:
                code = self._api.check(
                    ctx, Resource(Action.UPDATE, namespace=namespace, token=ctx.token)
                )
                if code is not None:
                    return self._message(operate.batch_write_response(code), ctx)
        answer = handle_rules(self._rules, method, path, urlencode(query), {}, body)
        if answer is None:
            return _plain(404, f"no API at {path}")
        status, headers, payload = answer
        return AdminAnswer(status, tuple(headers.items()), payload)

    def _route(
        self,
        method: str,
        path: str,
        query: Mapping[str, str],
        headers: Mapping[str, str],
        body: bytes,
        ctx: RequestContext,
    ) -> AdminAnswer:
        if method == "GET":
            return self._get(path, query, headers, ctx)
        if headers.get("content-type", "").split(";", 1)[0].strip().lower() != _JSON:
            reason = f"{code_info(wire.Code.BadRequest)}: Content-Type must be {_JSON}"
            answer = operate.batch_write_response(wire.Code.BadRequest)
            answer.info.value = reason
            return self._message(answer, ctx, status=415)
        try:
            instances, metadata_given = _instances(body)
        except ParseFailure as err:
            answer = operate.batch_write_response(wire.Code.ParseException)
            answer.info.value = f"parse exception: {str(err)[:200]}"
            return self._message(answer, ctx)
        if not instances:
            return self._message(operate.batch_write_response(wire.Code.EmptyRequest), ctx)
        if len(instances) > operate.BATCH_LIMIT:
            return self._message(operate.batch_write_response(wire.Code.BatchSizeOverLimit), ctx)
        if method == "PUT":
            answers = [
                self._update(i, given, ctx)
                for i, given in zip(instances, metadata_given, strict=True)
            ]
        elif path == INSTANCES:
            answers = [self._api.register_instance(i, ctx) for i in instances]
        else:
            answers = [self._delete(i, ctx) for i in instances]
        return self._message(operate.collect(answers), ctx)

    # ------------------------------------------------------------ reads

    def _get(
        self, path: str, query: Mapping[str, str], headers: Mapping[str, str], ctx: RequestContext
    ) -> AdminAnswer:
        if path == "/":
            if "text/html" in headers.get("accept", ""):
                return AdminAnswer(302, (("Location", console.CONSOLE_PATH),), b"")
            return _plain(200, INDEX_TEXT)
        if path == "/healthz":
            return _plain(200, "ok\n") if self._serving() else _plain(503, "stopping\n")
        if path == "/metrics":
            return self._render_metrics()
        if console.is_console_path(path):
            asset = console.asset(path)
            if asset is None:
                return _plain(404, f"no console page at {path}\n")
            return AdminAnswer(
                200,
                (("Content-Type", asset.content_type), ("Cache-Control", "no-cache")),
                asset.body,
            )
        namespace = query.get("namespace", "")
        denied = self._api.check(ctx, Resource(Action.LIST, namespace=namespace, token=ctx.token))
        visible: Callable[[str], bool] = lambda _: True  # noqa: E731
        if denied == wire.Code.NotAllowedAccess and not namespace:
            # A token limited to namespaces lists what it may see.
            denied = None
            visible = self._visible(ctx)
        if denied:
            return self._message(operate.batch_query_response(denied), ctx)
        store = self._naming.store
        if path == NAMESPACES:
            answer = operate.list_namespaces(store, query, visible)
        elif path == SERVICES:
            answer = operate.list_services(store, query, visible)
        else:
            answer = operate.query_instances(store, self._naming.heartbeats, query, visible)
        return self._message(answer, ctx)

    def _visible(self, ctx: RequestContext) -> Callable[[str], bool]:
        cache: dict[str, bool] = {}

        def visible(namespace: str) -> bool:
            if namespace not in cache:
                resource = Resource(Action.LIST, namespace=namespace, token=ctx.token)
                cache[namespace] = self._api.authorizer.authorize(ctx, resource) == 200000
            return cache[namespace]

        return visible

    def _render_metrics(self) -> AdminAnswer:
        text = self._metrics.render() if self._metrics is not None else None
        if text is None or self._metrics is None:
            return _plain(404, METRICS_MISSING + "\n")
        return _plain(200, text, self._metrics.content_type())

    # ----------------------------------------------------------- writes

    def _stored_namespace_denied(
        self, action: Action, instance: Any, ctx: RequestContext
    ) -> Any | None:
        """The denial when the stored instance lives where the token may not act."""
        try:
            instance_id = operate.instance_id_of(instance)
        except Exception:
            return None  # invalid: the operation answers the validation code
        record = self._naming.store.get_instance(instance_id)
        if record is None or record.namespace == instance.namespace.value:
            return None
        token = instance.service_token.value or ctx.token
        code = self._api.check(
            ctx, Resource(action, namespace=record.namespace, service=record.service, token=token)
        )
        return operate.instance_response(code, instance) if code else None

    def _update(self, instance: Any, metadata_given: bool, ctx: RequestContext) -> Any:
        token = instance.service_token.value or ctx.token
        resource = Resource(
            Action.UPDATE,
            namespace=instance.namespace.value,
            service=instance.service.value,
            token=token,
        )
        code = self._api.check(ctx, resource)
        if code:
            return operate.instance_response(code, instance)
        denied = self._stored_namespace_denied(Action.UPDATE, instance, ctx)
        if denied is not None:
            return denied
        return operate.update_instance(self._naming.store, instance, metadata_given)

    def _delete(self, instance: Any, ctx: RequestContext) -> Any:
        denied = self._stored_namespace_denied(Action.DEREGISTER, instance, ctx)
        if denied is not None:
            return denied
        return self._api.deregister_instance(instance, ctx)

    # ---------------------------------------------------------- answers

    def _message(self, message: Any, ctx: RequestContext, status: int | None = None) -> AdminAnswer:
        code = int(message.code.value)
        headers: list[tuple[str, str]] = [("Content-Type", _JSON)]
        if code != wire.Code.ExecuteSuccess:
            headers.append(("X-Polaris-Code", str(code)))
            headers.append(("X-Polaris-Message", code_info(code)))
        request_id = _clean(ctx.request_id)
        if request_id is not None:
            headers.append(("Request-Id", request_id))
        return AdminAnswer(status or http_status(code), tuple(headers), encode_response(message))


def _instances(body: bytes) -> tuple[list[Any], list[bool]]:
    """A JSON array of ``v1.Instance`` and, for each, whether it carries ``metadata``."""
    try:
        data = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as err:
        raise ParseFailure(f"invalid JSON: {err}") from None
    if not isinstance(data, list):
        raise ParseFailure("expected a JSON array of instances")
    instances = []
    given = []
    for item in data:
        instances.append(decode_request(json.dumps(item).encode("utf-8"), wire.Instance))
        given.append(isinstance(item, dict) and item.get("metadata") is not None)
    return instances, given
