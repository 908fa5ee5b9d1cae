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
* A unary call sent while every address is marked down waits, within its
  attempt's deadline, for its channel to connect (gRPC's wait-for-ready)
  instead of failing at once on the channel's reconnect backoff: a call
  made just after a server restart is answered once the channel
  reconnects, not refused for the rest of the backoff.
* Every call has a deadline (``timeout`` or ``global.api.timeout``) that
  covers connecting, failover and retries; one unary attempt lasts at most
  ``messageTimeout``, one Discover exchange at most until the deadline.
  Only retriable failures are retried (:mod:`polaris_sdk.connector.retry`).
* Answers of any size are accepted (gRPC's default limit, 4 MB, is a service
  of about 18,000 instances). An answer over a limit anyway (the server's)
  is a :class:`~polaris_sdk.errors.BadRequestError`: never retried, and it
  neither marks the address down nor delays the next stream.
* With TLS configured (:mod:`polaris_sdk.connector.tls`) every channel is a
  secure channel verifying the server certificate.
* Every request carries ``request-id``, the SDK's user agent and, when a token
  is configured, ``x-polaris-token``. The token is never logged.
* Discover calls share one bidirectional ``Discover`` stream. The server
  answers each request once and in order, so each answer goes to the oldest
  waiting caller. A thread named ``polaris-discover`` reads the stream.
  When the stream breaks, the waiting callers get the error and the next
  call opens a new stream, after a backoff that grows while opening keeps
  failing; a call that finds the backoff running waits it out if it ends
  before the call's deadline, else fails at once with an error of the kind
  that broke the stream (a timeout stays a
  :class:`~polaris_sdk.errors.PolarisTimeoutError`). Failing over to
  another address that is not marked down waits for nothing.
* A caller whose answer does not come in time leaves; its answer, if it
  comes, is dropped. Only when the stream answered nothing for
  ``messageTimeout`` since that request was sent is it broken (a server that
  stopped answering one request will not answer the next), so one slow
  answer does not fail the other callers.
* The stream follows the preferred address: once an earlier address is no
  longer marked down, the next call opens a stream there and the old one is
  half-closed, still delivering the answers its callers wait for.
* ``close()`` ends the streams and their threads and closes the channels;
  later calls raise :class:`~polaris_sdk.errors.ClosedError`.
* Channels are made on first use. In a process forked from the owner's
  (:mod:`polaris_sdk._fork`) the inherited channels and stream are left
  alone for good (grpcio cannot use or close them there) and new ones are
  made on first use; ``close()`` there closes only those.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, Final, Generic, TypeVar

import grpc

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
    ServerError,
    error_for_code,
)

__all__ = [
    "GrpcConnector",
    "GrpcSettings",
    "GrpcTransport",
    "channel_options",
    "map_rpc_error",
    "note_failure",
    "unary_error",
]

logger = logging.getLogger("polaris_sdk.connector.grpc")

C = TypeVar("C")

DISCOVER_THREAD: Final = "polaris-discover"
_STREAM_BACKOFF_MAX: Final = 5.0


MAX_RECEIVE_MESSAGE_LENGTH = -1
"""Largest answer a channel accepts, in bytes (-1: no limit). gRPC's default
of 4 MB is a Discover answer of about 18,000 instances; a registry's answers
are trusted, and a service must not become undiscoverable by growing."""


