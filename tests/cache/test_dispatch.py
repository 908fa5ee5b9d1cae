from __future__ import annotations

import logging
import threading
from collections.abc import Iterator

import pytest

from polaris_sdk.dispatch import BATCH, Dispatcher
from tests.support import wait_until

pytestmark = pytest.mark.usefixtures("no_thread_leak")


@pytest.fixture
def dispatcher() -> Iterator[Dispatcher]:
    d = Dispatcher("polaris-listener", max_workers=4, idle_timeout=30.0)
    yield d
    d.close()


def test_each_mailbox_gets_its_items_in_order(dispatcher: Dispatcher) -> None:
    got: dict[str, list[int]] = {"a": [], "b": []}
    a = dispatcher.mailbox(got["a"].append)
    b = dispatcher.mailbox(got["b"].append)
    for n in range(500):
        a.post(n)
        b.post(-n)
    wait_until(lambda: len(got["a"]) == 500 and len(got["b"]) == 500)
    assert got["a"] == list(range(500))
    assert got["b"] == [-n for n in range(500)]


def test_a_raising_callback_is_logged_and_keeps_receiving(
    dispatcher: Dispatcher, caplog: pytest.LogCaptureFixture
) -> None:
    seen: list[int] = []

    def flaky(item: int) -> None:
        seen.append(item)
        if item % 2 == 0:
            raise RuntimeError(f"boom {item}")

    box = dispatcher.mailbox(flaky, "flaky")
    with caplog.at_level(logging.ERROR, logger="polaris_sdk.dispatch"):
        for n in range(6):
            box.post(n)
        wait_until(lambda: len(seen) == 6)
    assert seen == list(range(6))
    assert sum("flaky raised" in r.getMessage() for r in caplog.records) == 3


def test_a_blocked_callback_stalls_neither_posting_nor_other_mailboxes(
    dispatcher: Dispatcher,
) -> None:
    release = threading.Event()
    slow_seen: list[int] = []
    fast_seen: list[int] = []

    def slow(item: int) -> None:
        release.wait(10)
        slow_seen.append(item)

    slow_box = dispatcher.mailbox(slow)
    fast_box = dispatcher.mailbox(fast_seen.append)
    try:
        for n in range(3):
            slow_box.post(n)  # returns at once although the callback blocks
        for n in range(100):
            fast_box.post(n)
        wait_until(lambda: len(fast_seen) == 100, message="fast mailbox stalled")
        assert slow_seen == []
    finally:
        release.set()
    wait_until(lambda: slow_seen == [0, 1, 2])


def test_workers_never_exceed_the_limit() -> None:
    d = Dispatcher("polaris-listener", max_workers=2, idle_timeout=30.0)
    release = threading.Event()
    done: list[int] = []

    def blocked(item: int) -> None:
        release.wait(10)
        done.append(item)

    try:
        boxes = [d.mailbox(blocked) for _ in range(5)]
        for n, box in enumerate(boxes):
            box.post(n)
        wait_until(lambda: d.thread_count == 2)
        assert d.thread_count == 2
        release.set()
        wait_until(lambda: sorted(done) == [0, 1, 2, 3, 4])
    finally:
        release.set()
        d.close()


def test_a_busy_mailbox_yields_its_worker_after_a_batch() -> None:
    d = Dispatcher("polaris-listener", max_workers=1, idle_timeout=30.0)
    order: list[str] = []
    other_posted = threading.Event()

    def chatty(item: int) -> None:
        if item == 0:
            other_posted.wait(10)
        order.append(f"a{item}")

    try:
        a = d.mailbox(chatty)
        b = d.mailbox(lambda item: order.append(f"b{item}"))
        for n in range(3 * BATCH):
            a.post(n)
        b.post(0)
        other_posted.set()
        wait_until(lambda: len(order) == 3 * BATCH + 1)
        assert order.index("b0") == BATCH
    finally:
        d.close()


def test_idle_threads_leave() -> None:
    d = Dispatcher("polaris-listener", max_workers=4, idle_timeout=0.05)
    try:
        got: list[int] = []
        d.mailbox(got.append).post(1)
        wait_until(lambda: got == [1])
        wait_until(lambda: d.thread_count == 0, message="idle worker did not exit")
        d.mailbox(got.append).post(2)  # a new thread starts on demand
        wait_until(lambda: got == [1, 2])
    finally:
        d.close()


def test_closed_mailbox_drops_queued_items(dispatcher: Dispatcher) -> None:
    release = threading.Event()
    seen: list[int] = []

    def blocked(item: int) -> None:
        release.wait(10)
        seen.append(item)

    box = dispatcher.mailbox(blocked)
    box.post(1)
    box.post(2)
    wait_until(lambda: box.pending() == 1)  # item 1 is being delivered
    box.close()
    box.post(3)
    release.set()
    wait_until(lambda: seen == [1])
    assert box.pending() == 0


def test_close_stops_every_thread_and_later_posts_are_dropped() -> None:
    d = Dispatcher("polaris-listener", max_workers=3, idle_timeout=30.0)
    seen: list[int] = []
    box = d.mailbox(seen.append)
    box.post(1)
    wait_until(lambda: seen == [1])
    d.close()
    assert d.thread_count == 0
    box.post(2)
    assert seen == [1]
    d.close()  # idempotent


def test_close_from_inside_a_callback_does_not_deadlock() -> None:
    d = Dispatcher("polaris-listener", max_workers=2, idle_timeout=30.0)
    closed = threading.Event()

    def closer(item: int) -> None:
        d.close(timeout=0.5)
        closed.set()

    d.mailbox(closer).post(1)
    assert closed.wait(5)
    wait_until(lambda: d.thread_count == 0)
