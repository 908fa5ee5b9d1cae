"""The gRPC transport: ``v1.PolarisGRPC`` over the private wire classes.

Contract:

* Thread-safe; one instance serves a whole SDKContext. The naming calls,
  answer codes and retries are :class:`~polaris_sdk.connector.naming.
  NamingConnector`'s; this module moves the messages.
* Addresses are tried in the configured order
  (:mod:`polaris_sdk.connector.failover`). An address that refuses the
  connection (UNAVAILABLE), or does not answer in time before it ever
  answered, is skipped for ``failbackInterval`` seconds and the next one is
  used; after that interval the earlier address is preferred again.
  ``connectTimeout`` bounds each TCP connection attempt (gRPC's minimum
  connect timeout); no thread watches the channels.
* Every call has a deadline (``timeout`` or ``global.api.timeout``) that
  covers connecting, failover and retries; one attempt lasts at most
  ``messageTimeout``. Only retriable failures are retried
  (:mod:`polaris_sdk.connector.retry`).
* With TLS configured (:mod:`polaris_sdk.connector.tls`) every channel is a
  secure channel verifying the server certificate.
* Every request carries ``request-id``, the SDK's user agent and, when a token
  is configured, ``x-polaris-token``. The token is never logged.
* Discover calls share one bidirectional ``Discover`` stream. The server
  answers each request once and in order, so each answer goes to the oldest
  waiting caller. A thread named ``polaris-discover`` reads the stream; when
  the stream breaks, the waiting callers get the error and the next call
  opens a new stream, after a backoff that grows while opening keeps failing.
  A caller whose answer does not come in time drops the stream, since a
  server that stopped answering one request will not answer the next.
* ``close()`` ends the stream and its thread and closes the channels; later
  calls raise :class:`~polaris_sdk.errors.ClosedError`.
"""

from __future__ import annotations

import collections
import logging
import queue
import threading
import time
from collections.abc import Iterator
from typing import Any, Final

import grpc

from polaris_sdk import wire
from polaris_sdk.config import Configuration
from polaris_sdk.connector.failover import Endpoint, Endpoints
from polaris_sdk.connector.naming import USER_AGENT, NamingConnector, new_request_id
from polaris_sdk.connector.tls import load_tls
from polaris_sdk.errors import (
    ClosedError,
    NetworkError,
    PolarisError,
    PolarisTimeoutError,
    error_for_code,
)

__all__ = ["GrpcConnector", "map_rpc_error"]

logger = logging.getLogger("polaris_sdk.connector.grpc")

DISCOVER_THREAD: Final = "polaris-discover"
_STREAM_BACKOFF_MAX: Final = 5.0


def _channel_options(connect_timeout: float) -> tuple[tuple[str, Any], ...]:
    return (
        ("grpc.primary_user_agent", USER_AGENT),
        # Reconnect soon after a server restart instead of after gRPC's default
        # backoff of up to two minutes; each attempt may take connect_timeout.
        ("grpc.initial_reconnect_backoff_ms", 100),
        ("grpc.min_reconnect_backoff_ms", max(100, int(connect_timeout * 1000))),
        ("grpc.max_reconnect_backoff_ms", 2000),
        ("grpc.keepalive_time_ms", 30000),
        ("grpc.keepalive_timeout_ms", 10000),
    )


# gRPC failures that are not a server answer, as the code a server would send.
_STATUS_CODES: Final = {
    grpc.StatusCode.UNAUTHENTICATED: 401000,
    grpc.StatusCode.PERMISSION_DENIED: 401001,
    grpc.StatusCode.INVALID_ARGUMENT: 400000,
    grpc.StatusCode.UNIMPLEMENTED: 400000,
    grpc.StatusCode.FAILED_PRECONDITION: 400000,
    grpc.StatusCode.NOT_FOUND: 400202,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429001,
    grpc.StatusCode.INTERNAL: 500000,
    grpc.StatusCode.UNKNOWN: 500000,
    grpc.StatusCode.DATA_LOSS: 500000,
}


