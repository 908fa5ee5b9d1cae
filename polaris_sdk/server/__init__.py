"""The embedded Polaris server: a Polaris-compatible naming server in-process.

Usage::

    from polaris_sdk.server import PolarisServer

    with PolarisServer(grpc_port=0, http_port=0) as server:
        server.grpc_address          # "127.0.0.1:<port>", talk v1.PolarisGRPC to it
        server.http_address          # "http://127.0.0.1:<port>", the HTTP client API

A request takes the real server's path, one module per layer: apiserver
(:mod:`.apiserver.grpc`, :mod:`.apiserver.http`) -> auth filter (:mod:`.auth`;
``tokens`` turns the token check on) -> naming service
(:mod:`.naming`) -> store plugin (:mod:`.store`); the health checker
(:mod:`.healthcheck`) flips instances unhealthy and back.

Lifecycle and threads: :meth:`PolarisServer.start` starts one thread,
``polaris-server``, running an asyncio event loop that carries the gRPC
server, every Discover stream, every HTTP connection and the health
checker. :meth:`~PolarisServer.stop` stops the HTTP API (requests being
answered finish), drops the open streams, lets unary calls and HTTP
answers finish for ``stop_grace`` seconds and ends the thread. With ``tls_cert`` and ``tls_key``
both gRPC and HTTP serve TLS only. Both are idempotent and thread-safe (not callable from a
handler). The first start fixes the ports (port 0 picks a free one), so
stop()+start() serves on the same port again, with the data kept unless
:meth:`~PolarisServer.clear` is called.

While running, the server registers itself in namespace ``Polaris`` (its
reachable host, gRPC port, protocol ``grpc``, metadata naming the ports) as
each of ``system_services``: by default only ``polaris.checker``, as a real
server's default configuration does; ``polaris.discover`` and
``polaris.healthcheck`` (:data:`SYSTEM_SERVICES`) are there for clients
that bootstrap through them, when asked for.

Admin side of the HTTP port: the admin API of a real server
(``GET /naming/v1/namespaces``, ``/services``, ``/instances``; ``POST`` /
``PUT /naming/v1/instances``, ``POST /naming/v1/instances/delete``), a
read-only console at ``/console``, Prometheus metrics at ``/metrics`` and a
health answer at ``/healthz`` (:mod:`.apiserver.admin`).

Storage: with ``data_dir`` the registrations live in SQLite
(``data_dir/polaris.db``, :class:`~.store.SqliteStore`), without it in memory.
:meth:`~PolarisServer.stop` closes the database and releases the directory;
:meth:`~PolarisServer.start` opens it again and reloads what it holds, as a
restarted process would.

Fault injection for tests: :meth:`~PolarisServer.clear` wipes every
registration; :meth:`~PolarisServer.drop_discover_streams` aborts every open
Discover stream; ``faults.heartbeat_not_found = True`` makes every heartbeat
answer 400202 NotFoundResource (:class:`~.naming.ServerFaults`).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
import os
import socket
import ssl
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Final

import grpc

from polaris_sdk import validation, wire
from polaris_sdk.errors import ValidationError
from polaris_sdk.server.apiserver.admin import AdminApi
from polaris_sdk.server.apiserver.grpc import GrpcApiServer, format_address
from polaris_sdk.server.apiserver.http import HttpApiServer, HttpOptions
from polaris_sdk.server.auth import AuthFilter, Authorizer, TokenAuthorizer, Tokens
from polaris_sdk.server.cbrules import RULES_PATH as CB_RULES_PATH
from polaris_sdk.server.cbrules import CircuitBreakerRules
from polaris_sdk.server.cbrules import handle as handle_cb_rules
from polaris_sdk.server.healthcheck import DEFAULT_CHECK_INTERVAL, HealthChecker
from polaris_sdk.server.metrics import MeteredAuthFilter, ServerMetrics
from polaris_sdk.server.naming import SYSTEM_NAMESPACE, NamingService, ServerFaults
from polaris_sdk.server.store import MemoryStore, SqliteStore, Store
from polaris_sdk.server.store.sqlite import DB_FILENAME

CB_RULES_FILENAME: Final = "circuitbreaker.db"

__all__ = ["DEFAULT_SYSTEM_SERVICES", "SYSTEM_SERVICES", "PolarisServer"]

log = logging.getLogger("polaris_sdk.server")

SYSTEM_SERVICES: Final = ("polaris.discover", "polaris.healthcheck", "polaris.checker")
"""The services a Polaris server may register itself as."""
DEFAULT_SYSTEM_SERVICES: Final = ("polaris.checker",)
"""The ones a real server registers itself as by default (``polaris-server.yaml``)."""
_WILDCARD_HOSTS: Final = frozenset({"", "0.0.0.0", "::", "[::]"})
_START_TIMEOUT: Final = 30.0


def _local_ip() -> str:
    """A non-wildcard address other hosts may reach this one at (best effort, no traffic)."""
    try:
        address = socket.gethostbyname(socket.gethostname())
    except OSError:
        return "127.0.0.1"
    return address or "127.0.0.1"


def _is_wildcard(host: str) -> bool:
    return host in _WILDCARD_HOSTS


@dataclass(frozen=True)
class _Tls:
    """The server's certificate chain and key (PEM), read at each start."""

    cert: str | os.PathLike[str]
    key: str | os.PathLike[str]

    def grpc_credentials(self) -> grpc.ServerCredentials:
        with open(self.cert, "rb") as cert, open(self.key, "rb") as key:
            return grpc.ssl_server_credentials([(key.read(), cert.read())])

    def ssl_context(self) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.set_alpn_protocols(["http/1.1"])
        context.load_cert_chain(self.cert, self.key)
        return context


