"""The registry of a context's registrations: bookkeeping and decisions, no I/O, no waiting.

Contract:

* :class:`Registry` knows every instance the provider keeps registered, by
  id and by address, with its owner (the facade that registered it); the
  register calls in flight; and whether it is closed. :class:`Registration`
  is one such instance: its :class:`~polaris_sdk.provider.core.RegistrationCore`,
  its owner, the heartbeat and deregister requests built from one key, the
  pending timer of its driver and its :class:`~polaris_sdk.provider.core.StepReporter`.
* The decisions a driver must take the same way, whichever front end it
  serves: which id an address names (:meth:`Registry.instance_id_for`);
  whether a register call may start (:meth:`Registry.begin_register`) and
  how many of an owner's are in flight (:meth:`Registry.registering_for`);
  whether a registration that has just completed is kept or must be
  deregistered again because its owner or the registry closed meanwhile
  (:meth:`Registry.track` is false); which instances a close stops
  (:meth:`Registry.close`); what ``existed`` answers (:meth:`Registry.answer`).
* :class:`KeyedLocks` makes calls about one instance id run one at a time:
  a lock per id from a factory (``threading.Lock`` for the threaded flow,
  ``asyncio.Lock`` for an event loop), made on first use and dropped when
  no caller holds or waits for it. It only counts; the driver acquires.
* Neither class is thread-safe and neither ever blocks: the driver
  serialises the calls (the threaded flow under one lock held only for
  them, never across I/O; an asyncio driver by running on one loop).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, Generic, Protocol, TypeVar

from polaris_sdk.errors import ClosedError
from polaris_sdk.model import (
    InstanceDeregisterRequest,
    InstanceHeartbeatRequest,
    InstanceRegisterResponse,
)
from polaris_sdk.provider.core import RegistrationCore, StepReporter
from polaris_sdk.validation import instance_id

__all__ = ["AddressKey", "Cancellable", "KeyedLocks", "Registration", "Registry"]

AddressKey = tuple[str, str, str, int, str]
"""namespace, service, host, port, vpc id: what names an instance without its id."""


class Cancellable(Protocol):
    """A driver's pending timer (a scheduler handle, an asyncio handle or task)."""

    def cancel(self) -> object: ...


class Registration:
    """One instance kept registered; the driver guards its mutable fields."""

    __slots__ = (
        "core",
        "deregister_req",
        "handle",
        "heartbeat_req",
        "heartbeats",
        "owner",
        "reporter",
        "stopped",
    )

    def __init__(self, core: RegistrationCore, owner: object, heartbeats: bool) -> None:
        req = core.request
        self.core = core
        self.owner = owner
        self.heartbeats = heartbeats  # heartbeats on (TTL health check) or only remembered
        key: dict[str, Any] = {
            "namespace": req.namespace,
            "service": req.service,
            "host": req.host,
            "port": req.port,
            "instance_id": core.instance_id,
            "vpc_id": req.vpc_id,
            "service_token": req.service_token,
        }
        self.heartbeat_req = InstanceHeartbeatRequest(**key)
        self.deregister_req = InstanceDeregisterRequest(**key)
        self.handle: Cancellable | None = None
        self.stopped = False  # no step may be sent any more
        self.reporter = StepReporter()

    @property
    def instance_id(self) -> str:
        return self.core.instance_id

    @property
    def address(self) -> AddressKey:
        r = self.core.request
        return (r.namespace, r.service, r.host, r.port, r.vpc_id)


def owner_closed(owner: object) -> bool:
    """An owner counts as closed when its ``closed`` attribute is true."""
    return getattr(owner, "closed", False) is True


R = TypeVar("R", bound=Registration)
L = TypeVar("L")


