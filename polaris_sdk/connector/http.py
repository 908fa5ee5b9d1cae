"""The HTTP transport: the Polaris HTTP client API (port 8090) over httpx.

Contract:

* Thread-safe; one instance serves a whole SDKContext. The naming calls,
  answer codes and retries are :class:`~polaris_sdk.connector.naming.
  NamingConnector`'s, shared with gRPC; this module moves the messages.
* Each call is ``POST /v1/<Method>`` with the same ``v1`` protobuf message
  the gRPC transport sends, as JSON (``Content-Type: application/json``).
  The answer's body is parsed leniently (unknown fields ignored); its
  ``code`` is the result. A body without a code falls back to the
  ``X-Polaris-Code`` header, then to the HTTP status (a proxy's 502 is a
  retriable 500000, a 404 says the address is not a Polaris HTTP API).
* Discover is one POST per call carrying the cached revision; 200001 means
  unchanged. There is no stream and no background thread.
* Addresses are ``host:port`` of the HTTP API, tried in the configured order
  with the same failover rules as gRPC (:mod:`polaris_sdk.connector.failover`):
  a refused or timed-out connection marks the address down for
  ``failbackInterval``; silence after connecting marks it down only if it
  never answered.
* Deadlines: a call's deadline (``timeout`` or ``global.api.timeout``)
  covers failover and retries; one attempt waits at most ``connectTimeout``
  to connect and ``messageTimeout`` (or the time left) for each of pool
  checkout, send and receive; a Discover attempt, whose answer grows with
  the service, the time left.
* One :class:`httpx.Client` with a bounded pool (:data:`MAX_CONNECTIONS`)
  of keep-alive connections; proxy settings from the environment are not
  used. With TLS configured the scheme is ``https`` and the server
  certificate is verified (:mod:`polaris_sdk.connector.tls`).
* Every request carries ``Request-Id``, the SDK's ``User-Agent`` and, when a
  token is configured, ``X-Polaris-Token``. Headers are never logged.
* ``close()`` closes the pool; later calls raise
  :class:`~polaris_sdk.errors.ClosedError`.
* In a process forked from the owner's the inherited pool (whose sockets
  the parent still uses) is left alone for good and a new client with an
  empty pool takes its place (:mod:`polaris_sdk._fork`).
"""

from __future__ import annotations

import json
import logging
from typing import Any, Final

import httpx
from google.protobuf import json_format

from polaris_sdk import _fork, wire
from polaris_sdk.config import Configuration
from polaris_sdk.connector.calls import USER_AGENT, Call, new_request_id
from polaris_sdk.connector.failover import Endpoint, Endpoints
from polaris_sdk.connector.naming import NamingConnector
from polaris_sdk.connector.state import Connection
from polaris_sdk.connector.tls import load_tls
from polaris_sdk.errors import (
    ClosedError,
    NetworkError,
    PolarisError,
    PolarisTimeoutError,
    ProtocolMismatchError,
)

__all__ = [
    "MAX_CONNECTIONS",
    "AsyncHttpTransport",
    "HttpConnector",
    "HttpTransport",
    "code_for_status",
]

logger = logging.getLogger("polaris_sdk.connector.http")

MAX_CONNECTIONS: Final = 16
"""Open connections per connector, over all addresses; more callers wait for one."""
_MAX_IDLE: Final = 8
# Idle connections are closed before a server's idle timeout (the embedded
# server's is 10 s) would cut them under a request.
_KEEPALIVE_EXPIRY: Final = 5.0

# HTTP statuses that carry no Polaris code (a proxy, a wrong port), as the
# code a server would send; anything else goes by its class.
_STATUS_CODES: Final = {
    401: 401000,
    403: 401001,
    404: 400000,
    429: 429001,
}


def code_for_status(status: int) -> int:
    """The Polaris code standing for an HTTP ``status`` that came without one."""
    if status in _STATUS_CODES:
        return _STATUS_CODES[status]
    if 400 <= status < 500:
        return 400000
    # 5xx, and a 2xx/3xx without a code: nothing the client did wrong.
    return 500000


def _not_http1(err: httpx.RemoteProtocolError) -> bool:
    """Whether the peer's answer was not HTTP/1.x at all (an HTTP/2-only server, gRPC)."""
    text = str(err)
    return "illegal request line" in text or "illegal status line" in text


def _header_code(response: httpx.Response) -> int | None:
    raw = response.headers.get("X-Polaris-Code", "").strip()
    return int(raw) if raw.isdigit() else None


