"""The ``polaris`` console script, run as a subprocess against an embedded server."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import pytest

from polaris_sdk import ProviderAPI, SDKContext
from polaris_sdk.server import PolarisServer
from tests.support import wait_until

ROOT = Path(__file__).resolve().parents[1]
DEADLINE = 30.0


def cli_env(server: PolarisServer, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("POLARIS_")}
    return {
        **env,
        "PYTHONPATH": str(ROOT),
        "POLARIS_ADDRESSES": server.grpc_address,
        "POLARIS_ADMIN_ADDRESS": server.http_address,
        **extra,
    }


def polaris(
    server: PolarisServer, *args: str, cwd: Path, **env: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "polaris_sdk.cli", *args],
        cwd=cwd,
        env=cli_env(server, **env),
        capture_output=True,
        text=True,
        timeout=DEADLINE,
        check=False,
    )


class Running:
    """A long-running CLI command, its stdout read line by line by a thread."""

    def __init__(self, server: PolarisServer, *args: str, cwd: Path) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "polaris_sdk.cli", *args],
            cwd=cwd,
            env=cli_env(server),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, name="polaris-test-cli-stdout")
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def expect(self, *words: str) -> str:
        """The next line holding every word; fails if the process ends first."""
        while True:
            line = self.lines.get(timeout=DEADLINE)
            if line is None:
                err = self.process.stderr.read() if self.process.stderr else ""
                raise AssertionError(f"the CLI ended before printing {words}: {err}")
            if all(word in line for word in words):
                return line

    def stop(self, signum: int = signal.SIGTERM) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signum)
        code = self.process.wait(timeout=DEADLINE)
        self._reader.join(DEADLINE)
        if self.process.stderr is not None:
            self.process.stderr.close()
        return code


@pytest.fixture
def server(no_thread_leak: None) -> Iterator[PolarisServer]:
    with PolarisServer(health_check_interval=0.1) as running:
        yield running


@pytest.fixture
def running() -> Iterator[list[Running]]:
    started: list[Running] = []
    yield started
    for command in started:
        if command.process.poll() is None:
            command.process.kill()
            command.process.wait(timeout=DEADLINE)


def register(server: PolarisServer, **fields: Any) -> None:
    with SDKContext.create(addresses=[server.grpc_address]) as ctx:
        ProviderAPI(ctx).register(namespace="default", service="echo", **fields)


def test_the_console_script_is_declared() -> None:
    [script] = [ep for ep in entry_points(group="console_scripts") if ep.name == "polaris"]
    assert script.value == "polaris_sdk.cli:main"


def test_instances_and_services_print_tables_and_json(
    server: PolarisServer, tmp_path: Path
) -> None:
    register(server, host="10.0.0.1", port=80, weight=7, metadata={"env": "prod"})
    register(server, host="10.0.0.2", port=81, isolate=True)

    table = polaris(server, "instances", "echo", cwd=tmp_path)
    as_json = polaris(server, "--output", "json", "instances", "echo", cwd=tmp_path)
    services = polaris(server, "services", "--namespace", "default", cwd=tmp_path)

    assert table.returncode == 0, table.stderr
    header, *rows = table.stdout.splitlines()
    assert header.split()[:5] == ["HOST", "PORT", "HEALTHY", "ISOLATED", "WEIGHT"]
    assert rows[0].split()[:6] == ["10.0.0.1", "80", "yes", "no", "7", "env=prod"]
    assert rows[1].split()[:4] == ["10.0.0.2", "81", "yes", "yes"]
    assert {i["host"] for i in json.loads(as_json.stdout)} == {"10.0.0.1", "10.0.0.2"}
    assert services.returncode == 0, services.stderr
    assert services.stdout.splitlines()[1].split()[:4] == ["default", "echo", "2", "2"]


def test_register_heartbeats_until_sigterm_then_deregisters(
    server: PolarisServer, tmp_path: Path, running: list[Running]
) -> None:
    command = Running(
        server, "register", "echo", "127.0.0.1", "18080", "--ttl", "1", "-m", "a=b", cwd=tmp_path
    )
    running.append(command)
    command.expect("registered", "127.0.0.1:18080")
    store = server.naming.store

    def held() -> list[Any]:
        view = store.service_instances("default", "echo")
        return list(view.instances) if view is not None else []

    [record] = wait_until(held)
    assert record.metadata["a"] == "b"
    # Beats keep it healthy for longer than 3 x TTL.
    wait_until(lambda: server.naming.heartbeats.last_beat(record.id) is not None)

    assert command.stop(signal.SIGTERM) == 0
    assert held() == []


def test_watch_prints_added_updated_deleted(
    server: PolarisServer, tmp_path: Path, running: list[Running]
) -> None:
    register(server, host="10.0.0.1", port=80)
    register(server, host="10.0.0.2", port=80)  # push-empty protection keeps a last one
    command = Running(server, "watch", "echo", cwd=tmp_path)
    running.append(command)
    command.expect("added", "10.0.0.1:80", "healthy=yes")

    isolate = polaris(server, "isolate", "echo", "10.0.0.1", "80", cwd=tmp_path)
    assert isolate.returncode == 0, isolate.stderr
    assert "is isolated" in isolate.stdout
    command.expect("updated", "10.0.0.1:80", "isolated False->True")

    gone = polaris(server, "deregister", "echo", "10.0.0.1", "80", cwd=tmp_path)
    assert gone.returncode == 0, gone.stderr
    command.expect("deleted", "10.0.0.1:80")

    assert command.stop(signal.SIGINT) == 0


def test_refused_routes_are_named_with_what_to_do(no_thread_leak: None, tmp_path: Path) -> None:
    with PolarisServer(tokens=["secret"]) as server:
        no_token = polaris(server, "instances", "echo", cwd=tmp_path)
        with_token = polaris(server, "instances", "echo", cwd=tmp_path, POLARIS_TOKEN="secret")
        wrong_place = polaris(
            server, "services", cwd=tmp_path, POLARIS_ADMIN_ADDRESS=server.http_address + "/x"
        )

    assert no_token.returncode == 1
    assert "401" in no_token.stderr and "POLARIS_TOKEN" in no_token.stderr
    assert "secret" not in no_token.stderr
    assert with_token.returncode == 0, with_token.stderr
    assert wrong_place.returncode == 1
    assert "404" in wrong_place.stderr and "8090" in wrong_place.stderr


def test_an_unreachable_server_is_named(tmp_path: Path, server: PolarisServer) -> None:
    port = server.http_port
    server.stop()

    result = polaris(server, "services", cwd=tmp_path)

    assert result.returncode == 1
    assert f"cannot reach the admin API at http://127.0.0.1:{port}" in result.stderr


def test_server_help_shows_every_default(server: PolarisServer, tmp_path: Path) -> None:
    result = polaris(server, "server", "--help", cwd=tmp_path)

    assert result.returncode == 0
    text = " ".join(result.stdout.split())
    for default in (
        "(default: 8091)",
        "(default: 8090)",
        "(default: 127.0.0.1)",
        "(default: 0.5)",
        "(default: never)",
        "(default: in memory)",
    ):
        assert default in text, default
