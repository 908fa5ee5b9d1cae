"""The asyncio gRPC transport: ``v1.PolarisGRPC`` over ``grpc.aio``.

Contract (as :mod:`polaris_sdk.connector.grpc`, on one event loop):

* Everything runs on the loop of the context that owns the transport: the
  channels are made there on first use, and no thread is started. One
  instance serves the whole asyncio context.
* Addresses fail over with the same rules as the blocking transport
  (:mod:`polaris_sdk.connector.failover`); unary attempts last at most the
  timeout they are given; answers of any size are accepted.
* Discover calls share one bidirectional stream. The server answers each
  request once and in order, so a request's waiter is queued as the request
  is handed to the stream's writer task (which writes them one at a time,
  in order), and one reader task hands each answer to the oldest waiter.
  ``begin(call, timeout)`` sends without awaiting and returns the coroutine
  that waits for the answer, so calls begun together are pipelined on the
  stream (a unary's call is started by ``begin`` and awaited by that
  coroutine). When the stream breaks every waiter gets the error and the
  next call opens a new stream, after a backoff (growing while opening keeps
  failing) that a call waits out only if it ends before the call's
  deadline. A waiter whose answer does not come in time leaves (the reader
  skips it); the stream is broken only when it has answered nothing for
  ``messageTimeout`` since the oldest pending request was sent. An answer
  over a size limit fails only its own waiter's call.
* ``aclose()`` ends the stream and its reader and writer tasks and closes
  the channels.
* In a forked child the inherited channels and stream are left alone for
  good and new ones are made on first use (see :mod:`polaris_sdk._fork`).
  grpcio cannot run in a child whose parent had used grpc.aio: there every
  call raises :class:`~polaris_sdk.errors.ConfigError` saying so.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Awaitable
from typing import Any, Final

import grpc
import grpc.aio

from polaris_sdk import _fork, wire
from polaris_sdk.config import Configuration
from polaris_sdk.connector.awaiting import Later
from polaris_sdk.connector.calls import Call
from polaris_sdk.connector.failover import Endpoint
from polaris_sdk.connector.grpc import (
    GrpcSettings,
    map_rpc_error,
    note_failure,
    too_large,
    unary_error,
)
from polaris_sdk.errors import (
    ClosedError,
    ConfigError,
    NetworkError,
    PolarisError,
    PolarisTimeoutError,
)

__all__ = ["AioGrpcTransport"]

logger = logging.getLogger("polaris_sdk.connector.grpc_aio")

_STREAM_BACKOFF_MAX: Final = 5.0
_WRITER_GRACE: Final = 1.0
"""Seconds ``aclose()`` lets a writer end its write on the cancelled stream before cancelling it."""


class _AioChannel:
    """One address's ``grpc.aio`` channel, made on first use, and its cached callables."""

    def __init__(
        self, address: str, options: Any, credentials: grpc.ChannelCredentials | None
    ) -> None:
        self._address = address
        self._options = options
        self._credentials = credentials
        self._channel: grpc.aio.Channel | None = None
        self._unary: dict[str, Any] = {}

    @property
    def made(self) -> bool:
        """Whether the channel was made (grpc.aio used in this process)."""
        return self._channel is not None

    @property
    def channel(self) -> grpc.aio.Channel:
        if self._channel is None:
            if self._credentials is None:
                self._channel = grpc.aio.insecure_channel(self._address, options=self._options)
            else:
                self._channel = grpc.aio.secure_channel(
                    self._address, self._credentials, options=self._options
                )
        return self._channel

    def unary(self, name: str) -> Any:
        fn = self._unary.get(name)
        if fn is None:
            method = wire.POLARIS_GRPC_METHODS[name]
            fn = self.channel.unary_unary(
                method.path,
                request_serializer=method.request.SerializeToString,
                response_deserializer=method.response.FromString,
            )
            self._unary[name] = fn
        return fn

    def stream(self, name: str) -> Any:
        method = wire.POLARIS_GRPC_METHODS[name]
        return self.channel.stream_stream(
            method.path,
            request_serializer=method.request.SerializeToString,
            response_deserializer=method.response.FromString,
        )

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()
            self._channel = None


class _Waiter:
    __slots__ = ("future", "sent_at", "timer")

    def __init__(self, future: asyncio.Future[Any], timer: asyncio.TimerHandle | None) -> None:
        self.future = future
        self.sent_at = time.monotonic()
        self.timer = timer  # fails the future at the call's deadline


class _StreamCall:
    __slots__ = (
        "answered_at",
        "call",
        "ended",
        "endpoint",
        "loop",
        "outbox",
        "reader",
        "waiters",
        "wake",
        "writer",
    )

    def __init__(self, call: Any, endpoint: Endpoint[_AioChannel]) -> None:
        self.call = call
        self.endpoint = endpoint
        self.waiters: collections.deque[_Waiter] = collections.deque()
        self.outbox: collections.deque[Any] = collections.deque()  # requests not yet written
        self.answered_at = time.monotonic()
        self.ended = False
        self.reader: asyncio.Task[None] | None = None
        self.writer: asyncio.Task[None] | None = None
        self.wake: asyncio.Future[None] | None = None  # the idle writer waits on it
        self.loop = asyncio.get_running_loop()  # the stream's, read once


