"""AsyncProviderAPI: register, heartbeat and deregister from asyncio code.

Contract (the twin of :class:`~polaris_sdk.provider.ProviderAPI`, with the
same arguments, errors, defaults and guarantees):

* Every method takes a request object or the same fields as keywords and
  validates them before anything is sent.
* ``register_instance`` registers and keeps the instance registered: the
  decisions (heartbeat every TTL at a fixed rate, re-register after two
  NotFound answers with backoff, never give up) are
  :class:`~polaris_sdk.provider.flow.RegistrationCore`'s, shared with the
  threaded driver. Each kept instance is an entry of the context's slot
  runner (:class:`~polaris_sdk.aio.slots.SlotRunner`): the beats due in one
  20 ms slot are all sent before any answer is awaited; no task per
  instance, no thread.
* One id, one registration: calls about the same instance id run one at a
  time. Registering an id again stops its heartbeats (waiting for one in
  flight) before the new request is sent; ``deregister()`` does the same, so
  no heartbeat or re-registration can revive an instance after it.
* A registration that completes after close is deregistered again and
  raises :class:`~polaris_sdk.errors.ClosedError`; ``aclose()`` waits
  (bounded) for registrations on the wire, then deregisters everything this
  facade registered (unless ``provider.deregisterOnClose`` is false), all at
  once, within one ``global.api.timeout`` per thousand instances.
* Status callbacks (``on_status``, plain or ``async def``) get every state
  change through their own mailbox on the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import math
import os
import signal
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any, Final

from polaris_sdk._closing import AsyncClosing
from polaris_sdk._requests import coerce_request
from polaris_sdk.aio.context import AsyncSDKContext
from polaris_sdk.aio.dispatch import AsyncMailbox
from polaris_sdk.config import Configuration
from polaris_sdk.connector.awaiting import Later
from polaris_sdk.connector.retry import is_retriable
from polaris_sdk.errors import ClosedError, PolarisError
from polaris_sdk.model import (
    InstanceDeregisterRequest,
    InstanceHeartbeatRequest,
    InstanceRegisterRequest,
    InstanceRegisterResponse,
)
from polaris_sdk.provider.api import validate_instance_key, validate_register
from polaris_sdk.provider.core import (
    Action,
    RegistrationCore,
    RegistrationState,
    RegistrationStatus,
    Step,
)
from polaris_sdk.provider.flow import (
    STATUS_DRAIN_TIMEOUT,
    deregister_lease_key,
    log_background,
    log_registered,
    registration_lease_key,
    request_lease_key,
    still_shared,
)
from polaris_sdk.provider.lease import Leases
from polaris_sdk.provider.registry import KeyedLocks, Registration, Registry

__all__ = ["AsyncProviderAPI"]

logger = logging.getLogger("polaris_sdk.aio.provider")

FLOW_COMPONENT: Final = "polaris_sdk.aio.AsyncRegisterFlow"
_BUG_BACKOFF: Final = 1.0
"""Seconds before a step whose bookkeeping failed (a bug) is tried again."""

StatusCallback = Callable[[RegistrationStatus], Any]
OwnedListener = Callable[[RegistrationStatus, object], Any]
_Delivery = tuple[RegistrationStatus, object]


class _AsyncRegistration(Registration):
    """A registration with the asyncio driver's own state: the step on the wire."""

    __slots__ = ("in_flight", "landed")

    def __init__(self, core: RegistrationCore, owner: object, heartbeats: bool) -> None:
        super().__init__(core, owner, heartbeats)
        self.in_flight = False  # a heartbeat or re-registration is on the wire
        # Made by whoever waits for the step on the wire; done once it is judged.
        self.landed: asyncio.Future[None] | None = None


