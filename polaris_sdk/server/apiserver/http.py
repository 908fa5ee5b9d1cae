"""The HTTP apiserver: the Polaris HTTP client API (port 8090), HTTP/1.1 by ``h11``.

Routes (``POST`` only; other methods get 405, other paths 404):
``/v1/RegisterInstance``, ``/v1/DeregisterInstance``, ``/v1/Heartbeat``,
``/v1/Discover``, ``/v1/ReportClient``. Each goes through the same
:class:`~polaris_sdk.server.auth.AuthFilter` and naming service as gRPC, so
every rule and code is the same on both transports.

The JSON is a real server's (Go ``jsonpb``; :mod:`.jsonpb`). Requests need
``Content-Type: application/json`` (parameters allowed), else 415. HTTP
status = code // 1000; any code but 200000 also comes as the
``X-Polaris-Code`` and ``X-Polaris-Message`` headers (English text);
``Request-Id`` is echoed; the token comes in ``X-Polaris-Token`` (or the
legacy ``Polaris-Token``). ``info`` is the code's text alone, translated
as a real server does by the ``lang`` query parameter or the
``Accept-Language`` header (``zh`` or ``en``, English by default; a
success's ``info`` stays English, as there). Failures below the API (no such
path 404, wrong method 405, wrong media type 415, a body over
``max_body_bytes`` 413, broken framing 400, headers too large 431) answer
that HTTP status with a ``v1.Response`` of code 400000 BadRequest (500000
for a 5xx), since the code table has nothing finer.

Why h11 on the server's event loop: the protocol work (request parsing,
framing, chunked bodies, keep-alive, ``Expect: 100-continue``) is done by a
well-kept HTTP/1.1 library that httpx already depends on, so no dependency
is added; each connection is a coroutine on the loop that carries the gRPC
server, so an idle or slow connection holds no thread, and the naming calls
stay plain synchronous calls, as on gRPC. uvicorn and hypercorn were
weighed: both want to own their loop and process, and neither gives a
deadline for a request's headers together with a cap per client address,
the two bounds a slow client is stopped by here.

Bounds (:class:`HttpOptions`), all checked per connection on the loop:

* a request's head (request line and headers) must arrive within
  ``header_timeout`` of its first byte, and a new connection must start its
  first request within that too, so neither trickled header lines nor
  silent connections hold a connection for long;
* at most ``max_connections`` connections at once, and at most
  ``max_connections_per_address`` from one client address, so one client
  cannot take them all; a connection over either is answered 503 and closed;
* a body over ``max_body_bytes`` is 413 (refused before a client waiting
  for ``100 Continue`` sends it); the whole request must have arrived
  ``request_timeout`` after its first byte;
* every read or write waits at most ``io_timeout``; an idle keep-alive
  connection is closed then.

Discover answers are written as JSON once per service revision (and filter
and language) and reused until the revision changes. With an
``ssl.SSLContext`` the port serves TLS only (handshake bounded by
``header_timeout``).

Failure behaviour: an exception inside a naming call is logged and answered
500000 ExecuteException; one in a connection's own handling is logged and
ends that connection alone. :meth:`HttpApiServer.stop` stops accepting,
closes idle connections, lets requests being answered finish for ``grace``
seconds and then cuts the rest. A stopped server can be started again on the
same port (the first start fixes it). Tokens are never logged. Everything
runs on the loop that calls :meth:`~HttpApiServer.start`; no thread is added.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
import threading
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import parse_qs, urlsplit

import h11

from polaris_sdk import wire
from polaris_sdk.server import messages
from polaris_sdk.server.apiserver.grpc import format_address
from polaris_sdk.server.apiserver.jsonpb import ParseFailure, decode_request, encode_response
from polaris_sdk.server.auth import AuthFilter
from polaris_sdk.server.naming import RequestContext, code_info, response

__all__ = [
    "ROUTES",
    "HttpApiServer",
    "HttpOptions",
    "ParseFailure",
    "decode_request",
    "encode_response",
    "http_status",
]

if TYPE_CHECKING:
    from polaris_sdk.server.apiserver.admin import AdminApi

log = logging.getLogger("polaris_sdk.server.apiserver.http")

JSON_MEDIA_TYPE: Final = "application/json"
SERVER_NAME: Final = b"polaris-sdk"
_REQUEST_ID_MAX: Final = 128
_MAX_HEAD_BYTES: Final = 64 * 1024
_READ_SIZE: Final = 64 * 1024
_REFUSAL_LOG_INTERVAL: Final = 10.0
_BACKLOG: Final = 128


@dataclass(frozen=True, slots=True)
class HttpOptions:
    """Bounds of the HTTP apiserver; see the module doc."""

    max_connections: int = 512
    """Connections served at once; more are answered 503."""
    max_connections_per_address: int = 256
    """Connections served at once for one client address; more are answered 503."""
    max_body_bytes: int = 4 * 1024 * 1024
    """Largest request body; a larger one is answered 413 without being read."""
    header_timeout: float = 5.0
    """Seconds a request's head may take from its first byte (and a new connection
    to start its first request)."""
    io_timeout: float = 10.0
    """Seconds any one read or write may wait, including keep-alive idling."""
    request_timeout: float = 30.0
    """Seconds from a request's first byte to having all of it."""

    def __post_init__(self) -> None:
        if self.max_connections < 1 or self.max_connections_per_address < 1:
            raise ValueError("max_connections and max_connections_per_address must be at least 1")
        if self.max_body_bytes < 0:
            raise ValueError("max_body_bytes must not be negative")
        if not (self.io_timeout > 0 and self.request_timeout > 0 and self.header_timeout > 0):
            raise ValueError("header_timeout, io_timeout and request_timeout must be positive")


