"""Checks shared by the framework tests."""

from __future__ import annotations

import json
import signal
import time
from typing import Any

from polaris_sdk.server.auth import Action
from tests.frameworks.conftest import Deployment
from tests.procs.servers import Served, Watch, get
from tests.support import wait_until

STOPPED_BY_SIGTERM = (0, -signal.SIGTERM)
"""Exit codes of a server stopped gracefully by SIGTERM: uvicorn (>= 0.29) and a
dev server re-raise the signal once they have shut down; gunicorn exits 0."""


def answer(port: int, path: str = "/hello", served: Served | None = None) -> dict[str, Any]:
    got = get(port, path)
    assert got is not None and got[0] == 200, (got, served and served.output()[-3000:])
    return dict(json.loads(got[1]))


def answers_with(port: int, instance_id: str) -> None:
    """Wait until a worker answers with the instance id (each sets it once registered;
    with the port given, the registration may come before the server listens)."""

    def answered() -> bool:
        got = get(port)
        return got is not None and json.loads(got[1]).get("instance") == instance_id

    wait_until(answered, timeout=10)


def assert_drains(deploy: Deployment, served: Served, port: int) -> None:
    """SIGTERM: the instance leaves the registry first, the app still answers after that;
    then the server ends cleanly and nothing of the instance is left."""
    registry, service = deploy.registry, deploy.service
    with Watch(registry.server, service) as watch:
        signaled = time.monotonic()
        served.send(signal.SIGTERM)
        gone = wait_until(
            lambda: watch.first(lambda s: port not in s.ports, since=signaled),
            timeout=15,
            message="never deregistered",
        )
        # Deregistered, and still serving: consumers that still pick it get answers.
        answered = get(port, "/hello")
        answered_at = time.monotonic()
        assert answered is not None and answered[0] == 200, served.output()[-2000:]
        assert served.wait(timeout=30) in STOPPED_BY_SIGTERM, served.output()[-2000:]
        assert answered_at > gone.t
    assert registry.ports(service, healthy=None) == []
    assert registry.actions(service)[-1] is Action.DEREGISTER


def assert_recycle_keeps_it(
    deploy: Deployment, served: Served, port: int, workers: int = 2
) -> None:
    """SIGTERM to one worker: it is replaced, the new one joins, the instance never leaves."""
    registry, service = deploy.registry, deploy.service
    first = served.workers(workers)
    # Every worker has joined the instance (its lease is taken before it sends).
    wait_until(
        lambda: set(first) <= deploy.holders(port),
        timeout=30,
        message=f"not every worker registered:\n{served.output()[-2000:]}",
    )
    with Watch(registry.server, service) as watch:
        since = time.monotonic()
        served.signal_worker(first[0], signal.SIGTERM)
        wait_until(
            lambda: first[0] not in (w := served.workers()) and len(w) == workers,
            timeout=30,
            message=f"worker not replaced:\n{served.output()[-2000:]}",
        )
        wait_until(
            lambda: set(served.workers()) == deploy.holders(port),
            timeout=30,
            message="the new worker did not register",
        )
        missing = watch.missing(port, since)
        assert missing == [], (missing[:3], len(missing), served.output()[-3000:])
    assert Action.DEREGISTER not in registry.actions(service), registry.actions(service)
    assert registry.ports(service) == [port]
