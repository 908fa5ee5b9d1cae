"""PolarisAdapter against three real greeter processes, one of them killed with SIGKILL."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from polaris_sdk import ConsumerAPI
from polaris_sdk.integrations.requests import PolarisAdapter
from polaris_sdk.server import PolarisServer
from tests.integrations.greeters import Attempts, greeters, paced
from tests.integrations.test_grpc_channel import Recorder
from tests.support import wait_until


@pytest.fixture
def server(no_thread_leak: None) -> Iterator[PolarisServer]:
    with PolarisServer(grpc_port=0) as running:
        yield running


def test_killed_greeter_leaves_the_session(server: PolarisServer, tmp_path: Path) -> None:
    attempts = Attempts()
    with (
        greeters(server, tmp_path, "http") as running,
        ConsumerAPI.create(addresses=[server.grpc_address], refresh_interval=0.5) as consumer,
        requests.Session() as session,
    ):
        session.mount("http://", PolarisAdapter(Recorder(consumer, attempts)))
        wait_until(lambda: len(consumer.get_instances(service="greeter")) == 3, 10)
        victim: Any = running[0]
        killed_at = 0.0
        for i in paced(60):
            if i == 20:
                victim.kill()
                killed_at = time.monotonic()
            response = session.get("http://greeter/hello", timeout=5)
            assert response.status_code == 200
            assert response.text.startswith("hello from ")
        # Other hosts are sent as they are.
        other = session.get(f"http://127.0.0.1:{running[1].port}/hello", timeout=5)
        assert other.text == f"hello from {running[1].port}"
    assert not attempts.to(victim.port, killed_at + 1.0)
    assert {p for _, p in attempts.seen} == {g.port for g in running}