def http_status(code: int) -> int:
    """The HTTP status of a Polaris ``code``: code // 1000 (500 if that is no status)."""
    status = code // 1000
    return status if 200 <= status <= 599 else 500


# ---------------------------------------------------------------- routes


@dataclass(frozen=True, slots=True)
class _Route:
    request: Any
    call: Callable[[AuthFilter, Any, RequestContext], Any]
    cacheable: bool = False


def _discover(api: AuthFilter, request: Any, ctx: RequestContext) -> Any:
    return api.discover(request, ctx, only_healthy=request.Filter.OnlyHealthyInstance)


ROUTES: Final[dict[str, _Route]] = {
    "/v1/RegisterInstance": _Route(wire.Instance, lambda a, r, c: a.register_instance(r, c)),
    "/v1/DeregisterInstance": _Route(wire.Instance, lambda a, r, c: a.deregister_instance(r, c)),
    "/v1/Heartbeat": _Route(wire.Instance, lambda a, r, c: a.heartbeat(r, c)),
    "/v1/Discover": _Route(wire.DiscoverRequest, _discover, cacheable=True),
    "/v1/ReportClient": _Route(wire.Client, lambda a, r, c: a.report_client(r, c)),
}


_AnswerKey = tuple[int, str, str, str, bool, str]
_INSTANCE_TYPE: Final = wire.DISCOVER_REQUEST_TYPE.values_by_name["INSTANCE"].number
_CACHED_ANSWERS: Final = 256
_CACHED_CODES: Final = frozenset({wire.Code.ExecuteSuccess, wire.Code.DataNoChange})


def _answer_key(request: Any, answer: Any, language: str) -> _AnswerKey | None:
    """What an INSTANCE Discover answer depends on: its code, the service and its revision."""
    if answer.DESCRIPTOR.full_name != "v1.DiscoverResponse":  # a failure's v1.Response
        return None
    code = int(answer.code.value)
    if code not in _CACHED_CODES or answer.type != _INSTANCE_TYPE:
        return None
    service = answer.service
    only_healthy = bool(request.Filter.OnlyHealthyInstance)
    return (
        code,
        service.namespace.value,
        service.name.value,
        service.revision.value,
        only_healthy,
        language,
    )


class _AnswerCache:
    """Encoded Discover answers by service revision (LRU), thread-safe.

    JSON encoding is the costly part of answering a Discover, and every
    client polling the same service gets the same bytes (the whole service,
    or DataNoChange) until its revision changes; a new revision is a new
    key, and old ones age out.
    """

    def __init__(self, size: int = _CACHED_ANSWERS) -> None:
        self._size = size
        self._bodies: OrderedDict[_AnswerKey, bytes] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: _AnswerKey) -> bytes | None:
        with self._lock:
            body = self._bodies.get(key)
            if body is not None:
                self._bodies.move_to_end(key)
            return body

    def put(self, key: _AnswerKey, body: bytes) -> None:
        with self._lock:
            self._bodies[key] = body
            self._bodies.move_to_end(key)
            while len(self._bodies) > self._size:
                self._bodies.popitem(last=False)


