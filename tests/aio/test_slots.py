"""The slot runner of an AsyncSDKContext: first parts, then continuations; one task; clean close."""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest

from polaris_sdk import (
    AsyncConsumerAPI,
    AsyncProviderAPI,
    AsyncSDKContext,
    ClosedError,
    Configuration,
    InstanceHeartbeatRequest,
    InstanceRegisterRequest,
    ServiceKey,
)
from polaris_sdk.aio.slots import RUNNER_TASK, SLOT, SLOT_TASK, SlotRunner
from polaris_sdk.connector import calls
from polaris_sdk.connector.mock import MockTransport
from polaris_sdk.server import PolarisServer
from tests.connector.servers import TRANSPORTS, address_of, transport_config
from tests.faults.proxy import FaultProxy
from tests.frontends import LoopThread
from tests.support import wait_until


def _unused(method: str, request: Any) -> Any:
    raise AssertionError(f"no call expected, got {method}")


@pytest.fixture
def ctx(event_loop_thread: LoopThread) -> Iterator[AsyncSDKContext]:
    made = event_loop_thread.call(
        lambda: AsyncSDKContext(Configuration(), transport=MockTransport(_unused))
    )
    yield made
    event_loop_thread.run(made.aclose())


def sdk_tasks() -> list[str]:
    return sorted(
        t.get_name()
        for t in asyncio.all_tasks()
        if t.get_name().startswith("polaris-") and not t.done()
    )


def entry(log: list[str], name: str, then: Callable[[], Awaitable[None]] | None = None) -> Any:
    """A first part that notes itself and returns ``then()`` as its continuation."""

    def first() -> Awaitable[None] | None:
        log.append(f"first {name}")
        return then() if then is not None else None

    return first


def noting(log: list[str], name: str) -> Callable[[], Awaitable[None]]:
    async def continuation() -> None:
        log.append(f"continuation {name}")

    return continuation


def test_a_slot_runs_every_first_part_then_every_continuation_in_order(
    ctx: AsyncSDKContext, event_loop_thread: LoopThread
) -> None:
    log: list[str] = []

    async def run() -> None:
        loop = asyncio.get_running_loop()
        when = loop.time() + 0.05
        for name in "abc":
            ctx.slots.call_at(when, entry(log, name, noting(log, name)))
        ctx.slots.call_at(when, entry(log, "d"))  # no continuation: nothing to await
        done = loop.create_future()
        ctx.slots.call_at(when + 3 * SLOT, lambda: done.set_result(loop.time()) and None)
        ran_at = await done
        assert ran_at >= when + 2 * SLOT  # a later slot, not run with the first one

    event_loop_thread.run(run())
    assert log == [
        "first a",
        "first b",
        "first c",
        "first d",
        "continuation a",
        "continuation b",
        "continuation c",
    ]


def test_an_entry_runs_in_its_slot_at_most_one_slot_early(
    ctx: AsyncSDKContext, event_loop_thread: LoopThread
) -> None:
    async def run() -> list[tuple[float, float]]:
        loop = asyncio.get_running_loop()
        ran: list[tuple[float, float]] = []
        done = loop.create_future()
        base = loop.time() + 0.1
        whens = [base + offset for offset in (0.0, 0.007, 0.019, 0.021, 0.05)]
        for when in whens:

            def first(when: float = when) -> None:
                ran.append((when, loop.time()))
                if len(ran) == len(whens):
                    done.set_result(None)

            ctx.slots.call_at(when, first)
        await done
        return ran

    for when, at in event_loop_thread.run(run()):
        assert at >= when - SLOT - 0.002  # the loop's clock has about a millisecond of play


def test_a_slow_slot_does_not_hold_back_the_next(
    ctx: AsyncSDKContext, event_loop_thread: LoopThread
) -> None:
    async def run() -> None:
        loop = asyncio.get_running_loop()
        release = asyncio.Event()
        later = loop.create_future()

        async def held() -> None:
            await release.wait()

        ctx.slots.call_at(loop.time(), lambda: held())
        ctx.slots.call_at(loop.time() + 3 * SLOT, lambda: later.set_result(None))
        await asyncio.wait_for(later, 10)  # ran while the first slot's continuation waits
        release.set()

    event_loop_thread.run(run())


