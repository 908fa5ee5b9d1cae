from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support import assert_no_new_threads, live_threads


@pytest.fixture
def no_thread_leak() -> Iterator[None]:
    """Fails the test if a thread named ``polaris...`` started during it is still alive after."""
    before = live_threads()
    yield
    assert_no_new_threads(before)
