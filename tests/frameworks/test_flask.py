"""The Flask extension under gunicorn and ``flask run`` (tests/procs/wsgi_app.py).

The app's factory configures everything through ``app.config``, the
registry's address included: the processes get no ``POLARIS_ADDRESSES``.
"""

from __future__ import annotations

import pytest

from polaris_sdk.server.auth import Action
from tests.frameworks.checks import answer, answers_with, assert_drains, assert_recycle_keeps_it
from tests.frameworks.conftest import Deployment, gunicorn
from tests.procs.servers import BIN, free_port

FACTORY = "tests.procs.wsgi_app:create_app()"


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_init_app_reads_app_config_under_gunicorn_workers(
    deploy: Deployment, protocol: str
) -> None:
    port = free_port()
    env = deploy.env(protocol, POLARIS_ADDRESSES="")
    served = deploy.launch(gunicorn(FACTORY, port, "-w", "2"), env)
    # The port is the socket gunicorn hands its workers; the rest is app.config.
    instance = deploy.registered(served, port, registers=2)
    assert (instance.version, instance.ttl) == ("3.1.0", 1)
    assert instance.metadata["configured"] == "app.config"
    answers_with(port, instance.id)
    assert answer(port, "/peer")["port"] == port
    assert_recycle_keeps_it(deploy, served, port)
    assert_drains(deploy, served, port)


def test_flask_run_registers_and_drains(deploy: Deployment) -> None:
    port = free_port()
    cmd = [str(BIN / "flask"), "--app", FACTORY, "run", "--no-reload", "--port", str(port)]
    served = deploy.launch(cmd, deploy.env(POLARIS_ADDRESSES=""))
    answers_with(port, deploy.registered(served, port).id)
    assert_drains(deploy, served, port)
    assert deploy.registry.actions(deploy.service) == [Action.REGISTER, Action.DEREGISTER]
