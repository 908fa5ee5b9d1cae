"""The Django app (``INSTALLED_APPS`` + a ``POLARIS`` dict) under gunicorn and runserver.

The project is tests/procs/django_site: settings with our app and
``POLARIS = {"service": ..., "version": ..., "metadata": ..., "ttl": 1}``.
What is registered is read through the public ConsumerAPI too.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import pytest

from polaris_sdk import ConsumerAPI
from polaris_sdk.server.auth import Action
from tests.frameworks.checks import answer, answers_with, assert_drains, assert_recycle_keeps_it
from tests.frameworks.conftest import Deployment, Registry, gunicorn
from tests.procs.servers import ROOT, free_port
from tests.support import wait_until

WSGI = "tests.procs.django_site.wsgi:application"
MANAGE = "tests/procs/django_site/manage.py"


@pytest.fixture
def consumer(registry: Registry) -> Iterator[ConsumerAPI]:
    ctx = registry.server.context(refresh_interval=0.2)
    with ctx, ConsumerAPI(ctx) as api:
        yield api


def test_django_under_gunicorn_workers(deploy: Deployment, consumer: ConsumerAPI) -> None:
    port = free_port()
    served = deploy.launch(gunicorn(WSGI, port, "-w", "2"))
    deploy.registered(served, port, registers=2)
    [instance] = wait_until(lambda: consumer.get_instances(service=deploy.service), timeout=10)
    assert (instance.host, instance.port, instance.version) == ("127.0.0.1", port, "4.2.0")
    assert instance.metadata["framework"] == "django"
    # serving() from a view: the instance id and a consumer that finds the service.
    answers_with(port, instance.id)
    assert answer(port, "/peer")["port"] == port
    assert_recycle_keeps_it(deploy, served, port)
    assert_drains(deploy, served, port)


def test_the_django_sample_app_under_gunicorn(deploy: Deployment) -> None:
    """examples/django_provider.py, as the README runs it."""
    port = free_port()
    app = "examples.django_provider:application"
    served = deploy.launch(
        gunicorn(app, port, "-w", "2"), deploy.env(GREETER_SERVICE=deploy.service)
    )
    instance = deploy.registered(served, port, registers=2)
    assert instance.metadata["framework"] == "django"
    answers_with(port, instance.id)
    assert_drains(deploy, served, port)


def test_django_runserver_registers_and_drains(deploy: Deployment) -> None:
    port = free_port()
    cmd = [sys.executable, MANAGE, "runserver", "--noreload", f"127.0.0.1:{port}"]
    served = deploy.launch(cmd)
    answers_with(port, deploy.registered(served, port).id)
    assert_drains(deploy, served, port)
    assert deploy.registry.actions(deploy.service) == [Action.REGISTER, Action.DEREGISTER]


def test_django_runserver_with_the_reloader_registers_its_serving_child_only(
    deploy: Deployment,
) -> None:
    port = free_port()
    # The port given: a process that should not register could, without a socket.
    env = deploy.env(POLARIS_INSTANCE_PORT=port)
    served = deploy.launch([sys.executable, MANAGE, "runserver", f"127.0.0.1:{port}"], env)
    [child] = served.workers(1)
    answers_with(port, deploy.registered(served, port).id)
    assert deploy.holders(port) == {child}
    assert deploy.registry.actions(deploy.service) == [Action.REGISTER]


@pytest.mark.parametrize("program", [MANAGE, "-m django"])
def test_other_management_commands_do_not_register(deploy: Deployment, program: str) -> None:
    done = subprocess.run(
        [sys.executable, *program.split(), "check"],
        cwd=ROOT,
        env=deploy.env(POLARIS_INSTANCE_PORT=free_port()),  # it could register without a socket
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "no issues" in done.stdout
    assert deploy.registry.actions(deploy.service) == []
