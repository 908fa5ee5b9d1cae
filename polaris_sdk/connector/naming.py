"""The naming API over a one-method transport: a blocking and an asyncio driver.

:class:`NamingConnector` (blocking) and :class:`AsyncNamingConnector`
(asyncio) implement the same calls (register, deregister, heartbeat, report
client, discover) the same way: the request is built and the answer judged
by :mod:`polaris_sdk.connector.calls`, retries follow
:class:`~polaris_sdk.connector.retry.RetryPolicy` through tenacity
(``Retrying`` / ``AsyncRetrying``), and every attempt's outcome is recorded
in the context's :class:`~polaris_sdk.connector.state.Connection`. They
differ only in how they wait.

The transport seam is one method, ``exchange(call, timeout)``: send one
:class:`~polaris_sdk.connector.calls.Call` and return the answer message, or
raise a :class:`~polaris_sdk.errors.PolarisError` for what it saw (no
address reachable, no answer in time). gRPC, grpc.aio, httpx and httpx
async implement it, and so does :class:`~polaris_sdk.connector.mock.
MockTransport` for tests.

Contract (on top of :mod:`polaris_sdk.connector.base`):

* One attempt lasts at most :meth:`Call.attempt_timeout`; the whole call,
  retries and failover included, at most ``timeout`` (default
  ``global.api.timeout``).
* Only retriable failures are retried; tenacity is set up only once a
  first attempt has failed that way.
* ``close()`` / ``aclose()`` is idempotent; afterwards every call raises
  :class:`~polaris_sdk.errors.ClosedError`.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any, Final, Protocol, TypeVar

from tenacity import AsyncRetrying, Retrying

from polaris_sdk.config import Configuration
from polaris_sdk.connector import calls
from polaris_sdk.connector.awaiting import Later
from polaris_sdk.connector.calls import USER_AGENT, Call, new_request_id
from polaris_sdk.connector.retry import RetryPolicy, is_retriable
from polaris_sdk.connector.state import Connection
from polaris_sdk.errors import (
    ClosedError,
    NetworkError,
    PolarisError,
    PolarisTimeoutError,
    ServerError,
)
from polaris_sdk.model import (
    InstanceDeregisterRequest,
    InstanceHeartbeatRequest,
    InstanceRegisterRequest,
    InstanceRegisterResponse,
    ServiceInstances,
    ServiceKey,
)

__all__ = [
    "DATA_NO_CHANGE",
    "EXISTED_RESOURCE",
    "SUCCESS",
    "USER_AGENT",
    "AsyncNamingConnector",
    "AsyncTransport",
    "NamingConnector",
    "Transport",
    "new_request_id",
]

SUCCESS: Final = calls.SUCCESS
DATA_NO_CHANGE: Final = calls.DATA_NO_CHANGE
EXISTED_RESOURCE: Final = calls.EXISTED_RESOURCE

T = TypeVar("T")


class Transport(Protocol):
    """Moves one call's request and answer, blocking; thread-safe."""

    def exchange(self, call: Call, timeout: float) -> Any: ...

    def close(self) -> None: ...


class AsyncTransport(Protocol):
    """Moves one call's request and answer on the event loop."""

    async def exchange(self, call: Call, timeout: float) -> Any: ...

    async def aclose(self) -> None: ...


class _Replay:
    """Hands tenacity the first attempt's failure as its attempt 1, then runs new attempts."""

    __slots__ = ("first",)

    def __init__(self, first: BaseException) -> None:
        self.first: BaseException | None = first

    def take(self) -> BaseException | None:
        first, self.first = self.first, None
        return first


def _raising(error: BaseException) -> Callable[[], Any]:
    def wait() -> Any:
        raise error

    return wait