def map_rpc_error(err: grpc.RpcError, address: str) -> PolarisError:
    """The SDK error for a failed gRPC call to ``address``."""
    code = err.code() if isinstance(err, grpc.Call) else grpc.StatusCode.UNKNOWN
    details = (err.details() if isinstance(err, grpc.Call) else None) or str(code)
    if code is grpc.StatusCode.DEADLINE_EXCEEDED:
        return PolarisTimeoutError(f"{address}: deadline exceeded")
    server_code = _STATUS_CODES.get(code)
    if server_code is not None:
        return error_for_code(server_code, f"{address}: {code.name}: {details}")
    return NetworkError(f"{address}: {code.name}: {details}")


class _Channel:
    """One address's gRPC channel and its cached unary callables."""

    def __init__(
        self, address: str, options: Any, credentials: grpc.ChannelCredentials | None
    ) -> None:
        if credentials is None:
            self.channel = grpc.insecure_channel(address, options=options)
        else:
            self.channel = grpc.secure_channel(address, credentials, options=options)
        self._callables: dict[str, Any] = {}

    def unary(self, name: str) -> Any:
        fn = self._callables.get(name)
        if fn is None:
            method = wire.POLARIS_GRPC_METHODS[name]
            fn = self.channel.unary_unary(
                method.path,
                request_serializer=method.request.SerializeToString,
                response_deserializer=method.response.FromString,
            )
            self._callables[name] = fn
        return fn

    def stream(self, name: str) -> Any:
        method = wire.POLARIS_GRPC_METHODS[name]
        return self.channel.stream_stream(
            method.path,
            request_serializer=method.request.SerializeToString,
            response_deserializer=method.response.FromString,
        )


_Endpoint = Endpoint[_Channel]


def _note_failure(endpoints: Endpoints[_Channel], ep: _Endpoint, err: grpc.RpcError | None) -> None:
    """Mark ``ep`` down when ``err`` says it cannot be reached (None: no answer in time)."""
    code = err.code() if isinstance(err, grpc.Call) else None
    if code is grpc.StatusCode.UNAVAILABLE:
        endpoints.mark_down(ep, "unavailable")
    elif code is grpc.StatusCode.DEADLINE_EXCEEDED or err is None:
        endpoints.no_answer(ep)


class _Waiter:
    __slots__ = ("error", "event", "response")

    def __init__(self) -> None:
        self.event = threading.Event()
        self.response: Any = None
        self.error: PolarisError | None = None


_END: Final = object()


