"""The server restarts in the middle of a burst of 200 register_instance calls.

Every call either returns or raises a PolarisError (nothing else, nothing
hangs), and every instance whose call returned is registered at the end, kept
alive by its heartbeats across the restart and seen by a consumer that
watched throughout. The SDK talks to the server
directly: a restart is the server going away and coming back on its port,
which the proxy would only blur.
"""

from __future__ import annotations

import threading
from concurrent.futures import Future, ThreadPoolExecutor

from polaris_sdk import InstanceRegisterResponse, PolarisError
from polaris_sdk.provider.flow import RegistrationState
from polaris_sdk.server import PolarisServer
from tests.faults.conftest import API_TIMEOUT, LoopFailures, direct_config
from tests.faults.helpers import healthy_on_server, ids, record
from tests.frontends import Facades
from tests.support import wait_until

SERVICE = "restarted"
CALLS = 200
BEFORE_RESTART = 50
"""Calls that complete before the restart begins; the others race with it."""
CALLERS = 8
BURST_TTL = 5
"""A TTL long enough that 200 instances' heartbeats stay a light load."""


def test_restart_during_a_burst_of_registrations(
    apis: Facades, server: PolarisServer, transport: str, loop_failures: LoopFailures
) -> None:
    config = direct_config(server, transport)
    restarting = threading.Event()

    def register(i: int) -> InstanceRegisterResponse | PolarisError:
        if i >= BEFORE_RESTART:
            assert restarting.wait(30), "the restart never began"
        try:
            return provider.register_instance(
                service=SERVICE, host="127.0.0.1", port=20000 + i, ttl=BURST_TTL
            )
        except PolarisError as exc:
            return exc

    with (
        apis.provider(config) as provider,
        apis.consumer(config) as consumer,
        ThreadPoolExecutor(CALLERS, thread_name_prefix="polaris-test-burst") as pool,
    ):
        consumer.watch_service(service=SERVICE, listeners=[lambda event: None])
        futures: list[Future[InstanceRegisterResponse | PolarisError]] = [
            pool.submit(register, i) for i in range(CALLS)
        ]
        wait_until(lambda: all(f.done() for f in futures[:BEFORE_RESTART]), timeout=30)
        restarting.set()
        server.stop()
        # Down until the burst has felt it: a call has given up on the absent server.
        wait_until(
            lambda: any(f.done() and isinstance(f.result(), PolarisError) for f in futures),
            timeout=CALLERS * API_TIMEOUT * 2,
            message="no call failed while the server was down",
        )
        server.start()
        # Anything but a response or a PolarisError is re-raised here and fails the test.
        outcomes = [f.result(timeout=CALLS * API_TIMEOUT) for f in futures]

        returned = {
            20000 + i: o.instance_id
            for i, o in enumerate(outcomes)
            if isinstance(o, InstanceRegisterResponse)
        }
        failed = [o for o in outcomes if isinstance(o, PolarisError)]
        assert len(returned) + len(failed) == CALLS
        assert len(returned) > BEFORE_RESTART, "no call got through after the restart"

        missing = sorted(p for p, iid in returned.items() if record(server, iid) is None)
        assert not missing, f"returned but not registered: ports {missing}"

        def all_kept_alive() -> bool:
            statuses = {s.instance_id: s for s in provider.registrations()}
            return all(
                iid in statuses
                and statuses[iid].state is RegistrationState.REGISTERED
                and healthy_on_server(server, iid)
                for iid in returned.values()
            )

        wait_until(all_kept_alive, timeout=3 * BURST_TTL + 5, message="heartbeats did not resume")
        # A consumer watching through the restart sees every one of them too.
        wait_until(
            lambda: set(returned.values()) <= ids(consumer.get_all_instances(service=SERVICE)),
            timeout=35,
            message="the consumer did not catch up after the restart",
        )

    # close() deregistered what register_instance kept registered.
    assert all(record(server, iid) is None for iid in returned.values())
    loop_failures.assert_none()
