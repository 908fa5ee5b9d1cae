"""RegisterFlow: keeps registered instances registered, on the context's scheduler.

Contract:

* ``register()`` sends RegisterInstance and, on success, tracks the
  instance: a heartbeat every TTL, re-registration when the server lost it,
  as :class:`~polaris_sdk.provider.flow.RegistrationCore` decides. All
  instances share the one scheduler: one timer entry per instance, never a
  thread per instance.
* One id, one registration: registering an id again stops the old
  heartbeats (waiting for one in flight) before the new request is sent, so
  beats never double and an old request never overwrites the new one. If the
  new registration fails, the old one goes on.
* ``deregister()`` first stops the instance's heartbeats and waits for any
  heartbeat or re-registration in flight, then sends DeregisterInstance; no
  heartbeat can revive the instance after that.
* Failures in the loop are logged, counted in the instance's
  :class:`~polaris_sdk.provider.flow.RegistrationStatus` and passed to the
  status listeners on each state change. Listeners run on a scheduler
  worker, one call at a time per change; an exception in one is logged.
* ``close(deregister=True)`` stops every loop and deregisters every tracked
  instance in parallel on the scheduler's workers, within one
  ``global.api.timeout`` per thousand instances. Thread-safe throughout.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import wait as wait_futures
from typing import Protocol

from polaris_sdk.config import Configuration
from polaris_sdk.connector.base import HeartbeatSender, Registrar
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

__all__ = ["OwnedStatusListener", "RegisterFlow", "StatusListener"]

logger = logging.getLogger("polaris_sdk.provider.heartbeat")

StatusListener = Callable[[RegistrationStatus], None]
OwnedStatusListener = Callable[[RegistrationStatus, object], None]
"""Called with a status and the owner given to :meth:`RegisterFlow.register`."""
_STRIPES = 64
_LOG_EVERY = 10


class _Connector(Registrar, HeartbeatSender, Protocol):
    """What the flow calls on the server."""


AddressKey = tuple[str, str, str, int, str]


def _address_key(namespace: str, service: str, host: str, port: int, vpc_id: str) -> AddressKey:
    return (namespace, service, host, port, vpc_id)


class _Registration:
    """One tracked instance: its core, its pending timer and its locks."""

    __slots__ = ("core", "handle", "heartbeat_req", "io_lock", "lock", "owner", "stopped", "track")

    def __init__(self, core: RegistrationCore, owner: object, track: bool) -> None:
        req = core.request
        self.core = core
        self.owner = owner
        self.track = track  # heartbeats on (TTL health check) or only remembered
        self.heartbeat_req = InstanceHeartbeatRequest(
            namespace=req.namespace,
            service=req.service,
            host=req.host,
            port=req.port,
            instance_id=core.instance_id,
            vpc_id=req.vpc_id,
            service_token=req.service_token,
        )
        self.lock = threading.Lock()  # guards core, handle and stopped
        self.io_lock = threading.Lock()  # held for a heartbeat or registration in flight
        self.handle: TimerHandle | None = None
        self.stopped = False

    @property
    def address(self) -> AddressKey:
        r = self.core.request
        return _address_key(r.namespace, r.service, r.host, r.port, r.vpc_id)


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
        self._lock = threading.Lock()
        self._stripes = [threading.Lock() for _ in range(_STRIPES)]
        self._by_id: dict[str, _Registration] = {}
        self._by_address: dict[AddressKey, str] = {}
        self._listeners: list[OwnedStatusListener] = []
        self._closed = False

    # -------------------------------------------------------------- public

    @property
    def closed(self) -> bool:
        return self._closed

    def add_listener(self, listener: OwnedStatusListener) -> None:
        with self._lock:
            self._listeners.append(listener)

    def remove_listener(self, listener: OwnedStatusListener) -> None:
        with self._lock:
            if listener in self._listeners:
                self._listeners.remove(listener)

    def register(
        self,
        req: InstanceRegisterRequest,
        ttl: int,
        *,
        owner: object = None,
        timeout: float | None = None,
    ) -> InstanceRegisterResponse:
        """Register ``req`` and keep it registered until deregistered or closed."""
        self._check_open()
        heartbeats = req.enable_health_check
        iid = self._id_for(req.namespace, req.service, req.host, req.port, req.vpc_id, req)
        with self._stripe(iid):
            old = self._untrack(iid)
            if old is not None:
                self._stop(old)
            try:
                resp = self._connector.register_instance(
                    req, ttl if heartbeats else None, timeout=timeout
                )
            except BaseException:
                if old is not None:
                    self._resume(old)
                raise
            core = RegistrationCore(
                resp.instance_id,
                req,
                ttl,
                max_backoff=self._config.provider.reregister_max_backoff,
            )
            reg = _Registration(core, owner, heartbeats)
            step = core.registered(time.monotonic())
            with self._lock:
                if self._closed:
                    raise ClosedError("the provider is closed")
                self._by_id[resp.instance_id] = reg
                self._by_address[reg.address] = resp.instance_id
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
        return resp

    def deregister(self, req: InstanceDeregisterRequest, *, timeout: float | None = None) -> None:
        """Stop the instance's heartbeats (if tracked), then deregister it."""
        iid = req.instance_id
        if iid is None:
            iid = self._id_for(req.namespace, req.service, req.host, req.port, req.vpc_id, None)
        with self._stripe(iid):
            reg = self._untrack(iid)
            if reg is not None:
                self._stop(reg)
                if req.instance_id is None:
                    # Name the tracked id: the instance may have been
                    # registered with an id of its own.
                    req = InstanceDeregisterRequest(
                        namespace=req.namespace,
                        service=req.service,
                        host=req.host,
                        port=req.port,
                        instance_id=iid,
                        vpc_id=req.vpc_id,
                        service_token=req.service_token,
                    )
            self._connector.deregister_instance(req, timeout=timeout)
        logger.info("deregistered %s", iid)

    def stop(self, instance_id: str) -> bool:
        """Stop heartbeating ``instance_id`` without deregistering it; True if it was tracked."""
        with self._stripe(instance_id):
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

        ``deregister`` defaults to ``provider.deregisterOnClose``; the whole
        close takes at most ``timeout`` (default: ``global.api.timeout`` per
        thousand instances).
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

    # ------------------------------------------------------------ internal

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedError("the provider is closed")

    def _stripe(self, iid: str) -> threading.Lock:
        return self._stripes[hash(iid) % _STRIPES]

    def _id_for(
        self,
        namespace: str,
        service: str,
        host: str,
        port: int | None,
        vpc_id: str,
        req: InstanceRegisterRequest | None,
    ) -> str:
        if req is not None and req.instance_id:
            return req.instance_id
        with self._lock:
            known = self._by_address.get(_address_key(namespace, service, host, port or 0, vpc_id))
        return known or instance_id(namespace, service, host, port or 0, vpc_id)

    def _untrack(self, iid: str) -> _Registration | None:
        with self._lock:
            reg = self._by_id.pop(iid, None)
            if reg is not None and self._by_address.get(reg.address) == iid:
                del self._by_address[reg.address]
            return reg

    def _stop(self, reg: _Registration) -> None:
        """No more beats from ``reg``; returns once none is in flight."""
        with reg.lock:
            reg.stopped = True
            if reg.handle is not None:
                reg.handle.cancel()
                reg.handle = None
        with reg.io_lock:
            pass  # a beat or registration in flight has ended; none can start
        with reg.lock:
            changed = reg.core.state is not RegistrationState.DEREGISTERED
            reg.core.stop()
            status = reg.core.status()
        if changed:
            self._notify(status, reg.owner)

    def _resume(self, reg: _Registration) -> None:
        with reg.lock:
            reg.stopped = False
            step = reg.core.registered(time.monotonic())
        with self._lock:
            self._by_id[reg.core.instance_id] = reg
            self._by_address[reg.address] = reg.core.instance_id
        if reg.track:
            self._arm(reg, step)

    def _finish(self, reg: _Registration, deregister: bool, deadline: float) -> None:
        iid = reg.core.instance_id
        with self._stripe(iid):
            with self._lock:
                if self._by_id.get(iid) is reg:
                    del self._by_id[iid]
                    if self._by_address.get(reg.address) == iid:
                        del self._by_address[reg.address]
            self._stop(reg)
            remaining = deadline - time.monotonic()
            if not deregister or remaining <= 0:
                return
            r = reg.core.request
            try:
                self._connector.deregister_instance(
                    InstanceDeregisterRequest(
                        namespace=r.namespace,
                        service=r.service,
                        host=r.host,
                        port=r.port,
                        instance_id=iid,
                        vpc_id=r.vpc_id,
                        service_token=r.service_token,
                    ),
                    timeout=remaining,
                )
            except PolarisError as exc:
                logger.warning("close: deregistering %s failed: %s", iid, exc)

    def _arm(self, reg: _Registration, step: Step) -> None:
        with reg.lock:
            if reg.stopped:
                return
            try:
                reg.handle = self._scheduler.call_at(step.at, self._tick, reg, step)
            except ClosedError:
                reg.handle = None

    def _tick(self, reg: _Registration, step: Step) -> None:
        with reg.io_lock:
            with reg.lock:
                if reg.stopped:
                    return
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
                    return
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
        self._arm(reg, nxt)
        if status.state is not before:
            self._notify(status, reg.owner)

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
            listeners = list(self._listeners)
        for listener in listeners:
            try:
                self._scheduler.submit(self._call_listener, listener, status, owner)
            except ClosedError:
                self._call_listener(listener, status, owner)

    @staticmethod
    def _call_listener(
        listener: OwnedStatusListener, status: RegistrationStatus, owner: object
    ) -> None:
        try:
            listener(status, owner)
        except Exception:
            logger.exception("registration status listener failed")
