"""AsyncServiceCache: the cached services of one AsyncSDKContext, kept fresh by tasks.

The asyncio twin of :class:`~polaris_sdk.cache.service_cache.ServiceCache`,
on the same parts: the :class:`~polaris_sdk.cache.store.Store` of snapshots,
one :class:`~polaris_sdk.cache.informer.Informer` per service (store writes,
diffs, events, disk backup) and the reflector's decisions
(:class:`~polaris_sdk.cache.reflector.ReflectorDriver`). Only the waiting
differs:

* The first request for a service lists it in the caller's task, within the
  caller's timeout; concurrent first requests share that one listing. Later
  reads are a dictionary lookup, no await needed.
* If the first listing cannot reach the server and a disk backup exists, the
  backup answers (``from_backup=True``), as in the sync cache.
* Each cached service is an entry of the context's slot runner
  (:class:`~polaris_sdk.aio.slots.SlotRunner`): the revision checks due in
  one 20 ms slot are all sent on the Discover stream before any answer is
  awaited; no task per service, no thread. Listeners (plain or ``async
  def``) are called on the loop, each through its own mailbox.
* ``aclose()`` stops every round and mailbox; later requests raise
  :class:`~polaris_sdk.errors.ClosedError`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from polaris_sdk.aio.context import AsyncSDKContext
from polaris_sdk.aio.dispatch import AsyncMailbox
from polaris_sdk.aio.slots import SlotHandle
from polaris_sdk.cache.informer import Informer
from polaris_sdk.cache.listwatch import MISSING_REVISION, missing_service
from polaris_sdk.cache.options import CacheOptions
from polaris_sdk.cache.persist import DiskBackup
from polaris_sdk.cache.reflector import ConnectionState, ReflectorDriver
from polaris_sdk.cache.reflector_core import RoundKind
from polaris_sdk.cache.service_cache import answer_from_backup
from polaris_sdk.cache.store import Entry, ReplaceHook, Store
from polaris_sdk.connector import calls
from polaris_sdk.connector.awaiting import Later
from polaris_sdk.errors import (
    ClosedError,
    NetworkError,
    PolarisError,
    PolarisTimeoutError,
    ResourceNotFoundError,
    ServerInternalError,
)
from polaris_sdk.model import ServiceChangeEvent, ServiceInstances, ServiceKey

__all__ = ["AsyncServiceCache"]

logger = logging.getLogger("polaris_sdk.aio.cache")


_SEVERITY = {ConnectionState.CONNECTED: 0, ConnectionState.SUSPENDED: 1, ConnectionState.LOST: 2}

Listener = Callable[[ServiceChangeEvent], Any]
StateListener = Callable[[ServiceKey, ConnectionState], Any]


class _LoopDispatcher:
    """What the informer needs of a dispatcher, delivering on the context's loop."""

    def __init__(self, ctx: AsyncSDKContext) -> None:
        self._ctx = ctx

    def mailbox(
        self, callback: Callable[[Any], Any], label: str | None = None
    ) -> AsyncMailbox[Any]:
        return AsyncMailbox(self._ctx.loop, callback, label)


class _AsyncReflector(ReflectorDriver):
    """The asyncio driver: one entry of the context's slot runner per round."""

    def __init__(
        self, key: ServiceKey, ctx: AsyncSDKContext, sink: Informer, options: CacheOptions
    ) -> None:
        super().__init__(
            key,
            sink,
            options,
            clock=ctx.time,
            observers=ctx.observers,
        )
        self._ctx = ctx
        self._handle: SlotHandle | None = None

    async def run_once(self, timeout: float | None) -> None:
        current, pending, watching = self._begin(timeout)
        try:
            result = await self._judged(pending, watching)
        except PolarisError as exc:
            self._failed(exc)
            raise
        self._succeeded(current, result)

    def start(self) -> None:
        self._schedule()

    def stop(self) -> None:
        self._stopped = True
        handle, self._handle = self._handle, None
        if handle is not None:
            handle.cancel()

    def _schedule(self) -> None:
        if self._stopped:
            return
        try:
            self._handle = self._ctx.slots.call_later(self._next_delay(), self._tick)
        except ClosedError:
            self._stopped = True

    def _tick(self) -> Later[None] | None:
        """A round's first part: sends the request; its continuation judges the answer."""
        self._handle = None
        if self._stopped:
            return None
        try:
            current, pending, watching = self._begin(self._options.request_timeout)
        except Exception as exc:
            self._guarded(self._failed_unexpectedly, exc)
            self._schedule()
            return None
        return Later(self._finish, current, pending, watching)

    async def _finish(
        self, current: ServiceInstances | None, pending: Awaitable[Any], watching: bool
    ) -> None:
        try:
            try:
                result = await self._judged(pending, watching)
            except PolarisError as exc:
                self._guarded(self._failed, exc)
            except Exception as exc:
                self._guarded(self._failed_unexpectedly, exc)
            else:
                self._guarded(self._succeeded, current, result)
        finally:
            # Whatever happened above, only stop() ends the loop.
            self._schedule()

    def _failed_unexpectedly(self, exc: Exception) -> None:
        logger.exception("refresh of %s failed unexpectedly; backing off", self.key)
        self._failed(exc)

    def _guarded(self, record: Callable[..., None], *args: Any) -> None:
        try:
            record(*args)
        except Exception:
            logger.exception("recording the refresh of %s failed; the loop goes on", self.key)

    def _begin(self, timeout: float | None) -> tuple[ServiceInstances | None, Awaitable[Any], bool]:
        """Send this round's Discover request: the snapshot it starts from, the answer
        to await and whether it watches a revision (or lists)."""
        current, round_ = self._next_round()
        watching = round_.kind is RoundKind.WATCH
        revision = round_.revision if watching else MISSING_REVISION
        pending = self._ctx.connector.begin(calls.discover(self.key, revision), timeout)
        return current, pending, watching

    async def _judged(self, pending: Awaitable[Any], watching: bool) -> ServiceInstances | None:
        """The round's result: the snapshot answered (None: unchanged)."""
        try:
            answer = await pending
        except ResourceNotFoundError:
            return missing_service(self.key)
        result = calls.discover_result(self.key, answer)
        if result is None and not watching:
            # "Unchanged" to an empty revision breaks the protocol: read it as unknown.
            return missing_service(self.key)
        return result


