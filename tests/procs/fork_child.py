"""A process that uses the SDK, forks, and reports what the child could do (run by a test).

Usage: ``python -m tests.procs.fork_child ADDRESS PROTOCOL FRONT SERVICE``. The
parent registers ``SERVICE`` at 127.0.0.1:7001 (TTL 1 s), lists it, forks,
then ends at once without closing anything, so its instance turns unhealthy
unless someone else heartbeats it. The child lists the service,
registers 127.0.0.1:7002, prints ``ready`` with what it saw, waits for a
line on stdin, closes, and prints how long ``close()`` took.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from typing import Any

from polaris_sdk import ConsumerAPI, ProviderAPI, SDKContext
from polaris_sdk.aio import AsyncConsumerAPI, AsyncProviderAPI, AsyncSDKContext

ADDRESS, PROTOCOL, FRONT, SERVICE = sys.argv[1:5]
SETTINGS: dict[str, Any] = {
    "addresses": [ADDRESS],
    "global.serverConnector.protocol": PROTOCOL,
    "global.api.timeout": "3s",
}


def say(**fields: Any) -> None:
    print(json.dumps(fields), flush=True)


def sync_main() -> None:
    ctx = SDKContext.create(**SETTINGS)
    provider, consumer = ProviderAPI(ctx), ConsumerAPI(ctx)
    provider.register_instance(service=SERVICE, host="127.0.0.1", port=7001, ttl=1)
    consumer.get_all_instances(service=SERVICE)
    pid = os.fork()
    if pid:
        os._exit(0)
    started = time.monotonic()
    seen = len(consumer.get_all_instances(service=SERVICE))
    inherited = len(provider.registrations())
    provider.register_instance(service=SERVICE, host="127.0.0.1", port=7002, ttl=1)
    say(ready=True, seen=seen, inherited=inherited, first_call=time.monotonic() - started)
    sys.stdin.readline()
    started = time.monotonic()
    ctx.close()
    say(closed=time.monotonic() - started)
    os._exit(0)


def async_main() -> None:
    async def parent() -> tuple[AsyncSDKContext, AsyncProviderAPI, AsyncConsumerAPI]:
        ctx = AsyncSDKContext.create(**SETTINGS)
        provider, consumer = AsyncProviderAPI(ctx), AsyncConsumerAPI(ctx)
        if PROTOCOL == "grpc":
            # grpc.aio cannot be used on both sides of a fork: the parent
            # makes the context and registers over the blocking API.
            ProviderAPI.create(**SETTINGS).register_instance(
                service=SERVICE, host="127.0.0.1", port=7001, ttl=1
            )
            return ctx, provider, consumer
        await provider.register_instance(service=SERVICE, host="127.0.0.1", port=7001, ttl=1)
        await consumer.get_all_instances(service=SERVICE)
        return ctx, provider, consumer

    loop = asyncio.new_event_loop()
    ctx, provider, consumer = loop.run_until_complete(parent())

    async def child() -> None:
        started = time.monotonic()
        seen = len(await consumer.get_all_instances(service=SERVICE))
        inherited = len(provider.registrations())
        await provider.register_instance(service=SERVICE, host="127.0.0.1", port=7002, ttl=1)
        say(ready=True, seen=seen, inherited=inherited, first_call=time.monotonic() - started)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        started = time.monotonic()
        await ctx.aclose()
        say(closed=time.monotonic() - started)

    pid = os.fork()
    if pid:
        os._exit(0)
    asyncio.run(child())
    os._exit(0)


if __name__ == "__main__":
    {"sync": sync_main, "async": async_main}[FRONT]()
