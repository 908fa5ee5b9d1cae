"""The gRPC channels against three real greeter processes, one of them killed with SIGKILL."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from polaris_sdk import AsyncConsumerAPI, AsyncSDKContext, ConsumerAPI, Instance
from polaris_sdk.integrations.grpc import aio_channel, channel
from polaris_sdk.server import PolarisServer
from tests.frontends import LoopThread
from tests.integrations.greeters import Attempts, greeters, paced
from tests.support import wait_until

METHOD = "/greeter.Greeter/SayHello"
BEFORE = 20
AFTER = 60
EXCLUDED_WITHIN = 1.0
FAILURES_WITHOUT_RETRY = 1


class Recorder:
    """A consumer wrapper that records every instance a call was sent to."""

    def __init__(self, consumer: Any, attempts: Attempts) -> None:
        self._consumer = consumer
        self.attempts = attempts

    def update_service_call_result(self, **fields: Any) -> Any:
        instance: Instance = fields["instance"]
        self.attempts.add(instance.port)
        return self._consumer.update_service_call_result(**fields)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._consumer, name)


@pytest.fixture
def server(no_thread_leak: None) -> Iterator[PolarisServer]:
    with PolarisServer(grpc_port=0) as running:
        yield running


@pytest.mark.parametrize("retries", [2, 0])
def test_killed_greeter_leaves_the_channel(
    server: PolarisServer, tmp_path: Path, retries: int
) -> None:
    attempts = Attempts()
    with (
        greeters(server, tmp_path, "grpc") as running,
        ConsumerAPI.create(addresses=[server.grpc_address], refresh_interval=0.5) as consumer,
        channel("greeter", consumer=Recorder(consumer, attempts), retries=retries) as ch,
    ):
        wait_until(lambda: len(consumer.get_instances(service="greeter")) == 3, 10)
        say_hello = ch.unary_unary(METHOD)
        victim = running[0]
        failures = 0
        killed_at = 0.0
        for i in paced(BEFORE + AFTER):
            if i == BEFORE:
                victim.kill()
                killed_at = time.monotonic()
            try:
                answer = say_hello(b"hi", timeout=5)
            except grpc.RpcError as error:
                assert i >= BEFORE, error
                failures += 1
                continue
            assert answer.startswith(b"hello from ")
    print(f"grpc, retries={retries}: {failures} failed calls after the kill")
    assert not attempts.to(victim.port, killed_at + EXCLUDED_WITHIN)
    assert {p for _, p in attempts.seen} == {g.port for g in running}
    if retries:
        assert failures == 0
    else:
        assert failures <= FAILURES_WITHOUT_RETRY


def test_aio_channel_survives_a_kill(
    server: PolarisServer, tmp_path: Path, event_loop_thread: LoopThread
) -> None:
    attempts = Attempts()

    async def drive(victim: Any) -> tuple[int, float]:
        ctx = AsyncSDKContext.create(addresses=[server.grpc_address], refresh_interval=0.5)
        async with ctx, AsyncConsumerAPI(ctx) as consumer:
            recorder = _AsyncRecorder(consumer, attempts)
            async with aio_channel("greeter", consumer=recorder) as ch:
                while len(await consumer.get_instances(service="greeter")) < 3:
                    await asyncio.sleep(0.05)
                say_hello = ch.unary_unary(METHOD)
                failures = 0
                killed_at = 0.0
                for i in paced(BEFORE + AFTER):
                    if i == BEFORE:
                        victim.kill()
                        killed_at = time.monotonic()
                    try:
                        await say_hello(b"hi", timeout=5)
                    except grpc.RpcError:
                        failures += 1
                return failures, killed_at

    with greeters(server, tmp_path, "grpc") as running:
        failures, killed_at = event_loop_thread.run(drive(running[0]), timeout=60)
    assert failures == 0
    assert not attempts.to(running[0].port, killed_at + EXCLUDED_WITHIN)


class _AsyncRecorder:
    def __init__(self, consumer: Any, attempts: Attempts) -> None:
        self._consumer = consumer
        self.attempts = attempts

    async def update_service_call_result(self, **fields: Any) -> None:
        self.attempts.add(fields["instance"].port)
        await self._consumer.update_service_call_result(**fields)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._consumer, name)
