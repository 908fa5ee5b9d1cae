"""PolarisTestServer: an embedded Polaris server with the faults a service's tests need.

A thin handle over one :class:`~polaris_sdk.server.PolarisServer`, used by
the pytest plugin (:mod:`polaris_sdk.testing.plugin`) and usable on its own::

    with PolarisTestServer.create() as polaris:
        ctx = polaris.context()           # an SDKContext pointed at it
        ...
        polaris.restart()                 # same ports, data kept
        polaris.faults.heartbeat_not_found = True

Contract: the ports are fixed by the first start, so :meth:`restart`,
:meth:`stop` and :meth:`start` keep them and a client's configuration stays
valid; what clients see is what a real restart shows them (streams end,
connections are refused while stopped, the data is back after it unless
wiped). Every method returns once the change is done (a started server
answers, a stopped one refuses). Call it from one thread at a time (the
test's); the server itself serves any number of clients.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Final

from polaris_sdk._closing import Closing
from polaris_sdk.model import Instance, instance_from_wire
from polaris_sdk.server import PolarisServer
from polaris_sdk.server.naming import DEFAULT_NAMESPACE, ServerFaults, instance_to_wire

if TYPE_CHECKING:
    from polaris_sdk.context import SDKContext

__all__ = ["PolarisTestServer"]

log = logging.getLogger("polaris_sdk.testing.server")

_POLL_INTERVAL = 0.02

TEST_TTL: Final = 1
"""Heartbeat TTL (seconds) of test contexts and :meth:`PolarisTestServer.environ`:
a lost instance is unhealthy after 3 s, and re-registered within a few."""
TEST_REFRESH_INTERVAL: Final = 0.2
"""Cache refresh (seconds) of test contexts and :meth:`PolarisTestServer.environ`."""


class PolarisTestServer(Closing):
    """A :class:`~polaris_sdk.server.PolarisServer` for tests; see the module doc."""

    def __init__(self, server: PolarisServer) -> None:
        self.server = server

    @classmethod
    def create(cls, **options: Any) -> PolarisTestServer:
        """Start a server with :class:`~polaris_sdk.server.PolarisServer` ``options``.

        Loopback and free ports (``grpc_port=0``, ``http_port=0``) unless given.
        """
        return cls(PolarisServer(**options).start())

    # ------------------------------------------------------------ where it is

    @property
    def grpc_address(self) -> str:
        """``127.0.0.1:<port>`` of the gRPC API."""
        return self.server.grpc_address

    @property
    def http_address(self) -> str:
        """``http://127.0.0.1:<port>`` of the HTTP API (``https`` with TLS)."""
        return self.server.http_address

    def addresses(self, protocol: str = "grpc") -> list[str]:
        """The ``host:port`` list an SDK configuration needs for ``protocol`` (grpc or http)."""
        if protocol == "grpc":
            return [self.grpc_address]
        if protocol == "http":
            return [self.http_address.split("://", 1)[-1]]
        raise ValueError(f"protocol must be grpc or http, not {protocol!r}")

    def environ(
        self,
        protocol: str = "grpc",
        *,
        ttl: int = TEST_TTL,
        refresh_interval: float = TEST_REFRESH_INTERVAL,
        token: str | None = None,
        trusted_ca_file: str | os.PathLike[str] | None = None,
    ) -> dict[str, str]:
        """``POLARIS_*`` variables pointing an SDK configured from the environment here.

        For a service under test that builds its own context:
        ``for key, value in polaris_server.environ().items(): monkeypatch.setenv(key, value)``.

        Every variable the SDK reads is in it, so nothing of the developer's
        shell or of the application's ``./polaris.yaml`` leaks in:
        ``POLARIS_CONFIG`` names an empty file, the settings given here have
        their values (short ``ttl`` and ``refresh_interval`` by default,
        ``token``, ``trusted_ca_file`` for a server with TLS) and every other
        ``POLARIS_*`` setting is empty, which the SDK reads as unset.
        ``POLARIS_ADMIN_ADDRESS`` points the ``polaris`` CLI at the HTTP port.
        """
        from polaris_sdk.config import ENV_CONFIG_FILE, KEYS

        values = {key.env: "" for key in KEYS.values() if key.env}
        values.update(
            {
                ENV_CONFIG_FILE: os.devnull,
                "POLARIS_ADDRESSES": ",".join(self.addresses(protocol)),
                "POLARIS_PROTOCOL": protocol,
                "POLARIS_HEARTBEAT_TTL": str(ttl),
                "POLARIS_REFRESH_INTERVAL": f"{refresh_interval}s",
                "POLARIS_ADMIN_ADDRESS": self.http_address,
            }
        )
        if token is not None:
            values["POLARIS_TOKEN"] = token
        if trusted_ca_file is not None:
            values["POLARIS_TLS_CA_FILE"] = os.fspath(trusted_ca_file)
        return values

    def context(
        self, protocol: str = "grpc", *, from_environment: bool = False, **settings: Any
    ) -> SDKContext:
        """A new :class:`~polaris_sdk.SDKContext` pointed at this server; the caller closes it.

        Built from the defaults, not from ``./polaris.yaml`` or ``POLARIS_*``
        (an application's own configuration must not point a test elsewhere),
        unless ``from_environment=True``. ``settings`` are
        :meth:`SDKContext.create` keywords (``refresh_interval=0.2``,
        ``token=...``, ``**{"global.api.timeout": "1s"}``); a server with TLS also
        needs the TLS settings (``**{"global.serverConnector.trustedCAFile": ...}``).
        """
        from polaris_sdk.config import Configuration
        from polaris_sdk.context import SDKContext

        settings.setdefault("addresses", self.addresses(protocol))
        settings.setdefault("global.serverConnector.protocol", protocol)
        if from_environment:
            return SDKContext.create(**settings)
        return SDKContext.create(Configuration(), **settings)

    # ------------------------------------------------------------- lifecycle

    @property
    def running(self) -> bool:
        return self.server.running

    def start(self) -> None:
        """Serve again on the same ports (no-op when running)."""
        self.server.start()

    def stop(self) -> None:
        """Stop serving: open Discover streams end, new connections are refused. Data is kept."""
        self.server.stop()

    def restart(self, *, keep_data: bool = True) -> None:
        """Stop and start on the same ports, keeping the registrations or wiping them.

        With a ``data_dir`` the data is read back from disk, as after a real
        restart. Heartbeat clocks and the faults carry over.
        """
        self.server.stop()
        if not keep_data:
            self.server.clear()
        self.server.start()
        log.info("restarted the Polaris test server (%s)", "data kept" if keep_data else "wiped")

    def close(self) -> None:
        """Stop for good (idempotent)."""
        self.server.stop()

    def __repr__(self) -> str:
        return f"<PolarisTestServer {self.server!r}>"

    # ---------------------------------------------------------------- faults

    @property
    def faults(self) -> ServerFaults:
        """Switches for injected faults: ``faults.heartbeat_not_found = True`` makes
        every heartbeat answer 400202 NotFoundResource until switched off."""
        return self.server.faults

    def wipe(self) -> None:
        """Forget every registration (running or not); the built-in namespaces stay."""
        self.server.clear()

    def drop_discover_streams(self) -> int:
        """End every open Discover stream (UNAVAILABLE); return how many there were."""
        return self.server.drop_discover_streams()

    def reset(self) -> None:
        """The state a test starts from: running, no fault, no registration, no rule."""
        self.faults.reset()
        self.server.start()
        self.server.clear()
        self.server.circuit_breaker_rules.clear()

    def put_circuit_breaker_rules(self, *rules: Mapping[str, Any]) -> list[str]:
        """Create circuit-breaker rules (the admin API's JSON, as dicts); their ids.
        Consumers see them at their next rule refresh."""
        return self.server.put_circuit_breaker_rules(*rules)

    # --------------------------------------------------------------- looking

    def instances(self, service: str, namespace: str = DEFAULT_NAMESPACE) -> list[Instance]:
        """Every instance the server holds for the service (healthy or not), sorted by id.

        Read directly from the server: no cache delay. Empty for an unknown service.
        """
        view = self.server.naming.store.service_instances(namespace, service)
        if view is None:
            return []
        return [instance_from_wire(instance_to_wire(r)) for r in view.instances]

    def wait_for_instances(
        self,
        service: str,
        count: int = 1,
        namespace: str = DEFAULT_NAMESPACE,
        *,
        healthy: bool | None = None,
        timeout: float = 10.0,
    ) -> list[Instance]:
        """Wait until the server holds ``count`` instances of the service; return them.

        ``healthy`` counts only healthy (True) or unhealthy (False) ones.
        Raises AssertionError after ``timeout`` seconds, saying what was there.
        """
        deadline = time.monotonic() + timeout
        while True:
            found = [
                i
                for i in self.instances(service, namespace)
                if healthy is None or i.healthy == healthy
            ]
            if len(found) == count:
                return found
            if time.monotonic() >= deadline:
                raise AssertionError(
                    f"{namespace}/{service}: expected {count} instance(s)"
                    f"{'' if healthy is None else f' with healthy={healthy}'} within {timeout}s, "
                    f"found {len(found)}: {[i.address for i in found]}"
                )
            time.sleep(_POLL_INTERVAL)
