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
  Filtering and balancer set-up happen once per snapshot and filter, not per
  call (kept in bounded memos, see :mod:`polaris_sdk.consumer.selection`);
  a metadata filter is validated once while
  it stays in use; a ``get_instances`` answer is built once per snapshot
  confirmation and filter. Round robin keeps its turn per service and filter
  across snapshots.
* A service the server does not know reads as empty (revision ``""``);
  watching it reports its instances once they register.
* Listeners (``watch_service``) run on the cache's listener threads, each
  behind its own queue; see :mod:`polaris_sdk.cache.informer`.
* Thread-safe.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import replace
from typing import Any, Final

from polaris_sdk import _fork
from polaris_sdk._closing import Closing
from polaris_sdk._requests import coerce_request
from polaris_sdk.cache import CacheOptions, ConnectionState, Entry, ServiceCache, StateListener
from polaris_sdk.cache.listwatch import MISSING_REVISION
from polaris_sdk.cache.store import Store
from polaris_sdk.config import Configuration
from polaris_sdk.consumer.breakers import (
    CircuitBreakers,
    EventListener,
    ServiceBreakers,
    Stamp,
)
from polaris_sdk.consumer.cbrules import RulePoller
from polaris_sdk.consumer.circuitbreaker import check_outcome
from polaris_sdk.consumer.loadbalancer import (
    LB_POLICIES,
    RING_HASH,
    Picker,
    check_policy,
    hash_key_bytes,
)
from polaris_sdk.consumer.routers import MetadataKey, metadata_key
from polaris_sdk.consumer.selection import Selector
from polaris_sdk.context import SDKContext
from polaris_sdk.dispatch import Dispatcher
from polaris_sdk.errors import ClosedError, InstanceNotFoundError, ValidationError
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
from polaris_sdk.observe import Observers
from polaris_sdk.validation import (
    INVALID_HOST,
    INVALID_PARAMETER,
    INVALID_PORT,
    check_metadata,
    check_namespace,
    check_service,
)

__all__ = [
    "BREAKER_COMPONENT",
    "CACHE_COMPONENT",
    "SELECTION_COMPONENT",
    "ConsumerAPI",
    "WarmPicks",
]

logger = logging.getLogger("polaris_sdk.consumer.api")

CACHE_COMPONENT: Final = "consumer.cache"
SELECTION_COMPONENT: Final = "consumer.selection"
BREAKER_COMPONENT: Final = "consumer.circuitbreaker"
BREAKER_THREAD: Final = "polaris-breaker"
MAX_METHOD: Final = 1024
"""Characters of a reported ``method``."""

Listener = Callable[[ServiceChangeEvent], None]

_CHECKED_FILTERS: Final = 256
"""Metadata filters remembered as valid."""


@functools.lru_cache(maxsize=_CHECKED_FILTERS)
def _checked(wanted: MetadataKey) -> MetadataKey:
    # Only filters that pass are remembered: an exception is not cached.
    check_metadata(dict(wanted))
    return wanted


def _filter_key(metadata: Mapping[str, str]) -> MetadataKey:
    """``metadata`` as a memo key, validated once while the filter stays in use."""
    try:
        return _checked(metadata_key(metadata))
    except (TypeError, AttributeError):
        # Not a mapping, keys of mixed types that do not sort, or unhashable
        # values that cannot be looked up: the full check names the field.
        check_metadata(metadata)
        raise


_POLICIES: Final = frozenset(LB_POLICIES)


