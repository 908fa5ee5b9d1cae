"""The auth filter of the embedded server: the layer between apiserver and naming.

Every request passes :class:`AuthFilter` on its way from an apiserver (gRPC or
HTTP) to the :class:`~polaris_sdk.server.naming.NamingService`. The filter
names the resource the request touches (action, namespace, service), picks
the token the way a real server does (``x-polaris-token`` header, overridden
by a non-empty ``instance.service_token`` for register/deregister and by
``service.token`` for Discover) and asks an :class:`Authorizer`. A denial is
answered with the authorizer's code and the naming service is not called.

The default :class:`AllowAll` lets everything through, as a real server
with auth off does. :class:`TokenAuthorizer` checks tokens, each allowed
everywhere or limited to some namespaces:

* register, deregister and discover need a known token: none at all is
  401002 EmptyAutToken, an unknown one 401004 TokenNotExisted, a token used
  outside its namespaces 401001 NotAllowedAccess;
* heartbeats and client reports pass without a token, as on a real server
  (its health check server does no auth check);
* the admin API (:mod:`.apiserver.admin`) asks through :meth:`AuthFilter.check`:
  its reads (``LIST``) and writes (``REGISTER``, ``UPDATE``, ``DEREGISTER``)
  need a token valid for the namespace, as the writes above do.

An instance id is the SHA-1 of public fields, so anyone can compute the id
of an instance in a namespace their token does not cover. The filter
therefore also authorises against the namespace of the *stored* instance a
request names (its id, given or computed): a deregister (or heartbeat, for
an authorizer that checks them) of an instance elsewhere is denied with the
authorizer's code, and a register whose id names an instance of another
service or namespace is refused 401001 NotAllowedAccess whatever the token,
so no request can move an instance out of its service.

A real server (``auth.option.clientOpen``) decides differently in places,
since its tokens belong to users with strategies: a missing or undecodable
token is 401001 in strict mode and an anonymous caller otherwise, and reads
(Discover) pass for any verified token. The table above is the stricter,
simpler contract of this embedded server.

Tokens are never logged, never shown in a ``repr`` and compared by digest,
so the time a check takes does not depend on how much of a token matched.

Thread-safe as long as the authorizer is (both here are immutable); adds
no blocking of its own.
"""

from __future__ import annotations

import enum
import hashlib
import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Final, Protocol, TypeAlias

from polaris_sdk import validation, wire
from polaris_sdk.errors import ValidationError
from polaris_sdk.server.naming import (
    DEFAULT_NAMESPACE,
    STORE_ERRORS,
    NamingService,
    RequestContext,
    StoreFailure,
    code_info,
    discover_response,
    heartbeat_requests,
    response,
)

__all__ = [
    "TOKENS_ENV",
    "Action",
    "AllowAll",
    "AuthFilter",
    "Authorizer",
    "Resource",
    "TokenAuthorizer",
    "Tokens",
    "parse_token_specs",
    "split_token_specs",
]

log = logging.getLogger("polaris_sdk.server.auth")

_SUCCESS = wire.Code.ExecuteSuccess
_INSTANCE = wire.DISCOVER_REQUEST_TYPE.values_by_name["INSTANCE"].number

TOKENS_ENV: Final = "POLARIS_SERVER_TOKENS"
"""Environment variable with token specs for ``python -m polaris_sdk.server``."""

Tokens: TypeAlias = Iterable[str] | Mapping[str, Iterable[str] | None]
"""Tokens a server accepts: specs (``"token"`` or ``"token:ns1,ns2"``), or a
mapping of token to the namespaces it may touch (None: every namespace)."""


class Action(enum.Enum):
    REGISTER = "register"
    DEREGISTER = "deregister"
    HEARTBEAT = "heartbeat"
    DISCOVER = "discover"
    REPORT_CLIENT = "report_client"
    LIST = "list"  # the admin API's reads: namespaces, services, instances
    UPDATE = "update"  # the admin API's instance updates (isolate, weight, metadata)


@dataclass(frozen=True, slots=True)
class Resource:
    """What a request touches; empty names when the request names none (or is invalid)."""

    action: Action
    namespace: str = ""
    service: str = ""
    token: str = field(default="", repr=False)


class Authorizer(Protocol):
    def authorize(self, ctx: RequestContext, resource: Resource) -> int:
        """``ExecuteSuccess`` (200000) to allow, or the ``v1.Code`` to deny with (401xxx)."""
        ...


