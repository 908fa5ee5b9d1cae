"""The polaris_sdk side of the peer comparison (runs in the project's venv).

One process per measurement, driven by ``run.py`` (see ``common.py`` for the
protocol); the server is ``python -m polaris_sdk.server`` in its own process.

* ``rtt``: ``register_instance`` round trips, one at a time (each instance
  deregistered again, outside the timing, so every sample meets the same
  state).
* ``propagation``: a ``ConsumerAPI`` watching one service at ``--refresh``;
  ``--count`` registrations at random moments over ``--window`` seconds; each
  sample runs from the start of ``register_instance`` to the listener seeing
  the instance.
* ``provider``: register one instance (TTL ``--ttl``) and keep it alive until
  killed; ``detect`` starts such providers, SIGKILLs them and times how long
  ``get_instances`` (default refresh) keeps returning them. A second, live
  instance stays registered so the routers' "nothing healthy: return all"
  fallback cannot hide the change.
* ``keep``: register ``--count`` instances and keep them alive until stopped
  (run.py measures this process's CPU meanwhile).
* ``watch``: watch the service ``keep`` registered; reports RSS once all
  instances are in the cache, then, on ``select``, ``get_one_instance`` calls/s.
"""

from __future__ import annotations

import functools
import gc
import logging
import random
import sys
import threading
import time
from pathlib import Path
from typing import Any

import common

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from polaris_sdk import ConsumerAPI, ProviderAPI, ServiceChangeEvent  # noqa: E402

SCRIPT = str(Path(__file__).resolve())


def register_fields(service: str, port: int, ttl: float) -> dict[str, Any]:
    value = common.instance_value(port)
    return {
        "service": service,
        "host": value["host"],
        "port": port,
        "protocol": value["protocol"],
        "version": value["version"],
        "weight": value["weight"],
        "metadata": value["metadata"],
        "ttl": max(1, round(ttl)),
    }


def rtt(args: Any) -> None:
    samples: list[float] = []
    service = f"{args.prefix}-rtt"
    with ProviderAPI.create(addresses=[args.target]) as provider:
        for n in range(20 + args.count):
            fields = register_fields(service, 40000 + n, 5)
            started = time.perf_counter()
            provider.register_instance(**fields)
            elapsed = time.perf_counter() - started
            provider.deregister(service=service, host=fields["host"], port=fields["port"])
            if n >= 20:
                samples.append(elapsed)
    common.emit("result", {"series": {"register_instance": samples}})


def propagation(args: Any) -> None:
    service = f"{args.prefix}-prop-{int(args.refresh * 1000)}ms"
    arrived: dict[int, float] = {}
    lock = threading.Lock()

    def listener(event: ServiceChangeEvent) -> None:
        now = time.perf_counter()
        with lock:
            for instance in event.added:
                arrived.setdefault(instance.port, now)

    started: dict[int, float] = {}
    with (
        ConsumerAPI.create(addresses=[args.target], refresh_interval=args.refresh) as consumer,
        ProviderAPI.create(addresses=[args.target]) as provider,
    ):
        consumer.watch_service(service=service, listeners=[listener])
        origin = time.monotonic()
        for n, offset in enumerate(common.moments(args.count, args.window, args.seed)):
            time.sleep(max(0.0, origin + offset - time.monotonic()))
            port = 41000 + n
            started[port] = time.perf_counter()
            provider.register_instance(**register_fields(service, port, 5))

        def all_arrived() -> bool:
            with lock:
                return len(arrived) >= len(started)

        common.poll(all_arrived, 2 * args.refresh + 10, 0.05)
    with lock:
        samples = [arrived[p] - t for p, t in started.items() if p in arrived]
    common.emit(
        "result",
        {"series": {"register -> listener": samples}, "missing": len(started) - len(samples)},
    )


def provider(args: Any) -> None:
    with ProviderAPI.create(addresses=[args.target]) as api:
        api.register_instance(**register_fields(args.prefix, args.port, args.ttl))
        common.emit("ready")
        common.command()


def detect(args: Any) -> None:
    service = f"{args.prefix}-detect-ttl{round(args.ttl)}"
    first_port = 42000 + 100 * round(args.ttl)
    with (
        ProviderAPI.create(addresses=[args.target]) as keeper,
        ConsumerAPI.create(addresses=[args.target]) as consumer,
    ):
        keeper.register_instance(**register_fields(service, first_port - 1, 5))

        def visible(port: int) -> bool:
            return any(i.port == port for i in consumer.get_instances(service=service))

        def spawn(port: int) -> common.Child:
            return common.Child(
                common.provider_argv(
                    SCRIPT,
                    [
                        "provider",
                        "--target",
                        args.target,
                        "--prefix",
                        service,
                        "--port",
                        str(port),
                        "--ttl",
                        str(args.ttl),
                    ],
                )
            )

        result = common.run_detection(
            label=f"polaris ttl {args.ttl:g}",
            samples=args.samples,
            spawn=spawn,
            visible=visible,
            kill_after=lambda: args.ttl,
            bound=3 * args.ttl + 30,
            first_port=first_port,
        )
    common.emit("result", result)


def keep(args: Any) -> None:
    service = f"{args.prefix}-keep"
    with ProviderAPI.create(addresses=[args.target]) as api:
        started = time.perf_counter()
        for n in range(args.count):
            api.register_instance(**register_fields(service, 20000 + n, args.ttl))
        common.emit(
            "ready",
            {"register_s": time.perf_counter() - started, "threads": threading.active_count()},
        )
        common.command()


def watch(args: Any) -> None:
    service = f"{args.prefix}-keep"
    gc.collect()
    baseline = common.rss_bytes()
    with ConsumerAPI.create(addresses=[args.target]) as consumer:
        started = time.perf_counter()
        consumer.watch_service(service=service, listeners=[lambda event: None])
        if not common.poll(
            lambda: len(consumer.get_all_instances(service=service)) >= args.count, 60, 0.05
        ):
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
                listed = list(consumer.get_all_instances(service=service))
                rates = {
                    "get_one_instance": common.calls_per_second(
                        lambda: consumer.get_one_instance(service=service), args.budget
                    ),
                    "random.choice": common.calls_per_second(
                        functools.partial(random.choice, listed), args.budget
                    ),
                }
                common.emit("result", {"rates": rates})


MODES = {
    "rtt": rtt,
    "propagation": propagation,
    "provider": provider,
    "detect": detect,
    "keep": keep,
    "watch": watch,
}


def main() -> None:
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    args = common.parser(__doc__.splitlines()[0]).parse_args()
    common.check_bounds(args)
    MODES[args.mode](args)


if __name__ == "__main__":
    main()
