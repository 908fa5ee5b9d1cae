"""What every integration does for the process it runs in.

Contract:

* :class:`ServingOptions` are the integration settings; the defaults come
  from the environment: ``POLARIS_INSTANCE_HOST`` / ``POLARIS_INSTANCE_PORT``
  (see :mod:`polaris_sdk.netinfo`), ``POLARIS_DRAIN`` (seconds). The SDK
  settings (``POLARIS_ADDRESSES`` ...) are read by the context as usual.
* Registration runs in the background (``register_instance(background=True)``):
  the application starts even with the registry down and is registered once
  it is up. With no port given it waits (up to ``port_wait``) for the
  process's listening socket. With no host given it uses the address of the
  interface that reaches the registry.
* Drain on SIGTERM (and SIGINT): the instance is deregistered first (only
  by the last process of the instance, see :mod:`polaris_sdk.provider.lease`),
  then the process keeps serving for ``drain`` seconds (default: the
  consumers' refresh interval plus :data:`DRAIN_MARGIN`) so consumers stop
  picking it, and only then does the server's own handler see the signal.
* :class:`Serving` is the threaded version (Flask, Django, any WSGI app);
  the asyncio one lives in :mod:`.starlette`. Both re-register in a process
  forked after they started (gunicorn ``--preload``), and the process that
  forked hands its registration over: it stops heartbeating and leaves its
  lease without deregistering, so the instance stays while the children
  register it. A child's signal handling is installed at the fork;
  :meth:`Serving.take_signals` installs it again over handlers a server set
  up after that (gunicorn's workers: :mod:`.gunicorn`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import signal
import threading
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import FrameType
from typing import Any, ClassVar, Final

from polaris_sdk import ConsumerAPI, ProviderAPI, SDKContext
from polaris_sdk.config import Configuration
from polaris_sdk.errors import ClosedError, ConfigError, PolarisError
from polaris_sdk.netinfo import detect_host, listening_port
from polaris_sdk.provider.exit import EXIT_THREAD, ExitHandler

__all__ = ["DRAIN_MARGIN", "ENV_DRAIN", "Serving", "ServingOptions"]

logger = logging.getLogger("polaris_sdk.integrations")

ENV_DRAIN: Final = "POLARIS_DRAIN"
DRAIN_MARGIN: Final = 2.0
"""Seconds added to the refresh interval: the server's cache (about 1 s) and jitter."""
SIGNALS: Final = (signal.SIGTERM, signal.SIGINT)
_POLL: Final = 0.1


@dataclass(frozen=True)
class ServingOptions:
    """How an integration registers its process; see the module docstring."""

    service: str
    namespace: str = "default"
    host: str | None = None
    port: int | None = None
    drain: float | None = None
    """Seconds between deregistering and letting the server stop; None: refresh + margin."""
    port_wait: float = 30.0
    fields: Mapping[str, Any] = field(default_factory=dict)
    """Other ``register_instance`` fields: metadata, version, protocol, weight, ttl ..."""
    settings: Mapping[str, Any] = field(default_factory=dict)
    """Arguments of ``SDKContext.create`` (``config``, ``addresses``, ``token`` ...)."""

    @classmethod
    def build(cls, service: str | None, **kw: Any) -> ServingOptions:
        if not service:
            raise ConfigError("service", "the integration needs the name of the service")
        known = {f.name for f in dataclasses.fields(cls)}
        fields = {k: v for k, v in kw.items() if k not in known}
        own = {k: v for k, v in kw.items() if k in known and v is not None}
        return cls(service=service, **own, fields={**own.pop("fields", {}), **fields})

    def drain_seconds(self, config: Configuration) -> float:
        if self.drain is not None:
            return float(self.drain)
        raw = os.environ.get(ENV_DRAIN, "").strip()
        if raw:
            try:
                return float(raw)
            except ValueError:
                raise ConfigError(ENV_DRAIN, f"expected seconds, not {raw!r}") from None
        return config.consumer.service_refresh_interval + DRAIN_MARGIN

    def port_now(self) -> int | None:
        return self.port if self.port is not None else listening_port()

    def request(self, config: Configuration, port: int) -> dict[str, Any]:
        host = self.host or detect_host(config.server_connector.addresses)
        return {
            "namespace": self.namespace,
            "service": self.service,
            "host": host,
            "port": port,
            **self.fields,
        }


