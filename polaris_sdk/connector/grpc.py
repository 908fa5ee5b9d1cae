"""The gRPC transport: ``v1.PolarisGRPC`` over the private wire classes.

Contract:

* Thread-safe; one instance serves a whole SDKContext.
* Addresses are tried in the configured order. An address that refuses
  the connection (UNAVAILABLE), or does not answer in time before it ever
  answered, is skipped for ``failbackInterval`` seconds and the next one is
  used; after that interval the earlier address is preferred again. When
  every address is marked down they are all tried anyway, oldest failure
  first. ``connectTimeout`` bounds each TCP connection attempt (gRPC's
  minimum connect timeout); no thread watches the channels.
* Every call has a deadline (``timeout`` or ``global.api.timeout``) that
  covers connecting, failover and retries; one attempt lasts at most
  ``messageTimeout``. Only retriable failures are retried
  (:mod:`polaris_sdk.connector.retry`).
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
import importlib.metadata
import logging
import queue
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Final

import grpc

from polaris_sdk import wire
from polaris_sdk.config import Configuration
from polaris_sdk.connector.retry import RetryPolicy, call_with_retry
from polaris_sdk.errors import (
    ClosedError,
    NetworkError,
    PolarisError,
    PolarisTimeoutError,
    error_for_code,
)
from polaris_sdk.model import (
    InstanceDeregisterRequest,
    InstanceHeartbeatRequest,
    InstanceRegisterRequest,
    InstanceRegisterResponse,
    ServiceInstances,
    ServiceKey,
    instance_key_to_wire,
    register_request_to_wire,
    service_instances_from_wire,
)
from polaris_sdk.validation import instance_id

__all__ = ["GrpcConnector", "map_rpc_error"]

logger = logging.getLogger("polaris_sdk.connector.grpc")


def _sdk_version() -> str:
    try:
        return importlib.metadata.version("polarismesh-sdk")
    except importlib.metadata.PackageNotFoundError:
        return "0"


USER_AGENT: Final = f"polaris-sdk-python/{_sdk_version()}"
DISCOVER_THREAD: Final = "polaris-discover"
SUCCESS: Final = 200000
DATA_NO_CHANGE: Final = 200001
EXISTED_RESOURCE: Final = 400201
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


@dataclass(eq=False)
class _Endpoint:
    address: str
    channel: grpc.Channel
    ready: bool = False
    down_until: float = 0.0
    down_since: float = 0.0
    callables: dict[str, Any] = field(default_factory=dict)

    def unary(self, name: str) -> Any:
        fn = self.callables.get(name)
        if fn is None:
            method = wire.POLARIS_GRPC_METHODS[name]
            fn = self.channel.unary_unary(
                method.path,
                request_serializer=method.request.SerializeToString,
                response_deserializer=method.response.FromString,
            )
            self.callables[name] = fn
        return fn

    def stream(self, name: str) -> Any:
        method = wire.POLARIS_GRPC_METHODS[name]
        return self.channel.stream_stream(
            method.path,
            request_serializer=method.request.SerializeToString,
            response_deserializer=method.response.FromString,
        )


class _Endpoints:
    """The configured addresses, their channels and which ones are down."""

    def __init__(self, addresses: tuple[str, ...], connect_timeout: float, failback: float):
        self._lock = threading.Lock()
        self._failback = failback
        options = _channel_options(connect_timeout)
        self._all = [
            _Endpoint(address, grpc.insecure_channel(address, options=options))
            for address in addresses
        ]

    def candidates(self) -> list[_Endpoint]:
        now = time.monotonic()
        with self._lock:
            up = [ep for ep in self._all if ep.down_until <= now]
            down = sorted(
                (ep for ep in self._all if ep.down_until > now), key=lambda e: e.down_since
            )
        return up + down

    def mark_down(self, ep: _Endpoint, reason: str) -> None:
        now = time.monotonic()
        with self._lock:
            already = ep.down_until > now
            ep.ready = False
            ep.down_since = now
            ep.down_until = now + self._failback
        if not already and len(self._all) > 1:
            logger.warning("server %s unreachable (%s); using the next address", ep.address, reason)

    def mark_up(self, ep: _Endpoint) -> None:
        if ep.ready and not ep.down_until:
            return
        with self._lock:
            ep.ready = True
            ep.down_until = 0.0

    def pick(self) -> _Endpoint:
        """The endpoint to use now: the first preferred one that is not marked down."""
        return self.candidates()[0]

    def failed(self, ep: _Endpoint, err: grpc.RpcError | None) -> None:
        """Mark ``ep`` down when ``err`` says it cannot be reached."""
        code = err.code() if isinstance(err, grpc.Call) else None
        if code is grpc.StatusCode.UNAVAILABLE:
            self.mark_down(ep, "unavailable")
        elif code is grpc.StatusCode.DEADLINE_EXCEEDED or err is None:
            # Silence from an address that never answered is a connection
            # that never came up; from one that did, maybe one slow call.
            if not ep.ready:
                self.mark_down(ep, "no answer")
            ep.ready = False

    def close(self) -> None:
        for ep in self._all:
            ep.channel.close()


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
                self._connector._endpoints.failed(ep, None)
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
        call = ep.stream("Discover")(iter(requests.get, _END), metadata=self._connector._metadata())
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
                self._connector._endpoints.failed(ep, err)
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


class GrpcConnector:
    """:class:`~polaris_sdk.connector.base.ServerConnector` over gRPC."""

    def __init__(self, config: Configuration) -> None:
        sc = config.server_connector
        self._config = config
        self._token = sc.token
        self._message_timeout = sc.message_timeout
        self._api_timeout = config.api.timeout
        self._policy = RetryPolicy(
            max_retries=config.api.max_retry_times, initial=config.api.retry_interval
        )
        self._endpoints = _Endpoints(sc.addresses, sc.connect_timeout, sc.failback_interval)
        self._discover = _DiscoverStream(self)
        self._closed = False

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def addresses(self) -> tuple[str, ...]:
        return self._config.server_connector.addresses

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._discover.close()
        self._endpoints.close()

    # ------------------------------------------------------------ naming API

    def register_instance(
        self, req: InstanceRegisterRequest, ttl: int | None, *, timeout: float | None = None
    ) -> InstanceRegisterResponse:
        msg = register_request_to_wire(req, ttl)
        resp = self._call_checked("RegisterInstance", msg, timeout, ok=(SUCCESS, EXISTED_RESOURCE))
        given = resp.instance.id.value if resp.HasField("instance") else ""
        iid = (
            given
            or req.instance_id
            or instance_id(req.namespace, req.service, req.host, req.port, req.vpc_id)
        )
        return InstanceRegisterResponse(
            instance_id=iid, existed=resp.code.value == EXISTED_RESOURCE
        )

    def deregister_instance(
        self, req: InstanceDeregisterRequest, *, timeout: float | None = None
    ) -> None:
        self._call_checked("DeregisterInstance", instance_key_to_wire(req), timeout)

    def heartbeat(self, req: InstanceHeartbeatRequest, *, timeout: float | None = None) -> None:
        self._call_checked("Heartbeat", instance_key_to_wire(req), timeout)

    def report_client(self, host: str, version: str = "", *, timeout: float | None = None) -> None:
        msg = wire.Client(
            host=wire.StringValue(value=host), version=wire.StringValue(value=version)
        )
        msg.type = wire.POOL.FindEnumTypeByName("v1.Client.ClientType").values_by_name["SDK"].number
        self._call_checked("ReportClient", msg, timeout)

    def discover_instances(
        self, key: ServiceKey, revision: str = "", timeout: float | None = None
    ) -> ServiceInstances | None:
        request = wire.DiscoverRequest(
            type=wire.DISCOVER_REQUEST_TYPE.values_by_name["INSTANCE"].number,
            service=wire.Service(
                name=wire.StringValue(value=key.service),
                namespace=wire.StringValue(value=key.namespace),
                revision=wire.StringValue(value=revision),
            ),
        )

        def attempt(remaining: float) -> Any:
            self._check_open()
            # Like a unary attempt, one exchange waits at most messageTimeout,
            # so a wedged stream is replaced while the call still has time.
            wait = min(self._message_timeout, remaining)
            resp = self._discover.exchange(request, time.monotonic() + wait)
            code = resp.code.value
            if code not in (SUCCESS, DATA_NO_CHANGE):
                raise error_for_code(code, resp.info.value)
            return resp

        resp = self._retry(attempt, timeout, f"Discover {key}")
        if resp.code.value == DATA_NO_CHANGE:
            return None
        return service_instances_from_wire(resp, key.namespace, key.service)

    # -------------------------------------------------------------- calling

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedError("the connector is closed")

    def _metadata(self) -> tuple[tuple[str, str], ...]:
        md: tuple[tuple[str, str], ...] = (("request-id", uuid.uuid4().hex),)
        if self._token:
            md += (("x-polaris-token", self._token),)
        return md

    def _retry(self, attempt: Callable[[float], Any], timeout: float | None, what: str) -> Any:
        self._check_open()
        budget = self._api_timeout if timeout is None else timeout
        return call_with_retry(attempt, timeout=budget, policy=self._policy, what=what)

    def _call_checked(
        self,
        name: str,
        request: Any,
        timeout: float | None,
        ok: tuple[int, ...] = (SUCCESS,),
    ) -> Any:
        def attempt(remaining: float) -> Any:
            resp = self._unary(name, request, remaining)
            code = resp.code.value
            if code not in ok:
                raise error_for_code(code, resp.info.value)
            return resp

        return self._retry(attempt, timeout, name)

    def _unary(self, name: str, request: Any, remaining: float) -> Any:
        self._check_open()
        ep = self._endpoints.pick()
        attempt_timeout = max(0.001, min(self._message_timeout, remaining))
        try:
            resp = ep.unary(name)(request, timeout=attempt_timeout, metadata=self._metadata())
        except grpc.RpcError as err:
            self._endpoints.failed(ep, err)
            raise map_rpc_error(err, ep.address) from None
        except ValueError as err:
            # grpc raises ValueError on a channel closed by a concurrent close().
            self._check_open()
            raise NetworkError(f"{ep.address}: {err}") from None
        self._endpoints.mark_up(ep)
        return resp
