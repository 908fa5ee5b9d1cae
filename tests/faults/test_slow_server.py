"""A slow server: every answer arrives after the caller's deadline.

A call gives up with a PolarisTimeoutError, having sent at most
``maxRetryTimes + 1`` requests (counted at the proxy), and the background
loops (heartbeats, consumer refresh) do not turn the slowness into a retry
storm: over a window, heartbeats send at most one call's worth of attempts
per TTL and the consumer at most one per refresh interval. Once the server
is fast again, everything recovers.
"""

from __future__ import annotations

import math
import time

import pytest

from polaris_sdk import (
    Configuration,
    ConsumerAPI,
    PolarisTimeoutError,
    ProviderAPI,
)
from polaris_sdk.cache import ConnectionState
from polaris_sdk.provider.flow import RegistrationState
from polaris_sdk.server import PolarisServer
from tests.faults.conftest import (
    API_TIMEOUT,
    DEADLINE_SLACK,
    MAX_RETRIES,
    REFRESH,
    TTL,
    LoopFailures,
    sdk_config,
    upstream_of,
)
from tests.faults.helpers import healthy_ids
from tests.faults.proxy import FaultProxy
from tests.support import wait_until

SERVICE = "slow"
DELAY = API_TIMEOUT + 1.0
"""Longer than a whole call may last, retries included."""
ATTEMPTS = MAX_RETRIES + 1


def test_slow_answers_time_out_without_a_retry_storm(
    server: PolarisServer,
    proxy: FaultProxy,
    config: Configuration,
    transport: str,
    loop_failures: LoopFailures,
) -> None:
    with (
        FaultProxy(upstream_of(server, transport)) as consumer_proxy,
        ProviderAPI.create(config) as provider,
        ConsumerAPI.create(sdk_config(consumer_proxy.address, transport)) as consumer,
    ):
        provider.register(service=SERVICE + "-oneshot", host="127.0.0.1", port=9300)
        assert not consumer.get_all_instances(service=SERVICE).instances

        # One call: a clear timeout within its deadline, after a bounded number of requests.
        proxy.delay(down=DELAY)
        consumer_proxy.delay(down=DELAY)
        sent = proxy.stats().requests
        started = time.monotonic()
        with pytest.raises(PolarisTimeoutError):
            provider.register(service=SERVICE + "-oneshot", host="127.0.0.1", port=9301)
        elapsed = time.monotonic() - started
        attempts = proxy.stats().requests - sent
        assert elapsed < API_TIMEOUT + DEADLINE_SLACK, f"gave up after {elapsed:.2f}s"
        assert 1 <= attempts <= ATTEMPTS, f"{attempts} requests for one call"
        # A consumer's first look at a service gives up within its deadline too.
        started = time.monotonic()
        with pytest.raises(PolarisTimeoutError):
            consumer.get_all_instances(service=SERVICE + "-unlisted")
        elapsed = time.monotonic() - started
        assert elapsed < API_TIMEOUT + DEADLINE_SLACK, f"gave up after {elapsed:.2f}s"
        proxy.heal()
        consumer_proxy.heal()

        # The background loops under the same slowness.
        mine = provider.register_instance(service=SERVICE, host="127.0.0.1", port=9302).instance_id
        wait_until(lambda: mine in healthy_ids(consumer.get_all_instances(service=SERVICE)))
        proxy.delay(down=DELAY)
        consumer_proxy.delay(down=DELAY)
        provider_sent = proxy.stats().requests
        consumer_sent = consumer_proxy.stats().requests
        started = time.monotonic()

        def both_failing() -> bool:
            status = provider.status(mine)
            assert consumer.get_one_instance(service=SERVICE).id == mine  # from the snapshot
            return (
                status is not None
                and status.consecutive_failures >= 3
                and consumer.state is not ConnectionState.CONNECTED
            )

        wait_until(both_failing, timeout=30, message="the loops did not notice the slowness")
        window = time.monotonic() - started
        provider_requests = proxy.stats().requests - provider_sent
        consumer_requests = consumer_proxy.stats().requests - consumer_sent
        status = provider.status(mine)
        assert status is not None and status.state is RegistrationState.FAILING
        assert isinstance(status.last_error, PolarisTimeoutError), repr(status.last_error)
        # At most one call's attempts per heartbeat (one per TTL) and per refresh round.
        heartbeat_bound = (math.ceil(window / TTL) + 1) * ATTEMPTS
        refresh_bound = (math.ceil(window / REFRESH) + 1) * ATTEMPTS
        assert provider_requests <= heartbeat_bound, (provider_requests, window)
        assert consumer_requests <= refresh_bound, (consumer_requests, window)

        proxy.heal()
        consumer_proxy.heal()
        healed = time.monotonic()

        def recovered() -> bool:
            now = provider.status(mine)
            return (
                now is not None
                and now.state is RegistrationState.REGISTERED
                and now.last_success is not None
                and now.last_success >= healed
                and consumer.state is ConnectionState.CONNECTED
            )

        wait_until(recovered, timeout=35, message="no recovery once the server was fast again")

    assert not consumer_proxy.errors, consumer_proxy.errors
    loop_failures.assert_none()
