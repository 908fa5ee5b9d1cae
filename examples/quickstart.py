"""Quickstart: register three instances, watch them, pick some, deregister one.

Talks to the Polaris server named by ``POLARIS_ADDRESSES`` (``host:port``,
comma separated) or, when that is not set, to an embedded server started
here on a free loopback port. Run it with ``make demo`` or::

    python examples/quickstart.py
"""

from __future__ import annotations

import contextlib
import os
import queue

from polaris_sdk import ConsumerAPI, ProviderAPI, SDKContext, ServiceChangeEvent
from polaris_sdk.server import PolarisServer

SERVICE = "quickstart-echo"
WAIT = 10.0  # seconds to wait for an event before giving up


def describe(event: ServiceChangeEvent) -> str:
    parts = [f"{len(event.instances)} instances"]
    if event.added:
        parts.append("added " + ", ".join(i.address for i in event.added))
    if event.updated:
        parts.append("updated " + ", ".join(new.address for _, new in event.updated))
    if event.deleted:
        parts.append("deleted " + ", ".join(i.address for i in event.deleted))
    return f"event: {'; '.join(parts)}"


def main() -> None:
    with contextlib.ExitStack() as stack:
        if os.environ.get("POLARIS_ADDRESSES"):
            ctx = stack.enter_context(SDKContext.create(refresh_interval=0.5))
        else:
            server = stack.enter_context(PolarisServer(grpc_port=0))
            print(f"embedded Polaris server on {server.grpc_address}")
            ctx = stack.enter_context(
                SDKContext.create(addresses=[server.grpc_address], refresh_interval=0.5)
            )
        # Closed in reverse: the consumer, then the provider (which
        # deregisters what it registered), then the context.
        provider = stack.enter_context(ProviderAPI(ctx))
        consumer = stack.enter_context(ConsumerAPI(ctx))

        events: queue.Queue[ServiceChangeEvent] = queue.Queue()
        consumer.watch_service(namespace="default", service=SERVICE, listeners=[events.put])
        print(describe(events.get(timeout=WAIT)))  # the current snapshot comes first

        for port, weight in ((8081, 100), (8082, 100), (8083, 200)):
            provider.register_instance(
                namespace="default",
                service=SERVICE,
                host="127.0.0.1",
                port=port,
                weight=weight,
                metadata={"version": "v1"},
                ttl=5,
            )
        event = events.get(timeout=WAIT)
        print(describe(event))
        while len(event.instances) < 3:  # registrations may arrive in several events
            event = events.get(timeout=WAIT)
            print(describe(event))

        picks = [consumer.get_one_instance(service=SERVICE).port for _ in range(8)]
        print(f"weightedRandom picks: {picks}")
        sticky = {
            consumer.get_one_instance(
                service=SERVICE, lb_policy="ringHash", hash_key="user-42"
            ).address
            for _ in range(5)
        }
        print(f"ringHash for user-42: {sorted(sticky)}")
        turns = [
            consumer.get_one_instance(service=SERVICE, lb_policy="roundRobin").port
            for _ in range(6)
        ]
        print(f"roundRobin picks: {turns}")

        provider.deregister(namespace="default", service=SERVICE, host="127.0.0.1", port=8082)
        event = events.get(timeout=WAIT)
        while not event.deleted:
            event = events.get(timeout=WAIT)
        print(describe(event))
        remaining = sorted(i.port for i in consumer.get_instances(service=SERVICE))
        print(f"healthy instances now: {remaining}")
    print("done")


if __name__ == "__main__":
    main()