class AsyncRegisterFlow:
    """Every registration one :class:`AsyncSDKContext` keeps alive.

    The bookkeeping and decisions are the threaded flow's
    (:class:`~polaris_sdk.provider.registry.Registry`,
    :class:`~polaris_sdk.provider.registry.KeyedLocks`,
    :meth:`RegistrationCore.step_done`, :class:`StepReporter`); this class
    only waits on the loop. One loop serialises every call, so no lock
    guards the registry; the per-id locks are ``asyncio.Lock``.
    """

    def __init__(self, ctx: AsyncSDKContext) -> None:
        self._ctx = ctx
        self._config: Configuration = ctx.config
        self._connector = ctx.connector
        self._registry: Registry[_AsyncRegistration] = Registry()
        self._id_locks: KeyedLocks[asyncio.Lock] = KeyedLocks(asyncio.Lock)
        self._listeners: list[tuple[OwnedListener, AsyncMailbox[_Delivery]]] = []
        self._register_ended = asyncio.Event()  # set when a register() call ends
        self._leases = Leases(
            self._config.provider.lease_dir, enabled=self._config.provider.share_instances
        )

    def _reset_after_fork(self) -> None:
        """In a forked child: none of the parent's registrations or listeners."""
        closed = self._registry.closed
        self._registry = Registry()
        if closed:
            self._registry.close()
        self._id_locks = KeyedLocks(asyncio.Lock)
        self._listeners = []
        self._register_ended = asyncio.Event()

    @property
    def closed(self) -> bool:
        return self._registry.closed

    # ------------------------------------------------------------- listeners

    def add_listener(self, listener: OwnedListener) -> None:
        def deliver(item: _Delivery) -> Any:
            return listener(*item)

        self._listeners.append((listener, AsyncMailbox(self._ctx.loop, deliver)))

    async def remove_listener(self, listener: OwnedListener, drain: float = 0.0) -> None:
        found = [m for known, m in self._listeners if known == listener]
        self._listeners = [(k, m) for k, m in self._listeners if k != listener]
        for mailbox in found:
            if drain > 0:
                await mailbox.wait_idle(drain)
            await mailbox.aclose(STATUS_DRAIN_TIMEOUT)

    def _notify(self, status: RegistrationStatus, owner: object) -> None:
        for _, mailbox in self._listeners:
            mailbox.post((status, owner))

    # ----------------------------------------------------------------- calls

    @contextlib.asynccontextmanager
    async def _instance_lock(self, iid: str) -> AsyncIterator[None]:
        lock = self._id_locks.enter(iid)
        try:
            async with lock:
                yield
        finally:
            self._id_locks.leave(iid)

    async def register(
        self,
        req: InstanceRegisterRequest,
        ttl: int,
        *,
        owner: object = None,
        timeout: float | None = None,
        background: bool = False,
    ) -> InstanceRegisterResponse:
        heartbeats = req.enable_health_check
        registry = self._registry
        iid = req.instance_id or registry.instance_id_for(
            req.namespace, req.service, req.host, req.port, req.vpc_id
        )
        key = request_lease_key(req)
        registry.begin_register(owner)
        try:
            async with self._instance_lock(iid):
                old = registry.untrack(iid)
                if old is not None:
                    await self._stop(old)
                await asyncio.to_thread(self._leases.join, key)
                step = None
                try:
                    resp = await self._connector.register_instance(
                        req, ttl if heartbeats else None, timeout=timeout
                    )
                except PolarisError as exc:
                    if old is not None:
                        await self._resume(old, timeout)
                        raise
                    if not (background and heartbeats and is_retriable(exc)):
                        await self._leave(key)
                        raise
                    resp = InstanceRegisterResponse(instance_id=iid)
                    core = self._core(iid, req, ttl)
                    step = core.register_failed(exc, self._now())
                    log_background(req, exc, step.at - self._now())
                except BaseException:
                    if old is not None:
                        await self._resume(old, timeout)
                    else:
                        await self._leave(key)
                    raise
                if step is None:
                    core = self._core(resp.instance_id, req, ttl)
                    step = core.registered(self._now())
                reg = _AsyncRegistration(core, owner, heartbeats)
                if not registry.track(reg):
                    await self._deregister_quietly(reg, timeout)
                    raise ClosedError(
                        "the provider was closed while registering; deregistered again"
                    )
                if heartbeats:
                    self._start(reg, step)
        finally:
            registry.end_register(owner)
            self._register_ended.set()
        if core.state is RegistrationState.REGISTERED:
            log_registered(req, resp, ttl if heartbeats else None)
        return Registry.answer(resp, old)

    def _core(self, iid: str, req: InstanceRegisterRequest, ttl: int) -> RegistrationCore:
        return RegistrationCore(
            iid, req, ttl, max_backoff=self._config.provider.reregister_max_backoff
        )

    async def _leave(self, key: str) -> None:
        (await asyncio.to_thread(self._leases.leave, key)).release()

    async def deregister(
        self, req: InstanceDeregisterRequest, *, timeout: float | None = None
    ) -> None:
        iid = req.instance_id
        if iid is None:
            iid = self._registry.instance_id_for(
                req.namespace, req.service, req.host, req.port, req.vpc_id
            )
        async with self._instance_lock(iid):
            reg = self._registry.untrack(iid)
            if reg is not None:
                await self._stop(reg)
                if req.instance_id is None:
                    req = dataclasses.replace(req, instance_id=iid)
            leaving = await asyncio.to_thread(self._leases.leave, deregister_lease_key(req, reg))
            try:
                await self._connector.deregister_instance(req, timeout=timeout)
            finally:
                leaving.release()
        logger.info("deregistered %s", iid)

    def status(self, iid: str) -> RegistrationStatus | None:
        reg = self._registry.get(iid)
        return reg.core.status() if reg is not None else None

    def statuses(self, owner: object = None) -> list[RegistrationStatus]:
        return [r.core.status() for r in self._registry.owned(owner)]

    def close_budget(self, count: int) -> float:
        """One ``global.api.timeout`` per thousand instances, as the threaded flow."""
        return self._config.api.timeout * max(1, math.ceil(count / 1000))

    async def close(
        self, *, deregister: bool | None = None, owner: object = None, timeout: float | None = None
    ) -> None:
        if deregister is None:
            deregister = self._config.provider.deregister_on_close
        regs = self._registry.close(owner)
        if regs is None:
            return
        if timeout is None:
            timeout = self.close_budget(len(regs))
        deadline = self._now() + timeout
        for reg in regs:
            reg.stopped = True  # no new beat; one in flight ends on its own
        finish = [self._finish(reg, deregister, deadline) for reg in regs]
        for result in await asyncio.gather(*finish, return_exceptions=True):
            if isinstance(result, BaseException):
                logger.error("close: stopping an instance failed", exc_info=result)
        # A registration on the wire (the owner's, or any) deregisters itself
        # once it lands: wait for it, bounded.
        await self._await_registrations(
            owner, max(0.0, deadline - self._now()) + self._config.api.timeout
        )
        if owner is None:
            for _, mailbox in self._listeners:
                await mailbox.wait_idle(STATUS_DRAIN_TIMEOUT)
                await mailbox.aclose(STATUS_DRAIN_TIMEOUT)
            self._listeners.clear()

    aclose = close

    async def _await_registrations(self, owner: object, timeout: float) -> None:
        deadline = self._now() + timeout
        while self._registry.registering_for(owner):
            remaining = deadline - self._now()
            if remaining <= 0:
                logger.warning(
                    "close: %d registrations still on the wire",
                    self._registry.registering_for(owner),
                )
                return
            self._register_ended.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._register_ended.wait(), remaining)

    # -------------------------------------------------------------- internal

    def _now(self) -> float:
        return self._ctx.time()

    def _start(self, reg: _AsyncRegistration, step: Step) -> None:
        reg.stopped = False
        self._schedule(reg, step)

    def _schedule(self, reg: _AsyncRegistration, step: Step) -> None:
        if reg.stopped:
            return
        try:
            reg.handle = self._ctx.slots.call_at(step.at, lambda: self._send(reg, step))
        except ClosedError:
            reg.handle = None

    async def _stop(self, reg: _AsyncRegistration) -> None:
        """No more beats from ``reg``; returns once none is in flight."""
        reg.stopped = True
        handle, reg.handle = reg.handle, None
        if handle is not None:
            handle.cancel()
        if reg.in_flight:
            if reg.landed is None:
                reg.landed = asyncio.get_running_loop().create_future()
            await asyncio.shield(reg.landed)
        changed = reg.core.state is not RegistrationState.DEREGISTERED
        reg.core.stop()
        if changed:
            self._notify(reg.core.status(), reg.owner)

    async def _resume(self, reg: _AsyncRegistration, timeout: float | None) -> None:
        """Put back the registration a failed re-registration replaced."""
        step = reg.core.registered(self._now())
        if not self._registry.track(reg):
            await self._deregister_quietly(reg, timeout)
            return
        if reg.heartbeats:
            self._start(reg, step)

    async def _deregister_quietly(self, reg: Registration, timeout: float | None) -> None:
        """Leave the instance's lease; deregister it if no other process holds it."""
        leaving = await asyncio.to_thread(self._leases.leave, registration_lease_key(reg))
        try:
            if not still_shared(reg, leaving.others):
                await self._connector.deregister_instance(reg.deregister_req, timeout=timeout)
        except PolarisError as exc:
            logger.warning("deregistering %s failed: %s", reg.instance_id, exc)
        finally:
            leaving.release()

    async def _finish(self, reg: _AsyncRegistration, deregister: bool, deadline: float) -> None:
        async with self._instance_lock(reg.instance_id):
            self._registry.forget(reg)
            await self._stop(reg)
            remaining = deadline - self._now()
            if deregister and remaining > 0:
                await self._deregister_quietly(reg, remaining)
            else:
                await self._leave(registration_lease_key(reg))

    def _send(self, reg: _AsyncRegistration, step: Step) -> Later[None] | None:
        """A step's first part (in its slot): sends it; the continuation judges it."""
        reg.handle = None
        if reg.stopped:
            return None
        lateness = self._now() - step.at
        core = reg.core
        timeout = min(self._config.api.timeout, float(core.ttl))
        pending: Awaitable[object]
        try:
            if step.action is Action.HEARTBEAT:
                pending = self._connector.begin_heartbeat(reg.heartbeat_req, timeout=timeout)
            else:
                pending = self._connector.begin_register(core.request, core.ttl, timeout=timeout)
        except Exception as exc:  # judged below like any failure of the step
            pending = Later(_raising, exc)
        reg.in_flight = True
        return Later(self._judge, reg, step, pending, lateness)

    async def _judge(
        self, reg: _AsyncRegistration, step: Step, pending: Awaitable[object], lateness: float
    ) -> None:
        core = reg.core
        before = core.state
        error: PolarisError | None = None
        nxt = step
        try:
            try:
                await pending
            except PolarisError as exc:
                error = exc
            except Exception as exc:  # a bug below must not end the loop silently
                logger.exception(
                    "%s of %s failed unexpectedly", step.action.value, core.instance_id
                )
                error = PolarisError(f"unexpected failure: {exc!r}")
            now = self._now()
            nxt = core.step_done(step, error, now)
            status = core.status()
            line = reg.reporter.report(step, before, status, nxt.at - now)
            if line is not None:
                logger.log(line.level, line.message, *line.args)
            if status.state is not before:
                self._notify(status, reg.owner)
            if step.action is Action.HEARTBEAT and self._ctx.observers.heartbeats:
                self._ctx.observers.heartbeat(status, lateness, error is None)
        except Exception:
            logger.exception("judging the %s of %s failed", step.action.value, core.instance_id)
            if nxt is step:
                nxt = Step(step.action, self._now() + _BUG_BACKOFF)
        finally:
            reg.in_flight = False
            landed, reg.landed = reg.landed, None
            if landed is not None and not landed.done():
                landed.set_result(None)
        self._schedule(reg, nxt)


