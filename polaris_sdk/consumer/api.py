"""ConsumerAPI: find instances of a service from a local cache that keeps itself fresh.

Contract:

* ``ConsumerAPI(ctx)`` shares a context (and its one cache of services);
  ``ConsumerAPI.create(**kw)`` owns a context of its own. A context manager;
  ``close()`` is idempotent: it removes the listeners this facade added and,
  if it owns its context, closes it. Later calls raise
  :class:`~polaris_sdk.errors.ClosedError`.
* Methods take a request object or the same fields as keywords.
* The first call for a service lists it synchronously within the
  configured ``global.api.timeout``; later calls read the cache and never
  touch the network, so they cost microseconds and cannot fail for network
  reasons. Requests are validated before anything else
  (:class:`~polaris_sdk.errors.ValidationError` naming the field).
* ``get_all_instances``: every instance, unhealthy and isolated included.
  ``get_instances``: the routers' candidates (healthy, not isolated, weight
  above 0, metadata filter), or every instance with ``fallback=True`` when
  none qualifies. ``get_one_instance``: one candidate chosen by the load
  balancer (``weightedRandom`` by default, ``ringHash`` with ``hash_key``,
  ``roundRobin``); no instance at all raises
  :class:`~polaris_sdk.errors.InstanceNotFoundError`, never returns None.
  Filtering and balancer set-up happen once per snapshot, not per call.
* A service the server does not know reads as empty (revision ``""``);
  watching it reports its instances once they register.
* Listeners (``watch_service``) run on the cache's listener threads, each
  behind its own queue; see :mod:`polaris_sdk.cache.informer`.
* Thread-safe.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any, Final, TypeVar

from polaris_sdk.cache import CacheOptions, ConnectionState, Entry, ServiceCache, StateListener
from polaris_sdk.cache.listwatch import MISSING_REVISION
from polaris_sdk.config import Configuration
from polaris_sdk.consumer.loadbalancer import (
    RING_HASH,
    Picker,
    build_picker,
    check_policy,
    hash_key_bytes,
)
from polaris_sdk.consumer.routers import MetadataKey, metadata_key, route
from polaris_sdk.context import SDKContext
from polaris_sdk.errors import ClosedError, InstanceNotFoundError, ValidationError
from polaris_sdk.model import (
    DEFAULT_NAMESPACE,
    GetAllInstancesRequest,
    GetInstancesRequest,
    GetOneInstanceRequest,
    Instance,
    ServiceChangeEvent,
    ServiceInstances,
    ServiceKey,
    WatchServiceRequest,
)
from polaris_sdk.validation import check_metadata, check_namespace, check_service

__all__ = ["CACHE_COMPONENT", "ConsumerAPI"]

logger = logging.getLogger("polaris_sdk.consumer.api")

CACHE_COMPONENT: Final = "consumer.cache"
_INVALID_PARAMETER: Final = 400103

R = TypeVar("R")
Listener = Callable[[ServiceChangeEvent], None]


def _request(cls: type[R], request: R | None, fields: dict[str, Any]) -> R:
    if request is None:
        return cls(**fields)
    if fields:
        raise TypeError("pass a request object or keyword fields, not both")
    if not isinstance(request, cls):
        raise TypeError(f"expected a {cls.__name__}, got {type(request).__name__}")
    return request


Candidates = tuple[tuple[Instance, ...], bool]


def _candidates(wanted: MetadataKey) -> Callable[[ServiceInstances], Candidates]:
    def compute(snapshot: ServiceInstances) -> Candidates:
        return route(snapshot.instances, wanted)

    return compute


def _picker(policy: str, wanted: MetadataKey) -> Callable[[ServiceInstances], Picker | None]:
    # A pure function of the snapshot: the store re-runs it on the next
    # revision to warm the new entry.
    def compute(snapshot: ServiceInstances) -> Picker | None:
        instances, _ = route(snapshot.instances, wanted)
        return build_picker(policy, instances) if instances else None

    return compute


class ConsumerAPI:
    """The consumer facade over an :class:`~polaris_sdk.context.SDKContext`."""

    def __init__(self, ctx: SDKContext) -> None:
        self._ctx = ctx
        self._owns_context = False
        self._cache: ServiceCache = ctx.component(CACHE_COMPONENT, lambda: _new_cache(ctx))
        self._timeout = ctx.config.api.timeout
        self._default_policy = ctx.config.consumer.default_lb_policy
        self._lock = threading.Lock()
        self._watches: list[tuple[ServiceKey, Listener]] = []
        self._state_listeners: list[StateListener] = []
        self._closed = False

    @classmethod
    def create(
        cls, config: str | os.PathLike[str] | Configuration | None = None, **settings: Any
    ) -> ConsumerAPI:
        """A ConsumerAPI owning a new context; arguments as :meth:`SDKContext.create`."""
        ctx = SDKContext.create(config, **settings)
        try:
            api = cls(ctx)
        except BaseException:
            ctx.close()
            raise
        api._owns_context = True
        return api

    @property
    def context(self) -> SDKContext:
        return self._ctx

    @property
    def closed(self) -> bool:
        return self._closed or self._ctx.closed

    # --------------------------------------------------------------- reads

    def get_all_instances(
        self, request: GetAllInstancesRequest | None = None, /, **fields: Any
    ) -> ServiceInstances:
        """Every instance of the service, unhealthy and isolated ones included."""
        req = _request(GetAllInstancesRequest, request, fields)
        return self._entry(req.namespace, req.service).snapshot

    def get_instances(
        self, request: GetInstancesRequest | None = None, /, **fields: Any
    ) -> ServiceInstances:
        """The instances a call may go to; ``fallback=True`` when that is all of them
        because none is healthy or matches ``metadata``."""
        req = _request(GetInstancesRequest, request, fields)
        if req.metadata:
            check_metadata(req.metadata)
        entry = self._entry(req.namespace, req.service)
        wanted = metadata_key(req.metadata)
        instances, fallback = entry.derive(("route", wanted), _candidates(wanted))
        return dataclasses.replace(entry.snapshot, instances=instances, fallback=fallback)

    def get_one_instance(
        self, request: GetOneInstanceRequest | None = None, /, **fields: Any
    ) -> Instance:
        """One instance picked by the load balancer; InstanceNotFoundError if there is none."""
        req = _request(GetOneInstanceRequest, request, fields)
        policy = req.lb_policy or self._default_policy
        check_policy(policy)
        if req.hash_key is not None and not isinstance(req.hash_key, str | bytes):
            raise ValidationError("hash_key", "must be a str or bytes", _INVALID_PARAMETER)
        if policy == RING_HASH and req.hash_key is None:
            raise ValidationError(
                "hash_key", "is required with lb_policy ringHash", _INVALID_PARAMETER
            )
        if req.metadata:
            check_metadata(req.metadata)
        entry = self._entry(req.namespace, req.service)
        wanted = metadata_key(req.metadata)
        picker: Picker | None = entry.derive(("pick", policy, wanted), _picker(policy, wanted))
        if picker is None:
            raise InstanceNotFoundError(_no_instance(entry.snapshot))
        return picker.pick(hash_key_bytes(req.hash_key))

    # ------------------------------------------------------------- watches

    def watch_service(
        self, request: WatchServiceRequest | None = None, /, **fields: Any
    ) -> ServiceInstances:
        """Call each listener on every change of the service, starting with the
        current snapshot as one "added" event; returns that snapshot."""
        req = _request(WatchServiceRequest, request, fields)
        listeners = _listeners(req.listeners)
        key = self._key(req.namespace, req.service)
        self._check_open()
        self._cache.entry(key, self._timeout)
        for listener in listeners:
            with self._lock:
                self._check_open()
                self._watches.append((key, listener))
            self._cache.watch(key, listener, self._timeout)
        return self._cache.snapshot(key, self._timeout)

    def unwatch_service(self, request: WatchServiceRequest | None = None, /, **fields: Any) -> None:
        """Stop calling the listeners; events still queued for them are dropped."""
        req = _request(WatchServiceRequest, request, fields)
        listeners = _listeners(req.listeners)
        key = self._key(req.namespace, req.service)
        for listener in listeners:
            with self._lock:
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
        return self._cache.state(self._key(namespace, service))

    def add_state_listener(self, listener: StateListener) -> None:
        """Call ``listener(key, state)`` whenever a cached service changes state."""
        with self._lock:
            self._check_open()
            self._state_listeners.append(listener)
        self._cache.add_state_listener(listener)

    def remove_state_listener(self, listener: StateListener) -> None:
        with self._lock:
            if listener in self._state_listeners:
                self._state_listeners.remove(listener)
        self._cache.remove_state_listener(listener)

    # ------------------------------------------------------------- closing

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            watches, self._watches = self._watches, []
            state_listeners, self._state_listeners = self._state_listeners, []
        if self._owns_context:
            self._ctx.close()
            return
        for key, listener in watches:
            self._cache.unwatch(key, listener)
        for state_listener in state_listeners:
            self._cache.remove_state_listener(state_listener)

    def __enter__(self) -> ConsumerAPI:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<ConsumerAPI {self._ctx!r}{' closed' if self.closed else ''}>"

    # ------------------------------------------------------------- helpers

    def _check_open(self) -> None:
        if self._closed or self._ctx.closed:
            raise ClosedError("the ConsumerAPI is closed")

    def _key(self, namespace: str, service: str) -> ServiceKey:
        return ServiceKey(check_namespace(namespace or DEFAULT_NAMESPACE), check_service(service))

    def _entry(self, namespace: str, service: str) -> Entry:
        self._check_open()
        # A key already cached was validated when it was first listed: the
        # hot path skips the name checks.
        entry = self._cache.cached_entry(ServiceKey(namespace or DEFAULT_NAMESPACE, service))
        if entry is not None:
            return entry
        return self._cache.entry(self._key(namespace, service), self._timeout)


def _listeners(listeners: Sequence[Listener]) -> tuple[Listener, ...]:
    if callable(listeners):
        # A single function passed where a sequence is expected.
        return (listeners,)
    result = tuple(listeners)
    for listener in result:
        if not callable(listener):
            raise ValidationError("listeners", "must be callables", _INVALID_PARAMETER)
    return result


def _no_instance(snapshot: ServiceInstances) -> str:
    if snapshot.revision == MISSING_REVISION and not snapshot.instances:
        return f"service {snapshot.service_key} is not known to the server"
    return f"service {snapshot.service_key} has no instances"


def _new_cache(ctx: SDKContext) -> ServiceCache:
    return ServiceCache(ctx.connector, ctx.scheduler, CacheOptions.from_config(ctx.config))
