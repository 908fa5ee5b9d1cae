"""``python -m polaris_sdk.server`` in a subprocess: serves raw-stub clients, stops on signals."""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from polarismesh_specification.api.v1.model import code_pb2

from polaris_sdk.server import PolarisServer
from tests.server.helpers import CALL_TIMEOUT, discover, discover_request, instance, new_stub

ROOT = Path(__file__).resolve().parents[2]
LISTENING = re.compile(r"listening on grpc (\S+)")
DEADLINE = 30.0


class Cli:
    """The server CLI in a child process, its stderr read line by line by a thread."""

    def __init__(self, *args: str) -> None:
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "polaris_sdk.server", *args],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.output: list[str] = []
        self._reader = threading.Thread(target=self._read, name="polaris-test-cli-reader")
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.lines.put(line)
        self.lines.put(None)

    def wait_for(self, pattern: re.Pattern[str]) -> re.Match[str]:
        while True:
            line = self.lines.get(timeout=DEADLINE)
            if line is None:
                raise AssertionError("server exited:\n" + "".join(self.output))
            self.output.append(line)
            if match := pattern.search(line):
                return match

    def finish(self) -> int:
        if not self._reader.is_alive() and self.process.returncode is not None:
            return self.process.returncode
        hung = False
        try:
            code = self.process.wait(timeout=DEADLINE)
        except subprocess.TimeoutExpired:
            hung = True
        finally:
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait()
            self._reader.join()
        while (line := self.lines.get_nowait()) is not None:
            self.output.append(line)
        if hung:
            raise AssertionError(
                f"server still running {DEADLINE}s later; its log:\n" + "".join(self.output)
            )
        return code


@pytest.fixture
def cli() -> Iterator[Cli]:
    running = Cli("--grpc-port", "0", "--http-port", "0")
    yield running
    if running.process.poll() is None:
        running.process.kill()
    running.finish()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_cli_serves_a_raw_stub_and_stops_cleanly_on_a_signal(cli: Cli, signum: int) -> None:
    address = cli.wait_for(LISTENING).group(1)
    channel, stub = new_stub(address)
    with channel:
        registered = stub.RegisterInstance(instance(ttl=5), timeout=CALL_TIMEOUT)
        beat = stub.Heartbeat(instance(), timeout=CALL_TIMEOUT)
        listed = discover(stub, discover_request())

    cli.process.send_signal(signum)

    assert cli.finish() == 0
    assert registered.code.value == code_pb2.ExecuteSuccess
    assert beat.code.value == code_pb2.ExecuteSuccess
    assert [i.id.value for i in listed.instances] == [registered.instance.id.value]
    assert "stopped" in "".join(cli.output)
    assert "Traceback" not in "".join(cli.output)


def test_cli_exits_1_when_the_port_is_taken(no_thread_leak: None) -> None:
    with PolarisServer() as taken:
        cli = Cli("--grpc-port", str(taken.grpc_port))
        code = cli.finish()

    assert code == 1
    assert "cannot start" in "".join(cli.output)
