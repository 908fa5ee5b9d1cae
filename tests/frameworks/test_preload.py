"""``gunicorn --preload``: the master uses the SDK, then forks its workers (both transports).

tests/procs/preload_app.py: the Flask extension starts in the master, which
also lists a service and keeps an instance of its own (``<service>-master``)
before gunicorn forks. The workers serve and register the app's instance;
``-c python:polaris_sdk.integrations.gunicorn`` gives them the drain.
"""

from __future__ import annotations

import os
import signal
import time

import pytest

from polaris_sdk.server.auth import Action
from tests.frameworks.checks import answer, answers_with, assert_drains, assert_recycle_keeps_it
from tests.frameworks.conftest import Deployment, gunicorn
from tests.procs.servers import Watch, free_port
from tests.support import wait_until

APP = "tests.procs.preload_app:app"
HOOKS = ("-c", "python:polaris_sdk.integrations.gunicorn")


@pytest.mark.parametrize(
    ("protocol", "port_from"), [("grpc", "socket"), ("grpc", "env"), ("http", "env")]
)
def test_preloaded_workers_share_the_instance_and_drain(
    deploy: Deployment, protocol: str, port_from: str
) -> None:
    """``port_from="env"``: the port is known at import, so the master registers the
    app's instance before it forks and hands it over to the workers."""
    port = free_port()
    master_service = f"{deploy.service}-master"
    env = deploy.env(protocol, POLARIS_ADDRESSES="")
    if port_from == "env":
        env["POLARIS_INSTANCE_PORT"] = str(port)
    with Watch(deploy.registry.server, deploy.service) as watch:
        served = deploy.launch(gunicorn(APP, port, "--preload", "-w", "2", *HOOKS), env)
        served.wait_output("event: master in use")
        instance = deploy.registered(served, port, registers=2)
        # Registered once it was up, and never gone since (the master handing over
        # to its workers does not deregister it).
        up = watch.first(lambda s: port in s.ports)
        assert up is not None and watch.missing(port, since=up.t) == []
    answers_with(port, instance.id)
    assert answer(port, served=served)["pid"] in served.workers(2)
    assert answer(port, "/peer", served)["port"] == port
    assert deploy.registry.ports(master_service) == [7300]

    assert_recycle_keeps_it(deploy, served, port)
    # No worker deregistered the master's instance, nor heartbeats it: with the
    # master stopped, it turns unhealthy while the workers' instance stays healthy.
    assert deploy.registry.actions(master_service) == [Action.REGISTER]
    os.kill(served.pid, signal.SIGSTOP)
    try:
        stopped = time.monotonic()
        with Watch(deploy.registry.server, deploy.service) as watch:
            wait_until(lambda: deploy.registry.ports(master_service) == [], timeout=15)
            assert watch.missing(port, since=stopped) == []
    finally:
        os.kill(served.pid, signal.SIGCONT)
    assert deploy.registry.ports(deploy.service) == [port]

    assert_drains(deploy, served, port)
    # The master deregistered its own instance as it exited; nobody else did.
    assert deploy.registry.actions(master_service) == [Action.REGISTER, Action.DEREGISTER]