class _AioDiscoverStream:
    def __init__(self, transport: AioGrpcTransport) -> None:
        self._transport = transport
        self._endpoints = transport.endpoints
        self._current: _StreamCall | None = None
        self._calls: set[_StreamCall] = set()
        self._failures = 0
        self._retry_at = 0.0
        self._last_error: PolarisError | None = None
        self._closed = False

    async def exchange(self, request: Any, timeout: float) -> Any:
        return await self.begin(request, timeout)

    def begin(self, request: Any, timeout: float) -> Awaitable[Any]:
        """Queue ``request`` now; what is returned, awaited, is its answer.

        Raises ClosedError at once on a closed transport; everything else is
        raised by the await.
        """
        deadline = time.monotonic() + timeout
        sent = self._send(request, deadline)
        if sent is None:
            return Later(self._send_after_backoff, request, deadline)
        return sent

    def _send(self, request: Any, deadline: float) -> asyncio.Future[Any] | None:
        """Hand ``request`` to the stream's writer and return the future of its answer
        (failed at ``deadline``); None while the stream is in its backoff."""
        if self._closed:
            raise ClosedError("the connector is closed")
        call = self._current
        now = time.monotonic()
        if call is None:
            if self._retry_at > now:
                return None
            call = self._open()
        loop = call.loop
        waiter = _Waiter(loop.create_future(), None)
        waiter.timer = loop.call_later(max(0.0, deadline - now), self._expire, call, waiter)
        call.waiters.append(waiter)
        call.outbox.append(request)
        wake = call.wake
        if wake is not None and not wake.done():
            wake.set_result(None)
        return waiter.future

    async def _send_after_backoff(self, request: Any, deadline: float) -> Any:
        while True:
            wait = self._retry_at - time.monotonic()
            if time.monotonic() + wait >= deadline:
                refused = PolarisTimeoutError(
                    f"Discover stream is reconnecting, in {wait:.2f}s, after the call's "
                    f"deadline; it broke with: {self._last_error}"
                )
                refused.not_sent = True  # says nothing new about the server's reachability
                raise refused
            await asyncio.sleep(wait)
            sent = self._send(request, deadline)
            if sent is not None:
                return await sent

    def _expire(self, call: _StreamCall, waiter: _Waiter) -> None:
        """The waiter's deadline passed: it leaves (its answer, if any, will be skipped)."""
        future = waiter.future
        if future.done():
            return
        future.set_exception(
            PolarisTimeoutError(f"{call.endpoint.address}: Discover: no answer in time")
        )
        future.exception()  # retrieved: nothing to report should no one await it any more
        self._no_answer(call, waiter)

    def _open(self) -> _StreamCall:
        ep = self._endpoints.pick()
        grpc_call = ep.handle.stream("Discover")(metadata=self._transport.metadata())
        call = _StreamCall(grpc_call, ep)
        loop = asyncio.get_running_loop()
        call.reader = loop.create_task(self._read(call), name="polaris-discover-reader")
        call.writer = loop.create_task(self._write(call), name="polaris-discover-writer")
        self._current = call
        self._calls.add(call)
        logger.debug("Discover stream opened to %s", ep.address)
        return call

    async def _write(self, call: _StreamCall) -> None:
        """Write the queued requests in order; wait for more when there are none."""
        loop = asyncio.get_running_loop()
        outbox = call.outbox
        while not call.ended:
            if not outbox:
                call.wake = loop.create_future()
                await call.wake
                call.wake = None
                continue
            try:
                await call.call.write(outbox.popleft())
            except Exception as err:  # grpc.RpcError, InvalidStateError on an ended call
                # The reader sees the same failure and fails the waiters.
                logger.debug("Discover write failed: %r", err)
                outbox.clear()
                return

    async def _read(self, call: _StreamCall) -> None:
        ep = call.endpoint
        error: PolarisError | None = None
        first: PolarisError | None = None
        penalize = True
        try:
            while True:
                response = await call.call.read()
                if response is grpc.aio.EOF:
                    error = NetworkError(f"{ep.address}: Discover stream ended by the server")
                    break
                call.answered_at = time.monotonic()
                if call is self._current:
                    self._failures = 0
                self._endpoints.mark_up(ep)
                waiter = call.waiters.popleft() if call.waiters else None
                if waiter is None:
                    logger.warning("Discover answer with no request waiting; dropped")
                    continue
                if waiter.timer is not None:
                    waiter.timer.cancel()
                if not waiter.future.done():  # not left (deadline passed, or cancelled)
                    waiter.future.set_result(response)
        except asyncio.CancelledError:
            error = ClosedError("the connector is closed")
            penalize = False
        except grpc.RpcError as err:
            error = map_rpc_error(err, ep.address)
            if too_large(err):
                first, penalize = error, False
                error = NetworkError(
                    f"{ep.address}: Discover stream reset by an answer over the size limit"
                )
            elif not call.ended:
                note_failure(self._endpoints, ep, err)
        except Exception as exc:  # the reader must never end without failing its waiters
            logger.exception("Discover stream reader failed")
            error = NetworkError(f"{ep.address}: Discover stream failed: {exc}")
        self._end(call, error, first=first, penalize=penalize)

    def _no_answer(self, call: _StreamCall, waiter: _Waiter) -> None:
        now = time.monotonic()
        oldest = call.waiters[0].sent_at if call.waiters else waiter.sent_at
        silent = now - max(oldest, call.answered_at)
        if call.answered_at <= oldest and silent >= self._transport.message_timeout:
            error = PolarisTimeoutError(
                f"{call.endpoint.address}: Discover stream stalled "
                f"(no answer for {silent:.1f}s); reopening it"
            )
            if self._end(call, error):
                note_failure(self._endpoints, call.endpoint, None)

    def _end(
        self,
        call: _StreamCall,
        error: PolarisError | None,
        *,
        first: PolarisError | None = None,
        penalize: bool = True,
    ) -> bool:
        if call.ended:
            return False
        call.ended = True
        self._calls.discard(call)
        error = error or NetworkError(f"{call.endpoint.address}: Discover stream ended")
        if call is self._current:
            self._current = None
            if penalize and not self._closed:
                self._failures += 1
                self._retry_at = time.monotonic() + min(
                    0.05 * 2 ** (self._failures - 1), _STREAM_BACKOFF_MAX
                )
                self._last_error = error
                logger.warning("Discover stream broken: %s", error)
        call.call.cancel()
        # The writer is not cancelled in a write (grpc would finish that write after
        # the loop may be gone): the cancelled call fails it, and an idle writer wakes
        # up to find the stream ended.
        call.outbox.clear()
        if call.wake is not None and not call.wake.done():
            call.wake.set_result(None)
        for index, waiter in enumerate(call.waiters):
            if waiter.timer is not None:
                waiter.timer.cancel()
            future = waiter.future
            if not future.done():
                future.set_exception(first if index == 0 and first is not None else error)
                future.exception()  # retrieved: a waiter that left is not logged as forgotten
        call.waiters.clear()
        return True

    async def aclose(self) -> None:
        self._closed = True
        calls = list(self._calls)
        for call in calls:
            self._end(call, ClosedError("the connector is closed"), penalize=False)
        readers = [c.reader for c in calls if c.reader is not None]
        for reader in readers:
            reader.cancel()
        writers = [c.writer for c in calls if c.writer is not None and not c.writer.done()]
        if writers:
            _, stuck = await asyncio.wait(writers, timeout=_WRITER_GRACE)
            for writer in stuck:
                writer.cancel()
        tasks = readers + writers
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)