class AllowAll:
    """Allows every request: the behaviour of a server with auth off."""

    def authorize(self, ctx: RequestContext, resource: Resource) -> int:
        return int(_SUCCESS)


_SPEC_SEPARATORS: Final = re.compile(r"[\s;]+")
# Actions a real server lets through without looking at the token.
_OPEN_ACTIONS: Final = frozenset({Action.HEARTBEAT, Action.REPORT_CLIENT})


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


def split_token_specs(text: str) -> list[str]:
    """The specs in ``text``, separated by whitespace or ``;`` (as in :data:`TOKENS_ENV`)."""
    return [spec for spec in _SPEC_SEPARATORS.split(text) if spec]


def parse_token_specs(specs: Iterable[str] | str) -> dict[str, frozenset[str] | None]:
    """Token specs as the CLI and :data:`TOKENS_ENV` give them, as a token -> scope table.

    A spec is ``token`` (every namespace) or ``token:ns1,ns2`` (only those
    namespaces; a token given this way cannot itself contain ``:``). A
    string holds several specs separated by whitespace or ``;``. Raises
    ValueError for an empty token or an invalid namespace name.
    """
    if isinstance(specs, str):
        specs = split_token_specs(specs)
    table: dict[str, frozenset[str] | None] = {}
    for spec in specs:
        token, colon, names = spec.strip().partition(":")
        namespaces = [n.strip() for n in names.split(",") if n.strip()] if colon else None
        _merge(table, token, namespaces)
    return table


def _merge(
    table: dict[str, frozenset[str] | None], token: str, namespaces: Iterable[str] | None
) -> None:
    if not token:
        raise ValueError("a token must not be empty")
    if namespaces is None:
        table[token] = None
        return
    scope = frozenset(namespaces)
    if not scope:
        raise ValueError("a token limited to namespaces needs at least one (none: use None)")
    for name in scope:
        try:
            validation.check_namespace(name)
        except ValidationError as err:
            raise ValueError(f"invalid namespace {name!r} in a token's scope: {err}") from None
    old = table.get(token, frozenset())
    # The same token given twice: its scopes add up; "everywhere" wins.
    table[token] = None if old is None else old | scope


class TokenAuthorizer:
    """Accepts the given tokens, each for every namespace or for some; see the module doc."""

    def __init__(self, tokens: Tokens) -> None:
        if isinstance(tokens, Mapping):
            table: dict[str, frozenset[str] | None] = {}
            for token, namespaces in tokens.items():
                _merge(table, token, namespaces)
        else:
            table = parse_token_specs(tokens)
        if not table:
            raise ValueError("TokenAuthorizer needs at least one token")
        # Keyed by digest: a lookup's timing tells nothing about the token.
        self._scopes: dict[bytes, frozenset[str] | None] = {
            _digest(token): scope for token, scope in table.items()
        }

    def __len__(self) -> int:
        return len(self._scopes)

    def __repr__(self) -> str:
        return f"<TokenAuthorizer with {len(self._scopes)} token(s)>"

    def authorize(self, ctx: RequestContext, resource: Resource) -> int:
        if resource.action in _OPEN_ACTIONS:
            return int(_SUCCESS)
        if not resource.token:
            return int(wire.Code.EmptyAutToken)
        digest = _digest(resource.token)
        if digest not in self._scopes:
            return int(wire.Code.TokenNotExisted)
        scope = self._scopes[digest]
        if scope is not None and resource.namespace not in scope:
            return int(wire.Code.NotAllowedAccess)
        return int(_SUCCESS)


def _instance_resource(action: Action, instance: Any, ctx: RequestContext) -> Resource:
    token = instance.service_token.value if action is not Action.HEARTBEAT else ""
    return Resource(
        action=action,
        namespace=instance.namespace.value,
        service=instance.service.value,
        token=token or ctx.token,
    )


def _del_heartbeats(code: int) -> Any:
    return wire.DelHeartbeatsResponse(code=code, info=code_info(code))


