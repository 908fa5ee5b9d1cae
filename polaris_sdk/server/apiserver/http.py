"""The HTTP apiserver: the Polaris HTTP client API (port 8090) on the standard library.

Routes (``POST`` only; other methods get 405, other paths 404):
``/v1/RegisterInstance``, ``/v1/DeregisterInstance``, ``/v1/Heartbeat``,
``/v1/Discover``, ``/v1/ReportClient``. Each goes through the same
:class:`~polaris_sdk.server.auth.AuthFilter` and naming service as gRPC, so
every rule and code is the same on both transports.
With an ``admin`` (:class:`~.admin.AdminApi`), the paths it accepts (admin
API, console, ``/metrics``, ``/`` and ``/healthz``) are handed to it first.

The JSON is a real server's (Go ``jsonpb`` with ``AllowUnknownFields`` in,
``EmitDefaults`` out):

* requests need ``Content-Type: application/json`` (parameters allowed),
  else 415; field names may be the proto names or the JSON (lowerCamel)
  names; unknown fields are ignored; ``null`` leaves a field unset, and a
  ``null`` map value or list element stands for the type's default; enums
  are accepted by name or number. A body that is not such JSON (bad UTF-8,
  not an object, a wrong type, NaN) is 400001 ParseException.
* answers are the ``v1.Response`` / ``v1.DiscoverResponse`` in JSON names
  (explicit ``json_name`` kept, e.g. ``vpc_id``), defaults emitted, unset
  message fields as ``null``, wrappers as bare values, enums by name.
* HTTP status = code // 1000; any code but 200000 also comes as the
  ``X-Polaris-Code`` and ``X-Polaris-Message`` headers; ``Request-Id`` is
  echoed; the token comes in ``X-Polaris-Token``.
* Failures below the API (no such path 404, wrong method 405, wrong media
  type 415, a body over ``max_body_bytes`` 413, broken framing 400) answer
  that HTTP status with a ``v1.Response`` of code 400000 BadRequest (500000
  for a 5xx), since the code table has nothing finer.

Concurrency and bounds. One accept thread, ``polaris-http``, hands each
connection to a pool of at most ``max_connections`` worker threads
(``polaris-http-worker_N``); a connection beyond that is answered 503 and
closed at once, so a flood can neither queue without bound nor starve the
connections being served. Every socket operation times out after
``io_timeout`` (an idle keep-alive connection is closed then), and a
connection that has not finished a request ``request_timeout`` after it
started waiting for it is cut by the accept thread, so a client trickling
bytes cannot hold a worker. Connections are keep-alive (HTTP/1.1).
With an ``ssl.SSLContext`` the TLS handshake runs on the worker, under the
same timeouts. Discover answers are written as JSON once per service
revision (and filter) and reused until the revision changes.

Why the standard library's ``http.server``: five POST routes with small
JSON bodies need a request parser, not a framework; with the pool, the
deadlines and the body limit above it is bounded, it adds no dependency,
and the naming calls stay plain synchronous calls, as on gRPC.

Failure behaviour: an exception inside a naming call is logged and answered
500000 ExecuteException; one in the accept loop is logged and the loop
restarts after a backoff; neither ends the server. :meth:`HttpApiServer.stop`
stops accepting, ends idle connections, lets requests being answered
finish, and joins every thread. A stopped server can be started again on
the same port (the first start fixes it). Tokens are never logged.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import selectors
import socket
import socketserver
import ssl
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import parse_qs, urlsplit

from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor

from polaris_sdk import wire
from polaris_sdk.server.apiserver.grpc import format_address
from polaris_sdk.server.auth import AuthFilter
from polaris_sdk.server.naming import RequestContext, code_info, response

if TYPE_CHECKING:
    from polaris_sdk.server.apiserver.admin import AdminApi

__all__ = [
    "ROUTES",
    "HttpApiServer",
    "HttpOptions",
    "decode_request",
    "encode_response",
    "http_status",
]

log = logging.getLogger("polaris_sdk.server.apiserver.http")

JSON_MEDIA_TYPE: Final = "application/json"
_REQUEST_ID_MAX: Final = 128
_PARSE_DETAIL_MAX: Final = 200
_ACCEPT_BACKOFF: Final = (0.05, 2.0)
_POLL_INTERVAL: Final = 0.2
_JOIN_TIMEOUT: Final = 30.0
_REFUSAL_LOG_INTERVAL: Final = 10.0


@dataclass(frozen=True, slots=True)
class HttpOptions:
    """Bounds of the HTTP apiserver; see the module doc."""

    max_connections: int = 64
    """Connections served at once (one worker thread each); more are answered 503."""
    max_body_bytes: int = 4 * 1024 * 1024
    """Largest request body; a larger one is answered 413 without being read."""
    io_timeout: float = 10.0
    """Seconds any one socket read or write may wait, including keep-alive idling."""
    request_timeout: float = 30.0
    """Seconds from waiting for a request to having answered it, whatever the client does."""

    def __post_init__(self) -> None:
        if self.max_connections < 1:
            raise ValueError("max_connections must be at least 1")
        if self.max_body_bytes < 0:
            raise ValueError("max_body_bytes must not be negative")
        if not (self.io_timeout > 0 and self.request_timeout > 0):
            raise ValueError("io_timeout and request_timeout must be positive")


# ------------------------------------------------------------------ JSON


class ParseFailure(ValueError):
    """A request body that is not the expected message as JSON."""


_WELL_KNOWN_PREFIX: Final = "google.protobuf."
# google.protobuf.Value is the one type for which JSON null is a value.
_NULL_VALUE_TYPES: Final = frozenset({"google.protobuf.Value"})
_fields_cache: dict[str, dict[str, FieldDescriptor]] = {}
_nullable_cache: dict[str, tuple[str, ...]] = {}


def _fields(descriptor: Descriptor) -> dict[str, FieldDescriptor]:
    """A message's fields by proto name and by JSON name."""
    fields = _fields_cache.get(descriptor.full_name)
    if fields is None:
        fields = {}
        for field in descriptor.fields:
            fields[field.name] = field
            fields[field.json_name] = field
        _fields_cache[descriptor.full_name] = fields
    return fields


