"""The gRPC Discover stream on a slow server: a call that runs out of time says so.

gRPC only: the HTTP transport has no stream (one POST per Discover).
"""

from __future__ import annotations

import time

import pytest

from polaris_sdk import InstanceRegisterRequest, NetworkError, PolarisTimeoutError, ServiceKey
from polaris_sdk.connector import GrpcConnector
from tests.faults.conftest import API_TIMEOUT, DEADLINE_SLACK, sdk_config
from tests.faults.proxy import FaultProxy

DELAY = API_TIMEOUT + 1.0


@pytest.fixture
def transport() -> str:
    return "grpc"


@pytest.mark.xfail(
    strict=True,
    raises=NetworkError,
    reason=(
        "connector/grpc.py: after an exchange times out, _break() arms the stream's "
        "reconnect backoff and _DiscoverStream._open() fails the retries at once with "
        "NetworkError('Discover stream is reconnecting'), so a call on a slow server ends "
        "early with that error instead of a PolarisTimeoutError"
    ),
)
def test_discover_on_a_slow_server_fails_with_a_timeout(proxy: FaultProxy, transport: str) -> None:
    # Retries without a pause make the race with the stream's backoff certain.
    config = sdk_config(proxy.address, transport, **{"global.api.retryInterval": 0})
    connector = GrpcConnector(config)
    try:
        key = ServiceKey("default", "slow-discover")
        connector.register_instance(
            InstanceRegisterRequest(service=key.service, host="127.0.0.1", port=9400), None
        )
        assert connector.discover_instances(key) is not None  # the stream is up and answering
        proxy.delay(down=DELAY)
        started = time.monotonic()
        try:
            connector.discover_instances(key)
        except NetworkError as exc:
            elapsed = time.monotonic() - started
            assert elapsed < API_TIMEOUT + DEADLINE_SLACK
            if not isinstance(exc, PolarisTimeoutError):
                raise
        else:
            pytest.fail("a Discover answered despite the delay")
    finally:
        connector.close()
