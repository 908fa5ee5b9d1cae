"""RegisterFlow: registers instances and keeps them registered, for the threaded front end.

Contract:

* ``register()`` sends RegisterInstance and, on success, keeps the
  instance in the :class:`~polaris_sdk.provider.registry.Registry` and hands
  it to the :class:`~polaris_sdk.provider.heartbeat.HeartbeatDriver`: a
  heartbeat every TTL, re-registration when the server lost it. All
  instances share the context's one scheduler.
* One id, one registration: operations on one instance id (register,
  deregister, stop, close) run one at a time under that id's own lock
  (:class:`~polaris_sdk.provider.registry.KeyedLocks`). No lock shared by
  unrelated instances is held across network I/O, so a slow or dead server
  delays only the calls about the same instance. Registering an id again
  stops the old heartbeats (waiting for one in flight) before the new
  request is sent, so beats never double and an old request never
  overwrites the new one. If the new registration fails, the old one goes on.
* A registration that completes after its owner (or the flow) was closed is
  not kept: it is deregistered again and ``register()`` raises
  :class:`~polaris_sdk.errors.ClosedError`, so close() leaves nothing behind.
  A close waits (bounded: one more ``global.api.timeout``) for the
  registrations on the wire that it closes (its owner's, or all), so they
  can still deregister before the connector goes or the process ends (a
  SIGTERM during ``register_instance`` with ``deregister_on_exit()``).
* ``deregister()`` first stops the instance's heartbeats and waits for any
  heartbeat or re-registration in flight, then sends DeregisterInstance; no
  heartbeat can revive the instance after that.
* Status listeners get each state change through a mailbox of their own
  (:mod:`polaris_sdk.dispatch`, threads ``polaris-status-N``), never on the
  scheduler's workers: a slow or stuck listener delays neither heartbeats
  nor close(), and an exception in one is logged.
* ``close(deregister=True)`` stops every loop and deregisters every tracked
  instance in parallel on the scheduler's workers, within
  :meth:`RegisterFlow.close_budget` (one ``global.api.timeout`` per thousand
  instances); closing the whole flow then gives the listeners
  :data:`STATUS_DRAIN_TIMEOUT` seconds to take the last statuses.
  Deadlines of I/O are in real time, whatever the scheduler's clock.
  Thread-safe throughout.
* Shared instances (``provider.shareInstances``, on by default): each
  registration holds a lease on its instance (:mod:`polaris_sdk.provider.lease`)
  from before its request is sent; ``close()`` deregisters an instance only
  when no other live process holds it, so workers of one server sharing a
  host:port keep it registered until the last one stops. ``deregister()``
  always deregisters.
* ``register(background=True)``: when the registry cannot be reached (a
  network failure or a retriable server error), the call does not fail: the
  instance is kept in state ``reregistering`` and registered by the
  heartbeat loop with the re-registration backoff, then heartbeated as
  usual; its status and the logs say so.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from concurrent.futures import wait as wait_futures
from contextlib import contextmanager
from typing import Final, Protocol

from polaris_sdk.config import Configuration
from polaris_sdk.connector.base import HeartbeatSender, Registrar
from polaris_sdk.connector.retry import is_retriable
from polaris_sdk.dispatch import Dispatcher, Mailbox
from polaris_sdk.errors import ClosedError, PolarisError
from polaris_sdk.model import (
    InstanceDeregisterRequest,
    InstanceRegisterRequest,
    InstanceRegisterResponse,
)

# RegistrationState and RegistrationStatus are imported from here too: they
# lived in this module before the core moved to polaris_sdk.provider.core.
from polaris_sdk.observe import Observers
from polaris_sdk.provider.core import RegistrationCore, RegistrationState, RegistrationStatus
from polaris_sdk.provider.heartbeat import HeartbeatDriver, ThreadedRegistration
from polaris_sdk.provider.lease import Leases, lease_key
from polaris_sdk.provider.registry import KeyedLocks, Registration, Registry
from polaris_sdk.scheduler import Scheduler

__all__ = [
    "STATUS_DRAIN_TIMEOUT",
    "OwnedStatusListener",
    "RegisterFlow",
    "RegistrationState",
    "RegistrationStatus",
    "StatusListener",
]

logger = logging.getLogger("polaris_sdk.provider.flow")

StatusListener = Callable[[RegistrationStatus], None]
OwnedStatusListener = Callable[[RegistrationStatus, object], None]
"""Called with a status and the owner given to :meth:`RegisterFlow.register`."""

STATUS_DRAIN_TIMEOUT: Final = 2.0
"""Seconds a closing flow (or facade) waits for listeners to take the statuses already posted."""
STATUS_THREAD: Final = "polaris-status"
_STATUS_WORKERS: Final = 4

_Delivery = tuple[RegistrationStatus, object]
_Reg = ThreadedRegistration


class _Connector(Registrar, HeartbeatSender, Protocol):
    """What the flow calls on the server."""


def request_lease_key(req: InstanceRegisterRequest) -> str:
    return lease_key(req.namespace, req.service, req.host, req.port, req.vpc_id)


def registration_lease_key(reg: Registration) -> str:
    return request_lease_key(reg.core.request)


def deregister_lease_key(req: InstanceDeregisterRequest, reg: Registration | None) -> str:
    """The lease an explicit deregistration leaves: the tracked one's, else the request's."""
    if reg is not None:
        return registration_lease_key(reg)
    return lease_key(req.namespace, req.service, req.host, req.port or 0, req.vpc_id)


def still_shared(reg: Registration, others: int) -> bool:
    """Whether other processes still hold ``reg``'s instance (then it stays registered)."""
    if others:
        logger.info(
            "%s: still served by %d other process(es); not deregistered", reg.instance_id, others
        )
    return others > 0


