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
  :class:`~polaris_sdk.provider.heartbeat.RegisterFlow`;
  ``ProviderAPI.create(...)`` makes and owns a context. ``close()`` is
  idempotent: it stops this facade's heartbeats and deregisters the
  instances it registered with ``register_instance`` (unless
  ``provider.deregisterOnClose`` is false), then closes an owned context.
  Closing the context closes the flow the same way.
* Thread-safe. Calls after ``close()`` raise
  :class:`~polaris_sdk.errors.ClosedError`.
"""

from __future__ import annotations

import atexit
import logging
import math
import os
import signal
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import fields as dataclass_fields
from types import FrameType, TracebackType
from typing import Any, TypeVar

from polaris_sdk.config import Configuration
from polaris_sdk.context import SDKContext
from polaris_sdk.errors import ClosedError, ValidationError
from polaris_sdk.model import (
    InstanceDeregisterRequest,
    InstanceHeartbeatRequest,
    InstanceRegisterRequest,
    InstanceRegisterResponse,
)
from polaris_sdk.provider.flow import RegistrationStatus
from polaris_sdk.provider.heartbeat import RegisterFlow, StatusListener
from polaris_sdk.validation import (
    INVALID_PARAMETER,
    check_host,
    check_instance,
    check_instance_id,
    check_namespace,
    check_port,
    check_service,
)

__all__ = ["FLOW_COMPONENT", "ProviderAPI", "validate_instance_key", "validate_register"]

logger = logging.getLogger("polaris_sdk.provider.api")

FLOW_COMPONENT = "polaris_sdk.provider.RegisterFlow"
MAX_TTL = 60
EXIT_THREAD = "polaris-exit"

R = TypeVar("R")
_Handler = Callable[[int, FrameType | None], Any] | int | signal.Handlers | None


def validate_register(req: InstanceRegisterRequest) -> None:
    """Every rule of a registration; raises ValidationError naming the field."""
    check_instance(
        namespace=req.namespace,
        service=req.service,
        host=req.host,
        port=req.port,
        protocol=req.protocol,
        version=req.version,
        logic_set=req.logic_set,
        weight=req.weight,
        metadata=req.metadata,
    )
    check_instance_id(req.instance_id)
    ttl = req.ttl
    if ttl is not None and (
        isinstance(ttl, bool) or not isinstance(ttl, int) or not 1 <= ttl <= MAX_TTL
    ):
        raise ValidationError(
            "ttl", f"must be an integer from 1 to {MAX_TTL} seconds", INVALID_PARAMETER
        )


def validate_instance_key(req: InstanceDeregisterRequest | InstanceHeartbeatRequest) -> None:
    """An instance is named by a non-empty id, or by namespace, service, host and port."""
    if req.instance_id is not None:
        check_instance_id(req.instance_id)
        return
    check_service(req.service)
    check_namespace(req.namespace)
    check_host(req.host)
    check_port(req.port)


def _coerce(cls: type[R], request: R | None, values: Mapping[str, Any]) -> R:
    """The request object: ``request`` as given, or built from keyword fields."""
    if request is not None:
        if values:
            raise TypeError(f"pass a {cls.__name__} or keyword fields, not both")
        if not isinstance(request, cls):
            raise TypeError(f"expected a {cls.__name__}, got {type(request).__name__}")
        return request
    names = {f.name for f in dataclass_fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(values) - names)
    if unknown:
        raise TypeError(f"{cls.__name__} has no field {unknown[0]!r}")
    try:
        return cls(**values)
    except TypeError as exc:
        raise TypeError(f"{cls.__name__}: {exc}") from None


class ProviderAPI:
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
            lambda: RegisterFlow(context.connector, context.scheduler, context.config),
        )
        self._on_status = on_status
        if on_status is not None:
            self._flow.add_listener(self._filter_status)
        self._lock = threading.Lock()
        self._closed = False
        self._exit_handlers: dict[int, _Handler] = {}

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
        self, request: InstanceRegisterRequest | None = None, /, **fields: Any
    ) -> InstanceRegisterResponse:
        """Register and keep registered: a heartbeat every TTL until deregistered or closed."""
        req = _coerce(InstanceRegisterRequest, request, fields)
        validate_register(req)
        self._check_open()
        ttl = req.ttl if req.ttl is not None else self._ctx.config.provider.heartbeat_ttl
        return self._flow.register(req, ttl, owner=self)

    def register(
        self, request: InstanceRegisterRequest | None = None, /, **fields: Any
    ) -> InstanceRegisterResponse:
        """Register once; no heartbeats (with a ``ttl``, the caller must send them)."""
        req = _coerce(InstanceRegisterRequest, request, fields)
        validate_register(req)
        self._check_open()
        return self._ctx.connector.register_instance(req, req.ttl)

    def heartbeat(self, request: InstanceHeartbeatRequest | None = None, /, **fields: Any) -> None:
        """Send one heartbeat."""
        req = _coerce(InstanceHeartbeatRequest, request, fields)
        validate_instance_key(req)
        self._check_open()
        self._ctx.connector.heartbeat(req)

    def deregister(
        self, request: InstanceDeregisterRequest | None = None, /, **fields: Any
    ) -> None:
        """Stop the instance's heartbeats, then deregister it (unknown instances are fine)."""
        req = _coerce(InstanceDeregisterRequest, request, fields)
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

    def close(self) -> None:
        """Stop heartbeats and deregister what ``register_instance`` registered. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        atexit.unregister(self.close)
        self._restore_signals()
        try:
            if not self._flow.closed:
                self._flow.close(owner=self)
        finally:
            # Statuses already handed out (the final "deregistered") still arrive.
            if self._on_status is not None:
                self._flow.remove_listener(self._filter_status)
            if self._owns_context:
                self._ctx.close()

    def deregister_on_exit(self, signals: Iterable[int] = (signal.SIGTERM,)) -> None:
        """Also ``close()`` (and so deregister) at interpreter exit and on ``signals``.

        Opt-in, because signal handlers belong to the application. Call from
        the main thread. The previous handler still runs after ours; with the
        default handler the process then ends as it would have.
        """
        if threading.current_thread() is not threading.main_thread():
            raise RuntimeError(
                "deregister_on_exit() installs signal handlers: call it from the main thread"
            )
        atexit.register(self.close)
        for sig in signals:
            if sig not in self._exit_handlers:
                self._exit_handlers[sig] = signal.getsignal(sig)
                signal.signal(sig, self._on_signal)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        previous = self._exit_handlers.get(signum, signal.SIG_DFL)
        logger.info("signal %d: closing the provider and deregistering", signum)
        # The handler interrupts the main thread, which may hold a lock close()
        # needs; closing on a thread of its own with a bound wait cannot hang.
        closer = threading.Thread(target=self.close, name=EXIT_THREAD, daemon=True)
        closer.start()
        instances = len(self._flow.statuses(owner=self))
        closer.join(self._ctx.config.api.timeout * max(1, math.ceil(instances / 1000)) + 2.0)
        if callable(previous):
            previous(signum, frame)
        elif previous == signal.SIG_DFL:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)

    def _restore_signals(self) -> None:
        if not self._exit_handlers or threading.current_thread() is not threading.main_thread():
            return
        for sig, previous in self._exit_handlers.items():
            if signal.getsignal(sig) == self._on_signal:
                signal.signal(sig, previous)
        self._exit_handlers.clear()

    def __enter__(self) -> ProviderAPI:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # ----------------------------------------------------------- internal

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedError("the ProviderAPI is closed")
        if self._ctx.closed:
            raise ClosedError("the SDKContext is closed")

    def _filter_status(self, status: RegistrationStatus, owner: object) -> None:
        if owner is self and self._on_status is not None:
            self._on_status(status)
