"""close() ends every thread of the consumer before it returns, over real sockets."""

from __future__ import annotations

import threading
from typing import Any

from polaris_sdk import ConsumerAPI, ProviderAPI, ServiceChangeEvent
from polaris_sdk.scheduler import TIMER_THREAD, WORKER_PREFIX
from tests.consumer.conftest import REFRESH
from tests.support import live_threads, wait_until

LISTENER_PREFIX = "polaris-listener"
CONSUMER_THREADS = (TIMER_THREAD, WORKER_PREFIX, LISTENER_PREFIX)


def test_close_joins_every_thread_before_it_returns(
    sdk_settings: dict[str, Any], provider: ProviderAPI
) -> None:
    provider.register(service="echo", host="127.0.0.1", port=1)
    before = live_threads()
    consumer = ConsumerAPI.create(refresh_interval=REFRESH, **sdk_settings)
    events: list[ServiceChangeEvent] = []
    lock = threading.Lock()

    def listener(event: ServiceChangeEvent) -> None:
        with lock:
            events.append(event)

    consumer.watch_service(service="echo", listeners=[listener])
    consumer.get_one_instance(service="echo", lb_policy="roundRobin")
    wait_until(lambda: events)

    def consumer_threads() -> list[str]:
        # The server's threads serving this consumer's connection end on
        # their own once it hangs up; the fixture's leak check covers them.
        new = live_threads() - before
        return sorted(t.name for t in new if t.name.startswith(CONSUMER_THREADS))

    running = consumer_threads()
    assert any(n.startswith(TIMER_THREAD) for n in running), running
    assert any(n.startswith(LISTENER_PREFIX) for n in running), running
    consumer.close()
    assert consumer_threads() == []  # no grace: close() has joined them