def _is_map(field: FieldDescriptor) -> bool:
    return field.message_type is not None and field.message_type.GetOptions().map_entry


def _default(field: FieldDescriptor) -> Any:
    """The JSON of the default value of ``field``'s type (for a null map value or element)."""
    if field.message_type is not None:
        return {}
    if field.type == FieldDescriptor.TYPE_ENUM:
        return 0
    if field.type == FieldDescriptor.TYPE_BOOL:
        return False
    if field.type in (FieldDescriptor.TYPE_STRING, FieldDescriptor.TYPE_BYTES):
        return ""
    return 0


def _scrub_value(value: Any, field: FieldDescriptor) -> Any:
    """One value of ``field`` (not the repeated container) with nulls resolved."""
    if value is None:
        return _default(field)
    message = field.message_type
    if message is not None and not message.full_name.startswith(_WELL_KNOWN_PREFIX):
        # ParseDict would read a string as an object with no known keys.
        return _scrub(_expect(value, dict), message)
    return value


def _scrub(value: Any, descriptor: Descriptor) -> Any:
    """The JSON object of a ``descriptor`` message the way Go's jsonpb reads it.

    Unknown keys go; a null field is unset; a null map value or list element
    is the default of its type; a message, map or list given as another JSON
    type is a :class:`ParseFailure`. Scalars are left for ``ParseDict`` to
    judge (it raises ParseError for a wrong type).
    """
    if not isinstance(value, dict):
        return value
    fields = _fields(descriptor)
    clean: dict[str, Any] = {}
    for key, item in value.items():
        field = fields.get(key)
        if field is None:
            continue
        message = field.message_type
        if item is None:
            if message is not None and message.full_name in _NULL_VALUE_TYPES:
                clean[key] = item
            continue
        if message is not None and _is_map(field):
            value_field = message.fields_by_name["value"]
            clean[key] = {k: _scrub_value(v, value_field) for k, v in _expect(item, dict).items()}
        elif field.is_repeated:
            clean[key] = [_scrub_value(v, field) for v in _expect(item, list)]
        else:
            clean[key] = _scrub_value(item, field)
    return clean


