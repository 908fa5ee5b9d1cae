"""The etcd side of the peer comparison (runs in bench/peers/.venv, client aetcd).

A service instance is a key ``/services/<service>/<host:port>`` whose value is
the instance as JSON, attached to a lease; the consumer lists the prefix once
and then follows a prefix watch from the next revision, keeping a dict and a
list of instances (what a hand-written etcd discovery client does). All etcd
calls run on one asyncio loop in a background thread; a timed sequence
(registration, propagation) runs inside the loop as one coroutine, so no
thread hop is timed. Every RPC has a 5 s timeout.

* ``rtt``: lease grant + put (a new registration), and put on an existing
  lease, one at a time; each key is removed again outside the timing.
* ``propagation``: lease grant + put at random moments; until the watch
  delivers the key to the consumer's view.
* ``provider``: one key on a lease of ``--ttl`` seconds, kept alive every
  TTL / 3 (etcd clientv3's cadence) until killed; ``detect`` SIGKILLs such
  providers and times until the key leaves the consumer's view.
* ``keep``: ``--count`` keys, each on its own lease kept alive every TTL / 3,
  or with ``--shared-lease`` all on one lease.
* ``watch``: view of the ``keep`` prefix; RSS once complete, then on
  ``select`` ``random.choice`` over the watched list, calls/s.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import random
import sys
import threading
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import aetcd
import common

SCRIPT = str(Path(__file__).resolve())
RPC_TIMEOUT = 5
T = TypeVar("T")
KEEP_ALIVES: list[asyncio.Task[None]] = []


class Loop:
    """One asyncio loop on a thread of its own, stopped by close()."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(
            target=self.loop.run_forever, name="polaris-bench-etcd-loop", daemon=True
        )
        self.thread.start()

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 120) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        async def cancel_all() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        with contextlib.suppress(Exception):
            self.call(cancel_all(), 30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(30)
        self.loop.close()


async def connect(target: str) -> aetcd.Client:
    host, port = target.rsplit(":", 1)
    client = aetcd.Client(host, int(port), timeout=RPC_TIMEOUT)
    await client.connect()
    return client


def key_prefix(service: str) -> bytes:
    return f"/services/{service}/".encode()


def key_of(service: str, port: int) -> bytes:
    return key_prefix(service) + common.instance_name(port).encode()


def value_of(port: int) -> bytes:
    return json.dumps(common.instance_value(port)).encode()


async def register(client: aetcd.Client, service: str, port: int, ttl: int) -> Any:
    lease = await client.lease(ttl)
    await client.put(key_of(service, port), value_of(port), lease=lease)
    return lease


class View:
    """The consumer's picture of one service: list once, then follow a watch."""

    def __init__(self, client: aetcd.Client, service: str) -> None:
        self.client = client
        self.prefix = key_prefix(service)
        self.items: dict[str, dict[str, Any]] = {}
        self.instances: list[dict[str, Any]] = []
        self.arrived: dict[str, float] = {}
        self.task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        listing = await self.client.get_prefix(self.prefix)
        for kv in listing.kvs:
            self.items[kv.key[len(self.prefix) :].decode()] = json.loads(kv.value)
        self.instances = list(self.items.values())
        watch = await self.client.watch_prefix(
            self.prefix, start_revision=listing.header.revision + 1
        )
        self.task = asyncio.create_task(self._follow(watch))

    async def _follow(self, watch: Any) -> None:
        async for event in watch:
            name = event.kv.key[len(self.prefix) :].decode()
            if event.kind == "PUT":
                self.items[name] = json.loads(event.kv.value)
                self.arrived.setdefault(name, time.perf_counter())
            else:
                self.items.pop(name, None)
            self.instances = list(self.items.values())


async def keep_alive(lease: Any, ttl: int, first_delay: float) -> None:
    await asyncio.sleep(first_delay)
    while True:
        try:
            await lease.refresh()
        except aetcd.exceptions.ClientError as err:
            common.log(f"lease keep-alive failed: {err}")
        await asyncio.sleep(ttl / 3)


# ------------------------------------------------------------------ modes


async def rtt_run(args: Any) -> dict[str, Any]:
    service = f"{args.prefix}-rtt"
    client = await connect(args.target)
    fresh: list[float] = []
    reused: list[float] = []
    try:
        shared = await client.lease(60)
        for n in range(20 + args.count):
            started = time.perf_counter()
            lease = await register(client, service, 40000 + n, 10)
            elapsed = time.perf_counter() - started
            await lease.revoke()
            started = time.perf_counter()
            await client.put(key_of(service, 50000 + n), value_of(50000 + n), lease=shared)
            elapsed_reused = time.perf_counter() - started
            await client.delete(key_of(service, 50000 + n))
            if n >= 20:
                fresh.append(elapsed)
                reused.append(elapsed_reused)
        await shared.revoke()
    finally:
        await client.close()
    return {"series": {"lease grant + put": fresh, "put on an existing lease": reused}}


async def propagation_run(args: Any) -> dict[str, Any]:
    service = f"{args.prefix}-prop"
    consumer, registrar = await connect(args.target), await connect(args.target)
    started: dict[str, float] = {}
    try:
        view = View(consumer, service)
        await view.start()
        origin = time.monotonic()
        for n, offset in enumerate(common.moments(args.count, args.window, args.seed)):
            await asyncio.sleep(max(0.0, origin + offset - time.monotonic()))
            port = 41000 + n
            started[common.instance_name(port)] = time.perf_counter()
            await register(registrar, service, port, 60)
        deadline = time.monotonic() + 10
        while len(view.arrived) < len(started) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
    finally:
        await registrar.close()
        await consumer.close()
    samples = [view.arrived[k] - t for k, t in started.items() if k in view.arrived]
    return {"series": {"register -> watch": samples}, "missing": len(started) - len(samples)}


async def provider_run(args: Any) -> None:
    ttl = max(1, round(args.ttl))
    client = await connect(args.target)
    lease = await register(client, args.prefix, args.port, ttl)
    task = asyncio.create_task(keep_alive(lease, ttl, ttl / 3))
    common.emit("ready")
    await asyncio.to_thread(common.command)
    task.cancel()
    await client.close()


def detect(loop: Loop, args: Any) -> dict[str, Any]:
    ttl = max(1, round(args.ttl))
    service = f"{args.prefix}-detect-ttl{ttl}"
    client = loop.call(connect(args.target))
    view = View(client, service)
    loop.call(view.start())

    def spawn(port: int) -> common.Child:
        argv = ["provider", "--target", args.target, "--prefix", service]
        argv += ["--port", str(port), "--ttl", str(ttl)]
        return common.Child(common.provider_argv(SCRIPT, argv))

    try:
        return common.run_detection(
            label=f"etcd lease {ttl}",
            samples=args.samples,
            spawn=spawn,
            visible=lambda port: common.instance_name(port) in view.items,
            kill_after=lambda: ttl / 3,
            bound=ttl + 30,
            first_port=43000 + 100 * ttl,
        )
    finally:
        loop.call(client.close())


async def keep_start(args: Any) -> tuple[aetcd.Client, dict[str, Any]]:
    ttl = max(1, round(args.ttl))
    service = f"{args.prefix}-keep"
    client = await connect(args.target)
    rng = random.Random(args.seed)
    started = time.perf_counter()
    shared = await client.lease(ttl) if args.shared_lease else None
    leases = [shared] if shared is not None else []
    for n in range(args.count):
        port = 20000 + n
        if shared is None:
            leases.append(await register(client, service, port, ttl))
        else:
            await client.put(key_of(service, port), value_of(port), lease=shared)
    elapsed = time.perf_counter() - started
    # Spread over the cycle, as leases granted over time would be. The loop
    # holds the tasks until Loop.close() cancels them.
    KEEP_ALIVES.extend(
        asyncio.create_task(keep_alive(lease, ttl, rng.uniform(0, ttl / 3))) for lease in leases
    )
    return client, {"register_s": elapsed, "leases": len(leases)}


def keep(loop: Loop, args: Any) -> None:
    client, info = loop.call(keep_start(args))
    common.emit("ready", {**info, "threads": threading.active_count()})
    common.command()
    loop.call(client.close())


def watch(loop: Loop, args: Any) -> None:
    gc.collect()
    baseline = common.rss_bytes()
    started = time.perf_counter()
    client = loop.call(connect(args.target))
    view = View(client, f"{args.prefix}-keep")
    loop.call(view.start())
    if not common.poll(lambda: len(view.items) >= args.count, 60, 0.05):
        raise SystemExit(f"the consumer did not see {args.count} instances in 60 s")
    load_s = time.perf_counter() - started
    gc.collect()
    common.emit(
        "ready",
        {
            "rss": common.rss_bytes(),
            "baseline": baseline,
            "load_s": load_s,
            "threads": threading.active_count(),
        },
    )
    while (cmd := common.command()) != "stop":
        if cmd == "select":
            rate = common.calls_per_second(lambda: random.choice(view.instances), args.budget)
            common.emit("result", {"rates": {"random.choice over the watched list": rate}})
    loop.call(client.close())


def main() -> None:
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    args = common.parser(__doc__.splitlines()[0]).parse_args()
    common.check_bounds(args)
    if args.mode == "provider":
        asyncio.run(provider_run(args))
        return
    loop = Loop()
    try:
        if args.mode == "rtt":
            common.emit("result", loop.call(rtt_run(args), 300))
        elif args.mode == "propagation":
            common.emit("result", loop.call(propagation_run(args), 300))
        elif args.mode == "detect":
            common.emit("result", detect(loop, args))
        elif args.mode == "keep":
            keep(loop, args)
        elif args.mode == "watch":
            watch(loop, args)
    finally:
        loop.close()


if __name__ == "__main__":
    main()
