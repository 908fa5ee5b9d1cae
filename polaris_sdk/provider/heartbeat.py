"""RegisterFlow: keeps registered instances registered, on the context's scheduler.

Contract:

* ``register()`` sends RegisterInstance and, on success, tracks the
  instance: a heartbeat every TTL, re-registration when the server lost it,
  as :class:`~polaris_sdk.provider.flow.RegistrationCore` decides. All
  instances share the one scheduler: one timer entry per instance, never a
  thread per instance.
* One id, one registration: operations on one instance id (register,
  deregister, stop, close) run one at a time under that id's own lock,
  created on demand and dropped when unused. No lock shared by unrelated
  instances is held across network I/O, so a slow or dead server delays
  only the calls about the same instance. Registering an id again stops the
  old heartbeats (waiting for one in flight) before the new request is sent,
  so beats never double and an old request never overwrites the new one. If
  the new registration fails, the old one goes on.
* A registration that completes after its owner (or the flow) was closed is
  not kept: it is deregistered again and ``register()`` raises
  :class:`~polaris_sdk.errors.ClosedError`, so close() leaves nothing behind.
  An owner counts as closed when its ``closed`` attribute is true. Closing
  the whole flow waits (bounded) for registrations on the wire, so they can
  still deregister before the connector goes.
* ``deregister()`` first stops the instance's heartbeats and waits for any
  heartbeat or re-registration in flight, then sends DeregisterInstance; no
  heartbeat can revive the instance after that.
* The heartbeat loop never ends on its own: failures are logged, counted in
  the instance's :class:`~polaris_sdk.provider.flow.RegistrationStatus`, and
  an unexpected exception is logged and the step tried again one TTL later.
* Status listeners get each state change through a mailbox of their own
  (:mod:`polaris_sdk.dispatch`, threads ``polaris-status-N``), never on the
  scheduler's workers: a slow or stuck listener delays neither heartbeats
  nor close(), and an exception in one is logged.
* ``close(deregister=True)`` stops every loop and deregisters every tracked
  instance in parallel on the scheduler's workers, within one
  ``global.api.timeout`` per thousand instances; closing the whole flow then
  gives the listeners :data:`STATUS_DRAIN_TIMEOUT` seconds to take the last
  statuses. Thread-safe throughout.
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
from typing import Any, Final, Protocol

from polaris_sdk.config import Configuration
from polaris_sdk.connector.base import HeartbeatSender, Registrar
from polaris_sdk.dispatch import Dispatcher, Mailbox
from polaris_sdk.errors import ClosedError, PolarisError
from polaris_sdk.model import (
    InstanceDeregisterRequest,
    InstanceHeartbeatRequest,
    InstanceRegisterRequest,
    InstanceRegisterResponse,
)
from polaris_sdk.provider.flow import (
    Action,
    RegistrationCore,
    RegistrationState,
    RegistrationStatus,
    Step,
)
from polaris_sdk.scheduler import Scheduler, TimerHandle
from polaris_sdk.validation import instance_id

__all__ = ["STATUS_DRAIN_TIMEOUT", "OwnedStatusListener", "RegisterFlow", "StatusListener"]

logger = logging.getLogger("polaris_sdk.provider.heartbeat")

StatusListener = Callable[[RegistrationStatus], None]
OwnedStatusListener = Callable[[RegistrationStatus, object], None]
"""Called with a status and the owner given to :meth:`RegisterFlow.register`."""

STATUS_DRAIN_TIMEOUT: Final = 2.0
"""Seconds a closing flow (or facade) waits for listeners to take the statuses already posted."""
STATUS_THREAD: Final = "polaris-status"
_STATUS_WORKERS: Final = 4
_LOG_EVERY: Final = 10

_Delivery = tuple[RegistrationStatus, object]


class _Connector(Registrar, HeartbeatSender, Protocol):
    """What the flow calls on the server."""


AddressKey = tuple[str, str, str, int, str]


class _Registration:
    """One tracked instance: its core, its pending timer, its requests and its locks."""

    __slots__ = (
        "core",
        "deregister_req",
        "handle",
        "heartbeat_req",
        "io_lock",
        "lock",
        "owner",
        "stopped",
        "track",
    )

    def __init__(self, core: RegistrationCore, owner: object, track: bool) -> None:
        req = core.request
        self.core = core
        self.owner = owner
        self.track = track  # heartbeats on (TTL health check) or only remembered
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
        self.lock = threading.Lock()  # guards core, handle and stopped
        self.io_lock = threading.Lock()  # held for a heartbeat or registration in flight
        self.handle: TimerHandle | None = None
        self.stopped = False

    @property
    def address(self) -> AddressKey:
        r = self.core.request
        return (r.namespace, r.service, r.host, r.port, r.vpc_id)


class _IdLock:
    __slots__ = ("lock", "users")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.users = 0  # holders and waiters; the entry is dropped at zero


def _owner_closed(owner: object) -> bool:
    return getattr(owner, "closed", False) is True


class RegisterFlow:
    """Registration, heartbeats and deregistration of many instances; see the module doc."""

    def __init__(
        self,
        connector: _Connector,
        scheduler: Scheduler,
        config: Configuration,
    ) -> None:
        self._connector = connector
        self._scheduler = scheduler
        self._config = config
        self._lock = threading.Lock()  # guards the maps below; never held across I/O
        self._id_locks: dict[str, _IdLock] = {}
        self._by_id: dict[str, _Registration] = {}
        self._by_address: dict[AddressKey, str] = {}
        self._listeners: list[tuple[OwnedStatusListener, Mailbox[_Delivery]]] = []
        self._registering = 0  # register() calls past the open check
        self._registered_all = threading.Condition(self._lock)  # notified when that drops to 0
        self._dispatcher = Dispatcher(STATUS_THREAD, max_workers=_STATUS_WORKERS)
        self._closed = False

    # -------------------------------------------------------------- public

    @property
    def closed(self) -> bool:
        return self._closed

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
            if drain > 0 and not self._closed and not mailbox.wait_idle(drain):
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
    ) -> InstanceRegisterResponse:
        """Register ``req`` and keep it registered until deregistered or closed.

        ``existed`` in the answer is true when this flow already had the
        instance registered (the new request replaced it) or the server
        answered ExistedResource.
        """
        heartbeats = req.enable_health_check
        iid = req.instance_id or self._id_for(
            req.namespace, req.service, req.host, req.port, req.vpc_id
        )
        with self._in_flight(), self._instance_lock(iid):
            old = self._untrack(iid)
            if old is not None:
                self._stop(old)
            try:
                resp = self._connector.register_instance(
                    req, ttl if heartbeats else None, timeout=timeout
                )
            except BaseException:
                if old is not None:
                    self._resume(old, timeout)
                raise
            core = RegistrationCore(
                resp.instance_id,
                req,
                ttl,
                max_backoff=self._config.provider.reregister_max_backoff,
            )
            reg = _Registration(core, owner, heartbeats)
            step = core.registered(time.monotonic())
            if not self._track(reg):
                # close() ran while the request was on the wire and could not
                # see this instance: take it off the server again ourselves.
                self._deregister_quietly(reg, timeout)
                raise ClosedError("the provider was closed while registering; deregistered again")
            if heartbeats:
                self._arm(reg, step)
        logger.info(
            "registered %s/%s %s:%d as %s (ttl %ss)",
            req.namespace,
            req.service,
            req.host,
            req.port,
            resp.instance_id,
            ttl if heartbeats else "-",
        )
        return dataclasses.replace(resp, existed=resp.existed or old is not None)

    def deregister(self, req: InstanceDeregisterRequest, *, timeout: float | None = None) -> None:
        """Stop the instance's heartbeats (if tracked), then deregister it."""
        iid = req.instance_id
        if iid is None:
            iid = self._id_for(req.namespace, req.service, req.host, req.port, req.vpc_id)
        with self._instance_lock(iid):
            reg = self._untrack(iid)
            if reg is not None:
                self._stop(reg)
                if req.instance_id is None:
                    # Name the tracked id: the instance may have been
                    # registered with an id of its own.
                    req = dataclasses.replace(req, instance_id=iid)
            self._connector.deregister_instance(req, timeout=timeout)
        logger.info("deregistered %s", iid)

    def stop(self, instance_id: str) -> bool:
        """Stop heartbeating ``instance_id`` without deregistering it; True if it was tracked."""
        with self._instance_lock(instance_id):
            reg = self._untrack(instance_id)
            if reg is None:
                return False
            self._stop(reg)
            return True

    def status(self, instance_id: str) -> RegistrationStatus | None:
        with self._lock:
            reg = self._by_id.get(instance_id)
        if reg is None:
            return None
        with reg.lock:
            return reg.core.status()

    def statuses(self, owner: object = None) -> list[RegistrationStatus]:
        """Every tracked instance (only ``owner``'s when given)."""
        with self._lock:
            regs = [r for r in self._by_id.values() if owner is None or r.owner is owner]
        result = []
        for reg in regs:
            with reg.lock:
                result.append(reg.core.status())
        return result

    def close(
        self, *, deregister: bool | None = None, owner: object = None, timeout: float | None = None
    ) -> None:
        """Stop the instances (``owner``'s, or all and the flow) and deregister them.

        ``deregister`` defaults to ``provider.deregisterOnClose``; the
        deregistrations take at most ``timeout`` (default:
        ``global.api.timeout`` per thousand instances).
        """
        if deregister is None:
            deregister = self._config.provider.deregister_on_close
        with self._lock:
            if owner is None:
                if self._closed:
                    return
                self._closed = True
            regs = [r for r in self._by_id.values() if owner is None or r.owner is owner]
        if timeout is None:
            # One api.timeout per thousand instances: enough to deregister a
            # large fleet one by one, and still bounded when the server is gone.
            timeout = self._config.api.timeout * max(1, math.ceil(len(regs) / 1000))
        budget = timeout
        deadline = time.monotonic() + budget
        # Stop every timer before queueing the deregistrations: heartbeats
        # already handed to the workers then end at once instead of holding,
        # each for a whole call timeout when the server does not answer, the
        # workers the deregistrations wait for.
        for reg in regs:
            self._halt(reg)
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
        if owner is None:
            # A registration on the wire takes up to one api.timeout, then
            # deregisters itself (see register()).
            self._await_registrations(deadline + self._config.api.timeout)
            self._close_listeners()

    # ------------------------------------------------------------ internal

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedError("the provider is closed")

    @contextmanager
    def _in_flight(self) -> Iterator[None]:
        """Count a register() call, refused once the flow is closed."""
        with self._lock:
            if self._closed:
                raise ClosedError("the provider is closed")
            self._registering += 1
        try:
            yield
        finally:
            with self._lock:
                self._registering -= 1
                if self._registering == 0:
                    self._registered_all.notify_all()

    def _await_registrations(self, deadline: float) -> None:
        with self._lock:
            while self._registering:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    logger.warning("close: %d registrations still on the wire", self._registering)
                    return
                self._registered_all.wait(remaining)

    @contextmanager
    def _instance_lock(self, iid: str) -> Iterator[None]:
        """Serialise the calls about one instance id; other ids never wait on it."""
        with self._lock:
            entry = self._id_locks.get(iid)
            if entry is None:
                entry = self._id_locks[iid] = _IdLock()
            entry.users += 1
        try:
            with entry.lock:
                yield
        finally:
            with self._lock:
                entry.users -= 1
                if entry.users == 0:
                    del self._id_locks[iid]

    def _id_for(self, namespace: str, service: str, host: str, port: int | None, vpc: str) -> str:
        address = (namespace, service, host, port or 0, vpc)
        with self._lock:
            known = self._by_address.get(address)
        return known or instance_id(namespace, service, host, port or 0, vpc)

    def _track(self, reg: _Registration) -> bool:
        """Remember ``reg``; False (and nothing remembered) if its owner or the flow closed."""
        iid = reg.core.instance_id
        with self._lock:
            # Checked under the lock close() takes its snapshot under: either
            # close() sees this registration, or this sees the close.
            if self._closed or _owner_closed(reg.owner):
                return False
            self._by_id[iid] = reg
            self._by_address[reg.address] = iid
            return True

    def _untrack(self, iid: str) -> _Registration | None:
        with self._lock:
            reg = self._by_id.pop(iid, None)
            if reg is not None and self._by_address.get(reg.address) == iid:
                del self._by_address[reg.address]
            return reg

    def _halt(self, reg: _Registration) -> None:
        """No new beat from ``reg``; one in flight goes on."""
        with reg.lock:
            reg.stopped = True
            if reg.handle is not None:
                reg.handle.cancel()
                reg.handle = None

    def _stop(self, reg: _Registration) -> None:
        """No more beats from ``reg``; returns once none is in flight."""
        self._halt(reg)
        with reg.io_lock:
            pass  # a beat or registration in flight has ended; none can start
        with reg.lock:
            changed = reg.core.state is not RegistrationState.DEREGISTERED
            reg.core.stop()
            status = reg.core.status()
        if changed:
            self._notify(status, reg.owner)

    def _resume(self, reg: _Registration, timeout: float | None) -> None:
        """Put back the registration a failed re-registration replaced."""
        with reg.lock:
            reg.stopped = False
            step = reg.core.registered(time.monotonic())
        if not self._track(reg):
            with reg.lock:
                reg.stopped = True
            self._deregister_quietly(reg, timeout)
            return
        if reg.track:
            self._arm(reg, step)

    def _deregister_quietly(self, reg: _Registration, timeout: float | None) -> None:
        try:
            self._connector.deregister_instance(reg.deregister_req, timeout=timeout)
        except PolarisError as exc:
            logger.warning("deregistering %s failed: %s", reg.core.instance_id, exc)

    def _finish(self, reg: _Registration, deregister: bool, deadline: float) -> None:
        iid = reg.core.instance_id
        with self._instance_lock(iid):
            with self._lock:
                if self._by_id.get(iid) is reg:
                    del self._by_id[iid]
                    if self._by_address.get(reg.address) == iid:
                        del self._by_address[reg.address]
            self._stop(reg)
            remaining = deadline - time.monotonic()
            if deregister and remaining > 0:
                self._deregister_quietly(reg, remaining)

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

    def _arm(self, reg: _Registration, step: Step) -> None:
        with reg.lock:
            if reg.stopped:
                return
            try:
                reg.handle = self._scheduler.call_at(step.at, self._tick, reg, step)
            except ClosedError:
                reg.handle = None
            except Exception:
                reg.handle = None
                logger.exception(
                    "%s: could not schedule the next %s; this instance is no longer kept alive",
                    reg.core.instance_id,
                    step.action.value,
                )

    def _tick(self, reg: _Registration, step: Step) -> None:
        # Whatever fails below, the loop goes on: by default the same step
        # again one TTL from now.
        nxt: Step | None = Step(step.action, time.monotonic() + reg.core.ttl)
        try:
            nxt = self._run(reg, step)
        except Exception:
            logger.exception(
                "%s of %s failed unexpectedly; trying again in %ss",
                step.action.value,
                reg.core.instance_id,
                reg.core.ttl,
            )
        finally:
            if nxt is not None:
                self._arm(reg, nxt)

    def _run(self, reg: _Registration, step: Step) -> Step | None:
        """Send the step and decide the next one; None if ``reg`` was stopped."""
        with reg.io_lock:
            with reg.lock:
                if reg.stopped:
                    return None
                before = reg.core.state
            error: PolarisError | None = None
            timeout = min(self._config.api.timeout, float(reg.core.ttl))
            try:
                if step.action is Action.HEARTBEAT:
                    self._connector.heartbeat(reg.heartbeat_req, timeout=timeout)
                else:
                    self._connector.register_instance(
                        reg.core.request, reg.core.ttl, timeout=timeout
                    )
            except PolarisError as exc:
                error = exc
            except Exception as exc:  # a bug below must not end the loop silently
                logger.exception(
                    "%s of %s failed unexpectedly", step.action.value, reg.core.instance_id
                )
                error = PolarisError(f"unexpected failure: {exc!r}")
            now = time.monotonic()
            with reg.lock:
                if reg.stopped:
                    return None
                core = reg.core
                if step.action is Action.HEARTBEAT:
                    if error is None:
                        nxt = core.heartbeat_ok(step.at, now)
                    else:
                        nxt = core.heartbeat_failed(error, step.at, now)
                elif error is None:
                    nxt = core.registered(now)
                else:
                    nxt = core.register_failed(error, now)
                status = core.status()
        self._log(step, status, before, nxt)
        if status.state is not before:
            self._notify(status, reg.owner)
        return nxt

    def _log(
        self, step: Step, status: RegistrationStatus, before: RegistrationState, nxt: Step
    ) -> None:
        iid = status.instance_id
        after = status.state
        if step.action is Action.REGISTER and status.last_error is None:
            logger.info("re-registered %s", iid)
        elif after is RegistrationState.REREGISTERING:
            logger.warning(
                "%s: %s failed (%s); registering again in %.1fs",
                iid,
                step.action.value,
                status.last_error,
                max(0.0, nxt.at - time.monotonic()),
            )
        elif after is RegistrationState.FAILING and (
            before is not after or status.consecutive_failures % _LOG_EVERY == 0
        ):
            logger.warning(
                "%s: heartbeat failed %d time(s) in a row: %s",
                iid,
                status.consecutive_failures,
                status.last_error,
            )
        elif after is RegistrationState.REGISTERED and before is not after:
            logger.info("%s: heartbeats succeed again", iid)

    def _notify(self, status: RegistrationStatus, owner: object) -> None:
        with self._lock:
            mailboxes = [m for _, m in self._listeners]
        for mailbox in mailboxes:
            mailbox.post((status, owner))