class AioGrpcTransport(GrpcSettings[_AioChannel]):
    """Moves naming calls over ``v1.PolarisGRPC`` with ``grpc.aio``; one event loop."""

    def __init__(self, config: Configuration) -> None:
        super().__init__(config, _AioChannel)
        self._stream = _AioDiscoverStream(self)
        self._unusable = False
        _fork.track(self)

    def _reset_after_fork(self) -> None:
        # As the blocking transport: what the parent made is left alone for good.
        if any(ep.handle.made for ep in self.endpoints):
            # grpc.aio used before the fork crashes or hangs the child's gRPC
            # (blocking API included): refuse instead.
            self._unusable = True
        _fork.keep(self.endpoints, self._stream)
        self.endpoints = self._new_endpoints()
        self._stream = _AioDiscoverStream(self)

    async def exchange(self, call: Call, timeout: float) -> Any:
        return await self.begin(call, timeout)

    def begin(self, call: Call, timeout: float) -> Awaitable[Any]:
        """Send ``call`` now (a Discover request onto the stream, a unary started);
        the coroutine returned waits for the answer. Raises at once only when the
        transport cannot be used at all (closed, or grpc.aio forked)."""
        if self._closed:
            raise ClosedError("the connector is closed")
        if self._unusable:
            raise ConfigError(
                "global.serverConnector.protocol",
                "grpc.aio cannot be used in a process forked after its parent used it "
                "(a grpcio limitation): make the AsyncSDKContext after the fork, "
                "or use protocol http",
            )
        if call.is_discover:
            return self._stream.begin(call.request, timeout)
        ep, waits = self.pick_unary()
        started = ep.handle.unary(call.method)(
            call.request, timeout=timeout, metadata=self.metadata(), wait_for_ready=waits
        )
        return Later(self._unary_answer, ep, started, waits)

    async def _unary_answer(self, ep: Endpoint[_AioChannel], started: Any, waited: bool) -> Any:
        try:
            resp = await started
        except grpc.RpcError as err:
            raise unary_error(self.endpoints, ep, err, waited) from None
        self.endpoints.mark_up(ep)
        return resp

    async def aclose(self) -> None:
        self._closed = True
        await self._stream.aclose()
        for ep in self.endpoints:
            await ep.handle.close()