class ConsumerAPI(Closing):
    """The consumer facade over an :class:`~polaris_sdk.context.SDKContext`."""

    def __init__(self, ctx: SDKContext) -> None:
        self._ctx = ctx
        self._owns_context = False
        self._cache: ServiceCache = ctx.component(CACHE_COMPONENT, lambda: _new_cache(ctx))
        self._breakers: CircuitBreakers = ctx.component(
            BREAKER_COMPONENT, lambda: _new_breakers(ctx)
        )
        self._selector: Selector = ctx.component(
            SELECTION_COMPONENT, lambda: new_selector(self._cache, self._breakers)
        )
        self._warm = WarmPicks(self._cache, self._breakers)
        self._timeout = ctx.config.api.timeout
        self._default_policy = ctx.config.consumer.default_lb_policy
        self._lock = threading.Lock()
        self._breaker_listeners: list[EventListener] = []
        self._watches: list[tuple[ServiceKey, Listener]] = []
        self._state_listeners: list[StateListener] = []
        self._closed = False
        _fork.track(self)

    def _reset_after_fork(self) -> None:
        # The cache forgot the parent's watches: so does this facade.
        self._lock = threading.Lock()
        self._watches = []
        self._state_listeners = []

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
        req = coerce_request(GetAllInstancesRequest, request, fields)
        return self._entry(req.namespace or DEFAULT_NAMESPACE, req.service).current

    def get_instances(
        self, request: GetInstancesRequest | None = None, /, **fields: Any
    ) -> ServiceInstances:
        """The instances a call may go to; ``fallback=True`` when that is all of them
        because none is healthy or matches ``metadata``."""
        req = coerce_request(GetInstancesRequest, request, fields)
        namespace, wanted = instances_query(req)
        entry = self._entry(namespace, req.service)
        return self._selector.view(entry, namespace, req.service, wanted)

    def get_one_instance(
        self, request: GetOneInstanceRequest | None = None, /, **fields: Any
    ) -> Instance:
        """One instance picked by the load balancer; InstanceNotFoundError if there is none."""
        if not self._closed:  # a closed context's cache finds nothing warm
            found = self._warm.pick(request, fields)
            if found is not None:
                return found
        req = coerce_request(GetOneInstanceRequest, request, fields)
        namespace, policy, wanted, key = one_instance_query(req, self._default_policy)
        entry = self._entry(namespace, req.service)
        stamp = self._breakers.stamp(namespace, req.service)
        picker = self._selector.picker(entry, namespace, req.service, policy, wanted)
        self._warm.remember(request, fields, (namespace, req.service), entry, picker, stamp)
        return pick_from(picker, entry, key)

    # --------------------------------------------------------- call results

    def update_service_call_result(
        self, request: ServiceCallResult | None = None, /, **fields: Any
    ) -> None:
        """Report how one call to an instance went; the circuit breaker counts it.

        Cheap (a few microseconds, no I/O, no shared lock): call it after every call.
        """
        req = coerce_request(ServiceCallResult, request, fields)
        report_call(self._breakers, req, self._ctx.observers)

    def add_circuit_breaker_listener(self, listener: EventListener) -> None:
        """Call ``listener(event: CircuitBreakerEvent)`` on every breaker state change,
        on a listener thread behind its own queue."""
        if not callable(listener):
            raise ValidationError("listener", "must be a callable", INVALID_PARAMETER)
        with self._lock:
            self._check_open()
            self._breaker_listeners.append(listener)
        self._breakers.add_listener(listener)

    def remove_circuit_breaker_listener(self, listener: EventListener) -> None:
        with self._lock:
            if listener in self._breaker_listeners:
                self._breaker_listeners.remove(listener)
        self._breakers.remove_listener(listener)

    # ------------------------------------------------------------- watches

    def watch_service(
        self, request: WatchServiceRequest | None = None, /, **fields: Any
    ) -> ServiceInstances:
        """Call each listener on every change of the service, starting with the
        current snapshot as one "added" event; returns that snapshot."""
        req = coerce_request(WatchServiceRequest, request, fields)
        listeners = listeners_of(req.listeners)
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
        req = coerce_request(WatchServiceRequest, request, fields)
        listeners = listeners_of(req.listeners)
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
            breaker_listeners, self._breaker_listeners = self._breaker_listeners, []
        if self._owns_context:
            self._ctx.close()
            return
        for key, listener in watches:
            self._cache.unwatch(key, listener)
        for state_listener in state_listeners:
            self._cache.remove_state_listener(state_listener)
        for breaker_listener in breaker_listeners:
            self._breakers.remove_listener(breaker_listener)

    def __repr__(self) -> str:
        return f"<ConsumerAPI {self._ctx!r}{' closed' if self.closed else ''}>"

    # ------------------------------------------------------------- helpers

    def _check_open(self) -> None:
        if self._closed or self._ctx.closed:
            raise ClosedError("the ConsumerAPI is closed")

    def _key(self, namespace: str, service: str) -> ServiceKey:
        return service_key(namespace, service)

    def _entry(self, namespace: str, service: str) -> Entry:
        """The entry of a service; ``namespace`` already defaulted."""
        self._check_open()
        # A key already cached was validated when it was first listed: the
        # hot path skips the name checks.
        entry = cached_entry(self._cache, namespace, service)
        if entry is not None:
            return entry
        return self._cache.entry(self._key(namespace, service), self._timeout)


