"""Testing your own service against an embedded Polaris, with the polaris_sdk pytest plugin.

The plugin comes with polaris_sdk (a pytest11 entry point), so the fixtures
``polaris_server`` and ``polaris_context`` are simply there:

    pytest examples/testing/test_my_service.py

(where the entry point is not installed, add ``-p polaris_sdk.testing.plugin``).

``GreeterApp`` stands for the code under test: on start it registers itself
(heartbeats every TTL), and it calls a peer picked by Polaris. The tests
check that it registers and leaves, and that it copes with what a real
registry does to it: a restart, a crash that lost its data, dropped
streams, an outage.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from polaris_sdk import ConsumerAPI, ProviderAPI, SDKContext
from polaris_sdk.testing import PolarisTestServer

SERVICE = "greeter"


class GreeterApp:
    """The service under test: registers itself, and finds a greeter to call."""

    def __init__(self, ctx: SDKContext, port: int) -> None:
        self.port = port
        self.provider = ProviderAPI(ctx)
        self.consumer = ConsumerAPI(ctx)

    def start(self) -> None:
        self.provider.register_instance(
            namespace="default",
            service=SERVICE,
            host="127.0.0.1",
            port=self.port,
            ttl=1,  # short, so that tests of heartbeat handling are quick
            metadata={"version": "v1"},
        )

    def peer(self) -> str:
        """The address of a greeter to call."""
        return self.consumer.get_one_instance(namespace="default", service=SERVICE).address

    def stop(self) -> None:
        self.consumer.close()
        self.provider.close()  # deregisters


@pytest.fixture
def app(polaris_context: SDKContext) -> Iterator[GreeterApp]:
    started = GreeterApp(polaris_context, port=18080)
    started.start()
    yield started
    started.stop()


def test_registers_itself_and_leaves_on_stop(
    polaris_server: PolarisTestServer, app: GreeterApp
) -> None:
    [me] = polaris_server.instances(SERVICE)
    assert me.address == "127.0.0.1:18080"
    assert me.metadata["version"] == "v1"
    assert me.healthy

    app.stop()

    assert polaris_server.instances(SERVICE) == []


def test_finds_a_peer(app: GreeterApp) -> None:
    assert app.peer() == "127.0.0.1:18080"


def test_survives_a_registry_restart(polaris_server: PolarisTestServer, app: GreeterApp) -> None:
    app.peer()

    polaris_server.restart()  # same ports, registrations kept

    assert app.peer() == "127.0.0.1:18080"
    assert len(polaris_server.instances(SERVICE)) == 1


def test_registers_again_when_the_registry_forgets_it(
    polaris_server: PolarisTestServer, app: GreeterApp
) -> None:
    # A registry that lost its data answers heartbeats with NotFound; the SDK
    # then registers the instance again by itself.
    polaris_server.faults.heartbeat_not_found = True
    polaris_server.wipe()

    [back] = polaris_server.wait_for_instances(SERVICE, count=1, timeout=15)
    assert back.address == "127.0.0.1:18080"


def test_lookups_ride_out_dropped_streams_and_an_outage(
    polaris_server: PolarisTestServer, app: GreeterApp
) -> None:
    app.peer()  # the service is cached from here on

    polaris_server.drop_discover_streams()
    assert app.peer() == "127.0.0.1:18080"

    polaris_server.stop()
    assert app.peer() == "127.0.0.1:18080"  # the last known instances are kept
    polaris_server.start()


def test_every_test_starts_from_an_empty_registry(polaris_server: PolarisTestServer) -> None:
    assert polaris_server.instances(SERVICE) == []
    assert not polaris_server.faults.heartbeat_not_found
