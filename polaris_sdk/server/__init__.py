"""The embedded Polaris server: a Polaris-compatible naming server in-process.

Usage::

    from polaris_sdk.server import PolarisServer

    with PolarisServer(grpc_port=0) as server:
        server.grpc_address          # "127.0.0.1:<port>", talk v1.PolarisGRPC to it

A request takes the real server's path, one module per layer: apiserver
(:mod:`.apiserver.grpc`) -> auth filter (:mod:`.auth`) -> naming service
(:mod:`.naming`) -> store plugin (:mod:`.store`); the health checker
(:mod:`.healthcheck`) flips instances unhealthy and back.

Lifecycle and threads: :meth:`PolarisServer.start` starts one thread,
``polaris-server``, running an asyncio event loop that carries the gRPC
server, every Discover stream and the health checker; :meth:`~PolarisServer.stop`
drops the open streams, lets unary calls finish for ``stop_grace`` seconds and
ends the thread. Both are idempotent and thread-safe (not callable from a
handler). The first start fixes the port (port 0 picks a free one), so
stop()+start() serves on the same port again, with the data kept unless
:meth:`~PolarisServer.clear` is called.

While running, the server registers itself in namespace ``Polaris`` as
``polaris.discover``, ``polaris.healthcheck`` and ``polaris.checker`` (its
reachable host, gRPC port, protocol ``grpc``, metadata naming the ports), as
a real deployment does for clients that bootstrap through those services.

Fault injection for tests: :meth:`~PolarisServer.clear` wipes every
registration; :meth:`~PolarisServer.drop_discover_streams` aborts every open
Discover stream.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import socket
import threading
from types import TracebackType
from typing import Any, Final

from polaris_sdk import wire
from polaris_sdk.server.apiserver.grpc import GrpcApiServer, format_address
from polaris_sdk.server.auth import AuthFilter, Authorizer
from polaris_sdk.server.healthcheck import DEFAULT_CHECK_INTERVAL, HealthChecker
from polaris_sdk.server.naming import SYSTEM_NAMESPACE, NamingService
from polaris_sdk.server.store import MemoryStore, Store

__all__ = ["SYSTEM_SERVICES", "PolarisServer"]

log = logging.getLogger("polaris_sdk.server")

SYSTEM_SERVICES: Final = ("polaris.discover", "polaris.healthcheck", "polaris.checker")
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


class _Running:
    """What exists only while the server runs: its loop, thread and servers."""

    def __init__(self, loop: asyncio.AbstractEventLoop, thread: threading.Thread) -> None:
        self.loop = loop
        self.thread = thread
        self.grpc: GrpcApiServer | None = None
        self.stop_checker = asyncio.Event()
        self.checker_task: asyncio.Task[None] | None = None


class PolarisServer:
    """An embedded Polaris naming server; see the module doc.

    ``grpc_port`` / ``http_port``: 0 picks a free port at the first start.
    The HTTP API comes later; ``http_port`` is kept and ``http_address`` is
    None until then. ``data_dir`` is reserved for the persistent store plugin;
    the memory store is used now. ``health_check=False`` makes Heartbeat answer
    400140 HealthCheckNotOpen. ``auth`` decides who may do what (default: all).
    ``advertise_host`` is the host the server registers itself with (default:
    ``host``, or this machine's address when ``host`` is a wildcard).

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
        store: Store | None = None,
        advertise_host: str | None = None,
        stop_grace: float = 1.0,
    ) -> None:
        for name, port in (("grpc_port", grpc_port), ("http_port", http_port)):
            if not 0 <= port <= 65535:
                raise ValueError(f"{name} must be from 0 to 65535, not {port}")
        self.host = host
        self.http_port = http_port
        self.data_dir = data_dir
        self.stop_grace = stop_grace
        self._grpc_port = grpc_port
        self._advertise_host = advertise_host or (_local_ip() if _is_wildcard(host) else host)
        if data_dir is not None and store is None:
            log.info(
                "data_dir %s is reserved for a persistent store; data stays in memory", data_dir
            )
        self.naming = NamingService(store or MemoryStore(), health_check=health_check)
        self._api = AuthFilter(self.naming, auth)
        self._checker = HealthChecker(
            self.naming.store,
            self.naming.heartbeats,
            self.naming.apply_health,
            interval=health_check_interval,
        )
        self._lock = threading.Lock()
        self._running: _Running | None = None

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
    def http_address(self) -> str | None:
        """``http://host:port`` of the HTTP API; None until this server has one."""
        return None

    @property
    def running(self) -> bool:
        return self._running is not None

    # ------------------------------------------------------------ lifecycle

    def start(self) -> PolarisServer:
        """Listen and serve (no-op when running). Raises OSError when the port is taken."""
        with self._lock:
            if self._running is not None:
                return self
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
                raise
            self._running = running
            self._register_self()
        log.info("Polaris server listening on grpc %s", self.grpc_address)
        return self

    def stop(self) -> None:
        """Stop serving and end the server thread (no-op when stopped). Data is kept."""
        with self._lock:
            running, self._running = self._running, None
            if running is None:
                return
            if threading.current_thread() is running.thread:
                self._running = running
                raise RuntimeError("stop() cannot be called from the server's own thread")
            self._deregister_self()
            try:
                future = asyncio.run_coroutine_threadsafe(self._stop_serving(running), running.loop)
                future.result(timeout=self.stop_grace + _START_TIMEOUT)
            except Exception:
                log.exception("error while stopping the server")
            finally:
                running.loop.call_soon_threadsafe(running.loop.stop)
                running.thread.join(timeout=_START_TIMEOUT)
        log.info("Polaris server on grpc port %d stopped", self._grpc_port)

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
            grpc_server = GrpcApiServer(self._api, self.host, self._grpc_port)
            self._grpc_port = await grpc_server.start()
            running.grpc = grpc_server
            running.checker_task = asyncio.get_running_loop().create_task(
                self._checker.run(running.stop_checker), name="polaris-healthcheck"
            )
        except BaseException as err:
            ready.set_exception(err)
            return
        ready.set_result(None)

    async def _stop_serving(self, running: _Running) -> None:
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
        return f"<PolarisServer grpc={self.host}:{self._grpc_port} {state}>"

    # ------------------------------------------------------ fault injection

    def clear(self) -> None:
        """Wipe every namespace, service, instance and heartbeat (the built-ins come back)."""
        self.naming.clear()
        if self.running:
            self._register_self()
        log.info("cleared all registrations")

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

    # ---------------------------------------------------- self registration

    def _system_instances(self) -> list[Any]:
        # Read late: the package root finishes importing after its submodules.
        from polaris_sdk import __version__

        instances = []
        for service in SYSTEM_SERVICES:
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
        for msg in self._system_instances():
            answer = self.naming.register_instance(msg)
            if answer.code.value != wire.Code.ExecuteSuccess:
                log.warning(
                    "self registration as %s failed: %d %s",
                    msg.service.value,
                    answer.code.value,
                    answer.info.value,
                )

    def _deregister_self(self) -> None:
        for msg in self._system_instances():
            self.naming.deregister_instance(msg)


def _log_loop_exception(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    error = context.get("exception")
    log.error("server loop: %s", context.get("message", "unexpected error"), exc_info=error)
