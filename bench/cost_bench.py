"""Cost of keeping caches and registrations alive, each figure beside its floor.

Every figure is printed as a ratio to a floor measured in the same run (the
machine is shared and noisy: absolute times drift between days, ratios much
less), with the absolute figures beside it, for the blocking front end
(``SDKContext``) and its asyncio twin (``AsyncSDKContext``) both:

* selection: a warm ``get_one_instance`` (keywords, and a prepared request
  object) over weighted instances; floor: ``random.choice`` on a list;
* CPU per idle revision check with many watched services at the refresh
  interval; floor: one bare unchanged Discover exchange on an open stream,
  made with a raw gRPC channel and the wire classes (what the official stubs
  do), back to back on one thread;
* CPU per heartbeat with many instances; floor: one bare blocking Heartbeat
  unary on a raw channel;
* many instances at TTL 5 from one process: beats sent of those due, and how
  late (p50 / p99 / max) after their due time;
* memory per cached instance (tracemalloc, 100,000 instances in a service);
* propagation from a RegisterInstance answer to the watching listener;
* event-loop lag: a 1 ms ticker's p50 / p99 / max on an asyncio loop while
  instances heartbeat and services are watched (for the blocking front end
  the ticker's loop shares the process with the SDK's threads).

CPU is this process's (every thread, gRPC's included; the server runs in its
own process and is not counted), as ``time.process_time``. The server is
``python -m polaris_sdk.server`` on loopback. Every loop is bounded.

    .venv/bin/python bench/cost_bench.py                 # print the tables (a few minutes)
    .venv/bin/python bench/cost_bench.py --write-readme  # also record them in bench/README.md
    .venv/bin/python bench/cost_bench.py --quick         # smoke run, tiny sizes (seconds)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import datetime
import gc
import inspect
import itertools
import os
import platform
import queue
import random
import statistics
import sys
import time
import tracemalloc
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

from _report import cpu_model, load, paragraph, write_section
from consumer_bench import ServerProcess, wire_response

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import grpc  # noqa: E402

from polaris_sdk import (  # noqa: E402
    AsyncConsumerAPI,
    AsyncProviderAPI,
    AsyncSDKContext,
    ConsumerAPI,
    GetOneInstanceRequest,
    ProviderAPI,
    SDKContext,
    ServiceChangeEvent,
    wire,
)
from polaris_sdk.connector.mock import MockTransport  # noqa: E402

README = ROOT / "bench" / "README.md"
HEADING = "## Cost of keeping caches and registrations alive (bench/cost_bench.py)"
TWINS = ("sync", "async")
FLOOR_PARTS = 3
"""Each floor measurement is this many shorter ones, alternating floors."""


@dataclasses.dataclass(frozen=True)
class Sizes:
    """What one run measures; ``--quick`` shrinks every figure."""

    select_instances: int = 1_000
    select_budget: float = 1.0
    floor_calls: int = 3_000
    idle_services: int = 1_000
    refresh: float = 2.0
    idle_window: float = 10.0
    beat_instances: int = 1_000
    load_instances: int = 5_000
    ttl: int = 5
    beat_window: float = 10.0
    beat_settle: float = 5.0
    memory_instances: int = 100_000
    propagation_samples: int = 30
    lag_instances: int = 1_000
    lag_services: int = 100
    lag_window: float = 10.0
    lag_settle: float = 5.0
    fresh_load_server: bool = True


QUICK = Sizes(
    select_instances=100,
    select_budget=0.1,
    floor_calls=200,
    idle_services=20,
    refresh=0.3,
    idle_window=0.6,
    beat_instances=20,
    load_instances=40,
    ttl=1,
    beat_window=1.0,
    beat_settle=0.2,
    memory_instances=2_000,
    propagation_samples=4,
    lag_instances=20,
    lag_services=5,
    lag_window=0.5,
    lag_settle=0.3,
    fresh_load_server=False,
)


# ------------------------------------------------------------------ helpers


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def per_call(fn: Callable[[], object], budget: float, rounds: int = 3) -> float:
    """Seconds per call of ``fn``: the best of ``rounds`` windows sharing ``budget``."""
    for _ in range(1000):
        fn()
    best = float("inf")
    for _ in range(rounds):
        calls, start = 0, time.perf_counter()
        deadline = start + budget / rounds
        while True:
            for _ in range(1000):
                fn()
            calls += 1000
            now = time.perf_counter()
            if now >= deadline:
                break
        best = min(best, (now - start) / calls)
    return best


async def per_call_async(fn: Callable[[], Awaitable[object]], budget: float) -> float:
    """As :func:`per_call` for a coroutine function, awaited on the running loop."""
    for _ in range(1000):
        await fn()
    best = float("inf")
    for _ in range(3):
        calls, start = 0, time.perf_counter()
        deadline = start + budget / 3
        while True:
            for _ in range(1000):
                await fn()
            calls += 1000
            now = time.perf_counter()
            if now >= deadline:
                break
        best = min(best, (now - start) / calls)
    return best


class Tap:
    """Counts (and times) the calls a context's transport moves, by method.

    Installed on the transport seam (``exchange(call, timeout)``, and
    ``begin(call, timeout)`` where the transport pipelines), the one place
    every naming call of either front end passes through.
    """

    def __init__(self, transport: Any) -> None:
        self.counts: dict[str, int] = {}
        self.beats: list[tuple[str, float]] = []
        for name in ("exchange", "begin"):
            real = getattr(transport, name, None)
            if real is not None:
                setattr(transport, name, self._wrap(real))

    def _note(self, call: Any) -> None:
        method = call.method
        self.counts[method] = self.counts.get(method, 0) + 1
        if method == "Heartbeat":
            self.beats.append((call.request.id.value, time.monotonic()))

    def _wrap(self, real: Callable[..., Any]) -> Callable[..., Any]:
        note = self._note
        if inspect.iscoroutinefunction(real):

            async def tapped_async(call: Any, timeout: float) -> Any:
                note(call)
                return await real(call, timeout)

            return tapped_async

        def tapped(call: Any, timeout: float) -> Any:
            note(call)
            return real(call, timeout)

        return tapped

    def count(self, method: str) -> int:
        return self.counts.get(method, 0)


class Window:
    """CPU and wall time between :meth:`start` and :meth:`stop`."""

    def start(self) -> None:
        self.cpu0, self.wall0 = time.process_time(), time.perf_counter()

    def stop(self) -> None:
        self.cpu = time.process_time() - self.cpu0
        self.wall = time.perf_counter() - self.wall0


def register_plain(address: str, services: list[str]) -> None:
    """One instance per service, without heartbeats (they stay healthy)."""
    with ProviderAPI.create(addresses=[address]) as provider:
        for name in services:
            provider.register(service=name, host="127.0.0.1", port=9000)


# ------------------------------------------------------------------- floors


class RawStub:
    """``v1.PolarisGRPC`` on a raw gRPC channel with the wire classes: what the
    official generated stubs do, without the SDK."""

    def __init__(self, address: str) -> None:
        self.channel = grpc.insecure_channel(address)
        methods = wire.POLARIS_GRPC_METHODS
        self._unary = {
            name: self.channel.unary_unary(
                methods[name].path,
                request_serializer=methods[name].request.SerializeToString,
                response_deserializer=methods[name].response.FromString,
            )
            for name in ("RegisterInstance", "Heartbeat")
        }
        discover = methods["Discover"]
        self._discover = self.channel.stream_stream(
            discover.path,
            request_serializer=discover.request.SerializeToString,
            response_deserializer=discover.response.FromString,
        )

    def unary(self, name: str, request: Any) -> Any:
        return self._unary[name](request, timeout=10)

    def future(self, name: str) -> Callable[..., Any]:
        return self._unary[name].future  # type: ignore[no-any-return]

    def discover_stream(self) -> tuple[queue.SimpleQueue[Any], Iterator[Any]]:
        requests: queue.SimpleQueue[Any] = queue.SimpleQueue()
        answers = self._discover(iter(requests.get, None), timeout=600)
        return requests, answers

    def close(self) -> None:
        self.channel.close()


def discover_request(service: str, revision: str = "") -> Any:
    request = wire.DiscoverRequest(
        service=wire.Service(
            name=wire.StringValue(value=service),
            namespace=wire.StringValue(value="default"),
            revision=wire.StringValue(value=revision),
        )
    )
    request.type = wire.DISCOVER_REQUEST_TYPE.values_by_name["INSTANCE"].number
    return request


def floor_discover(address: str, service: str, calls: int) -> float:
    """CPU seconds of one bare unchanged Discover exchange on an open stream."""
    stub = RawStub(address)
    requests, answers = stub.discover_stream()
    try:
        requests.put(discover_request(service))
        revision = next(answers).service.revision.value
        unchanged = discover_request(service, revision)
        for _ in range(100):
            requests.put(unchanged)
            next(answers)
        cpu0 = time.process_time()
        for _ in range(calls):
            requests.put(unchanged)
            answer = next(answers)
        cpu = time.process_time() - cpu0
        assert answer.code.value == 200001, answer.code.value
        return cpu / calls
    finally:
        requests.put(None)
        stub.close()


FUTURES_BURST = 20
"""Heartbeats per burst of the pipelined reference (a 100 ms slot's share of 200/s)."""


def floor_heartbeat(address: str, calls: int, burst: int = 0) -> float:
    """CPU seconds of one bare blocking Heartbeat unary; with ``burst``, of one of
    ``burst`` unaries started as futures together and then awaited, a pause of
    5 ms between bursts (how a pipelined slot sends them: the reference, not the floor)."""
    stub = RawStub(address)
    try:
        inst = wire.Instance()
        inst.service.value = f"floor-beat-{os.getpid()}"
        inst.namespace.value = "default"
        inst.host.value = "127.0.0.1"
        inst.port.value = 9100
        inst.enable_health_check.value = True
        inst.health_check.type = 1  # HEARTBEAT
        inst.health_check.heartbeat.ttl.value = 5
        answer = stub.unary("RegisterInstance", inst)
        beat = wire.Instance(id=wire.StringValue(value=answer.instance.id.value))
        for _ in range(100):
            stub.unary("Heartbeat", beat)
        if burst:
            send = stub.future("Heartbeat")
            rounds = max(1, calls // burst)
            cpu = 0.0
            for _ in range(rounds):
                time.sleep(0.005)  # the answers are in: gRPC's threads go idle
                cpu0 = time.process_time()
                started = [send(beat, timeout=10) for _ in range(burst)]
                for future in reversed(started):
                    answer = future.result()
                cpu += time.process_time() - cpu0
            assert answer.code.value == 200000, answer.code.value
            return cpu / (rounds * burst)
        cpu0 = time.process_time()
        for _ in range(calls):
            answer = stub.unary("Heartbeat", beat)
        cpu = time.process_time() - cpu0
        assert answer.code.value == 200000, answer.code.value
        return cpu / calls
    finally:
        stub.close()


# ---------------------------------------------------------------- selection


def static_transport(responses: dict[str, Any]) -> MockTransport:
    """Answers Discover from prepared wire answers (200001 when the revision holds)."""

    def handler(method: str, request: Any) -> Any:
        if method != "Discover":
            raise AssertionError(f"unexpected {method}")
        resp = responses[request.service.name.value]
        if request.service.revision.value == resp.service.revision.value:
            unchanged = wire.DiscoverResponse()
            unchanged.code.value = 200001
            unchanged.service.CopyFrom(resp.service)
            return unchanged
        return resp

    return MockTransport(handler)


def selection(sizes: Sizes) -> dict[str, float]:
    service = "select"
    responses = {service: wire_response(service, sizes.select_instances)}
    out: dict[str, float] = {}
    with SDKContext.create(transport=static_transport(responses), refresh_interval=3600) as ctx:
        consumer = ConsumerAPI(ctx)
        listed = list(consumer.get_all_instances(service=service))
        out["random.choice"] = per_call(lambda: random.choice(listed), sizes.select_budget)
        get = consumer.get_one_instance
        out["sync keywords"] = per_call(lambda: get(service=service), sizes.select_budget)
        request = GetOneInstanceRequest(service=service)
        out["sync request"] = per_call(lambda: get(request), sizes.select_budget)

    async def twin() -> None:
        transport = static_transport(responses)
        async with AsyncSDKContext.create(transport=transport, refresh_interval=3600) as actx:
            aget = AsyncConsumerAPI(actx).get_one_instance
            await aget(service=service)
            out["async keywords"] = await per_call_async(
                lambda: aget(service=service), sizes.select_budget
            )
            out["async request"] = await per_call_async(lambda: aget(request), sizes.select_budget)

    asyncio.run(twin())
    return out


# ------------------------------------------------------------------- memory


def memory(sizes: Sizes) -> dict[str, float]:
    """Bytes per cached instance (tracemalloc) of either front end's cache."""
    service = "memory"
    responses = {service: wire_response(service, sizes.memory_instances)}
    out: dict[str, float] = {}

    def traced(read: Callable[[], object]) -> float:
        gc.collect()
        tracemalloc.start()
        base = tracemalloc.get_traced_memory()[0]
        held = read()
        gc.collect()
        grown = tracemalloc.get_traced_memory()[0] - base
        tracemalloc.stop()
        del held
        return grown / sizes.memory_instances

    with SDKContext.create(transport=static_transport(responses), refresh_interval=3600) as ctx:
        consumer = ConsumerAPI(ctx)
        out["sync"] = traced(lambda: consumer.get_all_instances(service=service))

    async def twin() -> None:
        transport = static_transport(responses)
        async with AsyncSDKContext.create(transport=transport, refresh_interval=3600) as actx:
            aconsumer = AsyncConsumerAPI(actx)
            loop = asyncio.get_running_loop()
            gc.collect()
            tracemalloc.start()
            base = tracemalloc.get_traced_memory()[0]
            held = await aconsumer.get_all_instances(service=service)
            gc.collect()
            grown = tracemalloc.get_traced_memory()[0] - base
            tracemalloc.stop()
            del held, loop
            out["async"] = grown / sizes.memory_instances

    asyncio.run(twin())
    return out


# -------------------------------------------------------------- idle checks


def idle_checks(server: ServerProcess, sizes: Sizes, twin: str) -> dict[str, float]:
    """CPU per revision check while ``idle_services`` are watched and nothing changes."""
    names = [f"idle-{twin}-{os.getpid()}-{n}" for n in range(sizes.idle_services)]
    register_plain(server.address, names)
    settle = sizes.refresh * 1.5  # the first refresh round spreads out
    window = Window()

    def noop(event: ServiceChangeEvent) -> None:
        pass

    if twin == "sync":
        with SDKContext.create(addresses=[server.address], refresh_interval=sizes.refresh) as ctx:
            tap = Tap(ctx.connector.transport)
            consumer = ConsumerAPI(ctx)
            for name in names:
                consumer.watch_service(service=name, listeners=[noop])
            time.sleep(settle)
            before = tap.count("Discover")
            window.start()
            time.sleep(sizes.idle_window)
            window.stop()
            checks = tap.count("Discover") - before
    else:

        async def run() -> int:
            async with AsyncSDKContext.create(
                addresses=[server.address], refresh_interval=sizes.refresh
            ) as actx:
                tap = Tap(actx.connector.transport)
                consumer = AsyncConsumerAPI(actx)
                for name in names:
                    await consumer.watch_service(service=name, listeners=[noop])
                await asyncio.sleep(settle)
                before = tap.count("Discover")
                window.start()
                await asyncio.sleep(sizes.idle_window)
                window.stop()
                return tap.count("Discover") - before

        checks = asyncio.run(run())
    return {
        "cpu_per_check": window.cpu / max(1, checks),
        "checks_per_s": checks / window.wall,
        "share": window.cpu / window.wall,
    }


# --------------------------------------------------------------- heartbeats


def _lateness(tap: Tap, registered: dict[str, float], ttl: int, since: float) -> list[float]:
    late: list[float] = []
    for iid, at in tap.beats:
        if at < since or iid not in registered:
            continue
        base = registered[iid]
        k = max(1, round((at - base) / ttl))
        late.append(at - (base + k * ttl))
    return late


def heartbeats(address: str, sizes: Sizes, twin: str, count: int) -> dict[str, float]:
    """``count`` instances at TTL ``sizes.ttl`` from one process: CPU per beat, lateness."""
    service = f"beat-{twin}-{count}-{os.getpid()}"
    registered: dict[str, float] = {}
    window = Window()
    ttl = sizes.ttl

    def measure_window(tap: Tap) -> tuple[int, float]:
        before = tap.count("Heartbeat")
        since = time.monotonic()
        window.start()
        return before, since

    if twin == "sync":
        with ProviderAPI.create(addresses=[address]) as provider:
            tap = Tap(provider.context.connector.transport)
            for i in range(count):
                resp = provider.register_instance(
                    service=service, host="127.0.0.1", port=20000 + i, ttl=ttl
                )
                registered[resp.instance_id] = time.monotonic()
            time.sleep(sizes.beat_settle)  # every instance in its steady rhythm
            before, since = measure_window(tap)
            time.sleep(sizes.beat_window)
            window.stop()
            beats = tap.count("Heartbeat") - before
    else:

        async def run() -> tuple[Tap, int, float]:
            async with AsyncProviderAPI.create(addresses=[address]) as provider:
                tap = Tap(provider.context.connector.transport)
                for i in range(count):
                    resp = await provider.register_instance(
                        service=service, host="127.0.0.1", port=20000 + i, ttl=ttl
                    )
                    registered[resp.instance_id] = time.monotonic()
                await asyncio.sleep(sizes.beat_settle)
                before, since = measure_window(tap)
                await asyncio.sleep(sizes.beat_window)
                window.stop()
                return tap, tap.count("Heartbeat") - before, since

        tap, beats, since = asyncio.run(run())
    late = _lateness(tap, registered, ttl, since)
    return {
        "cpu_per_beat": window.cpu / max(1, beats),
        "beats_per_s": beats / window.wall,
        "due_per_s": count / ttl,
        "p50": pct(late, 0.5),
        "p99": pct(late, 0.99),
        "max": max(late, default=float("nan")),
    }


# -------------------------------------------------------------- propagation


def propagation(address: str, sizes: Sizes, twin: str) -> list[float]:
    """Seconds from each RegisterInstance answer to the listener seeing the instance."""
    tag = f"prop-{twin}-{os.getpid()}"
    names = [f"{tag}-{n}" for n in range(sizes.propagation_samples)]
    arrived: dict[str, float] = {}
    registered: dict[str, float] = {}
    rng = random.Random(1)
    bound = sizes.refresh * 3 + 5

    def listener(event: ServiceChangeEvent) -> None:
        if event.added:
            arrived.setdefault(event.service, time.perf_counter())

    with ProviderAPI.create(addresses=[address]) as provider:
        if twin == "sync":
            with SDKContext.create(addresses=[address], refresh_interval=sizes.refresh) as ctx:
                consumer = ConsumerAPI(ctx)
                for name in names:
                    consumer.watch_service(service=name, listeners=[listener])
                for name in names:
                    # Random spacing samples every phase of the refresh cycle.
                    time.sleep(rng.uniform(0, sizes.refresh / 5))
                    provider.register(service=name, host="127.0.0.1", port=9000)
                    registered[name] = time.perf_counter()
                deadline = time.monotonic() + bound
                while len(arrived) < len(names) and time.monotonic() < deadline:
                    time.sleep(0.01)
        else:

            async def run() -> None:
                async with AsyncSDKContext.create(
                    addresses=[address], refresh_interval=sizes.refresh
                ) as actx:
                    consumer = AsyncConsumerAPI(actx)
                    for name in names:
                        await consumer.watch_service(service=name, listeners=[listener])
                    for name in names:
                        await asyncio.sleep(rng.uniform(0, sizes.refresh / 5))
                        # A blocking register in a thread: the loop keeps running.
                        await asyncio.to_thread(
                            provider.register, service=name, host="127.0.0.1", port=9000
                        )
                        registered[name] = time.perf_counter()
                    deadline = time.monotonic() + bound
                    while len(arrived) < len(names) and time.monotonic() < deadline:
                        await asyncio.sleep(0.01)

            asyncio.run(run())
    missing = len(names) - len(arrived)
    if missing:
        print(f"warning: {missing} registrations never reached the listener", file=sys.stderr)
    return sorted(arrived[n] - registered[n] for n in names if n in arrived)


# ----------------------------------------------------------- event-loop lag


async def ticker(window: float) -> list[float]:
    """How late a 1 ms sleep wakes, over ``window`` seconds."""
    lags: list[float] = []
    end = time.perf_counter() + window
    while True:
        start = time.perf_counter()
        if start >= end:
            return lags
        await asyncio.sleep(0.001)
        lags.append(time.perf_counter() - start - 0.001)


def loop_lag(address: str, sizes: Sizes, twin: str) -> list[float]:
    """The ticker's lag while ``lag_instances`` heartbeat and ``lag_services`` are watched."""
    services = [f"lag-{twin}-{os.getpid()}-{n}" for n in range(sizes.lag_services)]
    register_plain(address, services)
    service = f"lag-beat-{twin}-{os.getpid()}"
    settle = sizes.lag_settle

    def noop(event: ServiceChangeEvent) -> None:
        pass

    if twin == "sync":
        with (
            SDKContext.create(addresses=[address], refresh_interval=sizes.refresh) as ctx,
            ProviderAPI(ctx) as provider,
        ):
            consumer = ConsumerAPI(ctx)
            for name in services:
                consumer.watch_service(service=name, listeners=[noop])
            for i in range(sizes.lag_instances):
                provider.register_instance(
                    service=service, host="127.0.0.1", port=30000 + i, ttl=sizes.ttl
                )
            time.sleep(settle)
            return asyncio.run(ticker(sizes.lag_window))

    async def run() -> list[float]:
        async with AsyncSDKContext.create(
            addresses=[address], refresh_interval=sizes.refresh
        ) as actx:
            provider = AsyncProviderAPI(actx)
            consumer = AsyncConsumerAPI(actx)
            for name in services:
                await consumer.watch_service(service=name, listeners=[noop])
            for i in range(sizes.lag_instances):
                await provider.register_instance(
                    service=service, host="127.0.0.1", port=30000 + i, ttl=sizes.ttl
                )
            await asyncio.sleep(settle)
            lags = await ticker(sizes.lag_window)
            await provider.aclose()
            return lags

    return asyncio.run(run())


# ------------------------------------------------------------------- report


@dataclasses.dataclass
class Results:
    sizes: Sizes
    select: dict[str, float] = dataclasses.field(default_factory=dict)
    floor_discover: float = 0.0
    floor_heartbeat: float = 0.0
    futures_heartbeat: float = 0.0
    idle: dict[str, dict[str, float]] = dataclasses.field(default_factory=dict)
    beat: dict[str, dict[str, float]] = dataclasses.field(default_factory=dict)
    load: dict[str, dict[str, float]] = dataclasses.field(default_factory=dict)
    memory: dict[str, float] = dataclasses.field(default_factory=dict)
    propagation: dict[str, list[float]] = dataclasses.field(default_factory=dict)
    lag: dict[str, list[float]] = dataclasses.field(default_factory=dict)


def _us(seconds: float) -> str:
    return f"{seconds * 1e6:,.2f} µs" if seconds < 1e-5 else f"{seconds * 1e6:,.0f} µs"


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:,.1f} ms"


def cost_table(r: Results) -> list[str]:
    s = r.sizes
    choice = r.select["random.choice"]
    lines = [
        "| figure | front end | measured | floor, same run | ratio | this issue |",
        "|---|---|---:|---:|---:|---|",
    ]
    rows: list[tuple[str, str, str, str, str, str]] = []
    for twin in TWINS:
        rows.append(
            (
                f"warm `get_one_instance(service=...)` (keywords), {s.select_instances:,} "
                "weighted instances",
                twin,
                _us(r.select[f"{twin} keywords"]),
                f"`random.choice` on a list: {_us(choice)}",
                f"{r.select[f'{twin} keywords'] / choice:.1f}x",
                "<= 3x",
            )
        )
    for twin in TWINS:
        rows.append(
            (
                "same, prepared request object",
                twin,
                _us(r.select[f"{twin} request"]),
                f"`random.choice`: {_us(choice)}",
                f"{r.select[f'{twin} request'] / choice:.1f}x",
                "<= 2.5x",
            )
        )
    for twin in TWINS:
        idle = r.idle[twin]
        rows.append(
            (
                f"CPU per idle revision check, {s.idle_services:,} watched services at "
                f"{s.refresh:g} s ({idle['checks_per_s']:,.0f} checks/s, "
                f"{idle['share']:.1%} of a core)",
                twin,
                _us(idle["cpu_per_check"]),
                f"bare unchanged Discover on an open stream: {_us(r.floor_discover)}",
                f"{idle['cpu_per_check'] / r.floor_discover:.2f}x",
                "<= 1.3x",
            )
        )
    for twin in TWINS:
        beat = r.beat[twin]
        rows.append(
            (
                f"CPU per heartbeat, {s.beat_instances:,} instances at TTL {s.ttl} "
                f"({beat['beats_per_s']:,.0f} beats/s)",
                twin,
                _us(beat["cpu_per_beat"]),
                f"bare blocking Heartbeat unary: {_us(r.floor_heartbeat)}",
                f"{beat['cpu_per_beat'] / r.floor_heartbeat:.2f}x",
                "<= 1.3x",
            )
        )
    for twin in TWINS:
        ld = r.load[twin]
        rows.append(
            (
                f"{s.load_instances:,} instances at TTL {s.ttl} from one process",
                twin,
                f"{ld['beats_per_s']:,.0f} beats/s of {ld['due_per_s']:,.0f} due; lateness "
                f"p50 {_ms(ld['p50'])}, p99 {_ms(ld['p99'])}, max {_ms(ld['max'])}",
                "",
                "",
                "all beats on time, lateness p99 <= 50 ms",
            )
        )
    for twin in TWINS:
        rows.append(
            (
                f"memory per cached instance ({s.memory_instances:,} instances)",
                twin,
                f"{r.memory[twin]:,.0f} B",
                "",
                "",
                "<= 512 B",
            )
        )
    for twin in TWINS:
        values = r.propagation[twin]
        rows.append(
            (
                f"propagation at {s.refresh:g} s refresh, max ({len(values)} samples)",
                twin,
                f"{_ms(max(values, default=float('nan')))} (p50 {_ms(pct(values, 0.5))}, "
                f"p99 {_ms(pct(values, 0.99))})",
                "",
                "",
                f"<= refresh + 50 ms ({s.refresh * 1000 + 50:,.0f} ms), max too",
            )
        )
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def twin_table(r: Results) -> list[str]:
    s = r.sizes
    lines = [
        "| figure | sync | async | async / sync |",
        "|---|---:|---:|---:|",
    ]

    def row(name: str, sync: float, asy: float, fmt: Callable[[float], str]) -> None:
        lines.append(f"| {name} | {fmt(sync)} | {fmt(asy)} | {asy / sync:.2f} |")

    row("CPU per heartbeat", r.beat["sync"]["cpu_per_beat"], r.beat["async"]["cpu_per_beat"], _us)
    row(
        "CPU per revision check",
        r.idle["sync"]["cpu_per_check"],
        r.idle["async"]["cpu_per_check"],
        _us,
    )
    row(
        "warm `get_one_instance` (keywords)",
        r.select["sync keywords"],
        r.select["async keywords"],
        _us,
    )
    for name, q in (("p50", 0.5), ("p99", 0.99), ("max", 1.0)):
        row(
            f"event-loop lag, 1 ms ticker, {name} ({s.lag_instances:,} instances "
            f"heartbeating, {s.lag_services:,} services watched)",
            pct(r.lag["sync"], q),
            pct(r.lag["async"], q),
            _ms,
        )
    return lines


def versions() -> str:
    import google.protobuf

    return f"grpcio {grpc.__version__}, protobuf {google.protobuf.__version__}"


def render(r: Results, before: str, after: str, quick: bool) -> str:
    s = r.sizes
    machine = (
        f"{cpu_model()}, {os.cpu_count()} cores, Python {platform.python_version()} "
        f"({versions()}), {platform.system()}"
    )
    intro = (
        f"Measured {datetime.date.today().isoformat()} on {machine}; load averages (1, 5, 15 "
        f"min) {before} before the run and {after} after"
        + (" (a --quick smoke run: tiny sizes, figures not meaningful)." if quick else ".")
    )
    how = (
        "Each figure beside a floor measured in the same run, as a ratio (absolute times "
        "drift with the load on a shared machine, ratios much less). CPU is the SDK "
        "process's CPU time (all threads, gRPC's included) over the window, divided by the "
        "calls the context's transport moved in it; the server is `python -m "
        "polaris_sdk.server` in its own process on loopback and is not counted. Floors: "
        "selection, `random.choice` on a list of the same instances; revision check, one "
        "unchanged Discover exchange on an open stream made with a raw gRPC channel and "
        "the wire classes (what the official stubs do), back to back on one thread; "
        "heartbeat, one blocking Heartbeat unary on a raw channel, back to back; each the "
        "median of nine measurements (three alternating short ones before, between and "
        "after the two twins' figures). On this shared machine the CPU ratios of two full "
        "runs on one day differed by up to a third (the floors by up to 2x): read one "
        "run's CPU ratio as give or take 0.3. "
        "Selection "
        "and memory read a service from an in-process transport (`MockTransport`). "
        f"Heartbeat figures start {s.beat_settle:g} s after the last registration, over "
        f"{s.beat_window:g} s; lateness is how long after its due time (registration time "
        "plus k x TTL) each beat was sent. Propagation: registrations at random moments "
        "of the refresh cycle, each into its own watched service, from the RegisterInstance "
        "answer to the listener."
    )
    lag = (
        "Event-loop lag: a task sleeping 1 ms in a loop on an asyncio event loop, how much "
        f"later than 1 ms it wakes, over {s.lag_window:g} s, while {s.lag_instances:,} "
        f"instances heartbeat at TTL {s.ttl} and {s.lag_services:,} services are watched "
        f"at {s.refresh:g} s. async: everything on that loop; sync: the loop shares the "
        "process (and the GIL) with the SDK's threads."
    )
    futures = r.futures_heartbeat
    reference = (
        "Reference for heartbeats (not the floor): a pipelined slot starts its beats as "
        "gRPC futures and then awaits them; completing a future passes through grpcio's "
        "channel thread, one thread hand-off the blocking floor does not have. Bare, "
        f"without the SDK, in bursts of {FUTURES_BURST} (5 ms apart): {_us(futures)} per "
        f"beat, {futures / r.floor_heartbeat:.2f}x the blocking floor; the blocking "
        f"front end's beat is {r.beat['sync']['cpu_per_beat'] / futures:.2f}x that."
    )
    run = (
        "Run it: `.venv/bin/python bench/cost_bench.py` (a few minutes) prints this "
        "section, `--write-readme` records it here, `--quick` is a smoke run with tiny "
        "sizes (a test runs it)."
    )
    lines = [
        HEADING,
        "",
        *paragraph(intro),
        "",
        *paragraph(how),
        "",
        *cost_table(r),
        "",
        *paragraph(reference),
        "",
        "**asyncio twin vs blocking front end**, same run:",
        "",
        *twin_table(r),
        "",
        *paragraph(lag),
        "",
        *paragraph(run),
        "",
    ]
    return "\n".join(lines)


def measure(sizes: Sizes) -> Results:
    r = Results(sizes)
    step = itertools.count(1)

    def say(what: str) -> None:
        print(f"[{next(step)}] {what} ...", file=sys.stderr, flush=True)

    say("selection")
    r.select = selection(sizes)
    say("memory")
    r.memory = memory(sizes)
    server = ServerProcess()
    try:
        say("floors")
        floor_service = f"floor-{os.getpid()}"
        register_plain(server.address, [floor_service])
        floors: list[tuple[float, float]] = []
        futures: list[float] = []

        def measure_floors() -> None:
            # Three short measurements of each, alternating: the machine's load
            # moves within seconds, and the median of many resists a spike.
            calls = max(100, sizes.floor_calls // FLOOR_PARTS)
            for _ in range(FLOOR_PARTS):
                floors.append(
                    (
                        floor_discover(server.address, floor_service, calls),
                        floor_heartbeat(server.address, calls),
                    )
                )
                futures.append(floor_heartbeat(server.address, calls, FUTURES_BURST))

        measure_floors()
        for twin in TWINS:
            say(f"idle revision checks, {twin}")
            r.idle[twin] = idle_checks(server, sizes, twin)
            say(f"heartbeats, {twin}")
            r.beat[twin] = heartbeats(server.address, sizes, twin, sizes.beat_instances)
            say(f"propagation, {twin}")
            r.propagation[twin] = propagation(server.address, sizes, twin)
            say(f"event-loop lag, {twin}")
            r.lag[twin] = loop_lag(server.address, sizes, twin)
            say("floors")
            measure_floors()
        # The median of the floors taken before, between and after the figures.
        r.floor_discover = statistics.median(d for d, _ in floors)
        r.floor_heartbeat = statistics.median(h for _, h in floors)
        r.futures_heartbeat = statistics.median(futures)
        for twin in TWINS:
            if sizes.fresh_load_server:
                # The instances registered above must not load this figure's server.
                server.stop()
                server = ServerProcess()
            say(f"{sizes.load_instances:,} instances, {twin}")
            r.load[twin] = heartbeats(server.address, sizes, twin, sizes.load_instances)
    finally:
        server.stop()
    return r


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run with tiny sizes")
    parser.add_argument("--write-readme", action="store_true", help="update bench/README.md")
    args = parser.parse_args()
    sizes = QUICK if args.quick else Sizes()
    before = load()
    results = measure(sizes)
    section = render(results, before, load(), args.quick)
    print(section)
    if args.write_readme:
        write_section(README, HEADING, section)
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        raise SystemExit(main())