def _translated(message: Any, language: str) -> Any:
    """``message`` with its ``info`` in ``language``, as a real server's HTTP API does.

    Only an ``info`` that is exactly its code's text is translated, and never a
    success's (a real server compares it with the X-Polaris-Message header,
    which a success has not).
    """
    code = int(message.code.value)
    if language == messages.DEFAULT_LANGUAGE or code == wire.Code.ExecuteSuccess:
        return message
    if message.info.value != code_info(code):
        return message
    translated = type(message)()
    translated.CopyFrom(message)
    translated.info.value = messages.code_text(code, language)
    return translated


def _clean_header(value: str | None, limit: int = _REQUEST_ID_MAX) -> str | None:
    """``value`` if it is safe to send back as a header value (printable ASCII), else None."""
    if not value or len(value) > limit:
        return None
    if all(" " <= ch <= "~" for ch in value):
        return value
    return None


# ------------------------------------------------------------- transport


class _Refusal(Exception):
    """A request refused below the API: answered with ``status``; the connection closes."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


class _Request:
    """One request's head as the handlers need it."""

    __slots__ = ("headers", "language", "method", "path", "query", "request_id")

    def __init__(self, event: h11.Request) -> None:
        self.method = event.method.decode("ascii", "replace").upper()
        target = urlsplit(event.target.decode("ascii", "replace"))
        self.path = target.path
        self.query = target.query
        self.headers: dict[str, str] = {}
        for name, value in event.headers:
            key = name.decode("latin-1").lower()
            # The first of repeated fields wins, as Go's Header.Get does.
            self.headers.setdefault(key, value.decode("latin-1"))
        lang = parse_qs(target.query).get("lang", [""])[0]
        self.language = messages.pick_language(lang, self.headers.get("accept-language"))
        self.request_id = _clean_header(self.headers.get("request-id"))


