"""PolarisTransport against three real greeter processes, one of them killed with SIGKILL."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from polaris_sdk import AsyncConsumerAPI, AsyncSDKContext, ConsumerAPI
from polaris_sdk.integrations._calls import service_of
from polaris_sdk.integrations.httpx import AsyncPolarisTransport, PolarisTransport
from polaris_sdk.server import PolarisServer
from tests.frontends import LoopThread
from tests.integrations.greeters import Attempts, greeters, paced
from tests.support import wait_until

BEFORE = 20
"""Requests sent before the kill (1 s at 20 requests/s)."""
AFTER = 60
"""Requests sent after it (3 s)."""
EXCLUDED_WITHIN = 1.0
"""Seconds after the kill from which the dead instance must no longer be attempted."""
FAILURES_WITHOUT_RETRY = 1
"""The documented bound: one failed request per client for an instance whose
connections are refused (the fast rule opens its breaker at the first one)."""


class Recording(httpx.HTTPTransport):
    def __init__(self, attempts: Attempts) -> None:
        super().__init__()
        self.attempts = attempts

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.attempts.add(request.url.port or 80)
        return super().handle_request(request)


class AsyncRecording(httpx.AsyncHTTPTransport):
    def __init__(self, attempts: Attempts) -> None:
        super().__init__()
        self.attempts = attempts

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.attempts.add(request.url.port or 80)
        return await super().handle_async_request(request)


@pytest.fixture
def server(no_thread_leak: None) -> Iterator[PolarisServer]:
    with PolarisServer(grpc_port=0) as running:
        yield running


def _consumer(server: PolarisServer) -> ConsumerAPI:
    return ConsumerAPI.create(addresses=[server.grpc_address], refresh_interval=0.5)


def _run(client: httpx.Client, greeters_: list[Any], attempts: Attempts) -> tuple[int, float, int]:
    """(failures after the kill, kill time, port killed)."""
    victim = greeters_[0]
    failures = 0
    killed_at = 0.0
    for i in paced(BEFORE + AFTER):
        if i == BEFORE:
            victim.kill()
            killed_at = time.monotonic()
        try:
            response = client.get("http://greeter/hello")
        except httpx.TransportError:
            assert i >= BEFORE
            failures += 1
            continue
        assert response.status_code == 200
        assert response.text.startswith("hello from ")
    return failures, killed_at, victim.port


@pytest.mark.parametrize("retries", [2, 0])
def test_killed_greeter_leaves_the_rotation(
    server: PolarisServer, tmp_path: Path, retries: int
) -> None:
    attempts = Attempts()
    with (
        greeters(server, tmp_path, "http") as running,
        _consumer(server) as consumer,
        httpx.Client(
            transport=PolarisTransport(consumer, retries=retries, transport=Recording(attempts)),
            timeout=5,
        ) as client,
    ):
        wait_until(lambda: len(consumer.get_instances(service="greeter")) == 3, 10)
        failures, killed_at, port = _run(client, running, attempts)
        late = attempts.to(port, killed_at + EXCLUDED_WITHIN)
    print(f"httpx, retries={retries}: {failures} failed requests after the kill")
    assert not late, f"dead instance attempted {len(late)} times after {EXCLUDED_WITHIN}s"
    assert {p for _, p in attempts.seen} == {g.port for g in running}
    if retries:
        assert failures == 0
    else:
        assert failures <= FAILURES_WITHOUT_RETRY


def test_async_transport_survives_a_kill(
    server: PolarisServer, tmp_path: Path, event_loop_thread: LoopThread
) -> None:
    attempts = Attempts()

    async def drive(victim: Any) -> tuple[int, float]:
        ctx = AsyncSDKContext.create(addresses=[server.grpc_address], refresh_interval=0.5)
        async with ctx, AsyncConsumerAPI(ctx) as consumer:
            transport = AsyncPolarisTransport(consumer, transport=AsyncRecording(attempts))
            async with httpx.AsyncClient(transport=transport, timeout=5) as client:
                while len(await consumer.get_instances(service="greeter")) < 3:
                    await asyncio.sleep(0.05)
                failures = 0
                killed_at = 0.0
                for i in paced(BEFORE + AFTER):
                    if i == BEFORE:
                        victim.kill()
                        killed_at = time.monotonic()
                    try:
                        response = await client.get("http://greeter/hello")
                    except httpx.TransportError:
                        failures += 1
                        continue
                    assert response.status_code == 200
                return failures, killed_at

    with greeters(server, tmp_path, "http") as running:
        failures, killed_at = event_loop_thread.run(drive(running[0]), timeout=60)
        assert failures == 0
        assert not attempts.to(running[0].port, killed_at + EXCLUDED_WITHIN)


def test_5xx_are_reported_and_retried_only_when_asked(
    server: PolarisServer, tmp_path: Path
) -> None:
    attempts = Attempts()
    with (
        greeters(server, tmp_path, "http", count=2) as running,
        _consumer(server) as consumer,
    ):
        wait_until(lambda: len(consumer.get_instances(service="greeter")) == 2, 10)
        plain = httpx.Client(transport=PolarisTransport(consumer, transport=Recording(attempts)))
        with plain:
            assert plain.get("http://greeter/fail").status_code == 503
        assert len(attempts.seen) == 1
        retrying = httpx.Client(
            transport=PolarisTransport(
                consumer, retry_idempotent=True, transport=Recording(attempts)
            )
        )
        with retrying:
            assert retrying.get("http://greeter/fail").status_code == 503
            # Two instances: the retry went to the other one, then none was left.
            assert {p for _, p in attempts.seen[1:]} == {g.port for g in running}
            assert len(attempts.seen) == 3
            assert retrying.post("http://greeter/fail").status_code in (501, 503)
            assert len(attempts.seen) == 4  # POST is not idempotent: no retry


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("greeter", ("default", "greeter")),
        ("Greeter", ("default", "greeter")),  # URL hosts are lower case
        ("greeter.prod.polaris", ("prod", "greeter")),
        ("api.v1.greeter.prod.polaris", ("prod", "api.v1.greeter")),
        ("example.com", None),
        ("localhost", None),
        ("127.0.0.1", None),
        ("::1", None),
        ("prod.polaris", None),
    ],
)
def test_which_hosts_name_services(host: str, expected: tuple[str, str] | None) -> None:
    assert service_of(host, "default") == expected