async def _raising(error: Exception) -> None:
    raise error


class AsyncProviderAPI(AsyncClosing):
    """The asyncio twin of :class:`~polaris_sdk.provider.ProviderAPI`."""

    def __init__(
        self,
        context: AsyncSDKContext,
        *,
        on_status: StatusCallback | None = None,
        _owns_context: bool = False,
    ) -> None:
        self._ctx = context
        self._owns_context = _owns_context
        self._flow: AsyncRegisterFlow = context.component(
            FLOW_COMPONENT, lambda: AsyncRegisterFlow(context)
        )
        self._on_status = on_status
        if on_status is not None:
            self._flow.add_listener(self._filter_status)
        self._closed = False
        self._signals: dict[int, Any] = {}

    @classmethod
    def create(
        cls,
        config: str | os.PathLike[str] | Configuration | None = None,
        *,
        on_status: StatusCallback | None = None,
        **kwargs: Any,
    ) -> AsyncProviderAPI:
        """An AsyncProviderAPI on a context of its own (arguments as ``AsyncSDKContext.create``)."""
        ctx = AsyncSDKContext.create(config, **kwargs)
        return cls(ctx, on_status=on_status, _owns_context=True)

    @property
    def context(self) -> AsyncSDKContext:
        return self._ctx

    @property
    def closed(self) -> bool:
        return self._closed

    async def register_instance(
        self,
        request: InstanceRegisterRequest | None = None,
        /,
        *,
        background: bool = False,
        **fields: Any,
    ) -> InstanceRegisterResponse:
        """Register and keep registered: a heartbeat every TTL until deregistered or closed."""
        req = coerce_request(InstanceRegisterRequest, request, fields)
        validate_register(req)
        self._check_open()
        ttl = req.ttl if req.ttl is not None else self._ctx.config.provider.heartbeat_ttl
        return await self._flow.register(req, ttl, owner=self, background=background)

    async def register(
        self, request: InstanceRegisterRequest | None = None, /, **fields: Any
    ) -> InstanceRegisterResponse:
        """Register once; no heartbeats."""
        req = coerce_request(InstanceRegisterRequest, request, fields)
        validate_register(req)
        self._check_open()
        return await self._ctx.connector.register_instance(req, req.ttl)

    async def heartbeat(
        self, request: InstanceHeartbeatRequest | None = None, /, **fields: Any
    ) -> None:
        """Send one heartbeat."""
        req = coerce_request(InstanceHeartbeatRequest, request, fields)
        validate_instance_key(req)
        self._check_open()
        await self._ctx.connector.heartbeat(req)

    async def deregister(
        self, request: InstanceDeregisterRequest | None = None, /, **fields: Any
    ) -> None:
        """Stop the instance's heartbeats, then deregister it (unknown instances are fine)."""
        req = coerce_request(InstanceDeregisterRequest, request, fields)
        validate_instance_key(req)
        self._check_open()
        await self._flow.deregister(req)

    def status(self, instance_id: str) -> RegistrationStatus | None:
        return self._flow.status(instance_id)

    def registrations(self) -> list[RegistrationStatus]:
        return self._flow.statuses(owner=self)

    async def aclose(self) -> None:
        """Stop heartbeats and deregister what ``register_instance`` registered. Idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            if not self._flow.closed and not self._ctx.closed:
                await self._flow.close(owner=self)
            if self._on_status is not None:
                await self._flow.remove_listener(self._filter_status, drain=STATUS_DRAIN_TIMEOUT)
        finally:
            if self._owns_context:
                await self._ctx.aclose()

    def deregister_on_exit(self, signals: Iterable[int] = (signal.SIGTERM,)) -> None:
        """On ``signals``: ``aclose()`` (deregistering), then the signal's previous handling.

        Uses the loop's signal handlers (main thread only); the handler that
        was installed before is put back and the signal raised again, so with
        the default handler the process ends as it would have.
        """
        loop = self._ctx.check_loop()
        for sig in signals:
            if sig not in self._signals:
                self._signals[sig] = signal.getsignal(sig)
                loop.add_signal_handler(sig, self._on_signal, sig)

    def _on_signal(self, sig: int) -> None:
        self._ctx.loop.create_task(self._exit(sig), name=f"polaris-exit {sig}")

    async def _exit(self, sig: int) -> None:
        logger.info("signal %d: closing the provider and deregistering", sig)
        try:
            await self.aclose()
        except Exception:
            logger.exception("closing on signal %d failed", sig)
        loop = asyncio.get_running_loop()
        for known, previous in list(self._signals.items()):
            loop.remove_signal_handler(known)
            signal.signal(known, previous if previous is not None else signal.SIG_DFL)
        self._signals.clear()
        signal.raise_signal(sig)

    def _entering(self) -> None:
        self._ctx.check_loop()

    def _check_open(self) -> None:
        self._ctx.check_loop()
        if self._closed:
            raise ClosedError("the AsyncProviderAPI is closed")

    def _filter_status(self, status: RegistrationStatus, owner: object) -> Any:
        if owner is self and self._on_status is not None:
            return self._on_status(status)
        return None
