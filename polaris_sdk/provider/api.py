"""ProviderAPI: the facade a service uses to register itself.

Contract:

* Every method takes a request object or the same fields as keywords
  (``provider.register_instance(service="echo", host=..., port=...)``), not
  both. Fields are validated before anything is sent: a bad one raises
  :class:`~polaris_sdk.errors.ValidationError` naming it.
* ``register_instance`` registers and keeps the instance registered
  (heartbeat every TTL, default ``provider.heartbeatTtl`` = 5 s; re-register
  when the server lost it) until ``deregister()`` or ``close()``.
  ``register`` is one-shot: no heartbeats, nothing remembered.
* ``ProviderAPI(ctx)`` shares a context and its one
  :class:`~polaris_sdk.provider.flow.RegisterFlow`;
  ``ProviderAPI.create(...)`` makes and owns a context. ``close()`` is
  idempotent: it stops this facade's heartbeats and deregisters the
  instances it registered with ``register_instance`` (unless
  ``provider.deregisterOnClose`` is false or ``close(deregister=False)``),
  then closes an owned context.
  Closing the context closes the flow the same way.
* Status callbacks (``on_status``) run on the flow's listener threads, one
  at a time, never on the scheduler; ``close()`` waits a bounded time
  (``STATUS_DRAIN_TIMEOUT``) for them to take the last statuses.
* ``deregister_on_exit()`` closes at interpreter exit and on signals
  (:mod:`polaris_sdk.provider.exit`): handlers that take no lock wake the
  ``polaris-exit`` thread, which runs ``close()`` and passes the signal on
  to the previous handler (with the default one the process ends as it
  would have).
* Thread-safe. Calls after ``close()`` raise
  :class:`~polaris_sdk.errors.ClosedError`, and so does a
  ``register_instance`` that was still on the wire when ``close()`` ran
  (after deregistering that instance again).
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterable
from typing import Any

from polaris_sdk import _fork
from polaris_sdk._closing import Closing
from polaris_sdk._requests import coerce_request
from polaris_sdk.config import Configuration
from polaris_sdk.context import SDKContext
from polaris_sdk.errors import ClosedError
from polaris_sdk.model import (
    InstanceDeregisterRequest,
    InstanceHeartbeatRequest,
    InstanceRegisterRequest,
    InstanceRegisterResponse,
)
from polaris_sdk.provider.core import RegistrationStatus
from polaris_sdk.provider.exit import ExitHandler, require_main_thread
from polaris_sdk.provider.flow import STATUS_DRAIN_TIMEOUT, RegisterFlow, StatusListener
from polaris_sdk.validation import check_instance_key_request, check_register_request

__all__ = ["FLOW_COMPONENT", "ProviderAPI", "validate_instance_key", "validate_register"]

FLOW_COMPONENT = "polaris_sdk.provider.RegisterFlow"


validate_register = check_register_request
"""Every rule of a registration; raises ValidationError naming the field."""

validate_instance_key = check_instance_key_request
"""An instance is named by a non-empty id, or by namespace, service, host and port."""


class ProviderAPI(Closing):
    """Register, heartbeat and deregister service instances; see the module docstring."""

    def __init__(
        self,
        context: SDKContext,
        *,
        on_status: StatusListener | None = None,
        _owns_context: bool = False,
    ) -> None:
        self._ctx = context
        self._owns_context = _owns_context
        self._flow: RegisterFlow = context.component(
            FLOW_COMPONENT,
            lambda: RegisterFlow(
                context.connector, context.scheduler, context.config, context.observers
            ),
        )
        self._on_status = on_status
        if on_status is not None:
            self._flow.add_listener(self._filter_status)
        self._lock = threading.Lock()
        self._closed = False
        self._exit = ExitHandler(self.close, self._close_bound)
        _fork.track(self)

    def _reset_after_fork(self) -> None:
        self._lock = threading.Lock()
        if self._on_status is not None and not self._closed:
            self._flow.add_listener(self._filter_status)

    @classmethod
    def create(
        cls,
        config: str | os.PathLike[str] | Configuration | None = None,
        *,
        on_status: StatusListener | None = None,
        **kwargs: Any,
    ) -> ProviderAPI:
        """A ProviderAPI on a context of its own, made by :meth:`SDKContext.create`."""
        ctx = SDKContext.create(config, **kwargs)
        try:
            return cls(ctx, on_status=on_status, _owns_context=True)
        except BaseException:
            ctx.close()
            raise

    @property
    def context(self) -> SDKContext:
        return self._ctx

    @property
    def closed(self) -> bool:
        return self._closed

    # -------------------------------------------------------------- calls

    def register_instance(
        self,
        request: InstanceRegisterRequest | None = None,
        /,
        *,
        background: bool = False,
        **fields: Any,
    ) -> InstanceRegisterResponse:
        """Register and keep registered: a heartbeat every TTL until deregistered or closed.

        The answer's ``existed`` is true when this SDK context already kept
        the instance registered (this call replaced that registration) or
        the server answered 400201 ExistedResource. A real polaris-server
        upserts and answers 200000, so an instance registered by another
        process reads as false.

        ``background=True``: if the registry cannot be reached, do not fail;
        keep registering with the re-registration backoff (the status is
        ``reregistering`` until it lands, then heartbeats run as usual).
        """
        req = coerce_request(InstanceRegisterRequest, request, fields)
        validate_register(req)
        self._check_open()
        ttl = req.ttl if req.ttl is not None else self._ctx.config.provider.heartbeat_ttl
        try:
            return self._flow.register(req, ttl, owner=self, background=background)
        except ClosedError:
            # Closed while on the wire, by an exit signal: the process ends by it here.
            self._exit.hold_main_thread()
            raise

    def register(
        self, request: InstanceRegisterRequest | None = None, /, **fields: Any
    ) -> InstanceRegisterResponse:
        """Register once; no heartbeats (with a ``ttl``, the caller must send them)."""
        req = coerce_request(InstanceRegisterRequest, request, fields)
        validate_register(req)
        self._check_open()
        return self._ctx.connector.register_instance(req, req.ttl)

    def heartbeat(self, request: InstanceHeartbeatRequest | None = None, /, **fields: Any) -> None:
        """Send one heartbeat."""
        req = coerce_request(InstanceHeartbeatRequest, request, fields)
        validate_instance_key(req)
        self._check_open()
        self._ctx.connector.heartbeat(req)

    def deregister(
        self, request: InstanceDeregisterRequest | None = None, /, **fields: Any
    ) -> None:
        """Stop the instance's heartbeats, then deregister it (unknown instances are fine)."""
        req = coerce_request(InstanceDeregisterRequest, request, fields)
        validate_instance_key(req)
        self._check_open()
        self._flow.deregister(req)

    def status(self, instance_id: str) -> RegistrationStatus | None:
        """The registration state of an instance kept by ``register_instance``."""
        return self._flow.status(instance_id)

    def registrations(self) -> list[RegistrationStatus]:
        """The instances this facade keeps registered."""
        return self._flow.statuses(owner=self)

    # ------------------------------------------------------------ closing

    def close(self, *, deregister: bool | None = None) -> None:
        """Stop heartbeats and deregister what ``register_instance`` registered. Idempotent.

        ``deregister=False`` leaves the instances registered (they lapse after
        their TTL unless another process heartbeats them); the default is
        ``provider.deregisterOnClose``.
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._exit.closing()
        try:
            if not self._flow.closed:
                self._flow.close(owner=self, deregister=deregister)
        finally:
            try:
                # Statuses already handed out (the final "deregistered") still
                # arrive, within a bound: a stuck callback cannot hold close.
                if self._on_status is not None:
                    self._flow.remove_listener(self._filter_status, drain=STATUS_DRAIN_TIMEOUT)
                if self._owns_context:
                    self._ctx.close()
            finally:
                self._exit.closed()

    def deregister_on_exit(self, signals: Iterable[int] = (signal.SIGTERM,)) -> None:
        """Also ``close()`` (and so deregister) at interpreter exit and on ``signals``.

        Opt-in, because signal handlers belong to the application. Call from
        the main thread. The previous handler still runs after ours, once
        ``close()`` is done; with the default handler the process then ends
        as it would have (see :mod:`polaris_sdk.provider.exit`).
        """
        require_main_thread()
        self._check_open()
        self._exit.install(signals)

    # ----------------------------------------------------------- internal

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedError("the ProviderAPI is closed")
        if self._ctx.closed:
            raise ClosedError("the SDKContext is closed")

    def _close_bound(self) -> float:
        """A liveness bound on close(): its deregistrations, a registration still on the
        wire, then the listeners' drain."""
        budget = self._flow.close_budget(owner=self) + self._ctx.config.api.timeout
        return budget + STATUS_DRAIN_TIMEOUT + 2.0

    def _filter_status(self, status: RegistrationStatus, owner: object) -> None:
        if owner is self and self._on_status is not None:
            self._on_status(status)
