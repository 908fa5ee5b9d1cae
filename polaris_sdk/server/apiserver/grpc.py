"""The gRPC apiserver: ``v1.PolarisGRPC`` and ``v1.PolarisHeartbeatGRPC`` on a
``grpc.aio`` server, both on the one client port, as on a real server.

Handlers are generic, built from :data:`polaris_sdk.wire.POLARIS_GRPC_METHODS`,
so the method paths (``/v1.PolarisGRPC/RegisterInstance`` ...) and bytes are
the official ones. Every handler answers with gRPC status OK and puts the
result in ``Response.code`` / ``DiscoverResponse.code``: an unparseable
message gets 400001 ParseException, an exception inside a handler is logged
and answered with 500000 ExecuteException, and neither ends a Discover stream.

``v1.PolarisHeartbeatGRPC``: BatchHeartbeat (a stream) takes each message's
beats as heartbeats and answers an empty ``HeartbeatsResponse`` per message,
dropping the codes (400202 too) as a real server does; BatchGetHeartbeat
answers each id's last beat, BatchDelHeartbeat forgets them. Their messages
carry no code to put a parse failure in, so an unparseable one fails the call
(INTERNAL), as on a real server.

With ``credentials`` (``grpc.ssl_server_credentials``) the port serves TLS only.

Concurrency: everything runs on the one event loop that calls :meth:`start`.
A Discover stream is a coroutine awaiting its next request, so any number of
open streams pins no thread and never delays unary calls; the naming calls
the handlers make are short and synchronous.

:meth:`GrpcApiServer.drop_streams` (on the loop) aborts every open Discover
stream with status UNAVAILABLE, as a server restart would look to a client.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any, Final

import grpc
import grpc.aio

from polaris_sdk import wire
from polaris_sdk.server.auth import AuthFilter
from polaris_sdk.server.naming import RequestContext, discover_response, response

__all__ = ["GrpcApiServer", "format_address", "request_context"]

log = logging.getLogger("polaris_sdk.server.apiserver.grpc")

SERVER_OPTIONS: Final = (
    # Two servers must never share a port silently (tests bind fixed ports on restart).
    ("grpc.so_reuseport", 0),
    # Accept client keepalive pings instead of answering them with GOAWAY.
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
    ("grpc.http2.max_ping_strikes", 0),
)


class _Unparseable:
    """Stands for a request whose bytes are not the expected message."""


UNPARSEABLE: Final = _Unparseable()


def format_address(host: str, port: int) -> str:
    """``host:port`` with an IPv6 host in brackets."""
    return f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"


def _lenient(message: Any) -> Callable[[bytes], Any]:
    def parse(data: bytes) -> Any:
        try:
            return message.FromString(data)
        except Exception:
            # Answered with ParseException by the handler, as a real server does,
            # instead of a failed gRPC status.
            return UNPARSEABLE

    return parse


def request_context(context: Any) -> RequestContext:
    """The :class:`RequestContext` of a call, from its metadata and peer."""
    headers: dict[str, str] = {}
    for key, value in context.invocation_metadata() or ():
        if isinstance(value, str):
            headers[key.lower()] = value
    return RequestContext(
        token=headers.get("x-polaris-token", ""),
        request_id=headers.get("request-id", ""),
        user_agent=headers.get("user-agent", ""),
        client_address=context.peer() or "",
        async_register="async-regis" in headers,
    )


UnaryCall = Callable[[Any, RequestContext], Any]


class _Stream:
    """An open Discover stream: asked to end by drop_streams(), its task, and whether it
    is waiting for the next request (only then may drop_streams() cancel it)."""

    __slots__ = ("dropped", "reading", "task")

    def __init__(self, task: asyncio.Task[Any] | None) -> None:
        self.dropped = False
        self.reading = False
        self.task = task


class GrpcApiServer:
    """Serves ``v1.PolarisGRPC`` for an :class:`~polaris_sdk.server.auth.AuthFilter`."""

    def __init__(
        self,
        api: AuthFilter,
        host: str,
        port: int,
        credentials: grpc.ServerCredentials | None = None,
    ) -> None:
        self._api = api
        self._host = host
        self._port = port
        self._credentials = credentials
        self._server: grpc.aio.Server | None = None
        self._streams: set[_Stream] = set()

    @property
    def port(self) -> int:
        return self._port

    @property
    def tls(self) -> bool:
        return self._credentials is not None

    @property
    def open_streams(self) -> int:
        return len(self._streams)

    def _handlers(self) -> dict[str, grpc.RpcMethodHandler[Any, Any]]:
        methods = wire.POLARIS_GRPC_METHODS
        unary: dict[str, UnaryCall] = {
            "ReportClient": self._api.report_client,
            "RegisterInstance": self._api.register_instance,
            "DeregisterInstance": self._api.deregister_instance,
            "Heartbeat": self._api.heartbeat,
        }
        handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {
            name: grpc.unary_unary_rpc_method_handler(
                self._unary(name, call),
                request_deserializer=_lenient(methods[name].request),
                response_serializer=methods[name].response.SerializeToString,
            )
            for name, call in unary.items()
        }
        handlers["Discover"] = grpc.stream_stream_rpc_method_handler(
            self._discover,
            request_deserializer=_lenient(methods["Discover"].request),
            response_serializer=methods["Discover"].response.SerializeToString,
        )
        return handlers

    def _unary(self, name: str, call: UnaryCall) -> Callable[[Any, Any], Any]:
        async def handle(request: Any, context: Any) -> Any:
            if request is UNPARSEABLE:
                return response(wire.Code.ParseException)
            try:
                return call(request, request_context(context))
            except Exception:
                log.exception("%s failed", name)
                return response(wire.Code.ExecuteException)

        return handle

    def _discover_one(self, request: Any, ctx: RequestContext) -> Any:
        if request is UNPARSEABLE:
            return discover_response(wire.Code.ParseException, 0)
        try:
            return self._api.discover(request, ctx)
        except Exception:
            log.exception("Discover failed")
            return discover_response(wire.Code.ExecuteException, request.type)

    def _heartbeat_handlers(self) -> dict[str, grpc.RpcMethodHandler[Any, Any]]:
        methods = wire.POLARIS_HEARTBEAT_GRPC_METHODS

        def unary(call: UnaryCall) -> Callable[[Any, Any], Any]:
            async def handle(request: Any, context: Any) -> Any:
                return call(request, request_context(context))

            return handle

        handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {
            name: grpc.unary_unary_rpc_method_handler(
                unary(call),
                request_deserializer=methods[name].request.FromString,
                response_serializer=methods[name].response.SerializeToString,
            )
            for name, call in (
                ("BatchGetHeartbeat", self._api.get_heartbeats),
                ("BatchDelHeartbeat", self._api.delete_heartbeats),
            )
        }
        handlers["BatchHeartbeat"] = grpc.stream_stream_rpc_method_handler(
            self._batch_heartbeat,
            request_deserializer=methods["BatchHeartbeat"].request.FromString,
            response_serializer=methods["BatchHeartbeat"].response.SerializeToString,
        )
        return handlers

    async def _batch_heartbeat(self, requests: AsyncIterator[Any], context: Any) -> Any:
        ctx = request_context(context)
        async for request in requests:
            try:
                answer = self._api.batch_heartbeat(request, ctx)
            except Exception:
                log.exception("BatchHeartbeat failed")
                answer = wire.HeartbeatsResponse()
            yield answer

    async def _discover(self, requests: AsyncIterator[Any], context: Any) -> None:
        task = asyncio.current_task()
        stream = _Stream(task)
        self._streams.add(stream)
        ctx = request_context(context)
        try:
            while not stream.dropped:
                # Read in this task (no task per message): drop_streams() cancels
                # it only while it waits here, never during a write.
                stream.reading = True
                try:
                    request = await context.read()
                except asyncio.CancelledError:
                    # Only our own cancel means "dropped"; a cancel of the handler
                    # (the client went away) must propagate.
                    if not stream.dropped or task is None or task.uncancel() > 0:
                        raise
                    break
                finally:
                    stream.reading = False
                if request is grpc.aio.EOF:
                    return
                await context.write(self._discover_one(request, ctx))
            await context.abort(grpc.StatusCode.UNAVAILABLE, "stream dropped by the server")
        finally:
            self._streams.discard(stream)

    def drop_streams(self) -> int:
        """Abort every open Discover stream (UNAVAILABLE); return how many. Call on the loop.

        A stream waiting for its next request ends at once; one busy answering
        ends right after its answer is written.
        """
        streams = list(self._streams)
        for stream in streams:
            if not stream.dropped and stream.reading and stream.task is not None:
                stream.task.cancel()
            stream.dropped = True
        if streams:
            log.info("dropping %d Discover stream(s)", len(streams))
        return len(streams)

    async def start(self) -> int:
        """Listen and serve; return the bound port. Raises OSError when the port is taken."""
        server = grpc.aio.server(options=SERVER_OPTIONS)
        server.add_generic_rpc_handlers(
            (
                grpc.method_handlers_generic_handler(wire.POLARIS_GRPC_SERVICE, self._handlers()),
                grpc.method_handlers_generic_handler(
                    wire.POLARIS_HEARTBEAT_GRPC_SERVICE, self._heartbeat_handlers()
                ),
            )
        )
        address = format_address(self._host, self._port)
        try:
            if self._credentials is None:
                port = server.add_insecure_port(address)
            else:
                port = server.add_secure_port(address, self._credentials)
        except RuntimeError as err:
            raise OSError(f"cannot listen on {address}: {err}") from err
        if port == 0:
            raise OSError(f"cannot listen on {address}")
        await server.start()
        self._server = server
        self._port = port
        return port

    async def stop(self, grace: float) -> None:
        """Drop the open streams, then stop, letting unary calls finish for ``grace`` seconds."""
        server, self._server = self._server, None
        if server is None:
            return
        self.drop_streams()
        await server.stop(grace)