def _expect(value: Any, kind: type[Any]) -> Any:
    if not isinstance(value, kind):
        raise ParseFailure(
            f"expected a JSON {'object' if kind is dict else 'array'}: {value!r:.40}"
        )
    return value


def _reject_constant(name: str) -> Any:
    raise ParseFailure(f"{name} is not a JSON number")


def decode_request(body: bytes, message_class: Any) -> Any:
    """``body`` (JSON) as a ``message_class`` message; raises :class:`ParseFailure`."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ParseFailure(f"not UTF-8: {err}") from None
    if not text.strip():
        raise ParseFailure("empty body")
    try:
        data = json.loads(text, parse_constant=_reject_constant)
    except ParseFailure:
        raise
    except (ValueError, RecursionError) as err:
        raise ParseFailure(f"invalid JSON: {err}") from None
    message = message_class()
    if data is None:
        # jsonpb reads a top-level null as an empty message.
        return message
    if not isinstance(data, dict):
        raise ParseFailure(f"expected a JSON object, not {type(data).__name__}")
    try:
        json_format.ParseDict(
            _scrub(data, message.DESCRIPTOR),
            message,
            ignore_unknown_fields=True,
            descriptor_pool=wire.POOL,
        )
    except Exception as err:
        # ParseError for a wrong type; anything else means the same to a
        # client: its body is not this message.
        raise ParseFailure(str(err)) from None
    return message


def _nullable(descriptor: Descriptor) -> tuple[str, ...]:
    """JSON names of the singular message fields outside a oneof (null when unset)."""
    names = _nullable_cache.get(descriptor.full_name)
    if names is None:
        names = tuple(
            f.json_name
            for f in descriptor.fields
            if f.message_type is not None and not f.is_repeated and f.containing_oneof is None
        )
        _nullable_cache[descriptor.full_name] = names
    return names


def _add_nulls(data: dict[str, Any], descriptor: Descriptor) -> None:
    """Write ``null`` for unset singular messages, as jsonpb's EmitDefaults does."""
    for name in _nullable(descriptor):
        data.setdefault(name, None)
    for field in descriptor.fields:
        message = field.message_type
        if message is None or message.full_name.startswith(_WELL_KNOWN_PREFIX):
            continue
        item = data.get(field.json_name)
        if item is None:
            continue
        if _is_map(field):
            value_type = message.fields_by_name["value"].message_type
            if value_type is not None and not value_type.full_name.startswith(_WELL_KNOWN_PREFIX):
                for entry in item.values():
                    _add_nulls(entry, value_type)
        elif field.is_repeated:
            for entry in item:
                _add_nulls(entry, message)
        else:
            _add_nulls(item, message)


def encode_response(message: Any) -> bytes:
    """``message`` as a real server writes it (see the module doc), UTF-8 JSON."""
    data = json_format.MessageToDict(
        message, always_print_fields_with_no_presence=True, descriptor_pool=wire.POOL
    )
    _add_nulls(data, message.DESCRIPTOR)
    return json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


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


_AnswerKey = tuple[int, str, str, str, bool]
_INSTANCE_TYPE: Final = wire.DISCOVER_REQUEST_TYPE.values_by_name["INSTANCE"].number
_CACHED_ANSWERS: Final = 256


_CACHED_CODES: Final = frozenset({wire.Code.ExecuteSuccess, wire.Code.DataNoChange})


def _answer_key(request: Any, answer: Any) -> _AnswerKey | None:
    """What an INSTANCE Discover answer depends on: its code, the service and its revision."""
    if answer.DESCRIPTOR.full_name != "v1.DiscoverResponse":  # a failure's v1.Response
        return None
    code = int(answer.code.value)
    if code not in _CACHED_CODES or answer.type != _INSTANCE_TYPE:
        return None
    service = answer.service
    only_healthy = bool(request.Filter.OnlyHealthyInstance)
    return (code, service.namespace.value, service.name.value, service.revision.value, only_healthy)


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


# ------------------------------------------------------------- transport


