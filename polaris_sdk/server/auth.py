"""The auth filter of the embedded server: the layer between apiserver and naming.

Every request passes :class:`AuthFilter` on its way from an apiserver to the
:class:`~polaris_sdk.server.naming.NamingService`. The filter names the
resource the request touches (action, namespace, service), picks the token
the way a real server does (``x-polaris-token`` header, overridden by a
non-empty ``instance.service_token`` for register/deregister and by
``service.token`` for Discover) and asks an :class:`Authorizer`. A denial is
answered with the authorizer's code and the naming service is not called.

The default :class:`AllowAll` lets everything through, as a real server
with auth off does. A token check with namespace scopes slots in as another
:class:`Authorizer`. Tokens are never logged.

Thread-safe as long as the authorizer is; adds no blocking of its own.
"""

from __future__ import annotations

import enum
import logging
from dataclasses import dataclass, field
from typing import Any, Protocol

from polaris_sdk import wire
from polaris_sdk.server.naming import (
    DEFAULT_NAMESPACE,
    NamingService,
    RequestContext,
    discover_response,
    response,
)

__all__ = ["Action", "AllowAll", "AuthFilter", "Authorizer", "Resource"]

log = logging.getLogger("polaris_sdk.server.auth")

_SUCCESS = wire.Code.ExecuteSuccess
_INSTANCE = wire.DISCOVER_REQUEST_TYPE.values_by_name["INSTANCE"].number


class Action(enum.Enum):
    REGISTER = "register"
    DEREGISTER = "deregister"
    HEARTBEAT = "heartbeat"
    DISCOVER = "discover"
    REPORT_CLIENT = "report_client"


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


def _instance_resource(action: Action, instance: Any, ctx: RequestContext) -> Resource:
    token = instance.service_token.value if action is not Action.HEARTBEAT else ""
    return Resource(
        action=action,
        namespace=instance.namespace.value,
        service=instance.service.value,
        token=token or ctx.token,
    )


class AuthFilter:
    """The naming API with an authorization check in front; see the module doc."""

    def __init__(self, naming: NamingService, authorizer: Authorizer | None = None) -> None:
        self.naming = naming
        self.authorizer: Authorizer = authorizer or AllowAll()

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

    def register_instance(self, instance: Any, ctx: RequestContext) -> Any:
        code = self._denied(ctx, _instance_resource(Action.REGISTER, instance, ctx))
        return response(code) if code else self.naming.register_instance(instance, ctx)

    def deregister_instance(self, instance: Any, ctx: RequestContext) -> Any:
        code = self._denied(ctx, _instance_resource(Action.DEREGISTER, instance, ctx))
        return response(code) if code else self.naming.deregister_instance(instance, ctx)

    def heartbeat(self, instance: Any, ctx: RequestContext) -> Any:
        code = self._denied(ctx, _instance_resource(Action.HEARTBEAT, instance, ctx))
        return response(code) if code else self.naming.heartbeat(instance, ctx)

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