class _DiscoverStream:
    """The shared bidi Discover stream; see the module docstring."""

    def __init__(self, connector: GrpcConnector) -> None:
        self._connector = connector
        self._lock = threading.Lock()
        self._generation = 0
        self._call: Any = None
        self._endpoint: _Endpoint | None = None
        self._requests: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._waiters: collections.deque[_Waiter] = collections.deque()
        self._threads: list[threading.Thread] = []
        self._failures = 0
        self._retry_at = 0.0
        self._closed = False

    def exchange(self, request: Any, deadline: float) -> Any:
        waiter = _Waiter()
        with self._lock:
            if self._closed:
                raise ClosedError("the connector is closed")
            if self._call is None:
                self._open()
            generation = self._generation
            self._waiters.append(waiter)
            self._requests.put(request)
        if not waiter.event.wait(max(0.0, deadline - time.monotonic())):
            error = PolarisTimeoutError("Discover: no answer in time; reopening the stream")
            ep = self._endpoint
            if self._break(generation, error) and ep is not None:
                _note_failure(self._connector._endpoints, ep, None)
            raise error
        if waiter.error is not None:
            raise waiter.error
        return waiter.response

    def _open(self) -> None:
        # Called with the lock held. Opening does not block: a failure to
        # connect arrives on the reader thread as the stream's error.
        now = time.monotonic()
        if self._retry_at > now:
            raise NetworkError(
                f"Discover stream is reconnecting; next attempt in {self._retry_at - now:.2f}s"
            )
        ep = self._connector._endpoints.pick()
        requests: queue.SimpleQueue[Any] = queue.SimpleQueue()
        call = ep.handle.stream("Discover")(
            iter(requests.get, _END), metadata=self._connector._metadata()
        )
        self._generation += 1
        self._call = call
        self._endpoint = ep
        self._requests = requests
        self._threads = [t for t in self._threads if t.is_alive()]
        thread = threading.Thread(
            target=self._read,
            args=(call, ep, self._generation),
            name=DISCOVER_THREAD,
            daemon=True,
        )
        self._threads.append(thread)
        thread.start()
        logger.debug("Discover stream opened to %s", ep.address)

    def _read(self, call: Iterator[Any], ep: _Endpoint, generation: int) -> None:
        error: PolarisError
        try:
            for response in call:
                with self._lock:
                    if generation != self._generation:
                        return
                    waiter = self._waiters.popleft() if self._waiters else None
                    self._failures = 0
                self._connector._endpoints.mark_up(ep)
                if waiter is None:
                    logger.warning("Discover answer with no request waiting; dropped")
                    continue
                waiter.response = response
                waiter.event.set()
            error = NetworkError(f"{ep.address}: Discover stream ended by the server")
        except grpc.RpcError as err:
            error = map_rpc_error(err, ep.address)
            with self._lock:
                ours = generation == self._generation
            if ours:  # not the cancel of a stream already given up
                _note_failure(self._connector._endpoints, ep, err)
        except Exception as exc:  # the reader must never die without failing its waiters
            logger.exception("Discover stream reader failed")
            error = NetworkError(f"{ep.address}: Discover stream failed: {exc}")
        self._break(generation, error)

    def _note_failure(self) -> None:
        self._failures += 1
        backoff = min(0.05 * 2 ** (self._failures - 1), _STREAM_BACKOFF_MAX)
        self._retry_at = time.monotonic() + backoff

    def _break(self, generation: int, error: PolarisError) -> bool:
        """End stream ``generation`` (if still current), failing its waiters."""
        with self._lock:
            if generation != self._generation or self._call is None:
                return False
            call, self._call = self._call, None
            self._generation += 1
            waiters = list(self._waiters)
            self._waiters.clear()
            self._requests.put(_END)
            if not self._closed:
                self._note_failure()
                logger.warning("Discover stream broken: %s", error)
        call.cancel()
        for waiter in waiters:
            waiter.error = error
            waiter.event.set()
        return True

    def close(self) -> None:
        with self._lock:
            self._closed = True
            generation = self._generation
            threads = list(self._threads)
        self._break(generation, ClosedError("the connector is closed"))
        for thread in threads:
            if thread is not threading.current_thread():
                thread.join(5.0)


class GrpcConnector(NamingConnector):
    """:class:`~polaris_sdk.connector.base.ServerConnector` over gRPC."""

    def __init__(self, config: Configuration) -> None:
        super().__init__(config)
        sc = config.server_connector
        tls = load_tls(sc)
        credentials = tls.grpc_credentials() if tls is not None else None
        options = _channel_options(sc.connect_timeout)
        self._endpoints = Endpoints(
            (
                Endpoint(address, _Channel(address, options, credentials))
                for address in sc.addresses
            ),
            sc.failback_interval,
        )
        self._discover_stream = _DiscoverStream(self)

    def _release(self) -> None:
        self._discover_stream.close()
        for ep in self._endpoints:
            ep.handle.channel.close()

    def _metadata(self) -> tuple[tuple[str, str], ...]:
        md: tuple[tuple[str, str], ...] = (("request-id", new_request_id()),)
        if self._token:
            md += (("x-polaris-token", self._token),)
        return md

    def _discover(self, request: Any, timeout: float) -> Any:
        return self._discover_stream.exchange(request, time.monotonic() + timeout)

    def _unary(self, name: str, request: Any, timeout: float) -> Any:
        ep = self._endpoints.pick()
        try:
            resp = ep.handle.unary(name)(request, timeout=timeout, metadata=self._metadata())
        except grpc.RpcError as err:
            _note_failure(self._endpoints, ep, err)
            raise map_rpc_error(err, ep.address) from None
        except ValueError as err:
            # grpc raises ValueError on a channel closed by a concurrent close().
            self._check_open()
            raise NetworkError(f"{ep.address}: {err}") from None
        self._endpoints.mark_up(ep)
        return resp