def log_registered(
    req: InstanceRegisterRequest, resp: InstanceRegisterResponse, ttl: int | None
) -> None:
    logger.info(
        "registered %s/%s %s:%d as %s (ttl %ss)",
        req.namespace,
        req.service,
        req.host,
        req.port,
        resp.instance_id,
        ttl or "-",
    )


def log_background(req: InstanceRegisterRequest, exc: PolarisError, delay: float) -> None:
    logger.warning(
        "%s/%s %s:%d: registry unreachable (%s); registering in the background, "
        "next attempt in %.1fs",
        req.namespace,
        req.service,
        req.host,
        req.port,
        exc,
        max(0.0, delay),
    )


class RegisterFlow:
    """Registration, heartbeats and deregistration of many instances; see the module doc."""

    def __init__(
        self,
        connector: _Connector,
        scheduler: Scheduler,
        config: Configuration,
        observers: Observers | None = None,
    ) -> None:
        self._connector = connector
        self._scheduler = scheduler
        self._config = config
        self._lock = threading.Lock()  # guards the registry and id locks; never held across I/O
        self._registry: Registry[_Reg] = Registry()
        self._id_locks: KeyedLocks[threading.Lock] = KeyedLocks(threading.Lock)
        self._register_ended = threading.Condition(self._lock)  # a register() call ended
        self._listeners: list[tuple[OwnedStatusListener, Mailbox[_Delivery]]] = []
        self._dispatcher = Dispatcher(STATUS_THREAD, max_workers=_STATUS_WORKERS)
        self._driver = HeartbeatDriver(
            connector, scheduler, config.api.timeout, self._notify, observers
        )
        self._leases = Leases(config.provider.lease_dir, enabled=config.provider.share_instances)

    def _reset_after_fork(self) -> None:
        """In a forked child: none of the parent's registrations or listeners, new locks.

        The child never heartbeats, re-registers or deregisters what the
        parent registered (see :mod:`polaris_sdk._fork`).
        """
        closed = self._registry.closed
        self._lock = threading.Lock()
        self._registry = Registry()
        if closed:
            self._registry.close()
        self._id_locks = KeyedLocks(threading.Lock)
        self._register_ended = threading.Condition(self._lock)
        self._listeners = []
        self._dispatcher = Dispatcher(STATUS_THREAD, max_workers=_STATUS_WORKERS)

    # -------------------------------------------------------------- public

    @property
    def closed(self) -> bool:
        return self._registry.closed

    def add_listener(self, listener: OwnedStatusListener) -> None:
        def deliver(item: _Delivery) -> None:
            listener(*item)

        mailbox = self._dispatcher.mailbox(deliver, f"status listener {listener!r}")
        with self._lock:
            self._listeners.append((listener, mailbox))

    def remove_listener(self, listener: OwnedStatusListener, *, drain: float = 0.0) -> None:
        """Stop calling ``listener``; wait up to ``drain`` seconds for what was posted to it."""
        with self._lock:
            found = [m for known, m in self._listeners if known == listener]
            self._listeners = [(k, m) for k, m in self._listeners if k != listener]
        for mailbox in found:
            if drain > 0 and not self.closed and not mailbox.wait_idle(drain):
                logger.warning(
                    "a status listener is still busy after %.1fs; its queued statuses are dropped",
                    drain,
                )
            mailbox.close()

    def register(
        self,
        req: InstanceRegisterRequest,
        ttl: int,
        *,
        owner: object = None,
        timeout: float | None = None,
        background: bool = False,
    ) -> InstanceRegisterResponse:
        """Register ``req`` and keep it registered until deregistered or closed.

        ``existed`` in the answer is true when this flow already had the
        instance registered (the new request replaced it) or the server
        answered ExistedResource. With ``background`` an unreachable registry
        does not fail the call: see the module docstring.
        """
        heartbeats = req.enable_health_check
        iid = req.instance_id or self._id_for(
            req.namespace, req.service, req.host, req.port, req.vpc_id
        )
        key = request_lease_key(req)
        with self._in_flight(owner), self._instance_lock(iid):
            old = self._untrack(iid)
            if old is not None:
                self._driver.stop(old)
            self._leases.join(key)
            step = None
            try:
                resp = self._connector.register_instance(
                    req, ttl if heartbeats else None, timeout=timeout
                )
            except PolarisError as exc:
                if old is not None:
                    self._resume(old, timeout)
                    raise
                if not (background and heartbeats and is_retriable(exc)):
                    self._leases.leave(key).release()
                    raise
                resp = InstanceRegisterResponse(instance_id=iid)
                core = self._core(iid, req, ttl)
                step = core.register_failed(exc, self._driver.now())
                log_background(req, exc, step.at - self._driver.now())
            except BaseException:
                if old is not None:
                    self._resume(old, timeout)
                else:
                    self._leases.leave(key).release()
                raise
            if step is None:
                core = self._core(resp.instance_id, req, ttl)
            reg = ThreadedRegistration(core, owner, heartbeats)
            if step is None:
                step = self._driver.registered(reg)
            if not self._track(reg):
                # close() ran while the request was on the wire and could not
                # see this instance: take it off the server again ourselves.
                self._deregister_quietly(reg, timeout)
                raise ClosedError("the provider was closed while registering; deregistered again")
            if heartbeats:
                self._driver.start(reg, step)
        if core.state is RegistrationState.REGISTERED:
            log_registered(req, resp, ttl if heartbeats else None)
        return Registry.answer(resp, old)

    def _core(self, iid: str, req: InstanceRegisterRequest, ttl: int) -> RegistrationCore:
        return RegistrationCore(
            iid, req, ttl, max_backoff=self._config.provider.reregister_max_backoff
        )

    def deregister(self, req: InstanceDeregisterRequest, *, timeout: float | None = None) -> None:
        """Stop the instance's heartbeats (if tracked), then deregister it."""
        iid = req.instance_id
        if iid is None:
            iid = self._id_for(req.namespace, req.service, req.host, req.port, req.vpc_id)
        with self._instance_lock(iid):
            reg = self._untrack(iid)
            if reg is not None:
                self._driver.stop(reg)
                if req.instance_id is None:
                    # Name the tracked id: the instance may have been
                    # registered with an id of its own.
                    req = dataclasses.replace(req, instance_id=iid)
            with self._leases.leave(deregister_lease_key(req, reg)):
                self._connector.deregister_instance(req, timeout=timeout)
        logger.info("deregistered %s", iid)

    def stop(self, instance_id: str) -> bool:
        """Stop heartbeating ``instance_id`` without deregistering it; True if it was tracked."""
        with self._instance_lock(instance_id):
            reg = self._untrack(instance_id)
            if reg is None:
                return False
            self._driver.stop(reg)
            self._leases.leave(registration_lease_key(reg)).release()
            return True

    def status(self, instance_id: str) -> RegistrationStatus | None:
        with self._lock:
            reg = self._registry.get(instance_id)
        if reg is None:
            return None
        with reg.lock:
            return reg.core.status()

    def statuses(self, owner: object = None) -> list[RegistrationStatus]:
        """Every tracked instance (only ``owner``'s when given)."""
        with self._lock:
            regs = self._registry.owned(owner)
        result = []
        for reg in regs:
            with reg.lock:
                result.append(reg.core.status())
        return result

    def close_budget(self, owner: object = None) -> float:
        """Seconds close() gives the deregistrations of ``owner``'s (or all) instances."""
        with self._lock:
            count = len(self._registry.owned(owner))
        return self._budget(count)

    def close(
        self, *, deregister: bool | None = None, owner: object = None, timeout: float | None = None
    ) -> None:
        """Stop the instances (``owner``'s, or all and the flow) and deregister them.

        ``deregister`` defaults to ``provider.deregisterOnClose``; the
        deregistrations take at most ``timeout`` (default: :meth:`close_budget`).
        """
        if deregister is None:
            deregister = self._config.provider.deregister_on_close
        with self._lock:
            regs = self._registry.close(owner)
        if regs is None:
            return
        budget = self._budget(len(regs)) if timeout is None else timeout
        deadline = time.monotonic() + budget
        # Stop every timer before queueing the deregistrations: heartbeats
        # already handed to the workers then end at once instead of holding,
        # each for a whole call timeout when the server does not answer, the
        # workers the deregistrations wait for.
        for reg in regs:
            self._driver.halt(reg)
        futures: list[Future[None]] = []
        for reg in regs:
            try:
                futures.append(self._scheduler.submit(self._finish, reg, deregister, deadline))
            except ClosedError:  # no workers (the interpreter is exiting): one by one
                self._finish(reg, deregister, deadline)
        done, not_done = wait_futures(futures, timeout=budget + 1.0)
        for future in done:
            if future.exception() is not None:
                logger.error("close: stopping an instance failed", exc_info=future.exception())
        if not_done:
            logger.warning("close: %d instances not deregistered in time", len(not_done))
        # A registration on the wire (of the owner, or any) takes up to one
        # api.timeout, then sees the close and deregisters itself (see
        # register()): wait for it, so the process does not end before that.
        self._await_registrations(deadline + self._config.api.timeout, owner)
        if owner is None:
            self._close_listeners()

    # ------------------------------------------------------------ internal

    def _budget(self, instances: int) -> float:
        # One api.timeout per thousand instances: enough to deregister a
        # large fleet one by one, and still bounded when the server is gone.
        return self._config.api.timeout * max(1, math.ceil(instances / 1000))

    @contextmanager
    def _in_flight(self, owner: object) -> Iterator[None]:
        """Count a register() call of ``owner``, refused once the flow is closed."""
        with self._lock:
            self._registry.begin_register(owner)
        try:
            yield
        finally:
            with self._lock:
                self._registry.end_register(owner)
                self._register_ended.notify_all()

    def _await_registrations(self, deadline: float, owner: object = None) -> None:
        """Wait until no register() call of ``owner`` (of anyone: None) is in flight."""
        with self._lock:
            while self._registry.registering_for(owner):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    logger.warning(
                        "close: %d registrations still on the wire",
                        self._registry.registering_for(owner),
                    )
                    return
                self._register_ended.wait(remaining)

    @contextmanager
    def _instance_lock(self, iid: str) -> Iterator[None]:
        """Serialise the calls about one instance id; other ids never wait on it."""
        with self._lock:
            lock = self._id_locks.enter(iid)
        try:
            with lock:
                yield
        finally:
            with self._lock:
                self._id_locks.leave(iid)

    def _id_for(self, namespace: str, service: str, host: str, port: int | None, vpc: str) -> str:
        with self._lock:
            return self._registry.instance_id_for(namespace, service, host, port, vpc)

    def _track(self, reg: _Reg) -> bool:
        with self._lock:
            return self._registry.track(reg)

    def _untrack(self, iid: str) -> _Reg | None:
        with self._lock:
            return self._registry.untrack(iid)

    def _resume(self, reg: _Reg, timeout: float | None) -> None:
        """Put back the registration a failed re-registration replaced."""
        step = self._driver.registered(reg)
        if not self._track(reg):
            self._driver.halt(reg)
            self._deregister_quietly(reg, timeout)
            return
        if reg.heartbeats:
            self._driver.start(reg, step)

    def _deregister_quietly(self, reg: _Reg, timeout: float | None) -> None:
        """Leave the instance's lease; deregister it if no other process holds it."""
        with self._leases.leave(registration_lease_key(reg)) as leaving:
            if not still_shared(reg, leaving.others):
                try:
                    self._connector.deregister_instance(reg.deregister_req, timeout=timeout)
                except PolarisError as exc:
                    logger.warning("deregistering %s failed: %s", reg.instance_id, exc)

    def _finish(self, reg: _Reg, deregister: bool, deadline: float) -> None:
        with self._instance_lock(reg.instance_id):
            with self._lock:
                self._registry.forget(reg)
            self._driver.stop(reg)
            remaining = deadline - time.monotonic()
            if deregister and remaining > 0:
                self._deregister_quietly(reg, remaining)
            else:
                self._leases.leave(registration_lease_key(reg)).release()

    def _close_listeners(self) -> None:
        deadline = time.monotonic() + STATUS_DRAIN_TIMEOUT
        with self._lock:
            mailboxes = [m for _, m in self._listeners]
            self._listeners.clear()
        for mailbox in mailboxes:
            if not mailbox.wait_idle(max(0.0, deadline - time.monotonic())):
                logger.warning(
                    "a status listener is still busy after %.1fs; its queued statuses are dropped",
                    STATUS_DRAIN_TIMEOUT,
                )
        # Idle threads leave at once; one stuck in a listener is logged and left.
        self._dispatcher.close(max(0.2, deadline - time.monotonic()))

    def _notify(self, status: RegistrationStatus, owner: object) -> None:
        with self._lock:
            mailboxes = [m for _, m in self._listeners]
        for mailbox in mailboxes:
            mailbox.post((status, owner))