# The decisions of a read, shared by this facade and its asyncio twin
# (polaris_sdk.aio.consumer): they differ only in how they wait for an entry.


def service_key(namespace: str, service: str) -> ServiceKey:
    """The validated key of a service; an empty namespace is ``default``."""
    return ServiceKey(check_namespace(namespace or DEFAULT_NAMESPACE), check_service(service))


def instances_query(req: GetInstancesRequest) -> tuple[str, MetadataKey]:
    """The namespace and the validated metadata filter of a ``get_instances`` request."""
    wanted = _filter_key(req.metadata) if req.metadata else ()
    return req.namespace or DEFAULT_NAMESPACE, wanted


def one_instance_query(
    req: GetOneInstanceRequest, default_policy: str
) -> tuple[str, str, MetadataKey, bytes | None]:
    """Namespace, policy, filter and hash key of a ``get_one_instance`` request, validated."""
    policy = req.lb_policy or default_policy
    try:
        known = policy in _POLICIES
    except TypeError:  # not even hashable: check_policy() names the field
        known = False
    if not known:
        check_policy(policy)
    hash_key = req.hash_key
    if hash_key is None:
        if policy == RING_HASH:
            raise ValidationError(
                "hash_key", "is required with lb_policy ringHash", INVALID_PARAMETER
            )
    elif not isinstance(hash_key, str | bytes):
        raise ValidationError("hash_key", "must be a str or bytes", INVALID_PARAMETER)
    wanted = _filter_key(req.metadata) if req.metadata else ()
    return req.namespace or DEFAULT_NAMESPACE, policy, wanted, hash_key_bytes(hash_key)


def pick_from(picker: Picker | None, entry: Entry, key: bytes | None = None) -> Instance:
    """``picker``'s pick over ``entry``; InstanceNotFoundError when there is no picker."""
    if picker is None:
        raise InstanceNotFoundError(_no_instance(entry.snapshot))
    return picker.pick(key)


_INF: Final = float("inf")
MAX_WARM: Final = 1024
"""Calls remembered by :class:`WarmPicks` before it starts afresh."""

_WarmKey = tuple[Any, Any, Any]
_Warm = tuple[
    tuple[str, str],
    ServiceInstances,
    ServiceBreakers | None,
    int,
    Callable[[bytes | None], Instance],
]