class Serving:
    """Registers this process (threads); the integrations for WSGI frameworks use it."""

    _started: ClassVar[weakref.WeakSet[Serving]] = weakref.WeakSet()

    def __init__(self, options: ServingOptions) -> None:
        self.options = options
        self.context: SDKContext | None = None
        self.provider: ProviderAPI | None = None
        self.consumer: ConsumerAPI | None = None
        self.instance_id: str | None = None
        self._pid = 0
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._exit: ExitHandler | None = None
        self._handed_over = False
        os.register_at_fork(after_in_child=self._start_in_child, after_in_parent=self._hand_over)

    def start(self) -> None:
        """Build the context and facades, start registering, take over SIGTERM."""
        if self._pid == os.getpid():
            return
        self._pid = os.getpid()
        self._stopping = threading.Event()
        self.context = SDKContext.create(**self.options.settings)
        self.provider = ProviderAPI(self.context)
        self.consumer = ConsumerAPI(self.context)
        self._thread = threading.Thread(target=self._register, name="polaris-serving", daemon=True)
        self._thread.start()
        Serving._started.add(self)
        if threading.current_thread() is threading.main_thread():
            self._exit = ExitHandler(self.stop, self._stop_bound)
            self._exit.install(SIGNALS)

    @classmethod
    def running(cls) -> list[Serving]:
        """The servings started in this process and not stopped."""
        pid = os.getpid()
        return [s for s in list(cls._started) if s._pid == pid and not s._stopping.is_set()]

    def take_signals(self) -> None:
        """Handle SIGTERM / SIGINT again, over the handlers installed since :meth:`start`.

        For servers that set up their own handlers after the application was
        loaded and forked (gunicorn ``--preload`` workers); the handlers found
        now are the ones the signal is passed on to after the drain. Call from
        the main thread.
        """
        if self._pid != os.getpid() or self._stopping.is_set() or self.context is None:
            return
        old, self._exit = self._exit, ExitHandler(self.stop, self._stop_bound)
        if old is not None:  # its handlers were replaced: end its thread, touch no handler
            old.closing()
            old.closed()
        self._exit.install(SIGNALS)

    def stop(self) -> None:
        """Deregister (if last), drain when stopping on a signal, then close. Idempotent."""
        if self._stopping.is_set() or self.context is None:
            return
        self._stopping.set()
        if self._exit is not None:
            self._exit.closing()
        drain = threading.current_thread().name == EXIT_THREAD and self.instance_id is not None
        try:
            if self._thread is not None:
                self._thread.join(self.context.config.api.timeout)
            assert self.provider is not None and self.consumer is not None
            self.provider.close()
            if drain:
                seconds = self.options.drain_seconds(self.context.config)
                logger.info("draining for %.1fs before the server stops", seconds)
                threading.Event().wait(seconds)  # keep serving while consumers notice
            self.consumer.close()
        finally:
            self.context.close()
            if self._exit is not None:
                self._exit.closed()

    # ------------------------------------------------------------ internal

    def _stop_bound(self) -> float:
        config = self.context.config if self.context is not None else Configuration()
        return self.options.drain_seconds(config) + 3 * config.api.timeout + 2.0

    def _register(self) -> None:
        assert self.context is not None and self.provider is not None
        port = self.options.port_now()
        waited = 0.0
        while port is None and waited < self.options.port_wait:
            if self._stopping.wait(_POLL) or self._handed_over:
                return
            waited += _POLL
            port = self.options.port_now()
        if port is None:
            logger.error(
                "%s: no port given and none found to listen on; not registered",
                self.options.service,
            )
            return
        try:
            req = self.options.request(self.context.config, port)
            resp = self.provider.register_instance(background=True, **req)
        except PolarisError as exc:
            if isinstance(exc, ClosedError) or self._handed_over:  # stopped meanwhile
                logger.info("%s: %s", self.options.service, exc)
            else:
                logger.error("%s: not registered: %s", self.options.service, exc)
            return
        self.instance_id = resp.instance_id

    def _start_in_child(self) -> None:
        if self._pid and self._pid != os.getpid() and not self._stopping.is_set():
            self.instance_id = None
            self._exit = None
            self._handed_over = False
            self._pid = 0
            self.start()

    def _hand_over(self) -> None:
        """This process forked workers: they serve and register; it stops holding the instance.

        Without deregistering it: the children register the same instance
        (and take their leases) within moments, and a deregistration by this
        process would take it away in between. A registration of ours still
        on the wire is waited for first (bounded by the call's timeout).
        """
        if self._handed_over or self._pid != os.getpid() or self.provider is None:
            return
        self._handed_over = True
        provider, thread = self.provider, self._thread
        timeout = self.context.config.api.timeout if self.context is not None else 0.0

        def hand_over() -> None:
            if thread is not None:
                thread.join(timeout)
            with contextlib.suppress(PolarisError):
                provider.close(deregister=False)

        threading.Thread(target=hand_over, name="polaris-handover", daemon=True).start()


def chain_signal(previous: Any, sig: int, frame: FrameType | None) -> None:
    """Pass ``sig`` to the handler that was installed before ours."""
    if callable(previous):
        handler: Callable[[int, FrameType | None], Any] = previous
        handler(sig, frame)
    elif previous in (signal.SIG_DFL, None):
        signal.signal(sig, signal.SIG_DFL)
        signal.raise_signal(sig)
