"""The framework tests: real uvicorn / gunicorn / Flask / Django processes, one registry.

The registry is a :class:`~polaris_sdk.testing.PolarisTestServer` in the test
process (loopback, both transports) whose authorizer records every request
that reached it; each test uses a service of its own. The apps are in
tests/procs/; a test's :class:`Deployment` gives them their settings through
the environment (short TTL and refresh, a drain of 3 s, leases in the test's
tmp_path) and ends them after the test.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from polaris_sdk.model import Instance
from polaris_sdk.provider.lease import Leases, lease_key
from polaris_sdk.server.auth import Action
from polaris_sdk.testing import PolarisTestServer
from tests.connector.servers import RecordingAuthorizer
from tests.procs.servers import BIN, ROOT, Served
from tests.support import wait_until


class Registry:
    def __init__(self) -> None:
        self.authorizer = RecordingAuthorizer()
        self.server = PolarisTestServer.create(auth=self.authorizer, health_check_interval=0.2)

    def ports(self, service: str, healthy: bool | None = True) -> list[int]:
        """Ports of the service's instances (healthy ones by default), read from the server."""
        found = self.server.instances(service)
        return sorted(i.port for i in found if healthy is None or i.healthy == healthy)

    def actions(self, service: str, *wanted: Action) -> list[Action]:
        """What reached the server for ``service``, in order (register, deregister by default)."""
        wanted = wanted or (Action.REGISTER, Action.DEREGISTER)
        return [r.action for r in self.authorizer.actions(service=service) if r.action in wanted]


@pytest.fixture(scope="module")
def registry() -> Iterator[Registry]:
    made = Registry()
    yield made
    made.server.close()


class Deployment:
    """One test's service, the environment of its app processes, and the processes."""

    def __init__(self, registry: Registry, service: str, tmp_path: Path) -> None:
        self.registry = registry
        self.service = service
        self._tmp = tmp_path
        self._started: list[Served] = []

    def env(self, protocol: str = "grpc", **extra: Any) -> dict[str, str]:
        """The environment of an app process: this registry, short TTL and refresh."""
        env = dict(os.environ)
        env.update(self.registry.server.environ(protocol, ttl=1, refresh_interval=0.2))
        env.update(
            {
                "PYTHONPATH": str(ROOT),
                "PYTHONUNBUFFERED": "1",
                "POLARIS_INSTANCE_HOST": "127.0.0.1",
                "POLARIS_LEASE_DIR": str(self._tmp / "leases"),
                "POLARIS_DRAIN": "3",
                "POLARIS_API_TIMEOUT": "2s",
                "APP_SERVICE": self.service,
                "APP_REGISTRY": ",".join(self.registry.server.addresses(protocol)),
                "APP_PROTOCOL": protocol,
                "APP_DRAIN": "3",
                "DJANGO_SETTINGS_MODULE": "tests.procs.django_site.settings",
            }
        )
        env.update({k: str(v) for k, v in extra.items()})
        return env

    def launch(self, cmd: list[str], env: dict[str, str] | None = None) -> Served:
        """Start a server process; every one is ended by pid after the test."""
        served = Served(cmd, env or self.env(), self._tmp / f"out-{len(self._started)}.log")
        self._started.append(served)
        return served

    def registered(self, served: Served, port: int, registers: int = 1) -> Instance:
        """Wait until ``port`` is the service's one healthy instance, registered by
        ``registers`` processes; return it."""
        wait_until(
            lambda: (
                self.registry.ports(self.service) == [port]
                and len(self.registry.actions(self.service, Action.REGISTER)) >= registers
            ),
            timeout=30,
            message=f"not registered:\n{served.output()[-3000:]}",
        )
        [instance] = self.registry.server.instances(self.service)
        return instance

    def holders(self, port: int) -> set[int]:
        """Pids of the live processes holding the lease on 127.0.0.1:``port`` (registered
        or registering it)."""
        leases = Leases(self._tmp / "leases")
        key = lease_key("default", self.service, "127.0.0.1", port)
        return {int(holder.split()[0]) for holder in leases.holders(key)}

    def close(self) -> None:
        for served in self._started:
            served.close()


@pytest.fixture
def deploy(
    registry: Registry, request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[Deployment]:
    service = re.sub(r"[^a-zA-Z0-9-]+", "-", request.node.name).strip("-")[:100]
    made = Deployment(registry, service, tmp_path)
    yield made
    made.close()


def uvicorn(app: str, port: int, *args: str) -> list[str]:
    cmd = [str(BIN / "uvicorn"), app, "--host", "127.0.0.1", "--port", str(port)]
    return [*cmd, "--log-level", "warning", *args]


def gunicorn(app: str, port: int, *args: str) -> list[str]:
    import gunicorn.config

    cmd = [str(BIN / "gunicorn"), "-b", f"127.0.0.1:{port}", "--graceful-timeout", "20"]
    if any(s.name == "control_socket_disable" for s in gunicorn.config.KNOWN_SETTINGS):
        cmd.append("--no-control-socket")  # not one per user in $HOME for every test
    return [*cmd, *args, app]