def channel_options(connect_timeout: float, max_receive: int = -1) -> tuple[tuple[str, Any], ...]:
    return (
        ("grpc.primary_user_agent", USER_AGENT),
        ("grpc.max_receive_message_length", max_receive),
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


def _status(err: grpc.RpcError) -> grpc.StatusCode | None:
    # A blocking call's error is a grpc.Call; grpc.aio's AioRpcError is not,
    # but has the same code() and details().
    code = getattr(err, "code", None)
    return code() if callable(code) else None


def _details(err: grpc.RpcError) -> str:
    details = getattr(err, "details", None)
    return (details() if callable(details) else None) or ""


def too_large(err: grpc.RpcError) -> bool:
    """Whether ``err`` is a message over a size limit (this side's or the server's)."""
    if _status(err) is not grpc.StatusCode.RESOURCE_EXHAUSTED:
        return False
    return "larger than max" in _details(err)


_HTTP1_SERVER: Final = "Trying to connect an http1.x server"


def map_rpc_error(err: grpc.RpcError, address: str) -> PolarisError:
    """The SDK error for a failed gRPC call to ``address``."""
    code = _status(err) or grpc.StatusCode.UNKNOWN
    details = _details(err) or str(code)
    if _HTTP1_SERVER in details:
        return ProtocolMismatchError(
            f"{address} answers HTTP/1.x, not gRPC: it looks like the Polaris HTTP API "
            "(port 8090). Point global.serverConnector.addresses at the gRPC port (8091), "
            "or set global.serverConnector.protocol: http (POLARIS_PROTOCOL=http)"
        )
    if code is grpc.StatusCode.DEADLINE_EXCEEDED:
        return PolarisTimeoutError(f"{address}: deadline exceeded")
    if too_large(err):
        # The same request gets the same answer: sending it again cannot help.
        return error_for_code(400000, f"{address}: message over the gRPC size limit: {details}")
    server_code = _STATUS_CODES.get(code)
    if server_code is not None:
        return error_for_code(server_code, f"{address}: {code.name}: {details}")
    return NetworkError(f"{address}: {code.name}: {details}")


def _like(cause: PolarisError | None, message: str) -> PolarisError:
    """An error of ``cause``'s kind (timeout, network, server code) saying ``message``."""
    if isinstance(cause, ServerError):
        return error_for_code(cause.code, message)
    if isinstance(cause, PolarisTimeoutError):
        return PolarisTimeoutError(message)
    return NetworkError(message)


class _Channel:
    """One address's gRPC channel and its cached unary callables."""

    def __init__(
        self, address: str, options: Any, credentials: grpc.ChannelCredentials | None
    ) -> None:
        self._address = address
        self._options = options
        self._credentials = credentials
        self._channel: grpc.Channel | None = None
        self._lock = threading.Lock()
        self._callables: dict[str, Any] = {}

    @property
    def channel(self) -> grpc.Channel:
        """The channel, made on first use."""
        if self._channel is None:
            with self._lock:
                if self._channel is None:
                    if self._credentials is None:
                        self._channel = grpc.insecure_channel(self._address, options=self._options)
                    else:
                        self._channel = grpc.secure_channel(
                            self._address, self._credentials, options=self._options
                        )
        return self._channel

    def close(self) -> None:
        if self._channel is not None:
            self._channel.close()

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


def note_failure(endpoints: Endpoints[Any], ep: Endpoint[Any], err: grpc.RpcError | None) -> None:
    """Mark ``ep`` down when ``err`` says it cannot be reached (None: no answer in time)."""
    if err is None:
        endpoints.no_answer(ep)
        return
    code = _status(err)
    if code is grpc.StatusCode.UNAVAILABLE:
        endpoints.mark_down(ep, f"UNAVAILABLE: {_details(err) or 'no details'}")
    elif code is grpc.StatusCode.DEADLINE_EXCEEDED:
        endpoints.no_answer(ep)


def unary_error(
    endpoints: Endpoints[Any], ep: Endpoint[Any], err: grpc.RpcError, waited: bool
) -> PolarisError:
    """Note a failed unary call on ``ep`` and say what failed.

    ``waited``: the call waited for its channel to connect (``ep`` was down),
    so a missed deadline also names why ``ep`` was down.
    """
    note_failure(endpoints, ep, err)
    if waited and _status(err) is grpc.StatusCode.DEADLINE_EXCEEDED:
        return PolarisTimeoutError(
            f"{ep.address}: not connected or no answer within the deadline; "
            f"down since {ep.down_reason}"
        )
    return map_rpc_error(err, ep.address)


class _Waiter:
    """One request's wait for its answer; :meth:`answered` is called once, by whoever
    takes the waiter off its call's queue (the reader, or the end of the call)."""

    __slots__ = ("_done", "error", "response", "sent_at")

    def __init__(self) -> None:
        # A held lock released once: lighter than an Event, and waits the same.
        self._done = threading.Lock()
        self._done.acquire()
        self.response: Any = None
        self.error: PolarisError | None = None
        self.sent_at = 0.0

    def answered(self) -> None:
        self._done.release()

    def wait(self, timeout: float) -> bool:
        return self._done.acquire(timeout=timeout)


_END: Final = object()


class _Call:
    """One open Discover call: its address, its requests and the callers waiting, oldest first."""

    __slots__ = ("answered_at", "call", "ended", "endpoint", "requests", "waiters")

    def __init__(self, call: Any, endpoint: _Endpoint, requests: queue.SimpleQueue[Any]) -> None:
        self.call = call
        self.endpoint = endpoint
        self.requests = requests
        self.waiters: collections.deque[_Waiter] = collections.deque()
        self.answered_at = time.monotonic()
        """When the call last showed it is alive: opened, or an answer read."""
        self.ended = False
        """Given up by this side (broken, retired unused, closed): its errors are ours."""


class _DiscoverStream:
    """The shared bidi Discover stream; see the module docstring."""

    def __init__(self, transport: GrpcTransport) -> None:
        self._transport = transport
        self._endpoints = transport.endpoints
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._current: _Call | None = None
        self._calls: set[_Call] = set()
        """Calls with a reader: the current one and retired ones still answering."""
        self._threads: list[threading.Thread] = []
        self._failures = 0
        self._retry_at = 0.0
        self._failed_on: _Endpoint | None = None
        self._last_error: PolarisError | None = None

    def exchange(self, request: Any, deadline: float) -> Any:
        return self.begin(request, deadline)()

    def begin(self, request: Any, deadline: float) -> Callable[[], Any]:
        """Queue ``request`` now; the function returned waits for its answer."""
        waiter = _Waiter()
        call = self._send(request, waiter, deadline)
        return lambda: self._wait(call, waiter, deadline)

    def _wait(self, call: _Call, waiter: _Waiter, deadline: float) -> Any:
        if not waiter.wait(max(0.0, deadline - time.monotonic())):
            self._no_answer(call, waiter)
            raise PolarisTimeoutError(f"{call.endpoint.address}: Discover: no answer in time")
        if waiter.error is not None:
            raise waiter.error
        return waiter.response

    def _send(self, request: Any, waiter: _Waiter, deadline: float) -> _Call:
        """Queue ``request`` on the call to use now, opening one if needed.

        While the stream is in its reconnect backoff the caller waits it out
        when it ends before ``deadline``; otherwise it fails at once with an
        error of the class that broke the stream.
        """
        while True:
            with self._lock:
                if self._closed.is_set():
                    raise ClosedError("the connector is closed")
                ep = self._endpoints.pick()
                call = self._current
                if (
                    call is not None
                    and call.endpoint is not ep
                    and self._endpoints.prefers(ep, call.endpoint)
                ):
                    self._retire(call, ep)
                    call = None
                wait = 0.0
                if call is None:
                    wait = self._backoff_left(ep)
                    if wait <= 0:
                        call = self._open(ep)
                if call is not None:
                    waiter.sent_at = time.monotonic()
                    call.waiters.append(waiter)
                    call.requests.put(request)
                    return call
                cause = self._last_error
            if time.monotonic() + wait >= deadline:
                refused = _like(
                    cause,
                    f"Discover stream to {ep.address} is reconnecting, in {wait:.2f}s, "
                    f"after the call's deadline; it broke with: {cause}",
                )
                refused.not_sent = True  # says nothing new about the server's reachability
                raise refused
            if self._closed.wait(wait):
                raise ClosedError("the connector is closed")

    def _backoff_left(self, ep: _Endpoint) -> float:
        """Seconds before a call may open on ``ep``. Called with the lock held."""
        if ep is not self._failed_on and not self._endpoints.is_down(ep):
            # Failing over to a healthy address waits for nothing.
            return 0.0
        return self._retry_at - time.monotonic()

    def _open(self, ep: _Endpoint) -> _Call:
        # Called with the lock held. Opening does not block: a failure to
        # connect arrives on the reader thread as the call's error.
        requests: queue.SimpleQueue[Any] = queue.SimpleQueue()
        grpc_call = ep.handle.stream("Discover")(
            iter(requests.get, _END), metadata=self._transport.metadata()
        )
        call = _Call(grpc_call, ep, requests)
        self._current = call
        self._calls.add(call)
        self._threads = [t for t in self._threads if t.is_alive()]
        thread = threading.Thread(
            target=self._read, args=(call,), name=DISCOVER_THREAD, daemon=True
        )
        self._threads.append(thread)
        thread.start()
        logger.debug("Discover stream opened to %s", ep.address)
        return call

    def _retire(self, call: _Call, preferred: _Endpoint) -> None:
        """Send no more on ``call``; its waiters still get their answers. Lock held."""
        self._current = None
        # Half-closing ends the call once the server has answered what it was sent.
        call.requests.put(_END)
        logger.info(
            "Discover stream moves from %s back to %s", call.endpoint.address, preferred.address
        )

    def _read(self, call: _Call) -> None:
        ep = call.endpoint
        first: PolarisError | None = None
        error: PolarisError | None = None
        penalize = True
        try:
            for response in call.call:
                with self._lock:
                    waiter = call.waiters.popleft() if call.waiters else None
                    call.answered_at = time.monotonic()
                    if call is self._current:
                        self._failures = 0
                self._endpoints.mark_up(ep)
                if waiter is None:
                    logger.warning("Discover answer with no request waiting; dropped")
                    continue
                waiter.response = response
                waiter.answered()
            with self._lock:
                # A retired call ends this way once it has answered everything.
                clean = call is not self._current and not call.waiters
            if not clean:
                error = NetworkError(f"{ep.address}: Discover stream ended by the server")
        except grpc.RpcError as err:
            error = map_rpc_error(err, ep.address)
            if too_large(err):
                # Only the oldest waiter's answer was too big: the others may
                # try again on a new call, at once.
                first = error
                error = NetworkError(
                    f"{ep.address}: Discover stream reset by an answer over the size limit"
                )
                penalize = False
            else:
                with self._lock:
                    ours = call.ended
                if not ours:
                    note_failure(self._endpoints, ep, err)
        except Exception as exc:  # the reader must never die without failing its waiters
            logger.exception("Discover stream reader failed")
            error = NetworkError(f"{ep.address}: Discover stream failed: {exc}")
        if error is None:
            self._forget(call)
        else:
            self._end(call, error, first=first, penalize=penalize)

    def _no_answer(self, call: _Call, waiter: _Waiter) -> None:
        """``waiter`` ran out of time: break ``call`` if it stalled, else just leave.

        The server answers in order, so an abandoned waiter stays queued and its
        answer, when it comes, is dropped. A call whose oldest pending request
        has had no answer (to anything) for ``messageTimeout`` is taken as
        stuck: a server that stopped answering one request will not answer the
        next. Judging by the oldest request also bounds the abandoned waiters
        of callers with short timeouts.
        """
        now = time.monotonic()
        with self._lock:
            oldest = call.waiters[0].sent_at if call.waiters else waiter.sent_at
            silent = now - max(oldest, call.answered_at)
            stalled = call.answered_at <= oldest and silent >= self._transport.message_timeout
        if not stalled:
            return
        error = PolarisTimeoutError(
            f"{call.endpoint.address}: Discover stream stalled "
            f"(no answer for {silent:.1f}s); reopening it"
        )
        if self._end(call, error):
            note_failure(self._endpoints, call.endpoint, None)

    def _forget(self, call: _Call) -> None:
        """A retired call ended cleanly with every waiter answered."""
        with self._lock:
            self._calls.discard(call)
            call.ended = True

    def _end(
        self,
        call: _Call,
        error: PolarisError,
        *,
        first: PolarisError | None = None,
        penalize: bool = True,
    ) -> bool:
        """End ``call`` (unless already ended), failing its waiters with ``error``.

        ``first`` goes to the oldest waiter instead. Ending the current call
        after a failure (``penalize``) starts the reconnect backoff.
        """
        with self._lock:
            if call.ended:
                return False
            call.ended = True
            self._calls.discard(call)
            waiters = list(call.waiters)
            call.waiters.clear()
            call.requests.put(_END)
            if call is self._current:
                self._current = None
                if penalize and not self._closed.is_set():
                    self._failures += 1
                    backoff = min(0.05 * 2 ** (self._failures - 1), _STREAM_BACKOFF_MAX)
                    self._retry_at = time.monotonic() + backoff
                    self._failed_on = call.endpoint
                    self._last_error = error
                    logger.warning("Discover stream broken: %s", error)
        call.call.cancel()
        for index, waiter in enumerate(waiters):
            waiter.error = first if index == 0 and first is not None else error
            waiter.answered()
        return True

    def close(self) -> None:
        with self._lock:
            self._closed.set()
            calls = list(self._calls)
            threads = list(self._threads)
        for call in calls:
            self._end(call, ClosedError("the connector is closed"), penalize=False)
        for thread in threads:
            if thread is not threading.current_thread():
                thread.join(5.0)


class GrpcSettings(Generic[C]):
    """What both gRPC transports share: one channel handle per address, metadata, timeouts."""

    def __init__(
        self,
        config: Configuration,
        channel: Callable[[str, Any, grpc.ChannelCredentials | None], C],
    ) -> None:
        sc = config.server_connector
        tls = load_tls(sc)
        credentials = tls.grpc_credentials() if tls is not None else None
        options = channel_options(sc.connect_timeout, MAX_RECEIVE_MESSAGE_LENGTH)
        self._token = sc.token
        self._closed = False
        self.message_timeout = sc.message_timeout

        def endpoints() -> Endpoints[C]:
            return Endpoints(
                (Endpoint(a, channel(a, options, credentials)) for a in sc.addresses),
                sc.failback_interval,
            )

        self._new_endpoints = endpoints
        self.endpoints: Endpoints[C] = endpoints()

    def metadata(self) -> tuple[tuple[str, str], ...]:
        md: tuple[tuple[str, str], ...] = (("request-id", new_request_id()),)
        if self._token:
            md += (("x-polaris-token", self._token),)
        return md

    def pick_unary(self) -> tuple[Endpoint[C], bool]:
        """The endpoint for a unary call, and whether the call waits for its
        channel to connect (only when every address is marked down)."""
        ep = self.endpoints.pick()
        return ep, self.endpoints.is_down(ep)


class GrpcTransport(GrpcSettings[_Channel]):
    """Moves naming calls over ``v1.PolarisGRPC`` (the blocking gRPC API); thread-safe."""

    def __init__(self, config: Configuration) -> None:
        super().__init__(config, _Channel)
        self._discover_stream = _DiscoverStream(self)
        _fork.track(self)

    def _reset_after_fork(self) -> None:
        _fork.keep(self.endpoints, self._discover_stream)
        self.endpoints = self._new_endpoints()
        self._discover_stream = _DiscoverStream(self)

    def close(self) -> None:
        self._closed = True
        self._discover_stream.close()
        for ep in self.endpoints:
            ep.handle.close()

    def exchange(self, call: Call, timeout: float) -> Any:
        if call.is_discover:
            return self._discover_stream.exchange(call.request, time.monotonic() + timeout)
        ep, waits = self.pick_unary()
        with self._unary_errors(ep, waits):
            resp = ep.handle.unary(call.method)(
                call.request, timeout=timeout, metadata=self.metadata(), wait_for_ready=waits
            )
        self.endpoints.mark_up(ep)
        return resp

    def begin(self, call: Call, timeout: float) -> Callable[[], Any]:
        """Send ``call`` now (Discover on the stream, a unary as a future); the
        function returned waits for the answer, raising what :meth:`exchange` would."""
        if call.is_discover:
            return self._discover_stream.begin(call.request, time.monotonic() + timeout)
        ep, waits = self.pick_unary()
        with self._unary_errors(ep, waits):
            future = ep.handle.unary(call.method).future(
                call.request, timeout=timeout, metadata=self.metadata(), wait_for_ready=waits
            )

        def wait() -> Any:
            with self._unary_errors(ep, waits):
                resp = future.result()
            self.endpoints.mark_up(ep)
            return resp

        return wait

    @contextlib.contextmanager
    def _unary_errors(self, ep: _Endpoint, waited: bool) -> Iterator[None]:
        """Map what grpc raises for a unary call on ``ep`` to PolarisError."""
        try:
            yield
        except grpc.RpcError as err:
            raise unary_error(self.endpoints, ep, err, waited) from None
        except ValueError as err:
            # grpc raises ValueError on a channel closed by a concurrent close().
            if self._closed:
                raise ClosedError("the connector is closed") from None
            raise NetworkError(f"{ep.address}: {err}") from None


class GrpcConnector(NamingConnector):
    """:class:`~polaris_sdk.connector.base.ServerConnector` over gRPC."""

    def __init__(self, config: Configuration, *, connection: Connection | None = None) -> None:
        super().__init__(config, GrpcTransport(config), connection=connection)
