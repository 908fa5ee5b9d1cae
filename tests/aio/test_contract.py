"""The asyncio twins' own promises: one loop, no SDK threads, TLS and tokens as in sync."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

import pytest

from polaris_sdk import (
    AsyncConsumerAPI,
    AsyncProviderAPI,
    AsyncSDKContext,
    AuthError,
    WrongLoopError,
)
from polaris_sdk.server import PolarisServer
from tests.connector.servers import TRANSPORTS, address_of, transport_config
from tests.frontends import LoopThread
from tests.tlsutil import TlsFiles, tls_files  # noqa: F401  (the session's certificates)


@pytest.fixture(params=TRANSPORTS)
def transport(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def server(no_thread_leak: None) -> Iterator[PolarisServer]:
    with PolarisServer(grpc_port=0, health_check_interval=0.1) as running:
        yield running


def sdk_threads() -> list[str]:
    return sorted(t.name for t in threading.enumerate() if t.name.startswith("polaris-"))


def test_threads_do_not_grow_with_instances_or_services(
    server: PolarisServer, transport: str, event_loop_thread: LoopThread
) -> None:
    config = transport_config(transport, address_of(server, transport), refresh_interval=0.2)

    async def keep(count: int) -> list[str]:
        async with AsyncSDKContext(config) as ctx:
            provider, consumer = AsyncProviderAPI(ctx), AsyncConsumerAPI(ctx)
            for n in range(count):
                await provider.register_instance(
                    service=f"svc-{n}", host="127.0.0.1", port=9000 + n, ttl=1
                )
                await consumer.watch_service(service=f"svc-{n}", listeners=[lambda e: None])
            started = asyncio.get_running_loop().time()

            def beaten_twice() -> bool:
                statuses = provider.registrations()
                return len(statuses) == count and all(
                    s.state.value == "registered"
                    and s.last_success is not None
                    and s.last_success >= started + 1.5
                    for s in statuses
                )

            # Until every instance has beaten (and every service been re-checked) again.
            deadline = started + 30
            while not beaten_twice():
                assert asyncio.get_running_loop().time() < deadline, provider.registrations()
                await asyncio.sleep(0.05)
            return sdk_threads()

    few = event_loop_thread.run(keep(2))
    many = event_loop_thread.run(keep(40))
    assert many == few  # the server's own threads aside, the same ones for 2 and for 40


def test_a_context_refuses_another_loop_and_another_thread(
    server: PolarisServer, event_loop_thread: LoopThread
) -> None:
    config = transport_config("grpc", server.grpc_address)

    async def make() -> tuple[AsyncSDKContext, AsyncConsumerAPI]:
        ctx = AsyncSDKContext(config)
        return ctx, AsyncConsumerAPI(ctx)

    ctx, consumer = event_loop_thread.run(make())
    try:

        async def elsewhere() -> None:
            with pytest.raises(WrongLoopError, match="another event loop"):
                await consumer.get_all_instances(service="echo")

        asyncio.run(elsewhere())  # another loop, on another thread
        with pytest.raises(WrongLoopError, match="event loop"):
            ctx.check_loop()  # no loop at all
    finally:
        event_loop_thread.run(ctx.aclose())


def test_tls_and_tokens_on_the_async_transports(
    no_thread_leak: None,
    tls_files: TlsFiles,  # noqa: F811
    transport: str,
    event_loop_thread: LoopThread,
) -> None:
    with PolarisServer(
        grpc_port=0,
        tls_cert=tls_files.server_cert,
        tls_key=tls_files.server_key,
        tokens={"s3cret": None},
    ) as server:
        base = {"global.serverConnector.trustedCAFile": str(tls_files.ca_cert)}
        good = transport_config(transport, address_of(server, transport), token="s3cret", **base)
        bad = transport_config(transport, address_of(server, transport), token="wrong", **base)

        async def round_trip() -> None:
            async with AsyncSDKContext(good) as ctx:
                provider, consumer = AsyncProviderAPI(ctx), AsyncConsumerAPI(ctx)
                await provider.register(service="echo", host="127.0.0.1", port=8080)
                assert [i.port for i in await consumer.get_all_instances(service="echo")] == [8080]
            async with AsyncSDKContext(bad) as ctx:
                with pytest.raises(AuthError):
                    await AsyncProviderAPI(ctx).register(service="echo", host="127.0.0.1", port=1)

        event_loop_thread.run(round_trip())
