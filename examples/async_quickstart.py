"""Asyncio quickstart: the same steps as quickstart.py with the asyncio twins.

Everything runs on one event loop: registrations heartbeat as tasks, the
consumer's cache refreshes as tasks, and the listener below is an ``async
def`` awaited on the loop. Talks to ``POLARIS_ADDRESSES`` when set, else to
an embedded server started here::

    python examples/async_quickstart.py
"""

from __future__ import annotations

import asyncio
import contextlib
import os

from polaris_sdk import (
    AsyncConsumerAPI,
    AsyncProviderAPI,
    AsyncSDKContext,
    ServiceChangeEvent,
)
from polaris_sdk.server import PolarisServer

SERVICE = "async-quickstart-echo"
WAIT = 10.0  # seconds to wait for an event before giving up


async def main(addresses: list[str] | None) -> None:
    ctx = AsyncSDKContext.create(addresses=addresses, refresh_interval=0.5)
    async with ctx, AsyncProviderAPI(ctx) as provider, AsyncConsumerAPI(ctx) as consumer:
        events: asyncio.Queue[ServiceChangeEvent] = asyncio.Queue()

        async def on_change(event: ServiceChangeEvent) -> None:
            await events.put(event)

        await consumer.watch_service(service=SERVICE, listeners=[on_change])
        first = await asyncio.wait_for(events.get(), WAIT)
        print(f"event: {len(first.instances)} instances")

        for port in (8081, 8082, 8083):
            await provider.register_instance(
                service=SERVICE, host="127.0.0.1", port=port, metadata={"version": "v1"}, ttl=5
            )
        event = first
        while len(event.instances) < 3:
            event = await asyncio.wait_for(events.get(), WAIT)
        print(f"event: {len(event.instances)} instances")

        picks = [(await consumer.get_one_instance(service=SERVICE)).port for _ in range(6)]
        print(f"weightedRandom picks: {picks}")

        await provider.deregister(service=SERVICE, host="127.0.0.1", port=8082)
        while not event.deleted:
            event = await asyncio.wait_for(events.get(), WAIT)
        print(f"event: deleted {', '.join(i.address for i in event.deleted)}")
        remaining = sorted(i.port for i in await consumer.get_instances(service=SERVICE))
        print(f"healthy instances now: {remaining}")
    print(f"background tasks left: {len(ctx.tasks)}")
    print("done")


if __name__ == "__main__":
    with contextlib.ExitStack() as stack:
        if os.environ.get("POLARIS_ADDRESSES"):
            asyncio.run(main(None))
        else:
            server = stack.enter_context(PolarisServer(grpc_port=0))
            print(f"embedded Polaris server on {server.grpc_address}")
            asyncio.run(main([server.grpc_address]))
