"""Workers sharing one host:port keep its instance registered until the last one stops.

Real processes: a parent forks workers (tests/procs/workers.py) that each
register the same instance; a test signals them one by one.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from polaris_sdk.provider.lease import Leases, lease_key
from polaris_sdk.testing import PolarisTestServer
from tests.support import wait_until

ROOT = Path(__file__).resolve().parents[2]


class Workers:
    def __init__(self, server: PolarisTestServer, service: str, lease_dir: Path) -> None:
        args = [server.grpc_address, service, "2", str(lease_dir)]
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.procs.workers", *args],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        self.pids: list[int] = []
        for line in self.proc.stdout:  # each worker's pid once it has registered
            if line.strip():
                self.pids.append(int(line))
            if len(self.pids) == 2:
                break
        assert len(self.pids) == 2, f"workers ended early: {self.pids}"

    @staticmethod
    def gone(pid: int) -> bool:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except FileNotFoundError:
            return True
        return stat.rsplit(")", 1)[1].split()[0] == "Z"  # exited, not yet reaped

    def stop(self, pid: int, sig: int = signal.SIGTERM) -> None:
        os.kill(pid, sig)
        wait_until(lambda: self.gone(pid), timeout=15, message=f"worker {pid} still running")

    def close(self) -> None:
        for pid in self.pids:
            if not self.gone(pid):
                # It may end and be reaped by its parent between the check and the kill.
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        self.proc.wait(timeout=15)


@pytest.fixture
def workers(
    own_server: PolarisTestServer, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[Workers]:
    w = Workers(own_server, request.node.name.replace("_", "-"), tmp_path)
    yield w
    w.close()


def test_worker_stop_keeps_the_instance_until_the_last(
    own_server: PolarisTestServer, workers: Workers
) -> None:
    name = "test-worker-stop-keeps-the-instance-until-the-last"
    assert len(own_server.instances(name)) == 1
    workers.stop(workers.pids[0])
    # The first worker's close saw the other holder and left the instance alone.
    assert [i.port for i in own_server.instances(name)] == [7100]
    workers.stop(workers.pids[1])
    assert own_server.instances(name) == []


def test_a_killed_worker_does_not_hold_the_instance(
    own_server: PolarisTestServer, workers: Workers
) -> None:
    name = "test-a-killed-worker-does-not-hold-the-instance"
    workers.stop(workers.pids[0], signal.SIGKILL)
    assert len(own_server.instances(name)) == 1
    workers.stop(workers.pids[1])
    assert own_server.instances(name) == []


def test_leases_count_live_holders(tmp_path: Path) -> None:
    key = lease_key("default", "echo", "127.0.0.1", 8080)
    one, two = Leases(tmp_path), Leases(tmp_path)
    assert one.join(key) == 1
    assert two.join(key) == 2
    assert one.join(key) == 2  # joining again changes nothing
    with one.leave(key) as leaving:
        assert leaving.others == 1
    with two.leave(key) as leaving:
        assert leaving.others == 0
    # A holder whose process is gone does not count.
    Path(one.path(key)).write_text("999999999 - dead\n")
    assert one.join(key) == 1
    assert Leases(tmp_path, enabled=False).join(key) == 1
