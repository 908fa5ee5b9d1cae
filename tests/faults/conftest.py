"""Fixtures of the fault tests: a server, a fault proxy in front of it, SDK settings per transport.

Every scenario runs once per transport (``global.serverConnector.protocol``
``grpc`` against the server's gRPC port, ``http`` against its HTTP API), with
the proxy in front of the port that transport uses.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from polaris_sdk import Configuration
from polaris_sdk.server import PolarisServer
from tests.faults.proxy import FaultProxy
from tests.frontends import FRONTS, Facades

TTL = 1
"""Heartbeat TTL of the fault tests, in seconds (the smallest the SDK accepts)."""

API_TIMEOUT = 2.0
MESSAGE_TIMEOUT = 0.5
MAX_RETRIES = 2
REFRESH = 0.2
DEADLINE_SLACK = 1.0
"""Scheduling slack allowed on top of ``global.api.timeout`` for a call to give up."""


@pytest.fixture(params=["grpc", "http"])
def transport(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


@pytest.fixture(params=FRONTS)
def apis(request: pytest.FixtureRequest) -> Facades:
    """The facades of this test's front end: the sync ones or their asyncio twins."""
    front = str(request.param)
    return Facades(
        front, request.getfixturevalue("event_loop_thread") if front == "async" else None
    )


@pytest.fixture
def server(no_thread_leak: None) -> Iterator[PolarisServer]:
    # Started after the leak check, so a restarted server's thread is checked too.
    with PolarisServer(grpc_port=0, http_port=0, health_check_interval=0.1, stop_grace=0.2) as s:
        yield s


def upstream_of(server: PolarisServer, transport: str) -> tuple[str, int]:
    """The ``(host, port)`` the SDK dials for ``transport`` without a proxy."""
    address = server.grpc_address if transport == "grpc" else str(server.http_address)
    host, _, port = address.removeprefix("http://").rstrip("/").rpartition(":")
    return host, int(port)


@pytest.fixture
def proxy(server: PolarisServer, transport: str) -> Iterator[FaultProxy]:
    with FaultProxy(upstream_of(server, transport)) as p:
        yield p
    assert not p.errors, f"the fault proxy loop failed: {p.errors!r}"


def sdk_config(address: str, transport: str, **settings: Any) -> Configuration:
    """SDK settings for the fault tests: short timeouts, few retries, fast refresh."""
    base: dict[str, Any] = {
        "global.serverConnector.protocol": transport,
        "global.serverConnector.connectTimeout": "500ms",
        "global.serverConnector.messageTimeout": f"{MESSAGE_TIMEOUT}s",
        "global.api.timeout": f"{API_TIMEOUT}s",
        "global.api.maxRetryTimes": MAX_RETRIES,
        "global.api.retryInterval": "50ms",
        "consumer.localCache.serviceRefreshInterval": f"{REFRESH}s",
        "provider.heartbeatTtl": TTL,
    }
    base.update(settings)
    return Configuration().replace(addresses=[address], **base)


def direct_config(server: PolarisServer, transport: str) -> Configuration:
    """Settings of an SDK that reaches the server without the proxy."""
    host, port = upstream_of(server, transport)
    return sdk_config(f"{host}:{port}", transport)


@pytest.fixture
def config(proxy: FaultProxy, transport: str) -> Configuration:
    """Settings of an SDK that reaches the server through the proxy."""
    return sdk_config(proxy.address, transport)


class LoopFailures(logging.Handler):
    """Unhandled exceptions of background work: thread deaths and logged tracebacks.

    Catches every exception that ends a thread (``threading.excepthook``) and
    every record at ERROR or above from a ``polaris_sdk`` logger that carries a
    traceback, which is how the SDK's supervised loops report an unexpected
    exception before they restart.
    """

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []
        self.thread_errors: list[threading.ExceptHookArgs] = []
        self.previous: Callable[[threading.ExceptHookArgs], object] | None = None

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info and record.exc_info[0] is not None:
            self.records.append(record)

    def hook(self, args: threading.ExceptHookArgs) -> None:
        self.thread_errors.append(args)
        if self.previous is not None:
            self.previous(args)  # pytest reports it as well

    def assert_none(self) -> None:
        assert not self.records and not self.thread_errors, self.describe()

    def describe(self) -> str:
        lines = [f"{r.name}: {r.getMessage()}\n{self.format(r)}" for r in self.records]
        lines += [
            f"thread {a.thread.name if a.thread else '?'}: {a.exc_type.__name__}: {a.exc_value}"
            for a in self.thread_errors
        ]
        return "\n".join(lines)


@pytest.fixture
def loop_failures() -> Iterator[LoopFailures]:
    """Collects unhandled background exceptions; see :class:`LoopFailures`."""
    catcher = LoopFailures()
    sdk_logger = logging.getLogger("polaris_sdk")
    sdk_logger.addHandler(catcher)
    catcher.previous = threading.excepthook
    threading.excepthook = catcher.hook
    try:
        yield catcher
    finally:
        threading.excepthook = catcher.previous
        sdk_logger.removeHandler(catcher)