class AuthFilter:
    """The naming API with an authorization check in front; see the module doc."""

    def __init__(self, naming: NamingService, authorizer: Authorizer | None = None) -> None:
        self.naming = naming
        self.authorizer: Authorizer = authorizer or AllowAll()

    def check(self, ctx: RequestContext, resource: Resource) -> int | None:
        """None when ``resource`` may be touched, else the code to deny with (logged)."""
        return self._denied(ctx, resource)

    def _denied(self, ctx: RequestContext, resource: Resource) -> int | None:
        code = self.authorizer.authorize(ctx, resource)
        if code == _SUCCESS:
            return None
        log.info(
            "denied %s on %s/%s from %s with code %d",
            resource.action.value,
            resource.namespace or "-",
            resource.service or "-",
            ctx.client_address or "-",
            code,
        )
        return code

    def _denied_instance(self, action: Action, instance: Any, ctx: RequestContext) -> int | None:
        """Check the namespace the request names, then the one of the instance it acts on."""
        resource = _instance_resource(action, instance, ctx)
        code = self._denied(ctx, resource)
        register = action is Action.REGISTER
        if code or (not register and isinstance(self.authorizer, AllowAll)):
            return code  # with auth off only a register's target matters
        try:
            stored = self.naming.stored_target(instance, register=register)
        except StoreFailure:
            return int(wire.Code.StoreLayerException)
        if stored is None:
            return None
        moved = (stored.namespace, stored.service) != (resource.namespace, resource.service)
        if register and moved:
            log.info(
                "denied register of instance %s of %s/%s as one of %s/%s from %s",
                stored.id,
                stored.namespace,
                stored.service,
                resource.namespace,
                resource.service,
                ctx.client_address or "-",
            )
            return int(wire.Code.NotAllowedAccess)
        if stored.namespace == resource.namespace:
            return None
        return self._denied(
            ctx, replace(resource, namespace=stored.namespace, service=stored.service)
        )

    def register_instance(self, instance: Any, ctx: RequestContext) -> Any:
        code = self._denied_instance(Action.REGISTER, instance, ctx)
        return response(code) if code else self.naming.register_instance(instance, ctx)

    def deregister_instance(self, instance: Any, ctx: RequestContext) -> Any:
        code = self._denied_instance(Action.DEREGISTER, instance, ctx)
        return response(code) if code else self.naming.deregister_instance(instance, ctx)

    def heartbeat(self, instance: Any, ctx: RequestContext) -> Any:
        code = self._denied_instance(Action.HEARTBEAT, instance, ctx)
        return response(code) if code else self.naming.heartbeat(instance, ctx)

    def batch_heartbeat(self, request: Any, ctx: RequestContext) -> Any:
        """``v1.HeartbeatsRequest``: each beat as a heartbeat; the answer is an empty
        ``v1.HeartbeatsResponse`` whatever they got, as from a real server."""
        for instance in heartbeat_requests(request.heartbeats):
            self.heartbeat(instance, ctx)
        return wire.HeartbeatsResponse()

    def get_heartbeats(self, request: Any, ctx: RequestContext) -> Any:
        """``v1.GetHeartbeatsRequest``: read like heartbeats, with no token needed."""
        code = self._denied(ctx, Resource(action=Action.HEARTBEAT, token=ctx.token))
        if code:
            return wire.GetHeartbeatsResponse()
        return self.naming.heartbeat_records(request.instanceIds)

    def delete_heartbeats(self, request: Any, ctx: RequestContext) -> Any:
        """``v1.DelHeartbeatsRequest``: forgetting beats ages instances toward unhealthy, so
        each id is authorised as a deregistration in the namespace of its instance."""
        ids = list(request.instanceIds)
        if not isinstance(self.authorizer, AllowAll):
            for instance_id in ids:
                try:
                    stored = self.naming.store.get_instance(instance_id)
                except STORE_ERRORS:
                    log.exception("store failure in a heartbeat deletion")
                    return _del_heartbeats(int(wire.Code.StoreLayerException))
                resource = Resource(
                    action=Action.DEREGISTER,
                    namespace=stored.namespace if stored is not None else "",
                    service=stored.service if stored is not None else "",
                    token=ctx.token,
                )
                code = self._denied(ctx, resource)
                if code:
                    return _del_heartbeats(code)
        return self.naming.delete_heartbeats(ids)

    def discover(self, request: Any, ctx: RequestContext, *, only_healthy: bool = False) -> Any:
        service = request.service
        namespace = service.namespace.value
        if not namespace and request.type == _INSTANCE:
            namespace = DEFAULT_NAMESPACE
        resource = Resource(
            action=Action.DISCOVER,
            namespace=namespace,
            service=service.name.value,
            token=service.token.value or ctx.token,
        )
        code = self._denied(ctx, resource)
        if code:
            return discover_response(code, request.type)
        return self.naming.discover(request, ctx, only_healthy=only_healthy)

    def report_client(self, client: Any, ctx: RequestContext) -> Any:
        code = self._denied(ctx, Resource(action=Action.REPORT_CLIENT, token=ctx.token))
        return response(code) if code else self.naming.report_client(client, ctx)
