"""Heartbeat health checking with TTL 1, observed over the wire (wait_until, never sleep)."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from polarismesh_specification.api.v1.model import code_pb2
from polarismesh_specification.api.v1.service_manage import grpcapi_pb2_grpc
from pytest_mock import MockerFixture

from polaris_sdk.server import PolarisServer
from polaris_sdk.server.healthcheck import decide_health
from polaris_sdk.server.naming import LAST_HEARTBEAT_KEY
from tests.server.helpers import CALL_TIMEOUT, b, discover, discover_request, instance
from tests.support import wait_until

Stub = grpcapi_pb2_grpc.PolarisGRPCStub
# TTL 1 -> unhealthy after 3 s without a beat; the checker runs every 0.1 s.
DEADLINE = 10.0


def listed(stub: Stub) -> Any:
    answer = discover(stub, discover_request())
    assert answer.code.value == code_pb2.ExecuteSuccess
    return answer


def health_of(stub: Stub, host: str) -> Any:
    return next(i for i in listed(stub).instances if i.host.value == host)


def test_silent_instance_turns_unhealthy_others_do_not(stub: Stub) -> None:
    stub.RegisterInstance(instance(host="10.0.0.1", ttl=1), timeout=CALL_TIMEOUT)
    stub.RegisterInstance(instance(host="10.0.0.2", ttl=1), timeout=CALL_TIMEOUT)
    stub.RegisterInstance(instance(host="10.0.0.3"), timeout=CALL_TIMEOUT)
    stub.RegisterInstance(instance(host="10.0.0.4", ttl=1, healthy=b(False)), timeout=CALL_TIMEOUT)
    before = listed(stub).service.revision.value
    stop = threading.Event()

    def beat() -> None:
        # Bounded: ends with the test, or after DEADLINE at the latest.
        for _ in range(int(DEADLINE / 0.2)):
            stub.Heartbeat(instance(host="10.0.0.1"), timeout=CALL_TIMEOUT)
            if stop.wait(0.2):
                return

    beater = threading.Thread(target=beat, name="polaris-test-beater")
    beater.start()
    try:
        silent = wait_until(
            lambda: (i := health_of(stub, "10.0.0.2")).healthy.value is False and i,
            timeout=DEADLINE,
        )
        assert health_of(stub, "10.0.0.1").healthy.value is True
    finally:
        stop.set()
        beater.join()

    assert int(silent.metadata[LAST_HEARTBEAT_KEY]) > 0
    assert health_of(stub, "10.0.0.3").healthy.value is True  # no health check
    assert health_of(stub, "10.0.0.4").healthy.value is False  # never beat: stays as registered
    assert LAST_HEARTBEAT_KEY not in health_of(stub, "10.0.0.1").metadata
    assert listed(stub).service.revision.value != before


def test_beats_resuming_make_it_healthy_again(stub: Stub) -> None:
    stub.RegisterInstance(instance(ttl=1, metadata={"app": "x"}), timeout=CALL_TIMEOUT)
    wait_until(lambda: health_of(stub, "10.0.0.1").healthy.value is False, timeout=DEADLINE)
    unhealthy_revision = listed(stub).service.revision.value

    assert stub.Heartbeat(instance(), timeout=CALL_TIMEOUT).code.value == code_pb2.ExecuteSuccess

    healed = wait_until(
        lambda: (i := health_of(stub, "10.0.0.1")).healthy.value is True and i,
        timeout=DEADLINE,
    )
    assert dict(healed.metadata) == {"app": "x"}
    assert listed(stub).service.revision.value != unhealthy_revision


def test_a_failing_check_is_logged_and_the_checker_goes_on(
    server: PolarisServer, stub: Stub, mocker: MockerFixture, caplog: pytest.LogCaptureFixture
) -> None:
    stub.RegisterInstance(instance(ttl=1), timeout=CALL_TIMEOUT)
    # From here only the checker reads instances: when it expires, or sooner.
    store = server.naming.store
    real = store.get_instance
    calls = 0

    def flaky(instance_id: str) -> Any:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("disk on fire")
        return real(instance_id)

    mocker.patch.object(store, "get_instance", side_effect=flaky)

    wait_until(lambda: health_of(stub, "10.0.0.1").healthy.value is False, timeout=DEADLINE)

    assert "health check failed" in caplog.text
    assert "disk on fire" in caplog.text


@pytest.mark.parametrize(
    ("healthy", "now", "beat", "registered", "expected"),
    [
        (True, 10.0, None, 0.0, False),  # registered, never beat, 3 x TTL passed
        (True, 10.0, None, 8.0, None),  # registered recently
        (True, 10.0, 7.5, 0.0, None),  # beat within 3 x TTL
        (True, 10.0, 6.9, 0.0, False),  # last beat too old
        (False, 10.0, None, 9.0, None),  # unhealthy, no beat: registration alone is not enough
        (False, 10.0, 9.5, 0.0, True),  # a fresh beat heals
        (False, 10.0, 5.0, 0.0, None),  # an old beat does not
    ],
)
def test_decide_health(
    healthy: bool, now: float, beat: float | None, registered: float | None, expected: bool | None
) -> None:
    assert decide_health(healthy, 1, now, beat, registered) == expected
