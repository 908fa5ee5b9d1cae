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
* Status callbacks (``on_status``) run on the flow's listener threads, one
  at a time, never on the scheduler; ``close()`` waits a bounded time
  (``STATUS_DRAIN_TIMEOUT``) for them to take the last statuses.
* ``deregister_on_exit()`` installs signal handlers that take no lock (a
  signal may land while the main thread holds any): the handler only wakes
  the ``polaris-exit`` thread through a pipe; that thread runs ``close()``
  and sends the signal again, which then goes to the previous handler on
  the main thread (with the default one the process ends as it would have).
* Thread-safe. Calls after ``close()`` raise
  :class:`~polaris_sdk.errors.ClosedError`, and so does a
  ``register_instance`` that was still on the wire when ``close()`` ran
  (after deregistering that instance again).
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import math
import os
import signal
import threading
from collections.abc import Callable, Iterable
from types import FrameType
from typing import Any

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
from polaris_sdk.provider.flow import RegistrationStatus
from polaris_sdk.provider.heartbeat import STATUS_DRAIN_TIMEOUT, RegisterFlow, StatusListener
from polaris_sdk.validation import check_instance_key_request, check_register_request

__all__ = ["FLOW_COMPONENT", "ProviderAPI", "validate_instance_key", "validate_register"]

logger = logging.getLogger("polaris_sdk.provider.api")

FLOW_COMPONENT = "polaris_sdk.provider.RegisterFlow"
EXIT_THREAD = "polaris-exit"
_STOP_BYTE = b"\0"  # tells the exit thread to end; any other byte is a signal number

