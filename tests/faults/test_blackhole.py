"""A network black hole of 3 x TTL between the SDK and the server, then healed.

While the hole lasts, the provider's calls fail with a NetworkError (a
PolarisTimeoutError here) within the configured timeout instead of hanging,
and the consumer keeps answering from its snapshot. Long enough for the
server to mark the provider's instance unhealthy. After healing, heartbeats
resume and the instance is healthy again, and the consumer catches up with
what changed meanwhile.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from polaris_sdk import (
    Configuration,
    NetworkError,
    PolarisTimeoutError,
)
from polaris_sdk.cache import ConnectionState
from polaris_sdk.provider.flow import RegistrationState
from polaris_sdk.server import PolarisServer
from tests.faults.conftest import (
    API_TIMEOUT,
    DEADLINE_SLACK,
    TTL,
    LoopFailures,
    direct_config,
)
from tests.faults.helpers import healthy_ids, healthy_on_server, ids, record
from tests.faults.proxy import FaultProxy
from tests.frontends import Facades
from tests.support import wait_until

SERVICE = "blackholed"


def fails_in_time(call: Callable[..., object], *args: object, **kwargs: object) -> NetworkError:
    """Run ``call``; it must raise a NetworkError within the api timeout (plus slack)."""
    started = time.monotonic()
    with pytest.raises(NetworkError) as caught:
        call(*args, **kwargs)
    elapsed = time.monotonic() - started
    assert elapsed < API_TIMEOUT + DEADLINE_SLACK, f"gave up after {elapsed:.2f}s"
    return caught.value


def test_blackhole_for_three_ttl_then_heal(
    apis: Facades,
    server: PolarisServer,
    proxy: FaultProxy,
    config: Configuration,
    transport: str,
    loop_failures: LoopFailures,
) -> None:
    with (
        apis.provider(config) as provider,
        apis.consumer(config) as consumer,
        apis.provider(direct_config(server, transport)) as elsewhere,
    ):
        mine = provider.register_instance(service=SERVICE, host="127.0.0.1", port=9001).instance_id
        wait_until(lambda: mine in healthy_ids(consumer.get_all_instances(service=SERVICE)))
        assert consumer.get_one_instance(service=SERVICE).id == mine

        proxy.blackhole()
        started = time.monotonic()

        # Calls through the hole give up on time, with a clear error: on the
        # connections already open, and from a process starting meanwhile.
        error = fails_in_time(provider.heartbeat, service=SERVICE, host="127.0.0.1", port=9001)
        assert isinstance(error, PolarisTimeoutError), repr(error)
        with apis.provider(config) as late_provider, apis.consumer(config) as late:
            fails_in_time(
                late_provider.register_instance, service=SERVICE, host="127.0.0.1", port=9002
            )
            fails_in_time(late.get_all_instances, service=SERVICE)

        # Meanwhile another process, not behind the hole, registers an instance.
        theirs = elsewhere.register_instance(
            service=SERVICE, host="127.0.0.1", port=9003
        ).instance_id

        def consumer_serves_and_server_gave_up() -> bool:
            # The consumer answers from its snapshot the whole time...
            snapshot = consumer.get_all_instances(service=SERVICE)
            assert ids(snapshot) == {mine}, "the consumer saw through the black hole"
            assert consumer.get_one_instance(service=SERVICE).id == mine
            # ...until the server, hearing nothing, marks the instance unhealthy.
            return not healthy_on_server(server, mine)

        wait_until(consumer_serves_and_server_gave_up, timeout=3 * TTL + 10, interval=0.05)
        assert time.monotonic() - started >= 3 * TTL
        status = provider.status(mine)
        assert status is not None and status.state is RegistrationState.FAILING
        assert isinstance(status.last_error, NetworkError)
        assert consumer.state is not ConnectionState.CONNECTED

        proxy.heal()
        healed = time.monotonic()

        def heartbeats_resumed() -> bool:
            now = provider.status(mine)
            return (
                now is not None
                and now.state is RegistrationState.REGISTERED
                and now.last_success is not None
                and now.last_success >= healed
                and healthy_on_server(server, mine)
            )

        wait_until(heartbeats_resumed, timeout=5 * TTL + 5, message="heartbeats did not resume")

        def consumer_caught_up() -> bool:
            return {mine, theirs} <= healthy_ids(consumer.get_all_instances(service=SERVICE))

        # The reflector backs off while the server is unreachable (at most 30 s).
        wait_until(consumer_caught_up, timeout=35, message="the consumer did not catch up")
        wait_until(lambda: consumer.state is ConnectionState.CONNECTED)
        assert record(server, mine) is not None

    loop_failures.assert_none()


def test_close_inside_a_black_hole_is_bounded(
    apis: Facades,
    server: PolarisServer,
    proxy: FaultProxy,
    config: Configuration,
    loop_failures: LoopFailures,
) -> None:
    provider = apis.provider(config)
    consumer = apis.consumer(config)
    try:
        # More instances than scheduler workers, so heartbeats queue up in the hole.
        workers = config.scheduler.workers
        mine = [
            provider.register_instance(service=SERVICE, host="127.0.0.1", port=port).instance_id
            for port in range(9010, 9010 + 5 * workers)
        ]
        consumer.watch_service(service=SERVICE, listeners=[lambda event: None])
        proxy.blackhole()
        # Let the loops run into the hole before closing under them.
        wait_until(lambda: consumer.state is not ConnectionState.CONNECTED, timeout=10)
        wait_until(lambda: not any(healthy_on_server(server, iid) for iid in mine), timeout=15)
    finally:
        took = {}
        for name, api in (("consumer", consumer), ("provider", provider)):
            started = time.monotonic()
            api.close()
            took[name] = time.monotonic() - started
    # Each close waits for its calls in flight and, for the provider, deregisters
    # (here: tries to) within one api timeout. The thread check is no_thread_leak's.
    assert all(t < API_TIMEOUT + DEADLINE_SLACK for t in took.values()), took
    loop_failures.assert_none()
