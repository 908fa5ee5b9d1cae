"""A FastAPI service that registers itself with Polaris (run under uvicorn).

    POLARIS_ADDRESSES=127.0.0.1:8091 uvicorn examples.fastapi_provider:app --workers 2 --port 8001

The lifespan registers the instance (host: the interface that reaches the
registry; port: the one uvicorn listens on), drains on SIGTERM and
deregisters when the last worker stops.
"""

from __future__ import annotations

import os

from fastapi import FastAPI, Request

from polaris_sdk.integrations.starlette import polaris_lifespan

SERVICE = os.environ.get("GREETER_SERVICE", "greeter")

app = FastAPI(lifespan=polaris_lifespan(service=SERVICE, metadata={"framework": "fastapi"}))


@app.get("/hello")
async def hello(request: Request) -> dict[str, object]:
    polaris = request.app.state.polaris
    return {"from": "fastapi", "pid": os.getpid(), "instance": polaris.instance_id}