class WarmPicks:
    """The warm path of ``get_one_instance`` without a filter or a hash key.

    Most calls name only the service (and maybe the namespace and policy), as
    keywords or in a prepared request. For those, the full path (build the
    request, validate it, find the entry, ask the selector) gives the same
    picker until the service's snapshot is replaced, so it is remembered by
    the call's own arguments (``(namespace, service, lb_policy)`` as given,
    or a prepared request by identity), with the snapshot it was built for,
    and used while that snapshot is still the cached one (checked by
    identity). Only calls that took the
    full path successfully are remembered, so every argument found here was
    validated; anything else (a filter, a hash key, another keyword, an
    unhashable value, a closed facade) takes the full path.

    Readers only call ``dict.get``; when full the memo is replaced by a new
    one, never cleared under a reader.
    """

    __slots__ = ("_breakers", "_by_keywords", "_by_request", "_by_service", "_store")

    def __init__(self, cache: Any, breakers: CircuitBreakers) -> None:
        # Read through the store at each call: a closed cache's finds nothing.
        self._store: Store = cache.store
        # A pick is warm only while the service's breakers stay as they were.
        self._breakers = breakers
        # service= alone (the commonest call), by the service name.
        self._by_service: dict[str, _Warm] = {}
        # Other keyword calls, by (namespace, service, lb_policy) as given.
        self._by_keywords: dict[_WarmKey, _Warm] = {}
        # Prepared requests by identity; the request is kept with its pick,
        # so its id cannot be reused while it is remembered.
        self._by_request: dict[int, tuple[GetOneInstanceRequest, _Warm]] = {}

    def pick(
        self, request: GetOneInstanceRequest | None, fields: Mapping[str, Any]
    ) -> Instance | None:
        """The pick for this call if it is warm, else None (take the full path)."""
        if request is None:
            try:
                if len(fields) == 1:
                    found = self._by_service.get(fields.get("service"))  # type: ignore[arg-type]
                else:
                    found = self._by_keywords.get(_keywords_key(fields))  # type: ignore[arg-type]
            except TypeError:  # an unhashable argument: the full path names it
                return None
        elif fields:
            return None
        else:
            held = self._by_request.get(id(request))
            if held is None or held[0] is not request:
                return None
            found = held[1]
        if found is None:
            return None
        named, snapshot, record, number, pick = found
        entry = self._store.lookup_named(named)
        if entry is None or entry.snapshot is not snapshot:
            return None
        # The breakers' stamp (CircuitBreakers.stamp) still holds: read inline.
        if record is None:
            if self._breakers.added != number:
                return None
        elif record.generation != number or (
            record.wake_at != _INF and self._breakers.clock() >= record.wake_at
        ):
            return None
        return pick(None)

    def remember(
        self,
        request: GetOneInstanceRequest | None,
        fields: Mapping[str, Any],
        named: tuple[str, str],
        entry: Entry,
        picker: Picker | None,
        stamp: Stamp,
    ) -> None:
        """Keep what the full path found for this (valid) call, if it can be warm:
        ``picker`` over ``entry``, the cache's entry of ``named`` (namespace, service),
        built with the service's breakers at ``stamp`` (read before building)."""
        if picker is None:
            return
        warm = (named, entry.snapshot, stamp[0], stamp[1], picker.pick)
        # A full memo is replaced, never cleared: a reader may be holding it.
        if request is not None:
            # Frozen, and a metadata of None cannot be filled in later.
            if request.__class__ is not GetOneInstanceRequest or fields:
                return
            if request.hash_key is not None or request.metadata is not None:
                return
            if len(self._by_request) >= MAX_WARM:
                self._by_request = {}
            self._by_request[id(request)] = (request, warm)
            return
        key = _keywords_key(fields)
        if key is None:
            return
        if len(fields) == 1:
            if len(self._by_service) >= MAX_WARM:
                self._by_service = {}
            self._by_service[key[1]] = warm
        else:
            if len(self._by_keywords) >= MAX_WARM:
                self._by_keywords = {}
            self._by_keywords[key] = warm


def _keywords_key(fields: Mapping[str, Any]) -> _WarmKey | None:
    namespace = fields.get("namespace")
    policy = fields.get("lb_policy")
    service = fields.get("service")
    if service is None or len(fields) != 1 + (namespace is not None) + (policy is not None):
        return None  # another keyword, or an explicit None: not a warm call
    return (namespace, service, policy)


def cached_entry(cache: Any, namespace: str, service: str) -> Entry | None:
    """The cached entry of a service, if any; never lists (an unhashable name is never cached)."""
    try:
        entry: Entry | None = cache.cached_entry_named(namespace, service)
    except TypeError:  # the full check in service_key() names the field
        return None
    return entry


