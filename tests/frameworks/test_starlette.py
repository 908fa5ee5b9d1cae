"""``polaris_lifespan`` under real uvicorn processes (tests/procs/asgi_app.py, a FastAPI app)."""

from __future__ import annotations

from polaris_sdk.server.auth import Action
from tests.frameworks.checks import answer, answers_with, assert_drains, assert_recycle_keeps_it
from tests.frameworks.conftest import Deployment, uvicorn
from tests.procs.servers import free_port

APP = "tests.procs.asgi_app:app"


def test_lifespan_wraps_the_apps_own_and_drains_before_uvicorn_stops(deploy: Deployment) -> None:
    port = free_port()
    served = deploy.launch(uvicorn(APP, port))
    # No port given: the one uvicorn listens on is registered.
    instance = deploy.registered(served, port)
    assert (instance.host, instance.version) == ("127.0.0.1", "2.0.0")
    assert instance.metadata["framework"] == "fastapi"

    # app.state.polaris from a handler: the instance id, and the consumer finds the
    # service; the state the app's own lifespan yielded is passed on.
    answers_with(port, instance.id)
    assert answer(port)["greeting"] == "hello from the app's own lifespan"
    assert answer(port, "/peer")["port"] == port
    assert answer(port, "/status") == {"registration": "registered", "connection": "CONNECTED"}

    # The app's own start-up ran inside ours (app.state.polaris already set), its
    # shutdown after the drain.
    def events() -> list[str]:
        return [line.split(" pid=")[0] for line in served.lines("event:")]

    assert events() == ["event: app startup polaris=True"]
    assert_drains(deploy, served, port)
    assert events() == ["event: app startup polaris=True", "event: app shutdown"]
    assert deploy.registry.actions(deploy.service) == [Action.REGISTER, Action.DEREGISTER]


def test_uvicorn_workers_keep_the_instance_through_a_recycle_and_drain(deploy: Deployment) -> None:
    port = free_port()
    served = deploy.launch(uvicorn(APP, port, "--workers", "2"))
    deploy.registered(served, port, registers=2)
    assert_recycle_keeps_it(deploy, served, port)
    assert_drains(deploy, served, port)