class _BodyError(Exception):
    """The request's body cannot be read; answered with ``status`` and the connection closed."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


class _Connection:
    """One accepted connection: its socket and the time by which its request must be done."""

    __slots__ = ("deadline", "sock")

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        self.sock = sock
        self.deadline = deadline

    def cut(self, how: int = socket.SHUT_RDWR) -> None:
        """Make blocked reads (and, with SHUT_RDWR, writes) of the worker return at once."""
        # socket.socket's own shutdown: SSLSocket.shutdown would also drop
        # the TLS state an answer being written still needs.
        with contextlib.suppress(OSError):
            socket.socket.shutdown(self.sock, how)


def _clean_header(value: str | None, limit: int = _REQUEST_ID_MAX) -> str | None:
    """``value`` if it is safe to send back as a header value (printable ASCII), else None."""
    if not value or len(value) > limit:
        return None
    if all(" " <= ch <= "~" for ch in value):
        return value
    return None


class _Handler(BaseHTTPRequestHandler):
    """One connection's requests, one after another (keep-alive)."""

    protocol_version = "HTTP/1.1"
    server_version = "polaris-sdk"
    sys_version = ""
    disable_nagle_algorithm = True
    server: _Server

    def __init__(self, conn: _Connection, address: Any, server: _Server) -> None:
        self.conn = conn
        super().__init__(conn.sock, address, server)

    def handle_one_request(self) -> None:
        self.conn.deadline = time.monotonic() + self.server.options.request_timeout
        super().handle_one_request()

    # -------------------------------------------------------- methods

    def do_POST(self) -> None:
        if self._admin():
            return
        path = urlsplit(self.path).path
        route = ROUTES.get(path)
        if route is None:
            self._no_route()
            return
        try:
            body = self._read_body()
        except _BodyError as err:
            self.close_connection = True
            self._refuse(err.status, str(err))
            return
        media_type = self.headers.get("Content-Type", "").split(";", 1)[0].strip().lower()
        if media_type != JSON_MEDIA_TYPE:
            self._refuse(
                HTTPStatus.UNSUPPORTED_MEDIA_TYPE, f"Content-Type must be {JSON_MEDIA_TYPE}"
            )
            return
        try:
            request = decode_request(body, route.request)
        except ParseFailure as err:
            detail = str(err)[:_PARSE_DETAIL_MAX]
            self._answer(response(wire.Code.ParseException, f"parse exception: {detail}"))
            return
        try:
            answer = route.call(self.server.api, request, self._context())
        except Exception:
            log.exception("%s failed", path)
            answer = response(wire.Code.ExecuteException)
        self._answer(answer, _answer_key(request, answer) if route.cacheable else None)

    def _no_route(self) -> None:
        # The body (if any) is not read: the connection cannot be reused.
        self.close_connection = True
        self._refuse(HTTPStatus.NOT_FOUND, f"no API at {urlsplit(self.path).path}")

    def _not_allowed(self) -> None:
        if self._admin():
            return
        if urlsplit(self.path).path not in ROUTES:
            self._no_route()
            return
        self.close_connection = True
        self._refuse(HTTPStatus.METHOD_NOT_ALLOWED, "use POST", extra={"Allow": "POST"})

    do_GET = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _not_allowed

    def do_HEAD(self) -> None:
        self.close_connection = True
        self._send(HTTPStatus.METHOD_NOT_ALLOWED, b"", {"Allow": "POST"}, None)

    def _admin(self) -> bool:
        """Answer an admin API, console, metrics or health request; False for any other."""
        admin = self.server.admin
        parts = urlsplit(self.path)
        if admin is None or not admin.accepts(self.command, parts.path):
            return False
        try:
            body = self._read_body() if self.command in ("POST", "PUT") else b""
        except _BodyError as err:
            self.close_connection = True
            self._refuse(err.status, str(err))
            return True
        query = {k: v[0] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
        host, port = self.client_address[:2]
        answer = admin.handle(
            self.command,
            parts.path,
            query,
            dict(self.headers.items()),
            body,
            client=format_address(str(host), int(port)),
        )
        if answer is None:
            return False
        head = [f"HTTP/1.1 {answer.status} {HTTPStatus(answer.status).phrase}"]
        head += [f"{name}: {value}" for name, value in answer.headers]
        head.append(f"Content-Length: {len(answer.body)}")
        if self.close_connection:
            head.append("Connection: close")
        self.wfile.write(
            ("\r\n".join(head) + "\r\n\r\n").encode("latin-1", "replace") + answer.body
        )
        self.log_request(answer.status, len(answer.body))
        return True

    # ------------------------------------------------------------ body

    def handle_expect_100(self) -> bool:
        # Refuse an announced oversized body before the client sends it.
        try:
            self._content_length()
        except _BodyError as err:
            self.close_connection = True
            self._refuse(err.status, str(err))
            return False
        return super().handle_expect_100()

    def _content_length(self) -> int | None:
        raw = self.headers.get("Content-Length")
        if raw is None:
            return None
        if not raw.strip().isdigit():
            raise _BodyError(HTTPStatus.BAD_REQUEST, "invalid Content-Length")
        length = int(raw)
        if length > self.server.options.max_body_bytes:
            raise _BodyError(
                HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                f"request body over {self.server.options.max_body_bytes} bytes",
            )
        return length

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return self._read_chunked()
        length = self._content_length()
        if not length:
            return b""
        body = self.rfile.read(length)
        if len(body) != length:
            raise _BodyError(HTTPStatus.BAD_REQUEST, "body shorter than its Content-Length")
        return body

    def _read_chunked(self) -> bytes:
        limit = self.server.options.max_body_bytes
        parts: list[bytes] = []
        total = 0
        while True:
            line = self.rfile.readline(1024)
            size_text = line.split(b";", 1)[0].strip()
            try:
                size = int(size_text, 16)
            except ValueError:
                raise _BodyError(HTTPStatus.BAD_REQUEST, "invalid chunk size") from None
            if size < 0:
                raise _BodyError(HTTPStatus.BAD_REQUEST, "invalid chunk size")
            total += size
            if total > limit:
                raise _BodyError(
                    HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"request body over {limit} bytes"
                )
            if size == 0:
                break
            chunk = self.rfile.read(size)
            if len(chunk) != size or self.rfile.readline(3) not in (b"\r\n", b"\n"):
                raise _BodyError(HTTPStatus.BAD_REQUEST, "broken chunk")
            parts.append(chunk)
        # Trailer fields, up to the empty line; bounded like headers.
        for _ in range(100):
            if self.rfile.readline(65537).strip() == b"":
                return b"".join(parts)
        raise _BodyError(HTTPStatus.BAD_REQUEST, "too many trailer fields")

    # ---------------------------------------------------------- answers

    def _context(self) -> RequestContext:
        host, port = self.client_address[:2]
        return RequestContext(
            token=self.headers.get("X-Polaris-Token", "") or "",
            request_id=self.headers.get("Request-Id", "") or "",
            user_agent=self.headers.get("User-Agent", "") or "",
            client_address=format_address(str(host), int(port)),
        )

    def _answer(self, message: Any, key: _AnswerKey | None = None) -> None:
        code = int(message.code.value)
        body = self.server.answers.get(key) if key is not None else None
        if body is None:
            body = encode_response(message)
            if key is not None:
                self.server.answers.put(key, body)
        self._send(http_status(code), body, None, code)

    def _refuse(self, status: int, reason: str, extra: dict[str, str] | None = None) -> None:
        """A failure below the API: ``status`` with a BadRequest / ExecuteException body."""
        code = wire.Code.ExecuteException if status >= 500 else wire.Code.BadRequest
        body = encode_response(response(code, f"{code_info(code)}: {reason}"))
        self._send(status, body, extra, code)

    def _send(
        self, status: int, body: bytes, extra: dict[str, str] | None, code: int | None
    ) -> None:
        try:
            phrase = HTTPStatus(status).phrase
        except ValueError:
            phrase = ""
        headers = [
            f"HTTP/1.1 {status} {phrase}",
            f"Server: {self.server_version}",
            f"Content-Type: {JSON_MEDIA_TYPE}",
            f"Content-Length: {len(body)}",
        ]
        if code is not None and code != wire.Code.ExecuteSuccess:
            headers.append(f"X-Polaris-Code: {code}")
            headers.append(f"X-Polaris-Message: {code_info(code)}")
        request_id = _clean_header(self.headers.get("Request-Id") if self.headers else None)
        if request_id is not None:
            headers.append(f"Request-Id: {request_id}")
        for name, value in (extra or {}).items():
            headers.append(f"{name}: {value}")
        if self.close_connection:
            headers.append("Connection: close")
        head = ("\r\n".join(headers) + "\r\n\r\n").encode("latin-1", "replace")
        self.wfile.write(head + body)
        self.log_request(status, len(body))

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """Framing errors found by the base class (bad request line, huge headers)."""
        self.close_connection = True
        if not hasattr(self, "headers"):
            # Failed before the headers were read: echo nothing from them.
            self.headers = None  # type: ignore[assignment]
        self._refuse(code, message or HTTPStatus(code).phrase)

    # ---------------------------------------------------------- logging

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        # Method and path only: a query string is the client's and may hold anything.
        path = urlsplit(self.path).path if getattr(self, "path", None) else "-"
        log.debug("%s %s %s %s %s", self.client_address[0], self.command, path, code, size)

    def log_error(self, format: str, *args: Any) -> None:
        log.debug("%s: " + format, self.client_address[0], *args)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s: " + format, self.client_address[0], *args)


class _Server(socketserver.TCPServer):
    """The listening socket, the bounded pool and the connections; driven by the accept loop."""

    allow_reuse_address = True
    request_queue_size = 128

    def __init__(
        self,
        host: str,
        port: int,
        api: AuthFilter,
        options: HttpOptions,
        tls: ssl.SSLContext | None,
        admin: AdminApi | None = None,
    ) -> None:
        self.admin = admin
        self.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.api = api
        self.options = options
        self.tls = tls
        self.stopping = False
        self.answers = _AnswerCache()
        self._next_refusal_warning = 0.0
        self._slots = threading.BoundedSemaphore(options.max_connections)
        self._connections: set[_Connection] = set()
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(
            max_workers=options.max_connections, thread_name_prefix="polaris-http-worker"
        )
        try:
            super().__init__((host.strip("[]"), port), _Handler)
        except BaseException:
            self._pool.shutdown(wait=False)
            raise

    def server_bind(self) -> None:
        if self.address_family == socket.AF_INET6:
            # The given address only, as for IPv4 (no dual-stack surprises).
            self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        super().server_bind()

    # --------------------------------------------------- accept thread

    def process_request(self, request: Any, client_address: Any) -> None:
        sock: socket.socket = request
        if self.stopping or not self._slots.acquire(blocking=False):
            self._turn_away(sock)
            return
        conn = _Connection(sock, time.monotonic() + self.options.request_timeout)
        with self._lock:
            self._connections.add(conn)
        try:
            self._pool.submit(self._serve, conn, client_address)
        except RuntimeError:  # the pool is shut down: we are stopping
            self._finish(conn)

    def _turn_away(self, sock: socket.socket) -> None:
        """Answer 503 (plain HTTP only; a TLS client just sees the close) and close."""
        now = time.monotonic()
        # Once per interval: a flood of refusals must not become a flood of log lines.
        level = logging.WARNING if now >= self._next_refusal_warning else logging.DEBUG
        if level == logging.WARNING:
            self._next_refusal_warning = now + _REFUSAL_LOG_INTERVAL
        log.log(level, "HTTP connection refused: %d connections busy", self.options.max_connections)
        try:
            if self.tls is None:
                sock.settimeout(0.5)
                sock.sendall(
                    b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n"
                    b"Connection: close\r\n\r\n"
                )
        except OSError:
            pass
        finally:
            sock.close()

    def service_actions(self) -> None:
        """Cut the connections whose request is overdue (runs between accepts)."""
        now = time.monotonic()
        with self._lock:
            overdue = [c for c in self._connections if c.deadline < now]
        for conn in overdue:
            log.info(
                "cutting an HTTP connection whose request took over %ss",
                self.options.request_timeout,
            )
            conn.deadline = math.inf
            conn.cut()

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.exception("HTTP accept of a connection from %s failed", client_address)

    # ---------------------------------------------------------- workers

    def _serve(self, conn: _Connection, client_address: Any) -> None:
        try:
            if self.stopping:
                return
            conn.sock.settimeout(self.options.io_timeout)
            if self.tls is not None:
                conn.sock = self.tls.wrap_socket(
                    conn.sock, server_side=True, do_handshake_on_connect=False
                )
                if self.stopping:  # stop() may have missed the socket while it was wrapped
                    return
                conn.sock.do_handshake()
            _Handler(conn, client_address, self)
        except (OSError, ValueError) as err:
            # Resets, timeouts, failed handshakes, cut connections: the client's business.
            log.debug("HTTP connection from %s ended: %s", client_address, err)
        except Exception:
            log.exception("HTTP connection from %s failed", client_address)
        finally:
            self._finish(conn)

    def _finish(self, conn: _Connection) -> None:
        with self._lock:
            self._connections.discard(conn)
        with contextlib.suppress(OSError):
            conn.sock.close()
        self._slots.release()

    def drain(self) -> None:
        """End idle connections and wait for the requests being answered; then no worker is left."""
        self.stopping = True
        with self._lock:
            connections = list(self._connections)
        for conn in connections:
            # Reads end (idle keep-alive connections close); an answer being
            # written still goes out.
            conn.deadline = math.inf
            conn.cut(socket.SHUT_RD)
        self._pool.shutdown(wait=True, cancel_futures=True)
        with self._lock:
            leftover = list(self._connections)
        for conn in leftover:  # accepted but never started
            self._finish(conn)


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
        self._api = api
        self._admin = admin
        self._host = host
        self._port = port
        self._tls = tls
        self.options = options or HttpOptions()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._wakeup: tuple[socket.socket, socket.socket] | None = None

    @property
    def port(self) -> int:
        return self._port

    @property
    def tls(self) -> bool:
        return self._tls is not None

    @property
    def open_connections(self) -> int:
        server = self._server
        if server is None:
            return 0
        with server._lock:
            return len(server._connections)

    def start(self) -> int:
        """Listen and serve; return the bound port. Raises OSError when the port is taken."""
        if self._server is not None:
            return self._port
        server = _Server(self._host, self._port, self._api, self.options, self._tls, self._admin)
        server.socket.setblocking(False)
        self._port = int(server.server_address[1])
        self._stop.clear()
        self._wakeup = socket.socketpair()
        thread = threading.Thread(
            target=self._accept_loop,
            args=(server, self._wakeup[0]),
            name="polaris-http",
            daemon=True,
        )
        self._server, self._thread = server, thread
        thread.start()
        return self._port

    def _accept_loop(self, server: _Server, wakeup: socket.socket) -> None:
        """Accept until stop(); a failure is logged and the loop goes on after a backoff."""
        failures = 0
        with selectors.DefaultSelector() as selector:
            selector.register(server.socket, selectors.EVENT_READ)
            selector.register(wakeup, selectors.EVENT_READ)
            while not self._stop.is_set():
                try:
                    # The timeout only paces the deadline checks; stop() wakes the loop.
                    for key, _ in selector.select(_POLL_INTERVAL):
                        if key.fileobj is server.socket:
                            _accept_one(server)
                    server.service_actions()
                    failures = 0
                except Exception:
                    failures += 1
                    delay = min(_ACCEPT_BACKOFF[0] * 2 ** (failures - 1), _ACCEPT_BACKOFF[1])
                    log.exception("HTTP accept loop failed; going on in %.2fs", delay)
                    self._stop.wait(delay)

    def stop(self) -> None:
        """Stop accepting, finish the requests being answered, end every thread (idempotent)."""
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is None or thread is None:
            return
        self._stop.set()
        wakeup, self._wakeup = self._wakeup, None
        if wakeup is not None:
            with contextlib.suppress(OSError):
                wakeup[1].send(b"\0")
        thread.join(_JOIN_TIMEOUT)
        for end in wakeup or ():
            end.close()
        server.server_close()
        server.drain()


def _accept_one(server: _Server) -> None:
    try:
        request, client_address = server.get_request()
    except OSError:  # the client gave up already, or nothing was pending after all
        return
    try:
        server.process_request(request, client_address)
    except Exception:
        server.handle_error(request, client_address)
        server.shutdown_request(request)
