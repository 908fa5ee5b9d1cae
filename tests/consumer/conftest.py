from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from polaris_sdk import (
    AsyncConsumerAPI,
    AsyncProviderAPI,
    AsyncSDKContext,
    ConsumerAPI,
    ProviderAPI,
    SDKContext,
)
from polaris_sdk.server import PolarisServer
from tests.connector.servers import TRANSPORTS, address_of
from tests.frontends import FRONTS, Blocking, LoopThread

REFRESH = 0.2
"""The refresh interval of the consumer tests: short, so changes arrive fast."""


@pytest.fixture(params=TRANSPORTS)
def transport(request: pytest.FixtureRequest) -> str:
    """Every consumer test on the server runs once per transport: ``grpc`` and ``http``."""
    return str(request.param)


@pytest.fixture
def server(no_thread_leak: None) -> Iterator[PolarisServer]:
    """A running embedded server on free loopback ports."""
    with PolarisServer(grpc_port=0, health_check_interval=0.1) as running:
        yield running


@pytest.fixture
def sdk_settings(server: PolarisServer, transport: str) -> dict[str, Any]:
    """What SDKContext.create needs to reach ``server`` over this test's transport."""
    return {
        "addresses": [address_of(server, transport)],
        "global.serverConnector.protocol": transport,
    }


@pytest.fixture
def make_context(sdk_settings: dict[str, Any]) -> Iterator[Callable[..., SDKContext]]:
    """Contexts on ``server`` (closed after the test), with a short refresh interval."""
    made: list[SDKContext] = []

    def make(**settings: Any) -> SDKContext:
        settings.setdefault("refresh_interval", REFRESH)
        settings.setdefault("global.api.timeout", "1s")
        ctx = SDKContext.create(**{**sdk_settings, **settings})
        made.append(ctx)
        return ctx

    yield make
    for ctx in reversed(made):
        ctx.close()


@pytest.fixture
def ctx(make_context: Callable[..., SDKContext]) -> SDKContext:
    return make_context()


@pytest.fixture(params=FRONTS)
def front(request: pytest.FixtureRequest) -> str:
    """Tests of the facades run on the sync ones and on their asyncio twins."""
    return str(request.param)


@pytest.fixture
def facade_settings() -> dict[str, Any]:
    """Extra settings of the ``facades`` context (a test module may override this)."""
    return {}


@pytest.fixture
def facades(
    front: str,
    sdk_settings: dict[str, Any],
    facade_settings: dict[str, Any],
    make_context: Callable[..., SDKContext],
    request: pytest.FixtureRequest,
) -> Iterator[tuple[Any, Any]]:
    """A consumer and a provider sharing one context, of this test's front end."""
    if front == "sync":
        ctx = make_context(**facade_settings)
        yield ConsumerAPI(ctx), ProviderAPI(ctx)
        return
    loop: LoopThread = request.getfixturevalue("event_loop_thread")

    async def make() -> tuple[AsyncSDKContext, AsyncConsumerAPI, AsyncProviderAPI]:
        actx = AsyncSDKContext.create(
            **{
                **sdk_settings,
                "refresh_interval": REFRESH,
                "global.api.timeout": "1s",
                **facade_settings,
            }
        )
        return actx, AsyncConsumerAPI(actx), AsyncProviderAPI(actx)

    actx, consumer, provider = loop.run(make())
    try:
        yield Blocking(consumer, loop), Blocking(provider, loop)
    finally:
        loop.run(actx.aclose())
        assert not actx.tasks


@pytest.fixture
def consumer(facades: tuple[Any, Any]) -> Any:
    """A ConsumerAPI, or an AsyncConsumerAPI called through its event loop."""
    return facades[0]


@pytest.fixture
def provider(facades: tuple[Any, Any]) -> Any:
    return facades[1]
