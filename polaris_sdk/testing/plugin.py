"""pytest plugin: an embedded Polaris server for the tests of a service that uses Polaris.

Installed with polaris_sdk (entry point ``pytest11``), so the fixtures are
there in any test run; without the entry point, load it with
``-p polaris_sdk.testing.plugin`` or ``pytest_plugins = ["polaris_sdk.testing.plugin"]``
in the top-level ``conftest.py``.

Fixtures:

``polaris_server``
    A :class:`~polaris_sdk.testing.PolarisTestServer`: one server for the
    whole session, reset before each test that uses it (running, no fault,
    no registration). Tests restart it, stop and start it, wipe it, drop the
    Discover streams and make heartbeats answer NotFound through it.
``polaris_context``
    An :class:`~polaris_sdk.SDKContext` pointed at ``polaris_server`` over
    gRPC, with a 0.2 s cache refresh and a 1 s heartbeat TTL so changes and
    faults show quickly; closed after the test. It ignores the
    application's ``./polaris.yaml`` and the ``POLARIS_*`` environment.
``polaris_context_options``
    Keyword arguments for that context
    (:meth:`~polaris_sdk.testing.PolarisTestServer.context`); ``{}``. Override
    it to change settings, e.g. ``{"protocol": "http"}``, ``{"token": "t"}``,
    or ``{"from_environment": True}`` to read ``polaris.yaml`` and
    ``POLARIS_*`` after all.
``polaris_server_session``
    The same server without the per-test reset, for session-scoped fixtures.
``polaris_server_options``
    Session-scoped keyword arguments for
    :class:`~polaris_sdk.server.PolarisServer`; ``{}`` (memory store, free
    loopback ports). Override it in a ``conftest.py``, e.g. for SQLite::

        @pytest.fixture(scope="session")
        def polaris_server_options(tmp_path_factory):
            return {"data_dir": tmp_path_factory.mktemp("polaris")}

Loading the plugin starts nothing and imports nothing heavy: the server is
started by the first test that asks for it and stopped at the end of the
session.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from polaris_sdk.context import SDKContext
    from polaris_sdk.testing.server import PolarisTestServer

__all__ = [
    "polaris_context",
    "polaris_context_options",
    "polaris_server",
    "polaris_server_options",
    "polaris_server_session",
]

CONTEXT_REFRESH_INTERVAL = 0.2
CONTEXT_TTL = 1


@pytest.fixture(scope="session")
def polaris_server_options() -> dict[str, Any]:
    """Keyword arguments for the session's PolarisServer; override to change them."""
    return {}


@pytest.fixture(scope="session")
def polaris_server_session(
    polaris_server_options: dict[str, Any],
) -> Iterator[PolarisTestServer]:
    """The session's Polaris server, started on first use, stopped when the session ends."""
    from polaris_sdk.testing.server import PolarisTestServer

    with PolarisTestServer.create(**polaris_server_options) as server:
        yield server


@pytest.fixture
def polaris_server(polaris_server_session: PolarisTestServer) -> PolarisTestServer:
    """The session's Polaris server, running, without faults or registrations."""
    polaris_server_session.reset()
    return polaris_server_session


@pytest.fixture
def polaris_context_options() -> dict[str, Any]:
    """Keyword arguments for ``polaris_context``; override to change them."""
    return {}


@pytest.fixture
def polaris_context(
    polaris_server: PolarisTestServer, polaris_context_options: dict[str, Any]
) -> Iterator[SDKContext]:
    """An SDKContext pointed at ``polaris_server`` (gRPC, 0.2 s refresh, 1 s TTL); closed after."""
    options = {
        "refresh_interval": CONTEXT_REFRESH_INTERVAL,
        "provider.heartbeatTtl": CONTEXT_TTL,
        **polaris_context_options,
    }
    with polaris_server.context(**options) as ctx:
        yield ctx
