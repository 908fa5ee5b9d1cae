"""A FastAPI app on ``polaris_lifespan`` wrapping a lifespan of its own (run by tests).

    APP_SERVICE=svc uvicorn tests.procs.asgi_app:app --port N

It prints ``event: ...`` lines (flushed) for the test to read: its own
start-up (and whether ``app.state.polaris`` was there already) and shutdown.
``/hello`` answers the pid, the instance id and a value its lifespan put in
the state; ``/status`` the registration and connection states; ``/peer``
looks its own service up through ``app.state.polaris``.
No port is given: the integration reads the one uvicorn listens on.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request

from polaris_sdk.integrations.starlette import polaris_lifespan

SERVICE = os.environ["APP_SERVICE"]


def event(text: str) -> None:
    print(f"event: {text} pid={os.getpid()}", flush=True)


@contextlib.asynccontextmanager
async def own_lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
    polaris = getattr(app.state, "polaris", None)
    event(f"app startup polaris={polaris is not None}")
    yield {"greeting": "hello from the app's own lifespan"}
    event("app shutdown")


app = FastAPI(
    lifespan=polaris_lifespan(
        service=SERVICE, lifespan=own_lifespan, version="2.0.0", metadata={"framework": "fastapi"}
    )
)


@app.get("/hello")
async def hello(request: Request) -> dict[str, Any]:
    polaris = request.app.state.polaris
    return {
        "pid": os.getpid(),
        "instance": polaris.instance_id,
        "greeting": request.state.greeting,
    }


@app.get("/status")
async def status(request: Request) -> dict[str, Any]:
    polaris = request.app.state.polaris
    found = polaris.instance_id and polaris.provider.status(polaris.instance_id)
    return {"registration": found and found.state.value, "connection": polaris.context.state.value}


@app.get("/peer")
async def peer(request: Request) -> dict[str, Any]:
    polaris = request.app.state.polaris
    found = await polaris.consumer.get_one_instance(service=SERVICE)
    return {
        "host": found.host,
        "port": found.port,
        "refresh": polaris.context.config.consumer.service_refresh_interval,
    }