def test_cancel_stops_an_entry_that_has_not_run(
    ctx: AsyncSDKContext, event_loop_thread: LoopThread
) -> None:
    log: list[str] = []

    async def run() -> tuple[bool, bool, bool]:
        loop = asyncio.get_running_loop()
        when = loop.time() + 2 * SLOT
        stopped = ctx.slots.call_at(when, entry(log, "stopped"))
        kept = ctx.slots.call_at(when, entry(log, "kept"))
        first_cancel = stopped.cancel()
        second_cancel = stopped.cancel()
        done = loop.create_future()
        ctx.slots.call_at(when + 2 * SLOT, lambda: done.set_result(None))
        await done
        return first_cancel, second_cancel, kept.cancel()

    first, second, after_run = event_loop_thread.run(run())
    assert (first, second, after_run) == (True, False, False)
    assert log == ["first kept"]


def test_failures_are_logged_and_contained(
    ctx: AsyncSDKContext, event_loop_thread: LoopThread, caplog: pytest.LogCaptureFixture
) -> None:
    log: list[str] = []

    def broken_first() -> None:
        raise RuntimeError("first part broke")

    async def broken_continuation() -> None:
        raise RuntimeError("continuation broke")

    async def run() -> None:
        loop = asyncio.get_running_loop()
        when = loop.time()
        ctx.slots.call_at(when, broken_first)
        ctx.slots.call_at(when, lambda: broken_continuation())
        ctx.slots.call_at(when, entry(log, "a", noting(log, "a")))
        done = loop.create_future()
        ctx.slots.call_at(when + 2 * SLOT, lambda: done.set_result(None))
        await done

    with caplog.at_level(logging.ERROR, logger="polaris_sdk.aio.slots"):
        event_loop_thread.run(run())
        wait_until(lambda: len(caplog.records) == 2)
    assert log == ["first a", "continuation a"]
    messages = sorted(str(r.exc_info[1]) for r in caplog.records if r.exc_info)
    assert messages == ["continuation broke", "first part broke"]


