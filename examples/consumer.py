"""The consumer side in more detail: filters, load balancers, events and connection state.

Registers three instances of a service through ProviderAPI (two in the
"blue" group, one in "green", one of them weighted double), then shows what
ConsumerAPI offers: the full list and the healthy list, a metadata filter and
its fallback, the three load balancers, change events while an instance is
updated and deregistered, and the cache's connection state.

Uses the server named by ``POLARIS_ADDRESSES`` or starts an embedded one::

    python examples/consumer.py
"""

from __future__ import annotations

import collections
import contextlib
import os
import queue

from polaris_sdk import (
    ConnectionState,
    ConsumerAPI,
    GetOneInstanceRequest,
    ProviderAPI,
    SDKContext,
    ServiceChangeEvent,
    ServiceKey,
    WatchServiceRequest,
)
from polaris_sdk.server import PolarisServer

NAMESPACE = "default"
SERVICE = "consumer-example"
HOST = "127.0.0.1"
WAIT = 10.0


def open_context(stack: contextlib.ExitStack) -> SDKContext:
    if os.environ.get("POLARIS_ADDRESSES"):
        return stack.enter_context(SDKContext.create(refresh_interval=0.5))
    server = stack.enter_context(PolarisServer(grpc_port=0))
    print(f"embedded Polaris server on {server.grpc_address}")
    return stack.enter_context(
        SDKContext.create(addresses=[server.grpc_address], refresh_interval=0.5)
    )


def next_change(events: queue.Queue[ServiceChangeEvent]) -> ServiceChangeEvent:
    event = events.get(timeout=WAIT)
    added = [i.address for i in event.added]
    updated = [
        f"{new.address} {dict(old.metadata)} -> {dict(new.metadata)}" for old, new in event.updated
    ]
    deleted = [i.address for i in event.deleted]
    print(f"  event rev {event.revision[:8]}: added={added} updated={updated} deleted={deleted}")
    return event


def main() -> None:
    with contextlib.ExitStack() as stack:
        ctx = open_context(stack)
        provider = stack.enter_context(ProviderAPI(ctx))
        consumer = stack.enter_context(ConsumerAPI(ctx))

        def on_state(key: ServiceKey, state: ConnectionState) -> None:
            # Called on changes only (CONNECTED -> SUSPENDED -> LOST and back),
            # so a healthy run prints nothing here.
            print(f"  state of {key}: {state.value}")

        consumer.add_state_listener(on_state)

        for port, group, weight in ((9001, "blue", 100), (9002, "blue", 200), (9003, "green", 100)):
            provider.register_instance(
                namespace=NAMESPACE,
                service=SERVICE,
                host=HOST,
                port=port,
                weight=weight,
                metadata={"group": group},
            )

        print("watching:")
        events: queue.Queue[ServiceChangeEvent] = queue.Queue()
        consumer.watch_service(
            WatchServiceRequest(namespace=NAMESPACE, service=SERVICE, listeners=[events.put])
        )
        while len(next_change(events).instances) < 3:
            pass  # the registrations may take one refresh to show up
        snapshot = consumer.get_all_instances(namespace=NAMESPACE, service=SERVICE)
        print(f"all instances at revision {snapshot.revision[:8]}: {[i.port for i in snapshot]}")

        green = consumer.get_instances(service=SERVICE, metadata={"group": "green"})
        print(f"group=green: {[i.port for i in green]} (fallback={green.fallback})")
        nobody = consumer.get_instances(service=SERVICE, metadata={"group": "red"})
        print(
            f"group=red matches none, falls back to all: {[i.port for i in nobody]} "
            f"(fallback={nobody.fallback})"
        )

        counts = collections.Counter(
            consumer.get_one_instance(service=SERVICE).port for _ in range(4000)
        )
        print(f"weightedRandom over 4000 picks: {dict(sorted(counts.items()))}")
        for user in ("alice", "bob"):
            request = GetOneInstanceRequest(
                service=SERVICE, lb_policy="ringHash", hash_key=user, metadata={"group": "blue"}
            )
            print(f"ringHash {user} (blue only): {consumer.get_one_instance(request).port}")
        turns = [
            consumer.get_one_instance(service=SERVICE, lb_policy="roundRobin").port
            for _ in range(6)
        ]
        print(f"roundRobin: {turns}")

        print("changing 9003 to group blue, then deregistering 9001:")
        provider.register_instance(
            namespace=NAMESPACE, service=SERVICE, host=HOST, port=9003, metadata={"group": "blue"}
        )
        while not next_change(events).updated:
            pass
        provider.deregister(namespace=NAMESPACE, service=SERVICE, host=HOST, port=9001)
        while not next_change(events).deleted:
            pass
        print(f"connection state: {consumer.state.value}")
    print("done")


if __name__ == "__main__":
    main()
