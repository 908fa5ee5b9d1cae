from __future__ import annotations

from collections.abc import Iterator

import pytest

from polaris_sdk.testing import PolarisTestServer
from tests.frontends import LoopThread
from tests.support import assert_no_new_threads, live_threads


@pytest.fixture
def no_thread_leak() -> Iterator[None]:
    """Fails the test if a thread named ``polaris...`` started during it is still alive after."""
    before = live_threads()
    yield
    assert_no_new_threads(before)


@pytest.fixture(scope="session")
def event_loop_thread() -> Iterator[LoopThread]:
    """One event loop for every asyncio test: grpc.aio binds its poller to each loop
    it sees, and a loop closed while the process goes on makes it log errors."""
    loop = LoopThread()
    yield loop
    loop.close()


@pytest.fixture(scope="module")
def own_server() -> Iterator[PolarisTestServer]:
    """A test server for one module, stopped after it (the plugin's lives for the session)."""
    server = PolarisTestServer.create()
    yield server
    server.close()
