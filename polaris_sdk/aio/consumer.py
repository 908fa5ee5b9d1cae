"""AsyncConsumerAPI: find instances of a service from asyncio code.

The twin of :class:`~polaris_sdk.consumer.ConsumerAPI`: the same methods,
arguments, defaults and errors, the same routing, load balancing and
selection memos (:mod:`polaris_sdk.consumer.selection`), built by the same
functions. The first call for a service awaits its listing within
``global.api.timeout``; later calls read the cache: a warm
``get_one_instance`` does no I/O and awaits nothing but its own coroutine.
Revision checks are tasks on the context's loop; listeners (plain or
``async def``) run there too, each behind its own mailbox, so a slow
``async`` listener delays no other. ``aclose()`` removes this facade's
listeners (and closes an owned context).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, Final

from polaris_sdk._closing import AsyncClosing
from polaris_sdk._requests import coerce_request
from polaris_sdk.aio.cache import AsyncServiceCache
from polaris_sdk.aio.context import AsyncSDKContext
from polaris_sdk.aio.dispatch import AsyncMailbox
from polaris_sdk.cache.reflector import ConnectionState
from polaris_sdk.cache.store import Entry
from polaris_sdk.config import Configuration
from polaris_sdk.consumer.api import (
    WarmPicks,
    cached_entry,
    instances_query,
    listeners_of,
    new_selector,
    one_instance_query,
    pick_from,
    report_call,
    service_key,
)
from polaris_sdk.consumer.breakers import CircuitBreakers, EventListener
from polaris_sdk.consumer.cbrules import AsyncRulePoller
from polaris_sdk.consumer.selection import Selector
from polaris_sdk.errors import ClosedError
from polaris_sdk.model import (
    DEFAULT_NAMESPACE,
    GetAllInstancesRequest,
    GetInstancesRequest,
    GetOneInstanceRequest,
    Instance,
    ServiceCallResult,
    ServiceChangeEvent,
    ServiceInstances,
    ServiceKey,
    WatchServiceRequest,
)

__all__ = ["AsyncConsumerAPI"]

CACHE_COMPONENT: Final = "aio.consumer.cache"
SELECTION_COMPONENT: Final = "aio.consumer.selection"
BREAKER_COMPONENT: Final = "aio.consumer.circuitbreaker"

Listener = Callable[[ServiceChangeEvent], Any]
StateListener = Callable[[ServiceKey, ConnectionState], Any]


class AsyncConsumerAPI(AsyncClosing):
    """The consumer facade over an :class:`~polaris_sdk.aio.AsyncSDKContext`."""

    def __init__(self, ctx: AsyncSDKContext) -> None:
        self._ctx = ctx
        self._owns_context = False
        self._cache: AsyncServiceCache = ctx.component(
            CACHE_COMPONENT, lambda: AsyncServiceCache(ctx)
        )
        self._breakers: CircuitBreakers = ctx.component(
            BREAKER_COMPONENT, lambda: _new_breakers(ctx)
        )
        self._selector: Selector = ctx.component(
            SELECTION_COMPONENT, lambda: new_selector(self._cache, self._breakers)
        )
        self._breaker_listeners: list[EventListener] = []
        self._warm = WarmPicks(self._cache, self._breakers)
        self._timeout = ctx.config.api.timeout
        self._default_policy = ctx.config.consumer.default_lb_policy
        self._watches: list[tuple[ServiceKey, Listener]] = []
        self._state_listeners: list[StateListener] = []
        self._closed = False

    @classmethod
    def create(
        cls, config: str | os.PathLike[str] | Configuration | None = None, **settings: Any
    ) -> AsyncConsumerAPI:
        """An AsyncConsumerAPI owning a new context; arguments as ``AsyncSDKContext.create``."""
        api = cls(AsyncSDKContext.create(config, **settings))
        api._owns_context = True
        return api

    @property
    def context(self) -> AsyncSDKContext:
        return self._ctx

    @property
    def closed(self) -> bool:
        return self._closed or self._ctx.closed

    # --------------------------------------------------------------- reads

    async def get_all_instances(
        self, request: GetAllInstancesRequest | None = None, /, **fields: Any
    ) -> ServiceInstances:
        """Every instance of the service, unhealthy and isolated ones included."""
        req = coerce_request(GetAllInstancesRequest, request, fields)
        entry = await self._entry(req.namespace or DEFAULT_NAMESPACE, req.service)
        return entry.current

    async def get_instances(
        self, request: GetInstancesRequest | None = None, /, **fields: Any
    ) -> ServiceInstances:
        """The instances a call may go to (``fallback=True`` when that is all of them)."""
        req = coerce_request(GetInstancesRequest, request, fields)
        namespace, wanted = instances_query(req)
        entry = await self._entry(namespace, req.service)
        return self._selector.view(entry, namespace, req.service, wanted)

    async def get_one_instance(
        self, request: GetOneInstanceRequest | None = None, /, **fields: Any
    ) -> Instance:
        """One instance picked by the load balancer; InstanceNotFoundError if there is none."""
        if not self._closed:  # a closed context's cache finds nothing warm
            found = self._warm.pick(request, fields)
            if found is not None:
                return found
        req = coerce_request(GetOneInstanceRequest, request, fields)
        namespace, policy, wanted, key = one_instance_query(req, self._default_policy)
        entry = cached_entry(self._cache, namespace, req.service)
        if entry is None or self._closed:
            entry = await self._entry(namespace, req.service)
        stamp = self._breakers.stamp(namespace, req.service)
        picker = self._selector.picker(entry, namespace, req.service, policy, wanted)
        self._warm.remember(request, fields, (namespace, req.service), entry, picker, stamp)
        return pick_from(picker, entry, key)

    # --------------------------------------------------------- call results

    async def update_service_call_result(
        self, request: ServiceCallResult | None = None, /, **fields: Any
    ) -> None:
        """Report how one call to an instance went; no I/O, nothing awaited."""
        req = coerce_request(ServiceCallResult, request, fields)
        report_call(self._breakers, req, self._ctx.observers)

    def add_circuit_breaker_listener(self, listener: EventListener) -> None:
        """Call ``listener(event)`` (plain or ``async def``) on every breaker state
        change, on the loop, behind its own mailbox."""
        self._check_open()
        self._breaker_listeners.append(listener)
        self._breakers.add_listener(listener)

    def remove_circuit_breaker_listener(self, listener: EventListener) -> None:
        if listener in self._breaker_listeners:
            self._breaker_listeners.remove(listener)
        self._breakers.remove_listener(listener)

    # ------------------------------------------------------------- watches

    async def watch_service(
        self, request: WatchServiceRequest | None = None, /, **fields: Any
    ) -> ServiceInstances:
        """Call each listener on every change, starting with the current snapshot as
        one "added" event; returns that snapshot."""
        req = coerce_request(WatchServiceRequest, request, fields)
        listeners = listeners_of(req.listeners)
        key = service_key(req.namespace, req.service)
        self._check_open()
        snapshot = (await self._cache.entry(key, self._timeout)).current
        for listener in listeners:
            self._watches.append((key, listener))
            snapshot = await self._cache.watch(key, listener, self._timeout)
        return snapshot

    async def unwatch_service(
        self, request: WatchServiceRequest | None = None, /, **fields: Any
    ) -> None:
        """Stop calling the listeners; events still queued for them are dropped."""
        req = coerce_request(WatchServiceRequest, request, fields)
        listeners = listeners_of(req.listeners)
        key = service_key(req.namespace, req.service)
        for listener in listeners:
            if (key, listener) in self._watches:
                self._watches.remove((key, listener))
            self._cache.unwatch(key, listener)

    # --------------------------------------------------------------- state

    @property
    def state(self) -> ConnectionState:
        """The worst :class:`ConnectionState` over every cached service."""
        return self._cache.state()

    def service_state(
        self, namespace: str = DEFAULT_NAMESPACE, service: str = ""
    ) -> ConnectionState:
        """The state of one cached service (KeyError if it is not cached)."""
        return self._cache.state(service_key(namespace, service))

    def add_state_listener(self, listener: StateListener) -> None:
        """Call ``listener(key, state)`` whenever a cached service changes state."""
        self._check_open()
        self._state_listeners.append(listener)
        self._cache.add_state_listener(listener)

    def remove_state_listener(self, listener: StateListener) -> None:
        if listener in self._state_listeners:
            self._state_listeners.remove(listener)
        self._cache.remove_state_listener(listener)

    # ------------------------------------------------------------- closing

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        watches, self._watches = self._watches, []
        state_listeners, self._state_listeners = self._state_listeners, []
        breaker_listeners, self._breaker_listeners = self._breaker_listeners, []
        if self._owns_context:
            await self._ctx.aclose()
            return
        for key, listener in watches:
            self._cache.unwatch(key, listener)
        for state_listener in state_listeners:
            self._cache.remove_state_listener(state_listener)
        for breaker_listener in breaker_listeners:
            self._breakers.remove_listener(breaker_listener)

    def _entering(self) -> None:
        self._ctx.check_loop()

    def __repr__(self) -> str:
        return f"<AsyncConsumerAPI {self._ctx!r}{' closed' if self.closed else ''}>"

    # ------------------------------------------------------------- helpers

    def _check_open(self) -> None:
        self._ctx.check_loop()
        if self._closed:
            raise ClosedError("the AsyncConsumerAPI is closed")

    async def _entry(self, namespace: str, service: str) -> Entry:
        self._check_open()
        entry = cached_entry(self._cache, namespace, service)
        if entry is not None:
            return entry
        return await self._cache.entry(service_key(namespace, service), self._timeout)


def _new_breakers(ctx: AsyncSDKContext) -> CircuitBreakers:
    pollers: list[AsyncRulePoller] = []

    def mailbox(listener: EventListener) -> AsyncMailbox[Any]:
        return AsyncMailbox(ctx.loop, listener)

    breakers = CircuitBreakers(
        mailbox=mailbox,
        on_new_service=lambda key: pollers[0].start(key),
        enabled=ctx.config.consumer.circuit_breaker_enable,
    )
    pollers.append(
        AsyncRulePoller(
            ctx, breakers, ctx.config.consumer.service_refresh_interval, ctx.config.api.timeout
        )
    )
    return breakers