class _Running:
    """What exists only while the server runs: its loop, thread and servers."""

    def __init__(self, loop: asyncio.AbstractEventLoop, thread: threading.Thread) -> None:
        self.loop = loop
        self.thread = thread
        self.grpc: GrpcApiServer | None = None
        self.http: HttpApiServer | None = None
        self.stop_checker = asyncio.Event()
        self.checker_task: asyncio.Task[None] | None = None


class PolarisServer:
    """An embedded Polaris naming server; see the module doc.

    ``grpc_port`` / ``http_port``: 0 picks a free port at the first start.
    ``http_options`` bounds the HTTP API (connections, body size, timeouts;
    :class:`~.apiserver.http.HttpOptions`). ``data_dir`` keeps the data in SQLite there (created if
    missing; see the module doc), unless a ``store`` is given. Raises
    :class:`~.store.DataDirLockedError` when another server uses ``data_dir``.
    ``health_check=False`` makes Heartbeat answer
    400140 HealthCheckNotOpen. ``auth`` decides who may do what (default: all);
    ``tokens`` is the common case of it: only these tokens may register,
    deregister and discover, each everywhere or in some namespaces
    (:class:`~.auth.TokenAuthorizer`; give ``auth`` or ``tokens``, not both).
    ``tls_cert`` / ``tls_key`` (PEM files, both or neither) serve gRPC and
    HTTP over TLS; a bad file fails :meth:`start`.
    ``advertise_host`` is the host the server registers itself with (default:
    ``host``, or this machine's address when ``host`` is a wildcard);
    ``system_services`` the services it registers itself as in namespace
    ``Polaris`` (default: :data:`DEFAULT_SYSTEM_SERVICES`).
    ``delete_unhealthy_after`` (seconds; default None: never) deletes a
    heartbeat-checked instance once it has stayed unhealthy that long, as a
    real server's ``DeleteUnHealthyInstance`` job does.

    The HTTP port also serves the admin API (``/naming/v1/...``), the console
    (``/console``), ``/metrics`` and ``/healthz``
    (:mod:`~.apiserver.admin`); ``metrics`` is the
    :class:`~.metrics.ServerMetrics` behind ``/metrics``.

    ``naming`` is the :class:`~polaris_sdk.server.naming.NamingService`; its
    ``store`` and ``heartbeats`` let a test look inside.
    """

    def __init__(
        self,
        grpc_port: int = 0,
        http_port: int = 0,
        data_dir: str | os.PathLike[str] | None = None,
        host: str = "127.0.0.1",
        *,
        health_check: bool = True,
        health_check_interval: float = DEFAULT_CHECK_INTERVAL,
        auth: Authorizer | None = None,
        tokens: Tokens | None = None,
        tls_cert: str | os.PathLike[str] | None = None,
        tls_key: str | os.PathLike[str] | None = None,
        http_options: HttpOptions | None = None,
        store: Store | None = None,
        advertise_host: str | None = None,
        system_services: Iterable[str] = DEFAULT_SYSTEM_SERVICES,
        stop_grace: float = 1.0,
        delete_unhealthy_after: float | None = None,
    ) -> None:
        for name, port in (("grpc_port", grpc_port), ("http_port", http_port)):
            if not 0 <= port <= 65535:
                raise ValueError(f"{name} must be from 0 to 65535, not {port}")
        if auth is not None and tokens:
            raise ValueError("give auth or tokens, not both")
        if (tls_cert is None) != (tls_key is None):
            raise ValueError("tls_cert and tls_key go together")
        self.system_services = tuple(dict.fromkeys(system_services))
        for service in self.system_services:
            try:
                validation.check_service(service)
            except ValidationError as err:
                raise ValueError(f"system_services: {err}") from None
        self.host = host
        self._http_port = http_port
        self._http_options = http_options
        self._tls = (
            _Tls(tls_cert, tls_key) if tls_cert is not None and tls_key is not None else None
        )
        self.data_dir = data_dir
        self.stop_grace = stop_grace
        self._grpc_port = grpc_port
        self._advertise_host = advertise_host or (_local_ip() if _is_wildcard(host) else host)
        # Only the store made here is opened and closed with the server.
        self._sqlite: SqliteStore | None = None
        if data_dir is not None and store is None:
            store = self._sqlite = SqliteStore(os.path.join(data_dir, DB_FILENAME))
        self.naming = NamingService(store or MemoryStore(), health_check=health_check)
        self.circuit_breaker_rules = CircuitBreakerRules(
            None if data_dir is None else os.path.join(data_dir, CB_RULES_FILENAME)
        )
        self.naming.circuit_breaker_rules = self.circuit_breaker_rules
        if tokens:
            auth = TokenAuthorizer(tokens)
        self.metrics = ServerMetrics(self.naming.store)
        self._api = MeteredAuthFilter(self.naming, auth, self.metrics, "grpc")
        self._http_api = MeteredAuthFilter(self.naming, auth, self.metrics, "http")
        self._admin = AdminApi(
            AuthFilter(self.naming, auth),
            self.metrics,
            lambda: self.running,
            rules=self.circuit_breaker_rules,
        )
        self._checker = HealthChecker(
            self.naming.store,
            self.naming.heartbeats,
            self.naming.apply_health,
            interval=health_check_interval,
            delete_unhealthy_after=delete_unhealthy_after,
            delete=self._delete_unhealthy,
        )
        self._lock = threading.Lock()
        self._running: _Running | None = None

    # ---------------------------------------------------- circuit breaking

    def admin(
        self,
        method: str,
        path: str,
        query: str = "",
        headers: Mapping[str, str] | None = None,
        body: bytes = b"",
    ) -> tuple[int, dict[str, str], bytes] | None:
        """Serve one admin-API request without a transport: ``(status, headers, body)``,
        or None for a path the admin API does not have. Today: the circuit-breaker
        rule routes (:mod:`polaris_sdk.server.cbrules`)."""
        return handle_cb_rules(self.circuit_breaker_rules, method, path, query, headers or {}, body)

    def put_circuit_breaker_rules(self, *rules: Mapping[str, Any]) -> list[str]:
        """Create rules given as the admin API's JSON (dicts); their ids.
        ValueError naming the code when one is refused."""
        answer = self.admin("POST", CB_RULES_PATH, body=json.dumps(list(rules)).encode())
        assert answer is not None
        payload = json.loads(answer[2])
        if payload["code"] != 200000:
            raise ValueError(f"circuit breaker rules refused: {payload}")
        return [item["data"]["id"] for item in payload["responses"]]

    # ------------------------------------------------------------ addresses

    @property
    def grpc_port(self) -> int:
        """The gRPC port: the bound one after the first start (0 before, if asked for 0)."""
        return self._grpc_port

    @property
    def grpc_address(self) -> str:
        """``host:port`` a client on this machine dials for gRPC."""
        if self._grpc_port == 0:
            raise RuntimeError("the gRPC port is chosen at start(); start the server first")
        host = "127.0.0.1" if _is_wildcard(self.host) else self.host
        return format_address(host, self._grpc_port)

    @property
    def http_port(self) -> int:
        """The HTTP port: the bound one after the first start (0 before, if asked for 0)."""
        return self._http_port

    @property
    def http_address(self) -> str:
        """``http://host:port`` (``https`` with TLS) a client on this machine uses."""
        if self._http_port == 0:
            raise RuntimeError("the HTTP port is chosen at start(); start the server first")
        host = "127.0.0.1" if _is_wildcard(self.host) else self.host
        scheme = "https" if self._tls is not None else "http"
        return f"{scheme}://{format_address(host, self._http_port)}"

    @property
    def tls(self) -> bool:
        """Whether both APIs serve TLS."""
        return self._tls is not None

    @property
    def running(self) -> bool:
        return self._running is not None

    # ------------------------------------------------------------ lifecycle

    def start(self) -> PolarisServer:
        """Listen and serve (no-op when running). Raises OSError when the port is taken."""
        with self._lock:
            if self._running is not None:
                return self
            if self._sqlite is not None:
                self._sqlite.open()
            loop = asyncio.new_event_loop()
            ready: concurrent.futures.Future[None] = concurrent.futures.Future()
            thread = threading.Thread(
                target=self._serve, args=(loop, ready), name="polaris-server", daemon=True
            )
            running = _Running(loop, thread)
            thread.start()
            try:
                loop.call_soon_threadsafe(
                    lambda: asyncio.ensure_future(self._start_serving(running, ready), loop=loop)
                )
                ready.result(timeout=_START_TIMEOUT)
            except BaseException:
                loop.call_soon_threadsafe(loop.stop)
                thread.join(timeout=_START_TIMEOUT)
                if self._sqlite is not None:
                    self._sqlite.close()
                raise
            self._running = running
            self._register_self()
        log.info("Polaris server listening on grpc %s and %s", self.grpc_address, self.http_address)
        return self

    def stop(self) -> None:
        """Stop serving and end the server thread (no-op when stopped). Data is kept.

        With ``data_dir``, the database is closed and the directory released.
        """
        with self._lock:
            running, self._running = self._running, None
            if running is None:
                return
            if threading.current_thread() is running.thread:
                self._running = running
                raise RuntimeError("stop() cannot be called from the server's own thread")
            self._deregister_self()
            self._halt(running)
        log.info(
            "Polaris server on grpc port %d and http port %d stopped",
            self._grpc_port,
            self._http_port,
        )

    def _halt(self, running: _Running) -> None:
        """Stop the APIs, the loop and its thread, and close the store."""
        try:
            future = asyncio.run_coroutine_threadsafe(self._stop_serving(running), running.loop)
            future.result(timeout=self.stop_grace + _START_TIMEOUT)
        except Exception:
            log.exception("error while stopping the server")
        finally:
            running.loop.call_soon_threadsafe(running.loop.stop)
            running.thread.join(timeout=_START_TIMEOUT)
            if self._sqlite is not None:
                self._sqlite.close()

    def _serve(
        self, loop: asyncio.AbstractEventLoop, ready: concurrent.futures.Future[None]
    ) -> None:
        asyncio.set_event_loop(loop)
        loop.set_exception_handler(_log_loop_exception)
        try:
            loop.run_forever()
        except BaseException:
            # Callbacks' errors go to the exception handler; reaching here means
            # the loop itself broke, and the server is down until start() again.
            log.critical("the server loop crashed; the server has stopped", exc_info=True)
            raise
        finally:
            try:
                pending = asyncio.all_tasks(loop)
                for task in pending:
                    task.cancel()
                loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
                loop.run_until_complete(loop.shutdown_asyncgens())
            finally:
                loop.close()
                if not ready.done():
                    ready.set_exception(RuntimeError("the server loop ended before starting"))

    async def _start_serving(
        self, running: _Running, ready: concurrent.futures.Future[None]
    ) -> None:
        try:
            credentials = self._tls.grpc_credentials() if self._tls is not None else None
            grpc_server = GrpcApiServer(self._api, self.host, self._grpc_port, credentials)
            self._grpc_port = await grpc_server.start()
            running.grpc = grpc_server
            http_server = HttpApiServer(
                self._api,
                self.host,
                self._http_port,
                tls=self._tls.ssl_context() if self._tls is not None else None,
                options=self._http_options,
                admin=self._admin,
            )
            try:
                self._http_port = await http_server.start()
            except BaseException:
                running.grpc = None
                await grpc_server.stop(0)
                raise
            running.http = http_server
            running.checker_task = asyncio.get_running_loop().create_task(
                self._checker.run(running.stop_checker), name="polaris-healthcheck"
            )
        except BaseException as err:
            ready.set_exception(err)
            return
        ready.set_result(None)

    async def _stop_serving(self, running: _Running) -> None:
        if running.http is not None:
            await running.http.stop(self.stop_grace)
        running.stop_checker.set()
        if running.checker_task is not None:
            await running.checker_task
        if running.grpc is not None:
            await running.grpc.stop(self.stop_grace)

    def __enter__(self) -> PolarisServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return (
            f"<PolarisServer grpc={self.host}:{self._grpc_port} "
            f"http={self.host}:{self._http_port} {state}>"
        )

    # ------------------------------------------------------ fault injection

    @property
    def faults(self) -> ServerFaults:
        """Switches for injected faults (see :class:`~.naming.ServerFaults`)."""
        return self.naming.faults

    def clear(self) -> None:
        """Wipe every namespace, service, instance and heartbeat (the built-ins come back)."""
        self.naming.clear()
        if self.running:
            self._register_self()
        log.info("cleared all registrations")

    @property
    def open_http_connections(self) -> int:
        """How many HTTP connections are being served now (0 when stopped)."""
        running = self._running
        return 0 if running is None or running.http is None else running.http.open_connections

    @property
    def open_discover_streams(self) -> int:
        """How many Discover streams are open now (0 when stopped)."""
        running = self._running
        return 0 if running is None or running.grpc is None else running.grpc.open_streams

    def drop_discover_streams(self) -> int:
        """Abort every open Discover stream with UNAVAILABLE; return how many were open."""
        running = self._running
        if running is None or running.grpc is None:
            return 0
        grpc_server = running.grpc
        if threading.current_thread() is running.thread:
            return grpc_server.drop_streams()

        async def drop() -> int:
            return grpc_server.drop_streams()

        return asyncio.run_coroutine_threadsafe(drop(), running.loop).result(_START_TIMEOUT)

    def _delete_unhealthy(self, record: Any) -> bool:
        """Delete an instance the health checker found unhealthy too long, unless it changed."""
        current = self.naming.store.get_instance(record.id)
        if current is None or current.revision != record.revision:
            return False
        answer = self.naming.deregister_instance(
            wire.Instance(id=wire.StringValue(value=record.id))
        )
        return bool(answer.code.value == wire.Code.ExecuteSuccess)

    # ---------------------------------------------------- self registration

    def _system_instances(self) -> list[Any]:
        # Read late: the package root finishes importing after its submodules.
        from polaris_sdk import __version__

        instances = []
        for service in self.system_services:
            msg = wire.Instance(
                namespace=wire.StringValue(value=SYSTEM_NAMESPACE),
                service=wire.StringValue(value=service),
                host=wire.StringValue(value=self._advertise_host),
                port=wire.UInt32Value(value=self._grpc_port),
                protocol=wire.StringValue(value="grpc"),
                version=wire.StringValue(value=__version__),
            )
            msg.metadata.update(
                {
                    "polaris_service": service,
                    "protocol": "grpc",
                    "grpc_port": str(self._grpc_port),
                    "build-revision": __version__,
                }
            )
            instances.append(msg)
        return instances

    def _register_self(self) -> None:
        instances = self._system_instances()
        self._forget_stale_self(instances)
        for msg in instances:
            answer = self.naming.register_instance(msg)
            if answer.code.value != wire.Code.ExecuteSuccess:
                log.warning(
                    "self registration as %s failed: %d %s",
                    msg.service.value,
                    answer.code.value,
                    answer.info.value,
                )

    def _forget_stale_self(self, current: list[Any]) -> None:
        """Deregister the self registrations a previous run left in a persistent store.

        A run that was killed (or served another port) left instances no one
        serves; clients bootstrapping through the system services would dial them.
        """
        keep = {
            validation.instance_id(SYSTEM_NAMESPACE, m.service.value, m.host.value, m.port.value)
            for m in current
        }
        # Also the system services a previous run was configured with and this one is not.
        for service in dict.fromkeys((*SYSTEM_SERVICES, *self.system_services)):
            view = self.naming.store.service_instances(SYSTEM_NAMESPACE, service)
            for record in view.instances if view is not None else ():
                if record.id not in keep:
                    self.naming.deregister_instance(
                        wire.Instance(id=wire.StringValue(value=record.id))
                    )

    def _deregister_self(self) -> None:
        for msg in self._system_instances():
            self.naming.deregister_instance(msg)


def _log_loop_exception(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    error = context.get("exception")
    log.error("server loop: %s", context.get("message", "unexpected error"), exc_info=error)
