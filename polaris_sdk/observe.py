"""Observers: a synchronous look at what the SDK's machinery does, for metrics and tracing.

Contract:

* An observer is any object with some of the methods of :class:`Observer`
  (the others are simply not called); add it with
  ``ctx.add_observer(observer)`` on an :class:`~polaris_sdk.SDKContext` or an
  :class:`~polaris_sdk.AsyncSDKContext`, remove it with
  ``ctx.remove_observer(observer)``.
* Each method is called in the thread (or on the loop) doing the work, right
  after it: ``call_result`` inside ``update_service_call_result``,
  ``heartbeat`` after each heartbeat of a registration kept alive by
  ``register_instance``, ``revision_check`` after each Discover round of the
  consumer cache (the first listing and every refresh). So an observer must
  be quick and must not block: count, never wait or do I/O.
* An exception raised by an observer is logged and contained; the machinery
  and the other observers go on.
* Cheap when nobody observes: the drivers test an empty tuple and go on.
* Thread-safe: adding and removing swap immutable tuples under a lock; a
  call already under way may still reach an observer just removed.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from polaris_sdk.errors import ValidationError
from polaris_sdk.validation import INVALID_PARAMETER

if TYPE_CHECKING:
    from polaris_sdk.model import ServiceCallResult, ServiceInstances, ServiceKey
    from polaris_sdk.provider.core import RegistrationStatus

__all__ = ["Observer", "Observers"]

logger = logging.getLogger("polaris_sdk.observe")

_METHODS = ("call_result", "heartbeat", "revision_check")


class Observer:
    """The methods an observer may have; subclassing this is optional."""

    def call_result(self, result: ServiceCallResult) -> None:
        """One call result was reported. ``namespace``, ``service``, ``host`` and
        ``port`` are filled in (from ``instance`` when that named it)."""

    def heartbeat(self, status: RegistrationStatus, lateness: float, ok: bool) -> None:
        """One heartbeat of ``status.instance_id`` was answered (``ok``) or failed;
        ``lateness`` is how many seconds after its due time it was sent."""

    def revision_check(
        self, key: ServiceKey, changed: bool, ok: bool, snapshot: ServiceInstances | None
    ) -> None:
        """One Discover round of ``key`` ended: ``ok`` when the server answered,
        ``changed`` when a new snapshot was stored; ``snapshot`` is what the cache
        holds now (None before the first listing)."""


class Observers:
    """The observers of one context, sorted by method; see the module docstring."""

    __slots__ = ("_all", "_lock", "call_results", "heartbeats", "revision_checks")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._all: tuple[object, ...] = ()
        self.call_results: tuple[Callable[..., Any], ...] = ()
        self.heartbeats: tuple[Callable[..., Any], ...] = ()
        self.revision_checks: tuple[Callable[..., Any], ...] = ()

    def add(self, observer: object) -> None:
        """Add ``observer``; ValidationError when it has none of the methods."""
        if not any(callable(getattr(observer, name, None)) for name in _METHODS):
            raise ValidationError(
                "observer",
                "must have a call_result, heartbeat or revision_check method",
                INVALID_PARAMETER,
            )
        with self._lock:
            if observer not in self._all:
                self._set((*self._all, observer))

    def remove(self, observer: object) -> None:
        with self._lock:
            self._set(tuple(o for o in self._all if o is not observer))

    def _set(self, observers: tuple[object, ...]) -> None:
        self._all = observers
        for name in _METHODS:
            found = (getattr(o, name, None) for o in observers)
            setattr(self, name + "s", tuple(fn for fn in found if callable(fn)))

    def call_result(self, result: ServiceCallResult) -> None:
        _each(self.call_results, result)

    def heartbeat(self, status: RegistrationStatus, lateness: float, ok: bool) -> None:
        _each(self.heartbeats, status, lateness, ok)

    def revision_check(
        self, key: ServiceKey, changed: bool, ok: bool, snapshot: ServiceInstances | None
    ) -> None:
        _each(self.revision_checks, key, changed, ok, snapshot)


def _each(methods: tuple[Callable[..., Any], ...], *args: Any) -> None:
    for method in methods:
        try:
            method(*args)
        except Exception:
            logger.exception("observer %r failed; the others go on", method)
