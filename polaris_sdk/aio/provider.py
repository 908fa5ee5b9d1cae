"""AsyncProviderAPI: register, heartbeat and deregister from asyncio code.

Contract (the twin of :class:`~polaris_sdk.provider.ProviderAPI`, with the
same arguments, errors, defaults and guarantees):

* Every method takes a request object or the same fields as keywords and
  validates them before anything is sent.
* ``register_instance`` registers and keeps the instance registered: the
  decisions (heartbeat every TTL at a fixed rate, re-register after two
  NotFound answers with backoff, never give up) are
  :class:`~polaris_sdk.provider.flow.RegistrationCore`'s, shared with the
  threaded driver. Each kept instance is one supervised task on the
  context's loop (sleeping between beats); no thread is started.
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
from collections.abc import AsyncIterator, Callable, Iterable
from types import TracebackType
from typing import Any, Final, Self

from polaris_sdk._requests import coerce_request
from polaris_sdk.aio.context import AsyncSDKContext
from polaris_sdk.aio.dispatch import AsyncMailbox
from polaris_sdk.config import Configuration
from polaris_sdk.errors import ClosedError, PolarisError
from polaris_sdk.model import (
    InstanceDeregisterRequest,
    InstanceHeartbeatRequest,
    InstanceRegisterRequest,
    InstanceRegisterResponse,
)
from polaris_sdk.provider.api import validate_instance_key, validate_register
from polaris_sdk.provider.flow import (
    Action,
    RegistrationCore,
    RegistrationState,
    RegistrationStatus,
    Step,
)
from polaris_sdk.validation import instance_id

__all__ = ["AsyncProviderAPI"]

logger = logging.getLogger("polaris_sdk.aio.provider")

FLOW_COMPONENT: Final = "polaris_sdk.aio.AsyncRegisterFlow"
STATUS_DRAIN_TIMEOUT: Final = 2.0

StatusCallback = Callable[[RegistrationStatus], Any]


class _Registration:
    __slots__ = (
        "core",
        "deregister_req",
        "heartbeat_req",
        "io",
        "owner",
        "stopped",
        "task",
        "track",
    )

    def __init__(self, core: RegistrationCore, owner: object, track: bool) -> None:
        req = core.request
        key: dict[str, Any] = {
            "namespace": req.namespace,
            "service": req.service,
            "host": req.host,
            "port": req.port,
            "instance_id": core.instance_id,
            "vpc_id": req.vpc_id,
            "service_token": req.service_token,
        }
        self.core = core
        self.owner = owner
        self.track = track
        self.heartbeat_req = InstanceHeartbeatRequest(**key)
        self.deregister_req = InstanceDeregisterRequest(**key)
        self.io = asyncio.Lock()  # held while a heartbeat or re-registration is on the wire
        self.task: asyncio.Task[None] | None = None
        self.stopped = False


def _address(reg: _Registration) -> tuple[str, str, str, int, str]:
    r = reg.core.request
    return (r.namespace, r.service, r.host, r.port, r.vpc_id)


class _IdLocks:
    """One asyncio lock per instance id, dropped when nobody holds or waits for it."""

    def __init__(self) -> None:
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}

    @contextlib.asynccontextmanager
    async def hold(self, iid: str) -> AsyncIterator[None]:
        lock, users = self._locks.get(iid) or (asyncio.Lock(), 0)
        self._locks[iid] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[iid]
            if users <= 1:
                del self._locks[iid]
            else:
                self._locks[iid] = (lock, users - 1)


class AsyncRegisterFlow:
    """Every registration one :class:`AsyncSDKContext` keeps alive."""

    def __init__(self, ctx: AsyncSDKContext) -> None:
        self._ctx = ctx
        self._config: Configuration = ctx.config
        self._connector = ctx.connector
        self._by_id: dict[str, _Registration] = {}
        self._locks = _IdLocks()
        self._listeners: list[
            tuple[
                Callable[[RegistrationStatus, object], Any],
                AsyncMailbox[tuple[RegistrationStatus, object]],
            ]
        ] = []
        self._registering = 0
        self._none_registering = asyncio.Event()
        self._none_registering.set()
        self._closed = False

    @property
    def closed(self) -> bool:
        return self._closed

    # ------------------------------------------------------------- listeners

    def add_listener(self, listener: Callable[[RegistrationStatus, object], Any]) -> None:
        def deliver(item: tuple[RegistrationStatus, object]) -> Any:
            return listener(*item)

        self._listeners.append((listener, AsyncMailbox(self._ctx.loop, deliver)))

    async def remove_listener(
        self, listener: Callable[[RegistrationStatus, object], Any], drain: float = 0.0
    ) -> None:
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

    async def register(
        self,
        req: InstanceRegisterRequest,
        ttl: int,
        *,
        owner: object = None,
        timeout: float | None = None,
    ) -> InstanceRegisterResponse:
        if self._closed:
            raise ClosedError("the provider is closed")
        heartbeats = req.enable_health_check
        iid = req.instance_id or instance_id(
            req.namespace, req.service, req.host, req.port, req.vpc_id
        )
        self._registering += 1
        self._none_registering.clear()
        try:
            async with self._locks.hold(iid):
                old = self._by_id.pop(iid, None)
                if old is not None:
                    await self._stop(old)
                try:
                    resp = await self._connector.register_instance(
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
                step = core.registered(self._now())
                if self._closed or getattr(owner, "closed", False) is True:
                    await self._deregister_quietly(reg, timeout)
                    raise ClosedError(
                        "the provider was closed while registering; deregistered again"
                    )
                self._by_id[resp.instance_id] = reg
                if heartbeats:
                    self._start(reg, step)
        finally:
            self._registering -= 1
            if not self._registering:
                self._none_registering.set()
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

    async def deregister(
        self, req: InstanceDeregisterRequest, *, timeout: float | None = None
    ) -> None:
        iid = req.instance_id
        if iid is None:
            address = (req.namespace, req.service, req.host, req.port or 0, req.vpc_id)
            known = [r.core.instance_id for r in self._by_id.values() if _address(r) == address]
            iid = known[0] if known else instance_id(*address)
        async with self._locks.hold(iid):
            reg = self._by_id.pop(iid, None)
            if reg is not None:
                await self._stop(reg)
                if req.instance_id is None:
                    req = dataclasses.replace(req, instance_id=iid)
            await self._connector.deregister_instance(req, timeout=timeout)
        logger.info("deregistered %s", iid)

    def status(self, iid: str) -> RegistrationStatus | None:
        reg = self._by_id.get(iid)
        return reg.core.status() if reg is not None else None

    def statuses(self, owner: object = None) -> list[RegistrationStatus]:
        return [r.core.status() for r in self._by_id.values() if owner is None or r.owner is owner]

    async def close(
        self, *, deregister: bool | None = None, owner: object = None, timeout: float | None = None
    ) -> None:
        if deregister is None:
            deregister = self._config.provider.deregister_on_close
        if owner is None:
            if self._closed:
                return
            self._closed = True
        regs = [r for r in self._by_id.values() if owner is None or r.owner is owner]
        if timeout is None:
            timeout = self._config.api.timeout * max(1, math.ceil(len(regs) / 1000))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        for reg in regs:
            reg.stopped = True  # no new beat; one in flight ends on its own
        finish = [self._finish(reg, deregister, deadline) for reg in regs]
        if finish:
            results = await asyncio.gather(*finish, return_exceptions=True)
            for result in results:
                if isinstance(result, BaseException):
                    logger.error("close: stopping an instance failed", exc_info=result)
        if owner is None:
            # A registration on the wire deregisters itself once it lands.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    self._none_registering.wait(),
                    max(0.0, deadline - loop.time()) + self._config.api.timeout,
                )
            for _, mailbox in self._listeners:
                await mailbox.wait_idle(STATUS_DRAIN_TIMEOUT)
                await mailbox.aclose(STATUS_DRAIN_TIMEOUT)
            self._listeners.clear()

    aclose = close

    # -------------------------------------------------------------- internal

    def _now(self) -> float:
        return asyncio.get_running_loop().time()

    def _start(self, reg: _Registration, step: Step) -> None:
        reg.stopped = False
        reg.task = self._ctx.spawn(
            f"polaris-heartbeat {reg.core.instance_id}", lambda: self._keep(reg, step)
        )

    async def _stop(self, reg: _Registration) -> None:
        """No more beats from ``reg``; returns once none is in flight."""
        reg.stopped = True
        async with reg.io:
            task, reg.task = reg.task, None
            if task is not None and task is not asyncio.current_task():
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        changed = reg.core.state is not RegistrationState.DEREGISTERED
        reg.core.stop()
        if changed:
            self._notify(reg.core.status(), reg.owner)

    def _resume(self, reg: _Registration) -> None:
        if self._closed:
            return
        step = reg.core.registered(self._now())
        self._by_id[reg.core.instance_id] = reg
        if reg.track:
            self._start(reg, step)

    async def _deregister_quietly(self, reg: _Registration, timeout: float | None) -> None:
        try:
            await self._connector.deregister_instance(reg.deregister_req, timeout=timeout)
        except PolarisError as exc:
            logger.warning("deregistering %s failed: %s", reg.core.instance_id, exc)

    async def _finish(self, reg: _Registration, deregister: bool, deadline: float) -> None:
        iid = reg.core.instance_id
        async with self._locks.hold(iid):
            if self._by_id.get(iid) is reg:
                del self._by_id[iid]
            await self._stop(reg)
            remaining = deadline - self._now()
            if deregister and remaining > 0:
                await self._deregister_quietly(reg, remaining)

    async def _keep(self, reg: _Registration, step: Step) -> None:
        """The heartbeat loop of one instance: sleep until the step is due, send it, decide."""
        while not reg.stopped:
            await asyncio.sleep(max(0.0, step.at - self._now()))
            async with reg.io:
                if reg.stopped:
                    return
                step = await self._run(reg, step)

    async def _run(self, reg: _Registration, step: Step) -> Step:
        core = reg.core
        before = core.state
        error: PolarisError | None = None
        timeout = min(self._config.api.timeout, float(core.ttl))
        try:
            if step.action is Action.HEARTBEAT:
                await self._connector.heartbeat(reg.heartbeat_req, timeout=timeout)
            else:
                await self._connector.register_instance(core.request, core.ttl, timeout=timeout)
        except PolarisError as exc:
            error = exc
        except Exception as exc:  # a bug below must not end the loop silently
            logger.exception("%s of %s failed unexpectedly", step.action.value, core.instance_id)
            error = PolarisError(f"unexpected failure: {exc!r}")
        now = self._now()
        if step.action is Action.HEARTBEAT:
            nxt = (
                core.heartbeat_ok(step.at, now)
                if error is None
                else core.heartbeat_failed(error, step.at, now)
            )
        else:
            nxt = core.registered(now) if error is None else core.register_failed(error, now)
        status = core.status()
        _log_step(step, status, before, nxt, now)
        if status.state is not before:
            self._notify(status, reg.owner)
        return nxt


def _log_step(
    step: Step, status: RegistrationStatus, before: RegistrationState, nxt: Step, now: float
) -> None:
    iid, after = status.instance_id, status.state
    if step.action is Action.REGISTER and status.last_error is None:
        logger.warning("re-registered %s", iid)
    elif after is RegistrationState.REREGISTERING:
        logger.warning(
            "%s: %s failed (%s); registering again in %.1fs",
            iid,
            step.action.value,
            status.last_error,
            max(0.0, nxt.at - now),
        )
    elif after is RegistrationState.FAILING and before is not after:
        logger.warning("%s: heartbeat failed: %s", iid, status.last_error)
    elif after is RegistrationState.REGISTERED and before is not after:
        logger.warning("%s: heartbeats succeed again", iid)


class AsyncProviderAPI:
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
        self, request: InstanceRegisterRequest | None = None, /, **fields: Any
    ) -> InstanceRegisterResponse:
        """Register and keep registered: a heartbeat every TTL until deregistered or closed."""
        req = coerce_request(InstanceRegisterRequest, request, fields)
        validate_register(req)
        self._check_open()
        ttl = req.ttl if req.ttl is not None else self._ctx.config.provider.heartbeat_ttl
        return await self._flow.register(req, ttl, owner=self)

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

    async def __aenter__(self) -> Self:
        self._ctx.check_loop()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def _check_open(self) -> None:
        self._ctx.check_loop()
        if self._closed:
            raise ClosedError("the AsyncProviderAPI is closed")

    def _filter_status(self, status: RegistrationStatus, owner: object) -> Any:
        if owner is self and self._on_status is not None:
            return self._on_status(status)
        return None