class _Connection:
    """One client connection: its requests, one after another (keep-alive)."""

    def __init__(
        self,
        server: HttpApiServer,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        address: str,
    ) -> None:
        self.server = server
        self.options = server.options
        self.reader = reader
        self.writer = writer
        self.address = address
        self.h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=_MAX_HEAD_BYTES)
        self.busy = False  # a request has started and is not answered yet
        self.loop = asyncio.get_running_loop()

    # ---------------------------------------------------------- reading

    async def _receive(self, deadline: float) -> int:
        """Feed the next bytes to h11, waiting until ``deadline`` (loop time) at most."""
        timeout = min(deadline - self.loop.time(), self.options.io_timeout)
        if timeout <= 0:
            raise TimeoutError
        data = await asyncio.wait_for(self.reader.read(_READ_SIZE), timeout)
        self.h11.receive_data(data)
        return len(data)

    async def _next_request(self, first: bool) -> h11.Request | None:
        """The next request's head, or None when the client is done or too slow.

        Until its first byte the wait is the keep-alive idle time (for a new
        connection, no longer than ``header_timeout``); from then on the whole
        head must come within ``header_timeout``.
        """
        options = self.options
        head_time = min(options.header_timeout, options.request_timeout)
        idle = min(options.io_timeout, options.header_timeout) if first else options.io_timeout
        started = bool(self.h11.trailing_data[0])  # a pipelined request is waiting already
        deadline = self.loop.time() + (head_time if started else idle)
        while True:
            event = self.h11.next_event()
            if isinstance(event, h11.Request):
                return event
            if event is not h11.NEED_DATA:  # ConnectionClosed (or PAUSED, never here)
                return None
            try:
                received = await self._receive(deadline)
            except TimeoutError:
                if started:
                    log.info(
                        "closing an HTTP connection from %s: its request's head took over %ss",
                        self.address,
                        head_time,
                    )
                return None
            if received and not started:
                started = True
                deadline = self.loop.time() + head_time

    async def _read_body(self, request: _Request, deadline: float) -> bytes:
        limit = self.options.max_body_bytes
        length_text = request.headers.get("content-length")
        announced = int(length_text) if length_text and length_text.strip().isdigit() else 0
        if announced > limit:  # refused before a client waiting for 100 Continue sends it
            raise _Refusal(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"request body over {limit} bytes")
        parts: list[bytes] = []
        total = 0
        while True:
            event = self.h11.next_event()
            if isinstance(event, h11.Data):
                total += len(event.data)
                if total > limit:
                    raise _Refusal(
                        HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"request body over {limit} bytes"
                    )
                parts.append(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                return b"".join(parts)
            elif event is h11.NEED_DATA:
                if self.h11.they_are_waiting_for_100_continue:
                    await self._write(
                        self.h11.send(h11.InformationalResponse(status_code=100, headers=[]))
                    )
                await self._receive(deadline)
            else:
                raise _Refusal(HTTPStatus.BAD_REQUEST, "the request ended early")

    # ---------------------------------------------------------- writing

    async def _write(self, data: bytes | None) -> None:
        if data:
            self.writer.write(data)
            await asyncio.wait_for(self.writer.drain(), self.options.io_timeout)

    async def _send(
        self,
        request: _Request | None,
        status: int,
        body: bytes,
        code: int | None,
        extra: dict[str, str] | None = None,
        close: bool = False,
    ) -> None:
        headers = [
            (b"Server", SERVER_NAME),
            (b"Content-Type", JSON_MEDIA_TYPE.encode()),
            (b"Content-Length", str(len(body)).encode()),
        ]
        if code is not None and code != wire.Code.ExecuteSuccess:
            headers.append((b"X-Polaris-Code", str(code).encode()))
            headers.append((b"X-Polaris-Message", code_info(code).encode("ascii", "replace")))
        if request is not None and request.request_id is not None:
            headers.append((b"Request-Id", request.request_id.encode("ascii")))
        for name, value in (extra or {}).items():
            headers.append((name.encode("ascii"), value.encode("ascii")))
        if close or self.server.stopping:
            headers.append((b"Connection", b"close"))
        await self._write_response(request, status, headers, body)

    async def _write_response(
        self,
        request: _Request | None,
        status: int,
        headers: list[tuple[bytes, bytes]],
        body: bytes,
    ) -> None:
        try:
            reason = HTTPStatus(status).phrase.encode("ascii")
        except ValueError:
            reason = b""
        head = self.h11.send(h11.Response(status_code=status, headers=headers, reason=reason))
        is_head = request is not None and request.method == "HEAD"
        data = b"" if is_head else self.h11.send(h11.Data(data=body))
        await self._write(
            (head or b"") + (data or b"") + (self.h11.send(h11.EndOfMessage()) or b"")
        )
        log.debug(
            "%s %s %s %s %d",
            self.address,
            request.method if request is not None else "-",
            request.path if request is not None else "-",
            status,
            len(body),
        )

    async def _refuse(
        self,
        request: _Request | None,
        status: int,
        reason: str,
        extra: dict[str, str] | None = None,
    ) -> None:
        """A failure below the API: ``status`` with a BadRequest / ExecuteException body."""
        code = wire.Code.ExecuteException if status >= 500 else wire.Code.BadRequest
        log.debug("HTTP request from %s refused with %d: %s", self.address, status, reason)
        language = request.language if request is not None else messages.DEFAULT_LANGUAGE
        body = encode_response(_translated(response(code), language))
        await self._send(request, status, body, code, extra, close=True)

    # ---------------------------------------------------------- serving

    async def serve(self) -> None:
        first = True
        while not self.server.stopping:
            try:
                event = await self._next_request(first)
            except h11.RemoteProtocolError as err:
                await self._protocol_error(err)
                return
            first = False
            if event is None:
                return
            self.busy = True
            try:
                await self._handle(_Request(event))
            except h11.RemoteProtocolError as err:
                await self._protocol_error(err)
                return
            finally:
                self.busy = False
            if self.h11.our_state is not h11.DONE or self.h11.their_state is not h11.DONE:
                return  # closing (asked for, or the request was not read to its end)
            self.h11.start_next_cycle()

    async def _protocol_error(self, err: h11.RemoteProtocolError) -> None:
        if self.h11.our_state in (h11.IDLE, h11.SEND_RESPONSE):
            status = err.error_status_hint
            reason = str(err) or HTTPStatus(status).phrase
            with contextlib.suppress(h11.LocalProtocolError):
                await self._refuse(None, status, reason)

    async def _handle(self, request: _Request) -> None:
        deadline = self.loop.time() + self.options.request_timeout
        admin = self.server.admin
        if admin is not None and admin.accepts(request.method, request.path):
            await self._admin(admin, request, deadline)
            return
        route = ROUTES.get(request.path)
        if route is None:
            await self._refuse(request, HTTPStatus.NOT_FOUND, f"no API at {request.path}")
            return
        if request.method != "POST":
            if request.method == "HEAD":
                await self._send(
                    request, HTTPStatus.METHOD_NOT_ALLOWED, b"", None, {"Allow": "POST"}, True
                )
                return
            await self._refuse(
                request, HTTPStatus.METHOD_NOT_ALLOWED, "use POST", extra={"Allow": "POST"}
            )
            return
        try:
            body = await self._read_body(request, deadline)
        except _Refusal as refusal:
            await self._refuse(request, refusal.status, str(refusal))
            return
        media_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
        if media_type != JSON_MEDIA_TYPE:
            await self._refuse(
                request,
                HTTPStatus.UNSUPPORTED_MEDIA_TYPE,
                f"Content-Type must be {JSON_MEDIA_TYPE}",
            )
            return
        try:
            message = decode_request(body, route.request)
        except ParseFailure as err:
            log.debug("HTTP %s from %s is not its message: %s", request.path, self.address, err)
            await self._answer(request, response(wire.Code.ParseException))
            return
        try:
            answer = route.call(self.server.api, message, self._context(request))
        except Exception:
            log.exception("%s failed", request.path)
            answer = response(wire.Code.ExecuteException)
        key = _answer_key(message, answer, request.language) if route.cacheable else None
        await self._answer(request, answer, key)

    async def _admin(self, admin: AdminApi, request: _Request, deadline: float) -> None:
        """An admin API, console, metrics or health request (:mod:`.admin` answers it)."""
        try:
            # Read to the end of the message whatever the method (a GET has an
            # empty body), so the connection is ready for its next request.
            body = await self._read_body(request, deadline)
        except _Refusal as refusal:
            await self._refuse(request, refusal.status, str(refusal))
            return
        query = {k: v[0] for k, v in parse_qs(request.query, keep_blank_values=True).items()}
        try:
            answer = admin.handle(
                request.method, request.path, query, request.headers, body, client=self.address
            )
        except Exception:
            log.exception("%s %s failed", request.method, request.path)
            await self._answer(request, response(wire.Code.ExecuteException))
            return
        if answer is None:
            await self._refuse(request, HTTPStatus.NOT_FOUND, f"no API at {request.path}")
            return
        headers = [(b"Server", SERVER_NAME)]
        headers += [
            (n.encode("latin-1"), v.encode("latin-1", "replace")) for n, v in answer.headers
        ]
        headers.append((b"Content-Length", str(len(answer.body)).encode()))
        if self.server.stopping:
            headers.append((b"Connection", b"close"))
        await self._write_response(request, answer.status, headers, answer.body)

    def _context(self, request: _Request) -> RequestContext:
        headers = request.headers
        return RequestContext(
            token=headers.get("x-polaris-token") or headers.get("polaris-token") or "",
            request_id=headers.get("request-id", ""),
            user_agent=headers.get("user-agent", ""),
            client_address=self.address,
        )

    async def _answer(self, request: _Request, message: Any, key: _AnswerKey | None = None) -> None:
        code = int(message.code.value)
        answers = self.server.answers
        body = answers.get(key) if key is not None else None
        if body is None:
            body = encode_response(_translated(message, request.language))
            if key is not None:
                answers.put(key, body)
        await self._send(request, http_status(code), body, code)


class HttpApiServer:
    """Serves the Polaris HTTP client API for an :class:`~polaris_sdk.server.auth.AuthFilter`."""

    def __init__(
        self,
        api: AuthFilter,
        host: str,
        port: int,
        *,
        tls: ssl.SSLContext | None = None,
        options: HttpOptions | None = None,
        admin: AdminApi | None = None,
    ) -> None:
        self.api = api
        self.admin = admin
        self._host = host
        self._port = port
        self._tls = tls
        self.options = options or HttpOptions()
        self.answers = _AnswerCache()
        self.stopping = False
        self._server: asyncio.Server | None = None
        self._connections: dict[asyncio.Task[Any], _Connection | None] = {}
        self._per_address: Counter[str] = Counter()
        self._next_refusal_warning = 0.0

    @property
    def port(self) -> int:
        return self._port

    @property
    def tls(self) -> bool:
        return self._tls is not None

    @property
    def open_connections(self) -> int:
        """Connections being served now (not those turned away)."""
        return len(self._connections)

    def _listen(self) -> socket.socket:
        host = self._host.strip("[]")
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                # The given address only, as for IPv4 (no dual-stack surprises).
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind((host, self._port))
            sock.listen(_BACKLOG)
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        return sock

    async def start(self) -> int:
        """Listen and serve on the running loop; return the bound port.

        Raises OSError when the port is taken.
        """
        if self._server is not None:
            return self._port
        sock = self._listen()
        self._port = int(sock.getsockname()[1])
        self.stopping = False
        # TLS is started per connection (in its own task), so the caps apply before
        # a handshake is paid for and stop() can cut a stalled one.
        self._server = await asyncio.start_server(self._on_connection, sock=sock, limit=_READ_SIZE)
        return self._port

    async def _on_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        assert task is not None
        peer = writer.get_extra_info("peername") or ("", 0)
        host = str(peer[0]) if isinstance(peer, tuple) else str(peer)
        address = format_address(host, int(peer[1])) if isinstance(peer, tuple) else host
        if self.stopping or not self._admit(host):
            await self._turn_away(writer)
            return
        connection = _Connection(self, reader, writer, address)
        self._connections[task] = connection
        self._per_address[host] += 1
        try:
            sock = writer.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self._tls is not None:
                await writer.start_tls(self._tls, ssl_handshake_timeout=self.options.header_timeout)
            await connection.serve()
        except asyncio.CancelledError:
            if not self.stopping:
                raise
            # Cut by stop(): end normally, since asyncio's streams read the
            # result of this task and log a cancelled one as an error.
            log.debug("HTTP connection from %s cut by stop()", address)
        except (OSError, TimeoutError, ssl.SSLError) as err:
            # Resets, timeouts, cut connections: the client's business.
            log.debug("HTTP connection from %s ended: %r", address, err)
        except Exception:
            log.exception("HTTP connection from %s failed", address)
        finally:
            del self._connections[task]
            self._per_address[host] -= 1
            if self._per_address[host] <= 0:
                del self._per_address[host]
            await _close(writer)

    def _admit(self, host: str) -> bool:
        if len(self._connections) >= self.options.max_connections:
            self._warn_refusal(f"{self.options.max_connections} connections busy")
            return False
        if self._per_address[host] >= self.options.max_connections_per_address:
            self._warn_refusal(
                f"{self.options.max_connections_per_address} connections from {host} busy"
            )
            return False
        return True

    def _warn_refusal(self, why: str) -> None:
        now = asyncio.get_running_loop().time()
        # Once per interval: a flood of refusals must not become a flood of log lines.
        level = logging.WARNING if now >= self._next_refusal_warning else logging.DEBUG
        if level == logging.WARNING:
            self._next_refusal_warning = now + _REFUSAL_LOG_INTERVAL
        log.log(level, "HTTP connection refused: %s", why)

    async def _turn_away(self, writer: asyncio.StreamWriter) -> None:
        """Answer 503 (plain HTTP only; a TLS client just sees the close) and close."""
        with contextlib.suppress(OSError, TimeoutError):
            if self._tls is None:
                writer.write(
                    b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n"
                    b"Connection: close\r\n\r\n"
                )
                await asyncio.wait_for(writer.drain(), 0.5)
        await _close(writer)

    async def stop(self, grace: float = 1.0) -> None:
        """Stop accepting, close idle connections, let answers finish for ``grace`` seconds,
        then cut the rest (idempotent)."""
        server, self._server = self._server, None
        if server is None:
            return
        self.stopping = True
        server.close()
        for task, connection in list(self._connections.items()):
            if connection is None or not connection.busy:
                task.cancel()
        pending = list(self._connections)
        if pending:
            _, late = await asyncio.wait(pending, timeout=grace)
            for task in late:
                task.cancel()
            if late:
                await asyncio.wait(late)
        await server.wait_closed()


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(Exception):
        await asyncio.wait_for(writer.wait_closed(), 1.0)
