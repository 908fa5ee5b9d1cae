"""AsyncSDKContext: what the asyncio facades of one SDK instance share, on one event loop.

Contract:

* The twin of :class:`~polaris_sdk.context.SDKContext`: one
  :class:`~polaris_sdk.config.Configuration`, one asyncio connector (grpc.aio
  or httpx.AsyncClient), one :class:`~polaris_sdk.connector.state.Connection`
  and the components the facades build on it (the registrations, the cache
  of services). ``create()`` takes the same arguments as
  ``SDKContext.create``.
* One event loop: the context belongs to the loop it is first used on (the
  running loop at ``create()``, or the first awaited call). Using it from
  another loop or another thread raises :class:`~polaris_sdk.errors.
  WrongLoopError` at once, instead of hanging or corrupting state.
* No threads: heartbeats, revision checks and listener delivery are tasks on
  that loop. Background tasks are started with :meth:`spawn`, which
  supervises them (an exception is logged and the task restarted with
  backoff; it never dies silently) until :meth:`aclose` cancels them.
  Heartbeats and revision checks are entries of the context's one
  :class:`~polaris_sdk.aio.slots.SlotRunner` (:attr:`slots`), a single such
  task, not a task per instance or service.
* ``aclose()`` is idempotent: it closes the components (newest first; an
  exception in one is logged), cancels and awaits every task, then closes
  the connector. Later calls raise :class:`~polaris_sdk.errors.ClosedError`.
  ``async with ctx:`` closes on the way out.
* Fork-safe as :class:`~polaris_sdk.context.SDKContext`: in a forked child
  it binds to the first loop it is used on, with new channels and caches
  and none of the parent's registrations or tasks.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import os
import threading
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Final, TypeVar

from polaris_sdk import _fork
from polaris_sdk._closing import AsyncClosing
from polaris_sdk.aio.dispatch import AsyncMailbox
from polaris_sdk.aio.slots import SlotRunner
from polaris_sdk.config import Configuration, load_config
from polaris_sdk.connector import (
    AsyncNamingConnector,
    AsyncTransport,
    Connection,
    ConnectionState,
    MockTransport,
    create_async_connector,
)
from polaris_sdk.connector.state import ConnectionListener
from polaris_sdk.errors import ClosedError, WrongLoopError
from polaris_sdk.observe import Observers

__all__ = ["AsyncSDKContext"]

logger = logging.getLogger("polaris_sdk.aio.context")

T = TypeVar("T")

_RESTART_MAX: Final = 30.0


class AsyncSDKContext(AsyncClosing):
    """Owns what the asyncio facades share; build one with :meth:`create`."""

    def __init__(
        self,
        config: Configuration | None = None,
        *,
        transport: AsyncTransport | MockTransport | None = None,
    ) -> None:
        self._config = config or Configuration()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: int | None = None
        with contextlib.suppress(RuntimeError):  # no loop yet: bound by the first call
            self._bind(asyncio.get_running_loop())
        self._connection = Connection(self._mailbox)
        self._observers = Observers()
        self._connector = create_async_connector(
            self._config, transport=transport, connection=self._connection
        )
        self._components: dict[str, Any] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._slots: SlotRunner | None = None
        self._closed = False
        _fork.track(self)

    def _reset_after_fork(self) -> None:
        """In a forked child: bound to the first loop it is used on; no task of the parent's.

        The components reset in place; the transport and the connection
        state reset themselves (:mod:`polaris_sdk._fork`).
        """
        _fork.keep(*self._tasks)
        self._tasks = set()
        self._slots = None
        self._loop = None
        self._thread = None
        for component in self._components.values():
            reset: Callable[[], None] | None = getattr(component, "_reset_after_fork", None)
            if reset is not None:
                reset()

    @classmethod
    def create(
        cls,
        config: str | os.PathLike[str] | Configuration | None = None,
        *,
        addresses: Sequence[str] | str | None = None,
        token: str | None = None,
        persist_dir: str | os.PathLike[str] | None = None,
        refresh_interval: float | str | None = None,
        transport: AsyncTransport | MockTransport | None = None,
        **settings: Any,
    ) -> AsyncSDKContext:
        """As :meth:`polaris_sdk.SDKContext.create`: file, environment, keywords."""
        merged = load_config(
            config,
            addresses=list(addresses) if isinstance(addresses, tuple) else addresses,
            token=token,
            persist_dir=persist_dir,
            refresh_interval=refresh_interval,
            **settings,
        )
        return cls(merged, transport=transport)

    # ------------------------------------------------------------ properties

    @property
    def config(self) -> Configuration:
        return self._config

    @property
    def connector(self) -> AsyncNamingConnector:
        return self._connector

    @property
    def connection(self) -> Connection:
        return self._connection

    @property
    def state(self) -> ConnectionState:
        return self._connection.state

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The event loop this context belongs to (bound on first use)."""
        return self.check_loop()

    # ------------------------------------------------------------- the loop

    def check_loop(self) -> asyncio.AbstractEventLoop:
        """The context's loop; raises WrongLoopError off it, ClosedError once closed."""
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            raise WrongLoopError(
                "AsyncSDKContext calls must be awaited on an event loop "
                "(use SDKContext from threads and plain functions)"
            ) from None
        if self._loop is None:
            self._bind(running)
        elif running is not self._loop or threading.get_ident() != self._thread:
            raise WrongLoopError(
                "this AsyncSDKContext belongs to another event loop; create one per loop"
            )
        if self._closed:
            raise ClosedError("the AsyncSDKContext is closed")
        assert self._loop is not None
        return self._loop

    def _bind(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._thread = threading.get_ident()

    def _mailbox(self, listener: ConnectionListener) -> AsyncMailbox[ConnectionState]:
        return AsyncMailbox(self.check_loop(), listener)

    def add_connection_listener(self, listener: Callable[[ConnectionState], Any]) -> None:
        """Call ``listener(state)`` (plain or ``async def``) on each change, on the loop."""
        self.check_loop()
        self._connection.add_listener(listener)

    def remove_connection_listener(self, listener: Callable[[ConnectionState], Any]) -> None:
        self._connection.remove_listener(listener)

    # ------------------------------------------------------------ observers

    @property
    def observers(self) -> Observers:
        """The observers the drivers of this context report to."""
        return self._observers

    def add_observer(self, observer: object) -> None:
        """Show ``observer`` every call result, heartbeat and cache refresh, called
        synchronously on the loop (see :mod:`polaris_sdk.observe`)."""
        self._observers.add(observer)

    def remove_observer(self, observer: object) -> None:
        self._observers.remove(observer)

    # ----------------------------------------------------------- components

    def component(self, name: str, factory: Callable[[], T]) -> T:
        """The component called ``name``, built by ``factory()`` on first use."""
        self.check_loop()
        if name not in self._components:
            self._components[name] = factory()
        value: T = self._components[name]
        return value

    def spawn(self, name: str, run: Callable[[], Awaitable[None]]) -> asyncio.Task[None]:
        """Run ``run()`` as a supervised task until it returns or the context closes.

        An exception is logged and ``run()`` started again after a backoff
        (doubling from 0.1 s to 30 s, reset after a run that lasted a while).
        """
        loop = self.check_loop()
        task = loop.create_task(self._supervise(name, run), name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _supervise(self, name: str, run: Callable[[], Awaitable[None]]) -> None:
        backoff = 0.1
        loop = asyncio.get_running_loop()
        while not self._closed:
            started = loop.time()
            try:
                await run()
                return
            except asyncio.CancelledError:
                raise
            except Exception:
                if loop.time() - started > _RESTART_MAX:
                    backoff = 0.1
                logger.exception("task %s failed; restarting in %.1fs", name, backoff)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, _RESTART_MAX)

    def time(self) -> float:
        """The loop's clock (``loop.time()``), read without the loop check of :attr:`loop`.

        For the context's own work, which runs on its loop once it is bound:
        asking for the running loop each time costs a system call on some
        Pythons.
        """
        loop = self._loop
        return loop.time() if loop is not None else asyncio.get_running_loop().time()

    @property
    def slots(self) -> SlotRunner:
        """The slot runner heartbeats and revision checks are scheduled on (made on first use)."""
        if self._slots is None:
            self._slots = SlotRunner(self)
        return self._slots

    @property
    def tasks(self) -> frozenset[asyncio.Task[None]]:
        """The background tasks running now (for tests and diagnostics)."""
        return frozenset(self._tasks)

    # -------------------------------------------------------------- closing

    async def aclose(self) -> None:
        """Close the components (newest first), cancel the tasks, close the connector."""
        if self._closed:
            return
        self.check_loop()
        components = list(self._components.items())
        for name, component in reversed(components):
            close = getattr(component, "aclose", None) or getattr(component, "close", None)
            if close is None:
                continue
            try:
                result = close()
                if inspect.isawaitable(result):
                    await result
            except Exception:
                logger.exception("closing component %s failed", name)
        self._closed = True
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        await self._connector.aclose()
        self._connection.close()

    def _entering(self) -> None:
        self.check_loop()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        addresses = ",".join(self._config.server_connector.addresses)
        return f"<AsyncSDKContext {addresses} {state}>"