class _Core:
    """What both drivers share: settings, the open check and the outcome bookkeeping."""

    def __init__(self, config: Configuration, connection: Connection | None) -> None:
        sc = config.server_connector
        self._config = config
        self._token = sc.token
        self._message_timeout = sc.message_timeout
        self._api_timeout = config.api.timeout
        self._policy = RetryPolicy(
            max_retries=config.api.max_retry_times, initial=config.api.retry_interval
        )
        self._connection = connection
        self._closed = False

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def addresses(self) -> tuple[str, ...]:
        return self._config.server_connector.addresses

    @property
    def connection(self) -> Connection | None:
        return self._connection

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedError("the connector is closed")

    def _deadline(self, timeout: float | None) -> tuple[float, float]:
        self._check_open()
        budget = self._api_timeout if timeout is None else timeout
        return budget, time.monotonic() + budget

    def _remaining(self, call: Call, budget: float, deadline: float) -> float:
        self._check_open()
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise PolarisTimeoutError(f"{call.label}: no answer within {budget:.3g}s")
        return call.attempt_timeout(remaining, self._message_timeout)

    def _record(self, error: BaseException | None) -> None:
        connection = self._connection
        if connection is None:
            return
        if error is None:
            connection.reached()
        elif getattr(error, "not_sent", False):
            return  # refused before sending (a stream still in its backoff): no news
        elif isinstance(error, NetworkError):
            connection.unreachable(error)
        elif isinstance(error, ServerError) and error.retriable:
            return  # a transport failure mapped to a 5xx code (a server going away): no news
        elif isinstance(error, PolarisError) and not isinstance(error, ClosedError):
            connection.reached()  # a server answered, refusing the call


class NamingConnector(_Core):
    """The naming API over a blocking :class:`Transport`; thread-safe."""

    def __init__(
        self,
        config: Configuration,
        transport: Transport,
        *,
        connection: Connection | None = None,
    ) -> None:
        super().__init__(config, connection)
        self._transport = transport

    @property
    def transport(self) -> Transport:
        return self._transport

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._transport.close()

    # ------------------------------------------------------------ naming API

    def register_instance(
        self, req: InstanceRegisterRequest, ttl: int | None, *, timeout: float | None = None
    ) -> InstanceRegisterResponse:
        return calls.register_result(req, self.call(calls.register(req, ttl), timeout))

    def deregister_instance(
        self, req: InstanceDeregisterRequest, *, timeout: float | None = None
    ) -> None:
        self.call(calls.deregister(req), timeout)

    def heartbeat(self, req: InstanceHeartbeatRequest, *, timeout: float | None = None) -> None:
        self.call(calls.heartbeat(req), timeout)

    def report_client(self, host: str, version: str = "", *, timeout: float | None = None) -> None:
        self.call(calls.report_client(host, version), timeout)

    def discover_instances(
        self, key: ServiceKey, revision: str = "", timeout: float | None = None
    ) -> ServiceInstances | None:
        return calls.discover_result(key, self.call(calls.discover(key, revision), timeout))

    # -------------------------------------------------------------- calling

    def call(self, call: Call, timeout: float | None = None) -> Any:
        """Send ``call`` until judged a success, a final failure, or the deadline passes."""
        budget, deadline = self._deadline(timeout)
        try:
            return self._attempt(call, budget, deadline)
        except PolarisError as exc:
            return self._retry(call, budget, deadline, exc)

    def begin(self, call: Call, timeout: float | None = None) -> Callable[[], Any]:
        """Send ``call``'s first attempt now; the function returned waits for its answer.

        Waiting judges the answer and retries like :meth:`call` (the deadline
        counts from now). Calls begun one after another before any is waited
        for share their round trips: pipelined on the Discover stream,
        concurrent unaries. Never raises: a failure to send is raised by the
        wait. A transport without ``begin`` makes the whole exchange there.
        """
        if self._closed:
            return _raising(ClosedError("the connector is closed"))
        budget, deadline = self._deadline(timeout)
        start = getattr(self._transport, "begin", None)
        if start is None:
            return lambda: self._finish(call, budget, deadline, None)
        try:
            wait = start(call, self._remaining(call, budget, deadline))
        except PolarisError as exc:
            failed = exc
            return lambda: self._fail(call, budget, deadline, failed)
        return lambda: self._finish(call, budget, deadline, wait)

    def begin_heartbeat(
        self, req: InstanceHeartbeatRequest, *, timeout: float | None = None
    ) -> Callable[[], None]:
        """:meth:`heartbeat`, begun (see :meth:`begin`)."""
        wait = self.begin(calls.heartbeat(req), timeout)

        def beat() -> None:
            wait()

        return beat

    def begin_register(
        self, req: InstanceRegisterRequest, ttl: int | None, *, timeout: float | None = None
    ) -> Callable[[], InstanceRegisterResponse]:
        """:meth:`register_instance`, begun (see :meth:`begin`)."""
        wait = self.begin(calls.register(req, ttl), timeout)
        return lambda: calls.register_result(req, wait())

    def begin_discover(
        self, key: ServiceKey, revision: str = "", timeout: float | None = None
    ) -> Callable[[], ServiceInstances | None]:
        """:meth:`discover_instances`, begun (see :meth:`begin`)."""
        wait = self.begin(calls.discover(key, revision), timeout)
        return lambda: calls.discover_result(key, wait())

    # ------------------------------------------------------------- internal

    def _attempt(self, call: Call, budget: float, deadline: float) -> Any:
        wait = self._remaining(call, budget, deadline)
        try:
            answer = self._transport.exchange(call, wait)
        except BaseException as exc:
            self._record(exc)
            raise
        self._record(None)
        return call.judge(answer)

    def _finish(
        self, call: Call, budget: float, deadline: float, wait: Callable[[], Any] | None
    ) -> Any:
        """The rest of a begun call: its first attempt's answer (or the attempt), then retries."""
        try:
            if wait is None:
                return self._attempt(call, budget, deadline)
            try:
                answer = wait()
            except BaseException as exc:
                self._record(exc)
                raise
            self._record(None)
            return call.judge(answer)
        except PolarisError as exc:
            return self._retry(call, budget, deadline, exc)

    def _fail(self, call: Call, budget: float, deadline: float, error: PolarisError) -> Any:
        self._record(error)
        return self._retry(call, budget, deadline, error)

    def _retry(self, call: Call, budget: float, deadline: float, first: PolarisError) -> Any:
        """Retry ``call`` after its first attempt failed with ``first`` (raised if final)."""
        if not is_retriable(first) or self._policy.max_retries == 0:
            raise first
        replay = _Replay(first)

        def again() -> Any:
            failed = replay.take()
            if failed is not None:
                raise failed
            return self._attempt(call, budget, deadline)

        retrying = Retrying(**self._policy.tenacity_args(budget, call.label))
        return retrying(again)