class _HttpExchange:
    """What the blocking and the asyncio HTTP transports share: all but the client."""

    def __init__(self, config: Configuration) -> None:
        sc = config.server_connector
        self._tls = load_tls(sc)
        scheme = "https" if self._tls is not None else "http"
        self._token = sc.token
        self._connect_timeout = sc.connect_timeout
        self._closed = False

        def endpoints() -> Endpoints[str]:
            return Endpoints(
                (Endpoint(address, f"{scheme}://{address}") for address in sc.addresses),
                sc.failback_interval,
            )

        self._new_endpoints = endpoints
        self.endpoints = endpoints()

    def _client_args(self) -> dict[str, Any]:
        return {
            "verify": self._tls.ssl_context() if self._tls is not None else True,
            "limits": httpx.Limits(
                max_connections=MAX_CONNECTIONS,
                max_keepalive_connections=_MAX_IDLE,
                keepalive_expiry=_KEEPALIVE_EXPIRY,
            ),
            "headers": {
                "User-Agent": USER_AGENT,
                "Content-Type": "application/json",
                "Accept": "application/json",
            },
            # The registry is reached directly, as the other Polaris SDKs do;
            # an HTTP_PROXY meant for the application must not capture it.
            "trust_env": False,
        }

    def _request(self, call: Call, timeout: float) -> tuple[Endpoint[str], dict[str, Any]]:
        """The endpoint to use and the ``post()`` arguments for one attempt of ``call``."""
        ep = self.endpoints.pick()
        body = json.dumps(
            json_format.MessageToDict(call.request, descriptor_pool=wire.POOL),
            separators=(",", ":"),
        )
        headers = {"Request-Id": new_request_id()}
        if self._token:
            headers["X-Polaris-Token"] = self._token
        return ep, {
            "url": f"{ep.handle}/v1/{call.method}",
            "content": body.encode(),
            "headers": headers,
            "timeout": httpx.Timeout(timeout, connect=min(self._connect_timeout, timeout)),
        }

    def _closed_client(self) -> PolarisError:
        # httpx refuses to send on a client closed by a concurrent close().
        if self._closed:
            return ClosedError("the connector is closed")
        return NetworkError("the HTTP client was closed")

    def _failed(self, ep: Endpoint[str], err: httpx.HTTPError) -> PolarisError:
        """The SDK error for ``err``, marking ``ep`` down when it says so."""
        what = type(err).__name__
        if isinstance(err, httpx.ConnectTimeout | httpx.ConnectError):
            self.endpoints.mark_down(ep, what)
            return NetworkError(f"{ep.address}: cannot connect ({what}: {err})")
        if isinstance(err, httpx.PoolTimeout):
            return PolarisTimeoutError(
                f"{ep.address}: all {MAX_CONNECTIONS} connections busy; no answer in time"
            )
        if isinstance(err, httpx.TimeoutException):
            self.endpoints.no_answer(ep)
            return PolarisTimeoutError(f"{ep.address}: no answer in time ({what})")
        if isinstance(err, httpx.RemoteProtocolError) and _not_http1(err):
            return ProtocolMismatchError(
                f"{ep.address} does not answer HTTP/1.1 ({err}): it looks like a gRPC port "
                "(8091). Point global.serverConnector.addresses at the HTTP API (port 8090), "
                "or set global.serverConnector.protocol: grpc (POLARIS_PROTOCOL=grpc)"
            )
        if isinstance(err, httpx.TransportError):
            # Closed mid-answer: a server restarting, or a stale keep-alive connection.
            self.endpoints.no_answer(ep)
            return NetworkError(f"{ep.address}: {what}: {err}")
        return NetworkError(f"{ep.address}: {what}: {err}")

    def _answer(self, name: str, ep: Endpoint[str], response: httpx.Response) -> Any:
        """The answer message of ``response``, its code filled in when the body had none."""
        self.endpoints.mark_up(ep)
        message: Any = wire.POLARIS_GRPC_METHODS[name].response()
        try:
            json_format.Parse(
                response.content, message, ignore_unknown_fields=True, descriptor_pool=wire.POOL
            )
        except (json_format.ParseError, ValueError):
            message.Clear()
        if message.code.value:
            return message
        code = _header_code(response)
        info = response.headers.get("X-Polaris-Message", "")
        if code is None:
            code = code_for_status(response.status_code)
            info = (
                f"HTTP {response.status_code} {response.reason_phrase} from {ep.address} "
                "without a Polaris code"
            )
            logger.warning("%s: %s", name, info)
        message.code.value = code
        message.info.value = info
        return message


class HttpTransport(_HttpExchange):
    """Moves naming calls as ``POST /v1/<Method>`` on one :class:`httpx.Client`; thread-safe."""

    def __init__(self, config: Configuration) -> None:
        super().__init__(config)
        self._client = httpx.Client(**self._client_args())
        _fork.track(self)

    def _reset_after_fork(self) -> None:
        _fork.keep(self._client, self.endpoints)
        self._client = httpx.Client(**self._client_args())
        self.endpoints = self._new_endpoints()

    def close(self) -> None:
        self._closed = True
        self._client.close()

    def exchange(self, call: Call, timeout: float) -> Any:
        ep, args = self._request(call, timeout)
        try:
            response = self._client.post(**args)
        except httpx.HTTPError as err:
            raise self._failed(ep, err) from None
        except RuntimeError:
            raise self._closed_client() from None
        return self._answer(call.method, ep, response)


class AsyncHttpTransport(_HttpExchange):
    """The same on one :class:`httpx.AsyncClient`, for an asyncio context."""

    def __init__(self, config: Configuration) -> None:
        super().__init__(config)
        self._client = httpx.AsyncClient(**self._client_args())
        _fork.track(self)

    def _reset_after_fork(self) -> None:
        _fork.keep(self._client, self.endpoints)
        self._client = httpx.AsyncClient(**self._client_args())
        self.endpoints = self._new_endpoints()

    async def aclose(self) -> None:
        self._closed = True
        await self._client.aclose()

    async def exchange(self, call: Call, timeout: float) -> Any:
        ep, args = self._request(call, timeout)
        try:
            response = await self._client.post(**args)
        except httpx.HTTPError as err:
            raise self._failed(ep, err) from None
        except RuntimeError:
            raise self._closed_client() from None
        return self._answer(call.method, ep, response)


class HttpConnector(NamingConnector):
    """:class:`~polaris_sdk.connector.base.ServerConnector` over the HTTP API."""

    def __init__(self, config: Configuration, *, connection: Connection | None = None) -> None:
        super().__init__(config, HttpTransport(config), connection=connection)
