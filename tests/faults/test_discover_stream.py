"""The gRPC Discover stream on a slow server: a call that runs out of time says so.

Also when another caller broke the shared stream under it: its retry waits
for the stream's reconnect backoff instead of failing with "reconnecting",
and the call ends in a timeout at its own deadline.

gRPC only: the HTTP transport has no stream (one POST per Discover).
"""

from __future__ import annotations

import threading
import time

import pytest

from polaris_sdk import InstanceRegisterRequest, PolarisTimeoutError, ServiceKey
from polaris_sdk.connector import GrpcConnector
from tests.faults.conftest import API_TIMEOUT, DEADLINE_SLACK, MESSAGE_TIMEOUT, sdk_config
from tests.faults.proxy import FaultProxy

DELAY = API_TIMEOUT + 1.0


@pytest.fixture
def transport() -> str:
    return "grpc"


def test_discover_on_a_slow_server_fails_with_a_timeout(proxy: FaultProxy, transport: str) -> None:
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
        with pytest.raises(PolarisTimeoutError):
            connector.discover_instances(key)
        elapsed = time.monotonic() - started
        assert elapsed < API_TIMEOUT + DEADLINE_SLACK, f"gave up after {elapsed:.2f}s"
    finally:
        connector.close()


def test_a_call_whose_stream_broke_under_it_times_out_at_its_deadline(
    proxy: FaultProxy, transport: str
) -> None:
    # Retries without a pause meet the stream's reconnect backoff for sure.
    config = sdk_config(proxy.address, transport, **{"global.api.retryInterval": 0})
    connector = GrpcConnector(config)
    try:
        key = ServiceKey("default", "slow-discover")
        connector.register_instance(
            InstanceRegisterRequest(service=key.service, host="127.0.0.1", port=9400), None
        )
        assert connector.discover_instances(key) is not None
        proxy.delay(down=DELAY)
        outcome: list[tuple[BaseException, float]] = []

        def patient() -> None:
            started = time.monotonic()
            try:
                connector.discover_instances(key)
            except BaseException as exc:
                outcome.append((exc, time.monotonic() - started))

        waiting = threading.Thread(target=patient, name="patient-caller")
        waiting.start()
        # A caller with less time gives up on the silent stream (silent for longer than
        # messageTimeout) and breaks it, failing the patient caller's first attempt.
        with pytest.raises(PolarisTimeoutError):
            connector.discover_instances(key, timeout=MESSAGE_TIMEOUT + 0.2)
        waiting.join(API_TIMEOUT + 10)  # a liveness bound
        assert len(outcome) == 1
        error, elapsed = outcome[0]
        assert isinstance(error, PolarisTimeoutError), repr(error)
        assert API_TIMEOUT - 0.1 <= elapsed < API_TIMEOUT + DEADLINE_SLACK, elapsed
    finally:
        connector.close()
