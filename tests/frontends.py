"""Run one test body against the sync facades and their asyncio twins.

``FRONTS`` are the two front ends. For ``async``, :class:`LoopThread` runs an
event loop on a thread of its own and :class:`Blocking` wraps an asyncio
facade so that a test calls it like the sync one: each coroutine method is
run to completion on that loop (``close()`` is ``aclose()``), everything else
is passed through. The facades are created on the loop, so they belong to
it exactly as in an application, and listeners run there.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
import threading
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

FRONTS = ("sync", "async")
"""``sync``: ProviderAPI / ConsumerAPI; ``async``: their asyncio twins."""

LOOP_THREAD = "test-event-loop"
T = TypeVar("T")


class LoopThread:
    """An event loop running on its own thread until :meth:`close`."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name=LOOP_THREAD, daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T] | Awaitable[T], timeout: float = 120.0) -> T:
        async def wrap() -> T:
            return await coro

        future = asyncio.run_coroutine_threadsafe(wrap(), self.loop)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise

    def call(self, fn: Callable[[], T]) -> T:
        """``fn()`` on the loop's thread (for sync methods that must run on the loop)."""

        async def wrap() -> T:
            return fn()

        return self.run(wrap())

    def close(self) -> None:
        async def drain() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        self.run(drain())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


class Blocking:
    """An asyncio facade, called like its sync twin through a :class:`LoopThread`."""

    def __init__(self, target: Any, loop: LoopThread) -> None:
        self._target = target
        self._loop = loop

    @property
    def target(self) -> Any:
        return self._target

    def __getattr__(self, name: str) -> Any:
        if name == "close":
            name = "aclose"
        attr = getattr(self._target, name)
        if not callable(attr):
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            if inspect.iscoroutinefunction(attr):
                return self._loop.run(attr(*args, **kwargs))
            return self._loop.call(lambda: attr(*args, **kwargs))

        return call

    def __enter__(self) -> Blocking:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def is_async(facade: object) -> bool:
    """Whether ``facade`` is an asyncio twin seen through :class:`Blocking`."""
    return isinstance(facade, Blocking)


def held_listener(
    facade: object, release: threading.Event, sink: list[Any]
) -> Callable[[Any], Any]:
    """A listener that holds each event until ``release`` is set, then keeps it.

    For an asyncio facade it is an ``async def`` that awaits instead of
    blocking, since a plain listener runs on (and would stop) the event loop.
    """
    if not is_async(facade):

        def held(event: Any) -> None:
            release.wait(20)
            sink.append(event)

        return held

    async def held_async(event: Any) -> None:
        while not release.is_set():
            await asyncio.sleep(0.01)
        sink.append(event)

    return held_async


class Facades:
    """Makes a test's facades on its front end: ``provider(config)``, ``consumer(config)``.

    Each owns its context (``ProviderAPI.create`` / ``AsyncProviderAPI.create``)
    and is closed by ``with`` or ``close()``.
    """

    def __init__(self, front: str, loop: LoopThread | None) -> None:
        self.front = front
        self._loop = loop

    def provider(self, config: Any, **kwargs: Any) -> Any:
        from polaris_sdk import AsyncProviderAPI, ProviderAPI

        if self._loop is None:
            return ProviderAPI.create(config, **kwargs)
        return self._made(lambda: AsyncProviderAPI.create(config, **kwargs))

    def consumer(self, config: Any, **kwargs: Any) -> Any:
        from polaris_sdk import AsyncConsumerAPI, ConsumerAPI

        if self._loop is None:
            return ConsumerAPI.create(config, **kwargs)
        return self._made(lambda: AsyncConsumerAPI.create(config, **kwargs))

    def _made(self, make: Callable[[], Any]) -> Blocking:
        assert self._loop is not None
        return Blocking(self._loop.call(make), self._loop)