class Registry(Generic[R]):
    """Registrations by id and address, their owners, and the closed flag; see the module doc."""

    def __init__(self) -> None:
        self._by_id: dict[str, R] = {}
        self._by_address: dict[AddressKey, str] = {}
        self._registering = 0
        self._registering_by: dict[int, int] = {}  # id(owner) -> register calls in flight
        self._closed = False

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def registering(self) -> int:
        """Register calls between :meth:`begin_register` and :meth:`end_register`."""
        return self._registering

    def registering_for(self, owner: object = None) -> int:
        """Register calls in flight for ``owner`` (all of them when None)."""
        if owner is None:
            return self._registering
        return self._registering_by.get(id(owner), 0)

    def instance_id_for(
        self, namespace: str, service: str, host: str, port: int | None, vpc: str
    ) -> str:
        """The id of the instance at this address: the tracked one, else the computed one."""
        address = (namespace, service, host, port or 0, vpc)
        known = self._by_address.get(address)
        return known or instance_id(namespace, service, host, port or 0, vpc)

    def begin_register(self, owner: object = None) -> None:
        """Count a register call of ``owner``; :class:`ClosedError` once the registry is closed."""
        if self._closed:
            raise ClosedError("the provider is closed")
        self._registering += 1
        key = id(owner)
        self._registering_by[key] = self._registering_by.get(key, 0) + 1

    def end_register(self, owner: object = None) -> bool:
        """The call counted by :meth:`begin_register` ended; True if none is left."""
        self._registering -= 1
        key = id(owner)
        left = self._registering_by[key] - 1
        if left:
            self._registering_by[key] = left
        else:
            del self._registering_by[key]
        return self._registering == 0

    def track(self, reg: R) -> bool:
        """Remember ``reg``; False (and nothing remembered) if its owner or the registry closed.

        False means the instance is on the server but nobody will deregister
        it: the caller deregisters it again itself and raises ClosedError.
        Asked under the same serialisation as :meth:`close`, so either the
        close sees this registration or this sees the close.
        """
        if self._closed or owner_closed(reg.owner):
            return False
        self._by_id[reg.instance_id] = reg
        self._by_address[reg.address] = reg.instance_id
        return True

    def untrack(self, iid: str) -> R | None:
        """Forget the registration of ``iid`` and return it (None if there is none)."""
        reg = self._by_id.pop(iid, None)
        if reg is not None and self._by_address.get(reg.address) == iid:
            del self._by_address[reg.address]
        return reg

    def forget(self, reg: R) -> None:
        """Forget ``reg`` if it is still the registration of its id."""
        if self._by_id.get(reg.instance_id) is reg:
            self.untrack(reg.instance_id)

    def get(self, iid: str) -> R | None:
        return self._by_id.get(iid)

    def owned(self, owner: object = None) -> list[R]:
        """Every registration (only ``owner``'s when given)."""
        return [r for r in self._by_id.values() if owner is None or r.owner is owner]

    def close(self, owner: object = None) -> list[R] | None:
        """The registrations a close stops: ``owner``'s, or all (closing the registry).

        None when the registry was closed already (a second close has nothing to do).
        """
        if owner is None:
            if self._closed:
                return None
            self._closed = True
        return self.owned(owner)

    @staticmethod
    def answer(
        resp: InstanceRegisterResponse, replaced: Registration | None
    ) -> InstanceRegisterResponse:
        """``existed`` is true when this registry had the instance or the server said so."""
        return dataclasses.replace(resp, existed=resp.existed or replaced is not None)


class _Entry(Generic[L]):
    __slots__ = ("lock", "users")

    def __init__(self, lock: L) -> None:
        self.lock = lock
        self.users = 0  # holders and waiters; the entry is dropped at zero


class KeyedLocks(Generic[L]):
    """One lock per key, made by ``factory``, kept while used; see the module doc."""

    def __init__(self, factory: Callable[[], L]) -> None:
        self._factory = factory
        self._entries: dict[str, _Entry[L]] = {}

    def enter(self, key: str) -> L:
        """Count a caller of ``key`` and return the lock it then acquires."""
        entry = self._entries.get(key)
        if entry is None:
            entry = self._entries[key] = _Entry(self._factory())
        entry.users += 1
        return entry.lock

    def leave(self, key: str) -> None:
        """The caller counted by :meth:`enter` has released the lock (or never got it)."""
        entry = self._entries[key]
        entry.users -= 1
        if entry.users == 0:
            del self._entries[key]

    def __len__(self) -> int:
        """Keys with a caller holding or waiting for their lock."""
        return len(self._entries)