def test_one_runner_task_restarted_after_a_failure_of_its_own(
    ctx: AsyncSDKContext,
    event_loop_thread: LoopThread,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real = SlotRunner._run_slot
    failures = [RuntimeError("the runner broke")]

    def failing_once(self: SlotRunner, *args: Any) -> None:
        if failures:
            raise failures.pop()
        real(self, *args)

    monkeypatch.setattr(SlotRunner, "_run_slot", failing_once)

    async def run() -> list[str]:
        loop = asyncio.get_running_loop()
        ctx.slots.call_at(loop.time(), lambda: None)  # lost with the runner's failure
        done = loop.create_future()
        for n in range(20):
            ctx.slots.call_at(loop.time() + n * SLOT, lambda: None)
        ctx.slots.call_at(loop.time() + 20 * SLOT, lambda: done.set_result(None))
        await asyncio.wait_for(done, 10)
        return [t.get_name() for t in ctx.tasks]

    with caplog.at_level(logging.ERROR, logger="polaris_sdk.aio.context"):
        tasks = event_loop_thread.run(run())
    assert tasks == [RUNNER_TASK]  # one task for every entry
    assert any(f"task {RUNNER_TASK} failed; restarting" in r.getMessage() for r in caplog.records)


def test_close_cancels_the_continuations_and_leaves_no_task(
    event_loop_thread: LoopThread,
) -> None:
    async def run() -> None:
        ctx = AsyncSDKContext(Configuration(), transport=MockTransport(_unused))
        loop = asyncio.get_running_loop()
        started = asyncio.Event()
        cancelled: list[bool] = []

        async def awaited() -> None:
            started.set()
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                cancelled.append(True)
                raise

        never = noting([], "never")()
        ctx.slots.call_at(loop.time(), lambda: awaited())
        ctx.slots.call_at(loop.time(), lambda: never)
        await asyncio.wait_for(started.wait(), 10)
        assert sdk_tasks() == [SLOT_TASK, RUNNER_TASK]
        await ctx.aclose()
        assert cancelled == [True]
        assert inspect.getcoroutinestate(never) == inspect.CORO_CLOSED  # not run
        assert sdk_tasks() == [] and not ctx.tasks
        with pytest.raises(ClosedError):
            ctx.slots.call_at(loop.time(), lambda: None)

    event_loop_thread.run(run())


# ------------------------------------------------------------ over the network


@pytest.fixture
def proxied(no_thread_leak: None) -> Iterator[tuple[PolarisServer, FaultProxy]]:
    with PolarisServer(grpc_port=0, health_check_interval=0.1) as server:
        host, _, port = server.grpc_address.rpartition(":")
        with FaultProxy((host, int(port))) as proxy:
            yield server, proxy
        assert not proxy.errors


@pytest.mark.parametrize("method", ["Discover", "Heartbeat"])
def test_a_slots_requests_all_reach_the_server_before_any_answer_is_awaited(
    proxied: tuple[PolarisServer, FaultProxy], event_loop_thread: LoopThread, method: str
) -> None:
    """Answers are held by the proxy: every request of the slot still gets through."""
    _, proxy = proxied
    count = 5
    config = Configuration().replace(
        addresses=[proxy.address], **{"global.api.timeout": "20s", "global.api.maxRetryTimes": 0}
    )

    async def run() -> None:
        async with AsyncSDKContext(config) as ctx:
            ids = []
            for n in range(count):
                req = InstanceRegisterRequest(
                    service="echo", host="127.0.0.1", port=9000 + n, enable_health_check=True
                )
                ids.append((await ctx.connector.register_instance(req, 5)).instance_id)
            await ctx.connector.discover_instances(ServiceKey("default", "echo"))  # stream open
            before = proxy.stats().requests
            proxy.delay(down=4.0)  # from now on every answer takes 4 s
            answered: list[object] = []

            def first(n: int) -> Callable[[], Awaitable[None]]:
                def send() -> Awaitable[None]:
                    if method == "Discover":
                        call = calls.discover(ServiceKey("default", "echo"))
                    else:
                        call = calls.heartbeat(InstanceHeartbeatRequest(instance_id=ids[n]))
                    pending = ctx.connector.begin(call)

                    async def finish() -> None:
                        answered.append(await pending)

                    return finish()

                return send

            loop = asyncio.get_running_loop()
            for n in range(count):
                ctx.slots.call_at(loop.time(), first(n))
            arrived = await wait_async(lambda: proxy.stats().requests >= before + count, 3.5)
            assert arrived and not answered  # every request is on the wire, no answer yet
            proxy.heal()
            await wait_async(lambda: len(answered) == count, 20)

    event_loop_thread.run(run())


async def wait_async(predicate: Callable[[], bool], timeout: float) -> bool:
    """Poll ``predicate`` on the loop until it holds (True) or ``timeout`` passes (False)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() >= deadline:
            return False
        await asyncio.sleep(0.01)
    return True


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_heartbeats_and_revision_checks_are_entries_of_the_one_runner(
    event_loop_thread: LoopThread, transport: str, no_thread_leak: None
) -> None:
    with PolarisServer(grpc_port=0, health_check_interval=0.1) as server:
        config = transport_config(transport, address_of(server, transport), refresh_interval=0.2)

        async def run() -> tuple[list[str], list[str]]:
            async with AsyncSDKContext(config) as ctx:
                provider, consumer = AsyncProviderAPI(ctx), AsyncConsumerAPI(ctx)
                seen: list[object] = []
                for n in range(10):
                    await provider.register_instance(
                        service=f"svc-{n}", host="127.0.0.1", port=9000 + n, ttl=1
                    )
                    await consumer.watch_service(service=f"svc-{n}", listeners=[seen.append])
                started = asyncio.get_running_loop().time()

                def beaten_and_checked() -> bool:
                    return (
                        all(
                            s.last_success is not None and s.last_success > started
                            for s in provider.registrations()
                        )
                        and ctx.slots.pending >= 20
                    )  # every instance and service waits its turn

                assert await wait_async(beaten_and_checked, 10)
                return sorted(t.get_name() for t in ctx.tasks), sdk_tasks()

        owned, running = event_loop_thread.run(run())
        assert owned == [RUNNER_TASK]
        assert RUNNER_TASK in running and not any(
            "heartbeat" in n or "refresh" in n for n in running
        )