_Handler = Callable[[int, FrameType | None], Any] | int | signal.Handlers | None


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
            lambda: RegisterFlow(context.connector, context.scheduler, context.config),
        )
        self._on_status = on_status
        if on_status is not None:
            self._flow.add_listener(self._filter_status)
        self._lock = threading.Lock()
        self._closed = False
        self._closed_event = threading.Event()  # set once close() has done its work
        self._exit_handlers: dict[int, _Handler] = {}
        self._exit_thread: threading.Thread | None = None
        self._exit_fd: int | None = None  # write end of the pipe to the exit thread
        self._exit_done = False  # the exit thread has ended: handlers pass signals on

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
        """Register and keep registered: a heartbeat every TTL until deregistered or closed.

        The answer's ``existed`` is true when this SDK context already kept
        the instance registered (this call replaced that registration) or
        the server answered 400201 ExistedResource. A real polaris-server
        upserts and answers 200000, so an instance registered by another
        process reads as false.
        """
        req = coerce_request(InstanceRegisterRequest, request, fields)
        validate_register(req)
        self._check_open()
        ttl = req.ttl if req.ttl is not None else self._ctx.config.provider.heartbeat_ttl
        return self._flow.register(req, ttl, owner=self)

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

    def close(self) -> None:
        """Stop heartbeats and deregister what ``register_instance`` registered. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        atexit.unregister(self.close)
        try:
            if not self._flow.closed:
                self._flow.close(owner=self)
        finally:
            try:
                # Statuses already handed out (the final "deregistered") still
                # arrive, within a bound: a stuck callback cannot hold close.
                if self._on_status is not None:
                    self._flow.remove_listener(self._filter_status, drain=STATUS_DRAIN_TIMEOUT)
                if self._owns_context:
                    self._ctx.close()
            finally:
                self._closed_event.set()
                # A signal that came during close() was held until now; from
                # here on it goes to the previous handler.
                self._restore_signals()
                self._stop_exit_thread()

    def deregister_on_exit(self, signals: Iterable[int] = (signal.SIGTERM,)) -> None:
        """Also ``close()`` (and so deregister) at interpreter exit and on ``signals``.

        Opt-in, because signal handlers belong to the application. Call from
        the main thread. The previous handler still runs after ours, once
        ``close()`` is done; with the default handler the process then ends
        as it would have.
        """
        if threading.current_thread() is not threading.main_thread():
            raise RuntimeError(
                "deregister_on_exit() installs signal handlers: call it from the main thread"
            )
        self._check_open()
        atexit.register(self.close)
        if self._exit_thread is None:
            read_fd, self._exit_fd = os.pipe()
            os.set_blocking(self._exit_fd, False)  # the handler must never block on it
            self._exit_thread = threading.Thread(
                target=self._exit_loop, args=(read_fd,), name=EXIT_THREAD, daemon=True
            )
            self._exit_thread.start()
        for sig in signals:
            if sig not in self._exit_handlers:
                self._exit_handlers[sig] = signal.getsignal(sig)
                signal.signal(sig, self._on_signal)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        # Runs on the main thread between two bytecodes, perhaps while it holds
        # a lock close() needs, or one inside threading or logging: so no lock,
        # no thread start, no logging here, only a byte to the exit thread.
        fd = self._exit_fd
        if fd is not None and not self._exit_done:
            try:
                os.write(fd, bytes([signum]))
                return
            except OSError:  # the exit thread has gone: pass the signal on now
                pass
        self._pass_signal_on(signum, frame)

    def _pass_signal_on(self, signum: int, frame: FrameType | None) -> None:
        previous = self._exit_handlers.get(signum)
        if previous is None:
            previous = signal.getsignal(signum)
        self._restore_signals()
        if callable(previous) and previous != self._on_signal:
            previous(signum, frame)
        elif previous in (signal.SIG_DFL, self._on_signal):
            signal.signal(signum, signal.SIG_DFL)
            signal.raise_signal(signum)

    def _exit_loop(self, read_fd: int) -> None:
        """The exit thread: wait for a signal number, close(), then send the signal again."""
        signum = 0
        try:
            data = os.read(read_fd, 1)  # one signal number, the stop byte, or end of file
            signum = data[0] if data else 0
            if signum == 0:
                self._exit_done = True
                # A handler that looked before the flag was set may have written since.
                os.set_blocking(read_fd, False)
                late = os.read(read_fd, 64)
                signum = next((b for b in late if b), 0)
        except BlockingIOError:
            pass
        except Exception:  # nothing can restart this thread usefully: log it, pass signals on
            logger.exception("the exit thread failed")
        finally:
            self._exit_done = True
            os.close(read_fd)
        if not signum:
            return
        logger.info("signal %d: closing the provider and deregistering", signum)
        bound = self._close_bound()
        try:
            self.close()
        except Exception:
            logger.exception("closing on signal %d failed", signum)
        # close() may have been running on another thread already: wait for it.
        if not self._closed_event.wait(bound):
            logger.warning("signal %d: close() still running; passing the signal on", signum)
        # To the main thread itself: a process-wide signal may be taken by
        # another thread and leave the main one asleep. Its handler sees
        # _exit_done and passes the signal to the previous handler.
        signal.pthread_kill(threading.main_thread().ident or 0, signum)

    def _close_bound(self) -> float:
        instances = len(self._flow.statuses(owner=self))
        api_timeout = self._ctx.config.api.timeout
        return api_timeout * max(1, math.ceil(instances / 1000)) + STATUS_DRAIN_TIMEOUT + 2.0

    def _stop_exit_thread(self) -> None:
        thread = self._exit_thread
        if thread is None or thread is threading.current_thread():
            return
        fd = self._exit_fd
        if fd is not None:
            # OSError: already gone, or its pipe is full of signals it will handle.
            with contextlib.suppress(OSError):
                os.write(fd, _STOP_BYTE)
        thread.join(self._close_bound())
        if thread.is_alive():
            logger.warning("the exit thread did not end")

    def _restore_signals(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        # Restored before forgotten: a signal landing in between still finds
        # its previous handler.
        for sig, previous in list(self._exit_handlers.items()):
            if signal.getsignal(sig) == self._on_signal:
                signal.signal(sig, previous)
        self._exit_handlers.clear()
        # No handler of ours can write to the pipe any more: the exit thread
        # reads end of file and ends.
        fd, self._exit_fd = self._exit_fd, None
        if fd is not None:
            os.close(fd)

    # ----------------------------------------------------------- internal

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedError("the ProviderAPI is closed")
        if self._ctx.closed:
            raise ClosedError("the SDKContext is closed")

    def _filter_status(self, status: RegistrationStatus, owner: object) -> None:
        if owner is self and self._on_status is not None:
            self._on_status(status)
