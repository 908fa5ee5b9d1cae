"""A lifespan for FastAPI and Starlette that registers the app, drains and deregisters.

Usage::

    from fastapi import FastAPI
    from polaris_sdk.integrations.starlette import polaris_lifespan

    app = FastAPI(lifespan=polaris_lifespan(service="greeter", version="1.0.0"))

    @app.get("/")
    async def hello(request: Request):
        polaris = request.app.state.polaris      # .context, .provider, .consumer
        target = await polaris.consumer.get_one_instance(service="other")

Contract (on the asyncio twins; see :mod:`polaris_sdk.integrations._serving`):

* On start-up: an :class:`~polaris_sdk.aio.AsyncSDKContext`, provider and
  consumer on ``app.state.polaris``, and a background task that registers
  the instance (waiting for the server's listening socket when no port is
  given; the registry may be down). ``lifespan=`` wraps the app's own
  lifespan, which runs inside ours; the state it yields is passed on.
* On SIGTERM / SIGINT (uvicorn, single process or ``--workers``): the
  instance is deregistered (by the last worker of the instance), the app
  keeps serving for the drain period, then uvicorn's own handler gets the
  signal and stops accepting. A second signal goes to uvicorn at once. A
  registration still on the wire then is let finish (bounded by
  ``global.api.timeout``) and deregistered, never left behind.
* On shutdown: whatever is left is deregistered and closed.
* Importing this module imports nothing of Starlette.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading
from collections.abc import AsyncIterator, Callable
from types import FrameType
from typing import Any

from polaris_sdk.aio import AsyncConsumerAPI, AsyncProviderAPI, AsyncSDKContext
from polaris_sdk.errors import ClosedError, PolarisError
from polaris_sdk.integrations._serving import SIGNALS, ServingOptions, chain_signal

__all__ = ["AsyncServing", "polaris_lifespan"]

logger = logging.getLogger("polaris_sdk.integrations.starlette")

Lifespan = Callable[[Any], contextlib.AbstractAsyncContextManager[Any]]


class AsyncServing:
    """What the lifespan puts on ``app.state.polaris``."""

    def __init__(self, options: ServingOptions) -> None:
        self.options = options
        self.context = AsyncSDKContext.create(**options.settings)
        self.provider = AsyncProviderAPI(self.context)
        self.consumer = AsyncConsumerAPI(self.context)
        self.instance_id: str | None = None
        self._previous: dict[int, Any] = {}
        self._draining = False
        self._register_task: asyncio.Task[None] | None = None
        self._sending = False  # the registration is on the wire: let it finish

    async def start(self) -> None:
        self._register_task = self.context.spawn("polaris-serving", self._register)
        if threading.current_thread() is threading.main_thread():
            loop = asyncio.get_running_loop()
            for sig in SIGNALS:
                self._previous[sig] = signal.getsignal(sig)
                signal.signal(sig, lambda s, f: self._on_signal(loop, s, f))

    async def stop(self) -> None:
        self._stop_registering()
        self._restore()
        with contextlib.suppress(PolarisError):
            await self.provider.aclose()
        await self.consumer.aclose()
        await self.context.aclose()

    # ------------------------------------------------------------ internal

    def _on_signal(
        self, loop: asyncio.AbstractEventLoop, sig: int, frame: FrameType | None
    ) -> None:
        if self._draining:  # a second signal: no more waiting
            chain_signal(self._previous.get(sig), sig, frame)
            return
        self._draining = True
        loop.call_soon_threadsafe(lambda: loop.create_task(self._drain(sig, frame)))

    async def _drain(self, sig: int, frame: FrameType | None) -> None:
        registered = self.instance_id is not None or self._sending
        self._stop_registering()
        try:
            await self.provider.aclose()  # deregisters, unless other workers still hold it
        except PolarisError as exc:
            logger.warning("deregistering on signal %d failed: %s", sig, exc)
        if registered:
            seconds = self.options.drain_seconds(self.context.config)
            logger.info("draining for %.1fs before the server stops", seconds)
            await asyncio.sleep(seconds)
        previous = self._previous.get(sig)
        self._restore()
        chain_signal(previous, sig, frame)

    def _stop_registering(self) -> None:
        """No more waiting for a port. A registration on the wire is not cancelled (it
        could land all the same and stay): the provider's close waits for it, bounded,
        and it deregisters itself."""
        task = self._register_task
        if task is not None and not self._sending:
            task.cancel()

    def _restore(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous = {}

    async def _register(self) -> None:
        port = self.options.port_now()
        waited = 0.0
        while port is None and waited < self.options.port_wait:
            await asyncio.sleep(0.1)
            waited += 0.1
            port = self.options.port_now()
        if port is None:
            logger.error("%s: no port given and none found; not registered", self.options.service)
            return
        try:
            req = self.options.request(self.context.config, port)
            self._sending = True
            resp = await self.provider.register_instance(background=True, **req)
        except ClosedError as exc:  # stopped meanwhile: deregistered again
            logger.info("%s: %s", self.options.service, exc)
            return
        except PolarisError as exc:
            logger.error("%s: not registered: %s", self.options.service, exc)
            return
        finally:
            self._sending = False
        self.instance_id = resp.instance_id


def polaris_lifespan(
    service: str | None = None,
    port: int | None = None,
    *,
    lifespan: Lifespan | None = None,
    **options: Any,
) -> Callable[[Any], contextlib.AbstractAsyncContextManager[Any]]:
    """A lifespan registering the app as ``service``; see the module docstring.

    Keywords: ``namespace``, ``host``, ``drain``, ``port_wait``, ``settings``
    (arguments of ``AsyncSDKContext.create``), and any ``register_instance``
    field (``metadata``, ``version``, ``protocol``, ``weight``, ``ttl`` ...).
    """
    opts = ServingOptions.build(service, port=port, **options)

    @contextlib.asynccontextmanager
    async def run(app: Any) -> AsyncIterator[Any]:
        serving = AsyncServing(opts)
        await serving.start()
        app.state.polaris = serving
        try:
            if lifespan is None:
                yield None
            else:
                async with lifespan(app) as state:
                    yield state
        finally:
            await serving.stop()

    return run
