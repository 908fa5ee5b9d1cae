"""The integrations when the registry is slow or down, under real uvicorn and Flask processes.

* SIGTERM while the registration is on the wire (a proxy holds each request
  1.5 s): the instance lands after the signal and must end deregistered.
* Start-up with the registry down: the app starts and serves, says so in its
  status and logs, and is registered once the registry is up.
"""

from __future__ import annotations

import signal

import pytest

from polaris_sdk.server.auth import Action
from tests.faults.proxy import FaultProxy
from tests.frameworks.checks import STOPPED_BY_SIGTERM, answer
from tests.frameworks.conftest import Deployment, uvicorn
from tests.procs.servers import BIN, free_port, get
from tests.support import wait_until

APPS = ["fastapi-uvicorn", "flask-run"]


def command(app: str, port: int) -> list[str]:
    if app == "fastapi-uvicorn":
        return uvicorn("tests.procs.asgi_app:app", port)
    factory = "tests.procs.wsgi_app:create_app()"
    return [str(BIN / "flask"), "--app", factory, "run", "--no-reload", "--port", str(port)]


@pytest.mark.parametrize("app", APPS)
def test_sigterm_while_the_registration_is_on_the_wire(deploy: Deployment, app: str) -> None:
    host, registry_port = deploy.registry.server.grpc_address.rsplit(":", 1)
    with FaultProxy((host, int(registry_port))) as proxy:
        proxy.delay(up=1.5)
        env = deploy.env(
            POLARIS_ADDRESSES=proxy.address,
            POLARIS_MESSAGE_TIMEOUT="5s",
            POLARIS_API_TIMEOUT="6s",
            POLARIS_DRAIN="0.5",
            APP_DRAIN="0.5",
            APP_REGISTRY=proxy.address,
        )
        port = free_port()
        served = deploy.launch(command(app, port), env)
        # The registration is the first request the app sends: once the proxy
        # holds it, it is on the wire and has not reached the registry.
        wait_until(lambda: proxy.stats().requests >= 1, timeout=30, message=served.output())
        assert deploy.registry.actions(deploy.service) == []
        served.send(signal.SIGTERM)
        assert served.wait(timeout=30) in STOPPED_BY_SIGTERM, served.output()[-3000:]
        # It landed after the signal (and would have stayed), then was taken off.
        wait_until(lambda: deploy.registry.actions(deploy.service), timeout=10)
        assert deploy.registry.actions(deploy.service) == [Action.REGISTER, Action.DEREGISTER]
        assert deploy.registry.ports(deploy.service, healthy=None) == []
        assert proxy.errors == []


@pytest.mark.parametrize("app", APPS)
def test_starts_with_the_registry_down_and_registers_once_it_is_up(
    deploy: Deployment, app: str
) -> None:
    registry = deploy.registry.server
    port = free_port()
    registry.stop()
    try:
        served = deploy.launch(command(app, port), deploy.env(POLARIS_API_TIMEOUT="1s"))
        # The app serves, and says it is not registered yet and why.
        wait_until(lambda: get(port, "/status") is not None, timeout=30, message=served.output())
        status = wait_until(
            lambda: (s := answer(port, "/status"))["registration"] and s, timeout=15
        )
        assert status["registration"] == "reregistering"
        assert status["connection"] in ("SUSPENDED", "LOST")
        assert "registry unreachable" in served.output()
    finally:
        registry.start()
    # TTL 1 s: the re-registration backoff starts at about a second.
    wait_until(lambda: deploy.registry.ports(deploy.service) == [port], timeout=10)
    wait_until(
        lambda: (
            answer(port, "/status") == {"registration": "registered", "connection": "CONNECTED"}
        ),
        timeout=10,
    )
    assert served.proc.poll() is None
