"""Test helpers around the embedded server: a recording authorizer, free ports,
and the address and configuration of either transport."""

from __future__ import annotations

import collections
import socket
import threading

from polaris_sdk import Configuration
from polaris_sdk.server import PolarisServer
from polaris_sdk.server.auth import Action, Resource
from polaris_sdk.server.naming import RequestContext

SUCCESS = 200000


class RecordingAuthorizer:
    """Sees every request the server receives, and can fail the next ones on demand.

    Every request passes the authorizer before the naming service, so what
    it records is what reached the server.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.calls: list[tuple[RequestContext, Resource]] = []
        self._answers: collections.deque[int] = collections.deque()

    def authorize(self, ctx: RequestContext, resource: Resource) -> int:
        with self._lock:
            self.calls.append((ctx, resource))
            return self._answers.popleft() if self._answers else SUCCESS

    def answer_next(self, *codes: int) -> None:
        """Answer the next requests with ``codes`` instead of letting them through."""
        with self._lock:
            self._answers.extend(codes)

    def actions(self, action: Action | None = None, service: str | None = None) -> list[Resource]:
        with self._lock:
            return [
                r
                for _, r in self.calls
                if (action is None or r.action is action)
                and (service is None or r.service == service)
            ]

    def contexts(self) -> list[RequestContext]:
        with self._lock:
            return [c for c, _ in self.calls]

    def reset(self) -> None:
        with self._lock:
            self.calls.clear()
            self._answers.clear()


def unused_port() -> int:
    """A loopback port nothing listens on (bound once, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def fast_config(*addresses: str, **settings: object) -> Configuration:
    """Short timeouts, so failure paths finish quickly."""
    base: dict[str, object] = {
        "global.api.timeout": "2s",
        "global.api.retryInterval": "20ms",
        "global.serverConnector.connectTimeout": "500ms",
        "global.serverConnector.messageTimeout": "1s",
    }
    base.update(settings)
    return Configuration().replace(addresses=list(addresses), **base)


TRANSPORTS = ("grpc", "http")
"""The values of ``global.serverConnector.protocol``; tests run on each."""


def address_of(server: PolarisServer, transport: str) -> str:
    """``host:port`` of ``server``'s API for ``transport`` (the HTTP URL without its scheme)."""
    if transport == "grpc":
        return server.grpc_address
    url = server.http_address
    assert url is not None, "the server has no HTTP API"
    return url.split("://", 1)[1]


def transport_config(transport: str, *addresses: str, **settings: object) -> Configuration:
    """:func:`fast_config` speaking ``transport`` to ``addresses``."""
    return fast_config(*addresses, **{"global.serverConnector.protocol": transport, **settings})