class _Service:
    def __init__(self, informer: Informer, reflector: _AsyncReflector) -> None:
        self.informer = informer
        self.reflector = reflector
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()


class AsyncServiceCache:
    def __init__(self, ctx: AsyncSDKContext, options: CacheOptions | None = None) -> None:
        self.options = options or CacheOptions.from_config(ctx.config)
        self._ctx = ctx
        self._store = Store()
        self._dispatcher = _LoopDispatcher(ctx)
        self._backup = DiskBackup(self.options.persist_dir) if self.options.persist_dir else None
        self._services: dict[ServiceKey, _Service] = {}
        self._state_mailboxes: list[
            tuple[StateListener, AsyncMailbox[tuple[ServiceKey, ConnectionState]]]
        ] = []
        self._closed = False

    def _reset_after_fork(self) -> None:
        """In a forked child: nothing cached or watched; services listed on first use."""
        hooks = self._store._hooks
        self._store = Store()
        self._store._hooks = hooks
        self._services = {}
        self._state_mailboxes = []

    @property
    def closed(self) -> bool:
        return self._closed

    # ---------------------------------------------------------------- reads

    def cached_entry_named(self, namespace: str, service: str) -> Entry | None:
        return self._store.get_named(namespace, service)

    @property
    def store(self) -> Store:
        """The snapshots (read-only use: ``lookup_named``)."""
        return self._store

    async def entry(self, key: ServiceKey, timeout: float | None = None) -> Entry:
        """The current entry of ``key``, listing the service first if it is new."""
        if self._closed:
            raise ClosedError("the consumer cache is closed")
        entry = self._store.get(key)
        if entry is not None:
            return entry
        service = self._services.get(key)
        if service is None:
            service = self._new_service(key)
            self._services[key] = service
            await self._first_listing(key, service, timeout)
        else:
            try:
                await asyncio.wait_for(asyncio.shield(service.ready), timeout)
            except TimeoutError:
                raise PolarisTimeoutError(f"listing {key} took longer than {timeout}s") from None
        entry = self._store.get(key)
        if entry is None:
            raise ClosedError("the consumer cache is closed")
        return entry

    def add_replace_hook(self, hook: ReplaceHook) -> None:
        self._store.add_replace_hook(hook)

    # -------------------------------------------------------------- watches

    async def watch(
        self, key: ServiceKey, listener: Listener, timeout: float | None = None
    ) -> ServiceInstances:
        entry = await self.entry(key, timeout)
        self._services[key].informer.add_listener(listener)
        return entry.current

    def unwatch(self, key: ServiceKey, listener: Listener) -> bool:
        service = self._services.get(key)
        return service is not None and service.informer.remove_listener(listener)

    # ---------------------------------------------------------------- state

    def state(self, key: ServiceKey | None = None) -> ConnectionState:
        if key is not None:
            service = self._services.get(key)
            if service is None:
                raise KeyError(f"{key} is not cached")
            return service.reflector.state
        states = [s.reflector.state for s in self._services.values()]
        return max(states, key=_SEVERITY.__getitem__, default=ConnectionState.CONNECTED)

    def add_state_listener(self, listener: StateListener) -> None:
        if any(known == listener for known, _ in self._state_mailboxes):
            return

        def deliver(item: tuple[ServiceKey, ConnectionState]) -> Any:
            return listener(*item)

        self._state_mailboxes.append((listener, AsyncMailbox(self._ctx.loop, deliver)))

    def remove_state_listener(self, listener: StateListener) -> bool:
        for pair in self._state_mailboxes:
            if pair[0] == listener:
                self._state_mailboxes.remove(pair)
                pair[1].close()
                return True
        return False

    def _state_changed(self, key: ServiceKey, state: ConnectionState) -> None:
        for _, mailbox in self._state_mailboxes:
            mailbox.post((key, state))

    # ---------------------------------------------------------------- close

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._store.close()
        for _, mailbox in self._state_mailboxes:
            mailbox.close()
        for service in self._services.values():
            service.reflector.stop()
            service.informer.close()

    # -------------------------------------------------------------- loading

    def _new_service(self, key: ServiceKey) -> _Service:
        informer = Informer(
            key,
            self._store,
            self._dispatcher,
            backup=self._backup,
            on_state=self._state_changed,
        )
        return _Service(informer, _AsyncReflector(key, self._ctx, informer, self.options))

    async def _first_listing(
        self, key: ServiceKey, service: _Service, timeout: float | None
    ) -> None:
        try:
            try:
                await service.reflector.run_once(timeout or self.options.request_timeout)
            except (NetworkError, ServerInternalError) as exc:
                if not answer_from_backup(self._backup, key, service.informer, exc):
                    raise
        except BaseException as exc:
            self._services.pop(key, None)
            self._store.delete(key)
            service.ready.set_exception(exc)
            service.ready.exception()  # retrieved: the waiters re-raise it themselves
            raise
        if not self._closed:
            service.reflector.start()
        service.ready.set_result(None)