class AsyncNamingConnector(_Core):
    """The naming API over an :class:`AsyncTransport`, on one event loop."""

    def __init__(
        self,
        config: Configuration,
        transport: AsyncTransport,
        *,
        connection: Connection | None = None,
    ) -> None:
        super().__init__(config, connection)
        self._transport = transport

    @property
    def transport(self) -> AsyncTransport:
        return self._transport

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        await self._transport.aclose()

    # ------------------------------------------------------------ naming API

    async def register_instance(
        self, req: InstanceRegisterRequest, ttl: int | None, *, timeout: float | None = None
    ) -> InstanceRegisterResponse:
        return calls.register_result(req, await self.call(calls.register(req, ttl), timeout))

    async def deregister_instance(
        self, req: InstanceDeregisterRequest, *, timeout: float | None = None
    ) -> None:
        await self.call(calls.deregister(req), timeout)

    async def heartbeat(
        self, req: InstanceHeartbeatRequest, *, timeout: float | None = None
    ) -> None:
        await self.call(calls.heartbeat(req), timeout)

    async def report_client(
        self, host: str, version: str = "", *, timeout: float | None = None
    ) -> None:
        await self.call(calls.report_client(host, version), timeout)

    async def discover_instances(
        self, key: ServiceKey, revision: str = "", timeout: float | None = None
    ) -> ServiceInstances | None:
        answer = await self.call(calls.discover(key, revision), timeout)
        return calls.discover_result(key, answer)

    # -------------------------------------------------------------- calling

    async def call(self, call: Call, timeout: float | None = None) -> Any:
        """As :meth:`NamingConnector.call`, awaiting instead of blocking."""
        budget, deadline = self._deadline(timeout)
        try:
            return await self._attempt(call, budget, deadline)
        except PolarisError as exc:
            return await self._retry(call, budget, deadline, exc)

    def begin(self, call: Call, timeout: float | None = None) -> Later[Any]:
        """Send ``call``'s first attempt now; the coroutine returned finishes it.

        Awaiting it judges the answer and retries exactly like :meth:`call`
        (the deadline counts from now). Calls begun one after another before
        any is awaited share their round trips: pipelined on the Discover
        stream, concurrent unaries. Never raises: a failure to send is
        raised by the await. With a transport that has no ``begin`` the
        whole exchange happens in the await.
        """
        if self._closed:
            return Later(self._raise, ClosedError("the connector is closed"))
        budget, deadline = self._deadline(timeout)
        start: Callable[[Call, float], Awaitable[Any]] | None = getattr(
            self._transport, "begin", None
        )
        if start is None:
            return Later(self._finish, call, budget, deadline, None)
        try:
            pending = start(call, self._remaining(call, budget, deadline))
        except PolarisError as exc:
            return Later(self._fail, call, budget, deadline, exc)
        return Later(self._finish, call, budget, deadline, pending)

    def begin_heartbeat(
        self, req: InstanceHeartbeatRequest, *, timeout: float | None = None
    ) -> Later[Any]:
        """:meth:`heartbeat`, begun (see :meth:`begin`); the answer is not needed."""
        return self.begin(calls.heartbeat(req), timeout)

    def begin_register(
        self, req: InstanceRegisterRequest, ttl: int | None, *, timeout: float | None = None
    ) -> Later[InstanceRegisterResponse]:
        """:meth:`register_instance`, begun (see :meth:`begin`)."""
        finish = self.begin(calls.register(req, ttl), timeout)
        return Later(self._then, finish, calls.register_result, req)

    def begin_discover(
        self, key: ServiceKey, revision: str = "", timeout: float | None = None
    ) -> Later[ServiceInstances | None]:
        """:meth:`discover_instances`, begun (see :meth:`begin`)."""
        finish = self.begin(calls.discover(key, revision), timeout)
        return Later(self._then, finish, calls.discover_result, key)

    # ------------------------------------------------------------- internal

    @staticmethod
    async def _then(finish: Awaitable[Any], result: Callable[[Any, Any], T], arg: Any) -> T:
        return result(arg, await finish)

    @staticmethod
    async def _raise(error: BaseException) -> Any:
        raise error

    async def _attempt(self, call: Call, budget: float, deadline: float) -> Any:
        wait = self._remaining(call, budget, deadline)
        try:
            answer = await self._transport.exchange(call, wait)
        except BaseException as exc:
            self._record(exc)
            raise
        self._record(None)
        return call.judge(answer)

    async def _finish(
        self, call: Call, budget: float, deadline: float, pending: Awaitable[Any] | None
    ) -> Any:
        """The rest of a begun call: its first attempt's answer (or the attempt), then retries."""
        try:
            if pending is None:
                return await self._attempt(call, budget, deadline)
            try:
                answer = await pending
            except BaseException as exc:
                self._record(exc)
                raise
            self._record(None)
            return call.judge(answer)
        except PolarisError as exc:
            return await self._retry(call, budget, deadline, exc)

    async def _fail(self, call: Call, budget: float, deadline: float, error: PolarisError) -> Any:
        self._record(error)
        return await self._retry(call, budget, deadline, error)

    async def _retry(self, call: Call, budget: float, deadline: float, first: PolarisError) -> Any:
        """Retry ``call`` after its first attempt failed with ``first`` (raised if final)."""
        if not is_retriable(first) or self._policy.max_retries == 0:
            raise first
        replay = _Replay(first)

        async def again() -> Any:
            failed = replay.take()
            if failed is not None:
                raise failed
            return await self._attempt(call, budget, deadline)

        retrying = AsyncRetrying(**self._policy.tenacity_args(budget, call.label))
        run: Callable[[], Awaitable[Any]] = again
        return await retrying(run)
