from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

import polaris_sdk.context
from polaris_sdk import (
    Configuration,
    Instance,
    ResourceNotFoundError,
    SDKContext,
    ServiceKey,
)
from polaris_sdk.scheduler import Scheduler
from polaris_sdk.server import PolarisServer
from tests.connector.servers import (
    TRANSPORTS,
    RecordingAuthorizer,
    address_of,
    transport_config,
)
from tests.frontends import FRONTS, Facades
from tests.support import FakeClock, wait_until


@pytest.fixture(params=TRANSPORTS)
def transport(request: pytest.FixtureRequest) -> str:
    """Every provider test runs once per transport: ``grpc`` and ``http``."""
    return str(request.param)


@pytest.fixture
def authorizer() -> RecordingAuthorizer:
    return RecordingAuthorizer()


@pytest.fixture
def server(no_thread_leak: None, authorizer: RecordingAuthorizer) -> Iterator[PolarisServer]:
    # Set up after the leak check, so a restarted server's thread is checked too.
    with PolarisServer(grpc_port=0, auth=authorizer, health_check_interval=0.1) as s:
        yield s


@pytest.fixture
def address(server: PolarisServer, transport: str) -> str:
    """``host:port`` of the server's API for this test's transport."""
    return address_of(server, transport)


@pytest.fixture
def make_config(transport: str) -> Callable[..., Configuration]:
    """``make_config(*addresses, **settings)``: short timeouts, this test's transport."""

    def make(*addresses: str, **settings: object) -> Configuration:
        return transport_config(transport, *addresses, **settings)

    return make


@pytest.fixture
def config(make_config: Callable[..., Configuration], address: str) -> Configuration:
    return make_config(address)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    """Fake time for the scheduler of every context the test makes from here on.

    Heartbeats and re-registrations then run when the test advances the
    clock, not after real TTLs; the calls still go over real sockets with
    real deadlines, and the server's own health checks keep real time.
    """
    fake = FakeClock()

    def scheduler(workers: int) -> Scheduler:
        made = Scheduler(workers, clock=fake)
        fake.wakes(made.wake)
        return made

    monkeypatch.setattr(polaris_sdk.context, "Scheduler", scheduler)
    return fake


def advance_until(
    clock: FakeClock, predicate: Callable[[], object], step: float, timeout: float = 20.0
) -> None:
    """Advance ``clock`` by ``step`` at each look until ``predicate()`` holds (real deadline)."""

    def advanced() -> object:
        if predicate():
            return True
        clock.advance(step)
        return False

    wait_until(advanced, timeout=timeout, interval=0.02)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    # Every test of a facade runs on the sync ProviderAPI and on its asyncio
    # twin, except under fake time, which drives the sync scheduler's clock,
    # and tests marked sync_only (they reach into the threaded connector).
    if "front" in metafunc.fixturenames:
        sync_only = "clock" in metafunc.fixturenames or metafunc.definition.get_closest_marker(
            "sync_only"
        )
        fronts = ["sync"] if sync_only else list(FRONTS)
        metafunc.parametrize("front", fronts)


@pytest.fixture
def apis(front: str, request: pytest.FixtureRequest) -> Facades:
    """The facades of this test's front end: the sync ones or their asyncio twins."""
    loop = request.getfixturevalue("event_loop_thread") if front == "async" else None
    return Facades(front, loop)


@pytest.fixture
def provider(config: Configuration, apis: Facades, request: pytest.FixtureRequest) -> Iterator[Any]:
    """A ProviderAPI of its own, or an AsyncProviderAPI called through its event loop."""
    if "clock" in request.fixturenames:
        request.getfixturevalue("clock")  # before the context, so it gets the fake clock
    with apis.provider(config) as p:
        yield p


@pytest.fixture
def observer(config: Configuration) -> Iterator[SDKContext]:
    """A second context, to look at the server the way another process would."""
    with SDKContext(config) as ctx:
        yield ctx


def listed(ctx: SDKContext, service: str = "echo") -> dict[str, Instance]:
    """The instances the server lists for ``service`` (empty if it has none)."""

    try:
        snapshot = ctx.connector.discover_instances(ServiceKey("default", service))
    except ResourceNotFoundError:
        return {}
    assert snapshot is not None
    return {i.id: i for i in snapshot}
