"""What the flows need from a server connection: small protocols per use.

Contract of every implementation:

* Methods block the calling thread and are safe to call from many threads.
* Each call finishes within its ``timeout`` (seconds; default: the
  configured ``global.api.timeout``), retries and address failover included.
* Success returns a value; every failure raises a
  :class:`~polaris_sdk.errors.PolarisError`: a server code through
  :func:`~polaris_sdk.errors.error_for_code`, no reachable address as
  :class:`~polaris_sdk.errors.NetworkError`, a missed deadline as
  :class:`~polaris_sdk.errors.PolarisTimeoutError`, a closed connector as
  :class:`~polaris_sdk.errors.ClosedError`.
* Requests are sent as given: validation is the caller's job.

The flows depend on the narrowest protocol that covers what they call
(:class:`Registrar`, :class:`HeartbeatSender`, :class:`InstanceDiscoverer`);
:class:`ServerConnector` is the whole surface a transport (gRPC, HTTP)
implements.
"""

from __future__ import annotations

from typing import Protocol

from polaris_sdk.model import (
    InstanceDeregisterRequest,
    InstanceHeartbeatRequest,
    InstanceRegisterRequest,
    InstanceRegisterResponse,
    ServiceInstances,
    ServiceKey,
)

__all__ = [
    "AsyncServerConnector",
    "ClientReporter",
    "HeartbeatSender",
    "InstanceDiscoverer",
    "Registrar",
    "ServerConnector",
]


class Registrar(Protocol):
    def register_instance(
        self, req: InstanceRegisterRequest, ttl: int | None, *, timeout: float | None = None
    ) -> InstanceRegisterResponse:
        """RegisterInstance; ``ttl`` (seconds) turns heartbeat health checks on."""
        ...

    def deregister_instance(
        self, req: InstanceDeregisterRequest, *, timeout: float | None = None
    ) -> None:
        """DeregisterInstance; an unknown instance is not an error."""
        ...


class HeartbeatSender(Protocol):
    def heartbeat(self, req: InstanceHeartbeatRequest, *, timeout: float | None = None) -> None:
        """Heartbeat; raises ResourceNotFoundError when the server no longer knows it."""
        ...


class InstanceDiscoverer(Protocol):
    def discover_instances(
        self, key: ServiceKey, revision: str = "", timeout: float | None = None
    ) -> ServiceInstances | None:
        """Discover INSTANCE; None when ``revision`` is still current (200001).

        An unknown service raises ResourceNotFoundError.
        """
        ...


class ClientReporter(Protocol):
    def report_client(
        self, host: str, version: str = "", *, timeout: float | None = None
    ) -> None: ...


class ServerConnector(Registrar, HeartbeatSender, InstanceDiscoverer, ClientReporter, Protocol):
    """Everything a transport offers; ``close()`` releases its connections."""

    @property
    def closed(self) -> bool: ...

    def close(self) -> None: ...


class AsyncServerConnector(Protocol):
    """The asyncio twin of :class:`ServerConnector`: the same calls, awaited."""

    @property
    def closed(self) -> bool: ...

    async def register_instance(
        self, req: InstanceRegisterRequest, ttl: int | None, *, timeout: float | None = None
    ) -> InstanceRegisterResponse: ...

    async def deregister_instance(
        self, req: InstanceDeregisterRequest, *, timeout: float | None = None
    ) -> None: ...

    async def heartbeat(
        self, req: InstanceHeartbeatRequest, *, timeout: float | None = None
    ) -> None: ...

    async def discover_instances(
        self, key: ServiceKey, revision: str = "", timeout: float | None = None
    ) -> ServiceInstances | None: ...

    async def report_client(
        self, host: str, version: str = "", *, timeout: float | None = None
    ) -> None: ...

    async def aclose(self) -> None: ...