def new_selector(cache: Any, breakers: CircuitBreakers | None = None) -> Selector:
    """The selector of a cache, warmed by it whenever a snapshot is replaced; with
    ``breakers``, open instances are left out and forgotten when they leave."""
    selector = Selector(breakers=breakers)
    if breakers is not None:
        cache.add_replace_hook(breakers.snapshot_replaced)
    cache.add_replace_hook(selector.snapshot_replaced)
    return selector


def report_call(
    breakers: CircuitBreakers, req: ServiceCallResult, observers: Observers | None = None
) -> None:
    """Check one call result and count it, then show it to the ``observers``;
    ValidationError naming the field."""
    instance = req.instance
    namespace = req.namespace or DEFAULT_NAMESPACE
    service = req.service
    if instance is not None:
        if not isinstance(instance, Instance):
            raise ValidationError("instance", "must be an Instance", INVALID_PARAMETER)
        if not service:
            namespace, service = instance.namespace, instance.service
        address = (instance.host, instance.port)
    else:
        host, port = req.host, req.port
        if not isinstance(host, str) or not host:
            raise ValidationError(
                "host", "must be a non-empty str when instance is not given", INVALID_HOST
            )
        if type(port) is not int or not 0 <= port <= 65535:
            raise ValidationError("port", "must be an int from 0 to 65535", INVALID_PORT)
        address = (host, port)
    try:
        known = breakers.get(namespace, service) is not None
    except TypeError:  # unhashable: the full check names the field
        known = False
    if not known:
        service_key(namespace, service)
    status, code, delay = req.ret_status, req.ret_code, req.delay
    check_outcome(status, code, delay)
    method = req.method
    if not isinstance(method, str) or len(method) > MAX_METHOD:
        raise ValidationError(
            "method", f"must be a str of at most {MAX_METHOD} characters", INVALID_PARAMETER
        )
    for name in ("caller_namespace", "caller_service"):
        if not isinstance(getattr(req, name), str):
            raise ValidationError(name, "must be a str", INVALID_PARAMETER)
    breakers.report(namespace, service, address, status, code, delay, method)
    if observers is not None and observers.call_results:
        host, port = address
        observers.call_result(
            replace(req, namespace=namespace, service=service, host=host, port=port)
        )


def listeners_of(listeners: Sequence[Listener]) -> tuple[Listener, ...]:
    """The listeners of a watch request, checked to be callables."""
    if callable(listeners):
        # A single function passed where a sequence is expected.
        return (listeners,)
    if isinstance(listeners, str | bytes) or not isinstance(listeners, Iterable):
        raise ValidationError(
            "listeners", "must be a callable or a sequence of callables", INVALID_PARAMETER
        )
    result = tuple(listeners)
    for listener in result:
        if not callable(listener):
            raise ValidationError("listeners", "must be callables", INVALID_PARAMETER)
    return result


def _no_instance(snapshot: ServiceInstances) -> str:
    if snapshot.revision == MISSING_REVISION and not snapshot.instances:
        return f"service {snapshot.service_key} is not known to the server"
    return f"service {snapshot.service_key} has no instances"


def _new_breakers(ctx: SDKContext) -> CircuitBreakers:
    dispatcher = Dispatcher(BREAKER_THREAD, max_workers=2)
    pollers: list[RulePoller] = []
    breakers = CircuitBreakers(
        mailbox=dispatcher.mailbox,
        on_new_service=lambda key: pollers[0].start(key),
        enabled=ctx.config.consumer.circuit_breaker_enable,
    )
    poller = RulePoller(
        ctx.connector,
        ctx.scheduler,
        breakers,
        ctx.config.consumer.service_refresh_interval,
        ctx.config.api.timeout,
    )
    pollers.append(poller)
    breakers.closing(poller.close, dispatcher.close)
    return breakers


def _new_cache(ctx: SDKContext) -> ServiceCache:
    return ServiceCache(
        ctx.connector,
        ctx.scheduler,
        CacheOptions.from_config(ctx.config),
        ctx.connection,
        ctx.observers,
    )
